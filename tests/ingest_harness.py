"""Real `backdate serve` / `backdate send` processes and a fault-injecting HTTP proxy for the
delivery tests. Every wait has a deadline; every process is killed in teardown."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
READ_TOKEN = "read-token-0123456789"
INGEST_KEY = "ingest-key-0123456789"
JWT_SECRET = "jwt-secret-0123456789abcdef-0123456"
JWT_ISSUER = "bubble.smartfilterpro"
JWT_AUDIENCE = "core.smartfilterpro"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def write_config(directory: Path, store: str, port: int, gap_deadline: str = "24h") -> Path:
    path = directory / f"serve-{port}.toml"
    path.write_text(f"""
[serve]
listen = "{HOST}:{port}"
store = "{store}"
api_tokens = ["{READ_TOKEN}"]

[serve.ingest]
api_keys = ["{INGEST_KEY}"]
jwt_secret = "{JWT_SECRET}"
jwt_issuer = "{JWT_ISSUER}"
jwt_audience = "{JWT_AUDIENCE}"
gap_deadline = "{gap_deadline}"
""")
    return path


def backdate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "backdate.cli", *args]


@contextlib.contextmanager
def sqlite_serve(directory: Path, before: Callable[[str], None] | None = None
                 ) -> Iterator[Serve]:
    """One `backdate serve` on a SQLite store in `directory`, stopped afterwards; `before`
    gets the store URL first (to seed it)."""
    store = f"sqlite:///{directory / 'serve.db'}"
    if before is not None:
        before(store)
    port = free_port()
    proc = Serve(write_config(directory, store, port), port, directory / "serve.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


class Serve:
    """One `backdate serve` process on a fixed port (restartable on the same port)."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 45.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(backdate_cmd("serve", "--config", str(self.config)),
                                         stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                status, _ = get(self.url + "/api/health", READ_TOKEN, timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not answer within {timeout} s")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def request(method: str, url: str, token: str | None = None, body: Any = None,
            timeout: float = 10.0, raw: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request; returns (status, parsed JSON or text)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                     body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(payload)
    except ValueError:
        return resp.status, payload.decode(errors="replace")


def get(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    return request("GET", url, token, timeout=timeout)


def post(url: str, body: Any, token: str | None = INGEST_KEY) -> tuple[int, Any]:
    return request("POST", url + "/ingest/v1/events:batch", token, body)


# ---------------------------------------------------------------------------- chaos proxy


class ChaosProxy:
    """An HTTP/1.1 proxy that loses, duplicates and reorders a share of requests and answers.

    Per request, with probability `rate`, one fault: the request is dropped (connection
    closed, never forwarded); the answer is dropped (forwarded and committed, but the client
    sees a closed connection); the request is delivered twice (the copy later, from another
    thread); or it is held back 50-400 ms, so later requests overtake it. Upstreams are used
    in turn (two `serve` processes behind one address); a dead upstream gives 502.
    """

    def __init__(self, upstreams: list[int], rate: float = 0.1, seed: int = 15) -> None:
        self.upstreams = upstreams
        self.rate = rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.turn = 0
        self.counts = {"requests": 0, "drop_request": 0, "drop_answer": 0, "duplicate": 0,
                       "delay": 0, "upstream_down": 0}
        self.port = free_port()
        self.open = threading.Event()  # cleared by hold(): requests wait, nothing is answered
        self.open.set()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((HOST, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.open.set()
        self.server.shutdown()
        self.server.server_close()

    def hold(self) -> None:
        """Stop forwarding: the client gets no acknowledgement, so its outbox fills."""
        self.open.clear()

    def release(self) -> None:
        self.open.set()

    def _pick(self) -> tuple[str | None, int]:
        with self.lock:
            self.counts["requests"] += 1
            self.turn += 1
            upstream = self.upstreams[self.turn % len(self.upstreams)]
            if self.rng.random() >= self.rate:
                return None, upstream
            fault = self.rng.choice(["drop_request", "drop_answer", "duplicate", "delay"])
            self.counts[fault] += 1
            return fault, upstream

    def _forward(self, upstream: int, method: str, path: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
        conn = http.client.HTTPConnection(HOST, upstream, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        except OSError:
            with self.lock:
                self.counts["upstream_down"] += 1
            return None
        finally:
            conn.close()

    def _handle(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        reader = sock.makefile("rb")
        try:
            while True:
                line = reader.readline(65536)
                if not line:
                    return
                self.open.wait(30)
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = reader.readline(65536)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip()] = v.strip()
                length = int(headers.get("Content-Length") or headers.get("content-length")
                             or 0)
                body = reader.read(length) if length else b""
                fwd = {k: v for k, v in headers.items()
                       if k.lower() not in ("connection", "keep-alive", "host")}
                fault, upstream = self._pick()
                if fault == "drop_request":
                    return
                if fault == "delay":
                    time.sleep(self.rng.uniform(0.05, 0.4))
                if fault == "duplicate":
                    later = threading.Timer(self.rng.uniform(0.0, 0.5), self._forward,
                                            (upstream, method, path, fwd, body))
                    later.daemon = True
                    later.start()
                result = self._forward(upstream, method, path, fwd, body)
                if fault == "drop_answer":
                    return
                if result is None:
                    out = b'{"ok":false,"error":"upstream down"}'
                    status, resp_headers = 502, [("Content-Type", "application/json")]
                else:
                    status, resp_headers, out = result
                head = [f"HTTP/1.1 {status} X"]
                for k, v in resp_headers:
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        head.append(f"{k}: {v}")
                head.append(f"Content-Length: {len(out)}")
                head.append("Connection: keep-alive")
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + out)
        except (OSError, ValueError):
            return
        finally:
            reader.close()
            sock.close()


# ---------------------------------------------------------------------------- send process


class Send:
    """A `backdate send` process (killable with -9 and restartable on the same outbox)."""

    def __init__(self, file: Path, url: str, outbox: Path, log: Path, parallel: int = 4,
                 extra: tuple[str, ...] = ()) -> None:
        self.file, self.url, self.outbox, self.log = file, url, outbox, log
        self.parallel = parallel
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                backdate_cmd("send", str(self.file), "--to", self.url, "--outbox",
                             str(self.outbox), "--parallel", str(self.parallel),
                             *self.extra),
                stdout=out, stderr=out, start_new_session=True,
                env={**os.environ, "BACKDATE_INGEST_API_KEY": INGEST_KEY})

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"send did not finish within {timeout:.0f} s:\n"
                                 f"{self.log.read_text()[-3000:]}") from None


def write_events(path: Path, n: int, devices: int = 20, start: int = 0) -> None:
    """Test events: device d{i % devices}, the event's own number `n` (checked afterwards)."""
    with path.open("w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"device_id": f"d{i % devices:02d}", "source_vendor": "chaos",
                                "event_type": "State_Update",
                                "timestamp": "2026-01-01T00:00:00Z", "n": i,
                                "temperature_f": 70 + i % 7}) + "\n")
