"""Runnable examples that use the clip service from a backend (``python -m examples.<name>``)."""
