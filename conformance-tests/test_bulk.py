"""Bundles from a third-party generator, Bulk Data $export and Patient/$everything, driven over
HTTP only (http.html#transaction, Bulk Data Access IG v2 export.html,
patient-operation-everything.html)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fhir.resources.bundle import Bundle as R4Bundle
from fhir.resources.patient import Patient as R4Patient


def carebundle(tmp_path: Path, count: int, seed: int) -> list[dict]:
    """Transaction Bundles of synthetic patients from the `carebundle` generator (PyPI)."""
    cli = os.environ.get("CAREBUNDLE") or str(Path(sys.executable).parent / "carebundle")
    subprocess.run([str(cli), "generate", "--profile", "mixed", "--count", str(count), "--seed", str(seed),
                    "--out", str(tmp_path)], check=True, capture_output=True)
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]


def test_generated_transaction_bundles_are_accepted_and_their_references_resolve(http, base, tmp_path):
    """A generator's transaction Bundles (urn:uuid fullUrls) commit; every entry answers 201 with a
    location; the stored Observations point at the Patient the same Bundle created."""
    bundles = carebundle(tmp_path, count=3, seed=7)
    assert bundles and all(b["type"] == "transaction" for b in bundles)
    for bundle in bundles:
        r = http.post(base, json=bundle, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text[:500]
        response = r.json()
        R4Bundle.parse_obj(response)
        assert response["type"] == "transaction-response"
        assert len(response["entry"]) == len(bundle["entry"])
        assert all(e["response"]["status"].startswith("201") for e in response["entry"])
        locations = [e["response"]["location"] for e in response["entry"]]
        patient_id = next(loc.split("/")[1] for loc in locations if loc.startswith("Patient/"))
        found = http.get(f"{base}/Observation", params={"subject": f"Patient/{patient_id}", "_count": 500}).json()
        observations = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
        assert found.get("total") == observations


def test_everything_returns_the_patient_and_its_compartment(http, base, tmp_path):
    bundle = carebundle(tmp_path, count=1, seed=11)[0]
    r = http.post(base, json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text[:500]
    patient_id = next(e["response"]["location"].split("/")[1] for e in r.json()["entry"]
                      if e["response"]["location"].startswith("Patient/"))
    everything = http.get(f"{base}/Patient/{patient_id}/$everything", params={"_count": 1000}).json()
    R4Bundle.parse_obj(everything)
    types = {e["resource"]["resourceType"] for e in everything["entry"]}
    assert "Patient" in types and "Observation" in types
    patients = [e["resource"]["id"] for e in everything["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patients == [patient_id], "only this patient"


def test_bulk_export_kick_off_poll_manifest_and_ndjson_download(http, base):
    """export.html: 202 + Content-Location, 202 + X-Progress while running, 200 + manifest, then
    NDJSON files that only the requester's token may fetch."""
    kick = http.get(f"{base}/$export", params={"_type": "Patient"}, headers={"Prefer": "respond-async"})
    assert kick.status_code == 202, kick.text[:500]
    status_url = kick.headers["Content-Location"]
    deadline = time.time() + 60
    while True:
        r = http.get(status_url, headers={"Accept": "application/json"})
        if r.status_code == 200:
            break
        assert r.status_code == 202, r.text[:500]
        assert time.time() < deadline, "export did not finish"
        time.sleep(float(r.headers.get("Retry-After", "1")))
    manifest = r.json()
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].startswith(f"{base}/$export")
    assert {o["type"] for o in manifest["output"]} == {"Patient"}
    for output in manifest["output"]:
        file = http.get(output["url"], headers={"Accept": "application/fhir+ndjson"})
        assert file.status_code == 200
        lines = [line for line in file.text.splitlines() if line]
        assert len(lines) == output["count"]
        for line in lines:
            R4Patient.parse_obj(json.loads(line))
        anonymous = http.get(output["url"], headers={"Authorization": None})
        assert anonymous.status_code == 401
    assert http.delete(status_url).status_code == 202
    assert http.get(status_url).status_code == 404
