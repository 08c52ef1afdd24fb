"""Fine-tuning, calibration and the demo model (``python -m models ...``): a leaf nothing else imports."""
