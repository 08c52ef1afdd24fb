"""The container tests run only under `make test-container` (they build an image: minutes, PyPI)."""

from __future__ import annotations

import pytest

from tests.conftest import skip_unless_asked


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_unless_asked(items, "tests/container/", "CLIP_TEST_CONTAINER",
                      "builds and starts the container image: run `make test-container`")
