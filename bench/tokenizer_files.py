"""Tokenizer files made here, so that no benchmark or test downloads one.

CLIP's, in the Hugging Face layout, from the BPE vocabulary open_clip ships: ``transformers``'
``CLIPTokenizer`` reads ``vocab.json`` (token → id) and ``merges.txt`` (BPE merges by rank).
OpenAI's CLIP and open_clip use the same byte-level BPE; only the two special tokens are spelled
differently. Writing the files from open_clip's copy gives the transformers baseline a tokenizer.

A stand-in for SigLIP's: a small SentencePiece-style tokenizer folder (what a model naming
``hf_tokenizer_name`` is registered with, ``--tokenizer DIR``). Its ids stay under any real SigLIP
vocabulary size, so a random-init ViT-B-16-SigLIP can be benchmarked, and tests use it too.
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


#: Sentences in several scripts: what the stand-in SigLIP tokenizer learns its vocabulary from.
SIGLIP_CORPUS = ("a photo of a cat", "a photo of a dog on a table", "un chat sur une table", "ein Hund im Park",
                 "猫の写真", "桌子上的狗", "собака на столе", "صورة قطة", "a red square and a blue circle")


def write_siglip_tokenizer(folder: Path) -> Path:
    """A small SentencePiece-style (Unigram) Hugging Face tokenizer, saved as a tokenizer folder is: it pads
    with its end token ``</s>``, as SigLIP's does. 400 ids at most."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tokenizer.train_from_iterator(list(SIGLIP_CORPUS) * 20, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "</s>", "eos_token": "</s>",
              "unk_token": "<unk>", "model_max_length": 16}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder
