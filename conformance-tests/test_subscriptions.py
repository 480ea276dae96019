"""Subscriptions from the outside (issue: documents and events, "Events").

R4 Subscriptions (subscription.html) and the Subscriptions R5 Backport IG, with staff and
patients signed in through the real SMART pages: a rest-hook receiver on this machine, and a
real websocket client (`websocket-client`) for the websocket channel. The workflows use it —
a pharmacy hears of the prescriptions addressed to it and of no other, a practitioner of
bookings and cancellations with them, a patient of their own new prescriptions and invoices —
and a notification never carries nor reveals what its owner cannot read. Synthetic data only."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import websocket

from hierarchy_support import make_org, make_staff_user, session_for
from smart_flow import Flow, register_client, register_user
from support import create

REDIRECT = "http://127.0.0.1:9/cb"
PASSWORD = "subscription-battery-pass"
PATIENT_SCOPE = "launch/patient openid fhirUser patient/*.rs patient/Subscription.cud"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
JSON = {"Content-Type": "application/fhir+json"}
TOPICS = "https://ironfhir.dev/fhir/SubscriptionTopic/"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"


class Hooks:
    """One HTTP receiver for every rest-hook of the module: calls are kept per path."""

    def __init__(self):
        self.calls: dict[str, list[dict]] = {}
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with hooks.lock:
                    hooks.calls.setdefault(self.path.split("/")[1], []).append(
                        {"method": self.command, "path": self.path, "body": body.decode("utf-8", "replace"),
                         "authorization": self.headers.get("Authorization")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _record

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, name: str) -> list[dict]:
        with self.lock:
            return list(self.calls.get(name, []))

    def wait(self, name: str, n: int, timeout: float = 20) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            calls = self.of(name)
            if len(calls) >= n:
                return calls
            time.sleep(0.1)
        raise AssertionError(f"{name}: {len(self.of(name))} of {n} notifications arrived: {self.of(name)}")


@pytest.fixture(scope="module")
def hooks():
    h = Hooks()
    yield h
    h.server.shutdown()


@pytest.fixture(scope="module")
def world(server, base, http):
    tag = secrets.token_hex(4)
    w = SimpleNamespace(tag=tag)
    w.clinic = make_org(http, base, f"Clinic {tag}")
    w.pharmacy = make_org(http, base, f"Pharmacy {tag}")
    w.other_pharmacy = make_org(http, base, f"Other pharmacy {tag}")
    w.patient = create(http, base, {"resourceType": "Patient", "active": True, "name": [{"family": f"Notify{tag}"}],
                                    "managingOrganization": {"reference": f"Organization/{w.clinic}"}})["id"]
    w.other_patient = create(http, base, {"resourceType": "Patient", "active": True, "name": [{"family": f"Other{tag}"}],
                                          "managingOrganization": {"reference": f"Organization/{w.clinic}"}})["id"]
    w.prescriber = make_staff_user(server, base, http, "prescriber", w.clinic)
    w.front = make_staff_user(server, base, http, "front-desk", w.clinic)
    w.supplier = make_staff_user(server, base, http, "supplier", w.pharmacy)
    w.other_supplier = make_staff_user(server, base, http, "supplier", w.other_pharmacy)
    client = f"subscription-patient-{tag}"
    register_client(server, client, PATIENT_SCOPE, redirect_uris=[REDIRECT])
    register_user(server, client, PASSWORD, f"Patient/{w.patient}")
    w.patient_token = Flow(base).login_tokens(client, REDIRECT, PATIENT_SCOPE, username=client, password=PASSWORD)["access_token"]
    return w


def topic_subscription(topic: str, endpoint: str | None, content: str, filters: list[str] = (), channel: str = "rest-hook") -> dict:
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "conformance",
           "meta": {"profile": [BACKPORT + "backport-subscription"]},
           "criteria": TOPICS + topic,
           "channel": {"type": channel, "payload": "application/fhir+json",
                       "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": content}]}}}
    if endpoint:
        sub["channel"]["endpoint"] = endpoint
    if filters:
        sub["_criteria"] = {"extension": [{"url": BACKPORT + "backport-filter-criteria", "valueString": f} for f in filters]}
    return sub


def subscribe(token: str, base: str, body: dict) -> dict:
    r = session_for(token).post(f"{base}/Subscription", headers=JSON, json=body, timeout=30)
    assert r.status_code == 201, r.text[:400]
    sub = r.json()
    assert sub["status"] == "active"
    return sub


def status_of(bundle: dict) -> dict:
    params = bundle["entry"][0]["resource"]
    assert params["resourceType"] == "Parameters"
    return {p["name"]: p for p in params["parameter"]}


def focus_refs(bundle: dict) -> list[str]:
    params = bundle["entry"][0]["resource"]["parameter"]
    return [part["valueReference"]["reference"] for p in params if p["name"] == "notification-event"
            for part in p["part"] if part["name"] == "focus"]


def delivery_audits(http, base: str, subscription_id: str) -> list[dict]:
    """The AuditEvents of deliveries of a Subscription (DICOM 110106, entity the Subscription)."""
    deadline = time.time() + 15
    while True:
        found = http.get(f"{base}/AuditEvent", params={"entity": f"Subscription/{subscription_id}"}, timeout=30).json()
        events = [e["resource"] for e in found.get("entry", []) if e["resource"]["type"]["code"] == "110106"]
        if events or time.time() > deadline:
            return events
        time.sleep(0.5)


def prescription(w, patient: str, pharmacy: str) -> dict:
    return {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197361"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "requester": {"reference": f"PractitionerRole/{w.prescriber.role_id}"},
            "dispenseRequest": {"numberOfRepeatsAllowed": 1, "performer": {"reference": f"Organization/{pharmacy}"}}}


def test_capability_statement_names_the_topics_and_the_websocket(base, http):
    cs = http.get(f"{base}/metadata", timeout=30).json()
    rest = cs["rest"][0]
    sub = next(r for r in rest["resource"] if r["type"] == "Subscription")
    topics = [e["valueCanonical"] for e in sub.get("extension", []) if e["url"].endswith("subscriptiontopic-canonical")]
    assert TOPICS + "medication-request-for-pharmacy" in topics
    assert {"status", "events", "get-ws-binding-token"} <= {o["name"] for o in sub["operation"]}
    ws = [e["valueUri"] for e in rest.get("extension", []) if e["url"].endswith("capabilitystatement-websocket")]
    assert ws and ws[0].startswith("ws://") and ws[0].endswith("/ws")


def test_a_pharmacy_hears_of_the_prescriptions_addressed_to_it_and_of_no_other(base, http, hooks, world):
    w = world
    mine = subscribe(w.supplier.token, base, topic_subscription("medication-request-for-pharmacy", f"{hooks.url}/pharmacy-{w.tag}", "full-resource"))
    subscribe(w.other_supplier.token, base, topic_subscription("medication-request-for-pharmacy", f"{hooks.url}/other-{w.tag}", "full-resource"))
    prescriber = session_for(w.prescriber.token)
    r = prescriber.post(f"{base}/MedicationRequest", headers=JSON, json=prescription(w, w.patient, w.pharmacy), timeout=30)
    assert r.status_code == 201, r.text[:300]
    rx = r.json()["id"]
    calls = hooks.wait(f"pharmacy-{w.tag}", 2)  # handshake, then the prescription
    time.sleep(2)
    bundles = [json.loads(c["body"]) for c in hooks.of(f"pharmacy-{w.tag}")]
    assert [status_of(b)["type"]["valueCode"] for b in bundles] == ["handshake", "event-notification"]
    event = bundles[1]
    assert status_of(event)["subscription"]["valueReference"]["reference"].endswith(f"Subscription/{mine['id']}")
    assert focus_refs(event) == [f"{base}/MedicationRequest/{rx}/_history/1"]
    resource = event["entry"][1]["resource"]
    assert resource["id"] == rx
    # The other pharmacy's role does not reach this prescription: its hook heard only the handshake.
    other = [json.loads(c["body"]) for c in hooks.of(f"other-{w.tag}")]
    assert [status_of(b)["type"]["valueCode"] for b in other] == ["handshake"]
    assert rx not in json.dumps(other)
    assert len(calls) >= 2
    # The delivery is in the audit trail: the pharmacy role as agent, the prescription as entity.
    audits = delivery_audits(http, base, mine["id"])
    assert audits, "no AuditEvent for the delivery"
    assert any(e["what"]["reference"] == f"MedicationRequest/{rx}/_history/1" for a in audits for e in a["entity"])


def test_a_practitioner_hears_of_bookings_and_cancellations_with_them(base, http, hooks, world):
    w = world
    practitioner_ref = f"Practitioner/{w.prescriber.practitioner_id}"
    subscribe(w.prescriber.token, base, topic_subscription("appointment-booked-or-cancelled", f"{hooks.url}/bookings-{w.tag}", "id-only",
                                                           [f"Appointment?practitioner={practitioner_ref}"]))
    front = session_for(w.front.token)
    appointment = {"resourceType": "Appointment", "status": "booked", "start": "2033-03-01T10:00:00Z", "end": "2033-03-01T10:30:00Z",
                   "participant": [{"actor": {"reference": practitioner_ref}, "status": "accepted"},
                                   {"actor": {"reference": f"PractitionerRole/{w.prescriber.role_id}"}, "status": "accepted"},
                                   {"actor": {"reference": f"Patient/{w.patient}"}, "status": "accepted"}]}
    r = front.post(f"{base}/Appointment", headers=JSON, json=appointment, timeout=30)
    assert r.status_code == 201, r.text[:300]
    booked = r.json()
    r = front.put(f"{base}/Appointment/{booked['id']}", headers=JSON, json=dict(booked, status="cancelled"), timeout=30)
    assert r.status_code == 200, r.text[:300]
    calls = hooks.wait(f"bookings-{w.tag}", 3)
    bundles = [json.loads(c["body"]) for c in calls]
    assert [focus_refs(b) for b in bundles[1:3]] == [[f"{base}/Appointment/{booked['id']}/_history/1"], [f"{base}/Appointment/{booked['id']}/_history/2"]]
    # id-only: the entries name the Appointment and carry nothing of it.
    assert all("resource" not in e for b in bundles[1:] for e in b["entry"][1:])
    numbers = [status_of(b)["events-since-subscription-start"]["valueString"] for b in bundles[1:3]]
    assert numbers == ["1", "2"]


def test_a_patient_hears_of_their_own_new_prescriptions_over_a_websocket_and_of_no_one_elses(base, http, world):
    w = world
    sub = subscribe(w.patient_token, base, topic_subscription("prescription-for-patient", None, "id-only", channel="websocket"))
    patient = session_for(w.patient_token)
    r = patient.post(f"{base}/Subscription/{sub['id']}/$get-ws-binding-token", timeout=30)
    assert r.status_code == 200, r.text[:300]
    params = {p["name"]: p for p in r.json()["parameter"]}
    ws = websocket.create_connection(params["websocket-url"]["valueUrl"], timeout=20)
    try:
        ws.send(f"bind-with-token {params['token']['valueString']}")
        handshake = json.loads(ws.recv())
        assert status_of(handshake)["type"]["valueCode"] == "handshake"
        prescriber = session_for(w.prescriber.token)
        theirs = prescriber.post(f"{base}/MedicationRequest", headers=JSON, json=prescription(w, w.other_patient, w.pharmacy), timeout=30)
        assert theirs.status_code == 201, theirs.text[:300]
        mine = prescriber.post(f"{base}/MedicationRequest", headers=JSON, json=prescription(w, w.patient, w.pharmacy), timeout=30)
        assert mine.status_code == 201, mine.text[:300]
        note = json.loads(ws.recv())
        assert focus_refs(note) == [f"{base}/MedicationRequest/{mine.json()['id']}/_history/1"]
        audits = delivery_audits(http, base, sub["id"])
        assert any(e["what"]["reference"] == f"MedicationRequest/{mine.json()['id']}/_history/1" for a in audits for e in a["entity"]), audits
        ws.settimeout(2)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()  # nothing about the other patient's prescription
    finally:
        ws.close()
    # The binding token is the Subscription's readers' alone: a staff role cannot get one.
    r = session_for(w.prescriber.token).post(f"{base}/Subscription/{sub['id']}/$get-ws-binding-token", timeout=30)
    assert r.status_code == 404, r.text[:300]


def test_a_classic_websocket_subscription_binds_and_pings(base, server, http):
    token = server.token("system/*.*")
    code = "conf-" + secrets.token_hex(4)
    sub = subscribe(token, base, {"resourceType": "Subscription", "status": "requested", "reason": "conformance",
                                  "criteria": f"Observation?code=http://example.org/conformance|{code}",
                                  "channel": {"type": "websocket"}})
    ws_url = base.replace("http://", "ws://").rsplit("/fhir", 1)[0] + "/ws"
    ws = websocket.create_connection(ws_url, timeout=20, header=[f"Authorization: Bearer {token}"])
    try:
        ws.send(f"bind {sub['id']}")
        assert ws.recv() == f"bound {sub['id']}"
        create(http, base, {"resourceType": "Observation", "status": "final",
                            "code": {"coding": [{"system": "http://example.org/conformance", "code": code}]}})
        assert ws.recv() == f"ping {sub['id']}"
    finally:
        ws.close()
    # Without a token on the connection, bind is refused.
    ws = websocket.create_connection(ws_url, timeout=20)
    try:
        ws.send(f"bind {sub['id']}")
        assert ws.recv().startswith(f"error {sub['id']}")
    finally:
        ws.close()


def test_an_unsupported_channel_is_refused_with_a_reason(base, http):
    r = http.post(f"{base}/Subscription", headers=JSON, timeout=30, json={
        "resourceType": "Subscription", "status": "requested", "reason": "conformance", "criteria": "Observation",
        "channel": {"type": "sms", "endpoint": "tel:+15555550100"}})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "not supported" in r.text
