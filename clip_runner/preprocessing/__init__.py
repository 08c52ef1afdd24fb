"""Inputs to model arrays: upload bytes → validated 8-bit RGB → the model's uint8 pixels
(:mod:`.images`), and texts → CLIP token ids without torch (:mod:`.clip_tokenizer`)."""
