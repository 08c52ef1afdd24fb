"""The container tests run only under `make test-container` (they build an image: minutes, PyPI)."""

from __future__ import annotations

import os

import pytest

RUN = "CLIP_TEST_CONTAINER"  # set by `make test-container`


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(RUN) == "1":
        return
    skip = pytest.mark.skip(reason="builds and starts the container image: run `make test-container`")
    for item in items:
        if "tests/container/" in item.nodeid:
            item.add_marker(skip)
