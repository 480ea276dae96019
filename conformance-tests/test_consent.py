"""Consent that withholds data, from the outside (issue: clinical workflows, "Consent").

An active patient-privacy Consent with a `deny` provision for an actor — a PractitionerRole, a
Practitioner, an Organization (and so every organisation below it), or a data class — takes
that patient's data out of the actor's reach on every read shape: read, vread, history, search
and totals, chains, `_has`, includes, compartment search, `$everything`, Bundles. Out of reach
= does not exist: 404 and empty searches, exactly as for an unknown id. It takes effect with
the Consent's write and is lifted with its revocation. Staff sign in through the real SMART
pages; synthetic data only."""

from __future__ import annotations

import secrets
from types import SimpleNamespace

import pytest

from hierarchy_support import make_org, make_staff_user, session_for
from support import create

PRIVACY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}


@pytest.fixture(scope="module")
def clinic(server, base, http):
    tag = secrets.token_hex(4)
    w = SimpleNamespace(tag=tag)
    w.hospital = make_org(http, base, f"Hospital {tag}")
    w.clinic = make_org(http, base, f"Clinic {tag}", part_of=w.hospital)
    w.patient = create(http, base, {"resourceType": "Patient", "active": True, "name": [{"family": f"Consent{tag}"}],
                                    "managingOrganization": {"reference": f"Organization/{w.clinic}"}})["id"]
    w.obs = create(http, base, {"resourceType": "Observation", "status": "final",
                                "code": {"coding": [{"system": "http://example.org/conformance/consent", "code": "c"}]},
                                "subject": {"reference": f"Patient/{w.patient}"}})["id"]
    w.named = make_staff_user(server, base, http, "nurse", w.clinic)
    w.colleague = make_staff_user(server, base, http, "nurse", w.clinic)
    return w


def consent(patient: str, provision: dict, status: str = "active") -> dict:
    return {"resourceType": "Consent", "status": status, "scope": PRIVACY,
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{patient}"},
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": provision}


def sees(base: str, token: str, w) -> dict[str, object]:
    """What one member of staff sees of the patient, shape by shape."""
    s = session_for(token)
    get = lambda path, **params: s.get(f"{base}/{path}", params=params, timeout=30)
    def total(path, **params):
        r = get(path, _total="accurate", **params)
        assert r.status_code == 200, r.text[:300]
        return r.json()["total"]
    everything = get(f"Patient/{w.patient}/$everything")
    bundle = s.post(base, json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{w.patient}"}},
        {"request": {"method": "GET", "url": f"Observation?subject=Patient/{w.patient}"}}]},
        headers={"Content-Type": "application/fhir+json"}, timeout=30).json()
    return {
        "read": get(f"Patient/{w.patient}").status_code,
        "read-obs": get(f"Observation/{w.obs}").status_code,
        "vread": get(f"Patient/{w.patient}/_history/1").status_code,
        "history": get(f"Observation/{w.obs}/_history").status_code,
        "search": total("Patient", _id=w.patient),
        "search-obs": total("Observation", subject=f"Patient/{w.patient}"),
        "chain": total("Observation", **{"subject:Patient.family": f"Consent{w.tag}"}),
        "has": total("Patient", **{"_has:Observation:subject:_id": w.obs}),
        "revinclude": len(get("Organization", _id=w.clinic, _revinclude="Patient:organization").json().get("entry", [])),
        "compartment": total(f"Patient/{w.patient}/Observation"),
        "everything": everything.status_code,
        "batch": [e["response"]["status"][:3] for e in bundle["entry"]] + [str(bundle["entry"][1]["resource"].get("total"))],
    }


VISIBLE = {"read": 200, "read-obs": 200, "vread": 200, "history": 200, "search": 1, "search-obs": 1, "chain": 1, "has": 1,
           "revinclude": 2, "compartment": 1, "everything": 200, "batch": ["200", "200", "1"]}
HIDDEN = {"read": 404, "read-obs": 404, "vread": 404, "history": 404, "search": 0, "search-obs": 0, "chain": 0, "has": 0,
          "revinclude": 1, "compartment": 0, "everything": 404, "batch": ["404", "200", "0"]}


def test_a_denied_role_loses_the_patient_on_every_read_shape_and_gets_it_back_on_revocation(base, http, clinic):
    w = clinic
    assert sees(base, w.named.token, w) == VISIBLE
    c = create(http, base, consent(w.patient, {"type": "deny", "actor": [
        {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
         "reference": {"reference": f"PractitionerRole/{w.named.role_id}"}}]}))
    try:
        assert sees(base, w.named.token, w) == HIDDEN, "withheld at once from the named role"
        assert sees(base, w.colleague.token, w) == VISIBLE, "a colleague not named still sees"
        # Writes treat the patient as unknown too.
        r = session_for(w.named.token).post(f"{base}/Observation", json={
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{w.patient}"}}, headers={"Content-Type": "application/fhir+json"}, timeout=30)
        assert r.status_code in (403, 404), r.text[:300]
    finally:
        c["status"] = "inactive"
        r = http.put(f"{base}/Consent/{c['id']}", json=c, headers={"Content-Type": "application/fhir+json"}, timeout=30)
        assert r.status_code == 200, r.text[:300]
    assert sees(base, w.named.token, w) == VISIBLE, "lifted at once on revocation"


def test_a_denial_for_an_organisation_covers_the_staff_of_the_organisations_below_it(base, http, clinic):
    w = clinic
    c = create(http, base, consent(w.patient, {"type": "deny", "actor": [
        {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
         "reference": {"reference": f"Organization/{w.hospital}"}}]}))
    try:
        assert sees(base, w.named.token, w) == HIDDEN
        assert sees(base, w.colleague.token, w) == HIDDEN
    finally:
        r = http.delete(f"{base}/Consent/{c['id']}", timeout=30)
        assert r.status_code in (200, 204)
    assert sees(base, w.colleague.token, w) == VISIBLE, "a deleted Consent withholds nothing"


def test_a_denial_of_a_data_class_withholds_only_that_class(base, http, clinic):
    w = clinic
    c = create(http, base, consent(w.patient, {"type": "permit", "provision": [{"type": "deny",
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                   "reference": {"reference": f"Organization/{w.clinic}"}}],
        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}]}))
    try:
        seen = sees(base, w.colleague.token, w)
        assert seen["read"] == 200 and seen["search"] == 1, seen
        assert seen["read-obs"] == 404 and seen["search-obs"] == 0 and seen["compartment"] == 0, seen
    finally:
        c["status"] = "inactive"
        http.put(f"{base}/Consent/{c['id']}", json=c, headers={"Content-Type": "application/fhir+json"}, timeout=30)
