"""An imported statistic is usable in Home Assistant's Energy dashboard, by HA's own checks.

Why: peer tools' external statistics were not selectable in the Energy dashboard or were
flagged by its validation (peer-lessons §3.6). HA decides that with `energy/validate`; this
test configures the dashboard with what backdate wrote and asks HA.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import datagen as dg
import pytest
from ha_harness import HomeAssistant
from test_ha_import import BACKDATE, last_full_hour

pytestmark = pytest.mark.ha


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    instance = HomeAssistant(tmp_path_factory.mktemp("ha_energy"), venv=ha_venv,
                             extra_config="energy:\n")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def test_imported_statistics_pass_the_energy_dashboards_validation(ha: HomeAssistant,
                                                                   tmp_path: Path) -> None:
    end = last_full_hour()
    intervals = dg.quarter_hour_deltas(end - timedelta(days=2), end, seed=7)
    grid = dg.write_delta_csv(tmp_path / "grid.csv", intervals)
    solar = dg.write_delta_csv(tmp_path / "solar.csv", dg.scaled(intervals, 0.5),
                               value_column="delta")
    for path, sid in ((grid, "backdate:grid_import"), (solar, "backdate:solar_yield")):
        done = subprocess.run([BACKDATE, "import", str(path), "--to", f"sqlite:///{ha.db_path}",
                               "--statistic-id", sid, "--no-backup", "--yes"],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    with ha.ws() as ws:
        ws.call("energy/save_prefs", energy_sources=[
            {"type": "grid", "flow_from": [{"stat_energy_from": "backdate:grid_import",
                                            "stat_cost": None, "entity_energy_price": None,
                                            "number_energy_price": None}],
             "flow_to": [], "cost_adjustment_day": 0},
            {"type": "solar", "stat_energy_from": "backdate:solar_yield",
             "config_entry_solar_forecast": None},
        ], device_consumption=[])
        prefs = ws.call("energy/get_prefs")
        result = ws.call("energy/validate")
        listed = ws.call("recorder/list_statistic_ids", statistic_type="sum")
    assert {s["type"] for s in prefs["energy_sources"]} == {"grid", "solar"}
    problems = [issue for group in result["energy_sources"] for issue in group]
    assert problems == [], f"HA's energy validation flagged the imported statistics: {problems}"
    ids = {item["statistic_id"]: item for item in listed}
    for sid in ("backdate:grid_import", "backdate:solar_yield"):
        assert ids[sid]["source"] == "backdate"
        assert ids[sid]["statistics_unit_of_measurement"] == "kWh"
        assert ids[sid]["has_sum"] is True
