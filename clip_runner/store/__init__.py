"""The BentoML model store: read without torch, written from torch models, added, selected (README, "Layers")."""
