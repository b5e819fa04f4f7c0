"""The utility portals (Wiener Netze Smart Meter, WattiVahti) as sources, against local servers
that speak their documented APIs (tests/fake_portals.py), and end to end into a real Home
Assistant 2024.3.3 judged by its own `recorder/statistics_during_period`.

Why these cases: each is a way the systems backdate replaces failed (reference/seed-systems.md):
login flows that changed (two-step form, PKCE), tokens that expire or rotate and get lost on a
crash, WH taken for kWh, `null` taken for 0, the 15-minute series missing for old ranges, the
repeated autumn hour merged, a wrong `Z`, and mock data invented when a call failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from fake_portals import HELSINKI, QUARTER, FakeWattiVahti, FakeWienerNetze, Meter, Request
from ha_harness import REPO_ROOT, HomeAssistant
from hypothesis import given, settings
from hypothesis import strategies as st

from backdate.errors import InputError, RefusedError, TargetError
from backdate.hass.client import statistics_during_period_sync
from backdate.sources.base import SourceRange, open_source
from backdate.sources.files import read_file
from backdate.sources.wattivahti import _LocalClock, parse_meterdata2
from backdate.sources.wnsm import Readings

ZP = "AT0010000000000000001000000012345"
ZP_ID = ZP.lower()
MP = "1234567"
FIXTURES = Path(os.environ.get("BACKDATE_HA_DB_FIXTURES",
                               REPO_ROOT.parent / "shared" / "fixtures" / "ha-db"))
BACKDATE = str(REPO_ROOT / ".venv" / "bin" / "backdate")


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def quarters(start: float, count: int, seed: int, *, nulls: int = 0,
             ) -> dict[int, float | None]:
    """Random quarter-hour kWh values (3 decimals) with a few nulls (not yet available)."""
    rng = np.random.default_rng(seed)
    out: dict[int, float | None] = {int(start) + QUARTER * k: round(float(v), 3)
                                    for k, v in enumerate(rng.uniform(0.0, 0.5, count))}
    for k in rng.choice(count, nulls, replace=False):
        out[int(start) + QUARTER * int(k)] = None
    return out


def known(data: dict[int, float | None], lo: float = -1e18, hi: float = 1e18
          ) -> tuple[np.ndarray, np.ndarray]:
    """The readings a correct source yields: the non-null ones in [lo, hi), in time order."""
    items = sorted((t, v) for t, v in data.items() if v is not None and lo <= t < hi)
    return (np.array([t for t, _ in items], dtype=float),
            np.array([v for _, v in items], dtype=float))


def hourly(data: dict[int, float | None]) -> dict[int, float]:
    """kWh per UTC hour (what HA's hourly `change` must show)."""
    out: dict[int, float] = {}
    for t, v in data.items():
        if v is not None:
            out[t - t % 3600] = out.get(t - t % 3600, 0.0) + v
    return out


def spec_query(urls: dict[str, str], **more: str) -> str:
    return "&".join(f"{k}={v}" for k, v in {**urls, **more}.items())


def run_backdate(*args: object, env: dict[str, str], expect: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([BACKDATE, *(str(a) for a in args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1",
                                            **env}, check=False)
    assert proc.returncode == expect, (
        f"exit {proc.returncode}, expected {expect}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def recorder_db(tmp_path: Path) -> Path:
    """A copy of a recorder database HA 2024.3.3 made (for the no-write checks)."""
    dest = tmp_path / "home-assistant_v2.db"
    shutil.copyfile(FIXTURES / "sqlite-ha2024.3.3-schema42.db", dest)
    return dest


# =================================================================== Wiener Netze: portal


@pytest.fixture
def wn(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWienerNetze]:
    fake = FakeWienerNetze(username="anna@example.at", password="pw with spaces & more")
    meter = Meter("1200345678")
    t0 = utc(2024, 10, 25)
    meter.consumption = quarters(t0, 96 * 4, 1, nulls=3)
    meter.feedin = quarters(t0, 96 * 4, 2)
    meter.estimated = {int(t0) + QUARTER * k for k in (10, 11, 200)}
    fake.meters[ZP] = meter
    monkeypatch.setenv("WNSM_USERNAME", fake.username)
    monkeypatch.setenv("WNSM_PASSWORD", fake.password)
    with fake:
        yield fake


def wnsm_spec(fake: FakeWienerNetze, **params: str) -> str:
    return f"wnsm:{ZP}?{spec_query(fake.urls, **params)}"


def read(spec: str, lo: float, hi: float) -> tuple[Any, list[Any]]:
    source = open_source(spec)
    try:
        return source, source.read(SourceRange(lo, hi))
    finally:
        source.close()


def test_wnsm_login_pkce_two_step_form_and_values(wn: FakeWienerNetze,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lo, hi = utc(2024, 10, 25, 6), utc(2024, 10, 28, 12)
    source, out = read(wnsm_spec(wn, chunk_days="2"), lo, hi)
    (series,) = out
    times, values = known(wn.meters[ZP].consumption, lo, hi)
    np.testing.assert_array_equal(series.times, times)
    np.testing.assert_allclose(series.values, values, atol=1e-12)
    np.testing.assert_array_equal(series.ends, times + QUARTER)
    assert series.statistic_id == f"backdate:wnsm_{ZP_ID}_consumption"
    assert series.unit == "kWh" and series.kind == "delta"
    # nulls are left out (never zero) and reported
    nulls = [t for t, v in wn.meters[ZP].consumption.items() if v is None and lo <= t < hi]
    assert nulls and not set(nulls) & set(series.times.tolist())
    assert any(f"{len(nulls)} value(s) not yet available" in n for n in source.notes)
    flagged = [t for t in wn.meters[ZP].estimated
               if lo <= t < hi and wn.meters[ZP].consumption[t] is not None]
    assert any(f"{len(flagged)} estimated value(s)" in n for n in source.notes)
    np.testing.assert_array_equal(series.times[source.estimated[series.statistic_id]],
                                  sorted(flagged))

    auth = wn.calls("/openid-connect/auth")[0].query
    assert auth["code_challenge_method"] == "S256" and auth["response_type"] == "code"
    assert auth["response_mode"] == "fragment" and auth["redirect_uri"].endswith("/portal/")
    forms = [r.form for r in wn.calls("/login-actions/authenticate")]
    assert forms[0] == {"username": wn.username, "login": " "}
    assert forms[1] == {"username": wn.username, "password": wn.password}
    token = wn.calls("/openid-connect/token")[0].form
    digest = hashlib.sha256(token["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == auth["code_challenge"]
    moves = wn.calls("bewegungsdaten")
    assert len(moves) == 2  # two 2-day chunks
    assert {r.query["rolle"] for r in moves} == {"V002"}
    assert all(r.query["geschaeftspartner"] == "1200345678" for r in moves)
    assert moves[0].query["zeitpunktVon"] == "2024-10-25T06:00:00.000Z"
    assert wn.calls("/b2c/zaehlpunkte")[0].headers["x-gateway-apikey"] == wn.b2c_key
    text = caplog.text + source.url + " ".join(source.notes)
    assert wn.password not in text and "pw with" not in text


def test_wnsm_wh_and_kwh_give_the_same_energy(wn: FakeWienerNetze) -> None:
    lo, hi = utc(2024, 10, 25), utc(2024, 10, 29)
    _, (kwh,) = read(wnsm_spec(wn), lo, hi)
    wn.meters[ZP].einheit = "WH"
    _, (wh,) = read(wnsm_spec(wn), lo, hi)
    assert wn.calls("bewegungsdaten")[-1].query["rolle"] == "V002"
    np.testing.assert_array_equal(kwh.times, wh.times)
    np.testing.assert_allclose(wh.values, kwh.values, rtol=1e-12)
    assert wh.unit == "kWh"


def test_wnsm_feed_in_roles_and_daily_resolution(wn: FakeWienerNetze) -> None:
    lo, hi = utc(2024, 10, 25), utc(2024, 10, 29)
    _, out = read(wnsm_spec(wn, direction="both", statistic_id="backdate:home"), lo, hi)
    assert [s.statistic_id for s in out] == ["backdate:home_consumption", "backdate:home_feedin"]
    t, v = known(wn.meters[ZP].feedin, lo, hi)
    np.testing.assert_allclose(out[1].values, v)
    assert {r.query["rolle"] for r in wn.calls("bewegungsdaten")} == {"V002", "E002"}
    _, (daily,) = read(wnsm_spec(wn, direction="feedin", resolution="day"), lo, hi)
    assert wn.calls("bewegungsdaten")[-1].query["rolle"] == "E001"
    # the fake's Vienna days: each daily value is the sum of its quarters
    assert len(daily) >= 3
    assert (daily.ends - daily.times).max() == 25 * 3600  # 27 October has 25 hours
    assert float(daily.values.sum()) == pytest.approx(
        sum(val for tt, val in zip(t, v, strict=True)
            if daily.times[0] <= tt < daily.ends[-1]), abs=1e-6)


def test_wnsm_refreshes_an_expired_access_token(wn: FakeWienerNetze) -> None:
    seen: list[int] = []

    def expire_on_second(req: Request) -> None:
        if req.path.endswith("bewegungsdaten"):
            seen.append(1)
            if len(seen) == 2:
                wn.expire_access_tokens()

    wn.before = expire_on_second
    lo, hi = utc(2024, 10, 25), utc(2024, 10, 29)
    _, (series,) = read(wnsm_spec(wn, chunk_days="1"), lo, hi)
    np.testing.assert_array_equal(series.times, known(wn.meters[ZP].consumption, lo, hi)[0])
    grants = [r.form["grant_type"] for r in wn.calls("/openid-connect/token")]
    assert grants == ["authorization_code", "refresh_token"]  # refreshed, not a new login
    assert len(wn.calls("/openid-connect/auth")) == 1

    # The refresh token has expired as well: a new login, and still every value.
    seen.clear()

    def expire_everything(req: Request) -> None:
        if req.path.endswith("bewegungsdaten"):
            seen.append(1)
            if len(seen) == 2:
                wn.expire_access_tokens()
                wn.expire_refresh_tokens()

    wn.before = expire_everything
    _, (again,) = read(wnsm_spec(wn, chunk_days="1"), lo, hi)
    np.testing.assert_array_equal(again.times, series.times)
    grants = [r.form["grant_type"] for r in wn.calls("/openid-connect/token")][2:]
    assert grants == ["authorization_code", "refresh_token", "authorization_code"]


def test_wnsm_official_api_client_credentials(wn: FakeWienerNetze,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WNSM_CLIENT_ID", "api-client")
    monkeypatch.setenv("WNSM_CLIENT_SECRET", "api-secret")
    monkeypatch.setenv("WNSM_API_KEY", wn.api_key)
    lo, hi = utc(2024, 10, 25), utc(2024, 10, 29)
    source, out = read(wnsm_spec(wn, auth="api", direction="both"), lo, hi)
    _, portal = read(wnsm_spec(wn, direction="both"), lo, hi)
    for a, b in zip(out, portal, strict=True):
        np.testing.assert_array_equal(a.times, b.times)
        np.testing.assert_allclose(a.values, b.values, atol=1e-9)
    call = wn.calls("/api/zaehlpunkte/")[0]
    assert call.headers["x-gateway-apikey"] == wn.api_key
    assert call.query["wertetyp"] == "QUARTER_HOUR" and call.query["datumVon"] == "2024-10-25"
    assert wn.calls("/openid-connect/token")[0].form["grant_type"] == "client_credentials"
    assert int(source.estimated[out[0].statistic_id].sum()) == 3  # qualitaet != VAL
    monkeypatch.setenv("WNSM_CLIENT_SECRET", "wrong")
    with pytest.raises(TargetError, match="HTTP 401") as err:
        read(wnsm_spec(wn, auth="api"), lo, hi)
    assert "wrong" not in str(err.value)


@pytest.mark.parametrize("outage, message", [
    (503, "HTTP 503"), (500, "HTTP 500"), ("timeout", "timeout"), ("html", "not JSON")])
def test_wnsm_outage_is_exit_3_and_writes_nothing(wn: FakeWienerNetze, recorder_db: Path,
                                                  outage: int | str, message: str) -> None:
    wn.outages["bewegungsdaten"] = outage
    wn.hang_seconds = 3
    before = recorder_db.read_bytes()
    proc = run_backdate("import", wnsm_spec(wn, timeout="1"), "--to",
                        f"sqlite:///{recorder_db}", "--start", "2024-10-25", "--end",
                        "2024-10-27", "--yes", "--no-backup", env={}, expect=3)
    out = proc.stdout + proc.stderr
    assert message in out and wn.password not in out
    assert recorder_db.read_bytes() == before


def test_wnsm_wrong_password_is_exit_1_without_the_password(wn: FakeWienerNetze,
                                                            recorder_db: Path) -> None:
    proc = run_backdate("plan", wnsm_spec(wn), "--to", f"sqlite:///{recorder_db}",
                        "--start", "2024-10-25", "--end", "2024-10-26",
                        env={"WNSM_PASSWORD": "not-the-password"}, expect=1)
    out = proc.stdout + proc.stderr
    assert "WNSM_PASSWORD" in out and "not-the-password" not in out
    assert "Traceback" not in out and wn.failed_logins == 1


def test_wnsm_refused_login_is_never_retried_in_a_process(wn: FakeWienerNetze,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """log.wien shows a CAPTCHA after a failed login (#316): a daemon must not try the same
    password every interval; a changed password is tried."""
    monkeypatch.setenv("WNSM_PASSWORD", "wrong-one")
    lo, hi = utc(2024, 10, 25), utc(2024, 10, 26)
    for _ in range(3):
        with pytest.raises(RefusedError, match="WNSM_PASSWORD") as err:
            read(wnsm_spec(wn), lo, hi)
        assert err.value.exit_code == 1 and "wrong-one" not in str(err.value)
    assert wn.failed_logins == 1
    assert len(wn.calls("/login-actions/authenticate")) == 2  # user name, then password once
    monkeypatch.setenv("WNSM_PASSWORD", wn.password)
    _, (series,) = read(wnsm_spec(wn), lo, hi)
    assert len(series) > 90


def test_wnsm_password_from_a_file_and_unknown_zaehlpunkt(wn: FakeWienerNetze,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.delenv("WNSM_PASSWORD")
    secret_file = tmp_path / "pw"
    secret_file.write_text(wn.password + "\n")
    monkeypatch.setenv("WNSM_PASSWORD_FILE", str(secret_file))
    _, (series,) = read(wnsm_spec(wn), utc(2024, 10, 25), utc(2024, 10, 26))
    assert len(series) > 90
    with pytest.raises(InputError, match=f"not in this account; it holds {ZP}"):
        read(wnsm_spec(wn).replace(ZP, "AT0010000000000000001000000099999"),
             utc(2024, 10, 25), utc(2024, 10, 26))


def test_bewegungsdaten_file_is_read_like_the_api(wn: FakeWienerNetze, tmp_path: Path) -> None:
    """PRODUCT.md: `import` reads a saved bewegungsdaten answer as a file."""
    lo, hi = utc(2024, 10, 25), utc(2024, 10, 28)
    wn.meters[ZP].einheit = "WH"
    _, (series,) = read(wnsm_spec(wn, chunk_days="10"), lo, hi)
    path = tmp_path / "bewegungsdaten.json"
    answer = wn.calls("bewegungsdaten")[0]
    import httpx

    doc = httpx.get(wn.base_url + answer.path, params=answer.query,
                    headers={"Authorization": answer.headers["authorization"],
                             "Accept": "application/json"}).json()
    path.write_text(json.dumps(doc, indent=2))
    (from_file,) = read_file(path)
    keep = (from_file.times >= lo) & (from_file.times < hi)
    np.testing.assert_array_equal(from_file.times[keep], series.times)
    np.testing.assert_allclose(from_file.values[keep], series.values, atol=1e-12)
    # positions are the file's lines: each value object starts on its own line
    lines = path.read_text().splitlines()
    first = int(from_file.lines[0])
    assert lines[first - 1].strip() == "{" and '"wert"' in lines[first]


# ======================================================================= WattiVahti


@pytest.fixture
def wv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeWattiVahti]:
    fake = FakeWattiVahti(metering_point=MP, refresh_token="rt-first")
    # both Finnish DST days of 2024 (31 March 03:00 -> 04:00, 27 October 04:00 -> 03:00)
    spring, autumn = utc(2024, 3, 30), utc(2024, 10, 26)
    fake.consumption = quarters(spring, 96 * 3, 3, nulls=2) | quarters(autumn, 96 * 3, 4)
    fake.production = quarters(autumn, 96 * 3, 5)
    monkeypatch.setenv("WATTIVAHTI_CLIENT_ID", fake.client_id)
    token_file = tmp_path / "refresh_token.txt"
    token_file.write_text("rt-first\n")
    monkeypatch.setenv("REFRESH_TOKEN_FILE", str(token_file))
    with fake:
        yield fake


def wv_spec(fake: FakeWattiVahti, **params: str) -> str:
    return f"wattivahti:{MP}?{spec_query(fake.urls, **params)}"


def test_wattivahti_dst_days_both_directions_and_wrong_z(wv: FakeWattiVahti) -> None:
    wv.wrong_z = {1, 3}  # some answers carry a trailing Z on local times
    for lo, hi in ((utc(2024, 3, 30), utc(2024, 4, 2)), (utc(2024, 10, 26), utc(2024, 10, 29))):
        source, (series,) = read(wv_spec(wv, chunk_days="1"), lo, hi)
        times, values = known(wv.consumption, lo, hi)
        np.testing.assert_array_equal(series.times, times)
        np.testing.assert_allclose(series.values, values, atol=1e-12)
    # the autumn answer really holds the repeated hour as pairs of equal local times
    autumn = [r for r in wv.calls("meterdata2") if r.query["start"].startswith("2024-10-27")]
    assert autumn and autumn[0].query["resultStep"] == "PT15MIN"
    assert datetime.fromisoformat(autumn[0].query["start"]).utcoffset().total_seconds() == 3 * 3600


def test_wattivahti_repeated_hour_pairs_parse_in_order() -> None:
    def doc(times: list[str]) -> dict[str, Any]:
        return {"getconsumptionsresult": {"consumptiondata": {"timeseries": {
            "resolution": "PT15MIN", "values": {"tsv": [
                {"quantity": 0.1 * (k + 1), "time": t} for k, t in enumerate(times)]}}}}}

    into = Readings()
    pairs = ["2024-10-27T03:00:00", "2024-10-27T03:00:00", "2024-10-27T03:15:00",
             "2024-10-27T03:15:00Z"]
    parse_meterdata2(doc(pairs), "answer", into)
    first = datetime(2024, 10, 27, 3, 0, tzinfo=HELSINKI).timestamp()  # EEST, UTC 00:00
    assert into.starts == [first, first + 3600, first + 900, first + 3600 + 900]
    with pytest.raises(InputError, match="does not exist in Finland") as err:
        parse_meterdata2(doc(["2024-03-31T03:15:00"]), "answer", Readings())
    assert err.value.line == 1
    with pytest.raises(InputError, match="more than twice"):
        parse_meterdata2(doc(["2024-10-27T03:00:00"] * 3), "answer", Readings())


@settings(max_examples=150, deadline=None)
@given(day=st.sampled_from([(2024, 3, 30), (2024, 10, 26), (2025, 10, 25)]),
       offset=st.integers(0, 200), count=st.integers(1, 300), pairs=st.booleans(),
       wrong_z=st.booleans())
def test_local_times_round_trip_over_dst_days(day: tuple[int, int, int], offset: int,
                                              count: int, pairs: bool, wrong_z: bool) -> None:
    """Any run of quarter hours across a Finnish DST day, written as WattiVahti writes it
    (naive local time, the repeated hour as pairs or in time order, with or without the wrong
    Z), reads back as the same UTC instants, from any start inside the range."""
    base = utc(*day) + QUARTER * offset
    times = [base + QUARTER * k for k in range(count)]
    local = [datetime.fromtimestamp(t, HELSINKI) for t in times]
    order = (sorted(range(count), key=lambda i: (local[i].replace(tzinfo=None), local[i].fold))
             if pairs else list(range(count)))
    texts = [local[i].strftime("%Y-%m-%dT%H:%M:%S") + ("Z" if wrong_z else "") for i in order]
    clock = _LocalClock(not_before=base)
    clock.count_all(texts)  # as parse_meterdata2 does: pairs are known over the whole answer
    got = [clock.epoch(text, "answer", k + 1) for k, text in enumerate(texts)]
    assert got == [times[i] for i in order]


def test_wattivahti_token_rotation_written_0600_before_use(wv: FakeWattiVahti) -> None:
    token_file = Path(os.environ["REFRESH_TOKEN_FILE"])
    token_file.chmod(0o644)
    on_disk: list[tuple[str, int]] = []

    def look(req: Request) -> None:
        if req.path.endswith("meterdata2"):
            on_disk.append((token_file.read_text().strip(),
                            stat.S_IMODE(token_file.stat().st_mode)))

    wv.before = look
    read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert wv.refresh_seen == ["rt-first"]
    assert on_disk and all(entry == (wv.issued_refresh[0], 0o600) for entry in on_disk)
    assert [p.name for p in token_file.parent.iterdir() if p.name.startswith(".")] == []
    # the next run uses the rotated token; the spent one would be refused
    read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert wv.refresh_seen == ["rt-first", wv.issued_refresh[0]]
    assert token_file.read_text().strip() == wv.issued_refresh[1]


def test_wattivahti_401_mid_run_refreshes_once(wv: FakeWattiVahti) -> None:
    count: list[int] = []

    def expire(req: Request) -> None:
        if req.path.endswith("meterdata2"):
            count.append(1)
            if len(count) == 2:
                wv.expire_access_tokens()

    wv.before = expire
    lo, hi = utc(2024, 10, 26), utc(2024, 10, 29)
    _, (series,) = read(wv_spec(wv, chunk_days="1"), lo, hi)
    np.testing.assert_array_equal(series.times, known(wv.consumption, lo, hi)[0])
    assert len(wv.refresh_seen) == 2  # the first token, then the rotated one after the 401
    assert Path(os.environ["REFRESH_TOKEN_FILE"]).read_text().strip() == wv.issued_refresh[-1]


def test_wattivahti_always_401_is_exit_3(wv: FakeWattiVahti, recorder_db: Path) -> None:
    wv.outages["meterdata2"] = 401
    before = recorder_db.read_bytes()
    proc = run_backdate("import", wv_spec(wv), "--to", f"sqlite:///{recorder_db}", "--start",
                        "2024-10-26", "--end", "2024-10-27", "--yes", "--no-backup", env={},
                        expect=3)
    assert "HTTP 401" in proc.stdout + proc.stderr
    assert recorder_db.read_bytes() == before
    # one refresh after the first 401, then give up: no retry storm against the portal
    assert len(wv.calls("meterdata2")) == 2 and wv.token_calls == 2


def test_wattivahti_missing_or_expired_token_file(wv: FakeWattiVahti, recorder_db: Path,
                                                  tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "token.txt"
    proc = run_backdate("plan", wv_spec(wv), "--to", f"sqlite:///{recorder_db}",
                        "--start", "2024-10-26", "--end", "2024-10-27",
                        env={"REFRESH_TOKEN_FILE": str(missing)}, expect=1)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "nowhere" in out and "token.txt" in out
    assert "refresh token" in out and "wattivahti.fi" in out
    wv.valid_refresh = {"something-else"}  # the stored token has expired
    proc = run_backdate("plan", wv_spec(wv), "--to", f"sqlite:///{recorder_db}",
                        "--start", "2024-10-26", "--end", "2024-10-27", env={}, expect=1)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "refresh_token.txt" in out and "HTTP 400" in out and "invalid_grant" in out
    assert "rt-first" not in out


def test_wattivahti_pt15min_empty_falls_back_to_pt1h(wv: FakeWattiVahti) -> None:
    wv.pt15_from = utc(2024, 10, 27)  # older ranges: nothing at 15 minutes
    lo, hi = utc(2024, 10, 26), utc(2024, 10, 28)
    source, (series,) = read(wv_spec(wv, chunk_days="1"), lo, hi)
    steps = [(r.query["start"][:10], r.query["resultStep"]) for r in wv.calls("meterdata2")]
    assert steps == [("2024-10-26", "PT15MIN"), ("2024-10-26", "PT1H"),
                     ("2024-10-27", "PT15MIN")]
    old = series.times < utc(2024, 10, 27)
    assert set((series.ends - series.times)[old]) == {3600.0}
    assert set((series.ends - series.times)[~old]) == {900.0}
    expected_hours = hourly({t: v for t, v in wv.consumption.items()
                             if lo <= t < utc(2024, 10, 27)})
    np.testing.assert_allclose(series.values[old], [expected_hours[int(t)] for t in
                                                    series.times[old]], atol=1e-9)
    np.testing.assert_allclose(series.values[~old], known(wv.consumption, utc(2024, 10, 27),
                                                          hi)[1], atol=1e-12)
    # One request straddling the limit: PT15MIN answers from the limit on, hours before it.
    _, (straddling,) = read(wv_spec(wv, chunk_days="2"), lo, hi)
    np.testing.assert_array_equal(straddling.times, series.times)
    np.testing.assert_allclose(straddling.values, series.values, atol=1e-12)
    assert [(r.query["start"][:16], r.query["stop"][:16], r.query["resultStep"])
            for r in wv.calls("meterdata2")[3:]] == [
        ("2024-10-26T03:00", "2024-10-28T02:00", "PT15MIN"),
        ("2024-10-26T03:00", "2024-10-27T03:00", "PT1H")]


def test_wattivahti_production_and_outages(wv: FakeWattiVahti) -> None:
    lo, hi = utc(2024, 10, 26), utc(2024, 10, 29)
    _, out = read(wv_spec(wv, direction="both"), lo, hi)
    assert [s.statistic_id for s in out] == [f"backdate:wattivahti_{MP}_consumption",
                                             f"backdate:wattivahti_{MP}_production"]
    np.testing.assert_allclose(out[1].values, known(wv.production, lo, hi)[1])
    assert {r.query["measurementType"] for r in wv.calls("meterdata2")} == {"1", "6"}
    wv.outages["meterdata2"] = 502
    with pytest.raises(TargetError, match="HTTP 502"):
        read(wv_spec(wv), lo, hi)
    wv.outages = {"/token": 503}
    with pytest.raises(TargetError, match="HTTP 503"):
        read(wv_spec(wv), lo, hi)


def test_meterdata2_file(wv: FakeWattiVahti, tmp_path: Path) -> None:
    import httpx

    lo, hi = utc(2024, 10, 26), utc(2024, 10, 29)
    _, (series,) = read(wv_spec(wv, chunk_days="5"), lo, hi)
    call = wv.calls("meterdata2")[0]
    wv.valid_refresh = set(wv.issued_refresh[-1:])
    token = httpx.post(wv.urls["token_url"], data={
        "client_id": wv.client_id, "scope": wv.SCOPE, "grant_type": "refresh_token",
        "refresh_token": wv.issued_refresh[-1]}).json()["access_token"]
    doc = httpx.get(wv.base_url + call.path, params=call.query,
                    headers={"Authorization": f"Bearer {token}"}).json()
    path = tmp_path / "meterdata2.json"
    path.write_text(json.dumps(doc, indent=1))
    (from_file,) = read_file(path)
    np.testing.assert_array_equal(from_file.times, series.times)
    np.testing.assert_allclose(from_file.values, series.values)


# ================================================================ into a real HA 2024.3.3


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    instance = HomeAssistant(tmp_path_factory.mktemp("ha_portals"), venv=ha_venv,
                             time_zone="Europe/Helsinki")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def ha_hourly(ha: HomeAssistant, statistic_id: str, start: float, end: float) -> dict[int, float]:
    with ha.ws() as ws:
        rows = statistics_during_period_sync(
            ws, [statistic_id], datetime.fromtimestamp(start, UTC),
            datetime.fromtimestamp(end, UTC), "hour", ["change"], {"energy": "kWh"},
        ).get(statistic_id, [])
    return {int(r["start"] / 1000 if isinstance(r["start"], int | float) else
                datetime.fromisoformat(r["start"]).timestamp()): r["change"] for r in rows}


@pytest.mark.ha
def test_import_wnsm_into_real_ha(ha: HomeAssistant, wn: FakeWienerNetze) -> None:
    wn.meters[ZP].einheit = "WH"
    spec = wnsm_spec(wn, direction="both")
    run_backdate("import", spec, "--to", ha.db_url, "--start", "2024-10-25T00:00:00Z",
                 "--end", "2024-10-29T00:00:00Z", "--yes", "--no-backup", env={}, expect=0)
    for role, data in (("consumption", wn.meters[ZP].consumption),
                       ("feedin", wn.meters[ZP].feedin)):
        expected = hourly(data)
        got = ha_hourly(ha, f"backdate:wnsm_{ZP_ID}_{role}", utc(2024, 10, 25), utc(2024, 10, 29))
        assert set(got) == set(expected)
        for hour, kwh in expected.items():
            assert got[hour] == pytest.approx(kwh, abs=1e-6), datetime.fromtimestamp(hour, UTC)


@pytest.mark.ha
def test_import_wattivahti_dst_days_into_real_ha(ha: HomeAssistant, wv: FakeWattiVahti) -> None:
    wv.wrong_z = {2}
    for start, end in (("2024-03-30", "2024-04-02"), ("2024-10-26", "2024-10-29")):
        run_backdate("import", wv_spec(wv, chunk_days="1"), "--to", ha.db_url, "--tz",
                     "Europe/Helsinki", "--start", start, "--end", end, "--yes", "--no-backup",
                     env={}, expect=0)
    expected = hourly({t: v for t, v in wv.consumption.items()
                       if utc(2024, 3, 29, 22) <= t < utc(2024, 4, 1, 21)
                       or utc(2024, 10, 25, 21) <= t < utc(2024, 10, 28, 22)})
    got = ha_hourly(ha, f"backdate:wattivahti_{MP}_consumption", utc(2024, 3, 29),
                    utc(2024, 10, 30))
    assert {h for h, v in got.items() if v} <= set(expected)
    for hour, kwh in expected.items():
        assert got.get(hour) == pytest.approx(kwh, abs=1e-6), datetime.fromtimestamp(hour, UTC)
    # the 25-hour local day: HA's daily change for 27 October equals the day's quarters
    with ha.ws() as ws:
        day = statistics_during_period_sync(
            ws, [f"backdate:wattivahti_{MP}_consumption"],
            datetime(2024, 10, 27, tzinfo=ZoneInfo("Europe/Helsinki")),
            datetime(2024, 10, 28, tzinfo=ZoneInfo("Europe/Helsinki")), "day", ["change"],
            {"energy": "kWh"})[f"backdate:wattivahti_{MP}_consumption"]
    lo = datetime(2024, 10, 27, tzinfo=ZoneInfo("Europe/Helsinki")).timestamp()
    total = sum(v for t, v in wv.consumption.items() if v is not None and lo <= t < lo + 25 * 3600)
    assert day[0]["change"] == pytest.approx(total, abs=1e-6)


def test_spec_usage_errors_and_masked_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from backdate.errors import UsageError

    with pytest.raises(UsageError, match="unknown parameter 'passwrd'"):
        open_source(f"wnsm:{ZP}?passwrd=x")
    source = open_source(f"wnsm:{ZP}?username=u&password=hunter2&client_secret=s3")
    try:
        assert "hunter2" not in source.url and "s3" not in source.url
        assert source.url.startswith(f"wnsm:{ZP}?")
    finally:
        source.close()
    monkeypatch.delenv("WATTIVAHTI_METERING_POINT", raising=False)
    with pytest.raises(UsageError, match="WATTIVAHTI_METERING_POINT"):
        open_source("wattivahti:")
    monkeypatch.setenv("WATTIVAHTI_METERING_POINT", MP)
    with pytest.raises(UsageError, match="days must be a number of days"):
        open_source("wattivahti:?days=soon")
    wv = open_source("wattivahti:?direction=production")
    try:
        assert wv.statistic_id("production") == f"backdate:wattivahti_{MP}_production"
    finally:
        wv.close()


# ================================================== review findings (issue 6, second round)


def test_wattivahti_full_disk_stops_before_the_token_is_spent(
        wv: FakeWattiVahti, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new token's file is created before the refresh POST: when it cannot be (disk full,
    read-only directory), the stored token is never sent and stays valid."""
    import errno
    import tempfile

    def no_space(*_a: Any, **_k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    token_file = Path(os.environ["REFRESH_TOKEN_FILE"])
    with pytest.raises(TargetError, match="No space left") as err:
        read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert str(token_file) in str(err.value) and "still valid" in str(err.value)
    assert wv.refresh_seen == []  # never spent
    assert token_file.read_text().strip() == "rt-first" and "rt-first" in wv.valid_refresh
    monkeypatch.undo()
    monkeypatch.setenv("WATTIVAHTI_CLIENT_ID", wv.client_id)
    monkeypatch.setenv("REFRESH_TOKEN_FILE", str(token_file))
    _, (series,) = read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert len(series) == 96


def test_wattivahti_token_write_failure_after_rotation_is_exit_3_and_says_so(
        wv: FakeWattiVahti, recorder_db: Path) -> None:
    """When the rename fails after B2C rotated the token, the error names the file, says the
    old token was spent and what to do; no traceback, exit 3."""
    wrapper = ("import errno, os\n"
               "real = os.replace\n"
               "def broken(src, dst, *a, **k):\n"
               "    if str(dst).endswith('refresh_token.txt'):\n"
               "        raise OSError(errno.EROFS, 'Read-only file system')\n"
               "    return real(src, dst, *a, **k)\n"
               "os.replace = broken\n"
               "from backdate.cli import main\nmain()\n")
    token_file = Path(os.environ["REFRESH_TOKEN_FILE"])
    proc = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", wrapper, "plan", wv_spec(wv),
         "--to", f"sqlite:///{recorder_db}", "--start", "2024-10-26", "--end", "2024-10-27"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 3, out
    assert "Traceback" not in out and "Read-only file system" in out
    assert str(token_file) in out and "spent" in out and "wattivahti.fi" in out
    assert wv.issued_refresh[0] not in out  # the new token is a secret too
    assert [p.name for p in token_file.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_wattivahti_two_processes_share_one_rotation(wv: FakeWattiVahti,
                                                     tmp_path: Path) -> None:
    """cron and a manual run at once: the lock on <file>.lock makes the second wait and use
    the rotated token, instead of spending the same one and being told to log in again."""
    import threading

    arrived = [0]
    meeting = threading.Condition()

    def meet(req: Request) -> None:
        """Hold the first refresh until the second arrives (or 3 s pass): without the lock
        both spend the same token; with it the second only comes after the first is done."""
        if req.path.endswith("/token"):
            with meeting:
                arrived[0] += 1
                meeting.notify_all()
                meeting.wait_for(lambda: arrived[0] >= 2, timeout=3.0)

    wv.before = meet
    script = ("import sys\nfrom backdate.sources.base import open_source, SourceRange\n"
              "s = open_source(sys.argv[1])\n"
              "s.read(SourceRange(float(sys.argv[2]), float(sys.argv[3])))\n")
    args = [str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", script, wv_spec(wv),
            str(utc(2024, 10, 26)), str(utc(2024, 10, 27))]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert wv.refresh_seen == ["rt-first", wv.issued_refresh[0]]
    token_file = Path(os.environ["REFRESH_TOKEN_FILE"])
    assert token_file.read_text().strip() == wv.issued_refresh[1]


def test_wattivahti_token_file_changed_meanwhile_is_retried_once(wv: FakeWattiVahti) -> None:
    """Another writer (a hand edit, a tool without the lock) put a new token in the file after
    it was read: invalid_grant, re-read, one retry with the new token."""
    token_file = Path(os.environ["REFRESH_TOKEN_FILE"])

    def swap(req: Request) -> None:
        if req.path.endswith("/token") and not wv.refresh_seen:
            wv.valid_refresh = {"rt-pasted"}
            token_file.write_text("rt-pasted\n")

    wv.before = swap
    _, (series,) = read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert len(series) == 96
    assert wv.refresh_seen == ["rt-first", "rt-pasted"]
    assert token_file.read_text().strip() == wv.issued_refresh[-1]


def test_wattivahti_token_errors_name_the_b2c_code(wv: FakeWattiVahti,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An expired token says AADB2C90080 and how to log in; a wrong client id says
    AADB2C90117 and WATTIVAHTI_CLIENT_ID, not "log in again"."""
    wv.valid_refresh = {"something-else"}
    with pytest.raises(InputError, match="AADB2C90080") as err:
        read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert "wattivahti.fi" in str(err.value) and "invalid_grant" in str(err.value)
    assert len(wv.refresh_seen) == 1  # the file did not change: no second try
    monkeypatch.setenv("WATTIVAHTI_CLIENT_ID", "not-the-client")
    with pytest.raises(InputError, match="AADB2C90117") as err:
        read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert "WATTIVAHTI_CLIENT_ID" in str(err.value) and "wattivahti.fi" not in str(err.value)


def test_wattivahti_token_not_rotated_leaves_the_file(wv: FakeWattiVahti) -> None:
    """B2C's answer may lack a refresh token: the file stays, no temporary file is left."""
    wv.rotate = 2  # every second refresh rotates
    token_file = Path(os.environ["REFRESH_TOKEN_FILE"])
    read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert token_file.read_text().strip() == "rt-first" and wv.issued_refresh == []
    read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert token_file.read_text().strip() == wv.issued_refresh[0]
    read(wv_spec(wv), utc(2024, 10, 26), utc(2024, 10, 27))
    assert wv.refresh_seen == ["rt-first", "rt-first", wv.issued_refresh[0]]
    assert sorted(p.name for p in token_file.parent.iterdir()) == [
        "refresh_token.txt", "refresh_token.txt.lock"]


def test_wattivahti_range_from_the_second_0300_with_naive_bounds(wv: FakeWattiVahti) -> None:
    """An API that reads start/stop as Finnish wall clock answers from the *first* 03:00 when
    asked from the second: the answer holds the whole pair, which must parse as a pair and then
    be cut to the range."""
    wv.naive_bounds = True
    lo = datetime(2024, 10, 27, 3, 0, tzinfo=HELSINKI, fold=1).timestamp()  # 01:00 UTC
    hi = utc(2024, 10, 28)
    _, (series,) = read(wv_spec(wv, chunk_days="1"), lo, hi)
    times, values = known(wv.consumption, lo, hi)
    np.testing.assert_array_equal(series.times, times)
    np.testing.assert_allclose(series.values, values, atol=1e-12)
    first = wv.calls("meterdata2")[0].query["start"]
    assert first.startswith("2024-10-27T03:00:00")


def test_meterdata2_pair_at_the_start_of_a_range() -> None:
    """A pair at the very start of the answer with the range starting at the second 03:00."""
    times = ["2024-10-27T03:00:00", "2024-10-27T03:00:00", "2024-10-27T03:15:00",
             "2024-10-27T03:15:00"]
    doc = {"getconsumptionsresult": {"consumptiondata": {"timeseries": {
        "resolution": "PT15MIN", "values": {"tsv": [
            {"quantity": 0.1 * (k + 1), "time": t} for k, t in enumerate(times)]}}}}}
    second = datetime(2024, 10, 27, 3, 0, tzinfo=HELSINKI, fold=1).timestamp()
    into = Readings()
    parse_meterdata2(doc, "answer", into, clock=_LocalClock(not_before=second),
                     window=(second, second + 7200))
    assert into.starts == [second, second + 900]
    assert into.values == pytest.approx([0.2, 0.4])


def test_portal_unit_and_kind_are_not_overridden(wn: FakeWienerNetze, tmp_path: Path,
                                                 recorder_db: Path) -> None:
    """A bewegungsdaten answer says its unit (converted to kWh); --unit Wh would make every
    value 1000 times too small, --kind cumulative nonsense: both are errors naming the
    source, exit 1, nothing written."""
    import httpx

    wn.meters[ZP].einheit = "WH"
    read(wnsm_spec(wn), utc(2024, 10, 25), utc(2024, 10, 26))
    call = wn.calls("bewegungsdaten")[0]
    doc = httpx.get(wn.base_url + call.path, params=call.query,
                    headers={"Authorization": call.headers["authorization"],
                             "Accept": "application/json"}).json()
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps(doc))
    before = recorder_db.read_bytes()
    for flags in (["--unit", "Wh"], ["--kind", "cumulative"]):
        proc = run_backdate("import", answer, "--to", f"sqlite:///{recorder_db}", *flags,
                            "--yes", "--no-backup", env={}, expect=1)
        out = " ".join((proc.stdout + proc.stderr).split())
        assert "answer.json" in out and flags[0] in out, out
        proc = run_backdate("import", wnsm_spec(wn), "--to", f"sqlite:///{recorder_db}",
                            "--start", "2024-10-25", "--end", "2024-10-26", *flags, "--yes",
                            "--no-backup", env={}, expect=1)
        out = " ".join((proc.stdout + proc.stderr).split())
        assert f"wnsm:{ZP}" in out and flags[0] in out, out
    assert recorder_db.read_bytes() == before
    run_backdate("plan", answer, "--to", f"sqlite:///{recorder_db}", "--unit", "kWh",
                 env={}, expect=0)


def test_naive_bounds_are_the_portals_local_days(wn: FakeWienerNetze,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`--start 2024-10-26` for a Wiener Netze source is Vienna's 26 October (from 22:00 UTC
    the day before), unless --tz says otherwise."""
    from backdate.app.importing import read_sources
    from backdate.cli import _options

    monkeypatch.delenv("TZ", raising=False)
    opts = _options(None, None, None, None, None, None, None, True, start="2024-10-26",
                    end="2024-10-27")
    (series,) = read_sources([wnsm_spec(wn)], opts)
    lo = datetime(2024, 10, 26, tzinfo=ZoneInfo("Europe/Vienna")).timestamp()
    hi = datetime(2024, 10, 27, tzinfo=ZoneInfo("Europe/Vienna")).timestamp()
    np.testing.assert_array_equal(series.times, known(wn.meters[ZP].consumption, lo, hi)[0])
    utc_opts = _options(None, None, None, None, "UTC", None, None, True, start="2024-10-26",
                        end="2024-10-27")
    (in_utc,) = read_sources([wnsm_spec(wn)], utc_opts)
    assert in_utc.times[0] == utc(2024, 10, 26)


def test_daily_values_only_whole_days_inside_the_range(wn: FakeWienerNetze) -> None:
    """Resolution day: a day reaching past --end is left out, a day starting at --start kept."""
    vienna = ZoneInfo("Europe/Vienna")
    lo = datetime(2024, 10, 26, tzinfo=vienna).timestamp()
    hi = datetime(2024, 10, 27, 12, tzinfo=vienna).timestamp()
    _, (daily,) = read(wnsm_spec(wn, resolution="day", direction="feedin"), lo, hi)
    assert daily.times.tolist() == [lo]
    assert daily.ends.tolist() == [datetime(2024, 10, 27, tzinfo=vienna).timestamp()]
    expected = sum(v for t, v in wn.meters[ZP].feedin.items()
                   if v is not None and lo <= t < daily.ends[0])
    assert float(daily.values[0]) == pytest.approx(expected, abs=1e-6)
    assert wn.calls("bewegungsdaten")[0].query["zeitpunktVon"] == "2024-10-25T22:00:00.000Z"


def test_wnsm_moved_b2c_api_and_outage_days_with_null_values(wn: FakeWienerNetze) -> None:
    """app-config.json's b2cApiUrl moves the B2C API; a day the portal answers `values:
    null` (an outage) yields nothing for that day, a note, and every other day."""
    wn.b2c_moved = True
    wn.null_days = {datetime(2024, 10, 26).date()}
    lo, hi = utc(2024, 10, 25), utc(2024, 10, 28)
    source, (series,) = read(wnsm_spec(wn, chunk_days="1"), lo, hi)
    assert wn.calls("/b2c-v2/zaehlpunkte") and not wn.calls("/b2c/zaehlpunkte")
    kept = [t for t in known(wn.meters[ZP].consumption, lo, hi)[0]
            if not utc(2024, 10, 26) <= t < utc(2024, 10, 27)]
    np.testing.assert_array_equal(series.times, kept)
    assert any("delivered no values" in n for n in source.notes)


def test_wattivahti_pt15min_gaps_in_the_middle_and_at_the_end(wv: FakeWattiVahti) -> None:
    """PT15MIN answers nothing for some hours in the middle and at the end of a range: those
    whole hours come from PT1H, nothing is counted twice, nothing invented."""
    lo, hi = utc(2024, 10, 26), utc(2024, 10, 27)
    middle = (utc(2024, 10, 26, 8), utc(2024, 10, 26, 10))
    end = (utc(2024, 10, 26, 21), utc(2024, 10, 27))
    wv.pt15_gaps = [middle, end]
    _, (series,) = read(wv_spec(wv, chunk_days="1"), lo, hi)
    in_gap = np.array([any(a <= t < b for a, b in (middle, end)) for t in series.times])
    assert set((series.ends - series.times)[in_gap]) == {3600.0}
    assert int(in_gap.sum()) == 2 + 3
    assert set((series.ends - series.times)[~in_gap]) == {900.0}
    expected = hourly({t: v for t, v in wv.consumption.items() if lo <= t < hi})
    got: dict[int, float] = {}
    for t, v in zip(series.times, series.values, strict=True):
        got[int(t) - int(t) % 3600] = got.get(int(t) - int(t) % 3600, 0.0) + float(v)
    assert got.keys() == expected.keys()
    for h, v in expected.items():
        assert got[h] == pytest.approx(v, abs=1e-9)
    steps = [r.query["resultStep"] for r in wv.calls("meterdata2")]
    assert steps == ["PT15MIN", "PT1H"]  # one hour request spanning both gaps
