"""The torch-free tokenizer gives open_clip's tokens, token for token."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import open_clip
import pytest

from clip_runner.compile.torch_export import write_tokenizer
from clip_runner.preprocessing.clip_tokenizer import ClipTokenizer
from clip_runner.store.entries import TOKENIZER_FILE

TEXTS = [
    "a red circle", "A Blue   SQUARE\n on a white background!", "ünïcødé 🙂 text",
    "&amp;lt;b&amp;gt; bold &quot;x&quot;",
    "It's the dog's toy, isn't it? They'll've", "naïve café — crème brûlée", "日本語のテキスト と 中文",
    "don’t “quote” ‘me’", "12345 3.14159 $100 #hashtag @user", "word " * 100, "", "   ",
    "<start_of_text> hello <end_of_text>", "Ã©tÃ© mojibake", "e\u0301 combining", "tab\tand\r\nnewlines",
    "emoji 👩‍👩‍👧‍👦 family 🇫🇷 flag", "ALLCAPS MiXeD", "x" * 600, "a-b_c/d\\e|f",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, ClipTokenizer]:
    reference = open_clip.get_tokenizer("ViT-B-32")
    folder: Path = tmp_path_factory.mktemp("tokenizer")
    assert write_tokenizer(reference, folder)
    return reference, ClipTokenizer(folder / TOKENIZER_FILE, 77)


def test_same_tokens_as_open_clip(tokenizers) -> None:
    reference, ours = tokenizers
    expected, got = reference(TEXTS).numpy(), ours(TEXTS)
    assert got.dtype == np.int64 and got.shape == (len(TEXTS), 77)
    for text, want, have in zip(TEXTS, expected, got, strict=True):
        assert np.array_equal(want, have), text


def test_same_tokens_on_random_unicode(tokenizers) -> None:
    reference, ours = tokenizers
    rng = random.Random(0)
    alphabet = [chr(c) for c in [*range(32, 127), *range(0xA0, 0x250), *range(0x3040, 0x30FF), 0x1F600, 0x200D, 0x301]]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(500)]
    assert np.array_equal(reference(texts).numpy(), ours(texts))


def test_other_tokenizers_are_left_to_open_clip(tmp_path: Path) -> None:
    reference = open_clip.tokenizer.SimpleTokenizer(clean="canonicalize")  # not the plain CLIP cleaning
    assert not write_tokenizer(reference, tmp_path) and not (tmp_path / TOKENIZER_FILE).exists()
