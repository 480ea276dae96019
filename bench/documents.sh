#!/usr/bin/env bash
# A 100 MB document uploaded and downloaded through pre-signed URLs, for the embedded store
# (URLs signed and served by ironfhir, streaming) and for S3 (s3s-fs, which verifies SigV4),
# while the API process's RSS and CPU are sampled every 0.1 s.
#
#   bench/documents.sh                 # both stores, 100 MB
#   SIZE_MB=20 STORES=local bench/documents.sh
#
# Environment: IRONFHIR_BIN (default: the debug build in $CARGO_TARGET_DIR), PG (default
# postgres://postgres@127.0.0.1:5432), S3_SERVER (s3s-fs binary; default
# ~/.cache/ironfhir/s3s-fs/bin/s3s-fs), SIZE_MB, STORES ("local s3").
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
SIZE_MB="${SIZE_MB:-100}"
STORES="${STORES:-local s3}"
S3_SERVER="${S3_SERVER:-$HOME/.cache/ironfhir/s3s-fs/bin/s3s-fs}"
OUT="$(mktemp -d /tmp/ironfhir-bench-documents.XXXXXX)"
log() { echo "[documents] $*" >&2; }
source "$HERE/lib.sh"
require_tools psql curl jq python3 sha1sum
if [[ -z "${IRONFHIR_BIN:-}" ]]; then
  td="${CARGO_TARGET_DIR:-$REPO/target}"
  (cd "$REPO" && cargo build --quiet --bin ironfhir)
  IRONFHIR_BIN="$td/debug/ironfhir"
fi
BIN="$IRONFHIR_BIN"
PROFILE="$(basename "$(dirname "$BIN")")"

S3_PID=""
cleanup() {
  stop_server
  [[ -n "$S3_PID" ]] && kill "$S3_PID" 2>/dev/null || true
  psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS ironfhir_bench_documents WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap cleanup EXIT

log "making a ${SIZE_MB} MB document"
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom > "$OUT/doc.bin"
SIZE=$(stat -c %s "$OUT/doc.bin")
HASH=$(sha1sum "$OUT/doc.bin" | cut -d' ' -f1 | xxd -r -p | base64)

# sample PID FILE: VmRSS (kB) and utime+stime (ticks) every 0.1 s until killed.
sample() {
  while kill -0 "$1" 2>/dev/null; do
    echo "$(date +%s.%N) $(awk '/VmRSS/ {print $2}' "/proc/$1/status") $(awk '{print $14 + $15}' "/proc/$1/stat")" >> "$2"
    sleep 0.1
  done
}

# phase NAME CMD…: runs CMD while sampling the server; prints seconds, RSS before/max and CPU.
phase() {
  local name="$1"; shift
  local samples="$OUT/$name.samples"
  : > "$samples"
  sample "$SERVER_PID" "$samples" & local sampler=$!
  sleep 0.3
  local t0 t1
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  sleep 0.3
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  python3 - "$samples" "$t0" "$t1" "$name" "$SIZE" <<'PY'
import sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 3]
t0, t1, name, size = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
hz = 100.0
secs = t1 - t0
rss0 = rows[0][1] / 1024
rssmax = max(r[1] for r in rows) / 1024
cpu = (rows[-1][2] - rows[0][2]) / hz
print(f"{name:<22} {secs:6.2f} s  {size / secs / 1e6:7.1f} MB/s   server RSS {rss0:6.1f} → max {rssmax:6.1f} MB   server CPU {cpu:5.2f} s ({100 * cpu / secs:4.0f} % of one core)")
PY
}

run_store() {
  local store="$1"; shift
  psql -X -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS ironfhir_bench_documents WITH (FORCE)" -c "CREATE DATABASE ironfhir_bench_documents" >/dev/null
  rm -rf "$OUT/keys"
  start_server "$PG/ironfhir_bench_documents" --document-dir "$OUT/documents-$store" "$@"
  log "$store: server up (pid $SERVER_PID)"
  jq -n --arg size "$SIZE" --arg hash "$HASH" '{resourceType: "Parameters", parameter: [
      {name: "contentType", valueCode: "application/octet-stream"},
      {name: "size", valueUnsignedInt: ($size | tonumber)},
      {name: "hash", valueBase64Binary: $hash}]}' > "$OUT/upload.json"
  curl -sf -X POST "$BASE/Binary/\$upload" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/fhir+json' \
    --data @"$OUT/upload.json" > "$OUT/started.json"
  local id url
  id=$(jq -r '.parameter[] | select(.name == "binary") | .resource.id' "$OUT/started.json")
  url=$(jq -r '.parameter[] | select(.name == "url") | .valueUrl' "$OUT/started.json")
  local headers=()
  while IFS= read -r h; do [[ "$h" == content-length:* ]] || headers+=(-H "$h"); done \
    < <(jq -r '.parameter[] | select(.name == "header") | .valueString' "$OUT/started.json")
  upload() { curl -sf -o /dev/null -X PUT "${headers[@]}" -T "$OUT/doc.bin" "$url"; }
  complete() { curl -sf -o /dev/null -X POST "$BASE/Binary/$id/\$upload-complete" -H "Authorization: Bearer $TOKEN"; }
  download() {
    local location
    location=$(curl -sf -o /dev/null -w '%{redirect_url}' -H "Authorization: Bearer $TOKEN" -H 'Accept: application/octet-stream' "$BASE/Binary/$id")
    curl -sf -o "$OUT/back.bin" "$location"
  }
  echo "## $store store ($PROFILE build, ${SIZE_MB} MB)"
  phase "$store upload (PUT)" upload
  phase "$store \$upload-complete" complete
  phase "$store download (GET)" download
  cmp -s "$OUT/doc.bin" "$OUT/back.bin" && echo "downloaded bytes identical" || { echo "DOWNLOAD DIFFERS"; exit 1; }
  stop_server
}

echo "# bench/documents.sh — $(date -u +%F), $(nproc) cores, $(uname -m), $PROFILE build"
for store in $STORES; do
  case "$store" in
    local) run_store local ;;
    s3)
      [[ -x "$S3_SERVER" ]] || { log "s3s-fs not found at $S3_SERVER (cargo install s3s-fs@0.14.1 --features binary --locked --root ~/.cache/ironfhir/s3s-fs)"; exit 2; }
      mkdir -p "$OUT/s3/bench"
      port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
      "$S3_SERVER" --host 127.0.0.1 --port "$port" --access-key bench-key --secret-key bench-secret "$OUT/s3" >"$OUT/s3.log" 2>&1 &
      S3_PID=$!
      sleep 1
      AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret run_store s3 \
        --s3-bucket bench --s3-endpoint "http://127.0.0.1:$port" --s3-region us-east-1 --s3-force-path-style
      ;;
  esac
done
