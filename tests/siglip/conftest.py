"""The real SigLIP and SigLIP 2 configs run only under `make test-siglip` (two ViT-B/16 models, four compiles and
four servers: many minutes and several GB of memory)."""

from __future__ import annotations

import pytest

from tests.conftest import skip_unless_asked


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_unless_asked(items, "tests/siglip/", "CLIP_TEST_SIGLIP",
                      "registers, compiles and serves two ViT-B/16 SigLIP models: run `make test-siglip`")
