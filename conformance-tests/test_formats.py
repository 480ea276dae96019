"""Content negotiation and the general parameters —
https://hl7.org/fhir/R4/http.html#mime-type, #parameters (_format, _pretty, _summary, _elements)"""

import json
import xml.etree.ElementTree as ET

from fhir.resources.patient import Patient as R4Patient

from support import (
    FHIR_JSON, FHIR_NS, FHIR_XML, JSON_HEADERS, assert_outcome, body_resource, create,
    has_subsetted_tag, location_parts, media_type, patient, strip_meta, unique,
)

NS = {"f": FHIR_NS}


def f(tag: str) -> str:
    return f"{{{FHIR_NS}}}{tag}"


def rich_patient(family: str) -> dict:
    """A Patient with summary and non-summary elements (maritalStatus, communication and
    contact are not in the summary: patient.html)."""
    return patient(
        family=family,
        telecom=[{"system": "phone", "value": "+00 0000 0000", "use": "home"}],
        maritalStatus={"coding": [{"system":
                                   "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                   "code": "U"}]},
        communication=[{"language": {"coding": [{"system": "urn:ietf:bcp:47",
                                                  "code": "en"}]}}],
        contact=[{"name": {"family": "Testcontact"}}],
        text={"status": "generated",
              "div": '<div xmlns="http://www.w3.org/1999/xhtml">Testperson narrative</div>'},
    )


# ---------------------------------------------------------------- _format and Accept

def test_accept_fhir_xml_returns_xml(http, base):
    """http.html#mime-type: Accept: application/fhir+xml selects the XML format; the root
    element is the resource type in the FHIR namespace (xml.html)."""
    res = create(http, base, patient())
    r = http.get(f"{base}/Patient/{res['id']}", headers={"Accept": FHIR_XML})
    assert r.status_code == 200
    assert media_type(r) == FHIR_XML
    root = ET.fromstring(r.content)
    assert root.tag == f("Patient")
    assert root.find("f:id", NS).get("value") == res["id"]
    assert root.find("f:gender", NS).get("value") == "female"


def test_format_parameter_overrides_accept(http, base):
    """http.html#mime-type: the `_format` parameter overrides the Accept header; `xml`,
    `json`, and the full MIME types are allowed values."""
    res = create(http, base, patient())
    url = f"{base}/Patient/{res['id']}"
    for value, expected in (("xml", FHIR_XML), (FHIR_XML, FHIR_XML), ("json", FHIR_JSON),
                            (FHIR_JSON, FHIR_JSON)):
        accept = FHIR_JSON if expected == FHIR_XML else FHIR_XML
        r = http.get(url, params={"_format": value}, headers={"Accept": accept})
        assert r.status_code == 200, (value, r.status_code)
        assert media_type(r) == expected, (value, r.headers.get("Content-Type"))


def test_json_accept_aliases(http, base):
    """http.html#mime-type: application/json is accepted as a request for FHIR JSON, and a
    response Content-Type names a FHIR MIME type."""
    res = create(http, base, patient())
    r = http.get(f"{base}/Patient/{res['id']}", headers={"Accept": "application/json"})
    assert r.status_code == 200
    assert media_type(r) in (FHIR_JSON, "application/json")
    assert r.json()["id"] == res["id"]


def test_unsupported_accept_is_406(http, base):
    """http.html#mime-type (HTTP content negotiation): a format the server cannot produce is
    406 Not Acceptable."""
    res = create(http, base, patient())
    r = http.get(f"{base}/Patient/{res['id']}", headers={"Accept": "text/csv"})
    assert r.status_code == 406, r.text[:300]


def test_unsupported_content_type_is_415(http, base):
    """http.html#mime-type: a body in a format the server does not support is
    415 Unsupported Media Type."""
    r = http.post(f"{base}/Patient", data="resourceType=Patient",
                  headers={"Content-Type": "text/plain", "Accept": FHIR_JSON})
    assert_outcome(r, 415)


def test_xml_resource_round_trips_to_json(http, base):
    """http.html#mime-type and xml.html/json.html: a resource POSTed as XML is the same
    resource when read back as JSON (primitives with extensions, repeats, nested types)."""
    family = unique()
    xml_body = f"""<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <identifier>
    <system value="http://example.org/conformance/mrn"/>
    <value value="{family}-XML"/>
  </identifier>
  <active value="true"/>
  <name>
    <use value="official"/>
    <family value="{family}"/>
    <given value="Testgiven"/>
    <given value="Testmiddle"/>
  </name>
  <telecom>
    <system value="email"/>
    <value value="testperson@example.org"/>
  </telecom>
  <gender value="female"/>
  <birthDate value="1970-01-01">
    <extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">
      <valueDateTime value="1970-01-01T08:30:00Z"/>
    </extension>
  </birthDate>
  <deceasedBoolean value="false"/>
  <address>
    <line value="1 Teststreet"/>
    <city value="Testcity"/>
    <postalCode value="00000"/>
  </address>
  <multipleBirthInteger value="2"/>
</Patient>"""
    r = http.post(f"{base}/Patient", data=xml_body.encode("utf-8"),
                  headers={"Content-Type": FHIR_XML, "Accept": FHIR_JSON})
    assert r.status_code == 201, r.text[:500]
    _, rid, _ = location_parts(r)
    got = body_resource(http.get(f"{base}/Patient/{rid}", headers={"Accept": FHIR_JSON}),
                        "Patient")
    R4Patient.parse_obj(got)
    expected = {
        "resourceType": "Patient",
        "identifier": [{"system": "http://example.org/conformance/mrn",
                        "value": f"{family}-XML"}],
        "active": True,
        "name": [{"use": "official", "family": family, "given": ["Testgiven", "Testmiddle"]}],
        "telecom": [{"system": "email", "value": "testperson@example.org"}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
            "valueDateTime": "1970-01-01T08:30:00Z"}]},
        "deceasedBoolean": False,
        "address": [{"line": ["1 Teststreet"], "city": "Testcity", "postalCode": "00000"}],
        "multipleBirthInteger": 2,
    }
    assert strip_meta(got) == expected

    # and back to XML: the same values on the wire
    rx = http.get(f"{base}/Patient/{rid}", params={"_format": "xml"})
    root = ET.fromstring(rx.content)
    assert [g.get("value") for g in root.findall("f:name/f:given", NS)] == [
        "Testgiven", "Testmiddle"]
    assert root.find("f:birthDate/f:extension/f:valueDateTime", NS).get("value") == \
        "1970-01-01T08:30:00Z"


def test_xml_update_and_xml_response(http, base):
    """http.html#update and #mime-type: PUT with an XML body, answer in XML (Accept)."""
    res = create(http, base, patient())
    xml_body = (f'<Patient xmlns="http://hl7.org/fhir"><id value="{res["id"]}"/>'
                f'<gender value="male"/></Patient>')
    r = http.put(f"{base}/Patient/{res['id']}", data=xml_body,
                 headers={"Content-Type": FHIR_XML, "Accept": FHIR_XML,
                          "Prefer": "return=representation"})
    assert r.status_code == 200, r.text[:500]
    assert media_type(r) == FHIR_XML
    root = ET.fromstring(r.content)
    assert root.find("f:gender", NS).get("value") == "male"
    assert root.find("f:meta/f:versionId", NS).get("value") != res["meta"]["versionId"]
    assert http.get(f"{base}/Patient/{res['id']}").json()["gender"] == "male"


def test_error_is_rendered_in_requested_xml(http, base):
    """http.html#errors and #mime-type: an OperationOutcome honours the requested format."""
    r = http.get(f"{base}/Patient/{unique('nonexistent')}", headers={"Accept": FHIR_XML})
    assert r.status_code == 404
    assert media_type(r) == FHIR_XML
    root = ET.fromstring(r.content)
    assert root.tag == f("OperationOutcome")
    assert root.find("f:issue/f:severity", NS).get("value") in ("error", "fatal")


# ---------------------------------------------------------------- _pretty, _summary, _elements

def test_pretty(http, base):
    """http.html#parameters: `_pretty=true` asks for pretty-printed output; content is the same."""
    res = create(http, base, patient())
    pretty = http.get(f"{base}/Patient/{res['id']}", params={"_pretty": "true"})
    compact = http.get(f"{base}/Patient/{res['id']}", params={"_pretty": "false"})
    assert pretty.status_code == compact.status_code == 200
    assert "\n" in pretty.text.strip() and '\n  "' in pretty.text
    assert "\n" not in compact.text.strip()
    assert json.loads(pretty.text) == json.loads(compact.text)


def test_summary_true(http, base):
    """http.html#parameters and search.html#summary: `_summary=true` returns only elements
    marked as summary; the result is marked SUBSETTED (meta.tag)."""
    res = create(http, base, rich_patient(unique()))
    r = http.get(f"{base}/Patient/{res['id']}", params={"_summary": "true"})
    assert r.status_code == 200
    got = r.json()
    R4Patient.parse_obj(got)
    assert got["id"] == res["id"]
    assert got["name"] == res["name"] and got["gender"] == "female"
    assert got["telecom"] == res["telecom"]
    for absent in ("maritalStatus", "communication", "contact", "text"):
        assert absent not in got, absent
    assert has_subsetted_tag(got)


def test_summary_data_and_text(http, base):
    """search.html#summary: `_summary=data` drops the narrative only; `_summary=text` returns
    text, id, meta and mandatory top-level elements only."""
    res = create(http, base, rich_patient(unique()))
    data = http.get(f"{base}/Patient/{res['id']}", params={"_summary": "data"}).json()
    assert "text" not in data
    assert data["maritalStatus"] == res["maritalStatus"] and data["contact"] == res["contact"]
    assert has_subsetted_tag(data)
    text = http.get(f"{base}/Patient/{res['id']}", params={"_summary": "text"}).json()
    assert text["text"]["div"] and text["id"] == res["id"]
    for absent in ("name", "maritalStatus", "contact", "gender"):
        assert absent not in text, absent


def test_elements(http, base):
    """http.html#parameters and search.html#elements: `_elements=name,gender` returns those
    elements plus mandatory ones (id, meta), marked SUBSETTED."""
    res = create(http, base, rich_patient(unique()))
    r = http.get(f"{base}/Patient/{res['id']}", params={"_elements": "name,gender"})
    assert r.status_code == 200
    got = r.json()
    R4Patient.parse_obj(got)
    assert set(got) - {"resourceType", "id", "meta"} == {"name", "gender"}
    assert got["name"] == res["name"]
    assert has_subsetted_tag(got)


def test_subsetted_read_is_not_the_stored_resource(http, base):
    """http.html#parameters: a summary is a view; the stored resource is unchanged and a full
    read still returns every element."""
    res = create(http, base, rich_patient(unique()))
    http.get(f"{base}/Patient/{res['id']}", params={"_summary": "true"})
    full = http.get(f"{base}/Patient/{res['id']}", headers=JSON_HEADERS).json()
    assert full["maritalStatus"] == res["maritalStatus"]
    assert not has_subsetted_tag(full)
