"""The staff authorization matrix (authz_matrix.json), walked exhaustively against the live
server: for every role template (admin, prescriber, nurse, front-desk, billing, supplier,
auditor) a person with one PractitionerRole of that template at one organisation signs in
through the SMART pages (scope `openid fhirUser user/*.cruds`, narrowed to the role's grant),
and every (resource type, interaction) cell is tried on a resource that BELONGS to the
organisation, so only the template's grant decides: allow -> 2xx, deny -> 403.

The matrix is data; test_matrix_agrees_with_role_templates checks it against
fhir-profiles/role-templates.json (no server needed). Synthetic data only."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from hierarchy_support import (
    Refs,
    Staff,
    created_id,
    entries,
    make_org,
    make_practitioner,
    make_role,
    make_staff_user,
    post,
    put,
    refusal_audits,
    resource_body,
    session_for,
    stored,
)
from support import create

HERE = Path(__file__).resolve().parent
MATRIX = json.loads((HERE / "authz_matrix.json").read_text())
ROLE_TEMPLATES = json.loads((HERE.parent / "fhir-profiles" / "role-templates.json").read_text())
LETTERS = "cruds"
# Cells run read and search first, then the writes, so a failure list reads naturally.
ORDER = "rscud"


def allowed_letters(template: str, resource_type: str) -> str:
    return MATRIX["matrix"][template][resource_type].replace("-", "")


def matrix_cells():
    for template in MATRIX["templates"]:
        for resource_type in MATRIX["types"]:
            skipped = MATRIX["not_in_matrix"].get(resource_type, "")
            allowed = allowed_letters(template, resource_type)
            for letter in ORDER:
                if letter in skipped:
                    continue
                name = MATRIX["interactions"][letter]
                yield pytest.param(template, resource_type, letter, letter in allowed,
                                   id=f"{template}-{resource_type}-{name}-{'allow' if letter in allowed else 'deny'}")


CELLS = list(matrix_cells())


# ---------------------------------------------------------------- the matrix as data

def grant_letters(grant: str, resource_type: str) -> set[str]:
    """The c/r/u/d/s letters a template grant gives `user/` tokens on a type (v2 scopes)."""
    letters: set[str] = set()
    for scope in grant.split():
        context, _, rest = scope.partition("/")
        if context != "user" or "." not in rest:
            continue
        rt, perms = rest.split(".", 1)
        if rt in ("*", resource_type):
            letters |= set(perms) & set(LETTERS)
    return letters


def test_matrix_is_complete_and_well_formed():
    assert set(MATRIX["interactions"]) == set(LETTERS)
    assert len(set(MATRIX["types"])) == len(MATRIX["types"])
    assert set(MATRIX["matrix"]) == set(MATRIX["templates"])
    for template, row in MATRIX["matrix"].items():
        assert set(row) == set(MATRIX["types"]), f"{template} does not list exactly the matrix types"
        for resource_type, letters in row.items():
            if letters == "-":
                continue
            assert letters, f"{template}/{resource_type}: use '-' for no interaction"
            assert all(c in LETTERS for c in letters), f"{template}/{resource_type}: {letters!r}"
            assert "".join(c for c in LETTERS if c in letters) == letters, (
                f"{template}/{resource_type}: {letters!r} not in c r u d s order")
            assert not set(letters) & set(MATRIX["not_in_matrix"].get(resource_type, "")), (
                f"{template}/{resource_type}: lists interactions that are out of the matrix")
    skipped = sum(len(MATRIX["not_in_matrix"].get(t, "")) for t in MATRIX["types"])
    assert len(CELLS) == len(MATRIX["templates"]) * (len(MATRIX["types"]) * len(LETTERS) - skipped)


def test_matrix_agrees_with_role_templates():
    """Hand-written matrix vs the templates file: a cell is allowed exactly when the template's
    grant gives the letter, except that writing PractitionerRoles also needs the delegate right."""
    assert ROLE_TEMPLATES["system"] == "https://ironfhir.dev/fhir/CodeSystem/role-template"
    templates = ROLE_TEMPLATES["templates"]
    assert set(MATRIX["templates"]) <= set(templates)
    assert set(templates) - set(MATRIX["templates"]) == {"patient"}, "a staff template is missing from the matrix"
    mismatches = []
    for template in MATRIX["templates"]:
        t = templates[template]
        for resource_type in MATRIX["types"]:
            expected = grant_letters(t["grant"], resource_type)
            if resource_type == "PractitionerRole" and not t.get("delegate"):
                expected -= set("cud")
            expected -= set(MATRIX["not_in_matrix"].get(resource_type, ""))
            got = set(allowed_letters(template, resource_type))
            if got != expected:
                mismatches.append(f"{template}/{resource_type}: matrix {''.join(sorted(got))!r}, "
                                  f"templates {''.join(sorted(expected))!r}")
    assert not mismatches, "\n".join(mismatches)


# ---------------------------------------------------------------- the live walk

class MatrixWorld:
    """One organisation and, for every type, a resource that belongs to it (operator-created);
    staff of each template signed in lazily; fresh targets for updates and deletes."""

    def __init__(self, server, base, http):
        self.server, self.base, self.http = server, base, http
        tag = secrets.token_hex(4)
        self.org = make_org(http, base, f"Matrix Clinic {tag}")
        self.practitioner = make_practitioner(http, base)
        # The organisation's own role (not anyone's login): what Schedules, Tasks, ... point at.
        self.role = make_role(http, base, self.practitioner, self.org, "nurse")
        patient = create(http, base, resource_body("Patient", Refs(self.org, "", self.role)))["id"]
        schedule = create(http, base, resource_body("Schedule", Refs(self.org, patient, self.role)))["id"]
        self.refs = Refs(self.org, patient, self.role, schedule)
        self.fixtures = {"Organization": self.org, "Practitioner": self.practitioner, "PractitionerRole": self.role,
                         "Patient": patient, "Schedule": schedule}
        self.staff: dict[str, Staff] = {}

    def token(self, template: str) -> str:
        if template not in self.staff:
            self.staff[template] = make_staff_user(self.server, self.base, self.http, template, self.org)
        return self.staff[template].token

    def body(self, resource_type: str) -> dict:
        """A new resource that belongs to the organisation."""
        extra = {}
        if resource_type == "PractitionerRole":
            extra = {"practitioner": make_practitioner(self.http, self.base), "template": "nurse"}
        return resource_body(resource_type, self.refs, **extra)

    def fixture(self, resource_type: str) -> str:
        """The shared resource the read and search cells look at."""
        if resource_type not in self.fixtures:
            if resource_type == "AuditEvent":
                self.fixtures[resource_type] = self.audit_event()
            else:
                self.fixtures[resource_type] = create(self.http, self.base, self.body(resource_type))["id"]
        return self.fixtures[resource_type]

    def audit_event(self) -> str:
        """An AuditEvent of the organisation (agent = its PractitionerRole). Writes to AuditEvent
        are out of the matrix's scope: when the server refuses the operator's POST, one is
        provoked instead (a nurse of the organisation trying to create a PractitionerRole)."""
        r = post(self.http, self.base, self.body("AuditEvent"))
        if r.status_code == 201:
            return created_id(r, "AuditEvent")
        nurse = self.staff.get("nurse") or self.staff.setdefault(
            "nurse", make_staff_user(self.server, self.base, self.http, "nurse", self.org))
        refused = post(session_for(nurse.token), self.base, self.body("PractitionerRole"))
        assert refused.status_code == 403, refused.text
        deadline = time.monotonic() + 5
        while not (events := refusal_audits(self.http, self.base, nurse.role_id)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert events, "operator POST AuditEvent refused and no AuditEvent recorded for a refused action"
        return events[0]["id"]

    def fresh(self, resource_type: str) -> dict:
        """A new operator-created resource of the organisation (as stored, without meta), for
        one update or delete cell."""
        if resource_type == "Practitioner":
            # A Practitioner belongs through a PractitionerRole of the organisation naming it.
            pid = make_practitioner(self.http, self.base)
            make_role(self.http, self.base, pid, self.org, "nurse")
            return stored(self.http, self.base, f"Practitioner/{pid}")
        created = create(self.http, self.base, self.body(resource_type))
        created.pop("meta", None)
        return created

    def target(self, template: str, resource_type: str, allowed: bool) -> dict:
        """What an update/delete cell acts on. A role may only change the PractitionerRoles it
        created: when the template may write them, its own token creates the target first."""
        if resource_type == "PractitionerRole" and allowed:
            r = post(session_for(self.token(template)), self.base, self.body("PractitionerRole"))
            return stored(self.http, self.base, f"PractitionerRole/{created_id(r, 'PractitionerRole')}")
        return self.fresh(resource_type)


@pytest.fixture(scope="module")
def world(server, base, http):
    return MatrixWorld(server, base, http)


def expect(resp, allowed: bool, ok: tuple, what: str):
    want = ok if allowed else (403,)
    assert resp.status_code in want, (
        f"{what}: expected {'/'.join(map(str, want))} ({'allow' if allowed else 'deny'}), "
        f"got {resp.status_code}: {resp.text[:400]}")


@pytest.mark.parametrize("template,resource_type,letter,allowed", CELLS)
def test_matrix_cell(world, base, http, template, resource_type, letter, allowed):
    s = session_for(world.token(template))
    what = f"{template} {MATRIX['interactions'][letter]} {resource_type}"
    if letter == "r":
        rid = world.fixture(resource_type)
        r = s.get(f"{base}/{resource_type}/{rid}")
        expect(r, allowed, (200,), what)
        if allowed:
            assert r.json()["id"] == rid
    elif letter == "s":
        rid = world.fixture(resource_type)
        r = s.get(f"{base}/{resource_type}", params={"_id": rid})
        expect(r, allowed, (200,), what)
        if allowed:
            bundle = r.json()
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
            found = [(e["resourceType"], e["id"]) for e in entries(bundle)]
            assert (resource_type, rid) in found, f"{what}: fixture {rid} not in the results {found}"
    elif letter == "c":
        r = post(s, base, world.body(resource_type))
        expect(r, allowed, (201,), what)
    elif letter == "u":
        before = world.target(template, resource_type, allowed)
        rid = before["id"]
        changed = dict(before, language="en")
        r = put(s, base, changed)
        expect(r, allowed, (200, 201), what)
        after = stored(http, base, f"{resource_type}/{rid}")
        if allowed:
            assert after.get("language") == "en", f"{what}: the update was not stored"
        else:
            assert "language" not in after, f"{what}: refused, yet the resource changed"
    elif letter == "d":
        rid = world.target(template, resource_type, allowed)["id"]
        r = s.delete(f"{base}/{resource_type}/{rid}")
        expect(r, allowed, (200, 204), what)
        after = http.get(f"{base}/{resource_type}/{rid}")
        if allowed:
            assert after.status_code in (404, 410), f"{what}: still readable after delete ({after.status_code})"
        else:
            assert after.status_code == 200, f"{what}: refused, yet the resource is gone ({after.status_code})"
    else:  # pragma: no cover
        raise AssertionError(letter)
