"""Clinical workflows end to end, per role, through the HTTP API with tokens from the real SMART
sign-in pages: a prescriber's prescription addressed to a pharmacy, the pharmacy's work list and
what it may (not) see of the patient, dispensing within the repeats, a patient's refill request
and the prescriber's answer, a patient booking through $find/$book and a front desk that cannot
double-book. Synthetic data only."""

from __future__ import annotations

import secrets
from types import SimpleNamespace

import pytest

from hierarchy_support import make_org, make_staff_user, session_for
from smart_flow import Flow, register_client, register_user
from support import create

REDIRECT = "http://127.0.0.1:9/cb"
PASSWORD = "workflow-battery-pass"
PATIENT_SCOPE = "launch/patient openid fhirUser patient/*.rs patient/Appointment.cu patient/Task.cu patient/Communication.c"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def world(server, base, http):
    tag = secrets.token_hex(4)
    w = SimpleNamespace(tag=tag)
    w.clinic = make_org(http, base, f"Clinic {tag}")
    w.pharmacy = make_org(http, base, f"Pharmacy {tag}")
    w.patient = create(http, base, {"resourceType": "Patient", "active": True, "birthDate": "1980-05-15",
                                    "name": [{"family": f"Flow{tag}", "given": ["Testgiven"]}],
                                    "managingOrganization": {"reference": f"Organization/{w.clinic}"}})["id"]
    w.obs = create(http, base, {"resourceType": "Observation", "status": "final", "code": {"text": "synthetic"},
                                "subject": {"reference": f"Patient/{w.patient}"}})["id"]
    w.prescriber = make_staff_user(server, base, http, "prescriber", w.clinic)
    w.front = make_staff_user(server, base, http, "front-desk", w.clinic)
    w.supplier = make_staff_user(server, base, http, "supplier", w.pharmacy)
    client = f"workflow-patient-{tag}"
    register_client(server, client, PATIENT_SCOPE, redirect_uris=[REDIRECT])
    user = f"workflow-patient-{tag}"
    register_user(server, user, PASSWORD, f"Patient/{w.patient}")
    w.patient_token = Flow(base).login_tokens(client, REDIRECT, PATIENT_SCOPE, username=user, password=PASSWORD)["access_token"]
    return w


def as_(token):
    return session_for(token)


def test_prescription_to_pharmacy_dispensed_within_its_repeats_and_refilled_on_request(base, http, world):
    w = world
    prescriber, pharmacy, patient = as_(w.prescriber.token), as_(w.supplier.token), as_(w.patient_token)
    # The prescriber issues a prescription addressed to the pharmacy, with one repeat.
    r = prescriber.post(f"{base}/MedicationRequest", headers=JSON, timeout=30, json={
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197361"}]},
        "subject": {"reference": f"Patient/{w.patient}"},
        "requester": {"reference": f"PractitionerRole/{w.prescriber.role_id}"},
        "dosageInstruction": [{"text": "one tablet daily"}],
        "dispenseRequest": {"numberOfRepeatsAllowed": 1, "performer": {"reference": f"Organization/{w.pharmacy}"}}})
    assert r.status_code == 201, r.text[:300]
    rx = r.json()["id"]

    # The pharmacy's work list, and what it sees of the patient: who they are, nothing more.
    found = pharmacy.get(f"{base}/MedicationRequest", params={"intended-dispenser": f"Organization/{w.pharmacy}"}, timeout=30).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [rx]
    seen = pharmacy.get(f"{base}/Patient/{w.patient}", timeout=30)
    assert seen.status_code == 200, seen.text[:300]
    assert seen.json()["name"][0]["family"] == f"Flow{w.tag}"
    assert pharmacy.get(f"{base}/Observation/{w.obs}", timeout=30).status_code in (403, 404)
    # The patient's other prescriptions (not addressed to this pharmacy) do not exist for it.
    other = create(http, base, {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                                "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "314076"}]},
                                "subject": {"reference": f"Patient/{w.patient}"}})["id"]
    assert pharmacy.get(f"{base}/MedicationRequest/{other}", timeout=30).status_code == 404
    mine = pharmacy.get(f"{base}/MedicationRequest", params={"subject": f"Patient/{w.patient}"}, timeout=30).json()
    assert [e["resource"]["id"] for e in mine.get("entry", [])] == [rx]

    def dispense():
        return pharmacy.post(f"{base}/MedicationDispense", headers=JSON, timeout=30, json={
            "resourceType": "MedicationDispense", "status": "completed",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197361"}]},
            "subject": {"reference": f"Patient/{w.patient}"},
            "performer": [{"actor": {"reference": f"Organization/{w.pharmacy}"}}],
            "authorizingPrescription": [{"reference": f"MedicationRequest/{rx}"}]})
    assert dispense().status_code == 201
    assert dispense().status_code == 201
    third = dispense()
    assert third.status_code == 409, third.text[:300]
    assert third.json()["resourceType"] == "OperationOutcome"

    # The patient sees their prescription and dispenses, and asks for a refill.
    assert patient.get(f"{base}/MedicationRequest/{rx}", timeout=30).status_code == 200
    assert patient.get(f"{base}/MedicationDispense", params={"_total": "accurate"}, timeout=30).json()["total"] == 2
    r = patient.post(f"{base}/Task", headers=JSON, timeout=30, json={
        "resourceType": "Task", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": "https://ironfhir.dev/fhir/CodeSystem/task-code", "code": "refill"}]},
        "focus": {"reference": f"MedicationRequest/{rx}"}, "for": {"reference": f"Patient/{w.patient}"},
        "owner": {"reference": f"PractitionerRole/{w.prescriber.role_id}"}})
    assert r.status_code == 201, r.text[:300]
    task = r.json()
    done = dict(task, status="completed")
    assert patient.put(f"{base}/Task/{task['id']}", headers=JSON, json=done, timeout=30).status_code == 403

    # The prescriber's work queue; requested → completed is not a step; approve properly.
    queue = prescriber.get(f"{base}/Task", params={"owner": f"PractitionerRole/{w.prescriber.role_id}", "status": "requested"}, timeout=30).json()
    assert [e["resource"]["id"] for e in queue.get("entry", [])] == [task["id"]]
    current = prescriber.get(f"{base}/Task/{task['id']}", timeout=30).json()
    assert prescriber.put(f"{base}/Task/{task['id']}", headers=JSON, json=dict(current, status="completed"), timeout=30).status_code == 422
    r = prescriber.post(f"{base}/MedicationRequest", headers=JSON, timeout=30, json={
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197361"}]},
        "subject": {"reference": f"Patient/{w.patient}"}, "priorPrescription": {"reference": f"MedicationRequest/{rx}"},
        "dispenseRequest": {"numberOfRepeatsAllowed": 2, "performer": {"reference": f"Organization/{w.pharmacy}"}}})
    assert r.status_code == 201, r.text[:300]
    for status in ("accepted", "completed"):
        current = prescriber.get(f"{base}/Task/{task['id']}", timeout=30).json()
        r = prescriber.put(f"{base}/Task/{task['id']}", headers=JSON, json=dict(current, status=status), timeout=30)
        assert r.status_code == 200, r.text[:300]


def test_a_patient_books_through_find_and_the_front_desk_cannot_double_book(base, http, world):
    w = world
    practitioner = create(http, base, {"resourceType": "Practitioner", "name": [{"family": f"Flowdoc{w.tag}"}]})["id"]
    schedule = create(http, base, {"resourceType": "Schedule", "actor": [{"reference": f"Practitioner/{practitioner}"}]})["id"]
    slot = create(http, base, {"resourceType": "Slot", "schedule": {"reference": f"Schedule/{schedule}"}, "status": "free",
                               "start": "2032-06-01T09:00:00Z", "end": "2032-06-01T09:30:00Z"})["id"]
    patient = as_(w.patient_token)
    found = patient.get(f"{base}/Appointment/$find", timeout=30, params={
        "start": "2032-06-01", "end": "2032-06-02", "provider": f"Practitioner/{practitioner}", "patient": f"Patient/{w.patient}"}).json()
    assert found["total"] == 1, found
    proposal = found["entry"][0]["resource"]
    r = patient.post(f"{base}/Appointment/$book", headers=JSON, timeout=30,
                     json={"resourceType": "Parameters", "parameter": [{"name": "appt-resource", "resource": proposal}]})
    assert r.status_code == 200, r.text[:300]
    assert http.get(f"{base}/Slot/{slot}", timeout=30).json()["status"] == "busy"
    # The front desk tries the same practitioner at an overlapping time for the same patient.
    front = as_(w.front.token)
    r = front.post(f"{base}/Appointment", headers=JSON, timeout=30, json={
        "resourceType": "Appointment", "status": "booked", "start": "2032-06-01T09:15:00Z", "end": "2032-06-01T09:45:00Z",
        "participant": [{"actor": {"reference": f"Practitioner/{practitioner}"}, "status": "accepted"},
                        {"actor": {"reference": f"Patient/{w.patient}"}, "status": "accepted"}]})
    assert r.status_code == 409, r.text[:300]
    assert "double booking" in r.json()["issue"][0]["diagnostics"]


def test_a_patient_messages_their_care_team_who_replies_and_both_see_the_thread(base, world):
    w = world
    patient, prescriber, pharmacy = as_(w.patient_token), as_(w.prescriber.token), as_(w.supplier.token)

    def message(sender: str, recipient: str, text: str, **extra) -> dict:
        return {"resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{w.patient}"},
                "sender": {"reference": sender}, "recipient": [{"reference": recipient}],
                "payload": [{"contentString": text}], **extra}

    me, doc = f"Patient/{w.patient}", f"PractitionerRole/{w.prescriber.role_id}"
    r = patient.post(f"{base}/Communication", headers=JSON, timeout=30, json=message(me, doc, "Synthetic question"))
    assert r.status_code == 201, r.text[:300]
    question = r.json()["id"]
    # Only as themselves, only to roles that treat them.
    r = patient.post(f"{base}/Communication", headers=JSON, timeout=30, json=message(doc, doc, "Spoofed"))
    assert r.status_code == 403, r.text[:300]
    r = patient.post(f"{base}/Communication", headers=JSON, timeout=30,
                     json=message(me, f"PractitionerRole/{w.supplier.role_id}", "Not my care team"))
    assert r.status_code == 403, r.text[:300]
    # The prescriber sees the question and replies.
    inbox = prescriber.get(f"{base}/Communication", params={"recipient": doc}, timeout=30).json()
    assert [e["resource"]["id"] for e in inbox.get("entry", [])] == [question]
    assert inbox["entry"][0]["resource"]["payload"][0]["contentString"] == "Synthetic question"
    r = prescriber.post(f"{base}/Communication", headers=JSON, timeout=30,
                        json=message(doc, me, "Synthetic answer", inResponseTo=[{"reference": f"Communication/{question}"}]))
    assert r.status_code == 201, r.text[:300]
    # Both see the thread; a role outside the care team sees none of it.
    thread = patient.get(f"{base}/Communication", params={"_sort": "_lastUpdated"}, timeout=30).json()
    assert [e["resource"]["payload"][0]["contentString"] for e in thread["entry"]] == ["Synthetic question", "Synthetic answer"]
    assert pharmacy.get(f"{base}/Communication/{question}", timeout=30).status_code in (403, 404)
