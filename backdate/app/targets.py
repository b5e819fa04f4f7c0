"""Targets named by URL (PRODUCT.md, "Where data goes and comes from")."""

from __future__ import annotations

import re
from pathlib import Path

from backdate.domain.urls import mask_url
from backdate.errors import UsageError
from backdate.targets.base import StatisticsTarget

DATABASE_SCHEMES = ("sqlite:", "mysql:", "mysql+pymysql:", "mariadb:", "postgresql:",
                    "postgresql+psycopg:", "postgres:")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def target_url(text: str, base: Path | None = None) -> str:
    """A plain file path names a SQLite recorder database: the absolute `sqlite:////…` URL of
    it (relative paths from `base`, default the working directory). URLs stay as given."""
    if _SCHEME.match(text):
        return text
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return f"sqlite:///{path}"


def open_target(url: str) -> StatisticsTarget:
    """A database URL (or a plain file path) opens HA's recorder database; http(s) is HA's
    WebSocket API (ws(s):// names the WebSocket itself, e.g. the Supervisor's
    ws://supervisor/core/websocket)."""
    url = target_url(url)
    if url.startswith(DATABASE_SCHEMES):
        from backdate.targets.recorder_db import open_recorder

        return open_recorder(url)
    if url.startswith(("http://", "https://", "ws://", "wss://")):
        import os

        from backdate.targets.ha_ws import open_websocket

        # The CLI's --token lands in HA_TOKEN (so it never needs to reach a log line).
        return open_websocket(url, os.environ.get("HA_TOKEN"))
    raise UsageError(
        f"unknown target {mask_url(url)!r}: use sqlite:////path/home-assistant_v2.db, "
        "mysql://..., postgresql://... or http(s)://host:8123"
    )


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite:/// URL (HA's db_url syntax) or a plain path, else None."""
    url = target_url(url)
    if not url.startswith("sqlite:"):
        return None
    rest = url.split(":", 1)[1]
    if rest.startswith("///"):
        return Path(rest[3:].split("?", 1)[0])
    raise UsageError(f"{url}: a SQLite URL is sqlite:////absolute/path (or "
                     "sqlite:///relative/path, from the working directory)")


def backup_target(url: str, target: StatisticsTarget,
                  statistic_ids: list[str] | None = None) -> Path | None:
    """Back up before writing. SQLite: the whole file through SQLite's backup API.
    MariaDB/MySQL and PostgreSQL: the rows (both tables) and metadata of every statistic the
    plans touch, to `backdate-backup-<UTC time>.jsonl` in the current directory."""
    path = sqlite_path(url)
    if path is None:
        backup = getattr(target, "backup_statistics", None)
        if backup is None:  # HA through its API: HA's own backups hold the database
            return None
        return backup(statistic_ids)
    from backdate.targets.recorder_db import backup_sqlite

    return backup_sqlite(path)


def restore_target(backup: str, url: str, *, force: bool = False) -> None:
    """Undo an import: SQLite copies the backup file back; MariaDB/MySQL and PostgreSQL put
    the saved statistics' rows and metadata back exactly (one transaction), refusing while
    Home Assistant has compiled newer rows of an entity statistic unless `force`."""
    if not Path(backup).exists():
        raise UsageError(f"no such backup file: {backup}")
    url = target_url(url)
    path = sqlite_path(url)
    if path is None:
        from backdate.targets.recorder_db import open_recorder

        with open_recorder(url) as target:
            target.restore_statistics(backup, force=force)
        return
    from backdate.targets.recorder_db import restore_sqlite

    restore_sqlite(Path(backup), path)
