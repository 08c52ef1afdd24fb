"""Stand-ins for the tokenizer folders of the real SigLIP and SigLIP 2 checkpoints, made offline.

open_clip's ``ViT-B-16-SigLIP`` names ``timm/ViT-B-16-SigLIP`` and ``ViT-B-16-SigLIP2`` names
``timm/ViT-B-16-SigLIP2``; both folders were written by open_clip's ``SigLipTokenizer.save_pretrained``:

* SigLIP: a T5 SentencePiece (Unigram) vocabulary, ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no start token; every
  text ends with ``</s>`` and is padded with ``</s>`` too (``pad_token`` is ``</s>``); ``tokenizer_class`` is
  ``T5Tokenizer``, which transformers rebuilds around the file's vocabulary.
* SigLIP 2: Gemma's byte-fallback BPE (256k ids): ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, then the 256
  byte pieces; ``add_bos_token`` false and ``add_eos_token`` true in ``tokenizer_config.json`` (transformers rebuilds
  the post-processor from those flags), padded on the right with ``<pad>``.

Here the vocabularies are small and learnt from a few sentences in several scripts (every id is far under the
configs' ``vocab_size``), but the files have the same layout, special tokens and flags, so that transformers
(open_clip's path) and the service's own tokenizer read them the way they read the real ones. The real T5 file's
normalizer (SentencePiece's precompiled NFKC map) cannot be made without the sentencepiece package: the stand-in
has none, and transformers keeps none either.
"""

from __future__ import annotations

import json
from pathlib import Path

# Sentences in several scripts: what the vocabularies are learnt from (lower case, as SigLIP cleans text).
CORPUS = ("a photo of a cat", "a photo of a dog on a table", "un chat sur une table", "ein hund im park",
          "猫の写真", "桌子上的狗", "собака на столе", "صورة قطة", "a red square and a blue circle",
          "una foto de un perro", "ένας σκύλος", "कुत्ते की तस्वीर", "고양이 사진", "naïve café crème")

BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]  # Gemma's byte fallback pieces


def write_t5_tokenizer(folder: Path, vocab_size: int = 600) -> Path:
    """A T5-style (SigLIP) tokenizer folder: Unigram, ``$A </s>``, pads with ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>")
    tokenizer.train_from_iterator(list(CORPUS) * 20, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"pad_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "T5Tokenizer", **special, "extra_ids": 0, "additional_special_tokens": [],
              "legacy": False, "model_max_length": 64}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return folder


def write_gemma_tokenizer(folder: Path, merges: int = 400, template: str = "$A <eos>") -> Path:
    """A Gemma-style (SigLIP 2) tokenizer folder: byte-fallback BPE, no start token, ends with ``<eos>``.

    ``template`` is the post-processor kept in ``tokenizer.json``; ``tokenizer_config.json`` always says
    ``add_bos_token: false, add_eos_token: true``. Gemma's own file starts texts with ``<bos>``: a folder saved
    with ``"<bos> $A"`` disagrees with its flags, and transformers follows the flags.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=len(specials) + merges, special_tokens=specials, limit_alphabet=200,
                                  show_progress=False)
    learner.train_from_iterator(list(CORPUS) * 20, trainer)
    learnt = json.loads(learner.to_str())["model"]
    vocab = {token: i for i, token in enumerate(specials + BYTE_PIECES)}
    for token, _ in sorted(learnt["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens(specials)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, pair=f"{template} {template.replace('$A', '$B')}",
        special_tokens=[(t, vocab[t]) for t in ("<bos>", "<eos>") if t in template])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
               "mask_token": "<mask>"}
    config = {"tokenizer_class": "GemmaTokenizer", **special, "add_bos_token": False, "add_eos_token": True,
              "padding_side": "right", "legacy": False, "model_max_length": 64}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return folder
