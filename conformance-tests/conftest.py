"""Session fixtures: one live ironfhir on a fresh PostgreSQL database for the whole suite.

The suite is black-box: it starts the built binary, talks to it only over HTTP, and mints
bearer tokens with `ironfhir admin token` (the signing key lives in the server's data dir).

Environment:
  IRONFHIR_BIN          path of the binary (default: $CARGO_TARGET_DIR/debug/ironfhir, then
                        <repo>/target/debug/ironfhir)
  IRONFHIR_TEST_PG      PostgreSQL server URL without database
                        (default postgres://postgres@127.0.0.1:5432); a database
                        ironfhir_conf_<random> is created on it and dropped afterwards
  IRONFHIR_TEST_STARTUP_TIMEOUT  seconds to wait for GET /fhir/metadata (default 90)
  IRONFHIR_TEST_KEEP=1  keep the temporary data dir and database (for debugging)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from support import TimeoutSession

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432"


def find_binary() -> Path:
    explicit = os.environ.get("IRONFHIR_BIN")
    if explicit:
        return Path(explicit)
    candidates = []
    target_dir = os.environ.get("CARGO_TARGET_DIR")
    if target_dir:
        td = Path(target_dir)
        if not td.is_absolute():
            td = REPO_ROOT / td
        candidates.append(td / "debug" / "ironfhir")
    candidates.append(REPO_ROOT / "target" / "debug" / "ironfhir")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(
        "ironfhir binary not found; tried " + ", ".join(str(c) for c in candidates)
        + " (build with `cargo build` or set IRONFHIR_BIN)"
    )


def database_url(server_url: str, dbname: str) -> str:
    """Replace the path of a postgres:// URL with /dbname, keeping user, host and query."""
    parts = urllib.parse.urlsplit(server_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))


def psql(server_url: str, sql: str) -> None:
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url(server_url, "postgres"),
         "-c", sql],
        check=True, capture_output=True, text=True, timeout=60,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    binary: Path
    data_dir: Path
    base_url: str  # the FHIR base, e.g. http://127.0.0.1:PORT/fhir
    env: dict
    log_path: Path
    process: subprocess.Popen | None = None
    tokens: dict = field(default_factory=dict)
    saved_log: str | None = None
    died: int | None = None  # exit status if the server ended before the suite did

    def mint_token(self, scope: str, ttl: int | None = None, data_dir: Path | None = None) -> str:
        """`ironfhir admin token` with the server's data dir (or another one, for a foreign key)."""
        cmd = [str(self.binary), "admin", "token", "--data-dir", str(data_dir or self.data_dir),
               "--scope", scope]
        if ttl is not None:
            cmd += ["--ttl", str(ttl)]
        out = subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True,
                             timeout=60)
        lines = [l.strip() for l in out.stdout.splitlines() if l.strip()]
        assert lines, f"admin token printed nothing; stderr: {out.stderr}"
        return lines[-1]

    def token(self, scope: str) -> str:
        if scope not in self.tokens:
            self.tokens[scope] = self.mint_token(scope)
        return self.tokens[scope]

    def log_tail(self, n: int = 60) -> str:
        if self.saved_log is not None:
            return "\n".join(self.saved_log.splitlines()[-n:])
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"


_SERVER: Server | None = None


@pytest.fixture(scope="session")
def server():
    global _SERVER
    try:
        binary = find_binary()
    except FileNotFoundError as e:
        pytest.exit(str(e), returncode=3)

    pg = os.environ.get("IRONFHIR_TEST_PG", DEFAULT_PG)
    keep = os.environ.get("IRONFHIR_TEST_KEEP") == "1"
    dbname = "ironfhir_conf_" + secrets.token_hex(6)
    try:
        psql(pg, f'CREATE DATABASE "{dbname}"')
    except subprocess.CalledProcessError as e:
        pytest.exit(f"cannot create database {dbname} on {pg}: {e.stderr}", returncode=3)

    data_dir = Path(tempfile.mkdtemp(prefix="ironfhir-conf-"))
    port = free_port()
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url(pg, dbname)
    # tower_http at debug logs every request and response: test_zz_no_phi_in_logs.py checks
    # that none of that carries a seeded name, phone number or birth date.
    env.setdefault("RUST_LOG", "info,tower_http=debug")
    env.pop("IRONFHIR_BASE_URL", None)
    # Short connection timeouts, so test_hostile_http.py can watch them fire (it reads these
    # values from server.env); requests' pooled connections reconnect when one was closed.
    env.setdefault("IRONFHIR_HEADER_READ_TIMEOUT_SECS", "3")
    env.setdefault("IRONFHIR_IDLE_TIMEOUT_SECS", "6")
    log_path = data_dir / "server.log"
    srv = Server(binary=binary, data_dir=data_dir, base_url=f"http://127.0.0.1:{port}/fhir",
                 env=env, log_path=log_path)
    _SERVER = srv
    log = open(log_path, "wb")
    srv.process = subprocess.Popen(
        [str(binary), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + float(os.environ.get("IRONFHIR_TEST_STARTUP_TIMEOUT", "90"))
        while True:
            if srv.process.poll() is not None:
                pytest.exit(f"ironfhir serve exited with {srv.process.returncode}:\n"
                            + srv.log_tail(), returncode=3)
            try:
                r = requests.get(srv.base_url + "/metadata", timeout=2,
                                 headers={"Accept": "application/fhir+json"})
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.exit("ironfhir did not answer GET /fhir/metadata with 200 in time:\n"
                            + srv.log_tail(), returncode=3)
            time.sleep(0.2)
        yield srv
    finally:
        srv.died = srv.process.poll()
        if srv.died is None:
            srv.process.send_signal(signal.SIGTERM)
            try:
                srv.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                srv.process.kill()
                srv.process.wait(timeout=10)
        log.close()
        srv.saved_log = srv.log_tail(100000)
        if not keep:
            try:
                psql(pg, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            except subprocess.CalledProcessError as e:
                print(f"warning: could not drop {dbname}: {e.stderr}")
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"\nkept data dir {data_dir} and database {dbname}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """On failure, show the end of the server log: the suite only sees HTTP, the log says why."""
    if exitstatus != 0 and _SERVER is not None:
        lines = _SERVER.log_tail(100000).splitlines()
        notable = []
        for i, line in enumerate(lines):
            if "panicked at" in line:
                notable += lines[i:i + 2]
            elif " ERROR " in line or " WARN " in line:
                notable.append(line)
        if _SERVER.died is not None:
            terminalreporter.write_line(
                f"ironfhir exited during the run with status {_SERVER.died}"
                + (" (killed by a signal)" if _SERVER.died < 0 else ""), red=True)
        terminalreporter.write_sep("-", "ironfhir server log: panics, errors and warnings")
        terminalreporter.write_line("\n".join(notable[-40:]) or "(none)")


@pytest.fixture(scope="session")
def base(server) -> str:
    return server.base_url


@pytest.fixture(scope="session")
def token(server) -> str:
    return server.token("system/*.*")


@pytest.fixture(scope="session")
def http(token) -> requests.Session:
    """requests session with a full-access bearer token and JSON defaults."""
    s = TimeoutSession()
    s.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
    return s


@pytest.fixture(scope="session")
def anon() -> requests.Session:
    """requests session with no credentials."""
    return TimeoutSession()


@pytest.fixture(scope="session")
def fhirpy_client(base, token):
    from fhirpy import SyncFHIRClient

    return SyncFHIRClient(base, authorization=f"Bearer {token}",
                          requests_config={"timeout": 30})


@pytest.fixture(scope="session")
def smart_server(base, token):
    """fhirclient (SMART on FHIR Python client) FHIRServer that signs requests with our token."""
    from support import smart_server_for

    return smart_server_for(base, token)
