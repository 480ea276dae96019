#!/usr/bin/env bash
# Booking benchmark (bench/booking.py): `$book` throughput at BENCH_CONNECTIONS clients on
# distinct slots, and BENCH_RACERS clients racing for one slot, against the release build on a
# fresh database. Three rounds; the report gives each round and the medians.
#
#   bench/booking.sh                         # 4,000 slots, 16 clients, 50 racers, 3 rounds
#   BENCH_SLOTS=8000 BENCH_ROUNDS=5 bench/booking.sh
#
# Environment: IRONFHIR_BIN (else cargo build --release), BENCH_PG
# [postgres://postgres@127.0.0.1:5432], BENCH_OUT [bench/out/booking-<time>].
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
PG="${PG%/}"
OUT="${BENCH_OUT:-$HERE/out/booking-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
log() { echo "booking: $*" >&2; }
source "$HERE/lib.sh"
require_tools psql python3
release_binary
trap stop_server EXIT
for round in $(seq "${BENCH_ROUNDS:-3}"); do
  db="ironfhir_bench_booking_$round"
  psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  start_server "$PG/$db"
  log "round $round"
  python3 "$HERE/booking.py" --base "$BASE" --token "$TOKEN" --slots "${BENCH_SLOTS:-4000}" \
    --clients "${BENCH_CONNECTIONS:-16}" --racers "${BENCH_RACERS:-50}" | tee -a "$OUT/rounds.jsonl"
  stop_server
  [[ -n "${BENCH_KEEP:-}" ]] || psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done
python3 - "$OUT/rounds.jsonl" <<'PY' | tee "$OUT/report.md"
import json, statistics, sys, os, platform
rounds = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
t = [r["throughput"] for r in rounds]
race = [r["race"] for r in rounds]
print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}")
print(f"rounds: {len(rounds)}; {t[0]['bookings']} slots booked by {t[0]['clients']} clients per round; {race[0]['racers']} racers for one slot")
for i, (a, b) in enumerate(zip(t, race), 1):
    print(f"round {i}: {a['per_second']} bookings/s (p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, statuses {a['statuses']}); "
          f"race settled in {b['settle_ms']} ms: {b['won']} won, {b['conflicts']} × 409, {b['other']} other, {b['booked_appointments']} booked")
print(f"median: {statistics.median(x['per_second'] for x in t)} bookings/s, p99 {statistics.median(x['p99_ms'] for x in t)} ms; "
      f"race settle {statistics.median(x['settle_ms'] for x in race)} ms; exactly one winner in every round: {all(x['won'] == 1 and x['booked_appointments'] == 1 for x in race)}")
PY
