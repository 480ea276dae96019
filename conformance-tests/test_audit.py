"""The audit trail from the outside: each interaction leaves exactly one AuditEvent (count and
content), refused ones included; AuditEvents are searchable by patient, agent, date and
entity, cannot be changed or deleted, and a patient sees who accessed their own record.
Synthetic data only."""

from __future__ import annotations

import base64
import secrets
import subprocess

import requests

from support import FHIR_JSON, TimeoutSession, create, patient

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def subject_token(server, subject: str, scope: str) -> str:
    cmd = [str(server.binary), "admin", "token", "--data-dir", str(server.data_dir), "--scope", scope,
           "--subject", subject]
    out = subprocess.run(cmd, env=server.env, check=True, capture_output=True, text=True, timeout=60)
    return out.stdout.strip().splitlines()[-1]


def events_of(http, base, subject: str) -> list[dict]:
    r = http.get(f"{base}/AuditEvent", params={"altid": subject, "_count": "100", "_sort": "date"})
    assert r.status_code == 200, r.text[:300]
    return [e["resource"] for e in r.json().get("entry", [])]


def refs(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "reference" in e.get("what", {})]


def test_each_interaction_leaves_exactly_its_audit_event(server, base, http):
    pat = create(http, base, patient())
    pid = pat["id"]
    who = f"auditee-{secrets.token_hex(4)}"
    s = TimeoutSession()
    s.headers.update({"Authorization": f"Bearer {subject_token(server, who, 'system/Patient.cruds')}",
                      "Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
    assert s.get(f"{base}/Patient/{pid}").status_code == 200
    assert s.get(f"{base}/Patient", params={"_id": pid}).status_code == 200
    assert s.put(f"{base}/Patient/{pid}", json=dict(pat, active=False)).status_code == 200
    assert s.get(f"{base}/Patient/{pid}/_history").status_code == 200
    assert s.get(f"{base}/Observation").status_code == 403
    created = s.post(f"{base}/Patient", json=patient())
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert s.delete(f"{base}/Patient/{new_id}").status_code in (200, 204)

    events = events_of(http, base, who)
    got = [(e["subtype"][0]["code"], e["action"], e["outcome"]) for e in events]
    assert got == [("read", "R", "0"), ("search-type", "E", "0"), ("update", "U", "0"),
                   ("history-instance", "R", "0"), ("search-type", "E", "4"), ("create", "C", "0"),
                   ("delete", "D", "0")], got
    for e in events:
        assert e["type"]["code"] == "rest"
        assert e["agent"][0]["requestor"] is True and e["agent"][0]["altId"] == who
        assert e["agent"][0].get("network", {}).get("address") == "127.0.0.1"
        assert e["source"]["observer"]
    read, search, update = events[0], events[1], events[2]
    assert refs(read) == [f"Patient/{pid}", f"Patient/{pid}"]
    query = next(base64.b64decode(x["query"]).decode() for x in search["entity"] if "query" in x)
    assert f"_id={pid}" in query
    assert f"Patient/{pid}" in refs(update)
    assert "outcomeDesc" in events[4]
    assert f"Patient/{new_id}" in refs(events[6])

    # Searchable by patient, entity, date; the agent's own searches of them are audited too.
    by_patient = http.get(f"{base}/AuditEvent", params={"patient": f"Patient/{pid}", "altid": who}).json()
    assert len(by_patient.get("entry", [])) == 4  # read, search (by _id), update, history
    by_entity = http.get(f"{base}/AuditEvent", params={"entity": f"Patient/{new_id}", "altid": who}).json()
    assert {e["resource"]["action"] for e in by_entity.get("entry", [])} == {"C", "D"}
    date = events[0]["recorded"][:10]
    assert http.get(f"{base}/AuditEvent", params={"date": date, "altid": who, "_summary": "count"}).json()["total"] == 7


def test_audit_events_cannot_be_changed_or_deleted(base, http):
    http.get(f"{base}/Patient", params={"_count": "1"})
    event = http.get(f"{base}/AuditEvent", params={"_count": "1"}).json()["entry"][0]["resource"]
    r = http.put(f"{base}/AuditEvent/{event['id']}", json=dict(event, outcome="8"), headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 405, r.text[:300]
    assert http.delete(f"{base}/AuditEvent/{event['id']}").status_code == 405
    assert http.get(f"{base}/AuditEvent/{event['id']}").json()["outcome"] == event["outcome"]


def test_the_audit_verify_command_finds_the_trail_intact(server):
    cmd = [str(server.binary), "audit", "verify", "--data-dir", str(server.data_dir)]
    out = subprocess.run(cmd, env=server.env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "audit trail intact" in out.stdout
