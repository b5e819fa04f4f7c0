"""WattiVahti (Pori Energia, Finland) as a reading source (`wattivahti:<metering point>`).

The API (reference/seed-systems.md, system 3) answers `meterdata2` with local Finnish wall-clock
times and no offset (some answers carry a wrong trailing `Z`), the repeated autumn hour as pairs
of equal times, nothing at all at 15 minutes for older ranges, and sits behind an Azure AD B2C
refresh token that rotates. So:

* the refresh token lives in REFRESH_TOKEN_FILE; using it spends it, so the refresh runs under
  an exclusive lock on `<file>.lock` (a cron run and a manual run never spend the same token),
  the file for the new token is created and its space reserved *before* the POST (a full or
  read-only disk stops the run with the old token still valid), and the new token is written
  atomically, mode 0600, *before* the access token is used; a write that still fails is an
  error naming the file and saying the old token is spent. A missing file or a refused token
  is an error naming the file, the B2C error code and what to do;
* a naive time the answer holds twice in the repeated hour is a pair: first summer, then
  winter time, wherever the answer starts; a time held once is placed by the range asked for;
  a time the spring-forward gap skips is an error naming its position;
* PT15MIN first, PT1H for the whole hours PT15MIN said nothing about (older ranges, gaps in
  the middle or at the end); only intervals wholly inside the range are kept; `null` is not
  available (left out), 0 is 0; consumption (measurementType 1) and production (6) are
  separate Series.

    wattivahti:1234567?direction=both
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np

from backdate.domain.urls import mask_url
from backdate.engine.prepare import slugify
from backdate.errors import InputError, TargetError, UsageError
from backdate.models import Series
from backdate.sources.base import SourceRange
from backdate.sources.portal_http import (
    PortalHTTP,
    choice,
    day_chunks,
    int_param,
    parse_spec,
    secret,
    timeout_param,
    window_bounds,
)
from backdate.sources.wnsm import Readings, to_series

log = logging.getLogger(__name__)

TZ = ZoneInfo("Europe/Helsinki")
TOKEN_URL = ("https://pesv.b2clogin.com/pesv.onmicrosoft.com/b2c_1_tunnistus_signinv2/oauth2/"
             "v2.0/token")
API_URL = "https://porienergia-prod-agent.frendsapp.com:9999/api/onlineapi/v1"
SCOPE = "https://pesv.onmicrosoft.com/salpa/customer.read openid profile offline_access"
LOGIN_PAGE = "https://www.wattivahti.fi"

KNOWN = {"direction", "statistic_id", "name", "days", "timeout", "chunk_days", "token_file",
         "client_id", "token_url", "api_url", "metering_point"}
DIRECTIONS = {"consumption": ("consumption",), "production": ("production",),
              "both": ("consumption", "production")}
MEASUREMENT_TYPE = {"consumption": "1", "production": "6"}
STEPS = {"PT15MIN": 900, "PT15M": 900, "PT1H": 3600, "PT60M": 3600, "PT60MIN": 3600}
ENERGY_SCALE = {"kwh": 1.0, "wh": 1e-3, "mwh": 1e3}


@dataclass(slots=True)
class _LocalClock:
    """Turns naive Finnish wall-clock times into UTC, telling the repeated hour apart.

    A naive time the answer holds twice is a pair: the first is summer time (fold 0), the
    second winter time (fold 1), wherever the answer starts (the API may read the range's
    bounds as naive local times and answer from the first 03:00 when asked from the second).
    Only a time the answer holds once is placed by `not_before`: when the first occurrence
    lies before the range asked for, it is the second.
    """

    tz: ZoneInfo = TZ
    seen: dict[datetime, int] = field(default_factory=dict)
    # How often each naive time occurs in the whole answer (`count_all`); None: not counted.
    totals: dict[datetime, int] | None = None
    not_before: float | None = None

    @staticmethod
    def _naive(text: Any) -> datetime | None:
        if not isinstance(text, str):
            return None
        raw = text.strip()
        if raw.endswith(("Z", "z")):  # WattiVahti's wrong `Z`: the time is local, not UTC
            raw = raw[:-1]
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            return None
        return dt if dt.tzinfo is None else None

    def count_all(self, texts: list[Any]) -> None:
        """Count every naive time of the answer first, so pairs are known as pairs."""
        totals: dict[datetime, int] = {}
        for text in texts:
            dt = self._naive(text)
            if dt is not None:
                totals[dt] = totals.get(dt, 0) + 1
        self.totals = totals

    def epoch(self, text: Any, where: str, pos: int) -> float:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"time {text!r} is not a text", path=where, line=pos)
        raw = text.strip()
        if raw.endswith(("Z", "z")):  # WattiVahti's wrong `Z`: the time is local, not UTC
            raw = raw[:-1]
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise InputError(f"time {text!r} is not an ISO time", path=where, line=pos) from None
        if dt.tzinfo is not None:  # a real offset says it all
            return dt.timestamp()
        first = dt.replace(tzinfo=self.tz, fold=0)
        second = dt.replace(tzinfo=self.tz, fold=1)
        if datetime.fromtimestamp(first.timestamp(), self.tz).replace(tzinfo=None) != dt:
            raise InputError(f"local time {raw} does not exist in Finland (the clocks skip "
                             "that hour in spring)", path=where, line=pos)
        if first.utcoffset() == second.utcoffset():
            return first.timestamp()
        count = self.seen.get(dt, 0)  # in the repeated hour
        total = None if self.totals is None else self.totals.get(dt, 0)
        if count >= 2 or (total is not None and total > 2):
            raise InputError(f"local time {raw} occurs more than twice on the autumn "
                             "change day", path=where, line=pos)
        self.seen[dt] = count + 1
        if total == 2 or count == 1:  # a pair: first, then second
            return (second if count else first).timestamp()
        late = self.not_before is not None and \
            first.timestamp() < self.not_before <= second.timestamp()
        if total is None and late:
            self.seen[dt] = 2  # uncounted: a later equal time would be a third
        return (second if late else first).timestamp()


def parse_meterdata2(doc: Any, where: str, into: Readings, *, clock: _LocalClock | None = None,
                     lines: list[int] | None = None, first_position: int = 1,
                     window: tuple[float, float] | None = None) -> tuple[str | None, int]:
    """Add one `meterdata2` answer to `into`; returns (resolution, number of tsv items).

    Positions are 1-based indexes into `tsv` (plus `first_position - 1`), or the file's lines.
    """
    clock = clock or _LocalClock()
    result = doc.get("getconsumptionsresult") if isinstance(doc, dict) else None
    if not isinstance(result, dict):
        raise InputError("not a meterdata2 answer: needs 'getconsumptionsresult'", path=where)
    data = result.get("consumptiondata")
    if data is None:
        return None, 0
    series = data.get("timeseries") if isinstance(data, dict) else None
    if series is None:
        return None, 0
    if not isinstance(series, dict):
        raise InputError("consumptiondata.timeseries is not an object", path=where)
    values = series.get("values")
    tsv = values.get("tsv") if isinstance(values, dict) else None
    if not tsv:
        return series.get("resolution"), 0
    if not isinstance(tsv, list):
        raise InputError("timeseries.values.tsv is not a list", path=where)
    resolution = str(series.get("resolution") or "").upper()
    if resolution not in STEPS:
        raise InputError(f"unknown resolution {series.get('resolution')!r} (expected PT15MIN "
                         "or PT1H)", path=where)
    step = STEPS[resolution]
    clock.count_all([item.get("time") if isinstance(item, dict) else None for item in tsv])
    default_unit = (data.get("sum") or {}).get("unit") if isinstance(data.get("sum"),
                                                                      dict) else None
    into.unit = "kWh"
    for k, item in enumerate(tsv):
        pos = lines[k] if lines is not None else first_position + k
        if not isinstance(item, dict):
            raise InputError(f"tsv item {k + 1} is not an object", path=where, line=pos)
        start = clock.epoch(item.get("time"), where, pos)
        if window is not None and not (window[0] <= start and start + step <= window[1]):
            continue  # only intervals wholly inside the range
        if into.first_item is None or start < into.first_item:
            into.first_item = start
        into.answered.append(start)
        quantity = item.get("quantity")
        if quantity is None:  # not available: never a zero
            into.unavailable += 1
            continue
        if isinstance(quantity, bool) or not isinstance(quantity, int | float) or not \
                np.isfinite(quantity) or quantity < 0:
            raise InputError(f"quantity {quantity!r} is not an amount of energy", path=where,
                             line=pos)
        unit = str(item.get("unit") or default_unit or "kWh").lower()
        if unit not in ENERGY_SCALE:
            raise InputError(f"unit {item.get('unit') or default_unit!r} is not an energy unit",
                             path=where, line=pos)
        into.starts.append(start)
        into.ends.append(start + step)
        into.values.append(float(quantity) * ENERGY_SCALE[unit])
        into.positions.append(pos)
        into.estimated.append(False)
    return resolution, len(tsv)


class TokenFile:
    """The rotating B2C refresh token on disk (REFRESH_TOKEN_FILE).

    Using the token spends it (B2C rotates it), so the one use is guarded: an exclusive lock
    on `<file>.lock` keeps two processes from spending the same token (the second would be
    told to log in again), and the temporary file for the new token is created, and its space
    reserved, *before* the token is spent, so a full or read-only disk stops the run while the
    old token is still valid.
    """

    RESERVE = 4096  # bytes written ahead so the new token's blocks exist before the POST

    def __init__(self, path: Path) -> None:
        self.path = path

    def instructions(self) -> str:
        return (f"log in at {LOGIN_PAGE} in a browser, copy the refresh token (the "
                "'refresh_token' the site keeps in its local storage) and put it alone on one "
                f"line in {self.path}; backdate keeps the file current from then on")

    def read(self) -> str:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise InputError(f"no WattiVahti refresh token file: {self.instructions()}",
                             path=str(self.path)) from None
        except OSError as err:
            raise InputError(f"cannot read the refresh token file: {err.strerror}",
                             path=str(self.path)) from None
        if not token:
            raise InputError(f"the refresh token file is empty: {self.instructions()}",
                             path=str(self.path))
        return token

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold `<file>.lock` exclusively (other backdate processes wait for the rotation)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            raise InputError(f"no WattiVahti refresh token file: {self.instructions()}",
                             path=str(self.path)) from None
        except OSError as err:
            raise TargetError(f"WattiVahti: cannot create the lock file {lock_path}: "
                              f"{err.strerror}; the refresh token was not used") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def reserve(self) -> tuple[int, str]:
        """The temporary file (fd, path) the next token goes into, with space reserved."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                       dir=self.path.parent)
        except OSError as err:
            raise TargetError(
                f"WattiVahti: cannot create a file next to {self.path} for the rotated refresh "
                f"token ({err.strerror}); the token was not used and is still valid: make "
                "room or make the directory writable, then run again") from None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, b"\n" * self.RESERVE)
            os.fsync(fd)
        except OSError as err:
            self.discard(fd, tmp)
            raise TargetError(
                f"WattiVahti: cannot write next to {self.path} ({err.strerror}); the refresh "
                "token was not used and is still valid: make room, then run again") from None
        return fd, tmp

    @staticmethod
    def discard(fd: int, tmp: str) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def commit(self, fd: int, tmp: str, token: str) -> None:
        """Put `token` into the reserved file and rename it over the token file (atomic)."""
        try:
            data = (token + "\n").encode()
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, self.path)
            with contextlib.suppress(OSError):
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as err:
            if fd >= 0:
                self.discard(fd, tmp)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise TargetError(
                f"WattiVahti: the rotated refresh token could not be written to {self.path} "
                f"({err.strerror}). The token in the file was spent by this refresh and "
                f"WattiVahti will refuse it: fix the file system, then {self.instructions()}"
            ) from None


class WattiVahtiSource:
    """`wattivahti:<metering point>`: consumption and production per 15 minutes (or hour)."""

    time_zone = "Europe/Helsinki"  # the portal's days (MQTT's "last complete day", --start)

    def __init__(self, spec: str, *, now: float | None = None) -> None:
        self.url = mask_url(spec)
        self._spec = parse_spec(spec, "wattivahti", known=KNOWN)
        s = self._spec
        self.metering_point = (s.point or s.get("metering_point", "WATTIVAHTI_METERING_POINT")
                               or "")
        if not self.metering_point:
            raise UsageError("wattivahti: name the metering point (wattivahti:1234567) or set "
                             "WATTIVAHTI_METERING_POINT")
        self.directions = choice(s, "direction", DIRECTIONS, "consumption")
        self.default_days = int_param(s, "days", "INITIAL_SYNC_DAYS", 7)
        self.chunk_days = int_param(s, "chunk_days", None, 31)
        self.token_file = TokenFile(Path(s.get("token_file", "REFRESH_TOKEN_FILE",
                                               "refresh_token.txt") or "refresh_token.txt"))
        self.token_url = s.get("token_url", "WATTIVAHTI_TOKEN_URL", TOKEN_URL) or TOKEN_URL
        self.api_url = (s.get("api_url", "WATTIVAHTI_API_URL", API_URL) or API_URL).rstrip("/")
        self.now = now
        self.notes: list[str] = []
        self.http = PortalHTTP("WattiVahti", timeout=timeout_param(s))
        self._access: str | None = None
        self._expires = 0.0

    def statistic_id(self, direction: str) -> str:
        given = self._spec.get("statistic_id")
        if given:
            return given if len(self.directions) == 1 else f"{given}_{direction}"
        return f"backdate:wattivahti_{slugify(self.metering_point)}_{direction}"

    def name(self, direction: str) -> str:
        given = self._spec.get("name")
        if given:
            return given if len(self.directions) == 1 else f"{given} {direction}"
        return f"WattiVahti {self.metering_point} {direction}"

    # -- token -----------------------------------------------------------------------------

    def refresh(self) -> str:
        """Trade the stored refresh token for an access token; store the rotated one first.

        Under the token file's lock: read, reserve the new file, POST, write. When B2C says
        invalid_grant and the file changed meanwhile (a process without the lock, a hand
        edit), the new token is tried once.
        """
        client_id = secret(self._spec, "client_id", "WATTIVAHTI_CLIENT_ID",
                           what="WattiVahti client id")
        if not client_id:
            raise UsageError("wattivahti: set WATTIVAHTI_CLIENT_ID, the client id of "
                             "WattiVahti's web app (Azure AD B2C tenant pesv)")
        with self.token_file.locked():
            token = self.token_file.read()
            for attempt in (1, 2):
                fd, tmp = self.token_file.reserve()
                try:
                    resp = self.http.send("POST", self.token_url, ok=(200, 400, 401), data={
                        "client_id": client_id, "scope": SCOPE, "grant_type": "refresh_token",
                        "refresh_token": token, "client_info": "1"})
                except BaseException:
                    self.token_file.discard(fd, tmp)
                    raise
                if resp.status_code != 200:
                    self.token_file.discard(fd, tmp)
                    error, description = self._token_error(resp)
                    if error == "invalid_grant" and attempt == 1:
                        current = self.token_file.read()
                        if current != token:
                            log.info("the WattiVahti refresh token file changed meanwhile; "
                                     "trying its new token")
                            token = current
                            continue
                    raise self._refused(resp.status_code, error, description)
                answer = self.http.json(resp)
                if not isinstance(answer, dict) or not answer.get("access_token"):
                    self.token_file.discard(fd, tmp)
                    raise TargetError("WattiVahti: the token answer has no access_token")
                new = answer.get("refresh_token")
                if new and new != token:
                    self.token_file.commit(fd, tmp, str(new))  # before the access token is used
                    log.info("stored WattiVahti's rotated refresh token in %s",
                             self.token_file.path)
                else:  # B2C may keep the token: the file stays as it is
                    self.token_file.discard(fd, tmp)
                break
        self._access = str(answer["access_token"])
        self._expires = time.monotonic() + float(answer.get("expires_in") or 3600) - 30
        return self._access

    def _token_error(self, resp: httpx.Response) -> tuple[str, str]:
        """B2C's `error` and the AADB2C code (first words) of its `error_description`."""
        try:
            doc = resp.json()
        except ValueError:
            return "", ""
        if not isinstance(doc, dict):
            return "", ""
        description = re.sub(r"\s+", " ", str(doc.get("error_description") or "")).strip()
        return str(doc.get("error") or ""), description.split(" Correlation ID")[0][:200]

    def _refused(self, status: int, error: str, description: str) -> Exception:
        """invalid_grant is a spent or expired token (log in again); anything else is a
        wrong client id or request, and logging in again would not help."""
        said = ", ".join(x for x in (error, description) if x)
        if error == "invalid_grant":
            return InputError(
                f"WattiVahti refused the refresh token (HTTP {status}: {said}; expired, "
                f"revoked or already used); {self.token_file.instructions()}",
                path=str(self.token_file.path))
        return InputError(
            f"WattiVahti's token endpoint refused the request (HTTP {status}"
            f"{': ' + said if said else ''}); the refresh token was not accepted or spent: "
            "check WATTIVAHTI_CLIENT_ID and token_url", path=str(self.token_file.path))

    def access(self) -> str:
        if self._access is None or time.monotonic() >= self._expires:
            return self.refresh()
        return self._access

    # -- reading ---------------------------------------------------------------------------

    def _meterdata(self, direction: str, start: datetime, stop: datetime,
                   step: str) -> Any:
        params = {"meteringPointCode": self.metering_point,
                  "measurementType": MEASUREMENT_TYPE[direction],
                  "start": start.isoformat(), "stop": stop.isoformat(), "resultStep": step}
        url = f"{self.api_url}/meterdata2"
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.access()}", "Accept": "application/json"}
            resp = self.http.send("GET", url, params=params, headers=headers, ok=(200, 401))
            if resp.status_code == 200:
                return self.http.json(resp)
            self._access = None  # expired early: one refresh, then give up
            if attempt == 2:
                raise self.http.failed(resp, "unauthorized even with a fresh access token")
        raise AssertionError("unreachable")

    def _answer(self, direction: str, lo: float, hi: float, step: str, into: Readings,
                position: int) -> tuple[str | None, int]:
        """One meterdata2 request for [lo, hi) parsed into `into`: (resolution, items)."""
        start, stop = datetime.fromtimestamp(lo, TZ), datetime.fromtimestamp(hi, TZ)
        doc = self._meterdata(direction, start, stop, step)
        where = f"{self.url} (meterdata2 {direction} {step} from {start:%Y-%m-%d %H:%M})"
        return parse_meterdata2(doc, where, into, clock=_LocalClock(not_before=lo),
                                first_position=position, window=(lo, hi))

    def read(self, window: SourceRange) -> list[Series]:
        lo, hi = window_bounds(window.start, window.end, self.now or time.time(),
                               self.default_days)
        out = []
        for direction in self.directions:
            into = Readings()
            position = 1
            sid = self.statistic_id(direction)
            for clo, chi in day_chunks(lo, hi, self.chunk_days):
                quarter = Readings()
                _, count = self._answer(direction, clo, chi, "PT15MIN", quarter, position)
                position += count
                for name in ("starts", "ends", "values", "positions", "estimated"):
                    getattr(into, name).extend(getattr(quarter, name))
                into.unavailable += quarter.unavailable
                into.unit = "kWh"
                position += self._hours_for_gaps(direction, clo, chi, quarter, into, position)
            series, _estimated = to_series(into, self.url, statistic_id=sid,
                                           name=self.name(direction))
            if into.unavailable:
                note = f"{sid}: {into.unavailable} value(s) not available (null), left out"
                self.notes.append(note)
                log.warning("%s", note)
            out.append(series)
        return out

    def _hours_for_gaps(self, direction: str, lo: float, hi: float, quarter: Readings,
                        into: Readings, position: int) -> int:
        """PT1H for the whole hours of [lo, hi) PT15MIN said nothing about (older ranges have
        no 15-minute values; a gap at the end or in the middle is filled the same way).
        Returns how many items the PT1H answer held (for positions)."""
        covered = {int(t // 3600) for t in quarter.answered}
        first_hour = int(-(-lo // 3600))
        needed = [h for h in range(first_hour, int(hi // 3600)) if h not in covered]
        if not needed:
            return 0
        span = (needed[0] * 3600.0, needed[-1] * 3600.0 + 3600.0)
        log.info("WattiVahti has no 15-minute values for %d hour(s) from %s; asking for hours",
                 len(needed), datetime.fromtimestamp(span[0], TZ))
        hours = Readings()
        _, count = self._answer(direction, span[0], span[1], "PT1H", hours, position)
        wanted = set(needed)
        keep = [i for i, start in enumerate(hours.starts) if int(start // 3600) in wanted
                and hours.ends[i] - start == 3600]
        for name in ("starts", "ends", "values", "positions", "estimated"):
            getattr(into, name).extend(getattr(hours, name)[i] for i in keep)
        answered = sum(1 for t in hours.answered if int(t // 3600) in wanted)
        into.unavailable += answered - len(keep)  # the nulls among the wanted hours
        return count

    def close(self) -> None:
        self.http.close()


def open_wattivahti_source(spec: str) -> WattiVahtiSource:
    """`wattivahti:<metering point>[?direction=consumption|production|both&token_file=...]`."""
    return WattiVahtiSource(spec)


def meterdata2_file(doc: dict[str, Any], path: str, tz: str | None = None) -> list[Series]:
    """A saved `meterdata2` answer read as a file; times are Finnish unless --tz says else."""
    into = Readings()
    data = doc.get("getconsumptionsresult") or {}
    tsv = (((data.get("consumptiondata") or {}).get("timeseries") or {}).get("values")
           or {}).get("tsv") if isinstance(data, dict) else None
    clock = _LocalClock(ZoneInfo(tz)) if tz else _LocalClock()
    parse_meterdata2(doc, path, into, clock=clock, lines=getattr(tsv, "lines", None) or None)
    if not into.values:
        raise InputError("no values in the meterdata2 answer", path=path)
    point = (data.get("consumptiondata") or {}).get("meteringpointcode") or "metering point"
    series, _estimated = to_series(into, path, statistic_id=None, name=f"WattiVahti {point}")
    return [series]
