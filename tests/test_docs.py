"""The documentation cannot rot: every shell example runs, every option is documented.

* Every command of the CLI has `docs/commands/<command>.md`, and its option table is exactly
  what scripts/gen_docs.py makes from the command line now (regenerate with
  `.venv/bin/python scripts/gen_docs.py`).
* Every fenced `sh` block in README.md, docs/ and the app's DOCS.md runs, in order per file, in
  a fresh folder holding local data (the files the examples name, and an empty Home Assistant
  recorder database in `config/`), with this checkout's `backdate` on the PATH. A block that
  needs something this machine does not have says so in its info string and is skipped with
  that reason: ```` ```sh skip="needs an InfluxDB server" ````. A block that shows an error
  says which exit code it ends with: ```` ```sh exit=1 ````.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             ROOT / "ha-app" / "backdate" / "DOCS.md"]
SHELLS = {"sh", "bash", "shell"}
URL_PAGES = ["files", "sqlite", "mysql", "postgresql", "home-assistant-api", "influxdb", "mqtt",
             "wnsm", "wattivahti"]
BLOCK_TIMEOUT = 180


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str
    skip: str | None
    exit: int

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^(\s*)```(\S*)(.*)$")


def shell_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang, attrs = len(match.group(1)), match.group(2).lower(), match.group(3)
        end = i + 1
        while end < len(lines) and not lines[end].lstrip().startswith("```"):
            end += 1
        if lang in SHELLS:
            options = dict(re.findall(r'(\w+)="([^"]*)"', attrs))
            options.update(re.findall(r"(\w+)=(\d+)", attrs))
            unknown = set(options) - {"skip", "exit"}
            assert not unknown, f"{path}:{i + 1}: unknown block attribute {unknown}"
            code = "\n".join(line[indent:] for line in lines[i + 1:end]) + "\n"
            blocks.append(Block(path, i + 1, code,
                                options.get("skip"), int(options.get("exit", 0))))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES if path.exists() for block in shell_blocks(path)]


# ----------------------------------------------------------------------------- local data


def make_workspace(directory: Path) -> None:
    """The files the examples name: made-up readings (tests only), on fixed 2024 dates."""
    from backdate.targets.fresh import create_recorder_sqlite

    vienna = ZoneInfo("Europe/Vienna")
    (directory / "config").mkdir(parents=True)
    create_recorder_sqlite(directory / "config" / "home-assistant_v2.db")
    start = datetime(2024, 3, 24, 23, tzinfo=UTC)  # local midnight of 25 March; DST on the 31st
    rows = ["start,kwh"]
    for h in range(11 * 24 - 1):
        local = (start + timedelta(hours=h)).astimezone(vienna)
        rows.append(f"{local:%Y-%m-%d %H:%M},{0.2 + 0.1 * ((h * 7) % 5):.3f}")
    (directory / "meter.csv").write_text("\n".join(rows) + "\n")
    rows = ["time,value"]
    quarter = datetime(2024, 6, 1, tzinfo=ZoneInfo("Europe/Vienna"))
    for q in range(7 * 96):
        rows.append(f"{(quarter + timedelta(minutes=15 * q)).isoformat()},{50 + (q * 13) % 40}")
    (directory / "quarter_hours.csv").write_text("\n".join(rows) + "\n")
    rows, meter = ["time,reading"], 12000.0
    for h in range(7 * 24 + 1):
        rows.append(f"{datetime(2024, 2, 1, tzinfo=UTC) + timedelta(hours=h):%Y-%m-%dT%H:%M:%SZ},"
                    f"{meter:.3f}")
        meter += 0.3 + 0.2 * ((h * 5) % 3)
    (directory / "readings.csv").write_text("\n".join(rows) + "\n")
    rows = ["time,value"]
    for h in range(7 * 24):
        t = datetime(2024, 1, 10, tzinfo=UTC) + timedelta(hours=h)
        rows.append(f"{t:%Y-%m-%dT%H:%M:%SZ},{2.0 + 4.0 * math.sin(h / 24 * 2 * math.pi):.2f}")
    (directory / "outdoor.csv").write_text("\n".join(rows) + "\n")


def block_env(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HA_", "INFLUXDB_", "WNSM_", "WATTIVAHTI_", "BACKDATE_"))
           and k not in ("REFRESH_TOKEN_FILE", "INITIAL_SYNC_DAYS", "SYNC_BUFFER_HOURS")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               HOME=str(directory), XDG_CONFIG_HOME=str(directory / ".config"),
               XDG_STATE_HOME=str(directory / ".state"), TZ="Europe/Vienna")
    return env


_workspaces: dict[Path, tuple[Path, int]] = {}


def run_block(block: Block, directory: Path) -> subprocess.CompletedProcess[str]:
    shell = ["bash", "-o", "pipefail", "-c"] if block.exit else ["bash", "-e", "-o",
                                                                  "pipefail", "-c"]
    # the examples name Home Assistant's own folder, /config (absolute, as a user types it):
    # here it is the workspace's config/ folder
    code = block.code.replace("/config/", f"{directory}/config/")
    return subprocess.run([*shell, code], cwd=directory, env=block_env(directory),
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_shell_example_runs(block: Block, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Blocks of one file share a folder and run in order (a later example may use what an
    earlier one made); a block run alone first runs the runnable blocks before it."""
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    same_file = [b for b in ALL_BLOCKS if b.path == block.path]
    index = same_file.index(block)
    directory, done = _workspaces.get(block.path, (None, 0))
    if directory is None:
        directory = tmp_path_factory.mktemp("docs")
        make_workspace(directory)
    for earlier in same_file[done:index]:
        if earlier.skip is None:
            run_block(earlier, directory)
    _workspaces[block.path] = (directory, index + 1)
    proc = run_block(block, directory)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-4000:]
    assert proc.returncode == block.exit, (
        f"{block.id} ended with {proc.returncode}, not {block.exit}; tag the block "
        f'```sh skip="why" when it needs an outside service.\n{block.code}\n{output[-4000:]}')


# ---------------------------------------------------------------------------- structure


def test_every_command_has_a_current_page() -> None:
    gen = _gen_docs()
    names = gen.command_names()
    assert {"plan", "import", "inspect", "export", "restore", "demo", "sync"} <= set(names)
    for name in names:
        page = ROOT / "docs" / "commands" / f"{name}.md"
        assert page.exists(), f"no {page}: run .venv/bin/python scripts/gen_docs.py"
        text = page.read_text(encoding="utf-8")
        assert gen.updated(name, text) == text, (
            f"{page.name} is out of date: run .venv/bin/python scripts/gen_docs.py")
        for section in ("## Options", "## Examples", "## Exit codes"):
            assert section in text, (page.name, section)
        runnable = [b for b in shell_blocks(page) if b.skip is None]
        assert runnable, f"{page.name}: no example that runs here"


def test_every_option_of_help_is_on_its_page() -> None:
    """Independent of the generator: what `backdate NAME --help` prints is on the page."""
    gen = _gen_docs()
    for name in gen.command_names():
        proc = subprocess.run([sys.executable, "-m", "backdate.cli", name, "--help"],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "COLUMNS": "200"})
        assert proc.returncode == 0, proc.stderr
        # the option column of each row: "│ *  --to ...", "│    --backup   --no-backup ..."
        options = {name for line in proc.stdout.splitlines()
                   for name in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)",
                                          " ".join(re.split(r"\s{2,}", line.strip("│ *"))[:2]))}
        assert "--help" in options
        text = (ROOT / "docs" / "commands" / f"{name}.md").read_text(encoding="utf-8")
        missing = sorted(o for o in options if f"`{o}`" not in text)
        assert not missing, (name, missing)


def test_index_links_every_page() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    pages = sorted((ROOT / "docs" / "commands").glob("*.md"))
    for page in pages:
        assert f"(commands/{page.name})" in index, page.name
    for name in URL_PAGES:
        assert (ROOT / "docs" / "urls" / f"{name}.md").exists(), name
        assert f"(urls/{name}.md)" in index, name


def test_the_block_parser_reads_tags(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text('x\n```sh\necho a\n```\n```sh skip="needs InfluxDB"\nb\n```\n'
                    "```sh exit=1\nfalse\n```\n```toml\nc = 1\n```\n"
                    "* item:\n\n  ```sh\n  echo b\n  ```\n")
    blocks = shell_blocks(page)
    assert [(b.line, b.skip, b.exit) for b in blocks] == [
        (2, None, 0), (5, "needs InfluxDB", 0), (8, None, 1), (16, None, 0)]
    assert blocks[-1].code == "echo b\n"
    assert shlex.split(blocks[0].code) == ["echo", "a"]
