"""``python -m models``: register, list, export, compile, fine-tune, calibrate and evaluate CLIP models in
the BentoML model store. Examples: the README's "Models"; each command's ``--help``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clip_runner.errors import FinetuneError, ModelNotAvailable, PairDataError, RuntimeMissing
from clip_runner.settings import DEFAULT_MODEL_NAME
from clip_runner.store.selection import parse_model_name


def _register(args: argparse.Namespace) -> None:
    from clip_runner.store import registration as registry

    if args.random_init:
        print(f"WARNING: registering {args.random_init} with RANDOM weights: for benchmarks and tests only, "
              "its embeddings carry no meaning.", file=sys.stderr)
        tag = registry.register_random(args.random_init, seed=args.seed, name=args.name, tokenizer=args.tokenizer)
    elif args.checkpoint:
        tag = registry.register_checkpoint(args.checkpoint, args.arch, name=args.name, tokenizer=args.tokenizer)
    elif (ref := parse_model_name(args.model or DEFAULT_MODEL_NAME, args.pretrained)).hub_repo:
        tag = registry.register_hub_repo(ref.hub_repo, retries=args.retries)
    else:
        tag = registry.register_pretrained(ref.arch, ref.pretrained or "openai", retries=args.retries)
    print(tag)


def _list(_: argparse.Namespace) -> None:
    from clip_runner.store.entries import list_entries

    entries = list_entries()
    if not entries:
        print("no CLIP models in the store; register one with `python -m models register`")
        return
    print(f"{'TAG':56} {'ARCH':14} {'PRETRAINED':12} {'SOURCE':12} {'RUNTIME':14} {'DIM':>5} {'SIZE':>9}")
    for e in entries:
        size = f"{sum((e.path / name).stat().st_size for name in e.model_files) / 1e6:.1f} MB"
        runtime = e.runtime if e.runtime == "torch" else f"{e.runtime} {e.labels.get('precision', '')}"
        print(f"{e.tag:56} {e.labels.get('arch', '?')[:14]:14} {e.labels.get('pretrained', '?')[:12]:12} "
              f"{e.labels.get('source', '?')[:12]:12} {runtime:14} {e.embedding_size:>5} {size:>9}")


def _export(args: argparse.Namespace) -> None:
    import bentoml

    print(bentoml.models.export_model(args.tag, args.path))


def _compile(args: argparse.Namespace) -> None:
    try:
        from clip_runner.compile.openvino_compiler import compile_entries
    except ImportError as exc:  # the openvino extra is missing
        raise RuntimeMissing(f"compiling needs OpenVINO and NNCF ({exc}); install them with "
                             "pip install 'clip-service[openvino]'") from exc

    tags = compile_entries(args.tag, args.precision, Path(args.calibration) if args.calibration else None,
                           force=args.force, threads=args.threads)
    print("\n".join(tags.values()))


def _finetune(args: argparse.Namespace) -> None:
    from clip_runner.training.finetune import TrainConfig, finetune

    config = TrainConfig.from_settings(
        batch_size=args.batch_size, learning_rate=args.learning_rate, epochs=args.epochs,
        checkpoint_dir=args.checkpoint_dir, val_fraction=args.val_fraction, seed=args.seed, device=args.device)
    result = finetune(args.csv, config, tag=args.tag, arch=args.arch, model_config=args.model_config,
                      image_root=args.image_root, resume=args.resume, name=args.name,
                      register=not args.no_register)
    for row in result.history:
        print(json.dumps(row))
    print(f"used {result.data['used']} of {result.data['rows']} rows ({result.data['skipped']} skipped); "
          f"{result.seconds:.0f}s; last checkpoint: {result.checkpoint}", file=sys.stderr)
    if result.tag is not None:
        print(result.tag)


def _calibrate(args: argparse.Namespace) -> None:
    import torch

    from clip_runner.store.weights import load_entry
    from clip_runner.training.calibration import calibrate, register_calibrated

    loaded = load_entry(args.tag, torch.device("cpu"))
    result = calibrate(loaded, args.csv, args.image_root, seed=args.seed)
    print(f"threshold {result.threshold:.4f}: precision {result.precision:.4f}, recall {result.recall:.4f}, "
          f"F1 {result.f1:.4f}, AUC {result.auc:.4f} ({result.mismatches} mismatching, {result.matches} "
          "matching pairs; mismatch is the positive class)", file=sys.stderr)
    print(loaded.entry.tag if args.dry_run else register_calibrated(loaded.entry.tag, result, {"csv": str(args.csv)}))


def _evaluate(args: argparse.Namespace) -> None:
    from clip_runner.store.registration import register_demo
    from clip_runner.training.demo import evaluate_tag, format_report

    tag = args.tag or register_demo()
    result = evaluate_tag(tag, args.count, *([] if args.seed is None else [args.seed]))
    print(format_report(tag, result))
    if args.json:
        print(json.dumps(result.to_json()))


def _build_demo(args: argparse.Namespace) -> None:
    from clip_runner.store.registration import DEMO_DIR
    from clip_runner.training.demo import DemoRecipe, build_demo

    given = {"train_images": args.train_images, "epochs": args.epochs, "seed": args.seed}
    recipe = DemoRecipe(**{name: value for name, value in given.items() if value is not None})
    built = build_demo(Path(args.out) if args.out else DEMO_DIR, recipe)
    ev = built.card["evaluation"]
    print(f"demo model {built.tag} written to {built.folder} in {built.seconds / 60:.1f} min: zero-shot top-1 "
          f"{ev['zero_shot_top1']:.2%}, mismatch F1 {ev['mismatch_f1']:.4f}")


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    """The training commands; their defaults live in clip_runner.training (not imported here: torch)."""
    ft = sub.add_parser("finetune", help="contrastive fine-tuning on an image_path,text CSV; prints the new tag")
    ft.set_defaults(run=_finetune)
    ft.add_argument("csv", help="CSV with a header holding image_path and text columns")
    ft.add_argument("--image-root", help="folder the image paths are relative to (default: the CSV's folder)")
    ft.add_argument("--tag", help="start from this store entry")
    ft.add_argument("--arch", help="start from random weights of this open_clip architecture")
    ft.add_argument("--model-config", help="start from random weights of this model-config JSON")
    ft.add_argument("--resume", metavar="CHECKPOINT", help="continue the run saved in this checkpoint folder")
    ft.add_argument("--epochs", type=int, help="default CLIP_TRAIN_EPOCHS (3)")
    ft.add_argument("--batch-size", type=int, help="default CLIP_TRAIN_BATCH_SIZE (16)")
    ft.add_argument("--learning-rate", type=float, help="default CLIP_TRAIN_LEARNING_RATE (5e-6)")
    ft.add_argument("--checkpoint-dir", help="default CLIP_CHECKPOINT_DIR (./clip_checkpoints)")
    ft.add_argument("--val-fraction", type=float, help="held-out share for the per-epoch metric (0.1)")
    ft.add_argument("--seed", type=int)
    ft.add_argument("--device", help="auto, cpu, cuda")
    ft.add_argument("--name", help="store name of the result (default: <base>-finetune)")
    ft.add_argument("--no-register", action="store_true", help="keep checkpoints only")
    cal = sub.add_parser("calibrate", help="fit the mismatch threshold on a CSV; prints the new tag")
    cal.set_defaults(run=_calibrate)
    cal.add_argument("tag")
    cal.add_argument("csv", help="image_path,text CSV of matching pairs (or with a 0/1 label column)")
    cal.add_argument("--image-root")
    cal.add_argument("--seed", type=int, default=0, help="seed of the caption shuffle")
    cal.add_argument("--dry-run", action="store_true", help="report only; store nothing")
    ev = sub.add_parser("evaluate", help="zero-shot accuracy and mismatch F1 on generated shapes")
    ev.set_defaults(run=_evaluate)
    ev.add_argument("tag", nargs="?", help="store tag (default: the bundled demo model)")
    ev.add_argument("--count", type=int, default=1000)
    ev.add_argument("--seed", type=int, help="default: the demo's held-out evaluation seed")
    ev.add_argument("--json", action="store_true", help="also print the figures as JSON")
    demo = sub.add_parser("build-demo", help="regenerate the bundled demo model (CPU, deterministic)")
    demo.set_defaults(run=_build_demo)
    for flag in ("--train-images", "--epochs", "--seed"):
        demo.add_argument(flag, type=int, help="default: the demo recipe's (clip_runner.training.demo.DemoRecipe)")
    demo.add_argument("--out", help="output folder (default: models/demo)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="add a model to the store and print its tag")
    reg.set_defaults(run=_register)
    reg.add_argument("model", nargs="?", help="open_clip name, OpenAI/HF id or hf-hub:org/repo")
    reg.add_argument("--pretrained", help="open_clip pretrained tag (default: openai)")
    reg.add_argument("--checkpoint", metavar="PATH", help="local checkpoint file or directory")
    reg.add_argument("--arch", default=DEFAULT_MODEL_NAME, help="architecture of --checkpoint")
    reg.add_argument("--random-init", metavar="ARCH",
                     help="random weights for benchmarks (arch name or model-config JSON)")
    reg.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    reg.add_argument("--tokenizer", type=Path, metavar="DIR",
                     help="Hugging Face tokenizer folder for --random-init or --checkpoint of SigLIP models")
    reg.add_argument("--name", help="store name (default derived from the model)")
    reg.add_argument("--retries", type=int, default=3, help="download attempts per file")
    sub.add_parser("list", help="list CLIP models in the store").set_defaults(run=_list)
    exp = sub.add_parser("export", help="export a store entry to a file")
    exp.set_defaults(run=_export)
    exp.add_argument("tag")
    exp.add_argument("path")
    comp = sub.add_parser("compile", help="compile a stored model for a CPU runtime; prints the new tags")
    comp.set_defaults(run=_compile)
    comp.add_argument("tag", help="store entry to compile (a torch entry)")
    comp.add_argument("--precision", choices=["fp32", "bf16", "int8"], nargs="+", default=["fp32"],
                      help="one or more: each is its own entry, all from one export of the model")
    comp.add_argument("--calibration", metavar="DIR", help="int8: a folder of your images (default: a generated set)")
    comp.add_argument("--force", action="store_true", help="register even when parity is under the bar")
    comp.add_argument("--threads", type=int, help="inference threads for the parity check (default: all CPUs)")
    _add_training_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("clip_runner", "models", "nncf"):  # progress of our own (and of int8 calibration); not open_clip's
        logging.getLogger(name).setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ModelNotAvailable, FinetuneError, PairDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
