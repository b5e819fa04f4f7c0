#!/usr/bin/env bash
# Creates .venv with backdate and the given extras (default: dev). Idempotent; works from nothing
# on Debian with Python 3.11 (installs python3-venv when Debian left it out).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  if ! "$py" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
    fi
    "$py" -m venv .venv
  fi
  .venv/bin/pip install -q --upgrade pip
fi
stamp=".venv/.backdate-$extras-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q -e ".[$extras]"
  touch "$stamp"
fi
