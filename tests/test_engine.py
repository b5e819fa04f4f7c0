"""The pure engine: kinds, splitting across slot edges, resets, integration, means, seams."""

from __future__ import annotations

import numpy as np
import pytest

from backdate.engine.curve import covered_slots, slot_amounts
from backdate.engine.plan import SumSlots, plan_sum_table
from backdate.engine.prepare import prepare, validate_statistic_id
from backdate.engine.units import conversion, unit_class
from backdate.errors import InputError
from backdate.models import Kind, Series, StatRow, Table
from backdate.targets.base import Neighbourhood

T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z


def series(times, values, ends=None, **kw) -> Series:
    times = np.asarray(times, dtype=float)
    return Series("in.csv", times, np.asarray(values, dtype=float),
                  np.arange(2, times.size + 2), None if ends is None else np.asarray(ends, float),
                  **kw)


def test_delta_interval_straddling_an_hour_is_split_in_proportion():
    # 1.2 kWh over [00:40, 01:20): 0.6 in each hour.
    s = series([T0 + 2400], [1.2], ends=[T0 + 4800])
    p = prepare(s, kind=Kind.DELTA, input_unit="kWh", statistic_unit="kWh")
    assert p.hours.starts.tolist() == [T0, T0 + 3600]
    assert p.hours.amounts == pytest.approx([0.6, 0.6])
    five = p.five_minute(p.hours.starts)
    assert five.starts.size == 24  # every window of both hours, 0 where the input is silent
    assert five.amounts == pytest.approx([0.0] * 8 + [0.15] * 8 + [0.0] * 8)


def test_delta_without_end_uses_the_common_spacing_and_keeps_gaps_empty():
    times = [T0, T0 + 900, T0 + 1800, T0 + 7200]  # 15-min data, then a gap
    p = prepare(series(times, [1, 1, 1, 1]), kind=Kind.DELTA, input_unit="Wh",
                statistic_unit="kWh")
    assert p.hours.starts.tolist() == [T0, T0 + 7200]  # the empty hour gets no row
    assert p.hours.amounts == pytest.approx([0.003, 0.001])


def test_overlapping_intervals_name_the_line():
    s = series([T0, T0 + 600], [1, 1], ends=[T0 + 900, T0 + 1500])
    with pytest.raises(InputError, match=r"in.csv:3: interval overlaps the one at in.csv:2"):
        prepare(s, kind=Kind.DELTA, input_unit="kWh", statistic_unit="kWh")


def test_cumulative_meter_replacement_counts_the_new_meter_from_zero():
    times = T0 + np.arange(6) * 3600
    values = [5000.0, 5001.0, 5003.0, 0.5, 1.5, 4.0]  # replaced between 02:00 and 03:00
    p = prepare(series(times, values), kind=Kind.CUMULATIVE, input_unit="kWh",
                statistic_unit="kWh")
    assert p.hours.amounts == pytest.approx([1.0, 2.0, 0.5, 1.0, 2.5])
    assert (p.hours.amounts >= 0).all()


def test_cumulative_jitter_is_not_counted_twice():
    times = T0 + np.arange(4) * 3600
    p = prepare(series(times, [100.0, 99.9, 100.0, 101.0]), kind=Kind.CUMULATIVE,
                input_unit="kWh", statistic_unit="kWh")
    assert p.hours.amounts == pytest.approx([0.0, 0.0, 1.0])


def test_power_is_integrated_exactly_across_slot_edges():
    # A ramp from 0 W to 3600 W over two hours: 1 hour of avg 900 W, then avg 2700 W.
    s = series([T0, T0 + 7200], [0.0, 3600.0])
    p = prepare(s, kind=Kind.POWER, input_unit="W", statistic_unit="Wh", max_gap=7200)
    assert p.hours.amounts == pytest.approx([900.0, 2700.0])
    assert p.total == pytest.approx(3600.0)


def test_power_gaps_longer_than_max_gap_add_nothing():
    s = series([T0, T0 + 600, T0 + 600 + 7200, T0 + 600 + 7800], [1000.0] * 4)
    p = prepare(s, kind=Kind.POWER, input_unit="W", statistic_unit="kWh", max_gap=3600)
    assert p.total == pytest.approx(2 * 1000 * 600 / 3600 / 1000)


def test_mean_is_time_weighted_and_held_until_the_next_sample():
    # 10 °C for 45 min then 20 °C for 15 min -> 12.5 °C; min 10, max 20.
    s = series([T0, T0 + 2700, T0 + 3600], [10.0, 20.0, 30.0])
    p = prepare(s, kind=Kind.MEAN, input_unit="°C", statistic_unit="°C")
    rows = p.hourly_means
    assert rows.starts[0] == T0
    assert rows.mean[0] == pytest.approx(12.5)
    assert (rows.min[0], rows.max[0]) == (10.0, 20.0)


def test_covered_slots_and_amounts_for_non_contiguous_spans():
    spans = np.array([[T0, T0 + 300], [T0 + 3600, T0 + 3900]])
    slots = covered_slots(spans, 300)
    assert slots.tolist() == [T0, T0 + 3600]
    _ = slot_amounts


def test_units_convert_and_refuse():
    assert conversion("Wh", "kWh").factor == pytest.approx(1e-3)
    assert conversion("°F", "°C").offset == pytest.approx(-32 * 5 / 9)
    assert unit_class("KWH") == "energy" and unit_class("m3") == "volume"
    with pytest.raises(InputError, match="cannot be converted"):
        conversion("m³", "kWh")


@pytest.mark.parametrize("good", ["backdate:house", "sensor.energy_total", "a1:b_2"])
def test_statistic_ids_ha_accepts(good):
    validate_statistic_id(good)


@pytest.mark.parametrize("bad", ["backdate:House", "backdate:_x", "x__y:z", "sensor:", "nocolon",
                                 "sensor.a__b", "a:b:c"])
def test_statistic_ids_ha_refuses(bad):
    with pytest.raises(InputError, match="not one Home Assistant accepts"):
        validate_statistic_id(bad)


def test_plan_prepend_keeps_the_seam_hour_and_shifts_later_rows():
    later = [StatRow(T0 + 10 * 3600 + i * 3600, sum=5.0 + i) for i in range(3)]
    nb = Neighbourhood(None, [], later[0], 3)
    slots = SumSlots(T0 + np.arange(10) * 3600.0, np.ones(10))
    plan, walk = plan_sum_table(Table.HOURLY, slots, nb, after_count=3)
    assert [r.sum for r in plan.upserts] == list(np.arange(1.0, 11.0))
    assert plan.shift_from == T0 + 10 * 3600 and plan.shift == pytest.approx(10.0)
    # The first existing row's change stays 5.0 (it was the first row: change = its sum).
    assert later[0].sum + plan.shift - plan.upserts[-1].sum == pytest.approx(5.0)
    assert walk.shift == pytest.approx(10.0)


def test_plan_correction_inside_existing_data_keeps_both_edges():
    old = [StatRow(T0 + i * 3600, sum=float(i + 1)) for i in range(10)]  # 1 per hour
    nb = Neighbourhood(old[2], old[3:6], old[6], 4)
    slots = SumSlots(T0 + np.arange(3, 6) * 3600.0, np.full(3, 2.0))
    plan, _ = plan_sum_table(Table.HOURLY, slots, nb, after_count=4)
    assert [r.sum for r in plan.upserts] == [5.0, 7.0, 9.0]
    assert (plan.inserted, plan.updated) == (0, 3)
    assert plan.shift == pytest.approx(3.0)


def test_plan_keeps_existing_rows_the_input_does_not_cover():
    old = [StatRow(T0 + i * 3600, sum=float(2 * (i + 1))) for i in range(4)]  # 2 per hour
    nb = Neighbourhood(None, old, None, 0)
    slots = SumSlots(np.array([T0, T0 + 3 * 3600.0]), np.array([1.0, 1.0]))
    plan, _ = plan_sum_table(Table.HOURLY, slots, nb)
    sums = {r.start_ts: r.sum for r in plan.upserts}
    # Hours 1 and 2 keep their change of 2 but move down by 1.
    assert sums == {T0: 1.0, T0 + 3600: 3.0, T0 + 7200: 5.0, T0 + 10800: 6.0}


def _empty_fetch(table, start, end):
    return Neighbourhood(None, [], None, 0)


def test_entity_statistics_skip_windows_ha_has_not_compiled():
    from backdate.engine.prepare import PlanPolicy, build_plan, new_meta

    times = T0 + np.arange(48) * 900.0  # 12 hours of 15-minute data
    p = prepare(series(times, np.ones(48)), kind=Kind.DELTA, input_unit="kWh",
                statistic_unit="kWh")
    meta = new_meta("sensor.grid_energy", kind=Kind.DELTA, unit="kWh", name=None)
    assert meta.source == "recorder"
    compiled_end = T0 + 6 * 3600 + 1200  # HA compiled up to 06:20
    policy = PlanPolicy(now=T0 + 12 * 3600 + 60, compiled_by_ha=True,
                        last_compiled_end=compiled_end)
    plan = build_plan(meta, False, p, _empty_fetch, policy)
    assert plan.hourly.rows.start_ts[-1] == T0 + 5 * 3600  # 06:00 is not closed in HA yet
    assert plan.short_term.rows.start_ts[-1] + 300 <= compiled_end
    assert any("not compiled" in note for note in plan.notes)


def test_external_statistics_are_not_cut():
    from backdate.engine.prepare import PlanPolicy, build_plan, new_meta

    times = T0 + np.arange(48) * 900.0
    p = prepare(series(times, np.ones(48)), kind=Kind.DELTA, input_unit="kWh",
                statistic_unit="kWh")
    meta = new_meta("backdate:grid", kind=Kind.DELTA, unit="kWh", name=None)
    policy = PlanPolicy(now=T0 + 12 * 3600, compiled_by_ha=False, last_compiled_end=T0)
    plan = build_plan(meta, False, p, _empty_fetch, policy)
    assert plan.hourly.count == 12 and plan.short_term.count == 144


def test_cumulative_glitch_that_comes_straight_back_is_ignored_and_reported():
    times = T0 + np.arange(5) * 3600
    p = prepare(series(times, [5000.0, 5001.0, 0.0, 5002.0, 5003.0]), kind=Kind.CUMULATIVE,
                input_unit="kWh", statistic_unit="kWh")
    assert p.hours.amounts == pytest.approx([1.0, 0.0, 1.0, 1.0])
    assert any("in.csv:4" in n and "glitch" in n for n in p.notes)


def test_cumulative_reset_is_reported_with_its_line():
    times = T0 + np.arange(4) * 3600
    p = prepare(series(times, [5000.0, 5001.0, 0.5, 1.5]), kind=Kind.CUMULATIVE,
                input_unit="kWh", statistic_unit="kWh")
    assert p.hours.amounts == pytest.approx([1.0, 0.5, 1.0])
    assert any("in.csv:4" in n and "reset" in n for n in p.notes)


def test_entity_statistics_keep_has_meter_state_so_the_next_compile_adds_no_step():
    # HA wrote rows for sensor.x with state = meter (5000 + sum); we correct two hours and
    # prepend one. Every row must keep state - sum equal to HA's meter offset afterwards.
    ha_rows = [StatRow(T0 + i * 3600, state=5000.0 + i + 1, sum=float(i + 1)) for i in range(6)]
    nb = Neighbourhood(ha_rows[1], ha_rows[2:4], ha_rows[4], 2)
    slots = SumSlots(T0 + np.array([2.0, 3.0]) * 3600, np.array([3.0, 3.0]))
    plan, _ = plan_sum_table(Table.HOURLY, slots, nb, after_count=2, keep_meter=True)
    assert [r.state for r in plan.upserts] == [5003.0, 5004.0]  # HA's meter readings stay
    # A new hour before everything: its state continues HA's meter backwards.
    nb = Neighbourhood(None, [], ha_rows[0], 6)
    slots = SumSlots(np.array([T0 - 3600.0]), np.array([2.0]))
    plan, _ = plan_sum_table(Table.HOURLY, slots, nb, after_count=6, keep_meter=True)
    new_first_sum = ha_rows[0].sum + plan.shift
    assert plan.upserts[0].state == pytest.approx(ha_rows[0].state - (new_first_sum - 2.0))


def test_a_short_run_of_bad_readings_is_a_glitch_not_a_reset():
    times = T0 + np.arange(6) * 3600
    p = prepare(series(times, [5000.0, 5001.0, 0.0, 0.0, 5003.0, 5004.0]),
                kind=Kind.CUMULATIVE, input_unit="kWh", statistic_unit="kWh")
    # 5001 -> 5003 happened over the glitch hours; nothing is counted twice, nothing spikes.
    assert p.total == pytest.approx(4.0)
    assert max(p.hours.amounts) < 5
    assert sum("glitch" in n for n in p.notes) == 2


def test_mean_slot_covered_in_part_keeps_the_old_mean_for_the_rest():
    from backdate.engine.plan import plan_mean_table

    old = [StatRow(T0, mean=22.5, min=20.0, max=25.0)]
    nb = Neighbourhood(None, old, None, 0)
    plan = plan_mean_table(Table.HOURLY, np.array([T0]), np.array([10.0]), np.array([10.0]),
                           np.array([10.0]), nb, covered=np.array([900.0]))
    row = plan.upserts[0]
    assert row.mean == pytest.approx(10.0 * 0.25 + 22.5 * 0.75)
    assert (row.min, row.max) == (10.0, 25.0)
    again = plan_mean_table(Table.HOURLY, np.array([T0]), np.array([22.5]), np.array([20.0]),
                            np.array([25.0]), nb)
    assert again.count == 0 and again.unchanged == 1  # a re-import writes nothing


def test_entity_hourly_rows_take_has_meter_from_5_minute_rows_when_no_hour_exists():
    # HA compiled one 5-minute row so far (its first hour): state 5000.35 (meter), sum 0.35.
    from backdate.engine.prepare import PlanPolicy, build_plan, new_meta

    end = T0 + 3 * 3600
    ha_row = StatRow(end, state=5000.35, sum=0.35)

    def fetch(table, start, stop):
        if table is Table.SHORT_TERM and ha_row.start_ts >= stop:
            return Neighbourhood(None, [], ha_row, 1)
        return Neighbourhood(None, [], None, 0)

    times = T0 + np.arange(12) * 900.0
    p = prepare(series(times, np.full(12, 0.5)), kind=Kind.DELTA, input_unit="kWh",
                statistic_unit="kWh")
    meta = new_meta("sensor.grid_energy", kind=Kind.DELTA, unit="kWh", name=None)
    plan = build_plan(meta, True, p, fetch, PlanPolicy(now=end + 600, compiled_by_ha=True,
                                                       last_compiled_end=end + 300,
                                                       short_term_days=1e6))
    # The meter at the end of the window is 5000.35 - 0.35 = 5000: every new row continues it.
    hourly = plan.hourly.upserts
    assert [r.state for r in hourly] == pytest.approx([4996.0, 4998.0, 5000.0])
    assert plan.short_term.upserts[-1].state == pytest.approx(5000.0)
