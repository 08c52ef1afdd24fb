"""A Hugging Face tokenizer (SigLIP's SentencePiece, multilingual vocabularies) without torch or transformers.

open_clip's ``HFTokenizer`` (``transformers.AutoTokenizer``) cleans the text, then encodes, cuts and pads
it. Here the same cleaning runs before the entry's own ``tokenizer.json`` in Hugging Face ``tokenizers``,
so every runtime tokenizes these models the same way. Tests hold the ids equal to open_clip's.
"""

from __future__ import annotations

import html
import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
from tokenizers import Tokenizer

from ..errors import ModelNotAvailable

TOKENIZER_JSON = "tokenizer.json"
#: What an entry keeps of a Hugging Face tokenizer folder: the fast tokenizer, and the files naming
#: its special tokens (and, when the folder has them, the SentencePiece models it was made from).
HF_TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                      "tokenizer.model", "sentencepiece.bpe.model")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _basic(text: str) -> str:
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace(text: str) -> str:
    return " ".join(_basic(text).split())


def _canonicalize(text: str) -> str:
    """big_vision's (and open_clip's) canonical text: no punctuation, lower case, single spaces."""
    return " ".join(_basic(text).replace("_", " ").translate(_PUNCTUATION).lower().split())


CLEANERS: dict[str, Callable[[str], str]] = {
    "whitespace": _whitespace,
    "lower": lambda text: _whitespace(text).lower(),
    "canonicalize": _canonicalize,
}


def hf_tokenizer_name(model_cfg: dict[str, Any]) -> str | None:
    """The Hugging Face tokenizer an open_clip model config names (SigLIP's); None for CLIP BPE."""
    return model_cfg.get("text_cfg", {}).get("hf_tokenizer_name") or None


class HFTextTokenizer:
    """Texts → (N, context_length) int64 ids, as open_clip's ``HFTokenizer`` gives them."""

    def __init__(self, folder: Path, context_length: int, clean: str = "whitespace") -> None:
        if clean not in CLEANERS:
            raise ModelNotAvailable(f"unknown tokenizer cleaning {clean!r}; expected one of {sorted(CLEANERS)}")
        if not (folder / TOKENIZER_JSON).is_file():
            raise ModelNotAvailable(f"tokenizer folder {folder} has no {TOKENIZER_JSON}; save it with "
                                    "transformers' `AutoTokenizer.from_pretrained(...).save_pretrained(DIR)`")
        self.context_length = context_length
        self._clean = CLEANERS[clean]
        self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_JSON))
        pad_id = self._special_id(folder, "pad_token") or 0
        # (pad id, whether the pad token is the end token too, as SigLIP's is): what counting a row's tokens needs.
        self.padding = (pad_id, pad_id == self._special_id(folder, "eos_token"))
        self._tokenizer.enable_truncation(context_length)
        self._tokenizer.enable_padding(length=context_length, pad_id=pad_id)

    @classmethod
    def for_model(cls, folder: Path, model_cfg: dict[str, Any]) -> HFTextTokenizer:
        """The tokenizer a model config's ``text_cfg`` asks for, from the files in ``folder``."""
        text_cfg = model_cfg.get("text_cfg", {})
        unsupported = set(text_cfg.get("tokenizer_kwargs", {})) - {"clean"}
        if unsupported or text_cfg.get("tokenizer_mode"):
            raise ModelNotAvailable(f"tokenizer options {sorted(unsupported) or text_cfg['tokenizer_mode']} "
                                    "are not supported; serve a model whose tokenizer takes only 'clean'")
        clean = text_cfg.get("tokenizer_kwargs", {}).get("clean", "whitespace")
        return cls(folder, int(text_cfg.get("context_length", 77)), clean)  # open_clip's default

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self._tokenizer.encode_batch([self._clean(text) for text in texts])
        return np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(texts), self.context_length)

    def _special_id(self, folder: Path, name: str) -> int | None:
        """The id of a special token as ``tokenizer_config.json`` / ``special_tokens_map.json`` name it."""
        for file in ("tokenizer_config.json", "special_tokens_map.json"):
            try:
                token = json.loads((folder / file).read_text()).get(name)
            except (OSError, ValueError):
                continue
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str):
                return self._tokenizer.token_to_id(token)
        return None
