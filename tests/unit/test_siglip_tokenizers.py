"""The service's tokenizer on folders shaped like the real SigLIP (T5) and SigLIP 2 (Gemma) ones
(tests/siglip_tokenizers.py): the same ids as open_clip's ``HFTokenizer`` (transformers) in every script."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from open_clip.tokenizer import HFTokenizer

from clip_runner.preprocessing.hf_tokenizer import HFTextTokenizer
from clip_runner.runtimes.encoder import token_counts
from tests.siglip_tokenizers import write_gemma_tokenizer, write_t5_tokenizer
from tests.unit.test_siglip import FIXED_TEXTS, random_texts

TEXTS = FIXED_TEXTS + random_texts(300, seed=3)
FOLDERS = {
    "t5": write_t5_tokenizer,
    "gemma": write_gemma_tokenizer,
    # Its tokenizer.json starts texts with <bos> though its flags say add_bos_token false: transformers 5 keeps
    # the file's post-processor (4.x rebuilt it from the flags); so does the service. The hub's files agree.
    "gemma-bos-template": lambda folder: write_gemma_tokenizer(folder, template="<bos> $A"),
}


@pytest.mark.parametrize("kind", list(FOLDERS))
def test_ids_and_counts_equal_open_clips(kind: str, tmp_path: Path) -> None:
    folder = FOLDERS[kind](tmp_path / kind)
    theirs = HFTokenizer(str(folder), context_length=64, clean="canonicalize")
    ours = HFTextTokenizer(folder, 64, "canonicalize")
    ids = ours(TEXTS)
    np.testing.assert_array_equal(ids, theirs(TEXTS).numpy())
    masks = theirs.tokenizer([theirs.clean_fn(t) for t in TEXTS], max_length=64, padding="max_length",
                             truncation=True).attention_mask
    assert token_counts(ids, *ours.padding) == [sum(mask) for mask in masks]
    # T5 pads with its end token </s> (1); Gemma with <pad> (0), and starts with <bos> (2) only as its file says.
    assert ours.padding == ((1, True) if kind == "t5" else (0, False))
    assert bool(ids[0][0] == 2) is (kind == "gemma-bos-template")
