"""create / read / vread / update / patch / delete —
https://hl7.org/fhir/R4/http.html#create, #read, #vread, #update, #patch, #delete"""

import pytest
from fhirclient.models.humanname import HumanName
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy.base.exceptions import ResourceNotFound
from fhir.resources.patient import Patient as R4Patient

from support import (
    FHIR_JSON, JSON_HEADERS, JSON_PATCH, REPRESENTATION, assert_etag, assert_last_modified,
    assert_outcome, body_resource, create, instant, location_parts, observation, patient,
    unique,
)


# ---------------------------------------------------------------- create

def test_create_returns_201_with_location_etag_and_last_modified(http, base):
    """http.html#create: 201 Created with `Location: [base]/[type]/[id]/_history/[vid]`; the
    server SHOULD return ETag and Last-Modified; the body (Prefer: return=representation) is the
    stored resource with a server-assigned id, meta.versionId and meta.lastUpdated."""
    r = http.post(f"{base}/Patient", json=patient(), headers=REPRESENTATION)
    assert r.status_code == 201, r.text[:500]
    res = body_resource(r, "Patient")
    rtype, rid, vid = location_parts(r)
    assert (rtype, rid, vid) == ("Patient", res["id"], res["meta"]["versionId"])
    assert r.headers["Location"].startswith(base + "/"), r.headers["Location"]
    assert_etag(r, res["meta"]["versionId"])
    assert_last_modified(r, res["meta"]["lastUpdated"])


def test_create_ignores_client_id_and_meta(http, base):
    """http.html#create: "If an id is provided, the server SHALL ignore it. If the request body
    includes a meta, the server SHALL ignore the existing versionId and lastUpdated values."""
    body = patient(id="client-chosen-id",
                   meta={"versionId": "999", "lastUpdated": "2001-01-01T00:00:00Z"})
    res = create(http, base, body)
    assert res["id"] != "client-chosen-id"
    assert res["meta"]["versionId"] != "999"
    assert instant(res["meta"]["lastUpdated"]).year > 2001
    r = http.get(f"{base}/Patient/client-chosen-id")
    assert r.status_code == 404


def test_create_and_read_with_fhirpy(fhirpy_client):
    """http.html#create and #read through the fhirpy client: save() POSTs, get() reads back the
    same content; the returned JSON is a valid R4 Patient (fhir.resources)."""
    family = unique()
    p = fhirpy_client.resource("Patient", name=[{"family": family, "given": ["Testgiven"]}],
                               gender="male", birthDate="1980-02-03")
    p.save()
    assert p.id and p["meta"]["versionId"]
    got = fhirpy_client.get("Patient", p.id)
    model = R4Patient.parse_obj(dict(got))
    assert model.name[0].family == family
    assert str(model.birthDate) == "1980-02-03"
    assert model.gender == "male"


def test_create_and_read_with_smart_fhirclient(smart_server):
    """http.html#create and #read through the SMART fhirclient models (strict R4 classes)."""
    family = unique()
    p = SmartPatient({"gender": "other", "birthDate": "1990-12-31"})
    name = HumanName()
    name.family = family
    name.given = ["Testgiven"]
    p.name = [name]
    resp = smart_server.post_json(p.relativeBase(), p.as_json())
    assert resp.status_code == 201
    rtype, rid, _ = location_parts(resp)
    assert rtype == "Patient"
    back = SmartPatient.read(rid, smart_server)
    assert back.name[0].family == family
    assert back.birthDate.isostring == "1990-12-31"
    assert back.gender == "other"


MINIMAL = {
    "Organization": {"resourceType": "Organization", "name": "Testorg Conformance"},
    "Practitioner": {"resourceType": "Practitioner", "name": [{"family": "Testdoctor"}]},
    "Observation": {"resourceType": "Observation", "status": "final",
                    "code": {"text": "Testmeasurement"}},
    "Condition": {"resourceType": "Condition", "subject": {"display": "Testperson"},
                  "code": {"text": "Testcondition"}},
    "Encounter": {"resourceType": "Encounter", "status": "finished",
                  "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                            "code": "AMB"}},
    "MedicationRequest": {"resourceType": "MedicationRequest", "status": "active",
                          "intent": "order", "medicationCodeableConcept": {"text": "Testdrug"},
                          "subject": {"display": "Testperson"}},
    "Appointment": {"resourceType": "Appointment", "status": "proposed",
                    "participant": [{"status": "needs-action",
                                     "actor": {"display": "Testperson"}}]},
    "Basic": {"resourceType": "Basic", "code": {"text": "Testbasic"}},
    "Questionnaire": {"resourceType": "Questionnaire", "status": "draft"},
    "ResearchStudy": {"resourceType": "ResearchStudy", "status": "active"},
}


@pytest.mark.parametrize("rtype", sorted(MINIMAL))
def test_create_read_delete_across_resource_types(http, base, rtype):
    """http.html#create, #read, #delete hold for every resource type, not only Patient."""
    res = create(http, base, MINIMAL[rtype])
    r = http.get(f"{base}/{rtype}/{res['id']}")
    assert r.status_code == 200
    got = body_resource(r, rtype)
    for key, value in MINIMAL[rtype].items():
        assert got[key] == value, key
    assert http.delete(f"{base}/{rtype}/{res['id']}").status_code in (200, 204)
    assert_outcome(http.get(f"{base}/{rtype}/{res['id']}"), 410)


# ---------------------------------------------------------------- read / vread

def test_read_returns_current_version_with_etag_and_last_modified(http, base):
    """http.html#read: 200 OK; the resource SHALL have an id equal to [id]; the server SHOULD
    return an ETag (versionId) and Last-Modified (meta.lastUpdated)."""
    res = create(http, base, patient())
    r = http.get(f"{base}/Patient/{res['id']}")
    assert r.status_code == 200
    got = body_resource(r, "Patient")
    assert got["id"] == res["id"]
    assert got["meta"]["versionId"] == res["meta"]["versionId"]
    assert got["name"] == res["name"]
    assert_etag(r, got["meta"]["versionId"])
    assert_last_modified(r, got["meta"]["lastUpdated"])


def test_read_unknown_id_is_404(http, base, fhirpy_client):
    """http.html#read: a read of an unknown resource returns 404 Not Found (with an
    OperationOutcome, http.html#errors); fhirpy surfaces it as ResourceNotFound."""
    assert_outcome(http.get(f"{base}/Patient/{unique('nonexistent')}"), 404)
    with pytest.raises(ResourceNotFound):
        fhirpy_client.get("Patient", unique("nonexistent"))


def test_vread_returns_each_version(http, base):
    """http.html#vread: `GET [base]/[type]/[id]/_history/[vid]` returns that version, with an
    ETag for it; an unknown version is 404."""
    v1 = create(http, base, patient(family=unique()))
    upd = dict(v1, gender="male")
    r = http.put(f"{base}/Patient/{v1['id']}", json=upd, headers=REPRESENTATION)
    assert r.status_code == 200
    v2 = body_resource(r, "Patient")
    assert v2["meta"]["versionId"] != v1["meta"]["versionId"]

    r1 = http.get(f"{base}/Patient/{v1['id']}/_history/{v1['meta']['versionId']}")
    assert r1.status_code == 200
    old = body_resource(r1, "Patient")
    assert old["gender"] == "female" and old["meta"]["versionId"] == v1["meta"]["versionId"]
    assert_etag(r1, v1["meta"]["versionId"])
    r2 = http.get(f"{base}/Patient/{v1['id']}/_history/{v2['meta']['versionId']}")
    assert r2.status_code == 200 and r2.json()["gender"] == "male"
    assert_outcome(http.get(f"{base}/Patient/{v1['id']}/_history/987654"), 404)


# ---------------------------------------------------------------- update

def test_update_returns_200_and_new_version(http, base):
    """http.html#update: PUT of an existing resource returns 200 OK, creates a new version,
    and the server SHALL ignore meta.versionId/lastUpdated in the body."""
    res = create(http, base, patient())
    body = dict(res, gender="unknown", meta={"versionId": "999"})
    r = http.put(f"{base}/Patient/{res['id']}", json=body, headers=REPRESENTATION)
    assert r.status_code == 200, r.text[:500]
    new = body_resource(r, "Patient")
    assert new["id"] == res["id"]
    assert new["gender"] == "unknown"
    assert new["meta"]["versionId"] not in (res["meta"]["versionId"], "999")
    assert instant(new["meta"]["lastUpdated"]) >= instant(res["meta"]["lastUpdated"])
    assert_etag(r, new["meta"]["versionId"])
    assert http.get(f"{base}/Patient/{res['id']}").json()["gender"] == "unknown"


def test_update_as_create_with_client_id(http, base):
    """http.html#update: PUT to an id that does not exist creates it (client-defined id) and
    returns 201 Created; the resource then reads back with that id."""
    cid = unique("conf-").lower()
    body = patient(id=cid)
    r = http.put(f"{base}/Patient/{cid}", json=body, headers=REPRESENTATION)
    assert r.status_code == 201, r.text[:500]
    res = body_resource(r, "Patient")
    assert res["id"] == cid
    r = http.get(f"{base}/Patient/{cid}")
    assert r.status_code == 200 and r.json()["id"] == cid


def test_update_with_fhirpy(fhirpy_client):
    """http.html#update through fhirpy: save() of a resource with an id PUTs it."""
    p = fhirpy_client.resource("Patient", name=[{"family": unique()}], gender="female")
    p.save()
    first_version = p["meta"]["versionId"]
    p["gender"] = "male"
    p.save()
    assert p["meta"]["versionId"] != first_version
    assert fhirpy_client.get("Patient", p.id)["gender"] == "male"


def test_update_without_id_in_body_is_400(http, base):
    """http.html#update: "If no id element is provided, or the id disagrees with the id in the
    URL, the server SHALL respond with an HTTP 400 Bad Request"."""
    res = create(http, base, patient())
    body = {k: v for k, v in res.items() if k != "id"}
    assert_outcome(http.put(f"{base}/Patient/{res['id']}", json=body, headers=JSON_HEADERS), 400)


def test_update_with_mismatched_id_is_400(http, base):
    """http.html#update: an id in the body that disagrees with the URL is 400 Bad Request."""
    res = create(http, base, patient())
    body = dict(res, id="someone-else")
    assert_outcome(http.put(f"{base}/Patient/{res['id']}", json=body, headers=JSON_HEADERS), 400)
    assert http.get(f"{base}/Patient/someone-else").status_code == 404


# ---------------------------------------------------------------- patch

def test_json_patch_applies_and_creates_version(http, base):
    """http.html#patch: `PATCH [base]/[type]/[id]` with a JSON Patch document
    (application/json-patch+json) updates the resource and creates a new version."""
    res = create(http, base, patient())
    ops = [{"op": "replace", "path": "/gender", "value": "male"},
           {"op": "add", "path": "/name/0/given/-", "value": "Testsecond"}]
    r = http.patch(f"{base}/Patient/{res['id']}", json=ops,
                   headers={"Content-Type": JSON_PATCH, "Accept": FHIR_JSON,
                            "Prefer": "return=representation"})
    assert r.status_code == 200, r.text[:500]
    new = body_resource(r, "Patient")
    assert new["gender"] == "male"
    assert new["name"][0]["given"] == ["Testgiven", "Testsecond"]
    assert new["meta"]["versionId"] != res["meta"]["versionId"]
    assert_etag(r, new["meta"]["versionId"])
    got = http.get(f"{base}/Patient/{res['id']}").json()
    assert got["gender"] == "male" and got["meta"]["versionId"] == new["meta"]["versionId"]


def test_json_patch_with_stale_if_match_is_412(http, base):
    """http.html#patch and #concurrency: patch honours If-Match; a stale version is
    412 Precondition Failed and nothing changes."""
    res = create(http, base, patient())
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    h = {"Content-Type": JSON_PATCH, "Accept": FHIR_JSON}
    assert http.patch(f"{base}/Patient/{res['id']}", json=ops, headers=h).status_code == 200
    r = http.patch(f"{base}/Patient/{res['id']}",
                   json=[{"op": "replace", "path": "/gender", "value": "other"}],
                   headers={**h, "If-Match": f'W/"{res["meta"]["versionId"]}"'})
    assert_outcome(r, 412)
    assert http.get(f"{base}/Patient/{res['id']}").json()["gender"] == "male"


def test_json_patch_producing_invalid_resource_is_422(http, base):
    """http.html#patch with #update's rejection rules: a patch whose result violates the R4
    definitions (gender has a required binding) is rejected with 422, leaving the resource."""
    res = create(http, base, patient())
    r = http.patch(f"{base}/Patient/{res['id']}",
                   json=[{"op": "replace", "path": "/gender", "value": "robot"}],
                   headers={"Content-Type": JSON_PATCH, "Accept": FHIR_JSON})
    assert_outcome(r, 422)
    got = http.get(f"{base}/Patient/{res['id']}").json()
    assert got["gender"] == "female" and got["meta"]["versionId"] == res["meta"]["versionId"]


def test_patch_of_unknown_resource_is_404(http, base):
    """http.html#patch: there is nothing to patch; 404 Not Found."""
    r = http.patch(f"{base}/Patient/{unique('nonexistent')}",
                   json=[{"op": "replace", "path": "/gender", "value": "male"}],
                   headers={"Content-Type": JSON_PATCH, "Accept": FHIR_JSON})
    assert_outcome(r, 404)


# ---------------------------------------------------------------- delete

def test_delete_then_read_is_410_and_history_survives(http, base):
    """http.html#delete: success is 200 OK or 204 No Content; subsequent non-version-specific
    reads return 410 Gone, and the resource is no longer found by search; earlier versions stay
    readable with vread (http.html#vread)."""
    res = create(http, base, patient(family=unique()))
    r = http.delete(f"{base}/Patient/{res['id']}")
    assert r.status_code in (200, 204), r.text[:500]
    if r.status_code == 204:
        assert not r.content
    assert_outcome(http.get(f"{base}/Patient/{res['id']}"), 410)
    old = http.get(f"{base}/Patient/{res['id']}/_history/{res['meta']['versionId']}")
    assert old.status_code == 200 and old.json()["id"] == res["id"]
    bundle = http.get(f"{base}/Patient", params={"_id": res["id"]}).json()
    assert not [e for e in bundle.get("entry", [])
                if e.get("resource", {}).get("id") == res["id"]]


def test_delete_of_deleted_resource_is_idempotent(http, base):
    """http.html#delete: deleting an already deleted resource "has no effect, and the server
    should return either a 200 OK ... or a 204 No Content"."""
    res = create(http, base, patient())
    assert http.delete(f"{base}/Patient/{res['id']}").status_code in (200, 204)
    assert http.delete(f"{base}/Patient/{res['id']}").status_code in (200, 204)
    assert http.get(f"{base}/Patient/{res['id']}").status_code == 410


def test_delete_with_fhirpy_and_recreate_by_update(fhirpy_client, http, base):
    """http.html#delete: a deleted resource can be brought back by a subsequent update; it gets a
    new version and reads 200 again."""
    p = fhirpy_client.resource("Patient", name=[{"family": unique()}])
    p.save()
    p.delete()
    with pytest.raises(ResourceNotFound):
        fhirpy_client.get("Patient", p.id)
    body = patient(id=p.id)
    r = http.put(f"{base}/Patient/{p.id}", json=body, headers=REPRESENTATION)
    assert r.status_code in (200, 201), r.text[:500]
    again = body_resource(r, "Patient")
    assert again["meta"]["versionId"] != p["meta"]["versionId"]
    assert http.get(f"{base}/Patient/{p.id}").status_code == 200


def test_reference_to_created_resource_resolves(http, base):
    """http.html#create: the Location/id of a created resource is a valid local reference target
    (resource.html#references); an Observation pointing at it reads back unchanged."""
    pat = create(http, base, patient())
    obs = create(http, base, observation(f"Patient/{pat['id']}"))
    got = http.get(f"{base}/Observation/{obs['id']}").json()
    assert got["subject"]["reference"] == f"Patient/{pat['id']}"
    assert got["valueQuantity"]["value"] == 72.0
