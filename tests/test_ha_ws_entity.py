"""History prepended into an ENTITY statistic (``sensor.x``, source ``recorder``) through HA's
WebSocket API while a real Home Assistant 2024.3.3 compiles it from a live meter.

Why: HA OS users' energy sensors are entity statistics HA compiles every 5 minutes. Over the
API backdate cannot write 5-minute rows; it writes the history's hourly rows and moves every
later row of both tables with ``recorder/adjust_sum_statistics``. The promise: no step at the
seam (the whole statistic moves by the history's total), HA's ``state`` (the meter) kept in its
rows and continued in the new ones, and HA's next compile continuing without a spike.

Marked ``slow``: HA compiles only every 5 minutes (at minute 0, 5, ... + 10 s), so the test
waits for HA's first compiled row (up to ~5.5 min) and for the next one after the import
(another ~5 min).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import pytest
from ha_harness import HomeAssistant
from live_meter import (
    FIVE,
    SID,
    MeterPoster,
    _when,
    assert_amounts,
    ha_rows,
    log_problems,
    next_compile,
    now,
    utc,
    wait_for_window,
    wait_until,
)
from test_ha_websocket import run

TOL = 1e-6


pytestmark = [pytest.mark.ha, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def live(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[HomeAssistant, MeterPoster]]:
    ha = HomeAssistant(tmp_path_factory.mktemp("ha_ws_entity"), venv=ha_venv)
    ha.start()
    poster = MeterPoster(ha, seed=17)
    poster.start()
    try:
        yield ha, poster
    finally:
        poster.stop()
        ha.stop()


def test_prepend_into_a_live_entity_statistic(live: tuple[HomeAssistant, MeterPoster],
                                              tmp_path: Path) -> None:
    ha, poster = live
    # 1. HA's first compiled 5-minute row of the live meter.
    deadline = next_compile(now()) + FIVE + 90

    def compiled() -> dict[int, dict[str, Any]]:
        return ha_rows(ha, now() - 3 * 3600, now() + 3600, "5minute")

    rows = wait_until(compiled, deadline, f"HA's first 5-minute row of {SID}", poster,
                      lambda: ha.log_tail(30))
    first = min(rows)
    seam = first // 3600 * 3600
    if next_compile(now()) - now() < 60:  # keep the import inside one compile interval
        wait_for_window(ha, poster, (now() // FIVE) * FIVE)
    before5 = ha_rows(ha, seam - 3600, now() + 3600, "5minute")
    before_h = ha_rows(ha, seam - 3 * 86400 - 3600, now() + 3600, "hour")

    # 2. Three days of 15-minute deltas ending at the seam, through the API.
    history = dg.quarter_hour_deltas(utc(seam) - timedelta(days=3), utc(seam), seed=93)
    path = dg.write_delta_csv(tmp_path / "history.csv", history, value_column="kwh")
    plan = run("plan", path, "--statistic-id", SID, "--to", ha.url, token=ha.token)
    assert "hourly rows only" in plan.stdout, plan.stdout
    compiled_at = max(ha_rows(ha, seam, now() + 3600, "5minute"))
    run("import", path, "--statistic-id", SID, "--to", ha.url, "--no-backup", "--yes",
        token=ha.token)
    total = sum(i.value for i in history)

    # 3. Judged by HA: the prepended hours, the shift, the meter.
    after5 = ha_rows(ha, seam - 3600, now() + 3600, "5minute")
    after_h = ha_rows(ha, seam - 3 * 86400 - 3600, now() + 3600, "hour")
    assert max(after5) == compiled_at or max(after5) > compiled_at, "a compiled row vanished"
    expected = dg.hourly_totals(history)
    assert_amounts({t: r["change"] for t, r in after_h.items() if t < seam}, expected,
                   "prepended hours: hourly change")
    for t, old in before5.items():  # HA's own rows: sum moved by the total, state kept
        new = after5[t]
        assert abs(new["sum"] - (old["sum"] + total)) < TOL, (
            f"5-minute row {_when(t)}: sum {old['sum']!r} -> {new['sum']!r}, expected a shift "
            f"of {total!r}")
        assert new["state"] == old["state"], f"5-minute row {_when(t)}: state changed"
    for t, old in before_h.items():
        assert abs(after_h[t]["sum"] - (old["sum"] + total)) < TOL, f"hour {_when(t)}"
        assert after_h[t]["state"] == old["state"], f"hour {_when(t)}: state changed"
    last_hour = after_h[seam - 3600]
    assert abs(last_hour["sum"] - total) < TOL, "the history does not end at its total"
    # No step: from the history's end to HA's first compiled row, the sum grows by exactly
    # what HA had counted in that row (its sum before the import).
    assert abs((after5[first]["sum"] - last_hour["sum"]) - before5[first]["sum"]) < TOL
    # The meter: every prepended row's state - sum is HA's meter offset (state - sum of
    # HA's first row), so the meter runs on continuously into HA's rows.
    offset = after5[first]["state"] - after5[first]["sum"]
    for t, r in after_h.items():
        if t < seam:
            assert abs((r["state"] - r["sum"]) - offset) < TOL, (
                f"prepended hour {_when(t)}: state {r['state']!r}, sum {r['sum']!r}; HA's "
                f"meter offset is {offset!r}")
    assert all(r["change"] >= -TOL for r in after_h.values()), "a negative hour"

    # 4. HA's next compile continues without a step.
    window = (now() // FIVE) * FIVE
    fresh = wait_for_window(ha, poster, window)
    prev = max(t for t in fresh if t < window)
    grown = fresh[window]["state"] - fresh[prev]["state"]
    assert abs(fresh[window]["change"] - grown) < TOL, (
        f"HA's compile after the import {_when(window)}: change {fresh[window]['change']!r}, "
        f"meter grew {grown!r}")
    assert abs(fresh[window]["sum"] - fresh[prev]["sum"] - grown) < TOL
    time.sleep(1)
    assert not log_problems(ha), log_problems(ha)
