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
# The SMART browser test (test_smart_browser.py) drives Debian's chromium with playwright-core;
# it fails, not skips, when chromium or node is missing, so install them here when we can.
if [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  echo "run.sh: installing chromium (SMART browser test)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  echo "run.sh: installing nodejs and npm (SMART browser test)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
# npm ci the SMART app's packages (fhirclient, playwright-core) when node_modules is missing or
# package-lock.json changed; a stamp in node_modules records the lock file it was made from.
prepare_node_modules() {
  local dir="$1" stamp="$1/node_modules/.package-lock.sha256" want
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [[ ! -d "$dir/node_modules" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "run.sh: npm ci in $dir" >&2
    npm ci --prefix "$dir" --loglevel=error
    echo "$want" > "$stamp"
  fi
}
if command -v npm >/dev/null; then
  prepare_node_modules "$HERE/smart-app"
else
  echo "run.sh: npm not found; test_smart_browser.py will fail" >&2
fi

for tool in psql "$PYTHON"; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 2; }
done

if [[ -z "${IRONFHIR_BIN:-}" && "${IRONFHIR_SKIP_BUILD:-0}" != 1 ]]; then
  echo "run.sh: cargo build (debug)" >&2
  (cd "$REPO" && cargo build --quiet --bin ironfhir)
fi

# (Re)create a venv when it is missing or its requirements changed: $1 venv, $2 requirements.
prepare_venv() {
  local venv="$1" requirements="$2" stamp="$1/.requirements.sha256" want
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "run.sh: preparing $venv" >&2
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv" || {
      echo "run.sh: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 2; }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
  fi
}
prepare_venv "$VENV" "$HERE/requirements.txt"
# The data generators need pydantic 2, the R4 models pydantic 1: they get their own venv.
prepare_venv "$HERE/.venv-generators" "$HERE/requirements-generators.txt"
export CAREBUNDLE="$HERE/.venv-generators/bin/carebundle"

cd "$HERE"
exec "$VENV/bin/python" -m pytest -q "$@"
