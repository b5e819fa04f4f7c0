"""schemathesis against `backdate serve`'s own /openapi.json (a real process on a free port):
generated requests to every operation get no 5xx and answers that match the schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from ingest_harness import INGEST_KEY, READ_TOKEN, Serve, free_port, get, write_config

EXAMPLES = 100  # per operation: the whole file stays well under a minute


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    tmp: Path = tmp_path_factory.mktemp("ingest-schema")
    port = free_port()
    proc = Serve(write_config(tmp, f"sqlite:///{tmp / 'serve.db'}", port), port,
                 tmp / "serve.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_schemathesis_no_5xx_no_schema_violation(serve: Serve) -> None:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    status, raw = get(serve.url + "/openapi.json", READ_TOKEN)
    assert status == 200
    schema = schemathesis.openapi.from_dict(raw)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/ingest/v1/events:batch"), ("GET", "/api/gaps"), ("GET", "/api/health"),
        ("GET", "/api/streams"), ("GET", "/")}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    calls = 0
    def fuzz(op: object, auth: dict[str, str]) -> None:
        @given(case=op.as_strategy())  # type: ignore[attr-defined]
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: object) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=serve.url, headers=auth,  # type: ignore
                                   checks=checks, timeout=30)

        run()

    for op in operations:
        fuzz(op, {"Authorization": "Bearer " + (INGEST_KEY if op.path.startswith("/ingest")
                                                else READ_TOKEN)})
    assert calls >= len(operations) * 5
