"""What no meter can produce, and what is probably a mistake: rules on values, no I/O.

A sum is a float64: at 2^52 × 1e-6 kWh (about 4.5 billion kWh) its spacing reaches the
1e-6 kWh steps the Energy dashboard adds up, so any sum beyond that can no longer grow by a
household's hour correctly. Values beyond the physical bounds below are not readings of any
meter; values about 1000× what the statistic already holds are usually a forgotten `--unit Wh`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backdate.engine import units

STEP = 1e-6  # the smallest step a sum must still resolve, in kWh (or m³, or the own unit)
SUM_LIMIT = STEP * 2.0**52  # ≈ 4.5e9: beyond it float64 spacing exceeds STEP
# The most any single reading can be, in the class's base unit (Wh, m³, W, K).
AMOUNT_LIMIT = {"energy": 1e12, "volume": 1e9}  # 1 TWh, 1 km³ in one reading
POWER_LIMIT = 1e11  # 100 GW: more than any grid connection
HOT_LIMIT_K = 1e6  # hotter than any sensor reports
SCALE_LOW, SCALE_HIGH = 300.0, 3000.0  # "about 1000×"


@dataclass(frozen=True, slots=True)
class Implausible:
    """The first reading that no meter can produce: its index and why."""

    index: int
    problem: str


def sum_limit(unit: str | None) -> float:
    """The largest |sum| (in `unit`) that still resolves 1e-6 kWh (energy), 1e-6 m³ (volume)
    or 1e-6 of the unit itself."""
    unit = units.normalize_unit(unit)
    cls = units.unit_class(unit)
    if cls == "energy":
        return SUM_LIMIT * units.ENERGY["kWh"] / units.ENERGY[unit]
    if cls == "volume":
        return SUM_LIMIT * units.VOLUME["m³"] / units.VOLUME[unit]
    return SUM_LIMIT


def first_implausible(values: np.ndarray, *, kind: str, unit: str | None) -> Implausible | None:
    """The first value that is beyond any physical bound for `unit`, or that would leave a sum
    unable to resolve its steps. `kind` is delta, cumulative, power or mean."""
    if values.size == 0:
        return None
    unit = units.normalize_unit(unit)
    cls = units.unit_class(unit)
    bad = np.zeros(values.size, dtype=bool)
    why = ""
    if kind == "power" and cls == "power":
        watts = np.abs(values) * units.POWER[unit]
        bad, why = watts > POWER_LIMIT, f"more than {POWER_LIMIT:g} W, beyond any grid connection"
    elif kind == "cumulative":
        limit = sum_limit(unit)
        bad = np.abs(values) > limit
        why = (f"a meter reading beyond {limit:.3g} {unit or ''}: its sum could no longer "
               "resolve 1e-6 kWh steps").replace("  ", " ")
    elif kind == "delta" and cls in AMOUNT_LIMIT:
        table = units.ENERGY if cls == "energy" else units.VOLUME
        limit = AMOUNT_LIMIT[cls] / table[unit]
        bad = np.abs(values) > limit
        why = f"more than {limit:.3g} {unit} in one reading, beyond any meter"
    elif kind == "delta":
        limit = sum_limit(unit)
        bad, why = np.abs(values) > limit, f"beyond {limit:.3g}: a sum could not resolve it"
    elif kind == "mean" and cls == "temperature":
        kelvin = values * units.conversion(unit, "K").factor + units.conversion(unit, "K").offset
        bad = (kelvin < 0) | (kelvin > HOT_LIMIT_K)
        why = "below absolute zero or hotter than any sensor reports"
    if not bad.any():
        return None
    return Implausible(int(np.argmax(bad)), why)


def scale_ratio(input_amounts: np.ndarray, existing_amounts: np.ndarray) -> float | None:
    """Median of the input's hourly amounts over the statistic's own (positive ones only);
    None when either side has too little to judge."""
    a = input_amounts[input_amounts > 0]
    b = existing_amounts[existing_amounts > 0]
    if a.size < 3 or b.size < 3:
        return None
    return float(np.median(a) / np.median(b))


def about_thousandfold(ratio: float | None) -> bool:
    """The input is about 1000× (or 1/1000 of) what the statistic holds."""
    if ratio is None or ratio <= 0:
        return False
    return SCALE_LOW <= ratio <= SCALE_HIGH or SCALE_LOW <= 1 / ratio <= SCALE_HIGH
