"""Fine-tuning, calibration, the CSV pairs they read, and the demo model's build and evaluation
(``python -m models finetune|calibrate|evaluate|build-demo``): a leaf nothing else imports."""
