"""The model-store command line, ``python -m models``; the code it runs lives in ``clip_runner``."""
