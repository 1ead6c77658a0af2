"""Schemathesis generates requests from the published OpenAPI schema, valid and invalid ones: no route
answers with a 5xx."""

from __future__ import annotations

import itertools

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given


def test_no_generated_request_gets_a_server_error(serve_app, make_settings, registry, corpus) -> None:
    url = serve_app(make_settings(rate_limit_per_minute=100_000), registry)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    failures: list[str] = []
    statuses: list[int] = []
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @given(case=operation.as_strategy(mode))
        @hypothesis.settings(
            max_examples=12,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, timeout=30)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
                )

        try:
            check()
        except hypothesis.errors.Unsatisfiable:  # nothing to make invalid (no parameters, no body)
            assert mode is schemathesis.GenerationMode.NEGATIVE
    assert failures == []
    assert len(statuses) >= 5 * len(operations) and {200, 201, 202, 404, 422} <= set(statuses)
