"""`[serve]` and `[[serve.homes]]` as a user writes them: the mirror's settings, the single
home HA_URL + HA_TOKEN make, and every mistake as `file:line: problem` (exit 1, no traceback,
no token shown)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backdate.config import ConfigError, load_serve_config

BASE = '[serve]\napi_tokens = ["read-token-0123456789"]\nstore = "sqlite:///s.db"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backdate.toml"
    path.write_text(BASE + text)
    return path


def test_homes_and_mirror_settings(tmp_path: Path) -> None:
    cfg = load_serve_config(write(tmp_path, 'reconcile_every = "2m"\nhistory_retention = "7d"\n'
                                  '[[serve.homes]]\nname = "a"\nurl = "http://a:8123"\n'
                                  'token = "t1"\n[[serve.homes]]\nname = "b"\n'
                                  'url = "https://b"\ntoken = "t2"\n'), env={})
    assert [h.name for h in cfg.homes] == ["a", "b"]
    assert (cfg.reconcile_every, cfg.history_retention) == (120.0, 7 * 86400.0)


def test_no_homes_at_all_is_valid(tmp_path: Path) -> None:
    assert load_serve_config(write(tmp_path, ""), env={}).homes == []


def test_environment_makes_a_single_home(tmp_path: Path) -> None:
    cfg = load_serve_config(write(tmp_path, '[[serve.homes]]\nname = "a"\nurl = "http://a"\n'
                                  'token = "t"\n'),
                            env={"HA_URL": "http://ha:8123", "HA_TOKEN": "secret-token"})
    assert [(h.name, h.url, h.token) for h in cfg.homes] == [
        ("home", "http://ha:8123", "secret-token")]


@pytest.mark.parametrize(("text", "env", "line", "words"), [
    ('[[serve.homes]]\nname = "a"\nurl = "http://a"\ntoken = "t"\n'
     '[[serve.homes]]\nname = "a"\nurl = "http://b"\ntoken = "t"\n', {}, 8, "used twice"),
    ('[[serve.homes]]\nname = "a"\nurl = "http://a"\n', {}, 4, "has no token"),
    ('[[serve.homes]]\nname = "a"\nurl = "ftp://a"\ntoken = "t"\n', {}, 6, "address"),
    ('reconcile_every = "soon"\n', {}, 4, "not a duration"),
    ('reconcile_every = "0s"\n', {}, 4, "at least 1"),
    ("", {"HA_URL": "http://ha:8123"}, None, "HA_TOKEN is not"),
])
def test_mistakes_name_the_line(tmp_path: Path, text: str, env: dict[str, str],
                                line: int | None, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_serve_config(path, env=env)
    assert words in str(err.value)
    if line is not None:
        assert f"{path}:{line}:" in str(err.value)


def test_cli_mistake_is_one_line_exit_1(tmp_path: Path) -> None:
    path = write(tmp_path, '[[serve.homes]]\nname = "a"\nurl = "nope"\n'
                 'token = "very-secret-token"\n')
    done = subprocess.run([sys.executable, "-m", "backdate.cli", "serve", "--check",
                           "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "very-secret-token" not in out
    assert f"{path}:" in out


def test_backoff_jitter_stays_within_its_share() -> None:
    """Reconnects of many homes and processes must not return in step: each delay is the
    exponential one scaled by a random factor in [1 - jitter, 1]."""
    from backdate.hass.client import Backoff

    delays = []
    for _ in range(200):
        b = Backoff(1.0, 2.0, 8.0, float("inf"), jitter=0.5)
        delays.append([b.next_delay() for _ in range(5)])
    for k, base in enumerate((1.0, 2.0, 4.0, 8.0, 8.0)):
        column = [d[k] for d in delays]
        assert all(base * 0.5 <= v <= base for v in column)
        assert max(column) - min(column) > base * 0.3  # really spread
