"""Compiling store entries for OpenVINO (``python -m models compile``): a leaf nothing else imports."""
