"""HTTP transport to an ingest endpoint (`POST …/ingest/v1/events:batch`), with keep-alive.

It only carries bytes and reports what happened (status, answer, Retry-After); deciding what
to resend is the sender's job (backdate.services.delivery).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

INGEST_PATH = "/ingest/v1/events:batch"


@dataclass(slots=True)
class Reply:
    status: int | None  # None: no answer (connection failed, dropped, timed out)
    answer: dict[str, Any] | None
    retry_after: float | None
    error: str | None = None


def ingest_url(url: str) -> str:
    """A base URL (`http://host:8765`) or the full endpoint URL, as the user gave it."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("the ingest URL starts with http:// or https://")
    return url if url.endswith(":batch") else url + INGEST_PATH


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class IngestClient:
    """One per sender thread is not needed: httpx.Client is thread-safe."""

    def __init__(self, url: str, token: str | Callable[[], str], *, timeout: float = 30.0,
                 connect_timeout: float = 5.0) -> None:
        self.url = ingest_url(url)
        self._token = token
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=connect_timeout),
                                  limits=httpx.Limits(max_keepalive_connections=8))

    def token(self) -> str:
        return self._token() if callable(self._token) else self._token

    def post(self, body: bytes) -> Reply:
        headers = {"Authorization": f"Bearer {self.token()}",
                   "Content-Type": "application/json"}
        try:
            resp = self._http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as err:
            return Reply(None, None, None, f"{type(err).__name__}: {err}"[:200])
        answer = None
        try:
            data = json.loads(resp.content) if resp.content else None
            answer = data if isinstance(data, dict) else None
        except ValueError:
            answer = None
        return Reply(resp.status_code, answer, parse_retry_after(resp.headers.get("retry-after")),
                     None if resp.status_code == 200 else _problem(resp.status_code, answer,
                                                                   self.url))

    def close(self) -> None:
        self._http.close()


def _problem(status: int, answer: dict[str, Any] | None, url: str) -> str:
    """"HTTP 401: Unauthorized": the status and the server's own error, or what it means."""
    said = (answer or {}).get("error")
    if isinstance(said, str) and said:
        return f"HTTP {status}: {said}"[:300]
    if status == 404:
        return f"HTTP 404: no ingest endpoint at {url}"
    return f"HTTP {status}"
