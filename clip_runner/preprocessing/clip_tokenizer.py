"""open_clip's CLIP tokenizer (``SimpleTokenizer``) without torch, for serving compiled entries.

The same cleaning, then CLIP's split pattern and byte-level BPE in Hugging Face ``tokenizers``, from a
``tokenizer.json`` written at compile time out of open_clip's own vocabulary and merges: a compiled worker
never imports torch (about 0.5 GB of resident memory). Tests hold the two token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .hf_tokenizer import CLEANERS

SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
# open_clip's split pattern, less its special tokens (``tokenizers`` matches those first).
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class ClipTokenizer:
    """Texts → (N, context_length) int64 token ids, as open_clip's ``SimpleTokenizer`` gives them."""

    def __init__(self, path: Path, context_length: int) -> None:
        self._bpe = Tokenizer.from_file(str(path))
        self.context_length = context_length
        self.sot, self.eot = (self._bpe.token_to_id(token) for token in SPECIAL_TOKENS)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self._bpe.encode_batch([CLEANERS["lower"](text) for text in texts], add_special_tokens=False)
        rows = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, tokens in zip(rows, encoded, strict=True):
            ids = [self.sot, *tokens.ids[: self.context_length - 2], self.eot]  # too long: cut, still ends in eot
            row[: len(ids)] = ids
        return rows

