"""Hostile input (issue 21, item 7, HTTP hygiene): what the server does with requests that
break HTTP rather than FHIR. Each was reproduced against the build before the fix: a GET with
1 MB of content got a truncated answer and a TCP reset, a client sending its whole over-limit
body was reset instead of reading the 413, a slow request head or an idle connection was held
for ever, a chunked body with broken framing was 413 instead of 400, and hyper's own 414 and
431 answers had an empty body. Raw sockets throughout: HTTP client libraries hide exactly
these details. The server runs with the short timeouts conftest.py gives it."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse

import pytest

from support import FHIR_JSON


def _target(base: str) -> tuple[str, int, str, str]:
    u = urllib.parse.urlsplit(base)
    return u.hostname, u.port, u.path, u.netloc


def _connect(base: str, timeout: float = 20) -> socket.socket:
    host, port, _, _ = _target(base)
    return socket.create_connection((host, port), timeout=timeout)


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def outcome(self) -> dict:
        """The body is a FHIR JSON OperationOutcome with an error issue (http.html#errors)."""
        assert self.headers.get("content-type", "").split(";")[0].strip() == FHIR_JSON, self.headers
        outcome = json.loads(self.body)
        assert outcome.get("resourceType") == "OperationOutcome", outcome
        assert {i.get("severity") for i in outcome.get("issue", [])} & {"error", "fatal"}, outcome
        return outcome


class Reader:
    """Reads HTTP/1.1 responses off a socket (Content-Length framed, as ironfhir answers)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _more(self) -> bytes:
        data = self.sock.recv(65536)
        self.buffer += data
        return data

    def response(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            if not self._more():
                raise AssertionError(f"the connection ended inside a response head: {self.buffer[:200]!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._more():
                raise AssertionError(f"the response body was cut at {len(self.buffer)} of {length} bytes")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(status, headers, body)

    def end_of_stream(self) -> bytes:
        """Reads until the server closes; a reset fails the caller (ConnectionResetError)."""
        while self._more():
            pass
        return self.buffer


def _send_in_background(sock: socket.socket, data: bytes) -> dict:
    """sendall in a thread (the server may answer before the request is sent); the outcome
    ends up in the returned dict once the thread is joined."""
    result: dict = {}

    def run():
        try:
            sock.sendall(data)
            result["sent"] = True
        except OSError as e:
            result["error"] = e

    result["thread"] = threading.Thread(target=run, daemon=True)
    result["thread"].start()
    return result


def _timeouts(server) -> tuple[float, float]:
    return (float(server.env.get("IRONFHIR_HEADER_READ_TIMEOUT_SECS", "10")),
            float(server.env.get("IRONFHIR_IDLE_TIMEOUT_SECS", "60")))


def test_a_get_with_a_body_is_answered_whole_and_the_connection_stays_usable(base):
    """RFC 9110 §9.3.1: content in a GET has no defined semantics, yet RFC 9112 §6.3 frames the
    message by its Content-Length, and §9.6 warns that a server closing with unread input gets
    a reset that can destroy its response. A GET /metadata carrying 1 MB is answered with the
    whole CapabilityStatement, the content is read and discarded, and the same connection
    answers the next request (it used to be closed without notice after the answer, or the
    answer was cut by a reset)."""
    _, _, path, netloc = _target(base)
    sock = _connect(base)
    try:
        head = (f"GET {path}/metadata HTTP/1.1\r\nHost: {netloc}\r\nAccept: {FHIR_JSON}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n")
        sending = _send_in_background(sock, head.encode() + b"x" * 1_000_000)
        reader = Reader(sock)
        first = reader.response()
        sending["thread"].join(20)
        assert "error" not in sending, f"sending the body failed: {sending.get('error')!r}"
        assert first.status == 200, first.body[:300]
        assert json.loads(first.body)["resourceType"] == "CapabilityStatement"
        assert first.headers.get("connection", "").lower() != "close", first.headers
        sock.sendall(f"GET {path}/metadata HTTP/1.1\r\nHost: {netloc}\r\nAccept: {FHIR_JSON}\r\n\r\n".encode())
        second = reader.response()
        assert second.status == 200
        assert json.loads(second.body)["resourceType"] == "CapabilityStatement"
    finally:
        sock.close()


def test_a_client_that_sends_its_whole_over_limit_body_reads_the_413(base, token):
    """RFC 9110 §15.5.14 (413 Content Too Large) with RFC 9112 §9.6: most clients send the whole
    body before they read. A body over --max-body-bytes (10 MiB by default) is refused with 413
    and an OperationOutcome, the server says Connection: close and keeps reading and discarding
    until the client is done, so the client reads the whole answer and an orderly end of stream
    instead of a reset in the middle of its upload."""
    _, _, path, netloc = _target(base)
    # 20 MiB over the limit: more than the sockets' buffers hold once the server stops reading.
    size = 30 * 1024 * 1024
    sock = _connect(base, timeout=30)
    try:
        head = (f"POST {path}/Patient HTTP/1.1\r\nHost: {netloc}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: {FHIR_JSON}\r\nAccept: {FHIR_JSON}\r\nContent-Length: {size}\r\n\r\n")
        body = b'{"resourceType":"Patient","text":{"status":"generated","div":"' + b"x" * size
        sending = _send_in_background(sock, head.encode() + body[:size])
        sending["thread"].join(30)
        assert sending.get("sent"), f"the upload was cut off: {sending.get('error')!r}"
        reader = Reader(sock)
        reply = reader.response()
        assert reply.status == 413, reply.body[:300]
        reply.outcome()
        assert reply.headers.get("connection", "").lower() == "close", reply.headers
        assert reader.end_of_stream() == b"", "bytes after the 413"
    finally:
        sock.close()


@pytest.mark.parametrize("framing", [
    # A chunk size that is not hexadecimal.
    b"zz\r\nabc\r\n0\r\n\r\n",
    # A chunk announced as 256 bytes, of which 10 arrive before the client stops sending.
    b"100\r\n0123456789",
], ids=["bad-chunk-size", "truncated-chunk"])
def test_a_chunked_body_with_broken_framing_is_400(base, token, framing):
    """RFC 9112 §7.1: a chunked body is a sequence of hexadecimal chunk sizes and chunks ending
    with a zero-size chunk. A body that breaks that is a malformed message, 400 Bad Request (RFC
    9110 §15.5.1) with an OperationOutcome, not 413: nothing was too large."""
    _, _, path, netloc = _target(base)
    sock = _connect(base)
    try:
        head = (f"POST {path}/Patient HTTP/1.1\r\nHost: {netloc}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: {FHIR_JSON}\r\nAccept: {FHIR_JSON}\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(head.encode() + framing)
        if not framing.endswith(b"\r\n\r\n"):
            sock.shutdown(socket.SHUT_WR)
        reply = Reader(sock).response()
        assert reply.status == 400, (reply.status, reply.body[:300])
        reply.outcome()
    finally:
        sock.close()


def _raw_exchange(base: str, request: bytes) -> tuple[Reply, bytes]:
    sock = _connect(base)
    try:
        sock.sendall(request)
        reader = Reader(sock)
        reply = reader.response()
        return reply, reader.end_of_stream()
    finally:
        sock.close()


def test_requests_refused_before_routing_get_an_operation_outcome(base):
    """http.html#errors: the server SHOULD return an OperationOutcome with its 4xx. That holds
    for the requests HTTP parsing refuses before any FHIR code runs: a request target over
    65,534 bytes (414 URI Too Long, RFC 9110 §15.5.15), more than 100 header fields (431,
    RFC 6585 §5) and a request line that cannot be parsed (400) — each a FHIR JSON
    OperationOutcome, then the connection is closed (it used to be an empty body)."""
    _, _, path, netloc = _target(base)
    long_target = f"{path}/Patient?name={'a' * 70_000}"
    reply, rest = _raw_exchange(base, f"GET {long_target} HTTP/1.1\r\nHost: {netloc}\r\n\r\n".encode())
    assert reply.status == 414, reply.body[:300]
    assert reply.outcome()["issue"][0]["code"] == "too-long"
    assert rest == b""

    fields = "".join(f"X-Field-{i}: {i}\r\n" for i in range(150))
    reply, rest = _raw_exchange(base, f"GET {path}/metadata HTTP/1.1\r\nHost: {netloc}\r\n{fields}\r\n".encode())
    assert reply.status == 431, reply.body[:300]
    assert reply.outcome()["issue"][0]["code"] == "too-long"
    assert rest == b""

    reply, rest = _raw_exchange(base, f"GE(T {path}/metadata HTTP/1.1\r\nHost: {netloc}\r\n\r\n".encode())
    assert reply.status == 400, reply.body[:300]
    reply.outcome()
    assert rest == b""


def test_a_slow_request_head_is_cut_off_with_408(server, base):
    """A client that sends its request head a byte at a time holds a connection for as long as
    it likes (slowloris). RFC 9110 §15.5.9: 408 Request Timeout when the server "did not receive
    a complete request message within the time that it was prepared to wait" — here
    --header-read-timeout-secs from the head's first byte, answered with an OperationOutcome
    and Connection: close, however steadily the bytes trickle in (it used to wait for ever)."""
    header_timeout, _ = _timeouts(server)
    _, _, path, netloc = _target(base)
    sock = _connect(base, timeout=header_timeout + 10)
    stop = threading.Event()
    started = time.monotonic()
    sock.sendall(f"GET {path}/metadata HTTP/1.1\r\nHost: {netloc}\r\n".encode())

    def trickle():
        i = 0
        while not stop.wait(0.3):
            try:
                sock.sendall(b"X-Slow-%d: y\r\n" % i)
            except OSError:
                return
            i += 1

    dribbler = threading.Thread(target=trickle, daemon=True)
    dribbler.start()
    try:
        reader = Reader(sock)
        reply = reader.response()
        elapsed = time.monotonic() - started
        assert reply.status == 408, reply.body[:300]
        assert reply.outcome()["issue"][0]["code"] == "timeout"
        assert reply.headers.get("connection", "").lower() == "close"
        assert header_timeout - 0.5 <= elapsed <= header_timeout + 3, elapsed
        stop.set()
        try:
            reader.end_of_stream()
        except ConnectionResetError:
            pass  # the dribbler may still have written after the server stopped reading
    finally:
        stop.set()
        sock.close()


def test_idle_connections_are_closed_after_the_idle_timeout(server, base):
    """RFC 9112 §9.3: a server may close a persistent connection it no longer wants; one that
    never does can be made to hold connections for ever. A connection that never sends a
    request, and one left idle after its response, are closed (orderly, with no answer: there is
    no request to answer) after --idle-timeout-secs, not earlier at the shorter header-read
    timeout, and not never (they used to stay open)."""
    header_timeout, idle_timeout = _timeouts(server)
    assert idle_timeout > header_timeout + 1, "conftest.py gives the server an idle timeout longer than the header timeout"
    _, _, path, netloc = _target(base)
    silent = _connect(base, timeout=idle_timeout + 10)
    used = _connect(base, timeout=idle_timeout + 10)
    try:
        opened = time.monotonic()
        used.sendall(f"GET {path}/metadata HTTP/1.1\r\nHost: {netloc}\r\nAccept: {FHIR_JSON}\r\n\r\n".encode())
        used_reader = Reader(used)
        assert used_reader.response().status == 200
        answered = time.monotonic()

        closed: dict = {}

        def watch(name, sock, reader):
            try:
                closed[name] = (reader.end_of_stream(), time.monotonic())
            except OSError as e:
                closed[name] = (e, time.monotonic())

        watchers = [threading.Thread(target=watch, args=("silent", silent, Reader(silent))),
                    threading.Thread(target=watch, args=("used", used, used_reader))]
        for w in watchers:
            w.start()
        for w in watchers:
            w.join(idle_timeout + 10)
        for name, since in (("silent", opened), ("used", answered)):
            assert name in closed, f"the {name} connection was still open after {idle_timeout + 10} s"
            data, at = closed[name]
            assert data == b"", f"the {name} connection: {data!r}"
            assert idle_timeout - 0.5 <= at - since <= idle_timeout + 3, (name, at - since)
    finally:
        silent.close()
        used.close()
