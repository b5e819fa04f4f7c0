"""Targets named by URL (PRODUCT.md, "Where data goes and comes from")."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backdate.domain.urls import mask_url
from backdate.errors import RefusedError, UsageError
from backdate.store.backups import DEFAULT_KEEP, prune, read_manifest
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


@dataclass(slots=True)
class BackupMade:
    """A backup an import wrote, the backups of the same database pruned after it, and the
    command that undoes the import."""

    path: Path
    pruned: list[Path]
    restore_command: str


def backup_target(url: str, target: StatisticsTarget, statistic_ids: list[str] | None = None,
                  *, keep: int = DEFAULT_KEEP) -> BackupMade | None:
    """Back up before writing: the rows (both tables) and metadata of every statistic the
    plans touch, with a manifest naming the database. SQLite: beside the database as
    `<db>.backdate-<UTC time>.jsonl`; MariaDB/MySQL and PostgreSQL: `backdate-backup-<UTC
    time>.jsonl` in the current directory. Then all but the newest `keep` backups of the same
    database in that folder are deleted. None on HA's API (HA's own backups hold its
    database)."""
    backup = getattr(target, "backup_statistics", None)
    if backup is None:
        return None
    path = sqlite_path(url)
    if path is None:
        made = backup(statistic_ids)
    else:
        made = backup(statistic_ids, directory=path.parent or Path("."),
                      prefix=f"{path.name}.backdate-")
    pruned = prune(made, keep)
    return BackupMade(made, pruned, f"backdate restore {shlex.quote(str(made))} --to "
                      f"{shlex.quote(mask_url(url))}")


Confirm = Callable[[str], bool]


def restore_target(backup: str, url: str, *, force: bool = False, whole_file: bool = False,
                   confirm: Confirm | None = None) -> str:
    """Undo an import from its backup; returns what was done, in words.

    A row backup (what every import writes) must belong to this database (its manifest) and
    puts back exactly the statistics the import touched, in one transaction, so a running Home
    Assistant loses nothing else; refused while HA wrote rows of those statistics after the
    backup unless `force`. A whole-file `.bak` of an older backdate replaces the whole SQLite
    file, only with `whole_file` (Home Assistant must be stopped). `confirm` is asked before
    anything is written; False means nothing is done (RefusedError)."""
    bak = Path(backup)
    if not bak.is_file():
        raise UsageError(f"no such backup file: {backup}")
    url = target_url(url)
    manifest = read_manifest(bak)
    path = sqlite_path(url)
    if whole_file:
        if manifest is not None:
            raise UsageError(f"{bak} is a row backup: restore it without --whole-file")
        if path is None:
            raise UsageError("--whole-file restores a SQLite .bak file onto a sqlite:/// target")
        from backdate.targets.recorder_db import restore_sqlite

        question = (f"Replace the whole database {path} with {bak}? Everything written since "
                    "the backup is lost. Stop Home Assistant first.")
        if confirm is not None and not confirm(question):
            raise RefusedError("not restored: nothing was changed")
        restore_sqlite(bak, path)
        return f"replaced {path} with the whole-file backup {bak}"
    if manifest is None:
        if _is_sqlite_file(bak):
            raise RefusedError(
                f"{bak} is a whole-file backup (an older backdate): restoring it replaces the "
                "whole database and loses everything written since, Home Assistant's rows "
                "included. Stop Home Assistant first, then add --whole-file")
        raise UsageError(f"{bak} is not a backdate backup (no manifest line)")
    from backdate.targets.recorder_db import open_recorder

    if not url.startswith(DATABASE_SCHEMES):
        raise UsageError(f"restore writes a recorder database (sqlite:///, mysql://, "
                         f"postgresql://), not {url}")
    with open_recorder(url) as target:
        saved = target.load_backup(bak)
        if not force:
            lost = target.lost_by_restore(saved)
            if lost:
                raise RefusedError(
                    f"not restoring {bak}: Home Assistant wrote rows after the backup that the "
                    "restore would delete: " + "; ".join(lost)
                    + ". Use --force to restore anyway and lose them")
        counts = saved.row_counts()
        what = ", ".join(f"{sid} ({counts[sid]:,} rows)" if saved.metas[sid] is not None
                         else f"{sid} (did not exist: removed)" for sid in saved.ids)
        question = (f"Put back {what} as of {saved.created} (the backup {bak.name}); nothing "
                    "else in the database changes.")
        if confirm is not None and not confirm(question):
            raise RefusedError("not restored: nothing was changed")
        target.restore_statistics(saved, force=force)
    return f"restored {what} in {mask_url(url)} from {bak}"


def _is_sqlite_file(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False
