"""capabilities — https://hl7.org/fhir/R4/http.html#capabilities"""

import importlib
import xml.etree.ElementTree as ET

from fhirclient.models.capabilitystatement import CapabilityStatement as SmartCapabilityStatement

from support import FHIR_JSON, FHIR_NS, FHIR_XML, body_resource, media_type

R4_ONLY_ABSTRACT = {"Resource", "DomainResource", "MetadataResource"}


def r4_resource_types() -> set[str]:
    """Every concrete R4 4.0.1 resource type, from the fhir.resources model registry."""
    from fhir.resources.fhirtypesvalidators import MODEL_CLASSES
    from fhir.resources.resource import Resource

    types = set()
    for name, (_, module) in MODEL_CLASSES.items():
        cls = getattr(importlib.import_module("fhir.resources" + module), name)
        if issubclass(cls, Resource) and name not in R4_ONLY_ABSTRACT:
            types.add(name)
    return types


def get_capability(anon, base):
    r = anon.get(f"{base}/metadata", headers={"Accept": FHIR_JSON})
    assert r.status_code == 200, r.text[:500]
    return body_resource(r, "CapabilityStatement")


def test_metadata_is_public_and_a_valid_r4_capability_statement(anon, base):
    """http.html#capabilities: `GET [base]/metadata` returns a CapabilityStatement; a server
    SHALL provide one. It needs no credentials (the SMART discovery flow reads it first).
    Shape is checked with the fhir.resources R4 model."""
    cs = get_capability(anon, base)
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance"
    assert cs["status"] in ("active", "draft")
    formats = set(cs["format"])
    assert formats & {"json", FHIR_JSON, "application/json"}, formats
    assert formats & {"xml", FHIR_XML, "application/xml"}, formats
    assert len(cs["rest"]) >= 1 and cs["rest"][0]["mode"] == "server"


def test_capability_statement_lists_every_r4_resource_type(anon, base):
    """http.html#capabilities: the statement says which resource types are supported; this server
    claims all of R4. Parameters is excluded: it has no RESTful endpoint (parameters.html)."""
    cs = get_capability(anon, base)
    listed = {r["type"] for r in cs["rest"][0].get("resource", [])}
    missing = r4_resource_types() - {"Parameters"} - listed
    assert not missing, f"resource types missing from the CapabilityStatement: {sorted(missing)}"


def test_capability_statement_declares_the_interactions_the_server_implements(anon, base):
    """http.html#capabilities and capabilitystatement.html: interactions, versioning, conditional
    support and search parameters are declared per resource type."""
    cs = get_capability(anon, base)
    rest = cs["rest"][0]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient["interaction"]}
    assert {"read", "vread", "update", "patch", "delete", "history-instance", "history-type",
            "create", "search-type"} <= codes, codes
    assert patient.get("versioning") in ("versioned", "versioned-update")
    assert patient.get("readHistory") is True
    assert patient.get("updateCreate") is True
    assert patient.get("conditionalCreate") is True
    assert patient.get("conditionalUpdate") is True
    assert patient.get("conditionalDelete") in ("single", "multiple")
    assert set(patient.get("conditionalRead", "not-supported").split()) & {
        "modified-since", "not-match", "full-support"}
    params = {p["name"] for p in patient.get("searchParam", [])}
    assert {"identifier", "name", "family"} <= params, params
    system = {i["code"] for i in rest.get("interaction", [])}
    assert "history-system" in system, system


def test_capability_statement_parses_with_the_smart_fhirclient(smart_server):
    """http.html#capabilities, read through the SMART on FHIR Python client (fhirclient), whose
    generated R4 models reject unknown properties and wrong types."""
    cs = SmartCapabilityStatement.read_from("metadata", smart_server)
    assert cs.fhirVersion == "4.0.1"
    assert cs.rest[0].mode == "server"
    assert any(r.type == "Observation" for r in cs.rest[0].resource)


def test_metadata_in_xml(anon, base):
    """http.html#mime-type and #capabilities: the statement is available in every supported
    format; `_format=xml` selects XML."""
    r = anon.get(f"{base}/metadata", params={"_format": "xml"})
    assert r.status_code == 200
    assert media_type(r) == FHIR_XML
    root = ET.fromstring(r.content)
    assert root.tag == f"{{{FHIR_NS}}}CapabilityStatement"
    fv = root.find(f"{{{FHIR_NS}}}fhirVersion")
    assert fv is not None and fv.get("value") == "4.0.1"
