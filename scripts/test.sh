#!/usr/bin/env bash
# The whole test suite, from nothing: virtual environment, a real Home Assistant 2024.3.3 in its
# own cached virtual environment, lint, then pytest. Extra arguments go to pytest.
#
# Tests run side by side in BACKDATE_TEST_WORKERS processes (default 3; most of the suite's
# wall time is spent waiting for Home Assistant, not computing): each test module stays in one
# process, so a module's Home Assistant is started once; every HA, InfluxDB and database gets
# its own free port, folder or name. Every test has a time limit (pyproject.toml), and the
# whole run stops after BACKDATE_SUITE_MINUTES (default 80) with a message saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh dev
./scripts/setup-ha.sh >/dev/null
.venv/bin/ruff check .
.venv/bin/python tests/services.py   # MariaDB, PostgreSQL, Mosquitto, InfluxDB: start/install
workers="${BACKDATE_TEST_WORKERS:-3}"
minutes="${BACKDATE_SUITE_MINUTES:-80}"
parallel=()
if [ "$workers" != 0 ]; then parallel=(-n "$workers" --dist loadscope); fi
set +e
timeout -k 30 "$((minutes * 60))" .venv/bin/pytest -q -p no:cacheprovider "${parallel[@]}" "$@"
rc=$?
set -e
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "scripts/test.sh: the test suite ran longer than $minutes minutes and was stopped" \
       "(a hang: each test's own limit should have caught it; see the output above)" >&2
fi
exit "$rc"
