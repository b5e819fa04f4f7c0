"""WattiVahti (Pori Energia, Finland) as a reading source (`wattivahti:<metering point>`).

The API (reference/seed-systems.md, system 3) answers `meterdata2` with local Finnish wall-clock
times and no offset (some answers carry a wrong trailing `Z`), the repeated autumn hour as pairs
of equal times, nothing at all at 15 minutes for older ranges, and sits behind an Azure AD B2C
refresh token that rotates. So:

* the refresh token lives in REFRESH_TOKEN_FILE; each new one is written atomically, mode 0600,
  *before* the access token it came with is used, so a crash never loses the only valid token;
  a missing file or a refused token is an error naming the file and what to put in it;
* a naive time that occurs twice in the repeated hour is the first (summer) then the second
  (winter) occurrence; a time the spring-forward gap skips is an error naming its position;
* PT15MIN first, PT1H for a range where PT15MIN gives nothing; `null` is not available (left
  out), 0 is 0; consumption (measurementType 1) and production (6) are separate Series.

    wattivahti:1234567?direction=both
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from backdate.engine.prepare import slugify
from backdate.errors import InputError, TargetError, UsageError
from backdate.models import Series
from backdate.sources.base import SourceRange
from backdate.sources.portal_http import (
    PortalHTTP,
    choice,
    day_chunks,
    int_param,
    mask,
    parse_spec,
    secret,
    timeout_param,
    window_bounds,
    write_secret_file,
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
    """Turns naive Finnish wall-clock times into UTC, telling the repeated hour apart by
    order: the first 03:15 of the autumn day is summer time, the second winter time."""

    tz: ZoneInfo = TZ
    seen: dict[datetime, int] = field(default_factory=dict)
    # The start of the range asked for: an answer that begins inside the repeated hour begins
    # with its second occurrence when the first lies before the range.
    not_before: float | None = None

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
        if first.utcoffset() != second.utcoffset():  # in the repeated hour
            count = self.seen.get(dt, 0)
            if count >= 2:
                raise InputError(f"local time {raw} occurs more than twice on the autumn "
                                 "change day", path=where, line=pos)
            if not count and self.not_before is not None and first.timestamp() < \
                    self.not_before <= second.timestamp():
                count = 1
            self.seen[dt] = count + 1
            return (second if count else first).timestamp()
        return first.timestamp()


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
    default_unit = (data.get("sum") or {}).get("unit") if isinstance(data.get("sum"),
                                                                      dict) else None
    into.unit = "kWh"
    for k, item in enumerate(tsv):
        pos = lines[k] if lines is not None else first_position + k
        if not isinstance(item, dict):
            raise InputError(f"tsv item {k + 1} is not an object", path=where, line=pos)
        start = clock.epoch(item.get("time"), where, pos)
        if window is not None and not window[0] <= start < window[1]:
            continue
        if into.first_item is None or start < into.first_item:
            into.first_item = start
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
    """The rotating B2C refresh token on disk (REFRESH_TOKEN_FILE)."""

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

    def write(self, token: str) -> None:
        write_secret_file(self.path, token)


class WattiVahtiSource:
    """`wattivahti:<metering point>`: consumption and production per 15 minutes (or hour)."""

    def __init__(self, spec: str, *, now: float | None = None) -> None:
        self.url = mask(spec)
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
        self.resolutions: dict[str, list[tuple[float, float, str]]] = {}
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
        """Trade the stored refresh token for an access token; store the rotated one first."""
        client_id = secret(self._spec, "client_id", "WATTIVAHTI_CLIENT_ID",
                           what="WattiVahti client id")
        if not client_id:
            raise UsageError("wattivahti: set WATTIVAHTI_CLIENT_ID, the client id of "
                             "WattiVahti's web app (Azure AD B2C tenant pesv)")
        token = self.token_file.read()
        resp = self.http.send("POST", self.token_url, ok=(200, 400, 401), data={
            "client_id": client_id, "scope": SCOPE, "grant_type": "refresh_token",
            "refresh_token": token, "client_info": "1"})
        if resp.status_code != 200:
            try:
                error = str(self.http.json(resp).get("error") or "")
            except (TargetError, AttributeError):
                error = ""
            raise InputError(
                f"WattiVahti refused the refresh token (HTTP {resp.status_code}"
                f"{' ' + error if error else ''}: expired, revoked or already used); "
                f"{self.token_file.instructions()}", path=str(self.token_file.path))
        answer = self.http.json(resp)
        if not isinstance(answer, dict) or not answer.get("access_token"):
            raise TargetError("WattiVahti: the token answer has no access_token")
        new = answer.get("refresh_token")
        if new and new != token:
            self.token_file.write(str(new))  # before the access token is used
            log.info("stored WattiVahti's rotated refresh token in %s", self.token_file.path)
        self._access = str(answer["access_token"])
        self._expires = time.monotonic() + float(answer.get("expires_in") or 3600) - 30
        return self._access

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
            used = self.resolutions.setdefault(sid, [])
            for clo, chi in day_chunks(lo, hi, self.chunk_days):
                quarter = Readings()
                got, count = self._answer(direction, clo, chi, "PT15MIN", quarter, position)
                position += count
                # Older ranges have no 15-minute values: hours for what PT15MIN left out at
                # the start (all of the chunk when it answered nothing).
                first = quarter.first_item if quarter.first_item is not None else chi
                if first > clo:
                    log.info("WattiVahti has no 15-minute values before %s; asking for hours",
                             datetime.fromtimestamp(first, TZ))
                    hours = Readings()
                    _, n = self._answer(direction, clo, first, "PT1H", hours, position)
                    position += n
                    keep = [i for i, end in enumerate(hours.ends) if end <= first]
                    for name in ("starts", "ends", "values", "positions", "estimated"):
                        getattr(into, name).extend(getattr(hours, name)[i] for i in keep)
                    into.unavailable += hours.unavailable
                    if keep:
                        used.append((clo, first, "PT1H"))
                for name in ("starts", "ends", "values", "positions", "estimated"):
                    getattr(into, name).extend(getattr(quarter, name))
                into.unavailable += quarter.unavailable
                into.unit = "kWh"
                if quarter.starts:
                    used.append((first, chi, got or "PT15MIN"))
            series, _estimated = to_series(into, self.url, statistic_id=sid,
                                           name=self.name(direction))
            if into.unavailable:
                note = f"{sid}: {into.unavailable} value(s) not available (null), left out"
                self.notes.append(note)
                log.warning("%s", note)
            out.append(series)
        return out

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
