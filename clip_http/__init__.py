"""The HTTP side (README, "Layers"): it reaches ``clip_runner`` only through its serving surface."""
