"""history — https://hl7.org/fhir/R4/http.html#history"""

import time

from fhir.resources.bundle import Bundle as R4Bundle

from support import (
    REPRESENTATION, body_resource, create, instant, link, patient, unique,
)


def history(http, url, params=None) -> dict:
    r = http.get(url, params=params)
    assert r.status_code == 200, r.text[:500]
    bundle = body_resource(r, "Bundle")
    assert bundle["type"] == "history"
    return bundle


def all_pages(http, bundle, limit=50) -> list[dict]:
    entries = list(bundle.get("entry", []))
    for _ in range(limit):
        nxt = link(bundle, "next")
        if not nxt:
            return entries
        bundle = history(http, nxt)
        entries += bundle.get("entry", [])
    raise AssertionError("history paging does not terminate")


def make_three_versions(http, base):
    """create (POST), update (PUT), delete (DELETE): three versions of one Patient."""
    res = create(http, base, patient(family=unique()))
    r = http.put(f"{base}/Patient/{res['id']}", json=dict(res, gender="male"),
                 headers=REPRESENTATION)
    assert r.status_code == 200
    v2 = r.json()
    assert http.delete(f"{base}/Patient/{res['id']}").status_code in (200, 204)
    return res, v2


def test_instance_history_lists_every_version_newest_first(http, base):
    """http.html#history: `GET [base]/[type]/[id]/_history` returns a Bundle of type history,
    versions sorted with the oldest last; each entry has request (method/url) and response; a
    delete appears as an entry with no resource and request.method DELETE."""
    v1, v2 = make_three_versions(http, base)
    bundle = history(http, f"{base}/Patient/{v1['id']}/_history")
    R4Bundle.parse_obj(bundle)
    entries = bundle["entry"]
    assert len(entries) == 3
    if "total" in bundle:
        assert bundle["total"] == 3
    methods = [e["request"]["method"] for e in entries]
    assert methods == ["DELETE", "PUT", "POST"], methods
    assert "resource" not in entries[0]
    assert all("response" in e and e["response"]["status"] for e in entries)
    assert entries[1]["resource"]["meta"]["versionId"] == v2["meta"]["versionId"]
    assert entries[1]["resource"]["gender"] == "male"
    assert entries[2]["resource"]["meta"]["versionId"] == v1["meta"]["versionId"]
    assert entries[2]["resource"]["gender"] == "female"
    for e in entries[1:]:
        assert e["fullUrl"].endswith(f"Patient/{v1['id']}")


def test_instance_history_versions_are_readable_by_vread(http, base):
    """http.html#history and #vread: every version listed in the history can be vread."""
    v1, v2 = make_three_versions(http, base)
    bundle = history(http, f"{base}/Patient/{v1['id']}/_history")
    for e in bundle["entry"]:
        if "resource" not in e:
            continue
        vid = e["resource"]["meta"]["versionId"]
        r = http.get(f"{base}/Patient/{v1['id']}/_history/{vid}")
        assert r.status_code == 200
        assert r.json() == e["resource"]


def test_instance_history_with_fhirpy(fhirpy_client):
    """http.html#history via fhirpy's execute(): two saves give two history entries."""
    p = fhirpy_client.resource("Patient", name=[{"family": unique()}])
    p.save()
    p["gender"] = "female"
    p.save()
    bundle = p.execute("_history", method="get")
    R4Bundle.parse_obj(bundle)
    assert bundle["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]][0] == \
        p["meta"]["versionId"]
    assert len(bundle["entry"]) == 2


def test_type_history_with_since(http, base):
    """http.html#history: `GET [base]/[type]/_history?_since=[instant]` includes only versions
    created at or after that instant."""
    before = create(http, base, patient())
    time.sleep(1.1)
    marker = create(http, base, patient())
    since = marker["meta"]["lastUpdated"]
    later = create(http, base, patient())
    bundle = history(http, f"{base}/Patient/_history", {"_since": since, "_count": 100})
    entries = all_pages(http, bundle)
    ids = {e["resource"]["id"] for e in entries if "resource" in e}
    assert marker["id"] in ids and later["id"] in ids
    assert before["id"] not in ids
    for e in entries:
        if "resource" in e:
            assert instant(e["resource"]["meta"]["lastUpdated"]) >= instant(since)
            assert e["resource"]["resourceType"] == "Patient"


def test_system_history_with_count_pages(http, base):
    """http.html#history: `GET [base]/_history` spans all types; `_count` limits page size and
    `next` links page through the rest without repeating an entry."""
    start = create(http, base, patient())
    since = start["meta"]["lastUpdated"]
    org = create(http, base, {"resourceType": "Organization", "name": "Testorg History"})
    for _ in range(3):
        create(http, base, patient())
    first = history(http, f"{base}/_history", {"_since": since, "_count": 2})
    assert len(first.get("entry", [])) == 2
    assert link(first, "next"), first.get("link")
    entries = all_pages(http, first)
    keys = [(e["resource"]["resourceType"], e["resource"]["id"],
             e["resource"]["meta"]["versionId"]) for e in entries if "resource" in e]
    assert len(keys) == len(set(keys)), "an entry appeared on two pages"
    assert ("Organization", org["id"], org["meta"]["versionId"]) in keys
    assert ("Patient", start["id"], start["meta"]["versionId"]) in keys
    assert len(keys) >= 5
