"""What a new user of `backdate serve` / `backdate send` runs into. Real processes over
loopback HTTP (SQLite)."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_harness import (
    HOST,
    INGEST_KEY,
    READ_TOKEN,
    Serve,
    backdate_cmd,
    get,
    sqlite_serve,
    write_config,
)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with sqlite_serve(tmp_path_factory.mktemp("ingest-newuser")) as proc:
        yield proc


def _env(tmp: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "BACKDATE_INGEST_API_KEY": INGEST_KEY}


def _send(tmp: Path, file: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(backdate_cmd("send", str(file), "--to", url, "--give-up-after", "5"),
                          capture_output=True, text=True, timeout=60, env=_env(tmp))


def _values(serve: Serve, device: str) -> list[int]:
    status, body = get(serve.url + "/api/streams", READ_TOKEN)
    assert status == 200
    [stream] = [s for s in body["streams"] if s["device_id"] == device]
    return [stream["events"], stream["high_water_mark"]]


def _lines(path: Path, device: str, values: range) -> None:
    path.write_text("".join(f'{{"device_id": "{device}", "v": {v}}}\n' for v in values))


def test_send_refuses_a_rewritten_file_instead_of_skipping_its_lines(
        tmp_path: Path, serve: Serve) -> None:
    # The outbox remembers how far it read FILE. Appended lines are sent on the next run.
    events = tmp_path / "events.jsonl"
    _lines(events, "rewrite", range(1, 4))
    first = _send(tmp_path, events, serve.url)
    assert first.returncode == 0, first.stderr
    with events.open("a") as handle:
        handle.write('{"device_id": "rewrite", "v": 4}\n')
    appended = _send(tmp_path, events, serve.url)
    assert appended.returncode == 0, appended.stderr
    assert _values(serve, "rewrite") == [4, 4]
    # A new file under the same name (a shorter one, or a longer one with other lines) used to
    # be read from the old offset on: its first lines were skipped, "0 stored", exit 0.
    for new in (range(5, 7), range(10, 20)):
        _lines(events, "rewrite", new)
        proc = _send(tmp_path, events, serve.url)
        flat = " ".join(proc.stderr.split())
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert f"{events}: the file changed" in flat and "--outbox" in flat, proc.stderr
        assert "Traceback" not in proc.stderr
    assert _values(serve, "rewrite") == [4, 4]
    # With a new outbox the rewritten file goes out whole (a new epoch).
    proc = subprocess.run(backdate_cmd("send", str(events), "--to", serve.url, "--outbox",
                                       str(tmp_path / "second.outbox.db")),
                          capture_output=True, text=True, timeout=60, env=_env(tmp_path))
    assert proc.returncode == 0 and "10 stored" in " ".join(proc.stdout.split()), proc.stdout


def test_serve_says_where_it_listens_or_why_it_cannot(tmp_path: Path, serve: Serve) -> None:
    # A started serve used to print nothing at all: now one line names its URL and routes.
    assert f"serving {serve.url} (POST /ingest/v1/events:batch" in serve.log.read_text()
    # A port in use was uvicorn's "ERROR: [Errno 98] error while attempting to bind ...".
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f"sqlite:///{tmp_path / 'serve.db'}", port)
        proc = subprocess.run(backdate_cmd("serve", "--config", str(config)),
                              capture_output=True, text=True, timeout=60, env=_env(tmp_path))
    flat = " ".join(proc.stderr.split())
    assert proc.returncode == 3, proc.stderr
    assert flat.startswith(f"error: cannot listen on {HOST}:{port}: ") and "in use" in flat, \
        proc.stderr
    assert "Traceback" not in proc.stderr and "ERROR:" not in proc.stderr


def test_send_names_a_wrong_url_and_a_wrong_policy(tmp_path: Path, serve: Serve) -> None:
    events = tmp_path / "events.jsonl"
    _lines(events, "wrong-url", range(1, 3))
    # A URL whose path is not the ingest route was "HTTP 404: HTTP 404".
    proc = _send(tmp_path, events, serve.url + "/ingest")
    flat = " ".join(proc.stderr.split())
    assert proc.returncode == 3, proc.stderr
    assert f"(HTTP 404: no ingest endpoint at {serve.url}/ingest/ingest/v1/events:batch)" \
        in flat, proc.stderr
    # A bad --policy is a usage error (exit 2), and it is found before an outbox is made.
    other = tmp_path / "other.jsonl"
    _lines(other, "policy", range(1, 3))
    proc = subprocess.run(backdate_cmd("send", str(other), "--to", serve.url, "--policy",
                                       "newest"),
                          capture_output=True, text=True, timeout=60, env=_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "'block' or 'drop_oldest'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "other.jsonl.outbox.db").exists()


def test_interrupted_send_says_how_to_resume(tmp_path: Path, serve: Serve) -> None:
    events = tmp_path / "many.jsonl"
    _lines(events, "sigint", range(20_000))
    env = _env(tmp_path)
    proc = subprocess.Popen(backdate_cmd("send", str(events), "--to", serve.url, "--batch", "5",
                                         "--parallel", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (tmp_path / "many.jsonl.outbox.db").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    flat = " ".join(err.split())
    assert proc.returncode == 3, (out, err)
    assert "interrupted:" in flat and "the same command sends them" in flat, err
    assert "Traceback" not in err
    # The same command finishes the job: every line stored once.
    done = _send(tmp_path, events, serve.url)
    assert done.returncode == 0, done.stderr
    assert _values(serve, "sigint") == [20_000, 20_000]


def test_serve_without_any_configuration_file_says_so(tmp_path: Path) -> None:
    # No ./backdate.toml and none in ~/.config: the message was "<environment>:
    # serve.api_tokens: set at least one token", which sent new users looking for a variable.
    proc = subprocess.run(backdate_cmd("serve", "--check"), capture_output=True, text=True,
                          timeout=60, env=_env(tmp_path), cwd=tmp_path)
    flat = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stderr
    assert "no configuration: no ./backdate.toml" in flat and "--config" in flat, proc.stderr
    assert "Traceback" not in proc.stderr


def test_send_refuses_an_event_larger_than_a_request(tmp_path: Path) -> None:
    # A line over the server's 32 MiB request limit was put in the outbox and answered 413
    # on every run: exit 3 each time, and the lines after it never went out.
    events = tmp_path / "events.jsonl"
    events.write_text('{"device_id": "big", "v": 1}\n'
                      + '{"device_id": "big", "blob": "' + "x" * (32 * 1024 * 1024) + '"}\n')
    proc = subprocess.run(backdate_cmd("send", str(events), "--to", "http://127.0.0.1:9"),
                          capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    flat = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stderr
    assert f"{events}:2: an event of 32.0 MiB" in flat and "Traceback" not in flat, proc.stderr
    assert not (tmp_path / "events.jsonl.outbox.db").exists()


def test_send_refuses_an_outbox_that_is_not_one(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    _lines(events, "not-outbox", range(1, 3))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(bytes(range(256)) * 32)
    folder = tmp_path / "folder.db"
    folder.mkdir()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE readings (t INTEGER, v REAL)")
    # A garbage file and a directory were tracebacks; another program's SQLite database
    # (serve's own store, say) silently got the outbox's tables.
    for box, problem in ((garbage, "file is not a database"),
                         (folder, "a directory"),
                         (other, "not an outbox: it holds other tables (readings)")):
        proc = subprocess.run(backdate_cmd("send", str(events), "--to", "http://127.0.0.1:9",
                                           "--outbox", str(box)),
                              capture_output=True, text=True, timeout=60, env=_env(tmp_path))
        flat = " ".join(proc.stderr.split())
        assert proc.returncode == 1, proc.stderr
        assert flat.startswith(f"error: {box}: ") and problem in flat, proc.stderr
        assert "Traceback" not in proc.stderr
    with sqlite3.connect(other) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = "
                                             "'table'")]
    assert tables == ["readings"]
