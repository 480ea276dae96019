#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time (issue 21, README "Hostile-input
# suite") and fails when one crashed (a panic that nothing catches, a stack overflow, a sanitizer
# report, an input slower than 10 s, more than 4 GiB of memory) or noted a finding (something
# the server would answer with 5xx: `ironfhir-fuzz: finding …` lines).
#
#   scripts/fuzz.sh                    # 60 s per target
#   scripts/fuzz.sh 300                # 5 minutes per target
#   scripts/fuzz.sh 120 search_params fhirpath   # only these targets
#
# Only stable Rust is needed: cargo-fuzz's nightly flags are allowed by RUSTC_BOOTSTRAP=1.
# Environment:
#   FUZZ_SANITIZER       address (default) or none (faster build and runs, catches less)
#   FUZZ_JOBS            libFuzzer worker processes per target (default 1)
#   CARGO_TARGET_DIR     build directory (default fuzz/target, apart from the server's target/)
#   IRONFHIR_FUZZ_DATABASE_URL  database for the bundle_process target; without it a database
#                        ironfhir_fuzz_<random> is created on IRONFHIR_TEST_PG (default
#                        postgres://postgres@127.0.0.1:5432) with psql and dropped afterwards;
#                        when neither works bundle_process is skipped (and says so)
#   FUZZ_ALLOW_FINDINGS=1  report findings without failing
#   FUZZ_NO_BUILD=1      run the binaries built before (e.g. two fuzz.sh side by side)
# Output: fuzz/logs/<target>.log, new corpus entries in fuzz/corpus/<target>/, crashes in
# fuzz/artifacts/<target>/, inputs behind findings in fuzz/artifacts/<target>/findings/.
# Replay one: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/<file> (in fuzz/), or
# run the built binary fuzz/target/x86_64-unknown-linux-gnu/release/<target> on the file.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO/fuzz"
SECONDS_PER_TARGET="${1:-60}"
shift || true
ALL_TARGETS=(json_resource xml_resource search_params fhirpath json_patch bundle_entries bundle_process)
TARGETS=("$@")
[[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=("${ALL_TARGETS[@]}")
SANITIZER="${FUZZ_SANITIZER:-address}"
JOBS="${FUZZ_JOBS:-1}"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/fuzz/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (crates.io)" >&2
  cargo install cargo-fuzz --locked || { echo "fuzz.sh: cannot install cargo-fuzz" >&2; exit 2; }
fi

echo "fuzz.sh: building ${#TARGETS[@]} targets (sanitizer: $SANITIZER, release with debug assertions)" >&2
build_start=$(date +%s)
BIN="$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release"
if [[ "${FUZZ_NO_BUILD:-0}" == 1 ]]; then
  echo "fuzz.sh: FUZZ_NO_BUILD=1: running the binaries in $BIN as they are" >&2
elif ! cargo fuzz build --sanitizer "$SANITIZER" >"$REPO/fuzz/build.log" 2>&1; then
  # cargo-fuzz has been seen to report a failure after cargo printed "Finished"; the
  # binaries decide.
  for t in "${TARGETS[@]}"; do
    if [[ ! "$BIN/$t" -nt "$REPO/fuzz/Cargo.toml" ]] || ! grep -q "Finished" "$REPO/fuzz/build.log"; then
      tail -40 "$REPO/fuzz/build.log" >&2
      echo "fuzz.sh: build failed (fuzz/build.log)" >&2
      exit 2
    fi
  done
fi
echo "fuzz.sh: built in $(( $(date +%s) - build_start )) s" >&2

# A database for bundle_process.
CREATED_DB=""
PG="${IRONFHIR_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
cleanup() {
  if [[ -n "$CREATED_DB" ]]; then
    psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS \"$CREATED_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
if [[ " ${TARGETS[*]} " == *" bundle_process "* && -z "${IRONFHIR_FUZZ_DATABASE_URL:-}" ]]; then
  name="ironfhir_fuzz_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  if command -v psql >/dev/null && psql -X -q -d "$PG/postgres" -c "CREATE DATABASE \"$name\"" >/dev/null 2>&1; then
    CREATED_DB="$name"
    export IRONFHIR_FUZZ_DATABASE_URL="$PG/$name"
  fi
fi

mkdir -p logs
# -jobs makes libFuzzer run workers that write fuzz-<n>.log into the current directory.
PARALLEL=()
[[ "$JOBS" -gt 1 ]] && PARALLEL=(-jobs="$JOBS" -workers="$JOBS")
failed=0
summary=()
for t in "${TARGETS[@]}"; do
  if [[ "$t" == bundle_process && -z "${IRONFHIR_FUZZ_DATABASE_URL:-}" ]]; then
    summary+=("$(printf '%-15s %6s  %s' "$t" "-" "SKIPPED: no PostgreSQL (set IRONFHIR_FUZZ_DATABASE_URL)")")
    continue
  fi
  mkdir -p "corpus/$t" "artifacts/$t/findings"
  log="logs/$t.log"
  echo "fuzz.sh: $t for ${SECONDS_PER_TARGET} s" >&2
  start=$(date +%s)
  # The binary built above, run directly: `cargo fuzz run` would rebuild first whenever the
  # sources changed in the meantime.
  IRONFHIR_FUZZ_FINDINGS_DIR="$REPO/fuzz/artifacts/$t/findings" ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}" \
    "$BIN/$t" "corpus/$t" "seeds/$t" \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=4096 -max_len=262144 \
      -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${PARALLEL[@]}" >"$log" 2>&1
  code=$?
  took=$(( $(date +%s) - start ))
  # With -jobs > 1 libFuzzer writes fuzz-<n>.log files; take them in.
  for f in fuzz-*.log; do [[ -f "$f" ]] && { cat "$f" >>"$log"; rm -f "$f"; }; done
  execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}')
  findings=$(grep -ac '^ironfhir-fuzz: finding' "$log")
  caught=$(grep -ac '^ironfhir-fuzz: panic at' "$log")
  if [[ $code -ne 0 ]]; then
    what=$(grep -aoE 'ironfhir-fuzz: panic at .*|ERROR: libFuzzer: [a-z -]+|ERROR: AddressSanitizer: [a-z -]+|has overflowed its stack' "$log" | head -1 | cut -c1-200)
    artifact=$(grep -ao 'Test unit written to [^ ]*' "$log" | head -1 | sed 's/Test unit written to //')
    summary+=("$(printf '%-15s %5ss  CRASH (%s) %s — %s execs, log fuzz/%s' "$t" "$took" "${what:-exit $code}" "${artifact:+input fuzz/$artifact}" "$execs" "$log")")
    failed=1
  elif [[ $findings -gt 0 ]]; then
    summary+=("$(printf '%-15s %5ss  %s findings (5xx-equivalent), %s caught panics — %s execs, log fuzz/%s' "$t" "$took" "$findings" "$caught" "$execs" "$log")")
    [[ "${FUZZ_ALLOW_FINDINGS:-0}" == 1 ]] || failed=1
  else
    summary+=("$(printf '%-15s %5ss  ok, %s caught panics — %s execs' "$t" "$took" "$caught" "$execs")")
  fi
done

echo
echo "fuzz.sh summary (${SECONDS_PER_TARGET} s per target, sanitizer $SANITIZER):"
printf '  %s\n' "${summary[@]}"
grep -ah '^ironfhir-fuzz: finding\|^ironfhir-fuzz: panic at' logs/*.log 2>/dev/null | sort | uniq -c | sort -rn | head -40 | sed 's/^/  /'
exit $failed
