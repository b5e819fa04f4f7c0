#!/usr/bin/env bash
# The whole test suite, from nothing: virtual environment, a real Home Assistant 2024.3.3 in its
# own cached virtual environment, lint, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh dev
./scripts/setup-ha.sh >/dev/null
.venv/bin/ruff check .
.venv/bin/python tests/services.py   # MariaDB, PostgreSQL, Mosquitto, InfluxDB: start/install
.venv/bin/pytest -q -p no:cacheprovider "$@"
