#!/usr/bin/env bash
# backdate's main job on the embedded default: a fresh HA recorder database (SQLite) in ./demo,
# a year of 15-minute readings imported into it, the per-month table printed, the chart drawn.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh chart
.venv/bin/backdate demo --dir demo
.venv/bin/backdate inspect sqlite:///demo/home-assistant_v2.db
echo
echo "backdate is installed in $(pwd)/.venv, not on your PATH. To use it in this shell:"
echo "    source $(pwd)/.venv/bin/activate && backdate --help"
echo "or install it for your account: pipx install $(pwd)   (README: Install)"
