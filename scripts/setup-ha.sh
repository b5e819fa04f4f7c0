#!/usr/bin/env bash
# Install a real Home Assistant 2024.3.3 for backdate's tests, once, and reuse it.
#
# Why a venv of its own: HA pins many packages that clash with backdate's dev tools.
# Why these extra packages: `hass --skip-pip` does not install integration requirements, and
# without them a config with recorder/http/api/websocket_api falls into recovery mode
# (see /work/shared/reference/real-home-assistant.md). pymysql / psycopg2-binary let the recorder
# use MariaDB / PostgreSQL; paho-mqtt is for MQTT discovery tests.
#
# Idempotent: a finished install leaves the marker `.backdate-complete`; without it (fresh
# machine, or an earlier run was interrupted) the install is (re)done. A lock file keeps two
# concurrent runs (parallel test sessions) from installing into the same directory.
#
# Usage: scripts/setup-ha.sh            -> prints the venv directory on stdout
#        BACKDATE_HA_VENV=/some/dir scripts/setup-ha.sh
set -euo pipefail

HA_VERSION=2024.3.3
VENV="${BACKDATE_HA_VENV:-$HOME/.cache/backdate/ha-$HA_VERSION}"
MARKER="$VENV/.backdate-complete"
PYTHON="${BACKDATE_HA_PYTHON:-python3.11}"
PACKAGES=(
  "homeassistant==$HA_VERSION"
  "SQLAlchemy==2.0.27"
  "fnv-hash-fast==0.5.0"
  "psutil-home-assistant==0.0.1"
  "aiohttp_cors==0.7.0"
  "aiohttp-fast-url-dispatcher==0.3.0"
  "aiohttp-zlib-ng==0.3.1"
  "home-assistant-frontend==20240307.0"
  "hass-nabucasa==0.78.0"
  "securetar==2024.2.1"
  "Pillow==10.2.0"
  "janus==1.0.0"
  "josepy<1.14"
  "ifaddr==0.2.0"
  "pymysql"
  "psycopg2-binary"
  "paho-mqtt==1.6.1"
)

log() { echo "setup-ha: $*" >&2; }

is_complete() {
  [[ -f "$MARKER" ]] && "$VENV/bin/hass" --version >/dev/null 2>&1
}

if is_complete; then
  echo "$VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
LOCK="$VENV.lock"
exec 9>"$LOCK"
if command -v flock >/dev/null 2>&1; then
  if ! flock -n 9; then
    log "another install into $VENV is running; waiting for it"
    flock 9
  fi
fi

# The other run may have finished while we waited.
if is_complete; then
  echo "$VENV"
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  log "ERROR: $PYTHON not found (Home Assistant $HA_VERSION needs Python 3.11)"
  exit 1
fi

rm -f "$MARKER"
if ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv --clear "$VENV"
fi

log "installing homeassistant==$HA_VERSION and its integration requirements (takes minutes)"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q "${PACKAGES[@]}" >&2

version="$("$VENV/bin/hass" --version)"
if [[ "$version" != "$HA_VERSION" ]]; then
  log "ERROR: $VENV/bin/hass --version printed '$version', expected $HA_VERSION"
  exit 1
fi

date -u +%Y-%m-%dT%H:%M:%SZ >"$MARKER"
log "Home Assistant $HA_VERSION ready in $VENV"
echo "$VENV"
