"""backdate's command line: thin. Parses options, calls the application layer, prints with Rich.

Exit codes (PRODUCT.md): 0 done, 1 invalid input or refused (nothing written), 2 usage error,
3 target unreachable or failed.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.text import Text

from backdate.errors import BackdateError, UsageError
from backdate.models import Kind

if TYPE_CHECKING:
    from backdate.app.sync import JobOutcome, VerifyResult

app = typer.Typer(
    name="backdate",
    help="Put energy and sensor history into Home Assistant at the right time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
def _console(stderr: bool = False) -> Console:
    """Rich consoles that never read user data as markup or emoji codes; wide when piped."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else 120
    return Console(stderr=stderr, emoji=False, highlight=False, width=width)


console = _console()
err_console = _console(stderr=True)

TargetArg = Annotated[str, typer.Option("--to", help="Target: sqlite:///path/home-assistant_v2.db, "
                                        "mysql://..., postgresql://..., or http(s)://host:8123 "
                                        "(HA's API; --token or HA_TOKEN)")]
Sources = Annotated[list[str], typer.Argument(help="Input files (CSV, TSV, JSON), or remote "
                                             "sources: influxdb://..., influxdb2://..., "
                                             "wnsm:..., wattivahti:... (README).")]
Start = Annotated[str | None, typer.Option("--start", help="Remote sources: first time to read "
                                           "(ISO time or date; naive in --tz, else UTC).")]
End = Annotated[str | None, typer.Option("--end", help="Remote sources: end of the range to "
                                         "read (exclusive; default now).")]
StatId = Annotated[str | None, typer.Option("--statistic-id", help="Statistic to write, e.g. "
                                            "backdate:house or sensor.energy (default: "
                                            "backdate:<file name>).")]
Name = Annotated[str | None, typer.Option("--name", help="Display name of a new statistic.")]
KindOpt = Annotated[Kind | None, typer.Option("--kind", help="delta: amount per interval; "
                                              "cumulative: meter value; power: rate; mean: "
                                              "measurement.", case_sensitive=False)]
Unit = Annotated[str | None, typer.Option("--unit", help="Unit of the input values (default kWh; "
                                          "W for power).")]
Tz = Annotated[str | None, typer.Option("--tz", help="Time zone of naive times in the input, "
                                        "e.g. Europe/Vienna; also the zone of the day table.")]
TimeCol = Annotated[str | None, typer.Option("--time-column", help="Name of the time column.")]
ValueCol = Annotated[str | None, typer.Option("--value-column", help="Name of the value column.")]
ShortTerm = Annotated[bool, typer.Option("--short-term/--no-short-term",
                                         help="Also write 5-minute rows inside HA's short-term "
                                         "retention (last --short-term-days days).")]
Chart = Annotated[Path | None, typer.Option("--chart", help="Draw the days before and after "
                                            "into this PNG file.")]
Days = Annotated[bool, typer.Option("--days", help="List every day even for long imports.")]
Create = Annotated[bool, typer.Option("--create", help="Create an entity statistic (sensor.x) "
                                      "the target does not know yet (without it, an unknown "
                                      "entity id is refused as a likely typo).")]
Token = Annotated[str | None, typer.Option("--token", help="Long-lived access token for an "
                                           "http(s):// target (default: $HA_TOKEN).",
                                           show_default=False)]


def _use_token(token: str | None) -> None:
    """The token reaches the WebSocket target through HA_TOKEN, never through logs."""
    if token:
        os.environ["HA_TOKEN"] = token


def _fail(err: BackdateError) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), str(err)))
    raise typer.Exit(err.exit_code)


@contextmanager
def _errors():
    try:
        yield
    except BackdateError as err:
        _fail(err)


def _zone(tz: str | None) -> ZoneInfo:
    if tz:
        try:
            return ZoneInfo(tz)
        except Exception:  # noqa: BLE001 - zoneinfo raises several kinds
            raise UsageError(f"unknown time zone {tz!r}") from None
    return _local_zone()


def _local_zone() -> ZoneInfo:
    """The machine's zone (for the day table only), by name; UTC when it has none."""
    name = os.environ.get("TZ")
    if not name:
        try:
            link = os.readlink("/etc/localtime")
            name = link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else None
        except OSError:
            name = None
    try:
        return ZoneInfo(name or "UTC")
    except Exception:  # noqa: BLE001
        return ZoneInfo("UTC")


def _options(statistic_id, name, kind, unit, tz, time_column, value_column, short_term,
             backup=True, short_term_days=10.0, start=None, end=None, create=False):
    from backdate.app.exporting import parse_bound
    from backdate.app.importing import ImportOptions

    zone = _zone(tz) if tz else ZoneInfo("UTC")
    return ImportOptions(statistic_id=statistic_id, name=name, kind=kind, unit=unit, tz=tz,
                         time_column=time_column, value_column=value_column,
                         short_term=short_term, backup=backup, short_term_days=short_term_days,
                         report_tz=_zone(tz).key, start=parse_bound(start, zone),
                         end=parse_bound(end, zone), bounds_text=(start, end), create=create)


def _plan(sources, target_url, opts):
    from backdate.app.importing import plan_imports, read_sources
    from backdate.app.targets import open_target

    with _progress() as report:
        series = read_sources(sources, opts, report)
    target = open_target(target_url)
    if opts.tz is None:  # the day table in HA's own zone where the target knows it
        zone = target.info().time_zone
        if zone:
            opts.report_tz = zone
    with _status("planning"):
        imports = plan_imports(target, series, opts)
    return target, imports


@contextmanager
def _progress():
    """A Rich progress bar on a terminal (yields the callback), nothing when output is piped."""
    if not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    tasks: dict[str, int] = {}
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total or None)
            bar.update(tasks[what], completed=done)

        yield report


@contextmanager
def _status(text: str):
    """A live status line on a terminal; nothing when output is piped."""
    if console.is_terminal:
        with console.status(f"{text}…"):
            yield
    else:
        yield


@app.command("plan")
def plan_cmd(
    sources: Sources,
    to: TargetArg,
    statistic_id: StatId = None,
    name: Name = None,
    kind: KindOpt = None,
    unit: Unit = None,
    tz: Tz = None,
    time_column: TimeCol = None,
    value_column: ValueCol = None,
    short_term: ShortTerm = True,
    chart: Chart = None,
    days: Days = False,
    token: Token = None,
    start: Start = None,
    end: End = None,
    create: Create = False,
) -> None:
    """Show what an import would write, and the days and seams it changes. Writes nothing.

    Example: backdate plan meter.csv --to sqlite:///config/home-assistant_v2.db --tz Europe/Vienna
    """
    from backdate.app import render

    with _errors():
        _use_token(token)
        opts = _options(statistic_id, name, kind, unit, tz, time_column, value_column, short_term,
                        start=start, end=end, create=create)
        target, imports = _plan(sources, to, opts)
        try:
            zone = _zone(opts.report_tz)
            render.print_plans(console, imports, zone, all_days=days)
            if chart:
                render.chart(imports, zone, str(chart))
                console.print(f"chart written to {chart}", markup=False)
        finally:
            target.close()


@app.command("import")
def import_cmd(
    sources: Sources,
    to: TargetArg,
    statistic_id: StatId = None,
    name: Name = None,
    kind: KindOpt = None,
    unit: Unit = None,
    tz: Tz = None,
    time_column: TimeCol = None,
    value_column: ValueCol = None,
    short_term: ShortTerm = True,
    backup: Annotated[bool, typer.Option("--backup/--no-backup",
                                         help="Back up first: the affected statistics' rows "
                                         "and metadata with a manifest (SQLite: beside the "
                                         "database as <db>.backdate-<time>.jsonl; MariaDB/"
                                         "PostgreSQL: backdate-backup-<time>.jsonl here).")
                  ] = True,
    keep_backups: Annotated[int, typer.Option(
        "--keep-backups", min=1, help="Backups of this database kept after the import (older "
        "ones are deleted and named).")] = 3,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Write without asking.")] = False,
    chart: Chart = None,
    days: Days = False,
    token: Token = None,
    start: Start = None,
    end: End = None,
    create: Create = False,
) -> None:
    """Import readings into Home Assistant's statistics: plan, back up, write, verify.

    Interrupted (Ctrl-C, SIGTERM): says whether nothing or all of it was committed, exit 130.

    Example: backdate import meter.csv --to sqlite:///config/home-assistant_v2.db --yes
    """
    from backdate.app import render
    from backdate.app.importing import apply_imports
    from backdate.app.targets import backup_target

    made = None
    with _errors(), _interrupts() as interrupted:
        _use_token(token)
        opts = _options(statistic_id, name, kind, unit, tz, time_column, value_column, short_term,
                        backup, start=start, end=end, create=create)
        target, imports = _plan(sources, to, opts)
        commits = getattr(target, "commits", None)
        try:
            zone = _zone(opts.report_tz)
            render.print_plans(console, imports, zone, all_days=days)
            if chart:
                render.chart(imports, zone, str(chart))
            if all(item.plan.is_empty for item in imports):
                console.print("nothing to write")
                return
            if not yes:
                if not sys.stdin.isatty():
                    raise UsageError("not a terminal: add --yes to write without asking")
                if not typer.confirm("Write this?", default=False):
                    raise typer.Exit(1)
            ids = [item.statistic_id for item in imports if not item.plan.is_empty]
            if backup:
                with _status("backing up"):
                    made = backup_target(to, target, ids, keep=keep_backups)
                if made:
                    console.print(f"backup: {made.path}", markup=False, soft_wrap=True)
                    for old in made.pruned:
                        console.print(f"pruned older backup: {old} (keeping the last "
                                      f"{keep_backups})", markup=False, soft_wrap=True)
                else:
                    console.print("no backup on this path (Home Assistant's API): HA's own "
                                  "backups hold its database; `backdate export` saves a "
                                  "statistic first", markup=False)
            interrupted.describe = lambda: _interrupt_text(target, commits, ids, made)
            with _progress() as report:
                done = apply_imports(target, imports, report)
            render.print_done(console, imports, done)
            if made:
                console.print(f"to undo: {made.restore_command}", markup=False, soft_wrap=True)
        finally:
            target.close()


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program is (transactions roll back)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _InterruptState:
    def __init__(self) -> None:
        self.describe = lambda: "nothing was written"


@contextmanager
def _interrupts():
    """Turn SIGINT/SIGTERM into an exception, then say exactly what was committed; exit 130."""
    import logging
    import signal

    state = _InterruptState()

    def raise_it(signum: int, _frame: object) -> None:
        # Where the signal lands is chance; SQLAlchemy's pool logs an exception raised while
        # it closes a connection with a traceback, which says nothing to the user.
        logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL + 1)
        raise _Interrupted(signum)

    old = {sig: signal.signal(sig, raise_it) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    except KeyboardInterrupt as exc:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
        err_console.print(f"interrupted ({name}): {state.describe()}", markup=False,
                          soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _interrupt_text(target: object, commits: int | None, ids: list[str], made: object) -> str:
    """What an interrupted write left behind: nothing, or every statistic (one transaction)."""
    now = getattr(target, "commits", None)
    if commits is None or now is None:
        return ("Home Assistant may hold part of what was sent (its API writes hour by hour, "
                "not in one transaction); run the same import again to complete it")
    if now == commits:
        return "nothing was written (the transaction was rolled back)"
    undo = getattr(made, "restore_command", None)
    return (f"all of it was committed ({', '.join(ids)}); the read-back check did not finish"
            + (f". To undo: {undo}" if undo else ""))


@app.command("inspect")
def inspect_cmd(
    target: Annotated[str, typer.Argument(help="sqlite:///path, mysql://..., postgresql://...")],
    energy: Annotated[bool, typer.Option("--energy", help="Only statistics the Energy dashboard "
                                         "can use (sums in energy or volume units).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    token: Token = None,
) -> None:
    """List every statistic a database holds, with row counts, ranges and problems.

    Example: backdate inspect sqlite:///config/home-assistant_v2.db --energy
    """
    from backdate.app import render
    from backdate.app.targets import open_target

    with _errors():
        _use_token(token)
        tgt = open_target(target)
        try:
            info = tgt.info()
            summaries = tgt.list_statistics()
        finally:
            tgt.close()
        if energy:
            from backdate.engine.units import unit_class

            summaries = [s for s in summaries if s.meta.has_sum and unit_class(
                s.meta.unit_of_measurement) in ("energy", "volume")]
        render.print_inspect(console, info, summaries, as_json=as_json)


@app.command("export")
def export_cmd(
    target: Annotated[str, typer.Argument(help="sqlite:///path, mysql://..., postgresql://...")],
    statistic_id: Annotated[str, typer.Option("--statistic-id", help="Statistic to export.")],
    start: Annotated[str | None, typer.Option("--start", help="First hour (ISO time or date).")
                     ] = None,
    end: Annotated[str | None, typer.Option("--end", help="End (exclusive).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv, json or klausj1.")] = "csv",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File (default stdout).")
                      ] = None,
    tz: Tz = None,
    short_term: Annotated[bool, typer.Option("--short-term", help="Export 5-minute rows.")
                          ] = False,
    token: Token = None,
) -> None:
    """Read a statistic back out, in a form `backdate import` reads losslessly.

    Example: backdate export sqlite:///home-assistant_v2.db --statistic-id backdate:house -o h.csv
    """
    from backdate.app.exporting import export_statistic

    with _errors():
        _use_token(token)
        if fmt not in ("csv", "json", "klausj1"):
            raise UsageError("--format is one of csv, json, klausj1")
        text = export_statistic(target, statistic_id, start=start, end=end, fmt=fmt, tz=tz,
                                short_term=short_term)
        if output:
            output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)


@app.command("restore")
def restore_cmd(
    backup: Annotated[Path, typer.Argument(help="A backup file that `import` wrote.")],
    to: TargetArg,
    force: Annotated[bool, typer.Option(
        "--force", help="Restore even when Home Assistant wrote rows of these statistics "
        "since the backup (they are deleted).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Restore without asking.")] = False,
    whole_file: Annotated[bool, typer.Option(
        "--whole-file", help="An older backdate's whole-file SQLite .bak: replace the whole "
        "database with it. Stop Home Assistant first: everything written since is lost.")
                          ] = False,
) -> None:
    """Undo an import from its backup: puts back exactly the statistics it touched.

    The backup must belong to the target database (its manifest says which); nothing else in
    the database changes, so Home Assistant may keep running.

    Example: backdate restore home-assistant_v2.db.backdate-20261123T010203123456Z.jsonl --to sqlite:///...
    Example: backdate restore backdate-backup-20261123T010203123456Z.jsonl --to postgresql://...
    """
    from backdate.app.targets import restore_target

    def confirm(question: str) -> bool:
        console.print(question, markup=False, soft_wrap=True)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError("not a terminal: add --yes to restore without asking")
        return typer.confirm("Restore?", default=False)

    with _errors():
        done = restore_target(str(backup), to, force=force, whole_file=whole_file,
                              confirm=confirm)
        console.print(done, markup=False, soft_wrap=True)


@app.command("demo")
def demo_cmd(
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the demo.")] = Path(
        "demo"),
) -> None:
    """Create a fresh recorder database in ./demo and import a year of synthetic data into it."""
    from backdate.app.demo import run_demo

    with _errors():
        run_demo(directory, console)


@app.command("sync")
def sync_cmd(
    config: Annotated[Path | None, typer.Option("--config", help="backdate.toml (default: "
                                                "./backdate.toml, else "
                                                "~/.config/backdate/backdate.toml).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Run every job once and exit (cron); "
                                       "default: run forever, each job every `interval` plus "
                                       "jitter.")] = False,
    job: Annotated[str | None, typer.Option("--job", help="Only this job.")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Compare the per-hour energy of the "
                                         "source and every target; list each hour that "
                                         "differs (exit 1 when any).")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="If the job is running elsewhere, wait "
                                       "for it (default: exit 1 with a message).")] = False,
) -> None:
    """Sync jobs from backdate.toml into Home Assistant, InfluxDB and MQTT, incrementally.

    Each run reads from (the newest hour a target holds - sync_buffer_hours), or the whole
    correction window (default 30 days) if that is longer, and rewrites only what changed.
    Exit codes: 0 done, 1 bad configuration, --verify found differences, or the job is
    already running (without --wait; refused, nothing written), 3 a source or target failed
    (or could not be read by --verify). --verify takes the job's lock shared: it waits for (or,
    without --wait, refuses during) a run that is writing.

    Without a configuration file, the environment of the WattiVahti to InfluxDB sync
    (WATTIVAHTI_METERING_POINT, REFRESH_TOKEN_FILE, INFLUXDB_URL/TOKEN/ORG/BUCKET, HA_URL,
    HA_TOKEN) makes one job "wattivahti" from source wattivahti: into those targets.

    Example backdate.toml:

        \\[\\[sync.jobs]]
        name = "house"
        source = "influxdb://localhost:8086/powerwall?measurement=http&field=home&kind=power"
        targets = ["sqlite:////config/home-assistant_v2.db", "influxdb://localhost:8086/energy"]
        statistic_id = "backdate:house"

    Example: backdate sync --config backdate.toml --once
    """
    import logging
    import signal
    import threading

    from backdate.app import sync as syncing
    from backdate.config import load_config

    # Outcomes are printed per run; the log carries only what the loop itself survives.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    with _errors():
        cfg = load_config(config)
        jobs = syncing.select_jobs(cfg, job)
        if verify:
            code = 0
            for item in jobs:
                result = syncing.verify_locked(cfg, item, wait=wait)
                render_verify(result, _zone(item.tz))
                if result.errors:
                    code = 3
                elif result.rows:
                    code = max(code, 1)
            if code:
                raise typer.Exit(code)
            return
        if once:
            outcomes = syncing.run_once(cfg, jobs, wait=wait, on_outcome=render_outcome)
            code = max((o.exit_code for o in outcomes), default=0)
            if code:
                raise typer.Exit(code)
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        syncing.run_forever(cfg, jobs, wait=wait, stop=stop, on_outcome=render_outcome)


def render_outcome(outcome: JobOutcome) -> None:
    """One line per job run and per target (the cause of any failure)."""
    from datetime import UTC, datetime

    def when(ts: float | None) -> str:
        return "-" if ts is None else f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M}Z"

    window = outcome.window
    span = f"{when(window[0])} .. {when(window[1])}" if window else "-"
    status = "failed" if outcome.failed else "ok"
    console.print(f"{when(outcome.started)} job {outcome.job}: {status}, window {span}, "
                  f"{outcome.read} readings read, {outcome.points} points written",
                  markup=False, soft_wrap=True)
    if outcome.error:
        err_console.print(f"  error: {outcome.error}", markup=False, soft_wrap=True)
    for target in outcome.targets:
        line = f"  {target.url}: {target.points} points"
        if target.error:
            err_console.print(f"{line}, error: {target.error}", markup=False, soft_wrap=True)
        else:
            console.print(line, markup=False, soft_wrap=True)


def render_verify(result: VerifyResult, zone: ZoneInfo) -> None:
    """The hours where the source and a target differ, in UTC and the job's zone."""
    from datetime import UTC, datetime

    from rich.table import Table as RichTable

    start, end = result.window
    console.print(f"job {result.job}: {result.hours} hours compared "
                  f"({datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M}Z .. "
                  f"{datetime.fromtimestamp(end, UTC):%Y-%m-%d %H:%M}Z)", markup=False)
    for error in result.errors:
        err_console.print(f"  error: {error}", markup=False)
    if not result.rows:
        console.print("  source and every target agree", markup=False)
        return
    table = RichTable(title=f"{len(result.rows)} hours differ (kWh)")
    for column in ("statistic", "hour (UTC)", f"local ({zone.key})", "source", *result.columns):
        table.add_column(column, overflow="fold")

    def fmt(v: float | None) -> str:
        return "missing" if v is None else f"{v:.6f}"

    for row in result.rows:
        table.add_row(row.statistic, f"{datetime.fromtimestamp(row.hour, UTC):%Y-%m-%d %H:%M}",
                      f"{datetime.fromtimestamp(row.hour, zone):%Y-%m-%d %H:%M}",
                      fmt(row.source), *(fmt(v) for v in row.targets.values()))
    console.print(table)


def main() -> None:
    """Entry point of the `backdate` console script."""
    app()


if __name__ == "__main__":
    main()
