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

from backdate.errors import BackdateError, UsageError, require
from backdate.models import Kind

if TYPE_CHECKING:
    from collections.abc import Iterator

    from backdate.app.sync import JobOutcome, VerifyResult

app = typer.Typer(
    name="backdate",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False) -> Console:
    """Rich consoles that never read user data as markup or emoji codes; wide when piped."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else 120
    return Console(stderr=stderr, emoji=False, highlight=False, width=width)


console = _console()
err_console = _console(stderr=True)

# Help panels: every option sits in one of these, in this order on every command.
INPUT, TARGET, SAFETY, OUTPUT = "Input", "Target", "Safety", "Output"

TargetArg = Annotated[str, typer.Option(
    "--to", metavar="TARGET", rich_help_panel=TARGET,
    help="HA's recorder database (sqlite:////abs/path.db, a plain file path, mysql://..., "
    "postgresql://...) or HA itself (http(s)://host:8123, with --token).")]
Sources = Annotated[list[str], typer.Argument(
    metavar="SOURCE", show_default=False,
    help="Files (CSV, TSV, JSON) or remote sources (influxdb://..., influxdb2://..., wnsm:..., "
    "wattivahti:...).")]
Start = Annotated[str | None, typer.Option(
    "--start", metavar="TIME", rich_help_panel=INPUT,
    help="Remote sources: first time to read (ISO time or date; naive in --tz).")]
End = Annotated[str | None, typer.Option(
    "--end", metavar="TIME", rich_help_panel=INPUT,
    help="Remote sources: end of the range (exclusive; default now).")]
StatId = Annotated[str | None, typer.Option(
    "--statistic-id", metavar="ID", rich_help_panel=TARGET,
    help="Statistic to write, e.g. backdate:house or sensor.energy (default: "
    "backdate:<file name>).")]
Name = Annotated[str | None, typer.Option("--name", metavar="TEXT", rich_help_panel=TARGET,
                                          help="Display name of a new statistic.")]
KindOpt = Annotated[Kind | None, typer.Option(
    "--kind", metavar="KIND", case_sensitive=False, rich_help_panel=INPUT,
    help="delta (amount per interval), cumulative (meter value), power (rate) or mean "
    "(measurement).")]
Unit = Annotated[str | None, typer.Option(
    "--unit", metavar="UNIT", rich_help_panel=INPUT,
    help="Unit of the input values (default kWh; W for power).")]
Tz = Annotated[str | None, typer.Option(
    "--tz", metavar="ZONE", rich_help_panel=INPUT,
    help="Zone of naive times in the input, e.g. Europe/Vienna; also the zone of the day "
    "table.")]
TimeCol = Annotated[str | None, typer.Option("--time-column", metavar="NAME",
                                             rich_help_panel=INPUT,
                                             help="Name of the time column.")]
ValueCol = Annotated[str | None, typer.Option("--value-column", metavar="NAME",
                                              rich_help_panel=INPUT,
                                              help="Name of the value column.")]
ShortTerm = Annotated[bool, typer.Option(
    "--short-term/--no-short-term", rich_help_panel=TARGET, metavar="",
    help="Also write 5-minute rows for the last 10 days (HA's short-term retention).")]
Chart = Annotated[Path | None, typer.Option(
    "--chart", metavar="FILE.png", rich_help_panel=OUTPUT,
    help="Draw the days before and after into this PNG file (needs backdate\\[chart]).")]
Days = Annotated[bool, typer.Option("--days", rich_help_panel=OUTPUT, metavar="",
                                    help="List every day, even for long imports.")]
Token = Annotated[str | None, typer.Option(
    "--token", metavar="TOKEN", show_default=False, rich_help_panel=TARGET,
    help="Long-lived access token for an http(s):// target (default: $HA_TOKEN).")]
Json = Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT, metavar="",
                                    help="One JSON document on stdout (README: shapes).")]
Create = Annotated[bool, typer.Option(
    "--create", rich_help_panel=SAFETY, metavar="",
    help="Create an entity statistic (sensor.x) the target does not know yet (without it, an "
    "unknown entity id is refused as a likely typo).")]
DatabaseArg = Annotated[str, typer.Argument(
    metavar="TARGET", show_default=False,
    help="sqlite:////abs/path.db, a plain file path, mysql://..., postgresql://..., or "
    "http(s)://host:8123 (with --token).")]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("backdate")
        except PackageNotFoundError:
            number = "unknown"
        console.print(f"backdate {number}", markup=False)
        raise typer.Exit()


@app.callback()
def _main(
    _version_flag: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, metavar="",
        help="Show the version and exit.")] = False,
) -> None:
    """Put energy and sensor history into Home Assistant at the right time.

    Exit codes: 0 done, 1 invalid input or refused (nothing written), 2 usage error, 3 target
    unreachable or failed.
    """


def _use_token(token: str | None) -> None:
    """The token reaches the WebSocket target through HA_TOKEN, never through logs."""
    if token:
        os.environ["HA_TOKEN"] = token


def _shown(text: str) -> str:
    """Every message passes the one masker: no password in a URL, no token, ever."""
    from backdate.config import secret_values
    from backdate.domain.urls import mask_text

    return mask_text(text, secret_values())


def _fail(err: BackdateError) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), _shown(str(err))),
                      soft_wrap=True)  # one line, whole paths: the terminal wraps it
    raise typer.Exit(err.exit_code)


@contextmanager
def _hold_interrupt(note: str) -> Iterator[list[bool]]:
    """Ctrl-C during a write: the first is held until the block ends (the write is one
    transaction and takes seconds), so what is reported is what was committed; a second one
    stops at once. The list holds True once a Ctrl-C was held."""
    import signal

    held: list[bool] = []

    def hold(signum: int, frame: object) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(True)
        err_console.print(note, markup=False)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # not the main thread (tests calling the app in-process)
        yield held
        return
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _errors():
    try:
        yield
    except BackdateError as err:
        _fail(err)
    except ImportError as err:  # an optional package missing where nothing checked it first
        from backdate.errors import missing_package

        _fail(missing_package(err))
    except OSError as err:  # a path the user named (--dir, -o) that cannot be used
        from backdate.errors import InputError, TargetError

        where = err.filename if isinstance(err.filename, str) else None
        problem = err.strerror or type(err).__name__
        path_problem = isinstance(err, (FileNotFoundError, NotADirectoryError,
                                        IsADirectoryError, PermissionError, FileExistsError))
        _fail(InputError(problem, path=where) if path_problem
              else TargetError(f"{where}: {problem}" if where else problem))


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
    opts.zone_from = "tz_option" if opts.tz else "machine"
    if opts.tz is None:  # the day table in HA's own zone where the target knows it
        zone = target.info().time_zone
        if zone:
            opts.report_tz = zone
            opts.zone_from = "home_assistant"
    with _status("planning"):
        imports = plan_imports(target, series, opts)
    return target, imports


ZONE_FROM = {"home_assistant": "Home Assistant's zone", "machine": "this machine's zone"}


def _zone_note(imports: list, zone: ZoneInfo, zone_from: str) -> None:
    """Without --tz the days are some zone's days: say whose, and how to choose."""
    if zone_from in ZONE_FROM and any(i.plan.meta.has_sum and i.plan.hourly.count
                                      for i in imports):
        console.print(f"days are {zone.key} days ({ZONE_FROM[zone_from]}); --tz ZONE shows "
                      "another zone's days", markup=False)


def _emit(doc: dict) -> None:
    """A --json document: plain JSON on stdout, nothing else there."""
    import json

    sys.stdout.write(_shown(json.dumps(doc, indent=2, ensure_ascii=False)) + "\n")
    sys.stdout.flush()


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
        with console.status(f"{text}..."):
            yield
    else:
        yield


def _chart(imports: list, zone: ZoneInfo, path: Path, *, quiet: bool = False) -> None:
    """Draw the chart, and say so only when one was drawn (on stderr under --json)."""
    from backdate.app import render

    out = err_console if quiet else console
    if render.chart(imports, zone, str(path)):
        out.print(f"chart written to {path}", markup=False, soft_wrap=True)
    else:
        out.print(f"no chart written to {path}: no hourly energy (sum) rows to draw",
                  markup=False, soft_wrap=True)


@app.command("plan")
def plan_cmd(
    sources: Sources,
    tz: Tz = None,
    kind: KindOpt = None,
    unit: Unit = None,
    time_column: TimeCol = None,
    value_column: ValueCol = None,
    start: Start = None,
    end: End = None,
    to: TargetArg = ...,  # type: ignore[assignment]
    statistic_id: StatId = None,
    name: Name = None,
    short_term: ShortTerm = True,
    token: Token = None,
    create: Create = False,
    days: Days = False,
    chart: Chart = None,
    as_json: Json = False,
) -> None:
    """Show what an import would write, and the days and seams it changes. Writes nothing.

    Example:

        backdate plan meter.csv --tz Europe/Vienna \\
            --to sqlite:////config/home-assistant_v2.db
    """
    from backdate.app import render

    with _errors():
        _use_token(token)
        opts = _options(statistic_id, name, kind, unit, tz, time_column, value_column, short_term,
                        start=start, end=end, create=create)
        if chart:
            require("matplotlib", "--chart")
        target, imports = _plan(sources, to, opts)
        try:
            zone = _zone(opts.report_tz)
            if as_json:
                from backdate.services.documents import plan_document

                _emit(plan_document(imports, zone, target.info().url, zone_from=opts.zone_from))
            else:
                render.print_plans(console, imports, zone, all_days=days)
                _zone_note(imports, zone, opts.zone_from)
            if chart:
                _chart(imports, zone, chart, quiet=as_json)
        finally:
            target.close()


@app.command("import")
def import_cmd(
    sources: Sources,
    tz: Tz = None,
    kind: KindOpt = None,
    unit: Unit = None,
    time_column: TimeCol = None,
    value_column: ValueCol = None,
    start: Start = None,
    end: End = None,
    to: TargetArg = ...,  # type: ignore[assignment]
    statistic_id: StatId = None,
    name: Name = None,
    short_term: ShortTerm = True,
    token: Token = None,
    backup: Annotated[bool, typer.Option(
        "--backup/--no-backup", rich_help_panel=SAFETY, metavar="",
        help="Back up first: the affected statistics' rows and metadata with a manifest "
        "(SQLite: beside the database as <db>.backdate-<time>.jsonl; MariaDB/PostgreSQL: "
        "backdate-backup-<time>.jsonl here).")] = True,
    keep_backups: Annotated[int, typer.Option(
        "--keep-backups", min=1, metavar="N", rich_help_panel=SAFETY,
        help="Backups of this database kept after the import (older ones are deleted and "
        "named).")] = 3,
    create: Create = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", rich_help_panel=SAFETY, metavar="",
                                      help="Write without asking.")] = False,
    days: Days = False,
    chart: Chart = None,
    as_json: Json = False,
) -> None:
    """Import readings into Home Assistant's statistics: plan, back up, write, verify.

    Interrupted (Ctrl-C, SIGTERM): says whether nothing or all of it was committed, exit 130.

    Example:

        backdate import meter.csv --tz Europe/Vienna --yes \\
            --to sqlite:////config/home-assistant_v2.db
    """
    from backdate.app import render
    from backdate.app.importing import apply_imports
    from backdate.app.targets import backup_target
    from backdate.services.documents import import_document

    made = None
    with _errors(), _interrupts() as interrupted:
        _use_token(token)
        if as_json and not yes:
            raise UsageError("--json needs --yes: a script cannot answer \"Write this?\"")
        opts = _options(statistic_id, name, kind, unit, tz, time_column, value_column, short_term,
                        backup, start=start, end=end, create=create)
        if chart:
            require("matplotlib", "--chart")
        target, imports = _plan(sources, to, opts)
        commits = getattr(target, "commits", None)
        try:
            zone = _zone(opts.report_tz)

            def document(written: list[str]) -> dict:
                return import_document(imports, zone, target.info().url,
                                       zone_from=opts.zone_from,
                                       backup=str(made.path) if made else None,
                                       written=written)

            if not as_json:
                render.print_plans(console, imports, zone, all_days=days)
                _zone_note(imports, zone, opts.zone_from)
            if chart:
                _chart(imports, zone, chart, quiet=as_json)
            if all(item.plan.is_empty for item in imports):
                if as_json:
                    _emit(document([]))
                else:
                    console.print("nothing to write")
                return
            if not yes:
                if not sys.stdin.isatty():
                    raise UsageError("not a terminal: add --yes to write without asking")
                if not typer.confirm("Write this?", default=False):
                    console.print("nothing written")
                    raise typer.Exit(1)
            ids = [item.statistic_id for item in imports if not item.plan.is_empty]
            if backup:
                with _status("backing up"):
                    made = backup_target(to, target, ids, keep=keep_backups)
                if as_json:
                    pass  # the document says where the backup is
                elif made:
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
            if as_json:
                _emit(document(done))
            else:
                render.print_done(console, imports, done)
                if made:
                    console.print(f"to undo: {made.restore_command}", markup=False,
                                  soft_wrap=True)
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
    target: DatabaseArg,
    token: Token = None,
    pattern: Annotated[str | None, typer.Option(
        "--filter", metavar="PATTERN", rich_help_panel=OUTPUT,
        help="Only statistics whose id or name matches, e.g. 'sensor.*energy*'.")] = None,
    energy: Annotated[bool, typer.Option(
        "--energy", rich_help_panel=OUTPUT, metavar="",
        help="Only statistics the Energy dashboard can use (sums of energy or volume).")
    ] = False,
    tz: Annotated[str | None, typer.Option(
        "--tz", metavar="ZONE", rich_help_panel=OUTPUT,
        help="Zone of the times shown (default: HA's zone where known, else this machine's).")
    ] = None,
    as_json: Json = False,
) -> None:
    """List every statistic a database holds, with row counts, ranges and problems.

    Example:

        backdate inspect sqlite:////config/home-assistant_v2.db --energy
    """
    from backdate.app import render
    from backdate.app.targets import open_target
    from backdate.services.inspecting import select_statistics

    with _errors():
        _use_token(token)
        zone = _zone(tz) if tz else None
        tgt = open_target(target)
        try:
            info = tgt.info()
            summaries = tgt.list_statistics()
            from backdate.services.migrate import migrated_into

            marks = migrated_into(tgt, summaries)  # a migration that kept OLD
            for summary in summaries:
                if summary.meta.statistic_id in marks:
                    summary.problems.append(
                        f"migrated into {marks[summary.meta.statistic_id]} (history carried "
                        "over; this statistic was kept)")
        finally:
            tgt.close()
        summaries = select_statistics(summaries, pattern=pattern, energy=energy, where=info.url)
        if zone is None:  # the zone plan's day table uses
            zone = ZoneInfo(info.time_zone) if info.time_zone else _local_zone()
        render.print_inspect(console, info, summaries, as_json=as_json, tz=zone)


@app.command("export")
def export_cmd(
    target: DatabaseArg,
    statistic_id: Annotated[str, typer.Option("--statistic-id", metavar="ID",
                                              rich_help_panel=INPUT,
                                              help="Statistic to export.")],
    start: Annotated[str | None, typer.Option(
        "--start", metavar="TIME", rich_help_panel=INPUT,
        help="First hour (ISO time or date; naive in --tz).")] = None,
    end: Annotated[str | None, typer.Option("--end", metavar="TIME", rich_help_panel=INPUT,
                                            help="End (exclusive).")] = None,
    short_term: Annotated[bool, typer.Option("--short-term", rich_help_panel=INPUT, metavar="",
                                             help="Export 5-minute rows.")] = False,
    token: Token = None,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", rich_help_panel=OUTPUT,
                                     help="csv, json or klausj1.")] = "csv",
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE",
                                                rich_help_panel=OUTPUT,
                                                help="File (default stdout).")] = None,
    tz: Annotated[str | None, typer.Option(
        "--tz", metavar="ZONE", rich_help_panel=OUTPUT,
        help="Write times in this zone with their offset (default UTC, 'Z'); klausj1 "
        "needs it.")] = None,
) -> None:
    """Read a statistic back out, in a form `backdate import` reads losslessly.

    Example:

        backdate export sqlite:////config/home-assistant_v2.db \\
            --statistic-id backdate:house -o house.csv
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
    backup: Annotated[Path, typer.Argument(metavar="BACKUP", show_default=False,
                                           help="A backup file that `import` wrote.")],
    to: Annotated[str, typer.Option(
        "--to", metavar="TARGET", rich_help_panel=TARGET,
        help="The recorder database the backup belongs to: sqlite:////abs/path.db, a plain "
        "file path, mysql://... or postgresql://....")],
    force: Annotated[bool, typer.Option(
        "--force", rich_help_panel=SAFETY, metavar="",
        help="Restore even when Home Assistant wrote rows of these statistics since the "
        "backup (they are deleted).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", rich_help_panel=SAFETY, metavar="",
                                      help="Restore without asking.")] = False,
    whole_file: Annotated[bool, typer.Option(
        "--whole-file", rich_help_panel=SAFETY, metavar="",
        help="An older backdate's whole-file SQLite .bak: replace the whole database with it. "
        "Stop Home Assistant first: everything written since is lost.")] = False,
    as_json: Json = False,
) -> None:
    """Undo an import from its backup: puts back exactly the statistics it touched.

    The backup must belong to the target database (its manifest says which); nothing else in
    the database changes, so Home Assistant may keep running.

    Examples:

        backdate restore /config/home-assistant_v2.db.backdate-20261123T010203123456Z.jsonl \\
            --to sqlite:////config/home-assistant_v2.db

        backdate restore backdate-backup-20261123T010203123456Z.jsonl \\
            --to postgresql://ha@localhost/ha
    """
    from backdate.app.targets import restore_target

    def confirm(question: str) -> bool:
        # with --json, stdout holds the document alone; the question goes to stderr
        (err_console if as_json else console).print(_shown(question), markup=False,
                                                    soft_wrap=True)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError("not a terminal: add --yes to restore without asking")
        return typer.confirm("Restore?", default=False)

    with _errors():
        if to.startswith(("http://", "https://")):
            raise UsageError("restore writes Home Assistant's recorder database directly: give "
                             "its URL (sqlite:////path, mysql://..., postgresql://...); over "
                             "HA's API there is no backdate backup (HA's own backups hold it)")
        done = restore_target(str(backup), to, force=force, whole_file=whole_file,
                              confirm=confirm)
        if as_json:
            from backdate.domain.urls import mask_url
            from backdate.services.documents import restore_document

            _emit(restore_document(str(backup), mask_url(to), {"summary": _shown(done)}))
            return
        console.print(_shown(done), markup=False, soft_wrap=True)


@app.command("migrate")
def migrate_cmd(
    target: DatabaseArg,
    sources: Annotated[list[str] | None, typer.Option(
        "--from", help="Old statistic id; repeat for a chain, oldest first.")] = None,
    into: Annotated[str | None, typer.Option("--into", help="New statistic id.")] = None,
    overlap: Annotated[str, typer.Option(
        "--overlap", help="Hours both hold: keep-target (NEW's own data stays) or "
        "keep-source (OLD's replaces it).")] = "keep-target",
    map_file: Annotated[Path | None, typer.Option(
        "--map", help="TOML (`\"sensor.powerwall_*\" = \"sensor.teslemetry_*\"`) or CSV "
        "(`old,new`) of pairs, globs allowed; one transaction for all.")] = None,
    start: Annotated[str | None, typer.Option("--start", help="Only hours from here (ISO time "
                                              "or date, UTC unless --tz).")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Only hours before this.")] = None,
    tz: Tz = None,
    then_backfill: Annotated[str | None, typer.Option(
        "--then-backfill", help="Then re-import NEW from this source (influxdb://..., a "
        "file, a portal) over what it covers, overwriting.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show both phases; write "
                                          "nothing.")] = False,
    remove_source: Annotated[bool, typer.Option(
        "--remove-source", help="Delete OLD once NEW is written and read back.")] = False,
    backup: Annotated[bool, typer.Option("--backup/--no-backup", help="Back up first, as "
                                         "for import.")] = True,
    short_term: ShortTerm = True,
    suggest: Annotated[bool, typer.Option("--suggest", help="List likely pairs: statistics "
                                          "that stopped beside ones that started.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    days: Days = False,
    token: Token = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", metavar="",
                                      help="Write without asking.")] = False,
) -> None:
    """Carry a replaced sensor's history into its successor, with unit conversion and a rule
    for the hours both hold; then optionally overwrite from a better source.

    Example: backdate migrate /config/home-assistant_v2.db --from sensor.powerwall_import
    --into sensor.teslemetry_grid_import --dry-run

    Example: backdate migrate postgresql://... --map pairs.toml --overlap keep-source --yes
    """
    import json

    from backdate.app import render_migrate as render
    from backdate.app.exporting import parse_bound
    from backdate.app.targets import backup_target, open_target
    from backdate.engine.merge import Overlap
    from backdate.services import migrate as svc

    with _errors():
        _use_token(token)
        try:
            rule = Overlap(overlap)
        except ValueError:
            raise UsageError("--overlap is keep-target or keep-source") from None
        tgt = open_target(target)
        try:
            if suggest:
                found = svc.suggest_pairs(tgt)
                render.print_suggestions(console, found, as_json=as_json)
                return
            if map_file is not None:
                if sources or into:
                    raise UsageError("--map replaces --from/--into; give one or the other")
                metas = getattr(tgt, "statistic_metas", None)
                known = [m.statistic_id for m in metas()] if metas else []
                pairs = svc.expand_pairs(svc.read_map(map_file), known, str(map_file))
            elif sources and into:
                pairs = [svc.Pair(list(sources), into)]
            else:
                raise UsageError("name --from OLD and --into NEW, or --map FILE, or --suggest")
            if then_backfill and len(pairs) != 1:
                raise UsageError("--then-backfill needs exactly one pair (one --into)")
            zone = _zone(tz) if tz else ZoneInfo("UTC")
            report_zone = tz or tgt.info().time_zone or _local_zone().key
            start_ts, end_ts = parse_bound(start, zone), parse_bound(end, zone)
            if start_ts is not None and end_ts is not None and end_ts <= start_ts:
                raise UsageError(f"--end {end} is not after --start {start}: no hours between")
            settings = svc.MigrateSettings(
                target=target, pairs=pairs, overlap=rule, start=start_ts,
                end=end_ts, bounds_text=(start, end), dry_run=dry_run,
                remove_source=remove_source, backup=backup, then_backfill=then_backfill,
                short_term=short_term, report_tz=report_zone)
            with _status("planning"):
                plan = svc.plan_migration(tgt, settings)
            if not as_json:
                render.print_migration(console, plan, _zone(report_zone), all_days=days)

            if not dry_run and not yes:
                if as_json or not sys.stdin.isatty():
                    raise UsageError("not a terminal: add --yes to write without asking")
                if not typer.confirm("Write this?", default=False):
                    console.print("nothing written")
                    raise typer.Exit(1)

            def do_backup(ids: list[str]) -> Path | None:
                made = backup_target(target, tgt, ids)
                if made is None:
                    return None
                if not as_json:
                    for old in made.pruned:
                        console.print(f"pruned older backup: {old}", markup=False,
                                      soft_wrap=True)
                return made.path

            with _hold_interrupt("interrupt: finishing the migration first (it is being "
                                 "written, in one transaction); Ctrl-C again stops at once"
                                 ) as held:
                try:
                    with _progress() as report:
                        result = svc.run_migration(tgt, settings, backup=do_backup,
                                                   progress=report, plan=plan)
                    if as_json:
                        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
                    else:
                        render.print_migration_outcome(console, err_console, result,
                                                       _zone(report_zone))
                except KeyboardInterrupt:
                    err_console.print(
                        "interrupted while writing: the transaction was rolled back unless it "
                        "had just been committed; `backdate inspect` shows which", markup=False)
                    raise typer.Exit(130) from None
            if held:
                err_console.print("interrupted: the migration had begun writing, so it was "
                                  "finished first (reported above); `backdate restore` with its "
                                  "backup undoes it", markup=False)
                raise typer.Exit(130)
            if result.exit_code:
                raise typer.Exit(result.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted before writing: nothing was written", markup=False)
            raise typer.Exit(130) from None
        finally:
            tgt.close()


@app.command("demo")
def demo_cmd(
    directory: Annotated[Path, typer.Option("--dir", metavar="DIR", rich_help_panel=OUTPUT,
                                            help="Where to create the demo.")] = Path("demo"),
) -> None:
    """Create a fresh recorder database in ./demo and import a year of made-up data into it.

    Example:

        backdate demo --dir /tmp/backdate-demo
    """
    from backdate.app.demo import run_demo

    with _errors():
        run_demo(directory, console)


@app.command("sync")
def sync_cmd(
    config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", rich_help_panel=INPUT,
        help="backdate.toml (default: ./backdate.toml, else "
        "~/.config/backdate/backdate.toml).")] = None,
    job: Annotated[str | None, typer.Option("--job", metavar="NAME", rich_help_panel=INPUT,
                                            help="Only this job.")] = None,
    once: Annotated[bool, typer.Option(
        "--once", rich_help_panel=SAFETY, metavar="",
        help="Run every job once and exit (cron); default: run forever, each job every "
        "`interval` plus jitter.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", rich_help_panel=SAFETY, metavar="",
        help="If the job is running elsewhere, wait for it (default: exit 1).")] = False,
    verify: Annotated[bool, typer.Option(
        "--verify", rich_help_panel=OUTPUT, metavar="",
        help="Compare the per-hour energy of the source and every target; list each hour "
        "that differs (exit 1 when any).")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", rich_help_panel=OUTPUT, metavar="",
        help="With --once: one JSON document on stdout (README: shapes).")] = False,
) -> None:
    """Sync jobs from backdate.toml into Home Assistant, InfluxDB and MQTT, incrementally.

    Each run reads from (the newest hour a target holds - sync_buffer_hours), or the whole
    correction window (default 30 days) if that is longer, and rewrites only what changed.
    Paths in backdate.toml (sources, sqlite targets, state_file) are relative to the file.

    Exit codes: 0 done, 1 bad configuration, --verify found differences, or the job is
    already running (without --wait; refused, nothing written), 3 a source or target failed
    (or could not be read by --verify). --verify takes the job's lock shared: it waits for
    (or, without --wait, refuses during) a run that is writing.

    Without a configuration file, the environment of the WattiVahti to InfluxDB sync
    (WATTIVAHTI_METERING_POINT, REFRESH_TOKEN_FILE, INFLUXDB_URL/TOKEN/ORG/BUCKET, HA_URL,
    HA_TOKEN) makes one job "wattivahti" from source wattivahti: into those targets.

    Example backdate.toml:

        \\[\\[sync.jobs]]
        name = "house"
        source = "meter.csv"
        targets = ["sqlite:////config/home-assistant_v2.db",
                   "influxdb://localhost:8086/energy"]
        statistic_id = "backdate:house"

    Example:

        backdate sync --config backdate.toml --once
    """
    import logging
    import signal
    import threading

    from backdate.app import sync as syncing
    from backdate.config import load_config

    # Outcomes are printed per run; the log carries only what the loop itself survives.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_MaskedLog())
    with _errors():
        cfg = load_config(config)
        jobs = syncing.select_jobs(cfg, job)
        if as_json and (verify or not once):
            raise UsageError("--json goes with --once (the loop runs for ever; --verify "
                             "prints a table)")
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
            outcomes = syncing.run_once(cfg, jobs, wait=wait,
                                        on_outcome=None if as_json else render_outcome)
            if as_json:
                from backdate.services.documents import sync_document

                _emit(sync_document(outcomes))
            code = max((o.exit_code for o in outcomes), default=0)
            if code:
                raise typer.Exit(code)
            return
        stop = threading.Event()
        signalled: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            signalled.append(signum)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        syncing.run_forever(cfg, jobs, wait=wait, stop=stop, on_outcome=render_outcome,
                            on_next=render_next)


class _MaskedLog:
    """A log filter: log lines pass the same masker as every message."""

    def filter(self, record: object) -> bool:
        import logging

        assert isinstance(record, logging.LogRecord)
        record.msg, record.args = _shown(record.getMessage()), None
        return True


@app.command("serve")
def serve_cmd(
    config: Annotated[Path | None, typer.Option("--config", help="backdate.toml (default: "
                                                "./backdate.toml, else "
                                                "~/.config/backdate/backdate.toml).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Check the configuration and the "
                                        "store (migrating it), connect to every home, take "
                                        "one snapshot, print its counts, then exit.")] = False,
    listen: Annotated[str | None, typer.Option("--listen", help="host:port, overriding "
                                               "\\[serve] listen.")] = None,
) -> None:
    """Mirror Home Assistant homes live and serve them (HTTP API, web page), and (with
    \\[serve.ingest]) the event ingest endpoint.

    Example backdate.toml:

        \\[serve]
        listen = "127.0.0.1:8765"
        store = "sqlite:////var/lib/backdate/serve.db"   # or postgresql://user@host/db
        api_tokens = ["a-long-random-read-token"]
        reconcile_every = "5m"

        \\[\\[serve.homes]]
        name = "home"
        url = "http://homeassistant.local:8123"
        token = "a long-lived access token"

        \\[serve.ingest]
        api_keys = ["a-long-random-ingest-key"]
        gap_deadline = "24h"

    Example: backdate serve --config backdate.toml
    """
    import logging

    from backdate.config import ConfigError, load_serve_config

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    with _errors():
        cfg = load_serve_config(config)
        if listen is not None:
            host, _, port = listen.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UsageError(f"--listen {listen!r} is not host:port")
            cfg.host, cfg.port = host.strip("[]"), int(port)
        from backdate.interfaces.http.server import open_store, run

        try:
            engine = open_store(cfg)
        except Exception as err:  # noqa: BLE001 - any driver error: unreachable store
            from backdate.errors import TargetError

            if isinstance(err, ConfigError | BackdateError):
                raise
            raise TargetError(f"the store cannot be opened: {type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}") from None
        if check:
            parts = ["ingest" if cfg.ingest else None,
                     f"{len(cfg.homes)} homes" if cfg.homes else "no homes"]
            console.print(f"configuration ok: listen {cfg.host}:{cfg.port}, serves "
                          f"{', '.join(p for p in parts if p)}; store ready", markup=False)
            import asyncio

            from backdate.domain.urls import mask_url
            from backdate.services.mirror import check_home

            for home in cfg.homes:
                counts = asyncio.run(check_home(home.name, home.url, home.token or ""))
                shown = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items())
                console.print(f"home {home.name} ({mask_url(home.url)}): {shown}",
                              markup=False)
            return
        run(cfg, engine, announce=lambda line: err_console.print(_shown(line), markup=False,
                                                               soft_wrap=True))


@app.command("send")
def send_cmd(
    file: Annotated[Path, typer.Argument(help="JSON Lines: one event object per line, each "
                                         "with device_id (or device_key).")],
    to: Annotated[str, typer.Option("--to", help="Ingest URL: http(s)://host:8765 or the full "
                                    ".../ingest/v1/events:batch.")],
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key or JWT (default: "
                                                "$BACKDATE_INGEST_API_KEY).",
                                                show_default=False)] = None,
    outbox: Annotated[Path | None, typer.Option("--outbox", help="Outbox file (default: "
                                                "FILE.outbox.db beside the file).")] = None,
    vendor: Annotated[str, typer.Option("--vendor", help="source_vendor of events that name "
                                        "none.")] = "backdate",
    batch: Annotated[int, typer.Option("--batch", min=1, max=10_000,
                                       help="Events per request.")] = 100,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=16,
                                          help="Requests in flight.")] = 2,
    ring: Annotated[int, typer.Option("--ring", min=0, help="Acknowledged events kept to "
                                      "answer gaps.")] = 200,
    max_pending: Annotated[int, typer.Option("--max-pending", min=1, help="Events the outbox "
                                             "holds before the policy applies.")] = 100_000,
    policy: Annotated[str, typer.Option("--policy", help="Full outbox: block, or drop_oldest "
                                        "(dropped numbers are reported as lost).")] = "block",
    give_up: Annotated[int | None, typer.Option("--give-up-after", min=1, help="Failed "
                                                "attempts in a row before exit 3 (default: "
                                                "retry forever).")] = None,
) -> None:
    """Deliver events through the persistent outbox with sequence numbers.

    Each line is numbered and stored in the outbox before it is sent, and kept until the
    server acknowledged it; a killed send resumes where it stopped, with the same numbers.
    Exit codes: 0 everything acknowledged, 1 bad file, 3 the server refused or stayed
    unreachable (the events stay in the outbox).

    Example: backdate send events.jsonl --to http://127.0.0.1:8765 --api-key "$KEY"
    """
    import signal
    import threading

    from backdate.adapters.ingest_http.client import IngestClient
    from backdate.services.delivery import check_jsonl, send_file
    from backdate.store.outbox import Outbox

    with _errors():
        token = api_key or os.environ.get("BACKDATE_INGEST_API_KEY")
        if not token:
            raise UsageError("no credentials: pass --api-key or set BACKDATE_INGEST_API_KEY")
        try:
            client = IngestClient(to, token)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if policy not in ("block", "drop_oldest"):
            raise UsageError(f"--policy is 'block' or 'drop_oldest', not {policy!r}")
        check = check_jsonl(file)
        box = Outbox(outbox or file.with_name(file.name + ".outbox.db"), ring_events=ring,
                     max_pending=max_pending, policy=policy, default_vendor=vendor)
        stop = threading.Event()
        signalled: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            signalled.append(signum)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        try:
            stats = send_file(file, box, client, stop=stop, batch_events=batch,
                              parallel=parallel, max_failures=give_up)
            health = box.health()
        finally:
            box.close()
            client.close()
        unread = int((box.position or "0").split()[0]) < file.stat().st_size
        interrupted = health["buffered"] > 0 or health["lost_unreported"] > 0 or unread
        console.print(f"{check.events} events in {file.name}; epoch {box.epoch}: "
                      f"{stats.accepted} stored, {stats.duplicates} duplicates, "
                      f"{stats.resent} resent for gaps, {health['lost_events']} reported lost, "
                      f"{health['buffered']} still in the outbox", markup=False)
        if interrupted and signalled:
            err_console.print(f"interrupted: {health['buffered']} events wait in the outbox "
                              f"{box.path}{', and lines of the file are unread' if unread else ''}"
                              "; the same command sends them", markup=False, soft_wrap=True)
        if interrupted:
            raise typer.Exit(3)


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
        err_console.print(_shown(f"  error: {outcome.error}"), markup=False, soft_wrap=True)
    for target in outcome.targets:
        line = f"  {target.url}: {target.points} points"
        if target.error:
            err_console.print(_shown(f"{line}, error: {target.error}"), markup=False,
                              soft_wrap=True)
        else:
            console.print(line, markup=False, soft_wrap=True)


def render_next(job: str, due: float) -> None:
    """The loop's next run of a job, so a waiting sync is visibly alive."""
    from datetime import UTC, datetime

    wait = max(0.0, due - datetime.now(UTC).timestamp())
    console.print(f"job {job}: next run at {datetime.fromtimestamp(due, UTC):%Y-%m-%d %H:%M:%S}"
                  f"Z (in {wait / 60:.0f} min)", markup=False, soft_wrap=True)
    console.file.flush()


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
