"""Error handling — https://hl7.org/fhir/R4/http.html#errors, #update (rejecting updates),
#create, and the HTTP status codes of http.html#status"""

import select
import socket
import urllib.parse

import pytest

from support import (
    FHIR_JSON, JSON_HEADERS, assert_outcome, create, observation, patient, unique,
)


def test_malformed_json_is_400(http, base):
    """http.html#create / #update: "400 Bad Request - resource could not be parsed"."""
    r = http.post(f"{base}/Patient", data='{"resourceType": "Patient", "name": [',
                  headers=JSON_HEADERS)
    assert_outcome(r, 400)


def test_body_that_is_not_a_resource_is_400(http, base):
    """http.html#create: the body SHALL be a FHIR resource; a JSON array is not one."""
    assert_outcome(http.post(f"{base}/Patient", data="[1, 2]", headers=JSON_HEADERS), 400)


def test_resource_type_mismatch_with_url_is_400(http, base):
    """http.html#create: the resource type in the body must be that of the URL; an Observation
    POSTed to [base]/Patient is a bad request."""
    body = observation("Patient/whoever")
    assert_outcome(http.post(f"{base}/Patient", json=body, headers=JSON_HEADERS), 400)


def test_resource_type_mismatch_on_update_is_400(http, base):
    """http.html#update: a PUT body of another type than the URL is a bad request."""
    res = create(http, base, patient())
    body = dict(observation("Patient/x"), id=res["id"])
    assert_outcome(http.put(f"{base}/Patient/{res['id']}", json=body, headers=JSON_HEADERS), 400)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_resource_type_is_404(http, base, method):
    """http.html#update / #create rejection codes: "404 Not Found - resource type not
    supported, or not a FHIR end-point"."""
    r = http.request(method, f"{base}/Testunicorn", json={"resourceType": "Testunicorn"},
                     headers=JSON_HEADERS)
    assert_outcome(r, 404)


def test_unknown_resource_type_read_is_404(http, base):
    """http.html#read: an unsupported type cannot be read: 404 with an OperationOutcome."""
    assert_outcome(http.get(f"{base}/Testunicorn/1"), 404)


def test_missing_resource_is_404_and_deleted_is_410(http, base):
    """http.html#read: unknown → 404 Not Found; deleted → 410 Gone."""
    assert_outcome(http.get(f"{base}/Patient/{unique('missing')}"), 404)
    res = create(http, base, patient())
    http.delete(f"{base}/Patient/{res['id']}")
    assert_outcome(http.get(f"{base}/Patient/{res['id']}"), 410)


def test_unknown_element_is_422(http, base):
    """http.html#update/#create "422 Unprocessable Entity - the proposed resource violated
    applicable FHIR profiles": an element that R4 does not define is rejected, never silently
    dropped (json.html: unknown properties are an error)."""
    body = patient(testUnicornColour="purple")
    oo = assert_outcome(http.post(f"{base}/Patient", json=body, headers=JSON_HEADERS), 422)
    text = str(oo)
    assert "testUnicornColour" in text, oo


def test_bad_code_for_required_binding_is_422(http, base):
    """http.html#create 422: Patient.gender has a required binding to AdministrativeGender;
    "robot" violates it. The issue points at the element (OperationOutcome.issue.expression)."""
    oo = assert_outcome(http.post(f"{base}/Patient", json=patient(gender="robot"),
                                  headers=JSON_HEADERS), 422)
    expressions = [x for i in oo["issue"] for x in i.get("expression", [])]
    assert any("gender" in x for x in expressions), oo


def test_wrong_json_type_is_rejected(http, base):
    """http.html#create: a primitive of the wrong JSON type (birthDate as a number) is not a
    valid resource: 400 (cannot be parsed) or 422 (invalid content)."""
    body = patient(birthDate=19700101)
    assert_outcome(http.post(f"{base}/Patient", json=body, headers=JSON_HEADERS), (400, 422))


def test_invalid_id_in_url_is_400(http, base):
    """datatypes.html#id: ids are [A-Za-z0-9-.]{1,64}; a PUT to a 65-character id is a bad
    request (http.html#update rejection codes)."""
    bad = "a" * 65
    r = http.put(f"{base}/Patient/{bad}", json=patient(id=bad), headers=JSON_HEADERS)
    assert_outcome(r, (400, 422))


def test_method_not_allowed_is_an_operation_outcome(http, base):
    """http.html#errors: errors are reported as OperationOutcome; POST to an instance URL is
    not a FHIR interaction (405 Method Not Allowed)."""
    res = create(http, base, patient())
    r = http.post(f"{base}/Patient/{res['id']}", json=res, headers=JSON_HEADERS)
    assert_outcome(r, (404, 405))


def test_every_error_body_is_fhir_json_operation_outcome(http, base):
    """http.html#errors: "the server SHOULD return an OperationOutcome" for 4xx; checked on a
    sample of different failures with the fhir.resources R4 model (in assert_outcome)."""
    res = create(http, base, patient())
    cases = [
        http.get(f"{base}/Patient/{unique('missing')}"),
        http.post(f"{base}/Patient", data="{", headers=JSON_HEADERS),
        http.put(f"{base}/Patient/{res['id']}", json=patient(), headers=JSON_HEADERS),
        http.get(f"{base}/Patient/{res['id']}/_history/999999"),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
        assert_outcome(r, r.status_code)


def _post_large_body(base: str, token: str, size: int) -> tuple[int, bytes]:
    """POST `size` bytes over a raw socket, reading the response as soon as the server answers,
    so an early 413 (before the body is consumed) is seen instead of a broken pipe."""
    u = urllib.parse.urlsplit(base)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    head = (f"POST {u.path}/Patient HTTP/1.1\r\nHost: {u.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: {FHIR_JSON}\r\n"
            f"Accept: {FHIR_JSON}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
    prefix = b'{"resourceType":"Patient","text":{"status":"generated","div":"'
    chunk = b"x" * 65536
    response = b""
    try:
        sock.sendall(head.encode())
        sent = 0
        while sent < size:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            piece = prefix if sent == 0 else chunk[: min(len(chunk), size - sent)]
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            response += data
            if b"\r\n\r\n" in response:
                header, _, rest = response.partition(b"\r\n\r\n")
                cl = [l for l in header.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if cl and len(rest) >= int(cl[0].split(b":")[1]):
                    break
    finally:
        sock.close()
    assert response, "no response to the over-limit request"
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


def test_body_over_limit_is_413(base, token):
    """http.html#create with RFC 9110 §15.5.14: a body above the server's limit (default
    10 MiB) is refused with 413 Content Too Large, as an OperationOutcome."""
    status, body = _post_large_body(base, token, 10 * 1024 * 1024 + 4096)
    assert status == 413
    assert b"OperationOutcome" in body
