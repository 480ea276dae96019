"""search — https://hl7.org/fhir/R4/http.html#search (parameter semantics: search.html)"""

from urllib.parse import parse_qs, urlsplit

from fhirclient.models.patient import Patient as SmartPatient
from fhir.resources.bundle import Bundle as R4Bundle

from support import (
    MRN_SYSTEM, body_resource, create, entry_ids, link, observation, patient, search, unique,
)


def test_search_by_id_returns_searchset_bundle(http, base):
    """http.html#search: `GET [base]/[type]?params` returns a Bundle of type searchset; matches
    have search.mode = match and a fullUrl (bundle.html#searchset); `_id` finds one resource."""
    res = create(http, base, patient())
    bundle = search(http, base, "Patient", {"_id": res["id"]})
    R4Bundle.parse_obj(bundle)
    assert entry_ids(bundle) == [res["id"]]
    entry = bundle["entry"][0]
    assert entry["search"]["mode"] == "match"
    assert entry["fullUrl"] == f"{base}/Patient/{res['id']}"
    assert link(bundle, "self"), bundle.get("link")
    if "total" in bundle:
        assert bundle["total"] == 1


def test_search_by_token_identifier(http, base):
    """search.html#token: `identifier=[system]|[code]` matches system and value; `[code]` alone
    matches the value in any system; another system does not match."""
    mrn = unique("MRN-")
    res = create(http, base, patient(mrn=mrn))
    create(http, base, patient(mrn=unique("MRN-")))
    assert entry_ids(search(http, base, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"})) == [
        res["id"]]
    assert entry_ids(search(http, base, "Patient", {"identifier": mrn})) == [res["id"]]
    assert entry_ids(search(http, base, "Patient",
                            {"identifier": f"http://example.org/other|{mrn}"})) == []


def test_search_by_string_is_case_insensitive_starts_with(http, base):
    """search.html#string: a string parameter matches when the field equals or starts with the
    value, after case (and accent) normalisation; `name` covers family and given."""
    family = unique()
    res = create(http, base, patient(family=family))
    prefix = family[:-3].lower()
    assert entry_ids(search(http, base, "Patient", {"family": prefix})) == [res["id"]]
    assert entry_ids(search(http, base, "Patient", {"family": family.upper()})) == [res["id"]]
    assert entry_ids(search(http, base, "Patient", {"name": prefix})) == [res["id"]]
    # starts-with, not contains
    assert entry_ids(search(http, base, "Patient", {"family": family[2:]})) == []


def test_search_by_reference(http, base):
    """search.html#reference: `subject=Patient/[id]` finds resources referring to that patient
    and no others."""
    p1 = create(http, base, patient())
    p2 = create(http, base, patient())
    o1 = create(http, base, observation(f"Patient/{p1['id']}"))
    o2 = create(http, base, observation(f"Patient/{p1['id']}", 80.0))
    create(http, base, observation(f"Patient/{p2['id']}"))
    got = entry_ids(search(http, base, "Observation", {"subject": f"Patient/{p1['id']}"}))
    assert sorted(got) == sorted([o1["id"], o2["id"]])


def test_search_count_pages_with_next_links(http, base):
    """http.html#search and search.html#count: `_count` limits the page size and the Bundle
    carries `next` links (http.html#paging) until every match has been returned once."""
    family = unique()
    ids = {create(http, base, patient(family=family))["id"] for _ in range(5)}
    bundle = search(http, base, "Patient", {"family": family, "_count": 2})
    seen, pages = [], 0
    while True:
        pages += 1
        assert len(bundle.get("entry", [])) <= 2
        seen += entry_ids(bundle)
        nxt = link(bundle, "next")
        if not nxt:
            break
        assert urlsplit(nxt).netloc == urlsplit(base).netloc
        r = http.get(nxt)
        assert r.status_code == 200, r.text[:300]
        bundle = body_resource(r, "Bundle")
        assert pages < 10, "paging does not terminate"
    assert pages == 3
    assert sorted(seen) == sorted(ids), "pages must partition the result set"


def test_search_paging_with_fhirpy(fhirpy_client):
    """http.html#search via fhirpy: iterating a search set follows the server's next links."""
    family = unique()
    created = []
    for _ in range(3):
        p = fhirpy_client.resource("Patient", name=[{"family": family}])
        p.save()
        created.append(p.id)
    found = [p.id for p in fhirpy_client.resources("Patient").search(family=family).limit(2)]
    assert sorted(found) == sorted(created)
    first = fhirpy_client.resources("Patient").search(_id=created[0]).get()
    assert first["name"][0]["family"] == family


def test_search_with_smart_fhirclient(smart_server, http, base):
    """http.html#search via fhirclient's FHIRSearch: the Bundle parses into the client's strict
    R4 Bundle model and yields the matching Patient."""
    family = unique()
    res = create(http, base, patient(family=family))
    found = list(SmartPatient.where(struct={"family": family})
                 .perform_resources_iter(smart_server))
    assert [p.id for p in found] == [res["id"]]
    assert found[0].name[0].family == family


def test_self_link_reflects_parameters(http, base):
    """http.html#search / search.html#conformance: the self link states the search the server
    actually performed (the parameters it used)."""
    family = unique()
    bundle = search(http, base, "Patient", {"family": family, "_count": 3})
    self_url = link(bundle, "self")
    q = parse_qs(urlsplit(self_url).query)
    assert q.get("family") == [family]


def test_chain_and_reverse_chain(http, base):
    """search.html#chaining and #has: `subject:Patient.family=x` finds observations of patients
    named x; `_has:Observation:subject:code=…` finds the patients such observations refer to."""
    family = unique("Chain")
    p1 = create(http, base, patient(family=family))
    p2 = create(http, base, patient())
    o1 = create(http, base, observation(f"Patient/{p1['id']}"))
    create(http, base, observation(f"Patient/{p2['id']}"))
    got = entry_ids(search(http, base, "Observation", {"subject:Patient.family": family}))
    assert got == [o1["id"]]
    has = entry_ids(search(http, base, "Patient", {
        "_has:Observation:subject:_id": o1["id"]}))
    assert has == [p1["id"]]


def test_date_prefixes_follow_the_precision_of_the_value(http, base):
    """search.html#date: `date=1970-05` covers the month; `ge`/`lt` compare ranges, so a day
    inside the month is `eq1970-05` but neither `lt1970-05` nor `gt1970-05`. (Observation's
    date: a Patient's birthdate is sealed PHI, searched by equality only — test_phi_sealing.)"""
    code = unique("Dates")
    seen = create(http, base, {"resourceType": "Observation", "status": "final",
                               "code": {"coding": [{"system": "urn:example:dates", "code": code}]},
                               "effectiveDateTime": "1970-05-17"})
    q = lambda v: entry_ids(search(http, base, "Observation", {"code": f"urn:example:dates|{code}", "date": v}))
    assert q("1970-05") == [seen["id"]]
    assert q("eq1970") == [seen["id"]]
    assert q("lt1970-05") == []
    assert q("gt1970-05") == []
    assert q("ge1970-05-17") == [seen["id"]]
    assert q("lt1970-05-18") == [seen["id"]]
    assert q("sa1970-04") == [seen["id"]]


def test_a_search_parameter_defined_by_a_client_becomes_searchable(http, base):
    """SearchParameter resources (searchparameter.html) extend the server's search: once an
    active definition is stored, its code works in searches, including on resources written
    before it (the server re-indexes them)."""
    import time

    code = unique("nick").lower()
    p = create(http, base, {**patient(), "name": [{"use": "nickname", "given": ["Zed"]}]})
    sp = {"resourceType": "SearchParameter", "url": f"http://example.org/fhir/SearchParameter/{code}",
          "name": code, "status": "active", "description": "nickname", "code": code,
          "base": ["Patient"], "type": "string",
          "expression": "Patient.name.where(use='nickname').given"}
    r = http.post(f"{base}/SearchParameter", json=sp)
    assert r.status_code == 201, r.text
    deadline = time.time() + 20
    got = []
    while time.time() < deadline:
        got = entry_ids(search(http, base, "Patient", {code: "ze"}))
        if got:
            break
        time.sleep(0.2)
    assert got == [p["id"]]
