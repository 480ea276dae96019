#!/usr/bin/env bash
# What PHI sealing and the audit trail cost: the same release build, the same data, measured in
# one run, alternately with both off (`serve --no-seal --no-audit`, benchmark-only switches) and
# both on (the default), twice each. Reports ingest (PUT, update-as-create of every generated
# resource; POST Observation) and read-by-id throughput, the medians per mode and the ratio
# on/off (the issue's bar: at least 0.70).
#
# 64 connections by default: throughput is what the server sustains with its CPU busy. With 16,
# the audited server leaves part of the CPU idle while its requests wait for the audit trail's
# group commit, so the ratio then measures that wait (README.md, "What PHI sealing and the audit
# trail cost", reports both).
#
#   bench/phi.sh                                  # 20,000 resources, 64 connections
#   BENCH_CONNECTIONS=16 bench/phi.sh             # the latency-bound figure
#   BENCH_RESOURCES=50000 BENCH_DURATION=30 bench/phi.sh
#
# Same environment as bench/run.sh (IRONFHIR_BIN, BENCH_PG, BENCH_CONNECTIONS, …).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${BENCH_OUT:-$HERE/out/phi-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
export BENCH_DURATION="${BENCH_DURATION:-20}" BENCH_POST_DURATION="${BENCH_POST_DURATION:-15}" BENCH_SKIP_PGBENCH=1
export BENCH_CONNECTIONS="${BENCH_CONNECTIONS:-64}"
ROUNDS="${BENCH_ROUNDS:-2}"
for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    args=""
    [[ $mode == off ]] && args="--no-seal --no-audit"
    echo "phi: round $round, sealing and audit $mode" >&2
    BENCH_SERVER_ARGS="$args" BENCH_OUT="$OUT/$mode-$round" bash "$HERE/run.sh" >&2
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY' | tee "$OUT/report.md"
import json, statistics, sys, pathlib, platform, os
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def lines(p): return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
def rates(d):
    put = lines(d / "ingest_put.jsonl")
    put_rate = sum(r["requests"] for r in put) / (sum(r["duration_us"] for r in put) / 1e6)
    post = json.loads((d / "ingest_post.json").read_text())
    read = json.loads((d / "read.json").read_text())
    errors = sum(sum(r["errors"].values()) for r in put + [post, read])
    projection = d / "audit_projection.json"
    behind, drain = 0, 0.0
    if projection.exists():
        p = json.loads(projection.read_text())
        behind, drain = p["behind_after_read"], p["drain_seconds"]
    read_s = read["duration_us"] / 1e6
    return {"ingest PUT /s": put_rate, "ingest POST /s": post["requests"] / (post["duration_us"] / 1e6),
            "read by id /s": read["requests"] / read_s, "read p50 ms": read["latency_us"]["p50"] / 1000,
            # The audit events the read phase left to project, and the read rate counting the
            # time the idle server then took to project them.
            "audit events behind after read": behind,
            "read by id /s incl. projection catch-up": read["requests"] / (read_s + drain),
            "errors": errors}
runs = {m: [rates(out / f"{m}-{r}") for r in range(1, rounds + 1)] for m in ("off", "on")}
print(f"# PHI sealing + audit cost ({os.cpu_count()} CPUs, {platform.platform()})\n")
print(f"Dataset: bench/generate.py, {os.environ.get('BENCH_RESOURCES', '20000')} resources; {os.environ.get('BENCH_CONNECTIONS', '16')} connections; "
      f"read {os.environ['BENCH_DURATION']} s, POST {os.environ['BENCH_POST_DURATION']} s; {rounds} rounds, off/on alternating.\n")
print("| measure | off (median) | on (median) | on/off | runs off | runs on |\n| --- | --- | --- | --- | --- | --- |")
for key in ("ingest PUT /s", "ingest POST /s", "read by id /s", "read p50 ms", "audit events behind after read",
            "read by id /s incl. projection catch-up", "errors"):
    off = statistics.median(r[key] for r in runs["off"]); on = statistics.median(r[key] for r in runs["on"])
    ratio = f"{on / off:.2f}" if off else "-"
    fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
    print(f"| {key} | {off:.1f} | {on:.1f} | {ratio} | {fmt(r[key] for r in runs['off'])} | {fmt(r[key] for r in runs['on'])} |")
PY
