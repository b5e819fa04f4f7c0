"""Home Assistant's registry records as `serve` keeps them: devices, entities, areas, config
entries, states, and the gaps in which the mirror may have missed something.

Pure vocabulary: HA's own field names are kept as HA sends them (the read API passes them on),
and the two device shapes HA has used are brought to one: the old `config_entries` list and the
newer single `config_entry_id`, and child devices named by `via_device_id` (older) or
`parent_device_id`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("devices", "entities", "areas", "config_entries")


def device_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A device as stored: HA's fields plus `config_entries`, `config_entry_id` and
    `parent_device_id` filled from whichever shape HA sent."""
    rec = dict(raw)
    entries = list(rec.get("config_entries") or [])
    primary = rec.get("primary_config_entry") or rec.get("config_entry_id")
    if primary and primary not in entries:
        entries.insert(0, primary)
    rec["config_entries"] = entries
    rec["config_entry_id"] = primary or (entries[0] if entries else None)
    parent = rec.get("parent_device_id") or rec.get("via_device_id")
    rec["parent_device_id"] = parent
    rec.setdefault("via_device_id", parent)
    return rec


def domain_of(entity_id: str) -> str:
    return entity_id.partition(".")[0]


@dataclass(slots=True)
class Snapshot:
    """One full copy of a home's registries (and, optionally, its states), taken in one go
    after HA reported RUNNING; it replaces whatever the store held for that home."""

    devices: list[dict[str, Any]] = field(default_factory=list)
    entities: list[dict[str, Any]] = field(default_factory=list)
    areas: list[dict[str, Any]] = field(default_factory=list)
    config_entries: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] | None = None
    taken_at: float = 0.0

    def counts(self) -> dict[str, int]:
        out = {k: len(getattr(self, k)) for k in KINDS}
        if self.states is not None:
            out["states"] = len(self.states)
        return out


@dataclass(slots=True)
class Diff:
    """What replacing a snapshot changed: keys added, removed, and changed, per kind."""

    added: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)

    def note(self, kind: str, added: Iterable[str], removed: Iterable[str], changed: int
             ) -> None:
        self.added[kind] = sorted(added)
        self.removed[kind] = sorted(removed)
        self.changed[kind] = changed

    @property
    def empty(self) -> bool:
        return not any(self.added.values()) and not any(self.removed.values()) and \
            not any(self.changed.values())

    def summary(self) -> str:
        parts = []
        for kind in (*KINDS, "states"):
            a, r = len(self.added.get(kind, ())), len(self.removed.get(kind, ()))
            c = self.changed.get(kind, 0)
            if a or r or c:
                parts.append(f"{kind} +{a} -{r} ~{c}")
        return ", ".join(parts) or "no change"
