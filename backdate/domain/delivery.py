"""Reliable delivery vocabulary: events on the wire, streams, sequence ranges and gaps.

Why here: the ingest server and the sending client must agree on one wire contract, and it
must stay compatible with the seed system's clients (an array, `{"events": [...]}` or one
object; `device_id` or `device_key`; `sequence_number` sometimes as text). Nothing in this
module does I/O.

A stream is (device_id, source_vendor, epoch). The epoch is the sender's incarnation: a
sender that lost its state starts a new, larger epoch (Kafka's idempotent producer), so its
counter may start again at 1 without being mistaken for old numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

OPEN = "open"
RESOLVED = "resolved"
LOST = "lost"
GAP_STATUSES = (OPEN, RESOLVED, LOST)

MAX_LISTED = 1000  # numbers spelled out in `missing_sequences`; `missing_ranges` has them all
MAX_BODY = 32 * 1024 * 1024  # bytes of one request that `serve` takes (else 413)
MAX_EVENT = MAX_BODY - 64 * 1024  # one event, with room for the numbers send adds
MAX_SEQUENCE = 2**62  # leaves room for counts of whole ranges in a signed 64-bit column


class WireError(ValueError):
    """A request the ingest endpoint refuses as a whole (HTTP 400), naming the event."""


@dataclass(frozen=True, slots=True)
class StreamKey:
    """One sender's counter: sequence numbers are unique and increasing within it."""

    device_id: str
    source_vendor: str
    epoch: int

    def as_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "source_vendor": self.source_vendor,
                "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class WireEvent:
    """One event as received: its stream, number (None for seed clients without one), the
    fields worth indexing, and the JSON exactly as sent."""

    stream: StreamKey
    seq: int | None
    event_type: str
    timestamp: str | None
    raw: str  # the event object as sent, serialised compactly
    digest: str  # content hash: tells a resend (same content) from a counter reset


@dataclass(frozen=True, slots=True)
class LostReport:
    """A sender saying it can no longer send these numbers of a stream."""

    stream: StreamKey
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Batch:
    events: list[WireEvent]
    lost: list[LostReport]


def canonical(obj: Any) -> str:
    """Compact JSON with sorted keys: the same event always gives the same text and hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def digest_of(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


# ASCII digits only, and few enough for int(): str.isdigit() passes "²", "٣" and "--3", which
# int() refuses or reads as another number.
_DIGITS = re.compile(r"-?[0-9]{1,30}")


def _int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool):
        raise WireError(f"{where}: {what} must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise WireError(f"{where}: {what} must be an integer")
    if not 0 <= number <= MAX_SEQUENCE:
        raise WireError(f"{where}: {what} must be between 0 and {MAX_SEQUENCE}")
    return number


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if "\x00" in value:
            raise WireError("a text field contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError("a text field is not valid Unicode") from None
        return value or None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    return None


def parse_event(obj: Any, index: int, default_vendor: str = "unknown") -> WireEvent:
    """One event object; the seed's alternative names are accepted."""
    try:
        return _parse_event(obj, index, default_vendor)
    except WireError as err:
        text = str(err)
        raise WireError(text if text.startswith("event ") else f"event {index}: {text}") \
            from None


def _parse_event(obj: Any, index: int, default_vendor: str) -> WireEvent:
    where = f"event {index}"
    if not isinstance(obj, dict):
        raise WireError(f"{where}: an event is a JSON object")
    device = _text(obj.get("device_id")) or _text(obj.get("device_key"))
    if device is None:
        raise WireError(f"{where}: device_id (or device_key) is missing")
    vendor = _text(obj.get("source_vendor")) or _text(obj.get("source")) or default_vendor
    raw_seq = obj.get("sequence_number")
    seq = None if raw_seq is None else _int(raw_seq, "sequence_number", where)
    raw_epoch = obj.get("epoch")
    epoch = 0 if raw_epoch is None else _int(raw_epoch, "epoch", where)
    event_type = _text(obj.get("event_type")) or "UNKNOWN"
    timestamp = _text(obj.get("timestamp")) or _text(obj.get("recorded_at")) \
        or _text(obj.get("observed_at"))
    try:
        raw = canonical(obj)
    except ValueError:
        raise WireError(f"{where}: numbers must be finite") from None
    return WireEvent(StreamKey(device[:200], vendor[:200], epoch), seq, event_type[:100],
                     None if timestamp is None else timestamp[:64], raw, digest_of(raw))


def parse_lost(obj: Any, index: int) -> LostReport:
    try:
        return _parse_lost(obj, index)
    except WireError as err:
        text = str(err)
        raise WireError(text if text.startswith("lost ") else f"lost {index}: {text}") \
            from None


def _parse_lost(obj: Any, index: int) -> LostReport:
    where = f"lost {index}"
    if not isinstance(obj, dict):
        raise WireError(f"{where}: a lost report is a JSON object")
    device = _text(obj.get("device_id")) or _text(obj.get("device_key"))
    vendor = _text(obj.get("source_vendor")) or "unknown"
    if device is None:
        raise WireError(f"{where}: device_id is missing")
    epoch = _int(obj.get("epoch", 0), "epoch", where)
    ranges: list[tuple[int, int]] = []
    items = obj.get("sequences") or []
    if not isinstance(items, list):
        raise WireError(f"{where}: sequences must be an array of numbers and [first, last] "
                        "ranges")
    for item in items:
        if isinstance(item, list) and len(item) == 2:
            a, b = _int(item[0], "a range start", where), _int(item[1], "a range end", where)
        else:
            a = b = _int(item, "a sequence number", where)
        if b < a:
            raise WireError(f"{where}: range [{a}, {b}] ends before it starts")
        ranges.append((a, b))
    return LostReport(StreamKey(device[:200], vendor[:200], epoch), tuple(merge(ranges)))


def parse_batch(body: Any, max_events: int = 10_000) -> Batch:
    """The three shapes the seed's server took: an array, {"events": [...]}, one object.
    `{"lost": [...]}` (alone or next to "events") is backdate's addition."""
    lost: list[LostReport] = []
    if isinstance(body, list):
        items = body
    elif isinstance(body, dict) and ("events" in body or "lost" in body):
        items = body.get("events") or []
        if not isinstance(items, list):
            raise WireError("events must be an array")
        raw_lost = body.get("lost") or []
        if not isinstance(raw_lost, list):
            raise WireError("lost must be an array")
        lost = [parse_lost(o, i) for i, o in enumerate(raw_lost, 1)]
    elif isinstance(body, dict):
        items = [body]
    else:
        raise WireError("Missing events array or invalid payload")
    if len(items) > max_events:
        raise WireError(f"at most {max_events} events per request (got {len(items)})")
    if not items and not lost:
        raise WireError("Missing events array or invalid payload")
    return Batch([parse_event(o, i) for i, o in enumerate(items, 1)], lost)


# --------------------------------------------------------------------------- sequence ranges


def merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping or touching ranges joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def to_ranges(numbers: Iterable[int]) -> list[tuple[int, int]]:
    return merge((n, n) for n in numbers)


def missing_in(first: int, last: int, present: Iterable[int]) -> list[tuple[int, int]]:
    """The numbers of [first, last] not in `present`, as ranges."""
    out: list[tuple[int, int]] = []
    cursor = first
    for n in sorted(set(present)):
        if n < cursor:
            continue
        if n > last:
            break
        if n > cursor:
            out.append((cursor, n - 1))
        cursor = n + 1
    if cursor <= last:
        out.append((cursor, last))
    return out


def count(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def expand(ranges: Iterable[tuple[int, int]], limit: int | None = None) -> Iterator[int]:
    n = 0
    for a, b in ranges:
        for x in range(a, b + 1):
            if limit is not None and n >= limit:
                return
            yield x
            n += 1


def subtract(ranges: Iterable[tuple[int, int]],
             minus: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """`ranges` without the numbers in `minus`."""
    out: list[tuple[int, int]] = []
    cut = merge(minus)
    for a, b in merge(ranges):
        cursor = a
        for c, d in cut:
            if d < cursor or c > b:
                continue
            if c > cursor:
                out.append((cursor, c - 1))
            cursor = max(cursor, d + 1)
            if cursor > b:
                break
        if cursor <= b:
            out.append((cursor, b))
    return out


def gap_answer(stream: StreamKey, missing: list[tuple[int, int]]) -> dict[str, Any]:
    """One entry of the answer's `gaps`: the seed's shape (`missing_sequences`, ints; at most
    MAX_LISTED of them) plus `missing_ranges` with every missing number as [first, last]."""
    return {**stream.as_dict(),
            "missing_sequences": list(expand(missing, MAX_LISTED)),
            "missing_ranges": [[a, b] for a, b in missing],
            "missing_count": count(missing)}
