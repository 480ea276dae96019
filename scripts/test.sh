#!/usr/bin/env bash
# Runs every test: Rust unit + integration tests (nextest), then the black-box conformance
# suite against a live server. Needs a PostgreSQL it may create databases on
# (IRONFHIR_TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

export IRONFHIR_TEST_DATABASE_URL="${IRONFHIR_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

cargo build --bin ironfhir
bash conformance-tests/run.sh
