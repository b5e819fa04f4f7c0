"""schemathesis against `backdate serve`'s own /openapi.json (a real process on a free port):
generated requests to every operation get no 5xx and answers that match the schema. The store
holds a mirrored home (written through the mirror's own store code before `serve` starts), so
the mirror's routes answer with real rows; every route refuses a missing or wrong token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from ingest_harness import INGEST_KEY, READ_TOKEN, Serve, get, request, sqlite_serve

from backdate.domain.registry import Snapshot
from backdate.store.db import migrate, open_engine
from backdate.store.mirror import MirrorStore

EXAMPLES = 100  # per operation: the whole file stays well under a minute


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with sqlite_serve(tmp_path_factory.mktemp("ingest-schema"), before=seed_mirror) as proc:
        yield proc


def seed_mirror(url: str) -> None:
    """A home as HA 2024.3's registry commands return it: both device shapes, a child device,
    a disabled entity, an entity without a device, states, history and a gap."""
    engine = open_engine(url)
    migrate(engine)
    store = MirrorStore(engine)
    t = "2026-01-05T10:00:00.000000+00:00"
    devices = [
        {"id": "dev-hub", "name": "Hub", "name_by_user": None, "manufacturer": "Acme",
         "model": "H1", "area_id": "kitchen", "config_entries": ["entry-mqtt"],
         "via_device_id": None, "disabled_by": None, "identifiers": [["mqtt", "hub"]]},
        {"id": "dev-child", "name": "Plug", "name_by_user": "Kettle plug",
         "manufacturer": "Acme", "model": "P2", "area_id": None,
         "config_entry_id": "entry-mqtt", "parent_device_id": "dev-hub", "disabled_by": None},
    ]
    entities = [
        {"entity_id": "sensor.hub_power", "id": "e1", "device_id": "dev-hub",
         "area_id": None, "platform": "mqtt", "disabled_by": None,
         "config_entry_id": "entry-mqtt", "name": None, "original_name": "Power"},
        {"entity_id": "switch.kettle", "id": "e2", "device_id": "dev-child",
         "area_id": "kitchen", "platform": "mqtt", "disabled_by": "user",
         "config_entry_id": "entry-mqtt", "name": "Kettle"},
        {"entity_id": "sun.sun", "id": "e3", "device_id": None, "area_id": None,
         "platform": "sun", "disabled_by": None, "config_entry_id": None, "name": None},
    ]
    states = [{"entity_id": e, "state": v, "attributes": {"unit_of_measurement": "W"},
               "last_changed": t, "last_updated": t}
              for e, v in (("sensor.hub_power", "12.5"), ("sun.sun", "above_horizon"))]
    store.replace("home", Snapshot(
        devices=devices, entities=entities,
        areas=[{"area_id": "kitchen", "name": "Kitchen", "aliases": [], "picture": None}],
        config_entries=[{"entry_id": "entry-mqtt", "domain": "mqtt", "title": "Mosquitto",
                         "state": "loaded", "source": "user"}],
        states=states, taken_at=1767607200.0))
    store.apply_state_changes("home", [
        {"time_fired": f"2026-01-05T10:00:{k:02d}.000000+00:00", "data": {
            "entity_id": "sensor.hub_power", "old_state": None,
            "new_state": {"entity_id": "sensor.hub_power", "state": str(k),
                          "attributes": {}, "last_changed": t, "last_updated": t}}}
        for k in range(30)], 1767607300.0)
    store.open_gap("home", 1767607000.0, "connection lost: test", "seed")
    engine.dispose()


MIRROR_ROUTES = {("GET", p) for p in (
    "/api/homes", "/api/devices", "/api/devices/{device_id}", "/api/entities",
    "/api/entities/{entity_id}", "/api/integrations", "/api/areas", "/api/events")}


def test_every_route_refuses_a_missing_or_wrong_token(serve: Serve) -> None:
    status, raw = get(serve.url + "/openapi.json", READ_TOKEN)
    assert status == 200
    routes = [(m.upper(), p) for p, ops in raw["paths"].items() for m in ops]
    assert set(routes) >= MIRROR_ROUTES
    filled = {"{device_id}": "dev-hub", "{entity_id}": "sensor.hub_power"}
    checked = 0
    for method, path in [*routes, ("GET", "/openapi.json"), ("GET", "/docs")]:
        for key, value in filled.items():
            path = path.replace(key, value)
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": f"Bearer {INGEST_KEY}"} if method == "GET"
                        else {"Authorization": f"Bearer {READ_TOKEN}"},
                        {"Authorization": "Basic " + __import__("base64").b64encode(
                            b"x:wrong-token-0123").decode()}):
            code, body = request(method, serve.url + path, headers=headers,
                                 body={} if method == "POST" else None)
            assert code == 401, (method, path, headers, code, body)
            checked += 1
        if method == "GET" and path.startswith("/api"):
            assert get(serve.url + path, READ_TOKEN)[0] == 200, path
    assert checked >= 4 * 14
    # Time range and cursor paging of the history (seeded: one change a second from 10:00:00).
    seen, cursor = [], 0
    while True:
        status, page = get(serve.url + "/api/events?entity_id=sensor.hub_power&start="
                           "2026-01-05T10:00:10Z&end=2026-01-05T10:00:20Z&limit=3"
                           f"&cursor={cursor}", READ_TOKEN)
        assert status == 200
        seen += [e["new_state"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == [str(k) for k in range(10, 20)]
    code, body = request("GET", serve.url + "/livez")
    assert (code, body) == (200, {"ok": True})  # the one public answer: nothing else in it


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
        ("GET", "/api/streams"), ("GET", "/")} | MIRROR_ROUTES
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
