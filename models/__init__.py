"""Model-store tooling: ``python -m models register|list|export``."""
