#!/usr/bin/env python3
"""Writes the small seed corpora of the fuzz targets into fuzz/seeds/<target>/ (committed).

Sources: the repository's own synthetic demo data (demo/demo.ndjson.gz), the HL7 test cases
kept in tests/fixtures/fhir-test-cases (and ../shared/fhir-test-cases when present, for the
JSON Patch tests), and hand-written search queries and Bundles. Re-run after changing it:
    python3 fuzz/make-seeds.py
"""
import base64, gzip, hashlib, json, os, re, shutil, sys
from xml.etree import ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.join(ROOT, "tests/fixtures/fhir-test-cases/r4")
SHARED = os.path.join(os.path.dirname(ROOT), "shared/fhir-test-cases/r4")
OUT = os.path.join(HERE, "seeds")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    # --- resources: demo data (one or two of each type) and the HL7 examples
    demo = [json.loads(l) for l in gzip.open(os.path.join(ROOT, "demo/demo.ndjson.gz"), "rt")]
    per_type = {}
    for r in demo:
        per_type.setdefault(r["resourceType"], []).append(r)
    resources = [r for rs in per_type.values() for r in rs[:2]]
    for r in resources:
        put("json_resource", json.dumps(r))
    for name in sorted(os.listdir(FIX)):
        p = os.path.join(FIX, name)
        if name.endswith(".json"):
            put("json_resource", open(p, "rb").read())
        elif name.endswith(".xml"):
            put("xml_resource", open(p, "rb").read())
    put("json_resource", '{"resourceType":"Patient","name":[{"family":"' + "x" * 64 + '"}],"_birthDate":{"extension":[{"url":"http://e.org/x","valueString":"y"}]}}')
    put("json_resource", '{"resourceType":"Observation","status":"final","code":{"text":"t"},"valueQuantity":{"value":1e-300},"contained":[{"resourceType":"Patient","id":"p"}],"subject":{"reference":"#p"}}')
    # Found by search_params (search::params::date_bounds slices bytes; Period per-1 check):
    put("json_resource", '{"resourceType":"Encounter","status":"finished","class":{"code":"AMB"},"period":{"start":"1-\ufffdnt","end":"2001"}}')
    put("xml_resource", '<Patient xmlns="http://hl7.org/fhir"><id value="x"/><name><family value="A"/></name></Patient>')
    put("xml_resource", '<?xml version="1.0"?><Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="t"/></code><valueQuantity><value value="1.50"/></valueQuantity></Observation>')

    # --- FHIRPath: the expressions of HL7's R4 suite, plus a resource for some
    tree = ET.parse(os.path.join(FIX, "fhirpath/tests-fhir-r4.xml"))
    exprs = []
    for e in tree.iter("expression"):
        text = (e.text or "").strip()
        if text and "\n" not in text and text not in exprs:
            exprs.append(text)
    for x in exprs:
        put("fhirpath", x + "\n")
    obs = next(r for r in resources if r["resourceType"] == "Observation")
    for x in ["Observation.value.as(Quantity).value", "subject.where(resolve() is Patient)", "component.code.coding.where(system='http://loinc.org').code",
              "descendants().count()", "repeat(children()).count()", "(1 | 2 | 3).aggregate($this + $total, 0)", "effective.ofType(dateTime) > @2020"]:
        put("fhirpath", x + "\n" + json.dumps(obs))

    # --- search queries
    queries = """Patient?name=Smith&_count=5
Patient?name:exact=Ann&birthdate=ge1970-01-01&_sort=-birthdate,name
Patient?identifier=http://example.org/mrn|123&_total=accurate
Patient?_has:Observation:subject:code=http://loinc.org|8480-6&_summary=count
Patient?general-practitioner:Practitioner.name=Who&_include=Patient:organization
Patient?_id=a,b,c&_lastUpdated=lt2030-01-01T00:00:00Z&_elements=name,gender
Patient?address-city:contains=ville&gender:not=male&_revinclude=Observation:subject
Patient?phone=555&email:missing=true&deceased=false
Patient?_text=fever&_content=synthetic
Patient?organization.partof.name=Acme
Patient?_has:Observation:patient:_has:AuditEvent:entity:agent=x
Observation?code=http://loinc.org|8480-6&value-quantity=gt140|http://unitsofmeasure.org|mm[Hg]
Observation?code-value-quantity=http://loinc.org|8480-6$gt140&date=2024-02
Observation?subject:Patient.name=Ann&_include:iterate=Patient:general-practitioner
Observation?value-quantity=5.4||mg&date=sa2020-01-01T10:00:05.25Z
Observation?combo-code=\\|x\\,y\\$z&category=laboratory&_sort=date
Observation?date=ap2020&value-quantity=1e3&status=final,amended
Encounter?date=gt2020-02-29T10:00&class=AMB&_include=*
Encounter?subject=Patient/123&participant:missing=false
Condition?onset-date=le2024&clinical-status=active&_summary=true
MedicationRequest?authoredon=eb2024-12-31&intent=order&_offset=10
Practitioner?name=Ada&_sort=family&_total=estimate
Organization?partof:missing=true&name:contains=health
Group?member=Patient/1&characteristic-value=gender$male
PractitionerRole?organization=Organization/org1&role=doctor
AuditEvent?date=ge2024&agent=Practitioner/1&entity=Patient/2
SearchParameter?url:below=http://hl7.org/fhir&_count=0
Bundle?composition.subject.name=x
Composition?entry=urn:uuid:0c3a1e52-0000-4000-8000-000000000001
Immunization?vaccine-code=|12&date=2020-13-45
Procedure?date=2024-02-30&_format=xml&_pretty=true
Patient?birthdate=T25:61&_cursor=abc
Patient?_count=-1&_sort=unknown
Patient?name=%00%01&family=%C3%A9
Observation?value-quantity=1e999999
Observation?value-quantity=1e-999999
Observation?value-quantity=0.5e-2147483648
Encounter?date=1-\ufffdnt""".splitlines()
    for q in queries:
        put("search_params", q)

    # --- JSON Patch
    patches = [
        [{"op": "replace", "path": "/name/0/family", "value": "Other"}],
        [{"op": "add", "path": "/name/-", "value": {"family": "X"}}],
        [{"op": "remove", "path": "/telecom"}, {"op": "test", "path": "/active", "value": True}],
        [{"op": "copy", "from": "/name", "path": "/contact"}, {"op": "move", "from": "/address/0", "path": "/address/1"}],
        [{"op": "copy", "from": "/name/0", "path": "/name/-"}] * 8,
        [{"op": "replace", "path": "/id", "value": "other"}],
        [{"op": "add", "path": "/~1weird~0key", "value": 1}],
    ]
    pt = os.path.join(SHARED, "patch/json-patch-tests.json")
    if os.path.exists(pt):
        for case in json.load(open(pt)):
            patches.append(case["patch"])
    for p in patches:
        put("json_patch", json.dumps(p))

    # --- Bundles
    def b64(v):
        return base64.b64encode(json.dumps(v).encode()).decode()
    pat = {"resourceType": "Patient", "name": [{"family": "Fuzz"}], "identifier": [{"system": "http://example.org/mrn", "value": "F-1"}]}
    u1, u2 = "urn:uuid:0c3a1e52-0000-4000-8000-000000000001", "urn:uuid:0c3a1e52-0000-4000-8000-000000000002"
    bundles = [
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": u1, "resource": pat, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://example.org/mrn|F-1"}},
            {"fullUrl": u2, "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"}, "subject": {"reference": u1}},
             "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": "Patient?identifier=http://example.org/mrn|F-1"}}]},
        {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {"request": {"method": "DELETE", "url": "Patient?identifier=http://example.org/mrn|nobody"}},
            {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                          "data": b64([{"op": "replace", "path": "/active", "value": False}])},
             "request": {"method": "PATCH", "url": "Patient/p1", "ifMatch": "W/\"1\""}},
            {"resource": dict(pat, id="p1"), "request": {"method": "PUT", "url": "Patient/p1"}}]},
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": u1, "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"}, "subject": {"reference": u2}},
             "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": u1, "resource": pat, "request": {"method": "POST", "url": "Patient"}}]},
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                          "subject": {"reference": "Patient?identifier=http://example.org/mrn|F-1"}},
             "request": {"method": "PUT", "url": "Observation?code=t"}}]},
        {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Patient?_has:Observation:subject:status=final&_include=Patient:organization"}},
            {"request": {"method": "HEAD", "url": "Patient/p1/_history/1", "ifNoneMatch": "W/\"1\"", "ifModifiedSince": "2024-01-01T00:00:00Z"}},
            {"request": {"method": "GET", "url": "http://localhost:8080/fhir/Patient?name=Fuzz"}}]},
        {"resourceType": "Bundle", "type": "transaction", "entry": []},
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": pat}]},
    ]
    for b in bundles:
        put("bundle_entries", json.dumps(b))
        put("bundle_process", json.dumps(b))
    print("seeds:", {t: len(os.listdir(os.path.join(OUT, t))) for t in sorted(os.listdir(OUT))})


if __name__ == "__main__":
    main()
