"""The ingest endpoint's wire contract against a real `backdate serve` (SQLite, loopback HTTP):
the seed's payload shapes, gaps and resends, counter resets flagged (never dropped), lost
reports, epochs, 401 on every route, and clear configuration errors."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from ingest_harness import (
    INGEST_KEY,
    JWT_AUDIENCE,
    JWT_ISSUER,
    JWT_SECRET,
    READ_TOKEN,
    Serve,
    backdate_cmd,
    free_port,
    get,
    post,
    request,
    sqlite_serve,
)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with sqlite_serve(tmp_path_factory.mktemp("ingest-api")) as proc:
        yield proc


def _stream(serve: Serve, device: str) -> list[dict]:
    status, body = get(serve.url + "/api/streams", READ_TOKEN)
    assert status == 200
    return [s for s in body["streams"] if s["device_id"] == device]


def _gaps(serve: Serve, device: str) -> list[dict]:
    status, body = get(serve.url + f"/api/gaps?device_id={device}", READ_TOKEN)
    assert status == 200
    return body["gaps"]


def test_seed_payload_shapes(serve: Serve) -> None:
    # The seed's HA client: an array of Core events (device_key, string numbers, its fields).
    ha = [{"device_key": "seed-ha", "workspace_id": "w1", "recorded_at": "2026-02-16T10:00:00Z",
           "temperature_f": 70.5, "last_heat_setpoint": 68, "equipment_status": "HEAT",
           "event_type": "Telemetry_Update", "source": "home_assistant",
           "source_vendor": "home_assistant", "sequence_number": str(i), "payload_raw": {}}
          for i in (1, 2)]
    status, answer = post(serve.url, ha)
    assert status == 200 and answer == {"ok": True, "accepted": 2, "duplicates": 0, "gaps": []}
    # {"events": [...]} and a single object, as the seed's server took them.
    status, answer = post(serve.url, {"events": [{**ha[0], "sequence_number": 3}]})
    assert (status, answer["accepted"]) == (200, 1)
    status, answer = post(serve.url, {**ha[0], "sequence_number": 4})
    assert (status, answer["accepted"]) == (200, 1)
    # Hubitat: one counter per device seeded with epoch milliseconds, no `epoch` field.
    hub = {"device_id": "seed-hubitat", "source_vendor": "hubitat",
           "sequence_number": 1771236000000, "event_type": "State_Update",
           "timestamp": "2026-02-16T10:00:00Z"}
    assert post(serve.url, hub)[1]["accepted"] == 1
    # An old client without any sequence number is stored too (no gap tracking).
    status, answer = post(serve.url, {"device_id": "seed-old", "event_type": "Mode_Change"})
    assert (status, answer["accepted"]) == (200, 1)
    [stream] = _stream(serve, "seed-ha")
    assert (stream["events"], stream["high_water_mark"], stream["epoch"]) == (4, 4, 0)
    assert stream["source_vendor"] == "home_assistant"
    # The same event again is a duplicate, answered as such and not stored twice.
    status, answer = post(serve.url, ha)
    assert answer["accepted"] == 0 and answer["duplicates"] == 2
    assert _stream(serve, "seed-ha")[0]["events"] == 4


def _ev(device: str, seq: int, epoch: int = 1, **extra: object) -> dict:
    return {"device_id": device, "source_vendor": "test", "epoch": epoch,
            "sequence_number": seq, "event_type": "State_Update",
            "timestamp": "2026-01-01T00:00:00Z", **extra}


def test_gaps_answered_and_resolved(serve: Serve) -> None:
    status, answer = post(serve.url, [_ev("gap", 1), _ev("gap", 2), _ev("gap", 6)])
    assert status == 200
    assert answer["gaps"] == [{"device_id": "gap", "source_vendor": "test", "epoch": 1,
                               "missing_sequences": [3, 4, 5], "missing_ranges": [[3, 5]],
                               "missing_count": 3}]
    status, answer = post(serve.url, [_ev("gap", 4)])
    assert answer["gaps"][0]["missing_sequences"] == [3, 5]
    assert [g["status"] for g in _gaps(serve, "gap")] == ["open"]
    status, answer = post(serve.url, [_ev("gap", 3), _ev("gap", 5), _ev("gap", 7)])
    assert answer["gaps"] == [] and answer["accepted"] == 3
    [gap] = _gaps(serve, "gap")
    assert (gap["status"], gap["first_seq"], gap["last_seq"]) == ("resolved", 3, 5)
    assert gap["resolved_at"] is not None
    # Long gaps: every number in missing_ranges, at most 1000 spelled out.
    status, answer = post(serve.url, [_ev("gap", 100_000)])
    [g] = answer["gaps"]
    assert g["missing_ranges"] == [[8, 99_999]] and len(g["missing_sequences"]) == 1000


def test_counter_reset_is_flagged_never_dropped(serve: Serve) -> None:
    # The seed's incident: the server at 5219, the client restarted at 7 without a new epoch.
    post(serve.url, [_ev("reset", s, epoch=0, n=s) for s in (5217, 5218, 5219)])
    status, answer = post(serve.url, [_ev("reset", 7, epoch=0, n="after restart")])
    assert status == 200 and answer["accepted"] == 1
    assert answer["counter_resets"] == [{"device_id": "reset", "source_vendor": "test",
                                         "epoch": 0, "sequences": [[7, 7]]}]
    # A number the old counter already used, with other content: stored, flagged.
    status, answer = post(serve.url, [_ev("reset", 5218, epoch=0, n="new content")])
    assert answer["accepted"] == 1 and answer["counter_resets"][0]["sequences"] == [[5218,
                                                                                    5218]]
    # Its resend is a duplicate, not a third copy.
    status, answer = post(serve.url, [_ev("reset", 5218, epoch=0, n="new content")])
    assert (answer["accepted"], answer["duplicates"]) == (0, 1)
    [stream] = _stream(serve, "reset")
    assert (stream["events"], stream["counter_resets"]) == (5, 2)


def test_lost_report_and_new_epoch(serve: Serve) -> None:
    post(serve.url, [_ev("lost", 1), _ev("lost", 5)])  # 2..4 missing
    status, answer = post(serve.url, {"events": [], "lost": [
        {"device_id": "lost", "source_vendor": "test", "epoch": 1, "sequences": [[2, 3]]}]})
    assert status == 200 and answer["lost_recorded"] == 2
    assert answer["gaps"][0]["missing_ranges"] == [[4, 4]]
    statuses = sorted((g["first_seq"], g["status"]) for g in _gaps(serve, "lost"))
    assert statuses == [(2, "lost"), (4, "open")]
    # The sender lost its state: a new epoch starts at 1 and fences the old gaps.
    status, answer = post(serve.url, [_ev("lost", 1, epoch=2), _ev("lost", 2, epoch=2)])
    assert answer["accepted"] == 2 and answer["gaps"] == []
    gaps = {g["first_seq"]: g for g in _gaps(serve, "lost")}
    assert gaps[4]["status"] == "lost" and gaps[4]["reason"] == "superseded by epoch 2"


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"events": "x"}', b"42",
                                  b'[{"sequence_number": 1}]',
                                  b'[{"device_id": "x", "sequence_number": "abc"}]',
                                  b'[{"device_id": "x", "sequence_number": -1}]',
                                  b'[{"device_id": "x", "epoch": true}]',
                                  # int() refuses these although str.isdigit() passes them:
                                  # they were 500s with a traceback in the server's log.
                                  '[{"device_id": "x", "sequence_number": "²"}]'.encode(),
                                  b'[{"device_id": "x", "sequence_number": "--3"}]',
                                  b'[{"device_id": "x", "epoch": "--3"}]',
                                  b'[{"device_id": "x", "sequence_number": "' + b"1" * 5000
                                  + b'"}]',
                                  '{"lost": [{"device_id": "x", "sequences": ["²"]}]}'.encode(),
                                  b'{"lost": [{"device_id": "x", "sequences": 5}]}',
                                  # A string is not a list of numbers ("12" was lost 1 and 2).
                                  b'{"lost": [{"device_id": "x", "sequences": "12"}]}',
                                  # Only ASCII digits: "\u0663" (Arabic-Indic 3) is not 3.
                                  b'[{"device_id": "x", "sequence_number": "\\u0663"}]'])
def test_bad_requests_are_400_with_json(serve: Serve, body: bytes) -> None:
    status, answer = request("POST", serve.url + "/ingest/v1/events:batch", INGEST_KEY,
                             raw=body)
    assert status == 400 and answer["ok"] is False and answer["error"]


def _token(**claims: object) -> str:
    base = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "exp": int(time.time()) + 600}
    return jwt.encode({**base, **claims}, JWT_SECRET, algorithm="HS256")


def test_401_on_every_route(serve: Serve) -> None:
    status, schema = get(serve.url + "/openapi.json", READ_TOKEN)
    assert status == 200
    routes = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]
    routes.append(("GET", "/openapi.json"))
    assert ("POST", "/ingest/v1/events:batch") in routes and ("GET", "/api/gaps") in routes
    assert ("GET", "/") in routes and ("GET", "/api/health") in routes
    for method, path in routes:
        ingest = path.startswith("/ingest")
        wrong = [None, "wrong-token-123456", READ_TOKEN if ingest else INGEST_KEY]
        for token in wrong:
            body = [_ev("auth", 1)] if method == "POST" else None
            status, answer = request(method, serve.url + path, token, body)
            assert status == 401, (method, path, token, answer)
            assert answer["ok"] is False and answer["error"] in ("Missing Authorization",
                                                                 "Unauthorized")
    # JWT: the right issuer, audience and secret only.
    url = serve.url + "/ingest/v1/events:batch"
    assert request("POST", url, _token(), [_ev("jwt", 1)])[0] == 200
    for bad in (_token(aud="other"), _token(iss="other"), _token(exp=int(time.time()) - 3600),
                jwt.encode({"iss": JWT_ISSUER, "aud": JWT_AUDIENCE},
                           "another-secret-0123456789abcdefghij", algorithm="HS256"),
                jwt.encode({"iss": JWT_ISSUER, "aud": JWT_AUDIENCE}, None, algorithm="none")):
        assert request("POST", url, bad, [_ev("jwt", 2)])[0] == 401
    # The page takes HTTP Basic with the token as password (a browser's login dialog).
    basic = base64.b64encode(f"me:{READ_TOKEN}".encode()).decode()
    status, page = request("GET", serve.url + "/", headers={"Authorization": f"Basic {basic}"})
    assert status == 200 and "<h2>Gaps</h2>" in page and "jwt" in page


def test_gap_deadline_marks_lost(tmp_path: Path) -> None:
    from backdate.domain.delivery import parse_batch
    from backdate.services.ingest import IngestService
    from backdate.store.db import migrate, open_engine
    from backdate.store.ingest import IngestStore

    engine = open_engine(f"sqlite:///{tmp_path / 's.db'}")
    migrate(engine)
    service = IngestService(IngestStore(engine), gap_deadline=3600)
    service.store.apply(parse_batch([_ev("dl", 1), _ev("dl", 3)]), now=1_000_000.0)
    assert service.expire_gaps(now=1_000_000.0 + 3599) == 0
    assert service.expire_gaps(now=1_000_000.0 + 3601) == 1
    [gap] = service.store.gaps()
    assert (gap["status"], gap["reason"]) == ("lost", "deadline passed")
    engine.dispose()


CONFIG_CASES = [
    ("[serve]\nlisten = \"127.0.0.1:1\"\n[serve.ingest]\napi_keys = [\"k123456789\"]\n",
     "serve.api_tokens", 1),
    ("[serve]\napi_tokens = [\"t123456789\"]\n\n[serve.ingest]\ngap_deadline = \"24h\"\n",
     "set api_keys or jwt_secret", 4),
    ("[serve]\napi_tokens = [\"t123456789\"]\n[serve.ingest]\napi_keys = [\"k123456789\"]\n"
     "jwt_secret = \"s1234567890123456\"\n", "jwt_issuer and jwt_audience", 3),
    ("[serve]\napi_tokens = [\"t123456789\"]\n[serve.ingest]\napi_keys = [\"k123456789\"]\n"
     "gap_deadline = \"soon\"\n", "not a duration", 5),
    ("[serve]\napi_tokens = [\"t123456789\"]\nlisten = \"nowhere\"\n[serve.ingest]\n"
     "api_keys = [\"k123456789\"]\n", "not host:port", 3),
    ("[serve]\napi_tokens = [\"t123456789\"]\n[serve.ingest]\napi_key = [\"k123456789\"]\n",
     "unknown setting", 4),
    # A value's problem is named at its own line (it was the [serve.ingest] header's).
    ("[serve]\napi_tokens = [\"t123456789\"]\n[serve.ingest]\napi_keys = [\"k123456789\"]\n"
     "jwt_issuer = \"i\"\njwt_audience = \"a\"\njwt_secret = \"short\"\n",
     "jwt_secret: use at least 16 characters", 7),
    # A misspelt table is named at its own header (it was line 1, the [serve] line).
    ("[serve]\napi_tokens = [\"t123456789\"]\n\n[serve.ingst]\napi_keys = [\"k123456789\"]\n",
     "serve.ingst: unknown setting", 4),
]


@pytest.mark.parametrize(("text", "message", "line"), CONFIG_CASES)
def test_config_errors_name_file_and_line(tmp_path: Path, text: str, message: str,
                                          line: int) -> None:
    path = tmp_path / "backdate.toml"
    path.write_text(text)
    proc = subprocess.run(backdate_cmd("serve", "--config", str(path), "--check"),
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr
    flat = " ".join(proc.stderr.split())  # Rich wraps long lines
    assert f"{path}:{line}:" in flat and message in flat, proc.stderr
    assert "Traceback" not in proc.stderr


def test_send_refuses_bad_file_and_unreachable_server(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"device_id": "a"}\n{"device_id": "b"\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BACKDATE_INGEST_API_KEY": "k" * 12}
    proc = subprocess.run(backdate_cmd("send", str(bad), "--to", "http://127.0.0.1:9"),
                          capture_output=True, text=True, timeout=60, env=env)
    flat = " ".join(proc.stderr.split())
    # A broken line is "not valid JSON" (it was "not a JSON object", as for a valid array).
    assert proc.returncode == 1 and f"{bad}:2: not valid JSON (" in flat, proc.stderr
    assert not (tmp_path / "bad.jsonl.outbox.db").exists()
    good = tmp_path / "good.jsonl"
    good.write_text('{"device_id": "a", "n": 1}\n')
    proc = subprocess.run(backdate_cmd("send", str(good), "--to", f"http://127.0.0.1:"
                                       f"{free_port()}", "--give-up-after", "3"),
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 3, proc.stderr
    assert "stay in the outbox" in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr


def test_late_request_of_an_old_epoch_opens_no_gap(serve: Serve) -> None:
    post(serve.url, [_ev("late", 1, epoch=1)])
    post(serve.url, [_ev("late", 1, epoch=2)])
    status, answer = post(serve.url, [_ev("late", 5, epoch=1)])  # delayed, from the old sender
    assert status == 200 and answer["accepted"] == 1 and answer["gaps"] == []
    [gap] = _gaps(serve, "late")
    assert (gap["epoch"], gap["status"], gap["reason"]) == (1, "lost", "superseded by epoch 2")


def test_overtaken_first_events_of_an_epoch_are_not_resets(serve: Serve) -> None:
    # Parallel requests: numbers 4-5 arrive before 1-3.
    status, answer = post(serve.url, [_ev("overtaken", 4), _ev("overtaken", 5)])
    status, answer = post(serve.url, [_ev("overtaken", 1)])
    assert "counter_resets" not in answer
    assert answer["gaps"][0]["missing_ranges"] == [[2, 3]]
    status, answer = post(serve.url, [_ev("overtaken", 3), _ev("overtaken", 2)])
    assert answer["gaps"] == [] and "counter_resets" not in answer
    [stream] = _stream(serve, "overtaken")
    assert (stream["first_sequence"], stream["counter_resets"], stream["events"]) == (1, 0, 5)
    assert [g["status"] for g in _gaps(serve, "overtaken")] == ["resolved"]
