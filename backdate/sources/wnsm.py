"""Wiener Netze Smart Meter as a reading source (`wnsm:<Zählpunkt>`).

Two ways in (reference/seed-systems.md, system 1):

* the customer portal (default, `auth=portal`): Keycloak authorization code with PKCE and the
  two-step login form, token refresh, `zaehlpunkte` for the customer number, and
  `user/messwerte/bewegungsdaten` with role V002/V001 (consumption) or E002/E001 (feed-in);
* the official API (`auth=api`): client credentials, `zaehlpunkte/{zp}/messwerte`.

Why this shape: the original add-on fixed role V002, assumed kWh and fell back to made-up data
when a call failed. Here the unit comes from `descriptor.einheit` (WH or KWH), `null` means
not yet available (left out, never 0), estimated values are counted and reported, consumption
and feed-in are separate Series, and any failure stops the read with its HTTP status.

    wnsm:AT0010000000000000001000000000001?direction=both&start_days=30
    wnsm:AT00...?auth=api        (WNSM_CLIENT_ID, WNSM_CLIENT_SECRET, WNSM_API_KEY)

Credentials come from WNSM_USERNAME / WNSM_PASSWORD (or *_FILE); every base URL is a
parameter or an environment variable (README lists them). A refused user name or password is
exit 1 and is never sent again by the same process (log.wien asks for a CAPTCHA after a failed
login, DarwinsBuddy #316). Daily values count only when the whole Vienna day lies in the range.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit
from zoneinfo import ZoneInfo

import numpy as np

from backdate.domain.urls import mask_url
from backdate.engine.prepare import slugify
from backdate.errors import InputError, RefusedError, TargetError, UsageError
from backdate.models import Kind, Series
from backdate.sources.base import SourceRange
from backdate.sources.portal_http import (
    DAY,
    PortalHTTP,
    choice,
    day_chunks,
    int_param,
    parse_spec,
    secret,
    timeout_param,
    window_bounds,
)

log = logging.getLogger(__name__)

LOGIN_URL = "https://log.wien/auth/realms/logwien"
PORTAL_URL = "https://smartmeter-web.wienernetze.at"
B2C_URL = "https://api.wstw.at/gateway/WN_SMART_METER_PORTAL_API_B2C/1.0"
ALT_URL = "https://service.wienernetze.at/sm/api"
API_URL = "https://api.wstw.at/gateway/WN_SMART_METER_API/1.0"
CLIENT_ID = "wn-smartmeter"
VIENNA = ZoneInfo("Europe/Vienna")

KNOWN = {"username", "password", "client_id", "client_secret", "api_key", "zaehlpunkt",
         "auth", "direction", "resolution", "customer", "statistic_id", "name", "days", "timeout",
         "chunk_days", "login_url", "portal_url", "b2c_url", "alt_url", "api_url"}
DIRECTIONS = {"consumption": ("consumption",), "feedin": ("feedin",),
              "both": ("consumption", "feedin")}
# bewegungsdaten roles per (direction, resolution)
ROLES = {("consumption", "quarter_hour"): "V002", ("consumption", "day"): "V001",
         ("feedin", "quarter_hour"): "E002", ("feedin", "day"): "E001"}
# official API: OBIS codes of the load profiles (1 = from the grid, 2 = into it)
OBIS_DIRECTION = {"1": "consumption", "2": "feedin"}
UNITS = {"WH": "Wh", "KWH": "kWh"}


@dataclass(slots=True)
class Readings:
    """One direction's readings as they arrive, before they become a Series."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    estimated: list[bool] = field(default_factory=list)
    unit: str | None = None  # always kWh once a value arrived (Wh answers are scaled)
    unavailable: int = 0  # null values: not yet delivered
    first_item: float | None = None  # earliest interval answered, null or not
    answered: list[float] = field(default_factory=list)  # every start answered, null or not


def _utc(text: Any, where: str, pos: int) -> float:
    """An ISO time with offset or Z (the portal sends UTC) as epoch seconds."""
    if not isinstance(text, str):
        raise InputError(f"time {text!r} is not a text", path=where, line=pos)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"time {text!r} is not an ISO time", path=where, line=pos) from None
    if dt.tzinfo is None:
        raise InputError(f"time {text!r} has no offset (the portal sends UTC)", path=where,
                         line=pos)
    return dt.timestamp()


def _number(value: Any, where: str, pos: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"value {value!r} is not a number", path=where, line=pos)
    out = float(value)
    if not np.isfinite(out) or out < 0:
        raise InputError(f"value {value!r} is not an amount of energy", path=where, line=pos)
    return out


def parse_bewegungsdaten(doc: Any, where: str, into: Readings, *, zaehlpunkt: str | None = None,
                         lines: list[int] | None = None, first_position: int = 1,
                         window: tuple[float, float] | None = None) -> str:
    """Add one `bewegungsdaten` answer to `into`; returns its role (V002, E002, ...).

    Positions are 1-based indexes into `values` (plus `first_position - 1`), or the file's
    lines when `lines` is given. Readings not wholly inside `window` are dropped (answers
    cover whole days; a daily value that reaches past the range is not part of it).
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("descriptor"), dict) or \
            not isinstance(doc.get("values"), list | None) or "values" not in doc:
        raise InputError("not a bewegungsdaten answer: needs 'descriptor' and 'values'",
                         path=where)
    desc = doc["descriptor"]
    if zaehlpunkt is not None and desc.get("zaehlpunktnummer") not in (None, zaehlpunkt):
        raise InputError(f"the answer is for Zählpunkt {desc.get('zaehlpunktnummer')!r}, "
                         f"not {zaehlpunkt!r}", path=where)
    einheit = str(desc.get("einheit") or "").upper()
    if einheit not in UNITS:
        raise InputError(f"descriptor.einheit {desc.get('einheit')!r} is not WH or KWH",
                         path=where)
    scale = 1e-3 if UNITS[einheit] == "Wh" else 1.0  # everything is kept in kWh
    into.unit = "kWh"
    for k, item in enumerate(doc["values"] or []):  # null: nothing delivered (an outage)
        pos = lines[k] if lines is not None else first_position + k
        if not isinstance(item, dict):
            raise InputError(f"value {k + 1} is not an object", path=where, line=pos)
        start = _utc(item.get("zeitpunktVon"), where, pos)
        end = _utc(item.get("zeitpunktBis"), where, pos)
        if end <= start:
            raise InputError("zeitpunktBis is not after zeitpunktVon", path=where, line=pos)
        if window is not None and not (window[0] <= start and end <= window[1]):
            continue  # only intervals wholly inside the range (a day is a whole day)
        wert = item.get("wert")
        if wert is None:  # not yet available: never a zero
            into.unavailable += 1
            continue
        into.starts.append(start)
        into.ends.append(end)
        into.values.append(_number(wert, where, pos) * scale)
        into.positions.append(pos)
        into.estimated.append(bool(item.get("geschaetzt")))
    return str(desc.get("rolle") or "")


def parse_messwerte(doc: Any, where: str, by_direction: dict[str, Readings], *,
                    zaehlpunkt: str | None = None, first_position: int = 1,
                    window: tuple[float, float] | None = None) -> int:
    """Add one official-API `messwerte` answer (Wh per interval) to `by_direction`; returns
    how many values it held (for positions)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("zaehlwerke"), list):
        raise InputError("not a messwerte answer: needs 'zaehlwerke'", path=where)
    if zaehlpunkt is not None and doc.get("zaehlpunkt") not in (None, zaehlpunkt):
        raise InputError(f"the answer is for Zählpunkt {doc.get('zaehlpunkt')!r}, "
                         f"not {zaehlpunkt!r}", path=where)
    pos = first_position
    for werk in doc["zaehlwerke"]:
        obis = str(werk.get("obisCode") or "") if isinstance(werk, dict) else ""
        match = re.fullmatch(r"1-1:([12])\.[89]\.0", obis)
        if match is None:
            raise InputError(f"unknown obisCode {obis!r}", path=where, line=pos)
        direction = OBIS_DIRECTION[match.group(1)]
        einheit = str(werk.get("einheit") or "WH").upper()
        if einheit not in UNITS:
            raise InputError(f"einheit {werk.get('einheit')!r} is not WH or KWH", path=where,
                             line=pos)
        into = by_direction.get(direction)
        scale = 1e-3 if UNITS[einheit] == "Wh" else 1.0  # kept in kWh
        for item in werk.get("messwerte") or []:
            here, pos = pos, pos + 1
            if into is None:
                continue
            into.unit = "kWh"
            start = _utc(item.get("zeitVon"), where, here)
            end = _utc(item.get("zeitBis"), where, here)
            if window is not None and not (window[0] <= start and end <= window[1]):
                continue
            if item.get("messwert") is None:
                into.unavailable += 1
                continue
            into.starts.append(start)
            into.ends.append(end)
            into.values.append(_number(item["messwert"], where, here) * scale)
            into.positions.append(here)
            into.estimated.append(str(item.get("qualitaet") or "VAL").upper() != "VAL")
    return pos - first_position


def to_series(readings: Readings, source: str, *, statistic_id: str | None, name: str | None,
              ) -> tuple[Series, np.ndarray]:
    """Sorted Series (DELTA with ends) and the estimated flag of each reading; the same
    interval twice with different values is an error naming both positions."""
    starts = np.asarray(readings.starts, dtype=np.float64)
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    ends = np.asarray(readings.ends, dtype=np.float64)[order]
    values = np.asarray(readings.values, dtype=np.float64)[order]
    lines = np.asarray(readings.positions, dtype=np.int64)[order]
    estimated = np.asarray(readings.estimated, dtype=bool)[order]
    if len(starts) > 1:
        same = starts[1:] == starts[:-1]
        if same.any():
            clash = same & ((values[1:] != values[:-1]) | (ends[1:] != ends[:-1]))
            if clash.any():
                i = int(np.flatnonzero(clash)[0])
                raise InputError(
                    f"two different values for the interval starting "
                    f"{datetime.fromtimestamp(starts[i], UTC):%Y-%m-%d %H:%M} UTC "
                    f"(also at position {lines[i]})", path=source, line=int(lines[i + 1]))
            keep = np.concatenate([[True], ~same])
            starts, ends, values = starts[keep], ends[keep], values[keep]
            lines, estimated = lines[keep], estimated[keep]
    series = Series(source=source, times=starts, values=values, lines=lines, ends=ends,
                    kind=Kind.DELTA, unit=readings.unit or "kWh", statistic_id=statistic_id,
                    name=name, unit_fixed=True)
    return series, estimated


def estimated_note(statistic_id: str, times: np.ndarray, estimated: np.ndarray) -> str | None:
    """What to tell the user about estimated (not yet validated) readings, or None."""
    count = int(estimated.sum())
    if not count:
        return None
    first = datetime.fromtimestamp(float(times[estimated][0]), UTC)
    last = datetime.fromtimestamp(float(times[estimated][-1]), UTC)
    return (f"{statistic_id}: {count} estimated value(s) (geschaetzt), "
            f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC; "
            "a later sync replaces them with the measured values")


def _pkce() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


_FORM_ACTION = re.compile(r"<form\b[^>]*\baction\s*=\s*[\"']([^\"']+)[\"']", re.I)


def _form_action(page: str, base: str) -> str | None:
    match = _FORM_ACTION.search(page)
    return urljoin(base, html.unescape(match.group(1))) if match else None


class _Tokens:
    """An access token with its expiry and the refresh token (Keycloak's answer)."""

    def __init__(self, answer: dict[str, Any], what: str) -> None:
        if str(answer.get("token_type", "")).lower() != "bearer" or not answer.get(
                "access_token"):
            raise TargetError(f"{what}: the token answer has no Bearer access token")
        self.access = str(answer["access_token"])
        self.refresh = answer.get("refresh_token")
        self.expires = time.monotonic() + float(answer.get("expires_in") or 300) - 10

    @property
    def fresh(self) -> bool:
        return time.monotonic() < self.expires


# Credentials log.wien refused in this process (digests, never the secrets): one refused
# login is never tried again in the same process (a `sync` daemon runs every interval), since
# the portal shows a hidden CAPTCHA after the first failure (DarwinsBuddy #316) and may lock the
# account. New credentials (a changed WNSM_PASSWORD) are tried.
_REFUSED: dict[str, str] = {}


def _credential_key(login_url: str, username: str, password: str) -> str:
    return hashlib.sha256("\0".join((login_url, username, password)).encode()).hexdigest()


class PortalSession:
    """The customer-portal login (Keycloak code flow with PKCE) and authenticated calls."""

    def __init__(self, http: PortalHTTP, *, login_url: str, portal_url: str, b2c_url: str,
                 username: str, password: str) -> None:
        self.http = http
        self.login_url = login_url.rstrip("/")
        self.portal_url = portal_url.rstrip("/")
        self.b2c_url = b2c_url.rstrip("/")
        self._username = username
        self._password = password
        self.tokens: _Tokens | None = None
        self.b2c_key: str | None = None

    @property
    def redirect_uri(self) -> str:
        return self.portal_url + "/"

    def login(self) -> None:
        """The two-step form of log.wien, then the code exchange (PKCE S256).

        A refused user name or password is an error of the input (exit 1), remembered so this
        process never sends the same credentials again.
        """
        key = _credential_key(self.login_url, self._username, self._password)
        if key in _REFUSED:
            raise RefusedError(_REFUSED[key] + " (not tried again: log.wien refused these "
                               "credentials earlier in this process)")
        verifier, challenge = _pkce()
        query = urlencode({
            "client_id": CLIENT_ID, "redirect_uri": self.redirect_uri,
            "response_mode": "fragment", "response_type": "code", "scope": "openid",
            "nonce": "", "code_challenge": challenge, "code_challenge_method": "S256",
        })
        auth_url = f"{self.login_url}/protocol/openid-connect/auth?{query}"
        page = self.http.send("GET", auth_url)
        action = _form_action(page.text, str(page.url))
        if action is None:
            raise TargetError("Wiener Netze login: the login page has no form (the portal's "
                              "login may have changed)")
        step = self.http.send("POST", action, data={"username": self._username, "login": " "})
        action = _form_action(step.text, str(step.url))
        if action is None:
            raise TargetError("Wiener Netze login: no password form after the user name "
                              "(unknown user, or a CAPTCHA)")
        done = self.http.send("POST", action, ok=(200, 302, 303),
                              data={"username": self._username, "password": self._password})
        location = done.headers.get("location", "")
        code = parse_qs(urlsplit(location).fragment).get("code", [None])[0] or parse_qs(
            urlsplit(location).query).get("code", [None])[0]
        if done.status_code == 200 and _form_action(done.text, str(done.url)):
            message = ("Wiener Netze login refused the user name or password; check "
                       "WNSM_USERNAME and WNSM_PASSWORD (or the files WNSM_USERNAME_FILE / "
                       "WNSM_PASSWORD_FILE name); backdate does not retry them, since log.wien "
                       "asks for a CAPTCHA after failed logins")
            _REFUSED[key] = message
            raise RefusedError(message)
        if not code:
            raise TargetError(
                f"Wiener Netze login: HTTP {done.status_code} without an authorization code "
                "after the password form (the portal's login may have changed); try again "
                "later")
        answer = self.http.send("POST", f"{self.login_url}/protocol/openid-connect/token", data={
            "grant_type": "authorization_code", "client_id": CLIENT_ID,
            "redirect_uri": self.redirect_uri, "code": code, "code_verifier": verifier,
        })
        self.tokens = _Tokens(self.http.json(answer), "Wiener Netze login")
        log.info("logged in to the Wiener Netze portal")

    def refresh(self) -> None:
        """A new access token from the refresh token, else a new login."""
        tokens = self.tokens
        if tokens is None or not tokens.refresh:
            self.login()
            return
        resp = self.http.send("POST", f"{self.login_url}/protocol/openid-connect/token",
                              ok=(200, 400, 401), data={
                                  "grant_type": "refresh_token", "client_id": CLIENT_ID,
                                  "refresh_token": tokens.refresh})
        if resp.status_code != 200:  # refresh token expired or revoked: log in again
            log.info("Wiener Netze refresh token refused (HTTP %s); logging in again",
                     resp.status_code)
            self.login()
            return
        self.tokens = _Tokens(self.http.json(resp), "Wiener Netze token refresh")

    def access(self) -> str:
        if self.tokens is None:
            self.login()
        elif not self.tokens.fresh:
            self.refresh()
        assert self.tokens is not None
        return self.tokens.access

    def get(self, url: str, params: dict[str, str], *, gateway: bool = False) -> Any:
        """GET with the Bearer token (and the B2C API key); one refresh on 401."""
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.access()}", "Accept": "application/json"}
            if gateway:
                headers["X-Gateway-APIKey"] = self.api_key()
            resp = self.http.send("GET", url, params=params, headers=headers, ok=(200, 401))
            if resp.status_code == 200:
                return self.http.json(resp)
            if attempt == 1:
                self.refresh()
        raise self.http.failed(resp, "the portal refused a fresh token")

    def api_key(self) -> str:
        """The B2C gateway key from the portal's app-config.json (it may also move the B2C
        base)."""
        if self.b2c_key is None:
            resp = self.http.send("GET", f"{self.portal_url}/assets/app-config.json",
                                  headers={"Authorization": f"Bearer {self.access()}"})
            config = self.http.json(resp)
            key = config.get("b2cApiKey") if isinstance(config, dict) else None
            if not key:
                raise TargetError("Wiener Netze: app-config.json has no b2cApiKey")
            self.b2c_key = str(key)
            if config.get("b2cApiUrl"):
                self.b2c_url = str(config["b2cApiUrl"]).rstrip("/")
        return self.b2c_key


class WnsmSource:
    """`wnsm:<Zählpunkt>`: quarter-hour (or daily) consumption and feed-in."""

    time_zone = "Europe/Vienna"  # the portal's days (MQTT's "last complete day", --start)

    def __init__(self, spec: str, *, now: float | None = None) -> None:
        self.url = mask_url(spec)
        self._spec = parse_spec(spec, "wnsm", known=KNOWN)
        s = self._spec
        self.zaehlpunkt = s.point or (s.get("zaehlpunkt", "WNSM_ZP") or "")
        if not self.zaehlpunkt:
            raise UsageError("wnsm: name the Zählpunkt: wnsm:AT00100000000000000010000000000xx")
        self.auth = (s.get("auth", "WNSM_AUTH") or "portal").lower()
        if self.auth not in ("portal", "api"):
            raise UsageError(f"wnsm: auth must be portal or api, not {self.auth!r}")
        self.directions = choice(s, "direction", DIRECTIONS, "consumption")
        self.resolution = (s.get("resolution") or "quarter_hour").lower()
        if self.resolution not in ("quarter_hour", "day"):
            raise UsageError("wnsm: resolution must be quarter_hour or day")
        self.default_days = int_param(s, "days", "INITIAL_SYNC_DAYS", 7)
        self.chunk_days = int_param(s, "chunk_days", None, 30)
        self.now = now
        self.notes: list[str] = []
        self.estimated: dict[str, np.ndarray] = {}
        self.http = PortalHTTP("Wiener Netze", timeout=timeout_param(s))
        self._session: PortalSession | None = None
        self._api_token: _Tokens | None = None

    # -- statistic ids ---------------------------------------------------------------------

    def statistic_id(self, direction: str) -> str:
        given = self._spec.get("statistic_id")
        if given:
            return given if len(self.directions) == 1 else f"{given}_{direction}"
        return f"backdate:wnsm_{slugify(self.zaehlpunkt)}_{direction}"

    def name(self, direction: str) -> str:
        given = self._spec.get("name")
        label = "consumption" if direction == "consumption" else "feed-in"
        if given:
            return given if len(self.directions) == 1 else f"{given} {label}"
        return f"Wiener Netze {self.zaehlpunkt} {label}"

    # -- reading ---------------------------------------------------------------------------

    def read(self, window: SourceRange) -> list[Series]:
        lo, hi = window_bounds(window.start, window.end, self.now or time.time(),
                               self.default_days)
        by_direction = {d: Readings() for d in self.directions}
        if self.auth == "portal":
            self._read_portal(lo, hi, by_direction)
        else:
            self._read_api(lo, hi, by_direction)
        out = []
        for direction, readings in by_direction.items():
            sid = self.statistic_id(direction)
            series, estimated = to_series(readings, self.url, statistic_id=sid,
                                          name=self.name(direction))
            self.estimated[sid] = estimated
            for note in (estimated_note(sid, series.times, estimated),
                         f"{sid}: {readings.unavailable} value(s) not yet available (null), "
                         "left out" if readings.unavailable else None):
                if note:
                    self.notes.append(note)
                    log.warning("%s", note)
            out.append(series)
        return out

    def _portal(self) -> PortalSession:
        if self._session is None:
            s = self._spec
            username = secret(s, "username", "WNSM_USERNAME", what="Wiener Netze user name")
            password = secret(s, "password", "WNSM_PASSWORD", what="Wiener Netze password")
            if not username or not password:
                raise UsageError("wnsm: set WNSM_USERNAME and WNSM_PASSWORD (or "
                                 "WNSM_USERNAME_FILE / WNSM_PASSWORD_FILE naming files that "
                                 "hold them): the login of smartmeter-web.wienernetze.at")
            self._session = PortalSession(
                self.http, username=username, password=password,
                login_url=s.get("login_url", "WNSM_LOGIN_URL", LOGIN_URL) or LOGIN_URL,
                portal_url=s.get("portal_url", "WNSM_PORTAL_URL", PORTAL_URL) or PORTAL_URL,
                b2c_url=s.get("b2c_url", "WNSM_B2C_URL", B2C_URL) or B2C_URL,
            )
        return self._session

    def customer(self, session: PortalSession) -> str:
        """The Geschäftspartner that holds this Zählpunkt (from `zaehlpunkte`)."""
        given = self._spec.get("customer", "WNSM_CUSTOMER")
        if given:
            return given
        session.api_key()
        contracts = session.get(f"{session.b2c_url}/zaehlpunkte", {}, gateway=True)
        seen = []
        for contract in contracts if isinstance(contracts, list) else []:
            for zp in contract.get("zaehlpunkte") or []:
                number = zp.get("zaehlpunktnummer")
                seen.append(str(number))
                if number == self.zaehlpunkt:
                    return str(contract.get("geschaeftspartner"))
        raise InputError(f"Zählpunkt {self.zaehlpunkt} is not in this account; it holds "
                         f"{', '.join(seen) or 'none'}", path=self.url)

    def _read_portal(self, lo: float, hi: float, by_direction: dict[str, Readings]) -> None:
        session = self._portal()
        customer = self.customer(session)
        alt = (self._spec.get("alt_url", "WNSM_ALT_URL", ALT_URL) or ALT_URL).rstrip("/")
        for direction, into in by_direction.items():
            role = ROLES[(direction, self.resolution)]
            position = 1
            for clo, chi in day_chunks(lo, hi, self.chunk_days):
                von = datetime.fromtimestamp(clo, UTC)
                if self.resolution == "day":  # ask from the local midnight: whole days
                    von = datetime.fromtimestamp(clo, VIENNA).replace(
                        hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
                bis = datetime.fromtimestamp(chi - 0.001, UTC)
                doc = session.get(f"{alt}/user/messwerte/bewegungsdaten", {
                    "geschaeftspartner": customer, "zaehlpunktnummer": self.zaehlpunkt,
                    "rolle": role, "zeitpunktVon": von.strftime("%Y-%m-%dT%H:%M:00.000Z"),
                    "zeitpunktBis": bis.strftime("%Y-%m-%dT23:59:59.999Z"), "aggregat": "NONE",
                })
                got = parse_bewegungsdaten(doc, f"{self.url} (bewegungsdaten {role})", into,
                                           zaehlpunkt=self.zaehlpunkt, first_position=position,
                                           window=(clo, chi))
                if got and got != role:
                    raise InputError(f"asked for role {role}, the answer is for {got}",
                                     path=self.url)
                if not doc["values"]:
                    note = (f"{self.statistic_id(direction)}: the portal delivered no values "
                            f"from {von:%Y-%m-%d %H:%M} UTC to {bis:%Y-%m-%d} (not available "
                            "yet, or an outage); nothing was filled in")
                    self.notes.append(note)
                    log.warning("%s", note)
                position += len(doc["values"] or [])

    def _api_access(self, login_url: str) -> str:
        if self._api_token is None or not self._api_token.fresh:
            s = self._spec
            client_id = secret(s, "client_id", "WNSM_CLIENT_ID", what="API client id")
            client_secret = secret(s, "client_secret", "WNSM_CLIENT_SECRET",
                                   what="API client secret")
            if not client_id or not client_secret:
                raise UsageError("wnsm: auth=api needs WNSM_CLIENT_ID and WNSM_CLIENT_SECRET "
                                 "(and WNSM_API_KEY) from the Wiener Netze business portal")
            resp = self.http.send("POST", f"{login_url}/protocol/openid-connect/token",
                                  ok=(200, 400, 401), data={
                                      "grant_type": "client_credentials",
                                      "client_id": client_id, "client_secret": client_secret})
            if resp.status_code != 200:
                raise self.http.failed(resp, "check WNSM_CLIENT_ID and WNSM_CLIENT_SECRET")
            self._api_token = _Tokens(self.http.json(resp), "Wiener Netze API token")
        return self._api_token.access

    def _read_api(self, lo: float, hi: float, by_direction: dict[str, Readings]) -> None:
        s = self._spec
        login_url = (s.get("login_url", "WNSM_LOGIN_URL", LOGIN_URL) or LOGIN_URL).rstrip("/")
        api = (s.get("api_url", "WNSM_API_URL", API_URL) or API_URL).rstrip("/")
        key = secret(s, "api_key", "WNSM_API_KEY", what="API gateway key")
        if not key:
            raise UsageError("wnsm: auth=api needs WNSM_API_KEY (the x-Gateway-APIKey)")
        wertetyp = "QUARTER_HOUR" if self.resolution == "quarter_hour" else "DAY"
        position = 1
        for clo, chi in day_chunks(lo, hi, self.chunk_days):
            params = {"wertetyp": wertetyp,
                      "datumVon": datetime.fromtimestamp(clo, UTC).strftime("%Y-%m-%d"),
                      "datumBis": datetime.fromtimestamp(chi - 0.001, UTC).strftime("%Y-%m-%d")}
            url = f"{api}/zaehlpunkte/{self.zaehlpunkt}/messwerte"
            for attempt in (1, 2):
                headers = {"Authorization": f"Bearer {self._api_access(login_url)}",
                           "x-Gateway-APIKey": key, "Accept": "application/json"}
                resp = self.http.send("GET", url, params=params, headers=headers,
                                      ok=(200, 401))
                if resp.status_code == 200:
                    break
                self._api_token = None  # expired early: one new token, then give up
                if attempt == 2:
                    raise self.http.failed(resp, "the API refused a fresh token")
            doc = self.http.json(resp)
            position += parse_messwerte(doc, f"{self.url} (messwerte)", by_direction,
                                        zaehlpunkt=self.zaehlpunkt, first_position=position,
                                        window=(clo, chi))

    def close(self) -> None:
        self.http.close()


def open_wnsm_source(spec: str) -> WnsmSource:
    """`wnsm:<Zählpunkt>[?direction=consumption|feedin|both&auth=portal|api&...]`."""
    return WnsmSource(spec)


__all__ = ["DAY", "WnsmSource", "open_wnsm_source", "parse_bewegungsdaten", "parse_messwerte"]


def bewegungsdaten_file(doc: dict[str, Any], path: str) -> list[Series]:
    """A saved `bewegungsdaten` answer read as a file (`backdate import answer.json`).

    The statistic id defaults to the file name like every file (`--statistic-id` names it);
    positions are the file's lines.
    """
    into = Readings()
    values = doc.get("values")
    role = parse_bewegungsdaten(doc, path, into, lines=getattr(values, "lines", None) or None)
    if not into.values:
        raise InputError("no available values in the bewegungsdaten answer (all null)",
                         path=path)
    zp = (doc.get("descriptor") or {}).get("zaehlpunktnummer") or "Zählpunkt"
    label = "feed-in" if role.upper().startswith("E") else "consumption"
    series, estimated = to_series(into, path, statistic_id=None,
                                  name=f"Wiener Netze {zp} {label}")
    note = estimated_note(path, series.times, estimated)
    if note:
        log.warning("%s", note)
    return [series]
