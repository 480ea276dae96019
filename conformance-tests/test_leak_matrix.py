"""Out of reach = does not exist, from the outside.

The leak matrix (leak_matrix.json) is walked against the live server: for every principal kind
(each role template bound to a sub-organisation, a delegated sub-role, a patient, a patient with
a granular scope) and every interaction shape (read, vread, history, searches with totals,
chains, _has, includes, compartments, $everything, $validate, JSON Patch test/copy/move, PUT,
DELETE, conditional create/update/patch/delete, single and inside batch and transaction
Bundles), a resource outside the principal's reach answers exactly like an id that was never
used. Afterwards the out-of-reach resources are unchanged.

Beside the matrix: the patient-context paths of the sign-in pages and /auth/launch, system
history for a role, masked elements (not copied, tested, removed, searched, sorted on),
shared definitions written only without a role, re-creating a deleted organisation's id, and
the audit of sign-ins, token issuance and sign-outs. Synthetic data only."""

from __future__ import annotations

import base64
import copy
import json
import secrets
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from hierarchy_support import (
    entries,
    make_org,
    make_staff_user,
    post,
    put,
    session_for,
    stored,
)
from smart_flow import Flow, form_fields, pkce_pair, radio_values, register_client, register_user
from support import FHIR_JSON, JSON_PATCH, create

HERE = Path(__file__).resolve().parent
MATRIX = json.loads((HERE / "leak_matrix.json").read_text())
REDIRECT = "http://127.0.0.1:9/cb"
PASSWORD = "leak-matrix-battery"
LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
VITAL = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
CONTEXT_SCOPE = "launch/patient openid fhirUser patient/*.rs user/*.cruds"
# Keys whose values differ between any two answers (ids, versions, times, server-made URLs).
VOLATILE = {"id", "meta", "lastUpdated", "lastModified", "location", "etag", "timestamp", "fullUrl", "recorded"}


def observation(patient_id: str, category=LAB, code="leak") -> dict:
    return {"resourceType": "Observation", "status": "final", "category": [category],
            "code": {"coding": [{"system": "http://example.org/conformance/leak", "code": code}]},
            "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": "2020-01-01T10:00:00Z",
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


def patient(org: str, family: str) -> dict:
    return {"resourceType": "Patient", "active": True, "name": [{"family": family, "given": ["Testgiven"]}],
            "birthDate": "1970-01-01", "managingOrganization": {"reference": f"Organization/{org}"}}


# ---------------------------------------------------------------- the world

@pytest.fixture(scope="module")
def world(server, base, http):
    """Root -> Region -> Clinic, and Elsewhere (another root) with its own patient and records.
    Staff of every template at Clinic, a nurse delegated by Region's admin, a patient of Clinic."""
    tag = secrets.token_hex(4)
    w = SimpleNamespace(tag=tag)
    w.root = make_org(http, base, f"Root {tag}")
    w.region = make_org(http, base, f"Region {tag}", part_of=w.root)
    w.clinic = make_org(http, base, f"Clinic {tag}", part_of=w.region)
    w.elsewhere = make_org(http, base, f"Elsewhere {tag}")
    w.family = f"Leak{tag}"
    w.pa = create(http, base, patient(w.clinic, f"{w.family}Clinic"))["id"]
    w.pb = create(http, base, patient(w.elsewhere, f"{w.family}Elsewhere"))["id"]
    w.obs_a_lab = create(http, base, observation(w.pa))["id"]
    w.obs_a_vital = create(http, base, observation(w.pa, VITAL))["id"]
    w.obs_b = create(http, base, observation(w.pb))["id"]
    w.outside = {"obs_b": stored(http, base, f"Observation/{w.obs_b}"), "pb": stored(http, base, f"Patient/{w.pb}")}
    w.versions = {ref: http.get(f"{base}/{ref}").json()["meta"]["versionId"]
                  for ref in (f"Observation/{w.obs_b}", f"Patient/{w.pb}", f"Observation/{w.obs_a_vital}")}

    w.staff = {}
    for name, p in MATRIX["principals"].items():
        if p["kind"] == "role":
            w.staff[name] = make_staff_user(server, base, http, p["template"], w.clinic)
    region_admin = make_staff_user(server, base, http, "admin", w.region)
    w.region_admin = region_admin
    w.staff["delegated-nurse"] = make_staff_user(server, base, http, "nurse", w.clinic, creator=region_admin)

    w.patient_client = "leak-patient-" + tag
    register_client(server, w.patient_client, MATRIX["principals"]["patient"]["scope"], redirect_uris=[REDIRECT])
    w.patient_user = f"leak-patient-{tag}"
    register_user(server, w.patient_user, PASSWORD, f"Patient/{w.pa}")
    w.context_client = "leak-context-" + tag
    register_client(server, w.context_client, CONTEXT_SCOPE, redirect_uris=[REDIRECT])
    return w


def patient_token(base, w, scope: str) -> str:
    return Flow(base).login_tokens(w.patient_client, REDIRECT, scope, username=w.patient_user,
                                   password=PASSWORD)["access_token"]


@pytest.fixture(scope="module")
def principals(base, world):
    """name -> (token, out-of-reach targets, the principal's own patient for bodies)."""
    out = {}
    for name, p in MATRIX["principals"].items():
        if p["kind"] in ("role", "delegated"):
            out[name] = (world.staff[name].token, {"obs": world.obs_b, "pat": world.pb})
        elif name == "granular":
            out[name] = (patient_token(base, world, p["scope"]), {"obs": world.obs_a_vital, "pat": world.pb})
        else:
            out[name] = (patient_token(base, world, p["scope"]), {"obs": world.obs_b, "pat": world.pb})
    return out


# ---------------------------------------------------------------- requests of a shape

def fill(text: str, targets: dict) -> str:
    return text.replace("{obs}", targets["obs"]).replace("{pat}", targets["pat"])


def patch_binary(doc: list) -> dict:
    return {"resourceType": "Binary", "contentType": JSON_PATCH,
            "data": base64.b64encode(json.dumps(doc).encode()).decode()}


def bundle_entry(kind: str, targets: dict, own: dict) -> dict:
    obs = targets["obs"]
    test_op = [{"op": "test", "path": "/status", "value": "final"}]
    with_id = dict(own, id=obs)
    return {
        "read": {"request": {"method": "GET", "url": f"Observation/{obs}"}},
        "search": {"request": {"method": "GET", "url": f"Observation?_id={obs}&_total=accurate"}},
        "if-none-exist": {"fullUrl": "urn:uuid:" + str(secrets.token_hex(16)), "resource": own,
                          "request": {"method": "POST", "url": "Observation", "ifNoneExist": f"_id={obs}"}},
        "conditional-update": {"resource": own, "request": {"method": "PUT", "url": f"Observation?_id={obs}"}},
        "conditional-patch": {"resource": patch_binary(test_op), "request": {"method": "PATCH", "url": f"Observation?_id={obs}"}},
        "conditional-delete": {"request": {"method": "DELETE", "url": f"Observation?_id={obs}"}},
        "delete": {"request": {"method": "DELETE", "url": f"Observation/{obs}"}},
        "delete-if-match": {"request": {"method": "DELETE", "url": f"Observation/{obs}", "ifMatch": 'W/"1"'}},
        "patch": {"resource": patch_binary(test_op), "request": {"method": "PATCH", "url": f"Observation/{obs}"}},
        "put": {"fullUrl": f"Observation/{obs}", "resource": with_id, "request": {"method": "PUT", "url": f"Observation/{obs}"}},
    }[kind]


def send(session: requests.Session, base: str, shape: dict, targets: dict, own: dict) -> requests.Response:
    headers = {"Accept": FHIR_JSON}
    for k, v in shape.get("headers", {}).items():
        headers[k] = fill(v, targets)
    if "bundle" in shape:
        bundle = {"resourceType": "Bundle", "type": shape["bundle"],
                  "entry": [bundle_entry(kind, targets, copy.deepcopy(own)) for kind in shape["entries"]]}
        return session.post(base, json=bundle, headers=headers | {"Content-Type": FHIR_JSON})
    url = f"{base}/{fill(shape['path'], targets)}" if shape["path"] and not shape["path"].startswith("?") \
        else f"{base}{fill(shape['path'], targets)}"
    if "patch" in shape:
        return session.request("PATCH", url, data=json.dumps(shape["patch"]), headers=headers | {"Content-Type": JSON_PATCH})
    if "form" in shape:
        return session.post(url, data=fill(shape["form"], targets),
                            headers=headers | {"Content-Type": "application/x-www-form-urlencoded"})
    body = None
    if shape.get("body") == "observation":
        body = dict(own, id=targets["obs"])
    elif shape.get("body") == "observation-no-id":
        body = own
    if body is not None:
        return session.request(shape["method"], url, json=body, headers=headers | {"Content-Type": FHIR_JSON})
    return session.request(shape["method"], url, headers=headers)


def normalized(resp: requests.Response, targets: dict) -> object:
    """The answer with the target's id, and what differs between any two answers, set aside."""
    text = resp.text
    for value in targets.values():
        text = text.replace(value, "<ID>")
    try:
        body = json.loads(text)
    except ValueError:
        return text

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in VOLATILE}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(body)


def ghost_targets() -> dict:
    return {"obs": "ghost" + secrets.token_hex(8), "pat": "ghost" + secrets.token_hex(8)}


def cells():
    for principal in MATRIX["principals"]:
        for shape in MATRIX["shapes"]:
            yield pytest.param(principal, shape, id=f"{principal}-{shape['name']}")


# ---------------------------------------------------------------- the matrix

def test_matrix_is_well_formed():
    names = [s["name"] for s in MATRIX["shapes"]]
    assert len(names) == len(set(names)), "shape names repeat"
    for shape in MATRIX["shapes"]:
        assert "bundle" in shape or ("method" in shape and "path" in shape), shape
    kinds = {p["kind"] for p in MATRIX["principals"].values()}
    assert {"role", "delegated", "patient"} <= kinds


@pytest.mark.parametrize("principal,shape", list(cells()))
def test_out_of_reach_answers_like_does_not_exist(base, world, principals, principal, shape):
    token, outside = principals[principal]
    session = session_for(token)
    own = observation(world.pa)
    ghost = ghost_targets()
    absent = send(session, base, shape, ghost, own)
    present = send(session, base, shape, outside, own)
    what = f"{principal} {shape['name']}"
    assert present.status_code < 500 and absent.status_code < 500, (
        f"{what}: {present.status_code} {present.text[:300]} / {absent.status_code} {absent.text[:300]}")
    assert present.status_code == absent.status_code, (
        f"{what}: out of reach answered {present.status_code}, unknown id {absent.status_code}:\n"
        f"{present.text[:600]}\n---\n{absent.text[:600]}")
    assert normalized(present, outside) == normalized(absent, ghost), (
        f"{what}: the bodies differ:\n{present.text[:800]}\n---\n{absent.text[:800]}")


def test_out_of_reach_resources_are_unchanged_by_the_matrix(base, http, world, principals):
    """Runs after the matrix (file order): nothing the matrix sent changed what lay outside."""
    assert stored(http, base, f"Observation/{world.obs_b}") == world.outside["obs_b"]
    assert stored(http, base, f"Patient/{world.pb}") == world.outside["pb"]
    for ref, version in world.versions.items():
        r = http.get(f"{base}/{ref}")
        assert r.status_code == 200, f"{ref}: {r.status_code}"
        assert r.json()["meta"]["versionId"] == version, f"{ref} got a new version"


def test_a_sanity_control_inside_reach_is_found(base, world, principals):
    """The matrix would pass trivially if every principal were refused everything: inside
    reach the same shapes find what they look for."""
    nurse = session_for(principals["nurse"][0])
    assert nurse.get(f"{base}/Observation/{world.obs_a_lab}").status_code == 200
    assert nurse.get(f"{base}/Observation", params={"_id": world.obs_a_lab, "_total": "accurate"}).json()["total"] == 1
    pat = session_for(principals["patient"][0])
    assert pat.get(f"{base}/Observation/{world.obs_a_vital}").status_code == 200
    granular = session_for(principals["granular"][0])
    assert granular.get(f"{base}/Observation/{world.obs_a_lab}").status_code == 200


# ---------------------------------------------------------------- history

def test_a_role_gets_no_system_or_type_history(base, world, principals):
    """history.html at system and type level spans every organisation: a token bound to a
    role is refused (403), never served other organisations' versions."""
    admin = session_for(principals["admin"][0])
    for path in ("_history", "Observation/_history", "Patient/_history"):
        r = admin.get(f"{base}/{path}")
        assert r.status_code == 403, f"{path}: {r.status_code} {r.text[:300]}"
        assert world.obs_b not in r.text and world.pb not in r.text


# ---------------------------------------------------------------- patient context

def picker_page(base, world, staff) -> tuple[requests.Session, str, str]:
    """Drives authorize -> login up to the patient picker for a staff member (one role)."""
    flow = Flow(base)
    _, challenge = pkce_pair()
    params = {"response_type": "code", "client_id": world.context_client, "redirect_uri": REDIRECT,
              "scope": CONTEXT_SCOPE, "state": "s", "aud": base, "code_challenge": challenge,
              "code_challenge_method": "S256"}
    url = flow.config["authorization_endpoint"]
    r = flow.session.get(url, params=params, timeout=30)
    assert '<form id="login"' in r.text, r.text[:500]
    r = flow.session.post(url, data=form_fields(r.text, "login") | {"username": staff.username, "password": staff.password}, timeout=30)
    assert '<form id="patient-picker"' in r.text, r.text[:1000]
    return flow.session, url, r.text


def test_the_patient_picker_lists_only_patients_within_the_role_s_reach(base, world):
    session, url, page = picker_page(base, world, world.staff["nurse"])
    listed = radio_values(page, "patient")
    assert world.pa in listed, f"the clinic's own patient is not offered: {listed}"
    assert world.pb not in listed, "a patient of another organisation is offered"
    assert f"{world.family}Elsewhere" not in page
    # Searching by name does not find the other organisation's patient either.
    fields = form_fields(page, "patient-picker")
    r = session.post(url, data=fields | {"step": "patient-search", "q": world.family}, timeout=30)
    assert r.status_code == 200
    assert world.pb not in radio_values(r.text, "patient") and f"{world.family}Elsewhere" not in r.text
    assert world.pa in radio_values(r.text, "patient")


def test_a_patient_outside_reach_cannot_be_put_in_context_and_answers_like_an_unknown_one(base, world):
    session, url, page = picker_page(base, world, world.staff["nurse"])
    fields = form_fields(page, "patient-picker")
    outside = session.post(url, data=fields | {"patient": world.pb}, allow_redirects=False, timeout=30)
    unknown = session.post(url, data=fields | {"patient": "ghost" + secrets.token_hex(6)}, allow_redirects=False, timeout=30)
    assert outside.status_code == unknown.status_code == 400, (outside.status_code, unknown.status_code)
    assert outside.text == unknown.text
    inside = session.post(url, data=fields | {"patient": world.pa}, allow_redirects=False, timeout=30)
    assert '<form id="consent"' in inside.text, inside.text[:500]


def test_launch_contexts_only_for_patients_within_reach(base, world):
    """/auth/launch refuses a patient outside the minting role's reach exactly like an
    unknown one; inside it mints a launch."""
    launch_url = base.rsplit("/fhir", 1)[0] + "/auth/launch"
    headers = {"Authorization": f"Bearer {world.staff['nurse'].token}"}
    outside = requests.post(launch_url, data={"patient": world.pb}, headers=headers, timeout=30)
    unknown = requests.post(launch_url, data={"patient": "ghost" + secrets.token_hex(6)}, headers=headers, timeout=30)
    assert outside.status_code == unknown.status_code == 400, (outside.text, unknown.text)
    assert outside.json() == unknown.json()
    inside = requests.post(launch_url, data={"patient": world.pa}, headers=headers, timeout=30)
    assert inside.status_code == 200 and inside.json().get("launch"), inside.text


def test_a_patient_never_gets_the_picker(base, world):
    """A patient's context is their own record: the picker's steps are refused to them."""
    flow = Flow(base)
    _, challenge = pkce_pair()
    scope = "launch/patient openid fhirUser patient/*.rs"
    params = {"response_type": "code", "client_id": world.patient_client, "redirect_uri": REDIRECT, "scope": scope,
              "state": "s", "aud": base, "code_challenge": challenge, "code_challenge_method": "S256"}
    url = flow.config["authorization_endpoint"]
    r = flow.session.get(url, params=params, timeout=30)
    r = flow.session.post(url, data=form_fields(r.text, "login") | {"username": world.patient_user, "password": PASSWORD}, timeout=30)
    assert '<form id="consent"' in r.text, r.text[:500]
    fields = form_fields(r.text, "consent")
    listing = flow.session.post(url, data=fields | {"step": "patient-search", "q": world.family}, timeout=30)
    assert listing.status_code == 400, listing.status_code
    assert world.pb not in listing.text and f"{world.family}Elsewhere" not in listing.text
    chosen = flow.session.post(url, data=fields | {"step": "patient", "patient": world.pb}, timeout=30)
    assert chosen.status_code == 400


def test_a_role_s_patient_token_loses_the_patient_who_leaves_its_reach(base, http, world):
    """A patient/ token bound to a role is confined to the patient's compartment AND the
    role's reach: once the patient moves to another organisation, the token reads nothing of
    them."""
    moving = create(http, base, patient(world.clinic, f"{world.family}Mover"))["id"]
    obs = create(http, base, observation(moving))["id"]
    staff = world.staff["nurse"]
    # Only patient/ scopes: no user/ scope that would confine the token to the subtree anyway.
    tokens = Flow(base).login_tokens(world.context_client, REDIRECT, "launch/patient openid fhirUser patient/*.rs",
                                     username=staff.username, password=staff.password, patient=moving)
    assert tokens.get("patient") == moving
    s = session_for(tokens["access_token"])
    assert s.get(f"{base}/Observation/{obs}").status_code == 200
    moved = dict(stored(http, base, f"Patient/{moving}"), managingOrganization={"reference": f"Organization/{world.elsewhere}"})
    assert put(http, base, moved).status_code == 200
    time.sleep(1.2)  # the role cache's lifetime
    assert s.get(f"{base}/Observation/{obs}").status_code in (403, 404)
    assert s.get(f"{base}/Patient/{moving}").status_code in (403, 404)


# ---------------------------------------------------------------- masks

@pytest.fixture(scope="module")
def masked(base, http, world):
    comment = "Synthetic private comment " + world.tag
    appt = {"resourceType": "Appointment", "status": "booked", "start": "2031-01-01T09:00:00Z",
            "end": "2031-01-01T09:30:00Z", "comment": comment, "description": "Checkup",
            "participant": [{"actor": {"reference": f"Patient/{world.pa}"}, "status": "accepted"},
                            {"actor": {"reference": f"PractitionerRole/{world.staff['front-desk'].role_id}"}, "status": "accepted"}]}
    with_comment = create(http, base, appt)["id"]
    # Its own half hour: the same role cannot be booked twice at once.
    plain = create(http, base, {**{k: v for k, v in appt.items() if k != "comment"},
                                "start": "2031-01-01T10:00:00Z", "end": "2031-01-01T10:30:00Z"})["id"]
    condition = create(http, base, {
        "resourceType": "Condition", "subject": {"reference": f"Patient/{world.pa}"},
        "code": {"text": "Synthetic condition"},
        "stage": [{"summary": {"coding": [{"system": "http://example.org/stage", "code": f"s{world.tag}"}]}}]})["id"]
    return SimpleNamespace(comment=comment, with_comment=with_comment, plain=plain, condition=condition)


def patch(session, base, ref, doc):
    return session.request("PATCH", f"{base}/{ref}", data=json.dumps(doc),
                           headers={"Content-Type": JSON_PATCH, "Accept": FHIR_JSON})


def test_a_masked_element_cannot_be_copied_tested_moved_or_removed(base, http, world, masked):
    s = world.staff["front-desk"].session()
    before = stored(http, base, f"Appointment/{masked.with_comment}")
    for doc in ([{"op": "copy", "from": "/comment", "path": "/description"}],
                [{"op": "move", "from": "/comment", "path": "/description"}],
                [{"op": "test", "path": "/comment", "value": masked.comment}],
                [{"op": "remove", "path": "/comment"}]):
        hidden = patch(s, base, f"Appointment/{masked.with_comment}", doc)
        absent = patch(s, base, f"Appointment/{masked.plain}", doc)
        assert hidden.status_code == absent.status_code and hidden.status_code >= 400, (doc, hidden.status_code, absent.status_code)
        assert masked.comment not in hidden.text
    assert stored(http, base, f"Appointment/{masked.with_comment}") == before
    # A patch of what it may see works, and keeps what it may not.
    ok = patch(s, base, f"Appointment/{masked.with_comment}", [{"op": "replace", "path": "/description", "value": "Follow-up"}])
    assert ok.status_code == 200, ok.text[:300]
    assert masked.comment not in ok.text
    after = stored(http, base, f"Appointment/{masked.with_comment}")
    assert after["comment"] == masked.comment and after["description"] == "Follow-up"


def test_a_masked_element_cannot_be_searched_or_sorted_on(base, world, masked):
    fd = world.staff["front-desk"].session()
    for params in ({"_content": "private"}, {"_text": "private"}):
        r = fd.get(f"{base}/Appointment", params=params)
        assert r.status_code == 400, (params, r.status_code, r.text[:300])
        assert r.json()["resourceType"] == "OperationOutcome"
    billing = world.staff["billing"].session()
    stage = f"http://example.org/stage|s{world.tag}"
    for params in ({"stage": stage}, {"stage:missing": "false"}, {"_sort": "stage"},
                   {"subject": f"Patient/{world.pa}", "_content": "Synthetic"}):
        r = billing.get(f"{base}/Condition", params=params)
        assert r.status_code == 400, (params, r.status_code, r.text[:300])
    # What it may see still searches.
    r = billing.get(f"{base}/Condition", params={"_id": masked.condition})
    assert r.status_code == 200 and len(entries(r.json())) == 1
    assert "stage" not in entries(r.json())[0]
    # A role without that mask searches the same parameter.
    nurse = world.staff["nurse"].session()
    r = nurse.get(f"{base}/Condition", params={"stage": stage})
    assert r.status_code == 200 and [e["id"] for e in entries(r.json())] == [masked.condition]


# ---------------------------------------------------------------- what a role may write

def test_shared_definitions_are_written_only_without_a_role(base, http, world):
    sp = {"resourceType": "SearchParameter", "url": f"http://example.org/sp/leak-{world.tag}", "name": f"leak{world.tag}",
          "status": "active", "description": "Synthetic", "code": f"leak{world.tag}", "base": ["Patient"], "type": "token",
          "expression": "Patient.managingOrganization"}
    admin = world.staff["admin"].session()
    r = post(admin, base, sp)
    assert r.status_code == 403, r.text[:300]
    for rt, body in (("ValueSet", {"resourceType": "ValueSet", "status": "draft"}),
                     ("StructureDefinition", {"resourceType": "StructureDefinition", "url": "http://example.org/sd", "name": "X",
                                              "status": "draft", "kind": "resource", "abstract": False, "type": "Patient"})):
        assert post(admin, base, body).status_code == 403, rt
    r = http.get(f"{base}/SearchParameter", params={"url": sp["url"]})
    assert entries(r.json()) == []
    # The operator may.
    created = post(http, base, sp)
    assert created.status_code == 201, created.text[:300]
    sp_id = created.json()["id"] if created.text else None
    # And the role may not change or delete it.
    if sp_id:
        assert put(admin, base, dict(sp, id=sp_id, status="retired")).status_code == 403
        assert admin.delete(f"{base}/SearchParameter/{sp_id}").status_code == 403
        http.delete(f"{base}/SearchParameter/{sp_id}")


def test_a_deleted_organisation_s_id_cannot_be_taken_over(base, http, world):
    """An Organization deleted (or a dangling id) is not re-created by another organisation's
    admin: the references to it would hand that admin its data."""
    gone = make_org(http, base, f"Gone {world.tag}", part_of=world.region)
    assert http.delete(f"{base}/Organization/{gone}").status_code in (200, 204)
    # Clinic's admin: Gone hung under Region, outside Clinic's subtree.
    admin = world.staff["admin"].session()
    for oid in (gone, "dangling" + secrets.token_hex(4)):
        body = {"resourceType": "Organization", "id": oid, "name": "Taken over",
                "partOf": {"reference": f"Organization/{world.clinic}"}}
        r = put(admin, base, body)
        assert r.status_code == 404, (oid, r.status_code, r.text[:300])
    assert http.get(f"{base}/Organization/{gone}").status_code == 410


# ---------------------------------------------------------------- the audit of authentication

def test_sign_in_token_issuance_and_sign_out_are_audited(base, http, world, server):
    staff = make_staff_user(server, base, http, "nurse", world.clinic)
    flow = Flow(base)
    flow.login_tokens(world.context_client, REDIRECT, "openid fhirUser user/*.cruds", username=staff.username,
                      password=staff.password)
    logout = flow.session.get(base.rsplit("/fhir", 1)[0] + "/auth/logout", timeout=30)
    assert logout.status_code == 200
    r = http.get(f"{base}/AuditEvent", params={"agent": f"Practitioner/{staff.practitioner_id}", "_count": "100"})
    assert r.status_code == 200
    events = [e for e in entries(r.json()) if e.get("type", {}).get("code") == "110114" and e.get("outcome") == "0"]
    subtypes = sorted(st["code"] for e in events for st in e.get("subtype", []))
    descriptions = " | ".join(e.get("outcomeDesc", "") for e in events)
    # Two sign-ins (make_staff_user's and this one), their token requests, one sign-out.
    assert subtypes.count("110123") == 1, descriptions
    assert "sign-in" in descriptions and "tokens issued" in descriptions, descriptions
    assert subtypes.count("110122") >= 4, descriptions
    for e in events:
        assert staff.password not in json.dumps(e)
