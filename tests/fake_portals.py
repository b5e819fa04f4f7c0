"""Local HTTP servers that speak the utility portals' APIs as reference/seed-systems.md documents
them (systems 1 and 3): the only stand-ins the tests use, because the real portals cannot be
reached from here and need real customers' accounts.

Each fake holds its own data set (given by the test), records every request it gets, and can be
told to fail: `outages[path_part] = 503` answers that status, `"timeout"` makes it hang,
`"html"` answers a non-JSON body. Nothing in here knows backdate's code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

QUARTER = 900
VIENNA = ZoneInfo("Europe/Vienna")
HELSINKI = ZoneInfo("Europe/Helsinki")


@dataclass
class Request:
    """What a fake got: method, path, query and form fields (first values), headers."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        form = {}
        if "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
            form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        req = Request(method, parts.path,
                      {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
                      form, {k.lower(): v for k, v in self.headers.items()})
        fake = self.server.fake
        with fake.lock:
            fake.requests.append(req)
        if fake.before is not None:  # a test's hook: expire tokens, look at files, ...
            fake.before(req)
        outage = next((v for k, v in list(fake.outages.items()) if k in req.path), None)
        if outage == "timeout":
            time.sleep(fake.hang_seconds)
            status, headers, payload = 504, {}, b"late"
        elif outage == "html":
            status, headers, payload = 200, {"Content-Type": "text/html"}, \
                b"<html><body>Wartungsarbeiten</body></html>"
        elif isinstance(outage, int):
            status, headers, payload = outage, {"Content-Type": "text/plain"}, \
                b"Service Unavailable"
        else:
            status, headers, payload = fake.route(req)
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer


Response = tuple[int, dict[str, str], bytes]


def _json(status: int, doc: Any) -> Response:
    return status, {"Content-Type": "application/json"}, json.dumps(doc).encode()


def _html(page: str) -> Response:
    return 200, {"Content-Type": "text/html; charset=utf-8"}, page.encode()


class FakeServer:
    """A threaded HTTP server on a free loopback port; `route` answers."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.outages: dict[str, int | str] = {}
        self.hang_seconds = 3.0
        self.before: Callable[[Request], None] | None = None
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def route(self, req: Request) -> Response:
        raise NotImplementedError

    def calls(self, path_part: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if path_part in r.path]

    def bearer(self, req: Request) -> str | None:
        auth = req.headers.get("authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None


# ---------------------------------------------------------------------------- Wiener Netze


@dataclass
class Meter:
    """One Zählpunkt: quarter-hour values per role family, keyed by UTC interval start.

    A value of None is "not yet available" (the portal's null); `estimated` holds starts the
    portal flags `geschaetzt`.
    """

    customer: str
    consumption: dict[int, float | None] = field(default_factory=dict)
    feedin: dict[int, float | None] = field(default_factory=dict)
    estimated: set[int] = field(default_factory=set)
    einheit: str = "KWH"  # what bewegungsdaten reports (WH or KWH)
    typ: str = "STROM"


def _iso_z(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class FakeWienerNetze(FakeServer):
    """log.wien Keycloak (realm logwien), the smart-meter portal, its B2C API, the ALT API with
    `bewegungsdaten`, and the official client-credentials API, all on one port:

    login_url = base/auth/realms/logwien, portal_url = base/portal, b2c_url = base/b2c,
    alt_url = base/sm/api, api_url = base/api.
    """

    REALM = "/auth/realms/logwien"

    def __init__(self, *, username: str = "user@example.at", password: str = "s3cret pw",
                 api_client: tuple[str, str] = ("api-client", "api-secret"),
                 api_key: str = "gw-key-1", access_ttl: int = 300) -> None:
        super().__init__()
        self.username, self.password = username, password
        self.api_client = api_client
        self.api_key = api_key  # official API gateway key
        self.b2c_key = "b2c-key-" + secrets.token_hex(4)
        self.access_ttl = access_ttl
        self.meters: dict[str, Meter] = {}
        self._sessions: dict[str, dict[str, str]] = {}
        self._codes: dict[str, dict[str, str]] = {}
        self._access: dict[str, float] = {}  # token -> expiry
        self._refresh: set[str] = set()
        self.failed_logins = 0
        # app-config.json may move the B2C API (b2cApiUrl); the old path then answers 404
        self.b2c_moved: bool = False
        # days (the UTC date of zeitpunktVon) answered with `values: null` (an outage)
        self.null_days: set[date] = set()

    @property
    def urls(self) -> dict[str, str]:
        b = self.base_url
        return {"login_url": b + self.REALM, "portal_url": b + "/portal", "b2c_url": b + "/b2c",
                "alt_url": b + "/sm/api", "api_url": b + "/api"}

    def expire_access_tokens(self) -> None:
        """Every access token handed out so far is now expired (401 on use)."""
        with self.lock:
            self._access.clear()

    def expire_refresh_tokens(self) -> None:
        """Every refresh token handed out so far is refused (the client must log in again)."""
        with self.lock:
            self._refresh.clear()

    def _issue(self, refresh: bool = True) -> dict[str, Any]:
        access = secrets.token_urlsafe(24)
        with self.lock:
            self._access[access] = time.monotonic() + self.access_ttl
        answer: dict[str, Any] = {"access_token": access, "expires_in": self.access_ttl,
                                  "token_type": "Bearer", "scope": "openid"}
        if refresh:
            rt = secrets.token_urlsafe(24)
            self._refresh.add(rt)
            answer |= {"refresh_token": rt, "refresh_expires_in": 1800}
        return answer

    def _authorized(self, req: Request) -> bool:
        token = self.bearer(req)
        with self.lock:
            return token is not None and self._access.get(token, 0) > time.monotonic()

    # -- routes ----------------------------------------------------------------------------

    def route(self, req: Request) -> Response:
        p = req.path
        oidc = self.REALM + "/protocol/openid-connect"
        if p == oidc + "/auth" and req.method == "GET":
            return self._auth(req)
        if p == self.REALM + "/login-actions/authenticate" and req.method == "POST":
            return self._authenticate(req)
        if p == oidc + "/token" and req.method == "POST":
            return self._token(req)
        if p == "/portal/assets/app-config.json":
            if not self._authorized(req):
                return _json(401, {"error": "unauthorized"})
            config = {"b2cApiKey": self.b2c_key, "b2bApiKey": "b2b-key"}
            if self.b2c_moved:
                config["b2cApiUrl"] = self.base_url + "/b2c-v2/"
            return _json(200, config)
        if p == ("/b2c-v2/zaehlpunkte" if self.b2c_moved else "/b2c/zaehlpunkte"):
            if not self._authorized(req):
                return _json(401, {"error": "unauthorized"})
            if req.headers.get("x-gateway-apikey") != self.b2c_key:
                return _json(403, {"error": "API key missing or wrong"})
            return _json(200, self._contracts())
        if p == "/sm/api/user/messwerte/bewegungsdaten":
            if not self._authorized(req):
                return _json(401, {"error": "unauthorized"})
            if "application/json" not in req.headers.get("accept", ""):
                return 406, {"Content-Type": "text/plain"}, b"Not Acceptable"
            return self._bewegungsdaten(req)
        m = re.fullmatch(r"/api/zaehlpunkte/([^/]+)/messwerte", p)
        if m:
            return self._messwerte(req, m.group(1))
        return _json(404, {"error": f"no route {p}"})

    def _login_page(self, session: str, step: str, error: str = "") -> Response:
        action = (f"{self.base_url}{self.REALM}/login-actions/authenticate?"
                  f"session_code={session}&amp;execution={step}&amp;client_id=wn-smartmeter"
                  f"&amp;tab_id=x1")
        fields = ('<input name="username"><input type="submit" name="login" value=" ">'
                  if step == "user" else
                  '<input type="hidden" name="username"><input name="password" type="password">')
        return _html(f'<html><body>{error}<form id="kc-form-login" method="post" '
                     f'action="{action}">{fields}</form></body></html>')

    def _auth(self, req: Request) -> Response:
        q = req.query
        if q.get("client_id") != "wn-smartmeter" or q.get("response_type") != "code":
            return _html("<html>Invalid parameter: client_id or response_type</html>")
        if not q.get("redirect_uri", "").startswith(("http://", "https://")) or \
                "openid" not in q.get("scope", "").split() or \
                q.get("response_mode") != "fragment":
            return _html("<html>Invalid parameter: redirect_uri, scope or response_mode</html>")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return _html("<html>Missing parameter: code_challenge_method</html>")  # PKCE
        session = secrets.token_urlsafe(8)
        cookie = secrets.token_urlsafe(12)
        self._sessions[session] = {"challenge": q["code_challenge"],
                                   "redirect_uri": q.get("redirect_uri", ""), "user": "",
                                   "cookie": cookie}
        status, headers, body = self._login_page(session, "user")
        # Keycloak binds the login-action POSTs to the browser session of the auth GET
        headers = {**headers, "Set-Cookie": f"AUTH_SESSION_ID={cookie}; Path={self.REALM}/; "
                   "HttpOnly"}
        return status, headers, body

    def _authenticate(self, req: Request) -> Response:
        session = req.query.get("session_code", "")
        state = self._sessions.get(session)
        if state is None:
            return _html("<html>Your login attempt timed out.</html>")
        if f"AUTH_SESSION_ID={state['cookie']}" not in req.headers.get("cookie", ""):
            return _html("<html>Cookie not found. Please make sure cookies are enabled in your "
                         "browser.</html>")
        if req.query.get("execution") == "user":
            state["user"] = req.form.get("username", "")
            return self._login_page(session, "password")
        if (req.form.get("username") != self.username or state["user"] != self.username
                or req.form.get("password") != self.password):
            self.failed_logins += 1
            return self._login_page(session, "password", "Invalid username or password.")
        code = secrets.token_urlsafe(16)
        self._codes[code] = state
        del self._sessions[session]
        location = (f"{state['redirect_uri']}#session_state={secrets.token_hex(8)}"
                    f"&iss={self.base_url}{self.REALM}&code={code}")
        return 302, {"Location": location}, b""

    def _token(self, req: Request) -> Response:
        f = req.form
        grant = f.get("grant_type")
        if grant == "authorization_code":
            state = self._codes.pop(f.get("code", ""), None)
            if state is None or f.get("client_id") != "wn-smartmeter" or \
                    f.get("redirect_uri") != state["redirect_uri"]:
                return _json(400, {"error": "invalid_grant", "error_description": "Code not "
                                   "valid"})
            digest = hashlib.sha256(f.get("code_verifier", "").encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != state["challenge"]:
                return _json(400, {"error": "invalid_grant",
                                   "error_description": "PKCE verification failed"})
            return _json(200, self._issue())
        if grant == "refresh_token":
            rt = f.get("refresh_token", "")
            if rt not in self._refresh or f.get("client_id") != "wn-smartmeter":
                return _json(400, {"error": "invalid_grant",
                                   "error_description": "Invalid refresh token"})
            self._refresh.discard(rt)
            return _json(200, self._issue())
        if grant == "client_credentials":
            if (f.get("client_id"), f.get("client_secret")) != self.api_client:
                return _json(401, {"error": "unauthorized_client",
                                   "error_description": "Invalid client secret"})
            return _json(200, self._issue(refresh=False))
        return _json(400, {"error": "unsupported_grant_type"})

    def _contracts(self) -> list[dict[str, Any]]:
        by_customer: dict[str, list[dict[str, Any]]] = {}
        for zp, meter in self.meters.items():
            by_customer.setdefault(meter.customer, []).append({
                "zaehlpunktnummer": zp, "equipmentNumber": "1" + zp[-8:],
                "anlage": {"typ": meter.typ},
                "idexStatus": {"granularity": {"status": "QUARTER_HOUR"}}})
        return [{"geschaeftspartner": c, "zaehlpunkte": zps} for c, zps in by_customer.items()]

    def _bewegungsdaten(self, req: Request) -> Response:
        q = req.query
        pattern_von = r"\d{4}-\d\d-\d\dT\d\d:\d\d:00\.000Z"
        pattern_bis = r"\d{4}-\d\d-\d\dT23:59:59\.999Z"
        if not (re.fullmatch(pattern_von, q.get("zeitpunktVon", ""))
                and re.fullmatch(pattern_bis, q.get("zeitpunktBis", ""))
                and q.get("aggregat") == "NONE"):
            return _json(400, {"error": "bad zeitpunktVon/zeitpunktBis/aggregat"})
        meter = self.meters.get(q.get("zaehlpunktnummer", ""))
        if meter is None or meter.customer != q.get("geschaeftspartner"):
            return _json(404, {"error": "Zählpunkt not found for this Geschäftspartner"})
        role = q.get("rolle", "")
        if role not in ("V001", "V002", "E001", "E002"):
            return _json(400, {"error": f"unknown rolle {role}"})
        von = datetime.fromisoformat(q["zeitpunktVon"].replace("Z", "+00:00")).timestamp()
        bis = datetime.fromisoformat(q["zeitpunktBis"].replace("Z", "+00:00")).timestamp()
        data = meter.consumption if role.startswith("V") else meter.feedin
        scale = 1000.0 if meter.einheit == "WH" else 1.0
        if datetime.fromtimestamp(von, UTC).date() in self.null_days:  # an outage
            return _json(200, {"descriptor": {"zaehlpunktnummer": q["zaehlpunktnummer"],
                                              "rolle": role, "aggregat": "NONE",
                                              "einheit": meter.einheit}, "values": None})
        values: list[dict[str, Any]] = []
        if role.endswith("2"):
            for t in sorted(data):
                if von <= t <= bis:
                    v = data[t]
                    values.append({"wert": None if v is None else round(v * scale, 6),
                                   "zeitpunktVon": _iso_z(t), "zeitpunktBis": _iso_z(t + QUARTER),
                                   "geschaetzt": t in meter.estimated})
        else:
            for day_start, day_end, quarters in _local_days(data, VIENNA):
                if von <= day_start <= bis:
                    vals = [data[t] for t in quarters]
                    complete = len(vals) == (day_end - day_start) // QUARTER and None not in vals
                    values.append({
                        "wert": round(sum(vals) * scale, 6) if complete else None,  # type: ignore[arg-type]
                        "zeitpunktVon": _iso_z(day_start), "zeitpunktBis": _iso_z(day_end),
                        "geschaetzt": any(t in meter.estimated for t in quarters)})
        return _json(200, {
            "descriptor": {"geschaeftspartnernummer": meter.customer,
                           "zaehlpunktnummer": q["zaehlpunktnummer"], "rolle": role,
                           "aggregat": "NONE", "granularitaet": "QH" if role.endswith("2")
                           else "D", "einheit": meter.einheit},
            "values": values})

    def _messwerte(self, req: Request, zp: str) -> Response:
        if not self._authorized(req):
            return _json(401, {"error": "unauthorized"})
        if req.headers.get("x-gateway-apikey") != self.api_key:
            return _json(401, {"error": "invalid API key"})
        meter = self.meters.get(zp)
        if meter is None:
            return _json(404, {"error": "Zählpunkt not found"})
        q = req.query
        try:
            von = date.fromisoformat(q["datumVon"])
            bis = date.fromisoformat(q["datumBis"])
        except (KeyError, ValueError):
            return _json(400, {"error": "datumVon/datumBis must be YYYY-MM-DD"})
        if q.get("wertetyp") != "QUARTER_HOUR":
            return _json(400, {"error": "only QUARTER_HOUR in this fake"})
        lo = datetime(von.year, von.month, von.day, tzinfo=UTC).timestamp()
        hi = datetime(bis.year, bis.month, bis.day, tzinfo=UTC).timestamp() + 86400
        werke = []
        for obis, data in (("1-1:1.9.0", meter.consumption), ("1-1:2.9.0", meter.feedin)):
            if not data:
                continue
            werke.append({"obisCode": obis, "einheit": "WH", "messwerte": [
                {"messwert": None if data[t] is None else round(data[t] * 1000),  # type: ignore[operator]
                 "zeitVon": _iso_z(t), "zeitBis": _iso_z(t + QUARTER),
                 "qualitaet": "EST" if t in meter.estimated else "VAL"}
                for t in sorted(data) if lo <= t < hi]})
        return _json(200, {"zaehlpunkt": zp, "zaehlwerke": werke})


def _local_days(data: dict[int, Any], tz: ZoneInfo) -> Iterator[tuple[int, int, list[int]]]:
    """(UTC start, UTC end, quarter starts) of each local day the data touches."""
    days: dict[date, list[int]] = {}
    for t in sorted(data):
        days.setdefault(datetime.fromtimestamp(t, tz).date(), []).append(t)
    for d, quarters in days.items():
        start = datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()
        nxt = d + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()
        yield int(start), int(end), quarters


# ------------------------------------------------------------------------------ WattiVahti


class FakeWattiVahti(FakeServer):
    """Azure AD B2C token endpoint with refresh-token rotation, and Frends' `meterdata2`.

    token_url = base/pesv.onmicrosoft.com/b2c_1_tunnistus_signinv2/oauth2/v2.0/token,
    api_url = base/api/onlineapi/v1. Times go out as naive Finnish local times, ordered by
    local wall clock (so the repeated autumn hour comes as pairs); answers whose number is in
    `wrong_z` carry a trailing Z on every time. PT15MIN answers nothing before `pt15_from`.
    `rotate`: True rotates on every refresh, False never, an int n every n-th refresh (B2C's
    answer "may be missing" the refresh token).
    """

    TOKEN_PATH = "/pesv.onmicrosoft.com/b2c_1_tunnistus_signinv2/oauth2/v2.0/token"
    API_PATH = "/api/onlineapi/v1/meterdata2"
    SCOPE = "https://pesv.onmicrosoft.com/salpa/customer.read openid profile offline_access"

    def __init__(self, *, client_id: str = "wv-client-id", metering_point: str = "1234567",
                 refresh_token: str = "rt-initial", rotate: bool | int = True,
                 access_ttl: int = 3600, naive_bounds: bool = False) -> None:
        super().__init__()
        self.client_id = client_id
        self.metering_point = metering_point
        self.valid_refresh = {refresh_token}
        self.rotate = rotate
        self.access_ttl = access_ttl
        self.issued_refresh: list[str] = []
        self.consumption: dict[int, float | None] = {}  # UTC quarter start -> kWh
        self.production: dict[int, float | None] = {}
        self.pt15_from: float = 0.0
        # UTC [start, end) ranges PT15MIN answers nothing for (PT1H still does): gaps in the
        # middle or at the end of an answer
        self.pt15_gaps: list[tuple[float, float]] = []
        self.wrong_z: set[int] = set()  # 1-based numbers of meterdata2 answers with a 'Z'
        self._answers = 0
        self._access: dict[str, float] = {}
        self.refresh_seen: list[str] = []
        self.token_calls = 0
        # Read start/stop as naive local times, ignoring any offset (the first occurrence of
        # a repeated time), as an API that only knows Finnish wall clock would.
        self.naive_bounds = naive_bounds

    @property
    def urls(self) -> dict[str, str]:
        return {"token_url": self.base_url + self.TOKEN_PATH,
                "api_url": self.base_url + "/api/onlineapi/v1"}

    def expire_access_tokens(self) -> None:
        with self.lock:
            self._access.clear()

    def route(self, req: Request) -> Response:
        if req.path == self.TOKEN_PATH and req.method == "POST":
            return self._token(req)
        if req.path == self.API_PATH and req.method == "GET":
            token = self.bearer(req)
            with self.lock:
                ok = token is not None and self._access.get(token, 0) > time.monotonic()
            if not ok:
                return 401, {"Content-Type": "text/plain"}, b"Unauthorized"
            return self._meterdata(req)
        return _json(404, {"error": "not found"})

    def _token(self, req: Request) -> Response:
        f = req.form
        if f.get("client_id") != self.client_id or f.get("grant_type") != "refresh_token" or \
                f.get("scope") != self.SCOPE:
            return _json(400, {"error": "invalid_request",
                               "error_description": "AADB2C90117: The scope or client is wrong"})
        rt = f.get("refresh_token", "")
        with self.lock:
            self.token_calls += 1
            number = self.token_calls
        self.refresh_seen.append(rt)
        if rt not in self.valid_refresh:
            return _json(400, {"error": "invalid_grant", "error_description":
                               "AADB2C90080: The provided grant has expired."})
        access = secrets.token_urlsafe(24)
        with self.lock:
            self._access[access] = time.monotonic() + self.access_ttl
        answer: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                  "expires_in": self.access_ttl}
        rotate = self.rotate if isinstance(self.rotate, bool) else number % self.rotate == 0
        if rotate:
            new = "rt-" + secrets.token_urlsafe(16)
            self.valid_refresh = {new}  # the used one is spent
            self.issued_refresh.append(new)
            answer["refresh_token"] = new
        return _json(200, answer)

    def _meterdata(self, req: Request) -> Response:
        q = req.query
        if q.get("meteringPointCode") != self.metering_point:
            return 500, {"Content-Type": "text/plain"}, b"Unknown metering point"
        data = {"1": self.consumption, "6": self.production}.get(q.get("measurementType", ""))
        step = {"PT15MIN": QUARTER, "PT1H": 3600}.get(q.get("resultStep", ""))
        if data is None or step is None:
            return 400, {"Content-Type": "text/plain"}, b"Bad measurementType or resultStep"
        try:
            bounds = [datetime.fromisoformat(q["start"]), datetime.fromisoformat(q["stop"])]
            if self.naive_bounds:
                bounds = [b.replace(tzinfo=HELSINKI, fold=0) for b in bounds]
            lo, hi = (b.timestamp() for b in bounds)
        except (KeyError, ValueError):
            return 400, {"Content-Type": "text/plain"}, b"Bad start/stop"
        with self.lock:
            self._answers += 1
            number = self._answers
        rows: list[tuple[datetime, float | None]] = []
        if step == QUARTER:
            lo_q = max(lo, self.pt15_from)
            rows = [(datetime.fromtimestamp(t, HELSINKI), v) for t, v in data.items()
                    if lo_q <= t < hi and not any(a <= t < b for a, b in self.pt15_gaps)]
        else:
            hours: dict[int, list[float | None]] = {}
            for t, v in data.items():
                if lo <= t < hi:
                    hours.setdefault(t - t % 3600, []).append(v)
            for h, vals in hours.items():
                known = [v for v in vals if v is not None]
                rows.append((datetime.fromtimestamp(h, HELSINKI),
                             round(sum(known), 6) if known else None))
        # local wall-clock order: the repeated hour's two 03:15s sit side by side (pairs)
        rows.sort(key=lambda r: (r[0].replace(tzinfo=None), r[0].fold))
        z = "Z" if number in self.wrong_z else ""
        tsv = [{"quantity": v, "time": d.strftime("%Y-%m-%dT%H:%M:%S") + z, "unit": "kWh"}
               for d, v in rows]
        resolution = "PT15MIN" if step == QUARTER else "PT1H"
        total = round(sum(v for _, v in rows if v is not None), 6)
        start_text = datetime.fromtimestamp(lo, HELSINKI).strftime("%Y-%m-%dT%H:%M:%S")
        stop_text = datetime.fromtimestamp(hi, HELSINKI).strftime("%Y-%m-%dT%H:%M:%S")
        return _json(200, {"getconsumptionsresult": {"consumptiondata": {
            "meteringpointcode": self.metering_point,
            "sum": {"quantity": total, "start": start_text, "stop": stop_text, "unit": "kWh"},
            "timeseries": {"start": start_text, "stop": stop_text, "resolution": resolution,
                           "values": {"tsv": tsv}}}}})
