"""The staff hierarchy from the outside.

Organisation subtrees: a token bound to a PractitionerRole sees and changes only what belongs
to the role's organisation and the organisations below it (Organization.partOf, any depth):
outside it reads and updates answer 404 and deletes delete nothing (as for an unknown id),
searches (totals, paging, chains, _has, _include/_revinclude) never reveal anything, writes
that would put data outside answer 403, type- and system-level history 403.

Delegation: an admin role creates sub-roles (the server records the creator), to any depth;
every escalation (organisation outside the subtree, grant beyond its own effective grant,
touching itself, its creator or anything above, no delegate right) is refused with 403 and
leaves an AuditEvent the operator can find. Narrowing or ending a role reaches every
descendant on its next request.

Masking: front-desk and billing templates do not see some elements (narrative, notes,
Appointment.comment, Condition.evidence, ...) in any response shape, the masked resources say
so (REDACTED security label, SUBSETTED tag), and a masked role's update keeps what it could not
see. Synthetic data only."""

from __future__ import annotations

import secrets
from types import SimpleNamespace

import pytest

from hierarchy_support import (
    CREATED_BY_EXTENSION,
    TEMPLATE_SYSTEM,
    Refs,
    assert_masked,
    assert_not_marked,
    created_by,
    created_id,
    entries,
    find,
    grant_extension,
    ids_of,
    make_org,
    make_practitioner,
    make_role,
    make_staff_user,
    post,
    put,
    refused_and_audited,
    resource_body,
    role_body,
    stored,
    with_grant,
    without_marks,
)
from support import create

HIER_SYSTEM = "http://example.org/conformance/hierarchy"
# An admin role narrowed at creation: it may still delegate, but only within this grant.
NARROW_ADMIN_GRANT = ("user/Patient.rus user/Observation.crus user/Practitioner.rs user/Organization.rs "
                      "user/PractitionerRole.cruds")
# What the operator narrows a Root admin role to in the narrowing test.
ROOT_NARROWED = "user/Patient.rs user/PractitionerRole.rs user/Practitioner.rs user/Organization.rs"
NARRATIVE = '<div xmlns="http://www.w3.org/1999/xhtml">Synthetic narrative of a test person</div>'


def get(session, base, path, **params):
    return session.get(f"{base}/{path}", params=params or None)


def bundle_of(session, base, path, **params) -> dict:
    r = get(session, base, path, **params)
    assert r.status_code == 200, f"GET {path} {params}: {r.status_code} {r.text[:500]}"
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle", bundle
    return bundle


def refs_of(bundle: dict) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in entries(bundle)}


def all_pages(session, bundle: dict) -> list[dict]:
    """Every resource of a searchset, following next links."""
    out = entries(bundle)
    seen = 0
    while True:
        nxt = next((l["url"] for l in bundle.get("link", []) if l.get("relation") == "next"), None)
        if not nxt:
            return out
        seen += 1
        assert seen < 50, "too many pages"
        r = session.get(nxt)
        assert r.status_code == 200, r.text[:300]
        bundle = r.json()
        out += entries(bundle)


# ---------------------------------------------------------------- the organisation tree

@pytest.fixture(scope="module")
def tree(base, http):
    """Root -> Region -> Clinic, and Other (partOf Root, a sibling of Region) with its own
    patient; patients managed at Region, Clinic and Other, each with an Observation; a
    'bridge' Observation of the Clinic patient pointing at Other's role and Observation; a
    'spy' Observation of Other's patient pointing (focus) at the Clinic patient."""
    tag = secrets.token_hex(4)
    t = SimpleNamespace(tag=tag, family=f"Hier{tag}")
    t.root = make_org(http, base, f"Root {tag}")
    t.region = make_org(http, base, f"Region {tag}", part_of=t.root)
    t.clinic = make_org(http, base, f"Clinic {tag}", part_of=t.region)
    t.other = make_org(http, base, f"Other {tag}", part_of=t.root)
    t.code = f"{HIER_SYSTEM}|h{tag}"
    t.spy_code = f"{HIER_SYSTEM}|spy{tag}"

    def patient(org, suffix):
        return create(http, base, {
            "resourceType": "Patient", "active": True,
            "name": [{"family": f"{t.family}{suffix}", "given": ["Testgiven"]}],
            "managingOrganization": {"reference": f"Organization/{org}"}})["id"]

    def observation(pid, codes=(f"h{tag}",), **extra):
        return create(http, base, {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": HIER_SYSTEM, "code": c} for c in codes]},
            "subject": {"reference": f"Patient/{pid}"}, "valueString": "synthetic", **extra})["id"]

    t.pt = {"region": patient(t.region, "region"), "clinic": patient(t.clinic, "clinic"),
            "other": patient(t.other, "other")}
    t.obs = {k: observation(v) for k, v in t.pt.items()}
    t.other_practitioner = make_practitioner(http, base)
    t.other_role = make_role(http, base, t.other_practitioner, t.other, "nurse")
    t.bridge = observation(t.pt["clinic"], performer=[{"reference": f"PractitionerRole/{t.other_role}"}],
                           hasMember=[{"reference": f"Observation/{t.obs['other']}"}])
    t.spy = observation(t.pt["other"], codes=(f"h{tag}", f"spy{tag}"),
                        focus=[{"reference": f"Patient/{t.pt['clinic']}"}])
    return t


@pytest.fixture(scope="module")
def region_rx(server, base, http, tree):
    """A prescriber at Region (sees Region and Clinic)."""
    return make_staff_user(server, base, http, "prescriber", tree.region)


@pytest.fixture(scope="module")
def clinic_rx(server, base, http, tree):
    """A prescriber at Clinic (sees Clinic only)."""
    return make_staff_user(server, base, http, "prescriber", tree.clinic)


# ---------------------------------------------------------------- confinement to the subtree

def test_prescriber_sees_its_organisation_and_everything_below(base, tree, region_rx):
    s = region_rx.session()
    for ref in (f"Patient/{tree.pt['clinic']}", f"Patient/{tree.pt['region']}",
                f"Observation/{tree.obs['clinic']}", f"Observation/{tree.obs['region']}",
                f"Observation/{tree.bridge}", f"Organization/{tree.region}", f"Organization/{tree.clinic}"):
        r = get(s, base, ref)
        assert r.status_code == 200, f"{ref}: {r.status_code} {r.text[:300]}"


def test_outside_the_subtree_reads_are_not_found(base, http, tree, region_rx):
    s = region_rx.session()
    vid = {ref: http.get(f"{base}/{ref}").json()["meta"]["versionId"]
           for ref in (f"Patient/{tree.pt['other']}", f"Observation/{tree.obs['other']}")}
    for ref in (f"Patient/{tree.pt['other']}", f"Observation/{tree.obs['other']}", f"Observation/{tree.spy}",
                f"Organization/{tree.other}", f"Organization/{tree.root}",
                f"PractitionerRole/{tree.other_role}", f"Practitioner/{tree.other_practitioner}",
                *(f"{ref}/_history/{v}" for ref, v in vid.items()),
                f"Patient/{tree.pt['other']}/_history", f"Observation/{tree.obs['other']}/_history"):
        r = get(s, base, ref)
        assert r.status_code == 404, f"{ref}: expected 404, got {r.status_code} {r.text[:300]}"


def test_searches_and_totals_never_count_the_outside(base, http, tree, region_rx):
    s = region_rx.session()
    pt, obs = tree.pt, tree.obs
    # The operator sees all three patients: the data is there.
    b = bundle_of(http, base, "Patient", name=tree.family, _total="accurate")
    assert ids_of(b) == set(pt.values()) and b["total"] == 3

    b = bundle_of(s, base, "Patient", _id=",".join(pt.values()), _total="accurate")
    assert ids_of(b) == {pt["clinic"], pt["region"]} and b["total"] == 2
    b = bundle_of(s, base, "Patient", name=tree.family, _total="accurate")
    assert ids_of(b) == {pt["clinic"], pt["region"]} and b["total"] == 2
    b = bundle_of(s, base, "Patient", name=f"{tree.family}other", _total="accurate")
    assert entries(b) == [] and b["total"] == 0

    visible_obs = {obs["clinic"], obs["region"], tree.bridge}
    b = bundle_of(s, base, "Observation", code=tree.code, _total="accurate")
    assert ids_of(b) == visible_obs and b["total"] == 3
    b = bundle_of(s, base, "Observation", code=tree.spy_code, _total="accurate")
    assert entries(b) == [] and b["total"] == 0
    # Paging neither counts nor serves what the token cannot see.
    b = bundle_of(s, base, "Observation", code=tree.code, _count="1", _total="accurate")
    assert b["total"] == 3
    assert sorted(r["id"] for r in all_pages(s, b)) == sorted(visible_obs)

    # Organizations: the subtree goes down from Region, not up to Root nor sideways to Other.
    orgs = [tree.root, tree.region, tree.clinic, tree.other]
    b = bundle_of(s, base, "Organization", _id=",".join(orgs), _total="accurate")
    assert ids_of(b) == {tree.region, tree.clinic} and b["total"] == 2


def test_chains_and_has_do_not_reveal_the_outside(base, http, tree, region_rx):
    s = region_rx.session()
    pt, obs = tree.pt, tree.obs
    b = bundle_of(s, base, "Observation", **{"subject:Patient.name": f"{tree.family}other", "_total": "accurate"})
    assert entries(b) == [] and b["total"] == 0
    b = bundle_of(s, base, "Observation", **{"subject:Patient.name": tree.family, "code": tree.code,
                                             "_total": "accurate"})
    assert ids_of(b) == {obs["clinic"], obs["region"], tree.bridge} and b["total"] == 3
    # The bridge Observation is visible, but its performer (Other's role) is not: a chain
    # through it must not match (it would reveal what the role is).
    chain = {"performer:PractitionerRole.organization": f"Organization/{tree.other}", "_total": "accurate"}
    assert ids_of(bundle_of(http, base, "Observation", **chain)) == {tree.bridge}  # control
    b = bundle_of(s, base, "Observation", **chain)
    assert entries(b) == [] and b["total"] == 0

    b = bundle_of(s, base, "Patient", **{"_has:Observation:subject:code": tree.code, "_total": "accurate"})
    assert ids_of(b) == {pt["clinic"], pt["region"]} and b["total"] == 2
    # The spy Observation (Other's) focuses on the Clinic patient: _has must not see it.
    has = {"_has:Observation:focus:code": tree.spy_code, "_total": "accurate"}
    assert ids_of(bundle_of(http, base, "Patient", **has)) == {pt["clinic"]}  # control
    b = bundle_of(s, base, "Patient", **has)
    assert entries(b) == [] and b["total"] == 0


def test_include_and_revinclude_do_not_drag_in_the_outside(base, http, tree, region_rx):
    s = region_rx.session()
    pt, obs = tree.pt, tree.obs
    params = {"_id": tree.bridge, "_include": ["Observation:performer", "Observation:has-member"]}
    control = refs_of(bundle_of(http, base, "Observation", **params))
    assert {f"PractitionerRole/{tree.other_role}", f"Observation/{obs['other']}"} <= control
    assert refs_of(bundle_of(s, base, "Observation", **params)) == {f"Observation/{tree.bridge}"}

    params = {"_id": f"{obs['clinic']},{obs['other']}", "_include": "Observation:subject"}
    assert refs_of(bundle_of(s, base, "Observation", **params)) == {
        f"Observation/{obs['clinic']}", f"Patient/{pt['clinic']}"}

    params = {"_id": pt["clinic"], "_revinclude": ["Observation:subject", "Observation:focus"]}
    assert f"Observation/{tree.spy}" in refs_of(bundle_of(http, base, "Patient", **params))  # control
    assert refs_of(bundle_of(s, base, "Patient", **params)) == {
        f"Patient/{pt['clinic']}", f"Observation/{obs['clinic']}", f"Observation/{tree.bridge}"}


def test_history_outside_and_type_level_history(base, tree, region_rx):
    s = region_rx.session()
    assert get(s, base, f"Patient/{tree.pt['clinic']}/_history").status_code == 200
    for path in (f"Patient/{tree.pt['other']}/_history", f"Observation/{tree.obs['other']}/_history"):
        r = get(s, base, path)
        assert r.status_code == 404, f"{path}: {r.status_code}"
    for path in ("Observation/_history", "Patient/_history", "_history"):
        r = get(s, base, path)
        assert r.status_code == 403, f"{path}: expected 403, got {r.status_code} {r.text[:300]}"


def test_writes_outside_the_subtree_are_forbidden(base, http, tree, region_rx):
    s = region_rx.session()
    outside = Refs(tree.other, tree.pt["other"], tree.other_role)
    # A patient of its own, so the control Observation below changes no other test's results.
    fresh = create(http, base, resource_body("Patient", Refs(tree.clinic, "", tree.other_role)))["id"]
    inside = Refs(tree.clinic, fresh, tree.other_role)
    # Control: the same write inside the subtree is allowed.
    assert post(s, base, resource_body("Observation", inside)).status_code == 201
    r = post(s, base, resource_body("Observation", outside))
    assert r.status_code == 403, f"create for Other's patient: {r.status_code} {r.text[:300]}"
    r = post(s, base, resource_body("Patient", outside))
    assert r.status_code == 403, f"create a patient of Other: {r.status_code} {r.text[:300]}"

    # What lies outside does not exist for the role: an update is 404 and a delete deletes
    # nothing, exactly as for ids never used (test_leak_matrix.py compares the two).
    before = stored(http, base, f"Patient/{tree.pt['other']}")
    r = put(s, base, dict(before, birthDate="1999-09-09"))
    assert r.status_code == 404, f"update Other's patient: {r.status_code} {r.text[:300]}"
    assert stored(http, base, f"Patient/{tree.pt['other']}") == before

    r = s.delete(f"{base}/Observation/{tree.obs['other']}")
    assert r.status_code in (200, 204), f"delete Other's observation: {r.status_code} {r.text[:300]}"
    assert "nothing was deleted" in r.text or r.status_code == 204
    assert http.get(f"{base}/Observation/{tree.obs['other']}").status_code == 200


def test_an_update_cannot_move_a_resource_out_of_the_subtree(base, http, tree, region_rx):
    s = region_rx.session()
    pid = create(http, base, resource_body("Patient", Refs(tree.clinic, "", tree.other_role)))["id"]
    before = stored(http, base, f"Patient/{pid}")
    moved = dict(before, managingOrganization={"reference": f"Organization/{tree.other}"})
    r = put(s, base, moved)
    assert r.status_code == 403, f"moving a patient to Other: {r.status_code} {r.text[:300]}"
    assert stored(http, base, f"Patient/{pid}") == before


def test_the_subtree_goes_down_not_up(base, tree, clinic_rx):
    s = clinic_rx.session()
    assert get(s, base, f"Patient/{tree.pt['clinic']}").status_code == 200
    assert get(s, base, f"Observation/{tree.obs['clinic']}").status_code == 200
    for ref in (f"Patient/{tree.pt['region']}", f"Observation/{tree.obs['region']}", f"Organization/{tree.region}",
                f"Patient/{tree.pt['other']}"):
        r = get(s, base, ref)
        assert r.status_code == 404, f"{ref}: expected 404, got {r.status_code}"
    b = bundle_of(s, base, "Patient", name=tree.family, _total="accurate")
    assert ids_of(b) == {tree.pt["clinic"]} and b["total"] == 1


# ---------------------------------------------------------------- delegation

def build_chain(server, base, http, tree) -> SimpleNamespace:
    """Admin at Root (operator-created) -> admin at Region -> admin at Clinic -> nurse at
    Clinic, each role POSTed with the role-bound token of the one above, each person signed in."""
    root = make_staff_user(server, base, http, "admin", tree.root)
    region = make_staff_user(server, base, http, "admin", tree.region, creator=root)
    clinic = make_staff_user(server, base, http, "admin", tree.clinic, creator=region)
    nurse = make_staff_user(server, base, http, "nurse", tree.clinic, creator=clinic)
    return SimpleNamespace(root=root, region=region, clinic=clinic, nurse=nurse)


@pytest.fixture(scope="module")
def chain(server, base, http, tree):
    return build_chain(server, base, http, tree)


@pytest.fixture(scope="module")
def narrow_admin(server, base, http, tree, chain):
    """An admin at Clinic, created by the Region admin, narrowed to NARROW_ADMIN_GRANT."""
    return make_staff_user(server, base, http, "admin", tree.clinic, grant=NARROW_ADMIN_GRANT, creator=chain.region)


def new_role(http, base, org, template, grant=None, extensions=None) -> dict:
    return role_body(make_practitioner(http, base), org, template, grant, extensions)


def test_delegation_to_any_depth_records_each_creator(base, http, tree, chain):
    roles = {name: stored(http, base, getattr(chain, name).role_ref) for name in ("root", "region", "clinic", "nurse")}
    assert created_by(roles["root"]) == []  # the operator's role has no creator role
    assert created_by(roles["region"]) == [chain.root.role_ref]
    assert created_by(roles["clinic"]) == [chain.region.role_ref]
    assert created_by(roles["nurse"]) == [chain.clinic.role_ref]
    assert any(c.get("system") == TEMPLATE_SYSTEM and c.get("code") == "nurse"
               for cc in roles["nurse"].get("code", []) for c in cc.get("coding", [])), roles["nurse"].get("code")
    assert roles["nurse"]["organization"]["reference"] == f"Organization/{tree.clinic}"
    # Every sub-role works: the nurse three levels down reads the Clinic's records.
    s = chain.nurse.session()
    assert get(s, base, f"Patient/{tree.pt['clinic']}").status_code == 200
    assert get(s, base, f"Observation/{tree.obs['clinic']}").status_code == 200
    assert get(s, base, f"Patient/{tree.pt['other']}").status_code == 404


def test_the_server_records_the_creator_whatever_the_client_sends(base, http, tree, chain):
    spoof = [{"url": CREATED_BY_EXTENSION, "valueReference": {"reference": chain.nurse.role_ref}}]
    r = post(chain.root.session(), base, new_role(http, base, tree.region, "nurse", extensions=spoof))
    rid = created_id(r, "PractitionerRole")
    assert created_by(stored(http, base, f"PractitionerRole/{rid}")) == [chain.root.role_ref]


def test_delegation_outside_the_subtree_is_refused_and_audited(base, http, tree, chain):
    s = chain.clinic.session()
    for org in (tree.region, tree.other, tree.root):
        body = new_role(http, base, org, "nurse")
        refused_and_audited(http, base, chain.clinic.role_id, lambda: post(s, base, body))
    body = new_role(http, base, tree.root, "nurse")
    refused_and_audited(http, base, chain.region.role_id, lambda: post(chain.region.session(), base, body))


def test_delegation_beyond_the_effective_grant_is_refused_and_audited(base, http, tree, narrow_admin):
    s = narrow_admin.session()
    # Control: a role within its grant may be created.
    ok = post(s, base, new_role(http, base, tree.clinic, "nurse", grant="user/Patient.rs user/Observation.rs"))
    created_id(ok, "PractitionerRole")
    for body in (new_role(http, base, tree.clinic, "admin"),  # template grant user/*.cruds
                 new_role(http, base, tree.clinic, "admin", grant="user/*.cruds"),
                 new_role(http, base, tree.clinic, "nurse")):  # the nurse template names types it lacks
        refused_and_audited(http, base, narrow_admin.role_id, lambda: post(s, base, body))


def test_a_sub_role_cannot_touch_its_creator_or_anything_above(base, http, chain):
    """The roles above sit at organisations above the sub-role's subtree: for it they do not
    exist (an update is 404, a delete deletes nothing), and they stay as they were."""
    s = chain.clinic.session()
    for above in (chain.region, chain.root):
        before = stored(http, base, above.role_ref)
        changed = dict(with_grant(before, "user/*.cruds"), availabilityExceptions="changed by a sub-role")
        r = put(s, base, changed)
        assert r.status_code == 404, f"{above.role_ref}: {r.status_code} {r.text[:300]}"
        r = s.delete(f"{base}/{above.role_ref}")
        assert r.status_code in (200, 204) and (r.status_code == 204 or "nothing was deleted" in r.text), r.text[:300]
        assert stored(http, base, above.role_ref) == before
    # The Region admin is untouched and still works.
    assert get(chain.region.session(), base, "Patient", _count="1").status_code == 200


def test_a_role_cannot_change_itself(base, http, chain, narrow_admin):
    s = narrow_admin.session()
    me = stored(http, base, narrow_admin.role_ref)
    assert grant_extension(me) == [NARROW_ADMIN_GRANT]
    for widened in (with_grant(me, None), with_grant(me, "user/*.cruds")):
        refused_and_audited(http, base, narrow_admin.role_id, lambda: put(s, base, widened),
                            entity=narrow_admin.role_ref)
    assert stored(http, base, narrow_admin.role_ref) == me
    # Not even a harmless change, and not even for an unrestricted admin.
    clinic = stored(http, base, chain.clinic.role_ref)
    refused_and_audited(http, base, chain.clinic.role_id,
                        lambda: put(chain.clinic.session(), base, dict(clinic, availabilityExceptions="self")),
                        entity=chain.clinic.role_ref)
    refused_and_audited(http, base, chain.clinic.role_id,
                        lambda: chain.clinic.session().delete(f"{base}/{chain.clinic.role_ref}"),
                        entity=chain.clinic.role_ref)
    assert stored(http, base, chain.clinic.role_ref) == clinic


def test_a_role_without_the_delegate_right_cannot_create_roles(base, http, tree, chain):
    s = chain.nurse.session()
    body = new_role(http, base, tree.clinic, "nurse")
    refused_and_audited(http, base, chain.nurse.role_id, lambda: post(s, base, body))


def test_ancestors_manage_their_descendants_at_any_depth(base, http, tree, chain):
    # The Region admin changes the nurse its sub-role created.
    nurse = stored(http, base, chain.nurse.role_ref)
    r = put(chain.region.session(), base, dict(nurse, availabilityExceptions="Weekdays only"))
    assert r.status_code == 200, r.text[:500]
    after = stored(http, base, chain.nurse.role_ref)
    assert after["availabilityExceptions"] == "Weekdays only"
    assert created_by(after) == [chain.clinic.role_ref], "the creator must stay the one that created it"
    # The Root admin deletes a role the Clinic admin created.
    r = post(chain.clinic.session(), base, new_role(http, base, tree.clinic, "nurse"))
    rid = created_id(r, "PractitionerRole")
    r = chain.root.session().delete(f"{base}/PractitionerRole/{rid}")
    assert r.status_code in (200, 204), r.text[:500]


def test_narrowing_or_ending_a_role_reaches_every_descendant(server, base, http, tree):
    c = build_chain(server, base, http, tree)
    patient, observation = f"Patient/{tree.pt['clinic']}", f"Observation/{tree.obs['clinic']}"
    nurse, clinic, root = c.nurse.session(), c.clinic.session(), c.root.session()
    assert get(nurse, base, observation).status_code == 200
    assert get(clinic, base, observation).status_code == 200

    # The operator narrows the Root admin: three levels down, the nurse's existing token
    # loses Observation on its next request, and keeps what is still granted.
    root_role = stored(http, base, c.root.role_ref)
    r = put(http, base, with_grant(root_role, ROOT_NARROWED))
    assert r.status_code == 200, r.text[:500]
    assert get(nurse, base, observation).status_code == 403
    assert get(clinic, base, observation).status_code == 403
    assert get(root, base, observation).status_code == 403
    assert get(nurse, base, patient).status_code == 200

    # Ending the Region admin ends the Clinic admin and the nurse below it; Root is unaffected.
    region_role = stored(http, base, c.region.role_ref)
    r = put(http, base, dict(region_role, active=False))
    assert r.status_code == 200, r.text[:500]
    assert get(clinic, base, patient).status_code == 401
    assert get(nurse, base, patient).status_code == 401
    assert get(c.region.session(), base, patient).status_code == 401
    assert get(root, base, patient).status_code == 200


# ---------------------------------------------------------------- masking

@pytest.fixture(scope="module")
def desk(server, base, http, tree):
    return make_staff_user(server, base, http, "front-desk", tree.clinic)


@pytest.fixture(scope="module")
def billing(server, base, http, tree):
    return make_staff_user(server, base, http, "billing", tree.clinic)


def narrative_patient(tree) -> dict:
    """A Clinic patient with a narrative (family name outside the tree's search prefix)."""
    return {"resourceType": "Patient", "active": True,
            "text": {"status": "generated", "div": NARRATIVE},
            "name": [{"family": f"Masked{tree.tag}", "given": ["Testgiven"]}],
            "birthDate": "1980-02-02",
            "managingOrganization": {"reference": f"Organization/{tree.clinic}"}}


@pytest.fixture(scope="module")
def masked(base, http, tree):
    """A Clinic patient with a narrative; an Appointment with a comment (two versions); an
    AppointmentResponse (with a comment) to it; an Invoice without text or note; a Condition
    with a note and evidence."""
    m = SimpleNamespace()
    m.patient = create(http, base, narrative_patient(tree))["id"]
    appt = {"resourceType": "Appointment", "status": "booked", "comment": "Synthetic private comment v1",
            "start": "2030-02-01T09:00:00Z", "end": "2030-02-01T09:30:00Z",
            "participant": [{"actor": {"reference": f"Patient/{m.patient}"}, "status": "accepted"}]}
    first = create(http, base, appt)
    m.appointment, m.appointment_v1 = first["id"], first["meta"]["versionId"]
    r = put(http, base, dict(appt, id=m.appointment, comment="Synthetic private comment v2"))
    assert r.status_code == 200, r.text[:300]
    m.response = create(http, base, {
        "resourceType": "AppointmentResponse", "appointment": {"reference": f"Appointment/{m.appointment}"},
        "actor": {"reference": f"Patient/{m.patient}"}, "participantStatus": "accepted",
        "comment": "Synthetic response comment"})["id"]
    m.invoice = create(http, base, {"resourceType": "Invoice", "status": "issued",
                                    "subject": {"reference": f"Patient/{m.patient}"},
                                    "issuer": {"reference": f"Organization/{tree.clinic}"}})["id"]
    m.condition = create(http, base, {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"text": "Synthetic condition"}, "subject": {"reference": f"Patient/{m.patient}"},
        "note": [{"text": "Synthetic clinical note"}],
        "evidence": [{"code": [{"text": "Synthetic evidence"}]}]})["id"]
    return m


def test_front_desk_does_not_see_the_narrative(base, http, desk, masked):
    s = desk.session()
    r = get(s, base, f"Patient/{masked.patient}")
    assert r.status_code == 200, r.text[:300]
    p = r.json()
    assert_masked(p, ["text"])
    assert p["birthDate"] == "1980-02-02", "only the masked elements are removed"
    assert_masked(find(bundle_of(s, base, "Patient", _id=masked.patient), "Patient", masked.patient), ["text"])
    # Stored as it was: the operator sees the narrative and no marks.
    full = http.get(f"{base}/Patient/{masked.patient}").json()
    assert full["text"]["div"] == NARRATIVE
    assert_not_marked(full)


def test_front_desk_does_not_see_appointment_comments_in_any_response(base, desk, masked):
    s = desk.session()
    a, hidden = masked.appointment, ["comment"]

    r = get(s, base, f"Appointment/{a}")
    assert r.status_code == 200, r.text[:300]
    assert_masked(r.json(), hidden)
    assert r.json()["status"] == "booked"
    r = get(s, base, f"Appointment/{a}/_history/{masked.appointment_v1}")
    assert r.status_code == 200, r.text[:300]
    assert_masked(r.json(), hidden)

    assert_masked(find(bundle_of(s, base, "Appointment", _id=a), "Appointment", a), hidden)

    b = bundle_of(s, base, "AppointmentResponse", _id=masked.response, _include="AppointmentResponse:appointment")
    assert_masked(find(b, "Appointment", a), hidden)
    assert_masked(find(b, "AppointmentResponse", masked.response), hidden)

    b = bundle_of(s, base, "Patient", _id=masked.patient, _revinclude="Appointment:patient")
    assert_masked(find(b, "Appointment", a), hidden)
    assert_masked(find(b, "Patient", masked.patient), ["text"])

    history = bundle_of(s, base, f"Appointment/{a}/_history")
    versions = entries(history)
    assert len(versions) >= 2, history
    for v in versions:
        assert_masked(v, hidden)

    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Appointment/{a}"}},
        {"request": {"method": "GET", "url": f"Patient/{masked.patient}"}},
        {"request": {"method": "GET", "url": f"Appointment?_id={a}"}}]}
    r = s.post(base, json=batch, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text[:500]
    out = r.json()
    assert out["type"] == "batch-response" and len(out["entry"]) == 3
    assert all(e["response"]["status"].startswith("200") for e in out["entry"]), out["entry"]
    assert_masked(out["entry"][0]["resource"], hidden)
    assert_masked(out["entry"][1]["resource"], ["text"])
    assert_masked(find(out["entry"][2]["resource"], "Appointment", a), hidden)


def test_front_desk_cannot_read_observations(base, tree, desk):
    assert get(desk.session(), base, f"Observation/{tree.obs['clinic']}").status_code == 403


def test_billing_sees_invoices_whole_and_conditions_without_clinical_detail(base, http, billing, masked):
    s = billing.session()
    r = get(s, base, f"Invoice/{masked.invoice}")
    assert r.status_code == 200, r.text[:300]
    assert_not_marked(r.json())  # nothing to hide, so nothing is marked
    assert r.json()["status"] == "issued"

    r = get(s, base, f"Condition/{masked.condition}")
    assert r.status_code == 200, r.text[:300]
    c = r.json()
    assert_masked(c, ["note", "evidence"])
    assert c["code"]["text"] == "Synthetic condition"
    assert_masked(find(bundle_of(s, base, "Condition", _id=masked.condition), "Condition", masked.condition),
                  ["note", "evidence"])
    full = http.get(f"{base}/Condition/{masked.condition}").json()
    assert full["note"][0]["text"] == "Synthetic clinical note" and full["evidence"]
    assert_not_marked(full)


def test_a_masked_update_keeps_what_the_role_could_not_see(base, http, tree, desk):
    s = desk.session()
    pid = create(http, base, narrative_patient(tree))["id"]
    r = get(s, base, f"Patient/{pid}")
    assert r.status_code == 200, r.text[:300]
    seen = r.json()
    assert_masked(seen, ["text"])
    # Sent back as a client would: without the marks, with a change of its own.
    r = put(s, base, dict(without_marks(seen), birthDate="1981-03-03"))
    assert r.status_code in (200, 201), r.text[:500]
    full = http.get(f"{base}/Patient/{pid}").json()
    assert full["birthDate"] == "1981-03-03", "the front desk's change is stored"
    assert full.get("text", {}).get("div") == NARRATIVE, "the narrative it could not see is kept"
    assert_not_marked(full)


def test_a_role_cannot_move_organisations_out_of_or_into_its_subtree(base, http, tree, chain):
    """The tree is data too: the Region admin may rename Clinic, but may not hang Clinic under
    Other (handing its data to Other's staff), nor move Region itself."""
    s = chain.region.session()
    clinic = stored(http, base, f"Organization/{tree.clinic}")
    r = put(s, base, dict(clinic, name=clinic["name"] + " (renamed)"))
    assert r.status_code == 200, r.text[:300]
    clinic = stored(http, base, f"Organization/{tree.clinic}")
    r = put(s, base, dict(clinic, partOf={"reference": f"Organization/{tree.other}"}))
    assert r.status_code == 403, r.text[:300]
    assert stored(http, base, f"Organization/{tree.clinic}")["partOf"]["reference"] == f"Organization/{tree.region}"
    region = stored(http, base, f"Organization/{tree.region}")
    r = put(s, base, dict(region, partOf={"reference": f"Organization/{tree.other}"}))
    assert r.status_code == 403, r.text[:300]
    assert stored(http, base, f"Organization/{tree.region}")["partOf"]["reference"] == f"Organization/{tree.root}"
    # A new organisation goes inside the subtree only.
    inside = post(s, base, {"resourceType": "Organization", "name": "New ward", "partOf": {"reference": f"Organization/{tree.clinic}"}})
    assert inside.status_code == 201, inside.text[:300]
    outside = post(s, base, {"resourceType": "Organization", "name": "Stray ward", "partOf": {"reference": f"Organization/{tree.other}"}})
    assert outside.status_code == 403, outside.text[:300]
