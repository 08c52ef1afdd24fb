"""CLIP tokenizer files in the Hugging Face layout, made from the BPE vocabulary open_clip ships.

``transformers``' ``CLIPTokenizer`` reads ``vocab.json`` (token → id) and ``merges.txt`` (BPE
merges by rank). OpenAI's CLIP and open_clip use the same byte-level BPE; only the two special
tokens are spelled differently. Writing the files from open_clip's copy gives the transformers
baseline a tokenizer with no hub download.
"""

from __future__ import annotations

import json
from pathlib import Path

#: open_clip's special tokens → the names transformers' CLIPTokenizer expects (same ids).
SPECIAL_TOKENS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"


def write_clip_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` into ``folder``; returns their paths."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    vocab = {SPECIAL_TOKENS.get(token, token): index for token, index in bpe.encoder.items()}
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.__getitem__)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = folder / VOCAB_FILE, folder / MERGES_FILE
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # The header line is part of the format: readers skip the first line.
    lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path, merges_path
