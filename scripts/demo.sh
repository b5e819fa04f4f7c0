#!/usr/bin/env bash
# backdate's main job on the embedded default: a fresh HA recorder database (SQLite) in ./demo,
# a year of 15-minute readings imported into it, the per-month table printed, the chart drawn.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh chart
.venv/bin/backdate demo --dir demo
.venv/bin/backdate inspect sqlite:///demo/home-assistant_v2.db
