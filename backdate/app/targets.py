"""Targets named by URL (PRODUCT.md, "Where data goes and comes from")."""

from __future__ import annotations

from pathlib import Path

from backdate.errors import TargetError, UsageError
from backdate.targets.base import StatisticsTarget

DATABASE_SCHEMES = ("sqlite:", "mysql:", "mysql+pymysql:", "mariadb:", "postgresql:",
                    "postgresql+psycopg:", "postgres:")


def open_target(url: str) -> StatisticsTarget:
    """A database URL opens HA's recorder database; http(s) is HA's WebSocket API."""
    if url.startswith(DATABASE_SCHEMES):
        from backdate.targets.recorder_db import open_recorder

        return open_recorder(url)
    if url.startswith(("http://", "https://")):
        raise TargetError(
            f"{url}: the WebSocket target is not built yet; write the recorder database "
            "directly (sqlite:///..., mysql://..., postgresql://...)"
        )
    raise UsageError(
        f"unknown target {url!r}: use sqlite:///path/home-assistant_v2.db, mysql://..., "
        "postgresql://..."
    )


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite:/// URL (HA's db_url syntax), else None."""
    if not url.startswith("sqlite:"):
        return None
    rest = url.split(":", 1)[1]
    if rest.startswith("///"):
        return Path(rest[3:].split("?", 1)[0])
    raise UsageError(f"{url}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")


def backup_target(url: str, target: StatisticsTarget) -> Path | None:
    """Back up before writing. SQLite: the whole file through SQLite's backup API."""
    path = sqlite_path(url)
    if path is None:
        raise TargetError(f"{url}: --backup is implemented for SQLite only so far; "
                          "use --no-backup after your own database dump")
    from backdate.targets.recorder_db import backup_sqlite

    _ = target
    return backup_sqlite(path)


def restore_target(backup: str, url: str) -> None:
    path = sqlite_path(url)
    if path is None:
        raise TargetError(f"{url}: restore is implemented for SQLite only so far")
    if not Path(backup).exists():
        raise UsageError(f"no such backup file: {backup}")
    from backdate.targets.recorder_db import restore_sqlite

    restore_sqlite(Path(backup), path)
