"""The real SigLIP and SigLIP 2 configs run only under `make test-siglip` (two ViT-B/16 models, four compiles and
four servers: many minutes and several GB of memory)."""

from __future__ import annotations

import os

import pytest

RUN = "CLIP_TEST_SIGLIP"  # set by `make test-siglip`


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(RUN) == "1":
        return
    skip = pytest.mark.skip(reason="registers, compiles and serves two ViT-B/16 SigLIP models: run `make test-siglip`")
    for item in items:
        if "tests/siglip/" in item.nodeid:
            item.add_marker(skip)
