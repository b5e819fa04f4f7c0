"""`pip install backdate` from a built wheel works from nothing.

The wheel is built the way CI builds it (`python -m build`, isolated, so the build
requirements come from pyproject.toml alone) with no warning about the package metadata, then
installed into a fresh virtual environment with nothing else in it, and the installed
`backdate` runs: `--version`, `demo` in an empty folder, `inspect` of what demo made. pip's
cache keeps the dependencies' download off the clock after the first run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def test_wheel_installs_and_runs_from_nothing(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # sdist first, then the wheel built from the sdist: what a release uploads
    build = run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    output = build.stdout + build.stderr
    # setuptools' metadata warnings (license tables, classifiers, ...) all say "Warning".
    assert "Warning" not in output and "deprecated" not in output.lower(), output[-3000:]
    [wheel] = dist.glob("backdate-*.whl")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert wheel.name == f"backdate-{version}-py3-none-any.whl"
    assert (dist / f"backdate-{version}.tar.gz").exists()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"backdate-{version}.dist-info/METADATA").decode()
    assert f"backdate-{version}.dist-info/licenses/LICENSE" in names
    assert any(n.startswith("backdate/targets/ddl/") for n in names)
    assert "License-Expression: Apache-2.0" in metadata

    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check", wheel,
        timeout=600)
    backdate = env_dir / "bin" / "backdate"
    assert run(backdate, "--version").stdout.strip() == f"backdate {version}"

    work = tmp_path / "work"
    work.mkdir()
    demo = run(backdate, "demo", "--dir", "demo", cwd=work, timeout=300)
    assert "backdate inspect sqlite:///" in demo.stdout, demo.stdout
    assert (work / "demo" / "home-assistant_v2.db").exists()
    inspect = run(backdate, "inspect", "sqlite:///demo/home-assistant_v2.db", "--json", cwd=work)
    data = json.loads(inspect.stdout)
    text = json.dumps(data)
    assert "backdate:demo_house" in text, text[:2000]
    # the installed copy, not this checkout, answered
    where = run(python, "-c", "import backdate, sys; print(backdate.__file__)", cwd=work)
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout


def test_readme_install_line_brings_build_along() -> None:
    """A new user follows README's Install line in a fresh Python: `python -m build` is not
    part of Python ("No module named build") unless the line installs it first."""
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if "python -m build --wheel" in line
                and "pipx install" in line)
    assert "pip install build" in line.split("python -m build")[0], line
