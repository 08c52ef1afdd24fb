"""Inputs to model arrays: image bytes → the model's uint8 pixels, texts → token ids, without torch."""
