"""``python -m models``: register, list and export CLIP models in the BentoML model store.

    python -m models register ViT-B-32 --pretrained openai       # hub download
    python -m models register openai/clip-vit-base-patch32       # same, by OpenAI/HF id
    python -m models register hf-hub:org/repo                    # an open_clip hub repo
    python -m models register --checkpoint ft.safetensors --arch ViT-B-32
    python -m models register --random-init ViT-B-32             # benchmarks only
    python -m models list
    python -m models export clip-vit-b-32-openai:latest ./clip.bentomodel
"""

from __future__ import annotations

import argparse
import logging
import sys

from clip_runner.errors import ModelNotAvailable
from clip_runner.resolve import parse_model_name
from clip_runner.settings import DEFAULT_MODEL_NAME


def _register(args: argparse.Namespace) -> str:
    from . import register

    if args.random_init:
        print(
            f"WARNING: registering {args.random_init} with RANDOM weights: for benchmarks and "
            "tests only, its embeddings carry no meaning.",
            file=sys.stderr,
        )
        return register.register_random(args.random_init, seed=args.seed, name=args.name)
    if args.checkpoint:
        return register.register_checkpoint(args.checkpoint, args.arch, name=args.name)
    ref = parse_model_name(args.model or DEFAULT_MODEL_NAME, args.pretrained)
    if ref.hub_repo:
        return register.register_hub_repo(ref.hub_repo, retries=args.retries)
    return register.register_pretrained(ref.arch, ref.pretrained or "openai", retries=args.retries)


def _list(_: argparse.Namespace) -> None:
    from clip_runner.store import list_entries

    entries = list_entries()
    if not entries:
        print("no CLIP models in the store; register one with `python -m models register`")
        return
    print(f"{'TAG':48} {'ARCH':16} {'PRETRAINED':14} {'SOURCE':12} {'DIM':>5} {'SIZE':>9}")
    for e in entries:
        size = f"{e.metadata.get('weights_bytes', 0) / 1e6:.1f} MB"
        print(
            f"{e.tag:48} {e.labels.get('arch', '?')[:16]:16} {e.labels.get('pretrained', '?')[:14]:14} "
            f"{e.labels.get('source', '?'):12} {e.embedding_size:>5} {size:>9}"
        )


def _export(args: argparse.Namespace) -> None:
    import bentoml

    path = bentoml.models.export_model(args.tag, args.path)
    print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="add a model to the store and print its tag")
    reg.add_argument("model", nargs="?", help="open_clip name, OpenAI/HF id or hf-hub:org/repo")
    reg.add_argument("--pretrained", help="open_clip pretrained tag (default: openai)")
    reg.add_argument("--checkpoint", metavar="PATH", help="local checkpoint file or directory")
    reg.add_argument("--arch", default=DEFAULT_MODEL_NAME, help="architecture of --checkpoint")
    reg.add_argument("--random-init", metavar="ARCH",
                     help="random weights for benchmarks (arch name or model-config JSON)")
    reg.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    reg.add_argument("--name", help="store name (default derived from the model)")
    reg.add_argument("--retries", type=int, default=3, help="download attempts per file")
    sub.add_parser("list", help="list CLIP models in the store")
    exp = sub.add_parser("export", help="export a store entry to a file")
    exp.add_argument("tag")
    exp.add_argument("path")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "register":
            print(_register(args))
        elif args.command == "list":
            _list(args)
        elif args.command == "export":
            _export(args)
    except ModelNotAvailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
