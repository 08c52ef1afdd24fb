"""Everything about the model, in layers (README, "Layers"; import-linter holds them). No HTTP here."""
