"""Units backdate converts between, grouped by HA's unit classes.

HA's Energy dashboard reads energy and volume; measurements (temperature, power, ...) are
converted where the class is known. Power is a rate: integrating it gives energy.
"""

from __future__ import annotations

from dataclasses import dataclass

from backdate.errors import InputError

# Factors into the class's base unit (Wh for energy, m³ for volume, W for power).
ENERGY = {
    "mWh": 1e-3, "Wh": 1.0, "kWh": 1e3, "MWh": 1e6, "GWh": 1e9, "TWh": 1e12,
    "J": 1 / 3600, "kJ": 1 / 3.6, "MJ": 1e6 / 3600, "GJ": 1e9 / 3600,
    "cal": 4.184 / 3600, "kcal": 4184 / 3600, "Mcal": 4.184e6 / 3600, "Gcal": 4.184e9 / 3600,
}  # fmt: skip
VOLUME = {
    "m³": 1.0, "L": 1e-3, "mL": 1e-6, "ft³": 0.028316846592, "CCF": 2.8316846592,
    "MCF": 28.316846592, "gal": 0.003785411784, "fl. oz.": 2.95735295625e-5,
}  # fmt: skip
POWER = {"mW": 1e-3, "W": 1.0, "kW": 1e3, "MW": 1e6, "GW": 1e9}

ALIASES = {
    "wh": "Wh", "kwh": "kWh", "mwh": "MWh", "gwh": "GWh", "twh": "TWh",
    "w": "W", "kw": "kW", "mw": "MW",
    "m3": "m³", "m^3": "m³", "l": "L", "ml": "mL", "ft3": "ft³",
    "c": "°C", "degc": "°C", "celsius": "°C", "f": "°F", "degf": "°F", "k": "K",
}  # fmt: skip

CLASSES: dict[str, dict[str, float]] = {"energy": ENERGY, "volume": VOLUME, "power": POWER}
TEMPERATURE = ("°C", "°F", "K")


def normalize_unit(unit: str | None) -> str | None:
    """Map common spellings (KWH from Wiener Netze, m3, ...) onto HA's unit strings."""
    if unit is None:
        return None
    text = unit.strip()
    if not text:
        return None
    for table in (ENERGY, VOLUME, POWER):
        if text in table:
            return text
    if text in TEMPERATURE:
        return text
    return ALIASES.get(text.lower(), text)


def unit_class(unit: str | None) -> str | None:
    """HA's `unit_class` for a unit, or None when HA has no converter for it here."""
    unit = normalize_unit(unit)
    if unit is None:
        return None
    for name, table in CLASSES.items():
        if unit in table:
            return name
    if unit in TEMPERATURE:
        return "temperature"
    return None


@dataclass(frozen=True, slots=True)
class Conversion:
    """value_out = value_in * factor + offset."""

    factor: float = 1.0
    offset: float = 0.0


def conversion(from_unit: str | None, to_unit: str | None, *, what: str = "") -> Conversion:
    """How to turn values in `from_unit` into `to_unit`; InputError when they do not fit."""
    src, dst = normalize_unit(from_unit), normalize_unit(to_unit)
    if src == dst or src is None or dst is None:
        return Conversion()
    for table in CLASSES.values():
        if src in table and dst in table:
            return Conversion(table[src] / table[dst])
    if src in TEMPERATURE and dst in TEMPERATURE:
        return _temperature(src, dst)
    raise InputError(f"unit {src!r} cannot be converted into {dst!r}{what}")


def power_to_energy(power_unit: str | None, energy_unit: str) -> float:
    """Factor turning a power value into energy per hour in `energy_unit` (kW -> kWh/h)."""
    src = normalize_unit(power_unit) or "W"
    dst = normalize_unit(energy_unit) or "kWh"
    if src not in POWER:
        raise InputError(f"kind power needs a power unit (W, kW, ...), not {src!r}")
    if dst not in ENERGY:
        raise InputError(f"power integrates into energy, but the statistic's unit is {dst!r}")
    return POWER[src] / ENERGY[dst]  # 1 W for 1 h = 1 Wh


def default_statistic_unit(input_unit: str | None, *, is_power: bool = False) -> str | None:
    """The unit a new statistic is stored in: the unit its input declares (HA accepts L, Wh,
    MWh, ... as they are, so nothing is converted); kWh for power integrated into energy."""
    if is_power:
        return "kWh"
    return normalize_unit(input_unit)


def _temperature(src: str, dst: str) -> Conversion:
    # Into Kelvin, then out.
    to_k = {"°C": (1.0, 273.15), "°F": (5 / 9, 273.15 - 32 * 5 / 9), "K": (1.0, 0.0)}
    a1, b1 = to_k[src]
    a2, b2 = to_k[dst]
    return Conversion(a1 / a2, (b1 - b2) / a2)
