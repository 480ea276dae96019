"""Helpers shared by the conformance tests: synthetic data, shape checks, header parsing."""

from __future__ import annotations

import email.utils
import re
import secrets
import string
from datetime import datetime, timezone

import requests
from fhir.resources import construct_fhir_element

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
JSON_PATCH = "application/json-patch+json"
FHIR_NS = "http://hl7.org/fhir"
MRN_SYSTEM = "http://example.org/conformance/mrn"
SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")

JSON_HEADERS = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
REPRESENTATION = {**JSON_HEADERS, "Prefer": "return=representation"}


class TimeoutSession(requests.Session):
    """A requests session whose calls time out (30 s) instead of hanging the suite."""

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", 30)
        return super().request(*args, **kwargs)


# ---------------------------------------------------------------- synthetic data

def unique(prefix: str = "Testperson") -> str:
    """An invented name no other test uses: prefix + 8 random lowercase letters."""
    return prefix + "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))


def patient(family: str | None = None, mrn: str | None = None, **extra) -> dict:
    body = {
        "resourceType": "Patient",
        "active": True,
        "name": [{"use": "official", "family": family or unique(), "given": ["Testgiven"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
    }
    if mrn:
        body["identifier"] = [{"system": MRN_SYSTEM, "value": mrn}]
    body.update(extra)
    return body


def observation(subject_ref: str, value: float = 72.0) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                             "display": "Heart rate"}]},
        "subject": {"reference": subject_ref},
        "effectiveDateTime": "2020-01-01T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "beats/minute",
                          "system": "http://unitsofmeasure.org", "code": "/min"},
    }


# ---------------------------------------------------------------- shape checks

def parse(data: dict, resource_type: str | None = None):
    """Parse with the fhir.resources R4 (4.0.1) models: unknown elements, missing required
    elements and wrong primitive types raise. Returns the model."""
    assert isinstance(data, dict), f"expected a JSON object, got {type(data).__name__}"
    rt = data.get("resourceType")
    if resource_type is not None:
        assert rt == resource_type, f"expected resourceType {resource_type}, got {rt}: {data}"
    return construct_fhir_element(rt, data)


def media_type(resp: requests.Response) -> str:
    return resp.headers.get("Content-Type", "").split(";")[0].strip().lower()


def body_resource(resp: requests.Response, resource_type: str | None = None) -> dict:
    """The JSON body of a response, checked to be FHIR JSON and a valid R4 resource."""
    assert media_type(resp) == FHIR_JSON, (
        f"Content-Type {resp.headers.get('Content-Type')!r}, body {resp.text[:300]!r}")
    data = resp.json()
    parse(data, resource_type)
    return data


def assert_outcome(resp: requests.Response, status: int | tuple, *, error: bool = True) -> dict:
    """The response has the status and an OperationOutcome body (http.html#errors); with
    error=True at least one issue has severity error or fatal."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in statuses, (
        f"expected HTTP {statuses}, got {resp.status_code}: {resp.text[:500]}")
    oo = body_resource(resp, "OperationOutcome")
    if error:
        severities = {i["severity"] for i in oo["issue"]}
        assert severities & {"error", "fatal"}, f"no error issue in {oo}"
    return oo


def etag_for(version_id: str) -> str:
    return f'W/"{version_id}"'


def assert_etag(resp: requests.Response, version_id: str) -> None:
    """http.html#versioning: ETag is W/"[versionId]"."""
    assert resp.headers.get("ETag") == etag_for(version_id), (
        f"ETag {resp.headers.get('ETag')!r} for versionId {version_id!r}")


def instant(value: str) -> datetime:
    """Parse a FHIR instant (RFC 3339)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def http_date(value: str) -> datetime:
    return email.utils.parsedate_to_datetime(value)


def assert_last_modified(resp: requests.Response, last_updated: str) -> None:
    """Last-Modified carries meta.lastUpdated (to the second, as HTTP dates have no fraction)."""
    lm = resp.headers.get("Last-Modified")
    assert lm, "no Last-Modified header"
    expected = instant(last_updated).astimezone(timezone.utc).replace(microsecond=0)
    assert http_date(lm) == expected, f"Last-Modified {lm} vs meta.lastUpdated {last_updated}"


def location_parts(resp: requests.Response) -> tuple[str, str, str | None]:
    """(type, id, version) from a Location / Content-Location of [base]/[type]/[id]/_history/[vid]."""
    loc = resp.headers.get("Location") or resp.headers.get("Content-Location")
    assert loc, f"no Location header (status {resp.status_code})"
    path = loc.split("?")[0].rstrip("/")
    m = re.search(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?$",
                  path)
    assert m, f"Location {loc!r} is not [base]/[type]/[id](/_history/[vid])"
    return m.group(1), m.group(2), m.group(3)


def has_subsetted_tag(resource: dict) -> bool:
    return any((t.get("system"), t.get("code")) == SUBSETTED
               for t in resource.get("meta", {}).get("tag", []))


def strip_meta(resource: dict) -> dict:
    """The resource without server-managed id/meta/text (for content comparison)."""
    return {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}


# ---------------------------------------------------------------- HTTP helpers

def create(http: requests.Session, base: str, body: dict) -> dict:
    """POST a resource, assert 201, return the stored representation."""
    r = http.post(f"{base}/{body['resourceType']}", json=body, headers=REPRESENTATION)
    assert r.status_code == 201, f"create {body['resourceType']}: {r.status_code} {r.text[:500]}"
    return body_resource(r, body["resourceType"])


def search(http: requests.Session, base: str, resource_type: str, params) -> dict:
    r = http.get(f"{base}/{resource_type}", params=params)
    assert r.status_code == 200, f"search {resource_type} {params}: {r.status_code} {r.text[:500]}"
    bundle = body_resource(r, "Bundle")
    assert bundle["type"] == "searchset"
    return bundle


def entry_ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e]


def link(bundle: dict, relation: str) -> str | None:
    for l in bundle.get("link", []):
        if l.get("relation") == relation:
            return l.get("url")
    return None


def smart_server_for(base: str, token: str):
    """A fhirclient.server.FHIRServer whose requests carry our bearer token.

    fhirclient normally obtains tokens through its OAuth2 flow; registering a tiny FHIRAuth
    subclass lets the library's own server/model code sign requests with a pre-minted token."""
    from fhirclient import auth as smart_auth
    from fhirclient import server as smart_server

    class StaticBearerAuth(smart_auth.FHIRAuth):
        auth_type = "ironfhir-static-bearer"

        def __init__(self, state=None, token=None):
            super().__init__(state=state)
            self.token = token

        def can_sign_headers(self):
            return self.token is not None

        def signed_headers(self, headers):
            return {**headers, "Authorization": f"Bearer {self.token}"}

    if StaticBearerAuth.auth_type not in smart_auth.FHIRAuth.auth_classes:
        StaticBearerAuth.register()
    srv = smart_server.FHIRServer(None, base_uri=base)
    srv.session = TimeoutSession()
    srv.auth = StaticBearerAuth(token=token)
    return srv
