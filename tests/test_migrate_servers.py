"""`backdate migrate` on MariaDB and PostgreSQL databases loaded from HA-made dumps (schema 42
and 53): a `--map` of two pairs with keep-source in one transaction, then `restore` from its
row backup; `--dry-run` and a refused unit leave every row as it was; a rename into an entity
id moves the metadata row and anchors the sum.

Why: the database path is the same code for every engine, but SQL dialects, quoting (`sum`)
and the row backup differ; these are the servers' own answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import migrate_data as md
import pytest

pytest.register_assert_rewrite("services")
import services  # noqa: E402
from live_meter import describe, run_backdate  # noqa: E402
from test_cli_sqlite import backdate  # noqa: E402
from test_migrate import NEW_END, NEW_START, TOL, new_meter, old_meter  # noqa: E402
from test_recorder_servers import ServerDb  # noqa: E402

PAIRS = [("sensor.powerwall_import", "sensor.teslemetry_import"),
         ("sensor.powerwall_export", "sensor.teslemetry_export")]


@pytest.fixture(params=[("mariadb", 53), ("postgresql", 42)], ids=["mariadb53", "postgresql42"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerDb]:
    engine, schema = request.param
    (services.ensure_mariadb if engine == "mariadb" else services.ensure_postgresql)()
    db = ServerDb(engine, schema)
    try:
        yield db
    finally:
        db.drop()


def test_map_keep_source_restore_dry_run_refusal_and_rename(server: ServerDb,
                                                            tmp_path: Path) -> None:
    metres = {}
    for i, (old_id, new_id) in enumerate(PAIRS):
        metres[old_id] = old_meter(old_id, seed=80 + i)
        metres[new_id] = new_meter(new_id, seed=90 + i)
    third = old_meter("sensor.old_third", seed=99)
    gas = md.make_meter("sensor.gas", "m³", NEW_START, NEW_END, seed=9, scale=0.01, meter0=0.0)
    for m in [*metres.values(), third, gas]:
        md.write_meter(server.url, m)
    mapping = tmp_path / "pairs.toml"
    mapping.write_text('"sensor.powerwall_*" = "sensor.teslemetry_*"\n')
    before = server.dump()

    dry = backdate("migrate", "--yes", server.url, "--map", mapping, "--overlap", "keep-source",
                   "--dry-run")
    assert "DRY RUN" in dry.stdout
    refused = backdate("migrate", "--yes",
                       server.url, "--from", PAIRS[0][0], "--into", "sensor.gas",
                       expect=1)
    assert "cannot be converted" in refused.stderr
    assert server.dump() == before, "--dry-run or a refusal changed a row"

    done = run_backdate("migrate", "--yes",
                        server.url, "--map", mapping, "--overlap", "keep-source",
                        cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    for old_id, new_id in PAIRS:
        got = md.changes_of(md.read_rows(server.url, new_id))
        want = md.expected_merge(metres[old_id], metres[new_id], 1e-3, "keep-source")
        assert sorted(got) == sorted(want)
        assert max(abs(got[t] - want[t]) for t in want) < TOL
    [backup] = list(tmp_path.glob("backdate-backup-*.jsonl"))
    assert str(backup.name) in done.stdout
    backdate("restore", backup, "--to", server.url, "--yes")
    assert server.dump() == before, "restore did not bring every row back"

    for old in tmp_path.glob("backdate-backup-*.jsonl"):
        old.unlink()
    moved = run_backdate("migrate", "--yes", server.url, "--from", "sensor.old_third", "--into",
                         "sensor.third", cwd=tmp_path)
    assert moved.returncode == 0, describe(moved)
    assert md.read_rows(server.url, "sensor.third") == third.hourly
    five = md.read_rows(server.url, "sensor.third", "statistics_short_term")
    last = max(third.five)
    assert five[last + 300] == (None, pytest.approx(third.five[last][1]))
    assert server.meta("sensor.third")["source"] == "recorder"
    [backup] = list(tmp_path.glob("backdate-backup-*.jsonl"))
    backdate("restore", backup, "--to", server.url, "--yes")
    assert server.dump() == before, "restore did not undo the rename"
