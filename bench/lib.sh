# Shared by bench/bulk.sh and bench/search.sh (sourced after HERE, REPO, PG, OUT and log are set):
# the checks, the release binary, and one server at a time on a free port.

# require_tools TOOL… : exit 2 with an install hint when a tool or PostgreSQL is missing.
require_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { log "$t is missing (apt-get install ${t/psql/postgresql-client})"; exit 2; }
  done
  psql -X -q -d "$PG/postgres" -c 'select 1' >/dev/null || { log "PostgreSQL at $PG is not reachable"; exit 2; }
}

# release_binary: sets BIN to $IRONFHIR_BIN, or builds the release binary.
release_binary() {
  if [[ -n "${IRONFHIR_BIN:-}" ]]; then
    BIN="$IRONFHIR_BIN"
    return
  fi
  log "cargo build --release"
  (cd "$REPO" && cargo build --release --quiet --bin ironfhir)
  local td="${CARGO_TARGET_DIR:-$REPO/target}"
  [[ "$td" = /* ]] || td="$REPO/$td"
  BIN="$td/release/ironfhir"
}

SERVER_PID=""
# start_server URL [SERVE ARGS…]: serves the database at URL on a free port; sets BASE,
# SERVER_PID and TOKEN (system/*.*); the log goes to $OUT/server.log.
start_server() {
  local url="$1" port i
  shift
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  BASE="http://127.0.0.1:$port/fhir"
  DATABASE_URL="$url" RUST_LOG="${RUST_LOG:-warn}" "$BIN" serve --data-dir "$OUT/keys" --listen "127.0.0.1:$port" "$@" \
    >>"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for i in $(seq 300); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$BASE/metadata" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { log "server exited"; tail -20 "$OUT/server.log" >&2; exit 1; }
    [[ $i == 300 ]] && { log "server did not start"; exit 1; }
    sleep 0.2
  done
  TOKEN="$("$BIN" admin token --data-dir "$OUT/keys" --scope 'system/*.*' --ttl 86400 | tail -1)"
}

# stop_server: SIGTERM, then SIGKILL after 20 s.
stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
