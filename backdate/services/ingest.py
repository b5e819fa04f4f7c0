"""Ingest use cases: take a posted batch, store it, answer; expire old gaps; report health.

Settings come in as arguments (the HTTP layer and the CLI read the configuration), so the same
service runs in `serve`, in tests and in the benchmark.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from backdate.domain.delivery import WireError, parse_batch
from backdate.store.ingest import IngestStore


class BadBatch(ValueError):
    """The request as a whole is refused (HTTP 400); nothing was stored."""


@dataclass(slots=True)
class IngestService:
    store: IngestStore
    gap_deadline: float
    max_events: int = 10_000

    def ingest_bytes(self, body: bytes) -> dict[str, Any]:
        """Parse, store in one transaction, and return the answer (only after the commit)."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadBatch("the body is not JSON") from None
        try:
            batch = parse_batch(data, self.max_events)
        except WireError as err:
            raise BadBatch(str(err)) from None
        except RecursionError:
            raise BadBatch("the body is nested too deeply") from None
        return self.store.apply(batch).answer()

    def expire_gaps(self, now: float | None = None) -> int:
        return self.store.expire(self.gap_deadline, now)

    def gaps(self, status: str | None = None, device_id: str | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
        self.expire_gaps()
        return [_with_times(g) for g in self.store.gaps(status, device_id, limit)]

    def streams(self, limit: int = 1000) -> list[dict[str, Any]]:
        return [_with_times(s) for s in self.store.streams(limit)]

    def health(self) -> dict[str, Any]:
        return self.store.summary()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _with_times(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (_iso(v) if k.endswith(("_at", "_seen")) else v) for k, v in row.items()}
