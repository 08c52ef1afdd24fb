"""Schema-driven fuzzing of the public API (schemathesis + hypothesis): no input may produce a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.integration.conftest import asgi_app

EXAMPLES_PER_ROUTE = 30


@pytest.fixture(scope="session")
def api_schema(client):
    # The app behind the running test client, so the service instance is initialised.
    return schemathesis.openapi.from_asgi("/openapi.json", asgi_app(client))


def test_schema_covers_every_route(api_schema) -> None:
    paths = {op.ok().path for op in api_schema.get_all_operations()}
    assert {"/encode_image", "/encode_images", "/similarity", "/analyze", "/analyze_batch", "/classify",
            "/categories", "/health", "/clip/analyze", "/clip/classify"} <= paths


def test_no_server_errors(api_schema) -> None:
    failures: list[str] = []
    statuses: list[int] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def fuzz(case) -> None:
            response = case.call()
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} -> {response.status_code}: {response.text[:200]}")

        fuzz()
    assert not failures, "\n".join(failures[:10])
    # The fuzzer really exercised the routes: many calls, both refusals and successes.
    assert len(statuses) >= 100 and any(400 <= s < 500 for s in statuses) and 200 in statuses
