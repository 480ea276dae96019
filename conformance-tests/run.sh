#!/usr/bin/env bash
# Black-box conformance suite: builds ironfhir (debug) unless IRONFHIR_BIN is given, makes a
# Python venv in conformance-tests/.venv, installs the pinned clients and runs pytest against a
# live server that conftest.py starts on a fresh PostgreSQL database.
#
#   conformance-tests/run.sh                 # whole suite
#   conformance-tests/run.sh -k history -x   # extra arguments go to pytest
#
# Environment: IRONFHIR_BIN, IRONFHIR_TEST_PG (default postgres://postgres@127.0.0.1:5432),
# IRONFHIR_SKIP_BUILD=1, CARGO_TARGET_DIR, PYTHON (default python3). See conftest.py.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$HERE/.venv"

if ! command -v psql >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  echo "run.sh: installing postgresql-client (psql creates and drops the test database)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
fi
for tool in psql "$PYTHON"; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 2; }
done

if [[ -z "${IRONFHIR_BIN:-}" && "${IRONFHIR_SKIP_BUILD:-0}" != 1 ]]; then
  echo "run.sh: cargo build (debug)" >&2
  (cd "$REPO" && cargo build --quiet --bin ironfhir)
fi

# Recreate the venv when it is missing or its requirements changed.
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  echo "run.sh: preparing $VENV" >&2
  "$PYTHON" -m venv "$VENV" || {
    echo "run.sh: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 2; }
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$WANT" > "$STAMP"
fi

cd "$HERE"
exec "$VENV/bin/python" -m pytest -q "$@"
