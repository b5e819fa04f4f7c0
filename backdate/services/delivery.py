"""Delivering the outbox to an ingest endpoint, and `backdate send FILE.jsonl`.

Workers take the oldest waiting events, post them, and mark them acknowledged only on a 200
(which the server sends after its commit). Failures wait with exponential backoff and full
jitter, or as long as `Retry-After` says. Gaps in an answer are handled by the outbox (resend
from the ring with the original numbers, or report as lost once); resends go out as ordinary
waiting events through the same loop, never by a nested send.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from backdate.adapters.ingest_http.client import Reply
from backdate.errors import BackdateError, InputError, TargetError
from backdate.store.outbox import Claim, Outbox

log = logging.getLogger(__name__)


class Transport(Protocol):
    def post(self, body: bytes) -> Reply: ...


class DeliveryRefused(TargetError):
    """The server refuses the events for good (credentials, or a request it calls invalid);
    they stay in the outbox, nothing is dropped. Exit 3."""


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS's "Exponential Backoff And Jitter")."""

    base: float = 0.2
    cap: float = 30.0
    attempt: int = 0

    def next(self, retry_after: float | None = None) -> float:
        self.attempt += 1
        if retry_after is not None:
            return min(max(retry_after, 0.0), 300.0)
        return random.uniform(0, min(self.cap, self.base * 2 ** min(self.attempt, 20)))

    def reset(self) -> None:
        self.attempt = 0


@dataclass(slots=True)
class Stats:
    sent: int = 0
    requests: int = 0
    failures: int = 0
    accepted: int = 0
    duplicates: int = 0
    gaps_reported: int = 0
    resent: int = 0
    lost: int = 0
    counter_resets: int = 0
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("sent", "requests", "failures", "accepted",
                                              "duplicates", "gaps_reported", "resent", "lost",
                                              "counter_resets", "last_error")}


class Sender:
    """Runs `parallel` workers over one outbox until stopped or drained."""

    def __init__(self, outbox: Outbox, transport: Transport, *, batch_events: int = 100,
                 batch_bytes: int = 1 << 20, parallel: int = 2, backoff_base: float = 0.2,
                 backoff_cap: float = 30.0, max_failures: int | None = None) -> None:
        self.outbox = outbox
        self.transport = transport
        self.batch_events = batch_events
        self.batch_bytes = batch_bytes
        self.parallel = max(1, parallel)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_failures = max_failures
        self.stats = Stats()
        self.fatal: BackdateError | None = None
        self._wake = threading.Condition()

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def run(self, stop: threading.Event, until_drained: Callable[[], bool] | None = None) -> None:
        """Work until `stop` is set, a refusal, or (with `until_drained`) until it returns
        True and nothing waits any more."""
        threads = [threading.Thread(target=self._worker, args=(stop, until_drained),
                                    name=f"sender-{i}", daemon=True)
                   for i in range(self.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
        if self.fatal is not None:
            raise self.fatal

    def _worker(self, stop: threading.Event, until_drained: Callable[[], bool] | None) -> None:
        backoff = Backoff(self.backoff_base, self.backoff_cap)
        failures = 0
        while not stop.is_set() and self.fatal is None:
            claim = self.outbox.claim(self.batch_events, self.batch_bytes)
            if claim is None:
                if until_drained is not None and until_drained() and \
                        self.outbox.pending() == 0 and self.outbox.claim_lost_empty():
                    return
                with self._wake:
                    self._wake.wait(0.05)
                continue
            claim.sent_at = time.time()
            reply = self.transport.post(claim.payload())
            with self.stats.lock:
                self.stats.requests += 1
            if reply.status == 200 and reply.answer is not None and reply.answer.get("ok"):
                self.outbox.ack(claim)
                backoff.reset()
                failures = 0
                self._account(claim, reply.answer)
                continue
            self.outbox.release(claim)
            with self.stats.lock:
                self.stats.failures += 1
                self.stats.last_error = reply.error
            failures += 1
            if reply.status in (400, 401, 403, 404, 413):
                self.fatal = DeliveryRefused(
                    f"the server refused the events ({reply.error}); "
                    f"they stay in the outbox {self.outbox.path}")
                stop.set()
                return
            if self.max_failures is not None and failures >= self.max_failures:
                self.fatal = TargetError(f"no answer from the server after {failures} "
                                         f"attempts ({reply.error}); the events stay in the "
                                         f"outbox {self.outbox.path}")
                stop.set()
                return
            delay = backoff.next(reply.retry_after)
            log.info("send failed (%s); retrying in %.1f s", reply.error, delay)
            stop.wait(delay)

    def _account(self, claim: Claim, answer: dict[str, Any]) -> None:
        ids = claim.ids
        gaps = answer.get("gaps") or []
        resent, lost = self.outbox.on_gaps(gaps, claim.sent_at) if gaps else (0, 0)
        with self.stats.lock:
            self.stats.sent += len(ids)
            self.stats.accepted += int(answer.get("accepted") or 0)
            self.stats.duplicates += int(answer.get("duplicates") or 0)
            self.stats.gaps_reported += len(gaps)
            self.stats.resent += resent
            self.stats.lost += lost
            self.stats.counter_resets += len(answer.get("counter_resets") or [])
        if resent or lost:
            self.notify()


# ------------------------------------------------------------------------- send FILE.jsonl


@dataclass(slots=True)
class FileCheck:
    events: int
    size: int


def check_jsonl(path: Path) -> FileCheck:
    """Every line a JSON object naming its device: an error names the line; nothing sent."""
    from backdate.domain.delivery import MAX_BODY, MAX_EVENT, WireError, parse_event

    n = 0
    try:
        handle = path.open("rb")
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", path=str(path)) from None
    with handle:
        for lineno, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            if len(raw) > MAX_EVENT:
                raise InputError(f"an event of {len(raw) / 2**20:.1f} MiB; a request to serve "
                                 f"holds at most {MAX_BODY // 2**20} MiB", path=str(path),
                                 line=lineno)
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError:
                raise InputError("not UTF-8 text", path=str(path), line=lineno) from None
            except json.JSONDecodeError as err:
                raise InputError(f"not valid JSON ({err.msg} at column {err.colno})",
                                 path=str(path), line=lineno) from None
            except ValueError:
                raise InputError("not valid JSON", path=str(path), line=lineno) from None
            try:
                parse_event({**obj, "sequence_number": 1, "epoch": 0}
                            if isinstance(obj, dict) else obj, lineno)
            except WireError as err:
                raise InputError(str(err).split(": ", 1)[-1], path=str(path),
                                 line=lineno) from None
            n += 1
    return FileCheck(n, path.stat().st_size)


_MARK_BYTES = 4096


def _file_mark(fd: int, offset: int) -> str:
    """The position stored in the outbox: the offset read up to, and digests of the file's
    first and last (up to) 4 KiB before it, so that a file rewritten under the same name is
    told apart from one that was appended to."""
    from backdate.domain.delivery import digest_of

    size = min(_MARK_BYTES, offset)
    head = os.pread(fd, size, 0).decode("latin-1")
    tail = os.pread(fd, size, offset - size).decode("latin-1")
    return f"{offset} {digest_of(head)} {digest_of(tail)}"


def resume_offset(outbox: Outbox, path: Path) -> int:
    """Where `send` goes on reading FILE: the outbox's offset, if the file still holds what
    was read up to it (else InputError: reading on would skip the new file's first lines)."""
    position = outbox.position
    if not position:
        return 0
    offset = int(position.split()[0])
    try:
        with path.open("rb") as handle:
            fd = handle.fileno()
            changed = os.fstat(fd).st_size < offset or (
                len(position.split()) == 3 and _file_mark(fd, offset) != position)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", path=str(path)) from None
    if changed:
        raise InputError(f"the file changed since the outbox {outbox.path} read it up to byte "
                         f"{offset} (it was rewritten, not appended to); reading on would skip "
                         "lines. Send it with a new --outbox (a new epoch), or put the old "
                         "content back", path=str(path))
    return offset


def feed_file(outbox: Outbox, path: Path, stop: threading.Event, sender: Sender,
              chunk: int = 1000, start: int | None = None) -> int:
    """Put the file's lines into the outbox from where the outbox says it stopped; the byte
    offset is stored in the same transaction as the events, so a killed `send` neither skips
    nor repeats a line. Returns the number of events put."""
    if start is None:
        start = resume_offset(outbox, path)
    added = 0
    with path.open("rb") as handle:
        handle.seek(start)
        while not stop.is_set():
            lines: list[dict[str, Any]] = []
            while len(lines) < chunk:
                raw = handle.readline()
                if not raw:
                    break
                if raw.strip():
                    lines.append(json.loads(raw))
            if not lines:
                break
            while not stop.is_set():
                try:
                    outbox.put(lines, position=_file_mark(handle.fileno(), handle.tell()),
                               timeout=0.5)
                    break
                except BackdateError:
                    if sender.fatal is not None:
                        return added
            added += len(lines)
            sender.notify()
    return added


def send_file(path: Path, outbox: Outbox, transport: Transport, *, stop: threading.Event,
              batch_events: int = 100, parallel: int = 2, max_failures: int | None = None,
              ) -> Stats:
    """The whole `backdate send`: check the file, feed it through the outbox, wait until the
    server acknowledged everything (and every lost range was reported)."""
    check_jsonl(path)
    start = resume_offset(outbox, path)
    sender = Sender(outbox, transport, batch_events=batch_events, parallel=parallel,
                    max_failures=max_failures)
    done = threading.Event()

    def feed() -> None:
        try:
            feed_file(outbox, path, stop, sender, chunk=max(1, min(1000, outbox.max_pending)),
                      start=start)
        finally:
            done.set()

    feeder = threading.Thread(target=feed, name="feeder", daemon=True)
    feeder.start()
    try:
        sender.run(stop, until_drained=done.is_set)
    finally:
        stop.set()
        feeder.join(5)
    return sender.stats
