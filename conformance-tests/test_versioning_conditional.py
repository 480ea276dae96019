"""Versioning, resource contention, conditional interactions and Prefer —
https://hl7.org/fhir/R4/http.html#concurrency, #cread, #ccreate, #cond-update, #cdelete,
#return"""

from datetime import timedelta
from email.utils import format_datetime

from support import (
    FHIR_JSON, JSON_HEADERS, MRN_SYSTEM, REPRESENTATION, assert_etag, assert_outcome,
    body_resource, create, entry_ids, etag_for, http_date, location_parts, patient, search,
    unique,
)


def by_mrn(http, base, mrn):
    return entry_ids(search(http, base, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"}))


# ---------------------------------------------------------------- If-Match (#concurrency)

def test_update_with_current_if_match_succeeds(http, base):
    """http.html#concurrency: a PUT whose If-Match carries the current ETag is applied."""
    res = create(http, base, patient())
    r = http.put(f"{base}/Patient/{res['id']}", json=dict(res, gender="male"),
                 headers={**REPRESENTATION, "If-Match": etag_for(res["meta"]["versionId"])})
    assert r.status_code == 200, r.text[:500]
    assert body_resource(r, "Patient")["gender"] == "male"


def test_update_with_stale_if_match_is_412(http, base):
    """http.html#concurrency: "If the version id given in the If-Match header does not match,
    the server returns a 412 Precondition Failed status code instead of updating the
    resource"."""
    res = create(http, base, patient())
    stale = etag_for(res["meta"]["versionId"])
    r = http.put(f"{base}/Patient/{res['id']}", json=dict(res, gender="male"),
                 headers={**JSON_HEADERS, "If-Match": stale})
    assert r.status_code == 200
    r = http.put(f"{base}/Patient/{res['id']}", json=dict(res, gender="other"),
                 headers={**JSON_HEADERS, "If-Match": stale})
    assert_outcome(r, 412)
    assert http.get(f"{base}/Patient/{res['id']}").json()["gender"] == "male"


# ---------------------------------------------------------------- conditional read (#cread)

def test_if_none_match_current_version_is_304(http, base):
    """http.html#cread: If-None-Match with the current ETag gives 304 Not Modified (no body);
    with an older ETag the resource is returned."""
    res = create(http, base, patient())
    r = http.get(f"{base}/Patient/{res['id']}",
                 headers={"If-None-Match": etag_for(res["meta"]["versionId"])})
    assert r.status_code == 304
    assert not r.content
    r = http.get(f"{base}/Patient/{res['id']}", headers={"If-None-Match": 'W/"no-such-version"'})
    assert r.status_code == 200
    assert body_resource(r, "Patient")["id"] == res["id"]


def test_if_modified_since(http, base):
    """http.html#cread: If-Modified-Since at or after Last-Modified gives 304; an earlier date
    returns the resource."""
    res = create(http, base, patient())
    r = http.get(f"{base}/Patient/{res['id']}")
    last_modified = http_date(r.headers["Last-Modified"])
    later = format_datetime(last_modified + timedelta(hours=1), usegmt=True)
    earlier = format_datetime(last_modified - timedelta(days=1), usegmt=True)
    assert http.get(f"{base}/Patient/{res['id']}",
                    headers={"If-Modified-Since": later}).status_code == 304
    assert http.get(f"{base}/Patient/{res['id']}",
                    headers={"If-Modified-Since": r.headers["Last-Modified"]}).status_code == 304
    assert http.get(f"{base}/Patient/{res['id']}",
                    headers={"If-Modified-Since": earlier}).status_code == 200


# ---------------------------------------------------------------- conditional create

def test_conditional_create(http, base):
    """http.html#ccreate: with If-None-Exist, no match → the resource is created (201); one
    match → the server ignores the post and returns 200 OK; the resource is not duplicated."""
    mrn = unique("MRN-")
    h = {**REPRESENTATION, "If-None-Exist": f"identifier={MRN_SYSTEM}|{mrn}"}
    r1 = http.post(f"{base}/Patient", json=patient(mrn=mrn), headers=h)
    assert r1.status_code == 201, r1.text[:500]
    first = body_resource(r1, "Patient")
    r2 = http.post(f"{base}/Patient", json=patient(mrn=mrn, gender="male"), headers=h)
    assert r2.status_code == 200, r2.text[:500]
    if r2.content:
        assert r2.json()["id"] == first["id"]
    assert by_mrn(http, base, mrn) == [first["id"]]
    assert http.get(f"{base}/Patient/{first['id']}").json()["gender"] == "female"


def test_conditional_create_with_multiple_matches_is_412(http, base):
    """http.html#ccreate: "Multiple matches: The server returns a 412 Precondition Failed
    error indicating the client's criteria were not selective enough"."""
    family = unique()
    create(http, base, patient(family=family))
    create(http, base, patient(family=family))
    r = http.post(f"{base}/Patient", json=patient(family=family),
                  headers={**JSON_HEADERS, "If-None-Exist": f"family={family}"})
    assert_outcome(r, 412)
    assert len(entry_ids(search(http, base, "Patient", {"family": family}))) == 2


def test_conditional_create_with_fhirpy(base, token):
    """http.html#ccreate through fhirpy: a client sending If-None-Exist gets the same resource
    back for the second save() instead of a duplicate."""
    from fhirpy import SyncFHIRClient

    mrn = unique("MRN-")
    client = SyncFHIRClient(base, authorization=f"Bearer {token}",
                            requests_config={"timeout": 30},
                            extra_headers={"If-None-Exist": f"identifier={MRN_SYSTEM}|{mrn}"})
    ident = [{"system": MRN_SYSTEM, "value": mrn}]
    first = client.resource("Patient", identifier=ident, name=[{"family": unique()}])
    first.save()
    second = client.resource("Patient", identifier=ident, name=[{"family": unique()}])
    second.save()
    assert first.id and second.id == first.id
    found = client.resources("Patient").search(identifier=f"{MRN_SYSTEM}|{mrn}").fetch_all()
    assert [p.id for p in found] == [first.id]


# ---------------------------------------------------------------- conditional update

def test_conditional_update(http, base):
    """http.html#cond-update: `PUT [base]/[type]?[search]`: no match and no id → created (201);
    one match → that resource is updated (200) and keeps its id."""
    mrn = unique("MRN-")
    url = f"{base}/Patient?identifier={MRN_SYSTEM}|{mrn}"
    r1 = http.put(url, json=patient(mrn=mrn), headers=REPRESENTATION)
    assert r1.status_code == 201, r1.text[:500]
    first = body_resource(r1, "Patient")
    r2 = http.put(url, json=patient(mrn=mrn, gender="male"), headers=REPRESENTATION)
    assert r2.status_code == 200, r2.text[:500]
    second = body_resource(r2, "Patient")
    assert second["id"] == first["id"]
    assert second["gender"] == "male"
    assert second["meta"]["versionId"] != first["meta"]["versionId"]
    assert by_mrn(http, base, mrn) == [first["id"]]


def test_conditional_update_with_mismatched_id_is_400(http, base):
    """http.html#cond-update: "One Match, resource id provided but does not match resource
    found: The server returns a 400 Bad Request error"."""
    mrn = unique("MRN-")
    res = create(http, base, patient(mrn=mrn))
    r = http.put(f"{base}/Patient?identifier={MRN_SYSTEM}|{mrn}",
                 json=patient(mrn=mrn, id="not-" + res["id"][:40]), headers=JSON_HEADERS)
    assert_outcome(r, 400)


def test_conditional_update_with_multiple_matches_is_412(http, base):
    """http.html#cond-update: "Multiple matches: The server returns a 412 Precondition Failed
    error"."""
    family = unique()
    a = create(http, base, patient(family=family))
    create(http, base, patient(family=family))
    r = http.put(f"{base}/Patient?family={family}", json=patient(family=family, gender="male"),
                 headers=JSON_HEADERS)
    assert_outcome(r, 412)
    assert http.get(f"{base}/Patient/{a['id']}").json()["gender"] == "female"


# ---------------------------------------------------------------- conditional delete

def test_conditional_delete_single_match(http, base):
    """http.html#cdelete: `DELETE [base]/[type]?[search]` with one match deletes it (then 410)."""
    mrn = unique("MRN-")
    res = create(http, base, patient(mrn=mrn))
    r = http.delete(f"{base}/Patient", params={"identifier": f"{MRN_SYSTEM}|{mrn}"})
    assert r.status_code in (200, 204), r.text[:500]
    assert http.get(f"{base}/Patient/{res['id']}").status_code == 410
    assert by_mrn(http, base, mrn) == []


def test_conditional_delete_multiple_matches(http, base):
    """http.html#cdelete: with multiple matches the server either deletes all of them or returns
    412 Precondition Failed; it never deletes just some."""
    family = unique()
    ids = [create(http, base, patient(family=family))["id"] for _ in range(2)]
    r = http.delete(f"{base}/Patient", params={"family": family})
    statuses = [http.get(f"{base}/Patient/{i}").status_code for i in ids]
    if r.status_code == 412:
        assert_outcome(r, 412)
        assert statuses == [200, 200]
    else:
        assert r.status_code in (200, 204), r.text[:500]
        assert statuses == [410, 410]


# ---------------------------------------------------------------- Prefer (#return)

def test_prefer_return_minimal(http, base):
    """http.html#return: `Prefer: return=minimal` asks for no body; Location still names the
    new version."""
    r = http.post(f"{base}/Patient", json=patient(),
                  headers={**JSON_HEADERS, "Prefer": "return=minimal"})
    assert r.status_code == 201
    assert not r.content, r.text[:200]
    rtype, rid, vid = location_parts(r)
    assert rtype == "Patient" and vid
    assert_etag(r, vid)
    assert http.get(f"{base}/Patient/{rid}").status_code == 200


def test_prefer_return_operation_outcome(http, base):
    """http.html#return: `Prefer: return=OperationOutcome` returns an OperationOutcome about the
    interaction instead of the resource."""
    r = http.post(f"{base}/Patient", json=patient(),
                  headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome"})
    assert r.status_code == 201
    oo = body_resource(r, "OperationOutcome")
    assert {i["severity"] for i in oo["issue"]} <= {"information", "warning"}
    res = create(http, base, patient())
    r = http.put(f"{base}/Patient/{res['id']}", json=dict(res, gender="male"),
                 headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome"})
    assert r.status_code == 200
    body_resource(r, "OperationOutcome")


def test_prefer_return_representation_on_update(http, base):
    """http.html#return: `Prefer: return=representation` returns the resource as stored."""
    res = create(http, base, patient())
    r = http.put(f"{base}/Patient/{res['id']}", json=dict(res, gender="male"),
                 headers={**JSON_HEADERS, "Prefer": "return=representation"})
    assert r.status_code == 200
    got = body_resource(r, "Patient")
    assert got["gender"] == "male" and got["meta"]["versionId"] != res["meta"]["versionId"]


def test_version_ids_are_distinct_and_etag_matches_read(http, base):
    """http.html#versioning: each change makes a new version whose id is the ETag of reads."""
    res = create(http, base, patient())
    versions = [res["meta"]["versionId"]]
    for g in ("male", "other", "unknown"):
        r = http.put(f"{base}/Patient/{res['id']}", json=dict(res, gender=g),
                     headers=REPRESENTATION)
        versions.append(body_resource(r, "Patient")["meta"]["versionId"])
    assert len(set(versions)) == 4
    r = http.get(f"{base}/Patient/{res['id']}", headers={"Accept": FHIR_JSON})
    assert_etag(r, versions[-1])
