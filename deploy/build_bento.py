"""Build the bento with the served model pinned: ``python -m deploy.build_bento [--cuda]``.

The model is ``CLIP_MODEL_TAG`` when set, otherwise the bundled demo model (registered into
the store first). Its tag is baked into the bento (``bento_model.json``) so the built bento
and its container serve exactly that model, packed inside, with no download at start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAKED = ROOT / "bento_model.json"


def model_tag() -> str:
    """The tag to pin: CLIP_MODEL_TAG, else the demo model."""
    tag = os.environ.get("CLIP_MODEL_TAG")
    if tag:
        from clip_runner.store.entries import open_entry

        return open_entry(tag).tag  # resolves ":latest" and fails clearly when absent
    from clip_runner.store.registration import register_demo

    return register_demo()


def build(cuda: bool) -> str:
    """Run `bentoml build` and return the bento tag it created."""
    tag = model_tag()
    bentofile = "bentofile.cuda.yaml" if cuda else "bentofile.yaml"
    BAKED.write_text(json.dumps({"tag": tag}))
    env = {**os.environ, "CLIP_MODEL_TAG": tag}
    if cuda:
        env.setdefault("CLIP_GPUS", "1")
    bentoml = Path(sys.executable).with_name("bentoml")
    try:
        out = subprocess.run([str(bentoml), "build", "-f", bentofile, "--output", "tag", str(ROOT)],
                             env=env, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
    finally:
        BAKED.unlink(missing_ok=True)  # a source checkout must not stay pinned
    bento_tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    print(f"model {tag} pinned in bento {bento_tag}", file=sys.stderr)
    return bento_tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cuda", action="store_true", help="build the CUDA variant")
    print(build(parser.parse_args().cuda))


if __name__ == "__main__":
    main()
