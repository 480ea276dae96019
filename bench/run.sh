#!/usr/bin/env bash
# ironfhir load benchmark: ingest, read-by-id, and PostgreSQL's own limits on the same tables.
# See bench/README.md. Every request goes to 127.0.0.1 only; every phase is bounded in time.
#
#   bench/run.sh                          # ~20,000 resources, 16 connections
#   BENCH_RESOURCES=200000 bench/run.sh   # larger dataset
#
# Environment (defaults in brackets):
#   BENCH_RESOURCES [20000]  resources to generate and load     BENCH_SEED [42]
#   BENCH_CONNECTIONS [16]   wrk connections / pgbench clients  BENCH_THREADS [2] wrk/pgbench threads
#   BENCH_DURATION [30]      seconds of each timed read/pgbench phase
#   BENCH_POST_DURATION [20] seconds of the POST ingest phase
#   BENCH_PG [postgres://postgres@127.0.0.1:5432]  PostgreSQL server (a fresh database is made)
#   IRONFHIR_BIN             use this binary instead of `cargo build --release`
#   CARGO_TARGET_DIR         honoured for the release build
#   BENCH_OUT [bench/out/<time>]  where data, logs and report.md go
#   BENCH_KEEP=1             keep the database afterwards
#   BENCH_SERVER_ARGS        extra `serve` flags (bench/phi.sh: --no-seal --no-audit)
#   BENCH_SKIP_PGBENCH=1     skip the PostgreSQL-limits phase and the report (bench/phi.sh)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RESOURCES="${BENCH_RESOURCES:-20000}"
SEED="${BENCH_SEED:-42}"
CONNS="${BENCH_CONNECTIONS:-16}"
THREADS="${BENCH_THREADS:-2}"
DURATION="${BENCH_DURATION:-30}"
POST_DURATION="${BENCH_POST_DURATION:-20}"
PG="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
PG="${PG%/}"
OUT="${BENCH_OUT:-$HERE/out/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
log() { echo "bench: $*" >&2; }

# ------------------------------------------------------------------ tools
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v pgbench >/dev/null || need_apt+=(postgresql)   # Debian ships pgbench with the server
command -v python3 >/dev/null || need_apt+=(python3)
if ((${#need_apt[@]})); then
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    log "missing ${need_apt[*]}: install them (Debian: apt-get install ${need_apt[*]})"; exit 2
  fi
  log "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
psql -X -q -d "$PG/postgres" -c 'select 1' >/dev/null || {
  log "PostgreSQL at $PG is not reachable (set BENCH_PG)"; exit 2; }

# ------------------------------------------------------------------ binary
if [[ -n "${IRONFHIR_BIN:-}" ]]; then
  BIN="$IRONFHIR_BIN"
else
  log "cargo build --release (a clean release build takes long on 2 cores)"
  (cd "$REPO" && cargo build --release --quiet --bin ironfhir)
  TD="${CARGO_TARGET_DIR:-$REPO/target}"
  [[ "$TD" = /* ]] || TD="$REPO/$TD"
  BIN="$TD/release/ironfhir"
fi
[[ -x "$BIN" ]] || { log "no binary at $BIN"; exit 2; }

# ------------------------------------------------------------------ data (cached per size/seed)
DATA="$HERE/out/data-$RESOURCES-$SEED"
if [[ ! -f "$DATA/manifest.json" ]]; then
  log "generating $RESOURCES resources (seed $SEED) into $DATA"
  python3 "$HERE/generate.py" --resources "$RESOURCES" --seed "$SEED" --out "$DATA" >&2
fi

# ------------------------------------------------------------------ database and server
DB="ironfhir_bench_$(date +%s)_$$"
DBURL="$PG/$DB"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ "${BENCH_KEEP:-0}" != 1 ]]; then
    psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  else
    log "kept database $DBURL"
  fi
}
trap cleanup EXIT
psql -X -q -d "$PG/postgres" -c "CREATE DATABASE \"$DB\"" >/dev/null

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT/fhir"
mkdir -p "$OUT/server"
log "starting $BIN on $BASE (log: $OUT/server.log)"
DATABASE_URL="$DBURL" RUST_LOG="${RUST_LOG:-warn}" \
  "$BIN" serve --data-dir "$OUT/server" --listen "127.0.0.1:$PORT" ${BENCH_SERVER_ARGS:-} >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 600); do
  if curl -fsS -o /dev/null "$BASE/metadata" 2>/dev/null \
     || python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$BASE/metadata" 2>/dev/null; then
    break
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || { log "server exited:"; tail -20 "$OUT/server.log" >&2; exit 1; }
  [[ $i == 600 ]] && { log "server did not start in 120 s"; exit 1; }
  sleep 0.2
done
TOKEN="$(DATABASE_URL="$DBURL" "$BIN" admin token --data-dir "$OUT/server" --scope 'system/*.*' --ttl 86400 | tail -1)"

WRK=(wrk -t"$THREADS" -c"$CONNS" --latency --timeout 30s)
result() { grep '^BENCH_JSON ' | sed 's/^BENCH_JSON //'; }

# ------------------------------------------------------------------ 1. ingest with PUT (client ids)
: > "$OUT/ingest_put.jsonl"
for level in 1 2 3 4; do
  files=()
  while read -r f; do [[ -n "$f" ]] && files+=("$DATA/$f"); done < "$DATA/level-$level.list"
  log "ingest phase $level: PUT $(cat "${files[@]}" | wc -l) resources"
  "${WRK[@]}" -d900s -s "$HERE/put.lua" "$BASE" -- "$TOKEN" "$THREADS" "${files[@]}" \
    > "$OUT/wrk_put_$level.txt"
  result < "$OUT/wrk_put_$level.txt" >> "$OUT/ingest_put.jsonl"
done
STORED="$(psql -X -At -d "$DBURL" -c 'SELECT count(*) FROM resource WHERE NOT deleted')"
log "resources stored after PUT ingest: $STORED"

# ------------------------------------------------------------------ 2. ingest with POST (server ids)
log "ingest: POST Observation for ${POST_DURATION}s"
"${WRK[@]}" -d"${POST_DURATION}s" -s "$HERE/post.lua" "$BASE" -- "$TOKEN" "$THREADS" \
  "$DATA/post-Observation.ndjson" > "$OUT/wrk_post.txt"
result < "$OUT/wrk_post.txt" > "$OUT/ingest_post.json"

psql -X -q -d "$DBURL" -c 'VACUUM ANALYZE resource' -c 'VACUUM ANALYZE resource_history'
TABLES="$(psql -X -At -F $'\t' -d "$DBURL" -c "SELECT count(*), pg_total_relation_size('resource'), pg_total_relation_size('resource_history'), pg_database_size(current_database()) FROM resource")"

# ------------------------------------------------------------------ 3. read by id
log "read by id: warm-up 5 s, then ${DURATION}s"
"${WRK[@]}" -d5s -s "$HERE/urls.lua" "$BASE" -- "$TOKEN" "$DATA/ids.tsv" > "$OUT/wrk_read_warmup.txt"
"${WRK[@]}" -d"${DURATION}s" -s "$HERE/urls.lua" "$BASE" -- "$TOKEN" "$DATA/ids.tsv" \
  > "$OUT/wrk_read.txt"
result < "$OUT/wrk_read.txt" > "$OUT/read.json"

# ------------------------------------------------------------------ audit projection backlog
# With the audit trail on, the searchable AuditEvents are projected from the chain in the
# background, at a bounded share of the CPU while requests are served (src/audit/projection.rs):
# how many events were not projected yet when the read phase ended, and how long the server
# took to project them once the load had stopped.
backlog() { psql -X -At -d "$DBURL" -c "SELECT coalesce((SELECT max(seq) FROM audit_log), 0) - (SELECT projected_seq FROM audit_projection)"; }
BEHIND="$(backlog)"
DRAIN_START="$(date +%s.%N)"
for _ in $(seq 3000); do [[ "$(backlog)" -gt 0 ]] || break; sleep 0.1; done
DRAINED="$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$DRAIN_START" "$(date +%s.%N)")"
echo "{\"behind_after_read\": $BEHIND, \"drain_seconds\": $DRAINED, \"still_behind\": $(backlog)}" > "$OUT/audit_projection.json"
log "audit projection: $BEHIND events behind after the read phase, projected in ${DRAINED}s"

if [[ "${BENCH_SKIP_PGBENCH:-0}" == 1 ]]; then
  log "results in $OUT (pgbench phase and report skipped)"
  exit 0
fi

# ------------------------------------------------------------------ 4. PostgreSQL limits (pgbench)
log "pgbench: preparing scratch tables"
NIDS="$(wc -l < "$DATA/ids.tsv")"
DOC="$(head -1 "$DATA/Patient.ndjson")"
psql -X -q -v ON_ERROR_STOP=1 -d "$DBURL" <<SQL
CREATE TABLE bench_ids (n serial PRIMARY KEY, resource_type text NOT NULL, id text NOT NULL);
\copy bench_ids (resource_type, id) FROM '$DATA/ids.tsv'
CREATE TABLE bench_insert (LIKE resource INCLUDING ALL);
CREATE TABLE bench_insert_history (LIKE resource_history INCLUDING ALL);
CREATE TABLE bench_doc (doc jsonb NOT NULL);
INSERT INTO bench_doc VALUES (\$doc\$$DOC\$doc\$::jsonb);
VACUUM ANALYZE bench_ids;
SQL
cat > "$OUT/pg_select.sql" <<SQL
\\set n random(1, $NIDS)
SELECT r.content FROM resource r
 WHERE (r.resource_type, r.id) = (SELECT b.resource_type, b.id FROM bench_ids b WHERE b.n = :n);
SQL
cat > "$OUT/pg_insert.sql" <<'SQL'
INSERT INTO bench_insert (resource_type, id, version_id, last_updated, deleted, content)
SELECT 'Patient', gen_random_uuid()::text, 1, now(), false, doc FROM bench_doc;
SQL
cat > "$OUT/pg_insert2.sql" <<'SQL'
BEGIN;
INSERT INTO bench_insert (resource_type, id, version_id, last_updated, deleted, content)
SELECT 'Patient', gen_random_uuid()::text, 1, now(), false, doc FROM bench_doc;
INSERT INTO bench_insert_history (resource_type, id, version_id, last_updated, method, deleted, content)
SELECT 'Patient', gen_random_uuid()::text, 1, now(), 'POST', false, doc FROM bench_doc;
COMMIT;
SQL
pgb() {  # name script
  local name="$1" script="$2"
  rm -rf "$OUT/pgb_$name"; mkdir -p "$OUT/pgb_$name"
  log "pgbench $name: ${DURATION}s, $CONNS clients"
  (cd "$OUT/pgb_$name" && pgbench -n -M prepared -c "$CONNS" -j "$THREADS" -T "$DURATION" \
     -l --sampling-rate=0.2 -f "$script" "$DBURL") > "$OUT/pgbench_$name.txt" 2>&1
}
pgb select "$OUT/pg_select.sql"
pgb insert "$OUT/pg_insert.sql"
pgb insert2 "$OUT/pg_insert2.sql"

# ------------------------------------------------------------------ report
python3 "$HERE/report.py" --out "$OUT" --data "$DATA" --tables "$TABLES" \
  --stored "$STORED" --connections "$CONNS" --duration "$DURATION" \
  --post-duration "$POST_DURATION" --binary "$BIN" | tee "$OUT/report.md"
log "report: $OUT/report.md"
