#!/usr/bin/env bash
# ironfhir search benchmark (issue 3): `ironfhir import` of a generated dataset with every
# search index on (ingest rate), then six searches and read-by-id, each for BENCH_DURATION
# seconds at BENCH_CONNECTIONS connections, in one run against one server. Asserts nothing:
# prints a report (also bench/out/search-<time>/report.md). See bench/README.md ("Search").
#
#   bench/search.sh                         # 1,000,000 resources
#   SEARCH_RESOURCES=100000 bench/search.sh # smaller
#
# Environment (defaults in brackets):
#   SEARCH_RESOURCES [1000000]  dataset size (bench/generate.py)   BENCH_SEED [42]
#   BENCH_DURATION [20]         seconds per workload               BENCH_CONNECTIONS [16]
#   BENCH_THREADS [2]           wrk threads                        SEARCH_SAMPLES [2000] URLs per search
#   SEARCH_IMPORT_PARALLEL [2]  `ironfhir import --parallel`
#   SEARCH_DATABASE_URL         an already loaded database: skip the import (and keep it)
#   BENCH_KEEP_DB               keep the database the run created
#   BENCH_PG [postgres://postgres@127.0.0.1:5432]   IRONFHIR_BIN, CARGO_TARGET_DIR as run.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RESOURCES="${SEARCH_RESOURCES:-1000000}"
SEED="${BENCH_SEED:-42}"
DURATION="${BENCH_DURATION:-20}"
CONNS="${BENCH_CONNECTIONS:-16}"
THREADS="${BENCH_THREADS:-2}"
SAMPLES="${SEARCH_SAMPLES:-2000}"
PARALLEL="${SEARCH_IMPORT_PARALLEL:-2}"
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
PG="${PG%/}"
OUT="${BENCH_OUT:-$HERE/out/search-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
log() { echo "search: $(date +%H:%M:%S) $*" >&2; }

source "$HERE/lib.sh"
require_tools psql wrk
release_binary

DATA="$HERE/out/data-$RESOURCES-$SEED"
if [[ ! -f "$DATA/manifest.json" ]]; then
  log "generating $RESOURCES resources into $DATA"
  python3 "$HERE/generate.py" --resources "$RESOURCES" --seed "$SEED" --out "$DATA" --post 0 >&2
fi

if [[ -n "${SEARCH_DATABASE_URL:-}" ]]; then
  URL="$SEARCH_DATABASE_URL"
  DB=""
else
  DB="ironfhir_search_$(date +%s)_$$"
  URL="$PG/$DB"
fi
cleanup() {
  stop_server
  [[ -n "${BENCH_KEEP_DB:-}" || -z "$DB" ]] || psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# ------------------------------------------------------------------ 1. ingest with indexes on
if [[ -n "$DB" ]]; then
  psql -X -q -d "$PG/postgres" -c "CREATE DATABASE \"$DB\"" >/dev/null
  DATABASE_URL="$URL" "$BIN" migrate --data-dir "$OUT/keys" >/dev/null
  NDJSON=()
  for t in Organization Practitioner Patient Encounter Observation Condition MedicationRequest Appointment; do
    [[ -s "$DATA/$t.ndjson" ]] && NDJSON+=("$DATA/$t.ndjson")
  done
  log "import of $RESOURCES resources with all search indexes (--parallel $PARALLEL)"
  DATABASE_URL="$URL" "$BIN" import --data-dir "$OUT/keys" --parallel "$PARALLEL" "${NDJSON[@]}" > "$OUT/import.txt" 2> "$OUT/import.err"
else
  log "using the loaded database $URL (no import)"
  : > "$OUT/import.txt"
  DATABASE_URL="$URL" "$BIN" migrate --data-dir "$OUT/keys" >/dev/null
fi
log "VACUUM ANALYZE"
psql -X -q -d "$URL" -c 'VACUUM ANALYZE' >/dev/null
psql -X -At -d "$URL" > "$OUT/sizes.txt" <<'SQL'
SELECT 'database', pg_size_pretty(pg_database_size(current_database()));
SELECT 'resources', count(*) FROM resource;
SELECT 'index rows', (SELECT count(*) FROM search_string) + (SELECT count(*) FROM search_token) + (SELECT count(*) FROM search_reference)
  + (SELECT count(*) FROM search_date) + (SELECT count(*) FROM search_number) + (SELECT count(*) FROM search_uri);
SELECT 'index tables', pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c WHERE c.relname LIKE 'search\_%' AND c.relkind = 'r';
SQL

# ------------------------------------------------------------------ 2. the URLs of each workload
log "sampling $SAMPLES search URLs per workload"
q() { psql -X -At -F $'\t' -d "$URL" -c "$1"; }
q "SELECT resource_type || '/' || id FROM resource TABLESAMPLE SYSTEM (5) ORDER BY random() LIMIT $SAMPLES" > "$OUT/read.urls"
q "SELECT 'Patient?name=' || left(content->'name'->0->>'family', length(content->'name'->0->>'family') - 1)
   FROM resource WHERE resource_type = 'Patient' ORDER BY random() LIMIT $SAMPLES" > "$OUT/patient_name.urls"
q "SELECT 'Patient?identifier=' || (content->'identifier'->0->>'system') || '|' || (content->'identifier'->0->>'value')
   FROM resource WHERE resource_type = 'Patient' ORDER BY random() LIMIT $SAMPLES" > "$OUT/patient_identifier.urls"
q "SELECT 'Observation?subject=' || substr(content->'subject'->>'reference', 9) || '&code=http://loinc.org|'
     || (content->'code'->'coding'->0->>'code') || '&date=ge' || left(content->>'effectiveDateTime', 7)
   FROM resource TABLESAMPLE SYSTEM (5) WHERE resource_type = 'Observation' ORDER BY random() LIMIT $SAMPLES" > "$OUT/observation.urls"
q "SELECT 'MedicationRequest?patient=' || substr(content->'subject'->>'reference', 9) || '&status=active&_include=MedicationRequest:requester'
   FROM resource TABLESAMPLE SYSTEM (5) WHERE resource_type = 'MedicationRequest' ORDER BY random() LIMIT $SAMPLES" > "$OUT/medication_request.urls"
q "SELECT 'Appointment?practitioner=' || substr(p->'actor'->>'reference', 14) || '&date=ge' || left(content->>'start', 10)
     || '&date=lt' || to_char((content->>'start')::timestamptz + interval '30 days', 'YYYY-MM-DD')
   FROM resource TABLESAMPLE SYSTEM (10), jsonb_array_elements(content->'participant') p
   WHERE resource_type = 'Appointment' AND p->'actor'->>'reference' LIKE 'Practitioner/%' ORDER BY random() LIMIT $SAMPLES" > "$OUT/appointment.urls"
q "SELECT 'Encounter?subject:Patient.name=' || (content->'name'->0->>'family')
   FROM resource WHERE resource_type = 'Patient' ORDER BY random() LIMIT $SAMPLES" > "$OUT/encounter_chain.urls"

# ------------------------------------------------------------------ 3. server and workloads
start_server "$URL" --db-pool-size "${BENCH_POOL:-16}"
WORKLOADS=(read patient_name patient_identifier observation medication_request appointment encounter_chain)
for w in "${WORKLOADS[@]}"; do
  log "$w: ${DURATION}s at $CONNS connections"
  # A short warm-up, then the measured run.
  wrk -t"$THREADS" -c"$CONNS" -d3s --timeout 30s -s "$HERE/urls.lua" "$BASE" -- "$TOKEN" "$OUT/$w.urls" >/dev/null 2>&1 || true
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency --timeout 30s -s "$HERE/urls.lua" "$BASE" -- "$TOKEN" "$OUT/$w.urls" \
    > "$OUT/$w.wrk" 2> "$OUT/$w.err"
done
# How many matches each search has (median over 50 URLs, counted with _total=accurate).
python3 - "$BASE" "$TOKEN" "$OUT" "${WORKLOADS[@]:1}" > "$OUT/matches.json" <<'PY'
import json, sys, statistics, urllib.request
base, token, out, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
result = {}
for name in names:
    urls = [l.strip() for l in open(f"{out}/{name}.urls") if l.strip()][:50]
    totals = []
    for u in urls:
        req = urllib.request.Request(f"{base}/{u}&_total=accurate&_count=0", headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
        b = json.load(urllib.request.urlopen(req))
        totals.append(b.get("total", 0))
    result[name] = statistics.median(totals) if totals else 0
print(json.dumps(result))
PY

# ------------------------------------------------------------------ report
python3 - "$OUT" "$RESOURCES" "$DURATION" "$CONNS" "${WORKLOADS[@]}" <<'PY' | tee "$OUT/report.md"
import json, os, re, sys, platform
out, resources, duration, conns, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
def wrk(name):
    text = open(os.path.join(out, f"{name}.wrk")).read()
    line = next(l for l in text.splitlines() if l.startswith("BENCH_JSON "))
    j = json.loads(line[len("BENCH_JSON "):])
    j["rate"] = j["requests"] / (j["duration_us"] / 1e6)
    return j
sizes = dict(l.split("|", 1) for l in open(os.path.join(out, "sizes.txt")).read().splitlines() if "|" in l)
imp = open(os.path.join(out, "import.txt")).read()
m = re.search(r"(\d+) resources in ([\d.]+) s \((\d+) resources/s\)", imp)
matches = json.load(open(os.path.join(out, "matches.json")))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
queries = {
    "read": "GET [base]/<Type>/<id> (any resource)",
    "patient_name": "Patient?name=<family minus its last character>",
    "patient_identifier": "Patient?identifier=<system>|<value>",
    "observation": "Observation?subject=<id>&code=http://loinc.org\\|<code>&date=ge<month>",
    "medication_request": "MedicationRequest?patient=<id>&status=active&_include=MedicationRequest:requester",
    "appointment": "Appointment?practitioner=<id>&date=ge<d1>&date=lt<d1+30 days>",
    "encounter_chain": "Encounter?subject:Patient.name=<family>",
}
read = wrk("read")
print("# ironfhir search benchmark\n")
print(f"Machine: {os.cpu_count()} cores ({cpu}); PostgreSQL 15, the server and wrk on the same host.")
print(f"Dataset: {int(sizes.get('resources', 0)):,} resources (bench/generate.py, {resources:,} requested), "
      f"{int(sizes.get('index rows', 0)):,} index rows ({sizes.get('index tables')}), database {sizes.get('database')}.")
if m:
    print(f"Ingest with every search index on: `ironfhir import` of the NDJSON files, {int(m.group(1)):,} resources in "
          f"{m.group(2)} s = **{int(m.group(3)):,} resources/s** (target ≥ 1,000).")
print(f"\nEach workload: {duration} s at {conns} connections after a 3 s warm-up, URLs drawn at random "
      f"from {sum(1 for _ in open(os.path.join(out, 'read.urls')))} samples; default `_count` (20) and `_total`.\n")
print("| workload | median matches | requests/s | p50 ms | p99 ms | vs read | errors |")
print("|---|---:|---:|---:|---:|---:|---:|")
for n in names:
    j = wrk(n)
    errors = sum(j["errors"].values())
    print(f"| `{queries[n]}` | {matches.get(n, '–')} | {j['rate']:,.0f} | {j['latency_us']['p50'] / 1000:.1f} | "
          f"{j['latency_us']['p99'] / 1000:.1f} | {j['rate'] / read['rate']:.2f} | {errors} |")
PY
log "report: $OUT/report.md"
