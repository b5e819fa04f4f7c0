"""backdate.hass.client against a real Home Assistant 2024.3.3: the small API the import path,
the live mirror and the migration reuse (auth, request ids, timeouts, reconnect with backoff,
the 4 MiB message guard).

Why against real HA: each of these is a promise about how HA behaves (it answers out of order,
closes the connection on a message over 4 MiB, refuses connections while restarting, answers
while still starting); only HA itself can show the client handles it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ha_harness
import pytest
from ha_harness import HomeAssistant, free_port

from backdate.hass.client import (
    MAX_MESSAGE_BYTES,
    Backoff,
    HAAuthError,
    HAClient,
    HAError,
    HAMessageTooBigError,
    HATimeoutError,
    HAUnreachableError,
    SyncHAClient,
    message_size,
    statistics_during_period_sync,
)

pytestmark = pytest.mark.ha


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    instance = HomeAssistant(tmp_path_factory.mktemp("ha_ws_client"), venv=ha_venv)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


# ------------------------------------------------------------------------------------- auth


def test_connect_authenticates_and_reports_the_version(ha: HomeAssistant) -> None:
    with SyncHAClient(ha.url, ha.token) as ws:
        assert ws.ha_version == "2024.3.3"
        assert ws.call("get_config")["version"] == "2024.3.3"
        assert ws.url == f"ws://127.0.0.1:{ha.port}/api/websocket"


def test_bad_token_is_an_auth_error_without_the_token(ha: HomeAssistant) -> None:
    with pytest.raises(HAAuthError) as err:
        SyncHAClient(ha.url, "secret-not-a-token")
    assert err.value.code == "auth_invalid" and err.value.exit_code == 3
    assert "token rejected" in str(err.value) and "secret-not-a-token" not in str(err.value)


def test_non_admin_user_gets_unauthorized(ha: HomeAssistant) -> None:
    token = ha.create_user("client_viewer")
    with SyncHAClient(ha.url, token) as ws:
        assert ws.call("auth/current_user")["is_admin"] is False
        with pytest.raises(HAAuthError) as err:
            ws.call("recorder/clear_statistics", statistic_ids=["backdate:nothing"])
        assert err.value.code == "unauthorized"
        ws.ping()  # the connection survives a refused call


def test_unreachable_names_the_address() -> None:
    port = free_port()
    with pytest.raises(HAUnreachableError) as err:
        SyncHAClient(f"http://127.0.0.1:{port}", "token", timeout=5)
    assert f"127.0.0.1:{port}" in str(err.value) and err.value.exit_code == 3


# ----------------------------------------------------------------------- ids and timeouts


def test_concurrent_calls_get_their_own_replies(ha: HomeAssistant) -> None:
    """Forty calls in flight on one connection, mixed kinds, one failing: each caller gets
    the reply to its own request id."""

    async def many(client: HAClient) -> list[Any]:
        calls = []
        for k in range(40):
            if k % 4 == 0:
                calls.append(client.call("get_config"))
            elif k % 4 == 1:
                calls.append(client.call("recorder/info"))
            elif k % 4 == 2:
                calls.append(client.call("ping"))
            else:
                calls.append(client.call("backdate/no_such_command"))
        return await asyncio.gather(*calls, return_exceptions=True)

    with SyncHAClient(ha.url, ha.token) as ws:
        results = ws.run(many, 60)
    for k, result in enumerate(results):
        if k % 4 == 0:
            assert result["version"] == "2024.3.3", (k, result)
        elif k % 4 == 1:
            assert "backlog" in result and "thread_running" in result, (k, result)
        elif k % 4 == 2:
            assert result is None, (k, result)
        else:
            assert isinstance(result, HAError) and result.code == "unknown_command", (k, result)


def test_a_timeout_leaves_the_connection_usable(ha: HomeAssistant) -> None:
    """No answer within the timeout: HATimeoutError; HA's late reply is dropped and the next
    call on the same connection gets its own answer."""
    now = datetime.now(UTC)
    with SyncHAClient(ha.url, ha.token) as ws:
        with pytest.raises(HATimeoutError) as err:
            ws.call("recorder/statistics_during_period", timeout=1e-6,
                    statistic_ids=["sensor.backdate_harness"],
                    start_time=(now - timedelta(days=3650)).isoformat(), period="month")
        assert err.value.code == "timeout" and err.value.exit_code == 3
        time.sleep(0.5)  # the late reply arrives and must not be taken for the next one
        assert ws.call("get_config")["version"] == "2024.3.3"
        sub = ws.run(lambda c: c.subscribe("subscribe_events", event_type="backdate_never"))
        with pytest.raises(HATimeoutError):
            ws.run(lambda c: sub.get(timeout=0.3))
        ws.ping()


# ---------------------------------------------------------------------------- message size


def _stats(hours: int, pad: int = 0) -> list[dict[str, Any]]:
    first = datetime(2015, 1, 1, tzinfo=UTC)
    return [{"start": (first + timedelta(hours=k)).isoformat(), "sum": k * 0.5, "state": k * 0.5,
             **({"mean": 1.0, "min": 0.0, "max": 2.0} if pad else {})} for k in range(hours)]


def test_message_over_the_limit_is_refused_before_sending(ha: HomeAssistant) -> None:
    """A 4.5 MiB import is refused by the client (nothing sent, connection usable, nothing
    written); the same bytes sent raw make HA drop the connection, which is why the guard
    exists; just under the limit HA reads the message (and answers it)."""
    sid = "backdate:client_big"
    meta = {"has_mean": False, "has_sum": True, "name": None, "source": "backdate",
            "statistic_id": sid, "unit_of_measurement": "kWh"}
    stats = _stats(60_000)
    message = {"type": "recorder/import_statistics", "metadata": meta, "stats": stats}
    assert message_size(message) > 4 * 1024 * 1024
    with SyncHAClient(ha.url, ha.token) as ws:
        with pytest.raises(HAMessageTooBigError) as err:
            ws.call_message(message)
        assert "4 MiB" in str(err.value) and err.value.exit_code == 3
        ws.ping()
        assert ws.call("recorder/get_statistics_metadata", statistic_ids=[sid]) == []

        # Just under the limit: HA reads it (a schema error comes back, the socket stays).
        pad = "x" * (MAX_MESSAGE_BYTES - 200)
        with pytest.raises(HAError) as bad:
            ws.call("ping", padding=pad)
        assert bad.value.code == "invalid_format", bad.value
        ws.ping()

    with SyncHAClient(ha.url, ha.token) as raw:
        raw.run(lambda c: c._ws.send_str('{"id": 1, "type": "ping", "padding": "'
                                          + "x" * (4 * 1024 * 1024 + 10) + '"}'))
        with pytest.raises(HAUnreachableError):
            for _ in range(50):
                raw.ping(timeout=5)
                time.sleep(0.1)


# ---------------------------------------------------------------------------- reconnecting


def test_backoff_schedule() -> None:
    delays = []
    backoff = Backoff(first=1.0, factor=2.0, cap=10.0, give_up_after=3600)
    for _ in range(7):
        delays.append(backoff.next_delay())
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert Backoff(give_up_after=0).next_delay() is None


def test_connect_retrying_gives_up_on_schedule() -> None:
    """Nothing listens: attempts follow the backoff (no storm), then HAUnreachableError."""
    port = free_port()
    told: list[float] = []
    began = time.monotonic()
    with pytest.raises(HAUnreachableError) as err:
        SyncHAClient.connect_retrying(
            f"http://127.0.0.1:{port}", "token", 2,
            backoff=Backoff(first=0.2, factor=2.0, cap=1.0, give_up_after=3.0),
            on_retry=lambda attempt, delay, why: told.append(delay))
    elapsed = time.monotonic() - began
    assert 2.9 < elapsed < 8, elapsed
    assert told[:3] == [0.2, 0.4, 0.8] and all(d <= 1.0 for d in told), told
    assert len(told) <= 7, f"{len(told)} retries in {elapsed:.1f} s"
    assert "did not come back within 3 s" in str(err.value), err.value


def test_connect_retrying_never_retries_a_bad_token(ha: HomeAssistant) -> None:
    began = time.monotonic()
    with pytest.raises(HAAuthError):
        SyncHAClient.connect_retrying(ha.url, "not-a-token", backoff=Backoff(give_up_after=60))
    assert time.monotonic() - began < 5


def test_connect_retrying_rides_out_a_restart(ha: HomeAssistant,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """HA stopped and started again (down for several seconds): the client retries on the
    backoff schedule and returns only once HA runs; an old connection reports the loss."""
    monkeypatch.setattr(ha_harness, "_port_is_free", lambda _port: True)
    old = SyncHAClient(ha.url, ha.token)
    told: list[tuple[int, float, str]] = []
    errors: list[BaseException] = []

    def restart() -> None:
        try:
            ha.stop()
            time.sleep(4)
            ha.start()
        except BaseException as err:  # reported below
            errors.append(err)

    worker = threading.Thread(target=restart)
    worker.start()
    try:
        time.sleep(0.5)
        began = time.monotonic()
        client = SyncHAClient.connect_retrying(
            ha.url, ha.token, 5, backoff=Backoff(first=0.5, factor=2.0, cap=4.0,
                                                 give_up_after=180),
            on_retry=lambda *a: told.append(a))
        elapsed = time.monotonic() - began
    finally:
        worker.join(300)
    assert not errors, errors
    with client:
        assert client.call("get_config")["state"] == "RUNNING"
        got = statistics_during_period_sync(client, ["sensor.backdate_harness"],
                                            datetime.now(UTC) - timedelta(hours=1), None,
                                            "hour", ["mean"])
        assert isinstance(got, dict)
    assert told, "HA was down, yet the first attempt succeeded"
    # No storm: at most one attempt per scheduled delay (0.5, 1, 2, 4, 4, ...).
    budget, n, delay = 0.0, 0, 0.5
    while budget < elapsed:
        budget += delay
        delay = min(delay * 2, 4.0)
        n += 1
    assert len(told) <= n + 1, f"{len(told)} retries in {elapsed:.1f} s"
    with pytest.raises(HAUnreachableError):
        old.ping(timeout=5)
    old.close()


def test_connect_retrying_keeps_the_short_timeout_for_connecting_only(ha: HomeAssistant) -> None:
    """A reconnect tries with a short connect timeout, but later calls (long read-backs of a
    ten-year import) get the caller's call timeout, not the connect attempt's."""
    with SyncHAClient.connect_retrying(ha.url, ha.token, 2, call_timeout=75,
                                       backoff=Backoff(give_up_after=30)) as client:
        assert client.timeout == 75
        assert client.run(lambda c: _timeout_of(c)) == 75
        assert client.call("get_config")["state"] == "RUNNING"
    with SyncHAClient.connect_retrying(ha.url, ha.token, 3,
                                       backoff=Backoff(give_up_after=30)) as client:
        assert client.timeout == 3  # no call_timeout: the connect timeout, as before


async def _timeout_of(client: HAClient) -> float:
    return client.timeout
