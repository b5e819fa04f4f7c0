"""backdate's own backup files: their manifest, which database they belong to, and pruning.

A backup is one JSON-lines file: the first line is the manifest (which database it came from,
its schema version, the statistics the import touched, when, and which backdate wrote it), then
the metadata row and every row of each of those statistics. `restore` reads the manifest first
and refuses a backup of any other database; pruning only ever deletes files whose manifest
says backdate made them for the same database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 2  # manifest version; 1 = the first server backups (no database identity)
DEFAULT_KEEP = 3  # backups kept per database after each import
SUFFIX = ".jsonl"


@dataclass(frozen=True, slots=True)
class Manifest:
    """The first line of a backup file."""

    path: Path
    format: int
    engine: str
    url: str
    database: str | None  # identity of the database (its first schema_changes row)
    schema_version: int | None
    created: str
    statistic_ids: list[str]
    backdate_version: str | None
    compiled_end: float | None  # end of HA's newest compiled window when the backup was taken
    raw: dict[str, Any]

    def belongs_to(self, url: str, database: str | None) -> bool:
        """Same database: the identity when both sides know it, else the same URL."""
        if self.database is not None and database is not None:
            return self.database == database
        return self.url == url


def read_manifest(path: Path) -> Manifest | None:
    """The manifest of a backdate row backup, or None when `path` is not one."""
    try:
        with path.open("r", encoding="utf-8") as fh:
            first = fh.readline()
        head = json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(head, dict) or head.get("backdate_backup") not in (1, FORMAT):
        return None
    ids = head.get("statistic_ids")
    if not isinstance(ids, list):
        return None
    return Manifest(
        path=path, format=int(head["backdate_backup"]), engine=str(head.get("engine")),
        url=str(head.get("url")), database=head.get("database"),
        schema_version=head.get("schema_version"), created=str(head.get("created", "")),
        statistic_ids=[str(i) for i in ids], backdate_version=head.get("backdate_version"),
        compiled_end=head.get("compiled_end"), raw=head)


def backups_of(folder: Path, url: str, database: str | None) -> list[Manifest]:
    """Every backdate row backup in `folder` that belongs to this database, oldest first."""
    found: list[Manifest] = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.endswith(SUFFIX) and p.is_file()]
    except OSError:
        return []
    for candidate in candidates:
        manifest = read_manifest(candidate)
        if manifest is not None and manifest.belongs_to(url, database):
            found.append(manifest)
    return sorted(found, key=lambda m: (m.created, m.path.name))


def prune(latest: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` backups of the database `latest` belongs to (in its
    folder); returns what was deleted. `latest` itself is never deleted."""
    manifest = read_manifest(latest)
    if manifest is None or keep < 1:
        return []
    mine = [m for m in backups_of(latest.parent, manifest.url, manifest.database)
            if m.path != latest]
    surplus = mine[: max(0, len(mine) - (keep - 1))]
    removed: list[Path] = []
    for old in surplus:
        try:
            old.path.unlink()
        except OSError:
            continue
        removed.append(old.path)
    return removed
