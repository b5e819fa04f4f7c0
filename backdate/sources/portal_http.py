"""What the utility-portal sources share: spec parsing, secrets, HTTP calls, token files.

The portals (Wiener Netze, WattiVahti) sit behind OAuth and fail in ordinary ways (5xx, a
non-JSON body, timeouts). Every failure becomes a `TargetError` (exit 3) that names the HTTP
status and the endpoint without its query string, so a secret never reaches a message or log,
and nothing is ever invented in its place (the original add-on fell back to mock data).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from backdate.domain.urls import mask_url
from backdate.errors import InputError, TargetError, UsageError

DAY = 86400

# httpx logs every request URL at INFO; portal URLs carry customer numbers and, during the
# Keycloak login, session codes. Keep them out of `sync`'s INFO log unless asked for.
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
USER_AGENT = "backdate (+https://github.com/backdate)"


@dataclass(slots=True)
class PortalSpec:
    """`scheme:<point>?key=value&...` split up; `params` keys are lower-case."""

    scheme: str
    point: str
    params: dict[str, str]

    def get(self, key: str, env: str | None = None, default: str | None = None) -> str | None:
        """A query parameter, else the environment variable, else the default."""
        if key in self.params and self.params[key] != "":
            return self.params[key]
        if env and os.environ.get(env):
            return os.environ[env]
        return default


def parse_spec(spec: str, scheme: str, *, known: set[str]) -> PortalSpec:
    """`wnsm:AT00...?role=...` or `wnsm://AT00...`; unknown parameters are a usage error."""
    if not spec.startswith(scheme + ":"):
        raise UsageError(f"not a {scheme}: source: {mask_url(spec)!r}")
    parts = urlsplit(spec)
    point = (parts.netloc or parts.path).strip("/")
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        low = key.lower()
        if low not in known:
            raise UsageError(
                f"unknown parameter {key!r} in {scheme}: source; known: {', '.join(sorted(known))}"
            )
        params[low] = value
    return PortalSpec(scheme, point, params)


def secret(spec: PortalSpec, key: str, env: str, *, what: str) -> str | None:
    """A secret from the spec, `$ENV`, or the file named by `$ENV_FILE` (Docker secrets)."""
    value = spec.get(key, env)
    if value:
        return value
    file_var = env + "_FILE"
    path = os.environ.get(file_var)
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise InputError(f"cannot read {what} from ${file_var}: {err.strerror}",
                         path=path) from None
    if not text:
        raise InputError(f"${file_var} names an empty file; put the {what} in it", path=path)
    return text


def endpoint(url: str) -> str:
    """A URL without its query string, for messages (queries may carry codes and tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class PortalHTTP:
    """One `httpx.Client` with the error mapping every portal call needs."""

    def __init__(self, what: str, *, timeout: float | None = None) -> None:
        self.what = what
        limit = httpx.Timeout(timeout, connect=min(timeout, 10.0)) if timeout else TIMEOUT
        self.client = httpx.Client(timeout=limit, headers={"User-Agent": USER_AGENT},
                                   follow_redirects=False)

    def send(self, method: str, url: str, *, ok: tuple[int, ...] = (200,),
             **kwargs: Any) -> httpx.Response:
        """One request; TargetError (exit 3) on a connection failure, a timeout or a status
        outside `ok`."""
        try:
            resp = self.client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise TargetError(f"{self.what}: {endpoint(url)} did not answer in time "
                              "(timeout); try again later") from None
        except httpx.HTTPError as err:
            raise TargetError(f"{self.what}: cannot reach {endpoint(url)}: "
                              f"{type(err).__name__}: {err}") from None
        if resp.status_code not in ok:
            raise self.failed(resp)
        return resp

    def failed(self, resp: httpx.Response, hint: str = "") -> TargetError:
        """The error for an unexpected status, with a short, secret-free excerpt of the body."""
        body = re.sub(r"\s+", " ", resp.text or "")[:200]
        body = re.sub(r'(?i)("?(?:access_token|refresh_token|id_token|code)"?\s*[:=]\s*)'
                      r'"?[^",&\s]+', r"\1***", body)
        later = "; nothing was written, try again later" if resp.status_code >= 500 else ""
        err = TargetError(
            f"{self.what}: {resp.request.method} {endpoint(str(resp.request.url))} failed with "
            f"HTTP {resp.status_code}{': ' + body if body else ''}"
            f"{'; ' + hint if hint else ''}{later}"
        )
        err.status = resp.status_code  # type: ignore[attr-defined]
        return err

    def json(self, resp: httpx.Response) -> Any:
        """The body as JSON; a portal answering HTML or garbage is a failed call (exit 3)."""
        try:
            return resp.json()
        except ValueError:
            raise TargetError(
                f"{self.what}: {endpoint(str(resp.request.url))} answered HTTP "
                f"{resp.status_code} with a body that is not JSON "
                f"({resp.headers.get('content-type', 'no content type')}); try again later"
            ) from None

    def close(self) -> None:
        self.client.close()


def day_chunks(start: float, end: float, days: int) -> Iterator[tuple[float, float]]:
    """[start, end) cut into pieces of at most `days` days (portals limit one answer)."""
    step = days * DAY
    t = start
    while t < end:
        yield t, min(t + step, end)
        t += step


def window_bounds(start: float | None, end: float | None, now: float,
                  default_days: float) -> tuple[float, float]:
    """An unbounded window made concrete: from `default_days` ago, up to now."""
    lo = start if start is not None else now - default_days * DAY
    hi = end if end is not None else now
    if hi <= lo:
        raise UsageError("the time range is empty: --end must be after --start")
    return lo, hi


def timeout_param(spec: PortalSpec) -> float | None:
    """`timeout=SECONDS` (default 30 s per request)."""
    text = spec.get("timeout", "BACKDATE_HTTP_TIMEOUT")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{spec.scheme}: timeout must be seconds, not {text!r}") from None
    if not value > 0:
        raise UsageError(f"{spec.scheme}: timeout must be positive")
    return value


def int_param(spec: PortalSpec, key: str, env: str | None, default: int) -> int:
    """A positive count of days (INITIAL_SYNC_DAYS=7.5 is read as 8)."""
    text = spec.get(key, env)
    if text is None:
        return default
    try:
        value = math.ceil(float(text))
    except (ValueError, OverflowError):
        raise UsageError(f"{spec.scheme}: {key} must be a number of days, not {text!r}"
                         ) from None
    if value <= 0:
        raise UsageError(f"{spec.scheme}: {key} must be positive")
    return value


def choice(spec: PortalSpec, key: str, options: Mapping[str, tuple[str, ...]],
           default: str) -> tuple[str, ...]:
    """A parameter that picks one entry of `options` (e.g. direction=consumption|both)."""
    value = (spec.get(key) or default).lower()
    if value not in options:
        raise UsageError(f"{spec.scheme}: {key} must be one of {', '.join(options)}, "
                         f"not {value!r}")
    return options[value]
