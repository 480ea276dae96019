"""Helpers of the staff-hierarchy tests (test_authz_matrix.py, test_staff_hierarchy.py):
organisations, role-template PractitionerRoles, staff users logged in through the SMART pages
(a token bound to one role), synthetic resources that belong to an organisation, and checks of
the audit trail and of masked responses. Synthetic data only."""

from __future__ import annotations

import base64
import itertools
import random
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import requests

from smart_flow import GRANT_EXTENSION, Flow, register_client, register_user
from support import FHIR_JSON, TimeoutSession, create, location_parts, parse, unique

TEMPLATE_SYSTEM = "https://ironfhir.dev/fhir/CodeSystem/role-template"
CREATED_BY_EXTENSION = "https://ironfhir.dev/fhir/StructureDefinition/role-created-by"
OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
REDIRECT = "http://127.0.0.1:9/cb"
STAFF_SCOPE = "openid fhirUser user/*.cruds"
PASSWORD = "staff-hierarchy-battery"
WRITE_HEADERS = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}

_CLIENTS: dict[str, str] = {}


# ---------------------------------------------------------------- sessions

def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON}


def session_for(token: str) -> requests.Session:
    """A requests session that sends this bearer token (30 s timeouts)."""
    s = TimeoutSession()
    s.headers.update(bearer(token))
    return s


def as_session(http_or_token) -> requests.Session:
    return session_for(http_or_token) if isinstance(http_or_token, str) else http_or_token


def put(session: requests.Session, base: str, resource: dict) -> requests.Response:
    return session.put(f"{base}/{resource['resourceType']}/{resource['id']}", json=resource, headers=WRITE_HEADERS)


def post(session: requests.Session, base: str, resource: dict) -> requests.Response:
    return session.post(f"{base}/{resource['resourceType']}", json=resource, headers=WRITE_HEADERS)


def created_id(resp: requests.Response, resource_type: str) -> str:
    """The id of a 201 Created, from its Location."""
    assert resp.status_code == 201, f"create {resource_type}: {resp.status_code} {resp.text[:500]}"
    rt, rid, _ = location_parts(resp)
    assert rt == resource_type, resp.headers.get("Location")
    return rid


def stored(http: requests.Session, base: str, ref: str) -> dict:
    """The current content of `Type/id` as the (unconfined) operator reads it, without meta."""
    r = http.get(f"{base}/{ref}")
    assert r.status_code == 200, f"operator read {ref}: {r.status_code} {r.text[:300]}"
    body = r.json()
    body.pop("meta", None)
    return body


# ---------------------------------------------------------------- organisations and roles

def make_org(http, base: str, name: str, part_of: str | None = None) -> str:
    """An Organization (operator-created), optionally partOf Organization/<part_of>; its id."""
    body = {"resourceType": "Organization", "active": True, "name": name}
    if part_of:
        body["partOf"] = {"reference": f"Organization/{part_of}"}
    return create(as_session(http), base, body)["id"]


def make_practitioner(http, base: str, family: str | None = None) -> str:
    body = {"resourceType": "Practitioner", "active": True,
            "name": [{"family": family or unique("Staffperson"), "given": ["Testgiven"]}]}
    return create(as_session(http), base, body)["id"]


def template_code(template: str) -> list:
    return [{"coding": [{"system": TEMPLATE_SYSTEM, "code": template}]}]


def role_body(practitioner_id: str, org_id: str, template: str, grant: str | None = None,
              extensions: list | None = None) -> dict:
    """A PractitionerRole of a role template at an organisation (active, practitioner,
    organization), optionally narrowed by the role-grant extension."""
    body = {"resourceType": "PractitionerRole", "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
            "organization": {"reference": f"Organization/{org_id}"},
            "code": template_code(template)}
    ext = list(extensions or [])
    if grant is not None:
        ext.append({"url": GRANT_EXTENSION, "valueString": grant})
    if ext:
        body["extension"] = ext
    return body


def make_role(http_or_token, base: str, practitioner_id: str, org_id: str, template: str,
              grant: str | None = None) -> str:
    """POSTs a role-template PractitionerRole with the operator session or a (role-bound)
    token string; asserts 201 and returns the id."""
    r = post(as_session(http_or_token), base, role_body(practitioner_id, org_id, template, grant))
    return created_id(r, "PractitionerRole")


def created_by(role: dict) -> list[str]:
    """The references of every role-created-by extension of a role."""
    return [e.get("valueReference", {}).get("reference", "") for e in role.get("extension", [])
            if e.get("url") == CREATED_BY_EXTENSION]


def grant_extension(role: dict) -> list[str]:
    return [e.get("valueString") for e in role.get("extension", []) if e.get("url") == GRANT_EXTENSION]


def with_grant(role: dict, grant: str | None) -> dict:
    """A copy of the role with its role-grant extension replaced (removed when grant is None)."""
    out = dict(role)
    ext = [e for e in role.get("extension", []) if e.get("url") != GRANT_EXTENSION]
    if grant is not None:
        ext.append({"url": GRANT_EXTENSION, "valueString": grant})
    if ext:
        out["extension"] = ext
    else:
        out.pop("extension", None)
    return out


# ---------------------------------------------------------------- staff users

class Staff(NamedTuple):
    practitioner_id: str
    role_id: str
    username: str
    password: str
    token: str

    @property
    def role_ref(self) -> str:
        return f"PractitionerRole/{self.role_id}"

    def session(self) -> requests.Session:
        return session_for(self.token)


def staff_client(server) -> str:
    """A public SMART client allowed `openid fhirUser user/*.cruds` (registered once per server)."""
    key = str(server.data_dir)
    if key not in _CLIENTS:
        client_id = "hierarchy-" + secrets.token_hex(4)
        register_client(server, client_id, STAFF_SCOPE, redirect_uris=[REDIRECT])
        _CLIENTS[key] = client_id
    return _CLIENTS[key]


def login(server, base: str, username: str, password: str, role_id: str) -> str:
    """Signs in through the authorization pages (role picker only when the person holds several
    roles) and returns the access token, bound to the role."""
    tokens = Flow(base).login_tokens(staff_client(server), REDIRECT, STAFF_SCOPE, username=username,
                                     password=password, role=f"PractitionerRole/{role_id}")
    return tokens["access_token"]


def make_staff_user(server, base: str, http, template: str, org_id: str, *, grant: str | None = None,
                    creator: Staff | None = None) -> Staff:
    """A person working in one role: a Practitioner (operator-created), a PractitionerRole of
    `template` at `org_id` (operator-created, or POSTed with `creator`'s role-bound token, which
    must succeed), a user account, and an access token from the SMART login (bound to the role).
    Returns (practitioner id, role id, username, password, access token)."""
    practitioner = make_practitioner(http, base)
    role = make_role(creator.token if creator else http, base, practitioner, org_id, template, grant)
    username = f"{template}-{secrets.token_hex(5)}"
    register_user(server, username, PASSWORD, f"Practitioner/{practitioner}")
    return Staff(practitioner, role, username, PASSWORD, login(server, base, username, PASSWORD, role))


# ---------------------------------------------------------------- synthetic resources

def now_instant() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Refs(NamedTuple):
    """The ids resources of an organisation point at."""
    org: str
    patient: str
    role: str  # a PractitionerRole at org
    schedule: str | None = None


_half_hours = itertools.count(random.randrange(0, 1_000_000))


def _next_half_hour() -> tuple[str, str]:
    """A half hour no other appointment made here uses: the server refuses double booking of
    a practitioner (role), so each Appointment body gets its own time."""
    start = datetime(2030, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=30 * next(_half_hours))
    fmt = lambda t: t.isoformat().replace("+00:00", "Z")
    return fmt(start), fmt(start + timedelta(minutes=30))


def resource_body(resource_type: str, refs: Refs, **extra) -> dict:
    """A valid R4 resource of `resource_type` that belongs to refs.org's subtree (an
    organisation reference, a PractitionerRole of the organisation, or the Patient compartment
    of a Patient it manages). PractitionerRole/Practitioner/Slot need what the caller gives:
    a PractitionerRole names refs.role's practitioner via extra['practitioner']."""
    org = {"reference": f"Organization/{refs.org}"}
    patient = {"reference": f"Patient/{refs.patient}"}
    role = {"reference": f"PractitionerRole/{refs.role}"}
    start, end = _next_half_hour()
    code = {"coding": [{"system": "http://example.org/conformance/hierarchy", "code": "synthetic"}],
            "text": "Synthetic test code"}
    bodies = {
        "Patient": {"active": True, "name": [{"family": unique("Orgperson"), "given": ["Testgiven"]}],
                    "gender": "female", "birthDate": "1970-01-01", "managingOrganization": org},
        "Practitioner": {"active": True, "name": [{"family": unique("Staffperson"), "given": ["Testgiven"]}]},
        "Organization": {"active": True, "name": unique("Testorg"), "partOf": org},
        "MedicationRequest": {"status": "active", "intent": "order", "medicationCodeableConcept": code,
                              "subject": patient, "requester": role},
        "MedicationDispense": {"status": "completed", "medicationCodeableConcept": code, "subject": patient,
                               "performer": [{"actor": org}]},
        "Task": {"status": "requested", "intent": "order", "for": patient, "owner": org, "requester": role},
        "Appointment": {"status": "booked", "start": start, "end": end,
                        "participant": [{"actor": patient, "status": "accepted"},
                                        {"actor": role, "status": "accepted"}]},
        "Schedule": {"active": True, "actor": [role]},
        "Slot": {"status": "free", "start": "2030-01-01T09:00:00Z", "end": "2030-01-01T09:30:00Z",
                 "schedule": {"reference": f"Schedule/{refs.schedule}"}},
        "Invoice": {"status": "issued", "subject": patient, "issuer": org},
        "Consent": {"status": "active",
                    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                          "code": "patient-privacy"}]},
                    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                    "patient": patient, "organization": [org],
                    "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                               "code": "OPTIN"}]}},
        "DocumentReference": {"status": "current", "subject": patient, "custodian": org,
                              "content": [{"attachment": {"contentType": "text/plain",
                                                          "data": base64.b64encode(b"synthetic").decode()}}]},
        "AuditEvent": {"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
                       "action": "R", "recorded": now_instant(), "outcome": "0",
                       "agent": [{"who": role, "requestor": True}],
                       "source": {"observer": {"display": "conformance tests"}},
                       "entity": [{"what": patient}]},
        "Observation": {"status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                        "subject": patient, "effectiveDateTime": "2020-01-01T10:00:00Z",
                        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org",
                                          "code": "/min"}},
        "Condition": {"clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                     "code": "active"}]},
                      "code": code, "subject": patient},
        "Encounter": {"status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": patient, "serviceProvider": org},
        "Coverage": {"status": "active", "beneficiary": patient, "payor": [org]},
        "Medication": {"code": code},
    }
    if resource_type == "PractitionerRole":
        body = role_body(extra.pop("practitioner"), refs.org, extra.pop("template", "nurse"))
    else:
        body = {"resourceType": resource_type, **bodies[resource_type]}
    body.update(extra)
    return body


# ---------------------------------------------------------------- search results

def entries(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]


def ids_of(bundle: dict) -> set[str]:
    return {r["id"] for r in entries(bundle)}


def find(bundle: dict, resource_type: str, rid: str) -> dict:
    for r in entries(bundle):
        if r["resourceType"] == resource_type and r["id"] == rid:
            return r
    raise AssertionError(f"{resource_type}/{rid} not in bundle: {[(r['resourceType'], r['id']) for r in entries(bundle)]}")


# ---------------------------------------------------------------- masking

def has_mark(resource: dict, element: str, code: str) -> bool:
    return any(c.get("system") == OBSERVATION_VALUE and c.get("code") == code
               for c in resource.get("meta", {}).get(element, []))


def assert_masked(resource: dict, hidden: list[str]) -> None:
    """The hidden top-level elements are gone and the resource says so (REDACTED security
    label, SUBSETTED tag)."""
    for element in hidden:
        assert element not in resource and f"_{element}" not in resource, (
            f"{resource['resourceType']}/{resource.get('id')} still carries masked element {element}")
    assert has_mark(resource, "security", "REDACTED"), f"no REDACTED security label: {resource.get('meta')}"
    assert has_mark(resource, "tag", "SUBSETTED"), f"no SUBSETTED tag: {resource.get('meta')}"


def assert_not_marked(resource: dict) -> None:
    assert not has_mark(resource, "security", "REDACTED"), f"REDACTED although nothing was hidden: {resource.get('meta')}"
    assert not has_mark(resource, "tag", "SUBSETTED"), f"SUBSETTED although nothing was hidden: {resource.get('meta')}"


def without_marks(resource: dict) -> dict:
    """The resource as a client would send it back: no meta (so no REDACTED/SUBSETTED)."""
    out = dict(resource)
    out.pop("meta", None)
    return out


# ---------------------------------------------------------------- the audit trail

def refusal_audits(http, base: str, actor_role_id: str, entity: str | None = None) -> list[dict]:
    """AuditEvents of refused (outcome 4) actions by a role, as the operator finds them."""
    params = {"agent": f"PractitionerRole/{actor_role_id}", "outcome": "4", "_count": "500"}
    if entity:
        params["entity"] = entity
    r = as_session(http).get(f"{base}/AuditEvent", params=params)
    assert r.status_code == 200, f"AuditEvent search: {r.status_code} {r.text[:300]}"
    return entries(r.json())


def refused_and_audited(http, base: str, actor_role_id: str, attempt, *, entity: str | None = None,
                        timeout: float = 5.0) -> requests.Response:
    """Runs attempt() (one request by the actor's token), asserts 403, and that a new AuditEvent
    of it appeared: type code `rest`, outcome 4, agent.who the actor's role, entity.what the role
    touched when one is given. Returns the response."""
    before = {e["id"] for e in refusal_audits(http, base, actor_role_id)}
    resp = attempt()
    assert resp.status_code == 403, f"expected 403, got {resp.status_code}: {resp.text[:500]}"
    deadline = time.monotonic() + timeout
    while True:
        new = [e for e in refusal_audits(http, base, actor_role_id, entity) if e["id"] not in before]
        if new or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert new, (f"no new AuditEvent?agent=PractitionerRole/{actor_role_id}&outcome=4"
                 + (f"&entity={entity}" if entity else "") + " after the refusal")
    actor = f"PractitionerRole/{actor_role_id}"
    for event in new:
        parse(event, "AuditEvent")
        assert event.get("outcome") == "4", event
        assert event.get("type", {}).get("code") == "rest", event.get("type")
        whos = [a.get("who", {}).get("reference", "") for a in event.get("agent", [])]
        assert any(w == actor or w.endswith("/" + actor) for w in whos), whos
    if entity:
        whats = [e.get("what", {}).get("reference", "") for ev in new for e in ev.get("entity", [])]
        assert any(w == entity or w.endswith("/" + entity) for w in whats), whats
    return resp
