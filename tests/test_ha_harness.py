"""The real-HA harness and backdate's WebSocket client work against HA 2024.3.3.

Why: every later end-to-end test stands on these two pieces; if they break, this file says so
first and plainly.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ha_harness import HA_VERSION, HomeAssistant

from backdate.errors import TargetError
from backdate.hass.client import (
    HAAuthError,
    HAClient,
    HAError,
    HAUnreachableError,
    SyncHAClient,
    statistics_during_period,
    statistics_during_period_sync,
    websocket_url,
)

STAT_ID = "backdate:harness_check"
T0 = datetime(2024, 1, 15, 10, tzinfo=UTC)
SUMS = [1.5, 3.5, 6.0]


def _import_three_hours(ws: SyncHAClient, statistic_id: str = STAT_ID) -> None:
    metadata = {
        "has_mean": False,
        "has_sum": True,
        "name": "harness check",
        "source": "backdate",
        "statistic_id": statistic_id,
        "unit_of_measurement": "kWh",
    }
    stats = [
        {"start": (T0 + timedelta(hours=i)).isoformat(), "sum": s, "state": s}
        for i, s in enumerate(SUMS)
    ]
    assert ws.call("recorder/import_statistics", metadata=metadata, stats=stats) is None


def _wait_for_rows(
    ws: SyncHAClient, statistic_id: str, count: int, timeout: float = 30
) -> list[dict[str, Any]]:
    """HA answers import_statistics before writing, so poll until the rows are readable."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = statistics_during_period_sync(
            ws, [statistic_id], T0, T0 + timedelta(hours=len(SUMS)), "hour", ["change"]
        )
        rows = result.get(statistic_id, [])
        if len(rows) >= count:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"only {len(rows)} of {count} rows of {statistic_id} after {timeout} s")


def test_websocket_url() -> None:
    assert websocket_url("http://h:8123") == "ws://h:8123/api/websocket"
    assert websocket_url("https://h.example/ha/") == "wss://h.example/ha/api/websocket"
    with pytest.raises(HAUnreachableError):
        websocket_url("h:8123")


def test_unreachable_is_a_target_error() -> None:
    from ha_harness import free_port

    with pytest.raises(HAUnreachableError, match="cannot reach Home Assistant") as info:
        SyncHAClient(f"http://127.0.0.1:{free_port()}", "token", timeout=5)
    assert isinstance(info.value, TargetError)
    assert info.value.exit_code == 3


@pytest.mark.ha
def test_import_statistics_round_trip(home_assistant: HomeAssistant) -> None:
    with home_assistant.ws() as ws:
        assert ws.ha_version == HA_VERSION
        info = ws.call("recorder/info")
        assert info["thread_running"] is True
        assert info["recording"] is True
        before = ws.call("recorder/list_statistic_ids")
        assert STAT_ID not in {s["statistic_id"] for s in before}

        _import_three_hours(ws)
        rows = _wait_for_rows(ws, STAT_ID, 3)

        assert [r["start"] for r in rows] == [
            int((T0 + timedelta(hours=i)).timestamp() * 1000) for i in range(3)
        ]
        assert [r["end"] - r["start"] for r in rows] == [3_600_000] * 3
        # With no earlier row, HA counts the first row's change from 0.
        assert [r["change"] for r in rows] == pytest.approx([1.5, 2.0, 2.5])

        listed = {s["statistic_id"]: s for s in ws.call("recorder/list_statistic_ids")}
        assert listed[STAT_ID]["source"] == "backdate"
        assert listed[STAT_ID]["statistics_unit_of_measurement"] == "kWh"
        assert listed[STAT_ID]["has_sum"] is True


@pytest.mark.ha
def test_restart_same_dir_keeps_token_and_data(home_assistant: HomeAssistant) -> None:
    token = home_assistant.token
    with home_assistant.ws() as ws:
        _import_three_hours(ws)
        _wait_for_rows(ws, STAT_ID, 3)

    assert home_assistant.stop() == 0
    assert not home_assistant.running
    home_assistant.start()

    assert home_assistant.token == token
    with home_assistant.ws(token) as ws:
        rows = _wait_for_rows(ws, STAT_ID, 3, timeout=5)
        assert [r["change"] for r in rows] == pytest.approx([1.5, 2.0, 2.5])
    assert home_assistant.db_path is not None and home_assistant.db_path.exists()


@pytest.mark.ha
def test_client_errors(home_assistant: HomeAssistant) -> None:
    with pytest.raises(HAAuthError, match="access token rejected"):
        SyncHAClient(home_assistant.url, "not-a-token", timeout=10)

    with home_assistant.ws() as ws:
        with pytest.raises(HAError) as info:
            ws.call("recorder/statistics_during_period", start_time="yesterday", period="hour")
        assert info.value.code == "invalid_format"
        # The connection survives a failed call.
        assert ws.call("recorder/info")["thread_running"] is True

    user_token = home_assistant.create_user("reader")
    with home_assistant.ws(user_token) as ws:
        assert ws.call("recorder/info")["thread_running"] is True  # not admin-only
        with pytest.raises(HAAuthError) as denied:
            _import_three_hours(ws, "backdate:not_allowed")
        assert denied.value.code == "unauthorized"


@pytest.mark.ha
def test_async_client_concurrency_and_events(home_assistant: HomeAssistant) -> None:
    async def scenario() -> None:
        async with await HAClient.connect(home_assistant.url, home_assistant.token) as ha:
            assert ha.ha_version == HA_VERSION
            infos = await asyncio.gather(*(ha.call("recorder/info") for _ in range(20)))
            assert all(i["thread_running"] for i in infos)
            await ha.ping()

            sub = await ha.subscribe("subscribe_events", event_type="state_changed")
            await asyncio.to_thread(
                home_assistant.post_state,
                "sensor.backdate_live",
                "12.5",
                {"unit_of_measurement": "kWh", "state_class": "total_increasing"},
            )
            while True:
                event = await sub.get(timeout=10)
                if event["data"]["entity_id"] == "sensor.backdate_live":
                    break
            assert event["data"]["new_state"]["state"] == "12.5"
            await sub.unsubscribe()

            result = await statistics_during_period(
                ha, ["sensor.nothing"], T0, None, "hour", ["sum"]
            )
            assert result == {}
        assert ha.closed
        with pytest.raises(HAUnreachableError):
            await ha.call("recorder/info")

    asyncio.run(scenario())
