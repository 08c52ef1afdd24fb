"""Build the bento with the served model pinned: ``python -m deploy.build_bento [--variant cpu|full|cuda]``.

The model is ``CLIP_MODEL_TAG`` when set, otherwise the bundled demo model; its tag is baked into
the bento (``bento_model.json``), so the bento and its image serve exactly that model, packed inside.
The slim ``cpu`` bento pins a compiled entry, compiled here first if need be (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from clip_runner.runtimes.choice import choose_compiled
from clip_runner.settings import get_settings
from clip_runner.store.entries import open_entry
from clip_runner.store.registration import register_demo

ROOT = Path(__file__).resolve().parents[1]
BAKED = ROOT / "bento_model.json"
BENTOFILES = {"cpu": "bentofile.yaml", "full": "bentofile.full.yaml", "cuda": "bentofile.cuda.yaml"}


def model_tag(variant: str) -> str:
    """The tag to pin: CLIP_MODEL_TAG, else the demo model; compiled first for the slim CPU bento."""
    named = os.environ.get("CLIP_MODEL_TAG")
    entry = open_entry(named or register_demo())  # resolves ":latest" and fails clearly when absent
    if variant != "cpu" or entry.runtime != "torch":
        return entry.tag
    settings = get_settings().model_copy(update={"device": "cpu"})
    picked = choose_compiled(entry, settings, settings.inference_thread_count)
    if picked is None:
        raise SystemExit(f"no compiled entry of {entry.tag} meets the parity bar (the log above says why); "
                         "build the full bento instead: make build-full")
    compiled, choice = picked
    print(f"{compiled.tag}: {choice.reason}", file=sys.stderr)
    return compiled.tag


def build(variant: str) -> str:
    """Run `bentoml build` for ``variant`` and return the bento tag it created."""
    tag = model_tag(variant)
    BAKED.write_text(json.dumps({"tag": tag}))
    env = {**os.environ, "CLIP_MODEL_TAG": tag}
    if variant == "cuda":
        env.setdefault("CLIP_GPUS", "1")
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "build", "-f", BENTOFILES[variant], "--output", "tag", str(ROOT)]
    try:
        out = subprocess.run(command, env=env, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
    finally:
        BAKED.unlink(missing_ok=True)  # a source checkout must not stay pinned
    bento_tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    print(f"model {tag} pinned in the {variant} bento {bento_tag}", file=sys.stderr)
    return bento_tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=BENTOFILES, default="cpu", help="which bento (default: cpu, the slim one)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # compile progress, when the slim bento compiles
    print(build(parser.parse_args().variant))


if __name__ == "__main__":
    main()
