#!/usr/bin/env bash
# Events benchmark (bench/events.py): a sustained write rate, and the latency from each
# acknowledged write to a rest-hook Subscription's endpoint and to a JetStream consumer, with
# the outbox backlog sampled during the run. Release build, fresh database per round, NATS
# JetStream at BENCH_NATS. Three rounds; the report gives each round and the medians.
#
#   bench/events.sh                                  # 1,000 writes/s for 30 s, 3 rounds
#   BENCH_RATE=500 BENCH_SECONDS=60 BENCH_ROUNDS=5 bench/events.sh
#
# Environment: IRONFHIR_BIN (else cargo build --release), BENCH_PG
# [postgres://postgres@127.0.0.1:5432], BENCH_NATS [nats://127.0.0.1:4222],
# BENCH_OUT [bench/out/events-<time>].
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
PG="${PG%/}"
NATS="${BENCH_NATS:-nats://127.0.0.1:4222}"
OUT="${BENCH_OUT:-$HERE/out/events-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
log() { echo "events: $*" >&2; }
source "$HERE/lib.sh"
require_tools psql python3
# nats-py for the stream consumer, in a venv kept beside the outputs.
VENV="$HERE/out/.venv-events"
[[ -x "$VENV/bin/python" ]] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q nats-py==2.9.0; }
release_binary
trap stop_server EXIT
for round in $(seq "${BENCH_ROUNDS:-3}"); do
  db="ironfhir_bench_events_$round"
  stream="ironfhirbench$round$$"
  psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  start_server "$PG/$db" --nats-url "$NATS" --nats-stream "$stream"
  log "round $round"
  "$VENV/bin/python" "$HERE/events.py" --base "$BASE" --token "$TOKEN" --nats "$NATS" --stream "$stream" --pg "$PG/$db" \
    --rate "${BENCH_RATE:-1000}" --seconds "${BENCH_SECONDS:-30}" | tee -a "$OUT/rounds.jsonl"
  stop_server
  [[ -n "${BENCH_KEEP:-}" ]] || psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done
python3 - "$OUT/rounds.jsonl" <<'PY' | tee "$OUT/report.md"
import json, statistics, sys, os, platform
rounds = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda f: statistics.median(f(r) for r in rounds)
print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}; {len(rounds)} rounds of {rounds[0]['target_rate']:.0f} writes/s for {rounds[0]['seconds']:.0f} s")
print("| round | writes/s achieved | rest-hook p50 / p99 ms | JetStream p50 / p99 ms | missing (hook / stream) | outbox backlog max | oldest waiting s |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for i, r in enumerate(rounds, 1):
    h, s = r["rest_hook"], r["jetstream"]
    print(f"| {i} | {r['achieved_rate']} | {h.get('p50_ms')} / {h.get('p99_ms')} | {s.get('p50_ms')} / {s.get('p99_ms')} | {h['missing']} / {s['missing']} | {r['outbox_backlog_max']} | {r['outbox_oldest_max_s']} |")
print(f"| median | {med(lambda r: r['achieved_rate'])} | {med(lambda r: r['rest_hook'].get('p50_ms', 0))} / {med(lambda r: r['rest_hook'].get('p99_ms', 0))} | "
      f"{med(lambda r: r['jetstream'].get('p50_ms', 0))} / {med(lambda r: r['jetstream'].get('p99_ms', 0))} | | {med(lambda r: r['outbox_backlog_max'])} | {med(lambda r: r['outbox_oldest_max_s'])} |")
PY
