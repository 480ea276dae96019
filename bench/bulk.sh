#!/usr/bin/env bash
# ironfhir bulk benchmark: transaction Bundle ingest over HTTP, `ironfhir import`, and system
# `$export`. See bench/README.md ("Bulk"). Every request goes to 127.0.0.1; every phase is
# bounded. Asserts nothing: prints a report (also bench/out/bulk-<time>/report.md).
#
#   bench/bulk.sh                             # 1,000,000 resources (about 2 GB of JSON)
#   BULK_RESOURCES=100000 bench/bulk.sh       # smaller
#
# Environment (defaults in brackets):
#   BULK_RESOURCES [1000000]   dataset size (bench/generate.py)  BENCH_SEED [42]
#   BULK_BUNDLE_SIZE [50]      entries per transaction Bundle
#   BULK_TX_BUNDLES [1000]     Bundles POSTed by the 4 concurrent clients (transaction ingest)
#   BULK_TX_CLIENTS [4]        concurrent clients of the transaction ingest
#   BULK_SEQ_BUNDLES [200]     Bundles POSTed one by one, then imported, for the import ratio
#   BULK_IMPORT_PARALLEL [2]   `ironfhir import --parallel`
#   BENCH_PG [postgres://postgres@127.0.0.1:5432]   IRONFHIR_BIN, CARGO_TARGET_DIR as run.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RESOURCES="${BULK_RESOURCES:-1000000}"
SEED="${BENCH_SEED:-42}"
BSIZE="${BULK_BUNDLE_SIZE:-50}"
TX_BUNDLES="${BULK_TX_BUNDLES:-1000}"
TX_CLIENTS="${BULK_TX_CLIENTS:-4}"
SEQ_BUNDLES="${BULK_SEQ_BUNDLES:-200}"
PARALLEL="${BULK_IMPORT_PARALLEL:-2}"
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
PG="${PG%/}"
OUT="${BENCH_OUT:-$HERE/out/bulk-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
log() { echo "bulk: $(date +%H:%M:%S) $*" >&2; }

source "$HERE/lib.sh"
require_tools psql
release_binary

DATA="$HERE/out/data-$RESOURCES-$SEED-b$BSIZE"
if [[ ! -f "$DATA/manifest.json" ]]; then
  log "generating $RESOURCES resources with transaction Bundles of $BSIZE into $DATA"
  python3 "$HERE/generate.py" --resources "$RESOURCES" --seed "$SEED" --out "$DATA" --bundles "$BSIZE" --post 0 >&2
fi
TOTAL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["resources"])' "$DATA/manifest.json")"
NBUNDLES="$(ls "$DATA/bundles" | wc -l)"
# Organisations and practitioners come first, as PUT Bundles; patients' Bundles refer to them.
NSHARED="$(python3 - "$DATA/bundles" <<'PY'
import json, sys, pathlib
n = 0
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    if json.loads(f.read_text())["entry"][0]["request"]["method"] != "PUT":
        break
    n += 1
print(n)
PY
)"

cleanup() {
  stop_server
  # new_db runs in a $(…) subshell, so its databases are found by the run's name suffix.
  local db
  for db in $(psql -X -At -d "$PG/postgres" -c "SELECT datname FROM pg_database WHERE datname LIKE 'ironfhir\_bulk\_%\_$$'"); do
    psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
new_db() {  # prints the URL of a fresh, migrated database
  local db="ironfhir_bulk_$(date +%s%N)_$$"
  psql -X -q -d "$PG/postgres" -c "CREATE DATABASE \"$db\"" >/dev/null
  DATABASE_URL="$PG/$db" "$BIN" migrate --data-dir "$OUT/keys" >/dev/null
  echo "$PG/$db"
}
subset() {  # name first count -> directory of symlinks to bundle files [first, first+count)
  local dir="$OUT/$1"; mkdir -p "$dir"
  ls "$DATA/bundles" | sed -n "$(( $2 + 1 )),$(( $2 + $3 ))p" | while read -r f; do ln -sf "$DATA/bundles/$f" "$dir/$f"; done
  echo "$dir"
}
import_rate() {  # log file -> resources/s from the summary line
  sed -n 's/.* resources in .* s (\([0-9]*\) resources\/s)/\1/p' "$1" | tail -1
}

# ------------------------------------------------------------------ 1. transaction ingest (HTTP)
URL1="$(new_db)"
start_server "$URL1" --document-dir "$OUT/documents" --max-bundle-entries 1000
SHARED="$(subset shared 0 "$NSHARED")"
log "loading $NSHARED Bundles of organisations and practitioners"
python3 "$HERE/post_bundles.py" --base "$BASE" --token "$TOKEN" --concurrency 1 "$SHARED" > "$OUT/tx_shared.json"
TX="$(subset tx "$NSHARED" "$TX_BUNDLES")"
log "transaction ingest: $TX_BUNDLES Bundles of ~$BSIZE at $TX_CLIENTS clients"
python3 "$HERE/post_bundles.py" --base "$BASE" --token "$TOKEN" --concurrency "$TX_CLIENTS" "$TX" > "$OUT/tx_concurrent.json"
SEQ="$(subset seq "$((NSHARED + TX_BUNDLES))" "$SEQ_BUNDLES")"
log "one by one: $SEQ_BUNDLES Bundles, 1 client"
python3 "$HERE/post_bundles.py" --base "$BASE" --token "$TOKEN" --concurrency 1 "$SEQ" > "$OUT/tx_sequential.json"
stop_server

# ------------------------------------------------------------------ 2. import of the same Bundles
URL2="$(new_db)"
DATABASE_URL="$URL2" "$BIN" import --data-dir "$OUT/keys" "$SHARED" > /dev/null 2>&1
log "import of the same $SEQ_BUNDLES Bundles (--parallel $PARALLEL)"
DATABASE_URL="$URL2" "$BIN" import --data-dir "$OUT/keys" --parallel "$PARALLEL" "$SEQ" > "$OUT/import_bundles.txt" 2> "$OUT/import_bundles.err"

# ------------------------------------------------------------------ 3. import of the whole dataset
URL3="$(new_db)"
log "import of $TOTAL resources (NDJSON, --parallel $PARALLEL)"
NDJSON=()
for t in Organization Practitioner Patient Encounter Observation Condition MedicationRequest Appointment; do
  [[ -s "$DATA/$t.ndjson" ]] && NDJSON+=("$DATA/$t.ndjson")
done
DATABASE_URL="$URL3" "$BIN" import --data-dir "$OUT/keys" --parallel "$PARALLEL" "${NDJSON[@]}" > "$OUT/import_all.txt" 2> "$OUT/import_all.err"
psql -X -q -d "$URL3" -c 'VACUUM ANALYZE resource' >/dev/null
DBSIZE="$(psql -X -At -d "$URL3" -c 'SELECT pg_size_pretty(pg_database_size(current_database()))')"

# ------------------------------------------------------------------ 4. system $export
start_server "$URL3" --document-dir "$OUT/documents" --max-bundle-entries 1000
log "system \$export of $TOTAL resources"
EXPORT_JSON="$(python3 - "$BASE" "$TOKEN" <<'PY'
import json, sys, time, urllib.request
base, token = sys.argv[1], sys.argv[2]
h = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json", "Prefer": "respond-async"}
t0 = time.perf_counter()
r = urllib.request.urlopen(urllib.request.Request(f"{base}/$export", headers=h))
status = r.headers["Content-Location"]
while True:
    r = urllib.request.urlopen(urllib.request.Request(status, headers={"Authorization": f"Bearer {token}"}))
    if r.status == 200:
        manifest = json.load(r)
        break
    time.sleep(0.25)
seconds = time.perf_counter() - t0
n = sum(o["count"] for o in manifest["output"])
print(json.dumps({"resources": n, "files": len(manifest["output"]), "seconds": round(seconds, 2),
                  "resources_per_s": round(n / seconds, 1)}))
PY
)"
echo "$EXPORT_JSON" > "$OUT/export.json"
EXPORT_BYTES="$(du -sb "$OUT/documents" | cut -f1)"
stop_server

# ------------------------------------------------------------------ report
python3 - "$OUT" "$TOTAL" "$DBSIZE" "$EXPORT_BYTES" "$BSIZE" "$TX_CLIENTS" "$PARALLEL" <<'PY' | tee "$OUT/report.md"
import json, os, re, sys, platform
out, total, dbsize, export_bytes, bsize, clients, parallel = sys.argv[1:8]
j = lambda n: json.load(open(os.path.join(out, n)))
def imported(name):
    text = open(os.path.join(out, name)).read()
    m = re.search(r"(\d+) resources in ([\d.]+) s \((\d+) resources/s\)", text)
    return (int(m.group(1)), float(m.group(2)), int(m.group(3))) if m else (0, 0.0, 0)
tx, seq, ex = j("tx_concurrent.json"), j("tx_sequential.json"), j("export.json")
ib, ia = imported("import_bundles.txt"), imported("import_all.txt")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"# ironfhir bulk benchmark\n")
print(f"Machine: {os.cpu_count()} cores ({cpu}), PostgreSQL and the server on the same host.")
print(f"Dataset: {int(total):,} synthetic resources (bench/generate.py), database after import {dbsize}.\n")
print("| workload | resources | seconds | resources/s | target |")
print("|---|---:|---:|---:|---|")
print(f"| transaction Bundles of ~{bsize}, {clients} concurrent clients (HTTP) | {tx['resources']:,} | {tx['seconds']} | {tx['resources_per_s']:,.0f} | ≥ 3,000 |")
print(f"| the same kind of Bundles POSTed one by one (1 client) | {seq['resources']:,} | {seq['seconds']} | {seq['resources_per_s']:,.0f} | |")
print(f"| `ironfhir import` of those same Bundles (--parallel {parallel}) | {ib[0]:,} | {ib[1]} | {ib[2]:,} | ≥ 5× one by one: {ib[2] / max(seq['resources_per_s'], 1):.1f}× |")
print(f"| `ironfhir import` of the whole dataset (NDJSON, --parallel {parallel}) | {ia[0]:,} | {ia[1]} | {ia[2]:,} | |")
print(f"| system `$export` (kick-off to manifest, {ex['files']} files, {int(export_bytes) / 1e9:.2f} GB) | {ex['resources']:,} | {ex['seconds']} | {ex['resources_per_s']:,.0f} | ≥ 20,000 |")
print(f"\nPer-Bundle latency at {clients} clients: p50 {tx['p50_ms']} ms, p99 {tx['p99_ms']} ms.")
PY
log "report: $OUT/report.md"
