"""SMART App Launch 2.0 authorization server, from the outside: discovery, the authorization
code flow with PKCE through the server-rendered pages, refresh-token rotation and reuse
detection, revocation and introspection, two roles of one person side by side, and what a
patient-scoped token can NOT see. Synthetic data only."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
import requests

from smart_flow import GRANT_EXTENSION, Flow, register_client, register_user

REDIRECT = "http://127.0.0.1:9/callback"
APP = "smart-test-app"
PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def world(server, http, base):
    """Two organisations' worth of synthetic data: a practitioner with two roles, two patients
    with observations, a patient user, and a public SMART app."""
    tag = secrets.token_hex(4)

    def put(resource):
        r = http.put(f"{base}/{resource['resourceType']}/{resource['id']}", json=resource,
                     headers={"Content-Type": "application/fhir+json"})
        assert r.status_code in (200, 201), r.text
        return resource

    org = put({"resourceType": "Organization", "id": f"org-{tag}", "name": "Synthetic Clinic"})
    doc = put({"resourceType": "Practitioner", "id": f"doc-{tag}", "name": [{"family": "Testdoc"}]})
    reader = put({"resourceType": "PractitionerRole", "id": f"reader-{tag}", "active": True,
                  "practitioner": {"reference": f"Practitioner/{doc['id']}"},
                  "organization": {"reference": f"Organization/{org['id']}"},
                  "code": [{"text": "nurse"}],
                  "extension": [{"url": GRANT_EXTENSION, "valueString": "user/*.rs"}]})
    narrow = put({"resourceType": "PractitionerRole", "id": f"front-{tag}", "active": True,
                  "practitioner": {"reference": f"Practitioner/{doc['id']}"},
                  "organization": {"reference": f"Organization/{org['id']}"},
                  "code": [{"text": "front desk"}],
                  "extension": [{"url": GRANT_EXTENSION, "valueString": "user/Patient.rs"}]})
    pa = put({"resourceType": "Patient", "id": f"pa-{tag}", "name": [{"family": "Alphatest", "given": ["Ann"]}],
              "managingOrganization": {"reference": f"Organization/{org['id']}"}})
    pb = put({"resourceType": "Patient", "id": f"pb-{tag}", "name": [{"family": "Betatest", "given": ["Bob"]}]})
    obs = {}
    for p in (pa, pb):
        obs[p["id"]] = put({"resourceType": "Observation", "id": f"obs-{p['id']}", "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                            "subject": {"reference": f"Patient/{p['id']}"},
                            "performer": [{"reference": f"Practitioner/{doc['id']}"}]})
    register_client(server, APP, "launch launch/patient openid fhirUser offline_access patient/*.rs user/*.rs",
                    redirect_uris=[REDIRECT])
    register_user(server, f"doc-{tag}", PASSWORD, f"Practitioner/{doc['id']}")
    register_user(server, f"pat-{tag}", PASSWORD, f"Patient/{pa['id']}")
    return {"tag": tag, "doc": doc, "reader": reader, "narrow": narrow, "pa": pa, "pb": pb, "obs": obs,
            "doc_user": f"doc-{tag}", "pat_user": f"pat-{tag}"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_discovery_document(base):
    r = requests.get(base + "/.well-known/smart-configuration", timeout=30)
    assert r.status_code == 200
    c = r.json()
    for key in ("authorization_endpoint", "token_endpoint", "introspection_endpoint", "revocation_endpoint",
                "jwks_uri", "grant_types_supported", "capabilities", "scopes_supported"):
        assert key in c, key
    assert c["code_challenge_methods_supported"] == ["S256"]
    assert "private_key_jwt" in c["token_endpoint_auth_methods_supported"]
    for cap in ("launch-ehr", "launch-standalone", "client-public", "client-confidential-asymmetric",
                "context-ehr-patient", "context-standalone-patient", "permission-v2", "permission-v1",
                "sso-openid-connect", "authorize-post"):
        assert cap in c["capabilities"], cap
    jwks = requests.get(c["jwks_uri"], timeout=30).json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])


def test_capability_statement_names_the_oauth_endpoints(base, anon):
    cs = anon.get(base + "/metadata", headers={"Accept": "application/fhir+json"}).json()
    security = cs["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"].endswith("/auth/token") and uris["authorize"].endswith("/auth/authorize")


def test_staff_login_role_picker_and_two_roles_side_by_side(base, world):
    flow = Flow(base)
    scope = "openid fhirUser offline_access user/*.rs"
    t1 = flow.login_tokens(APP, REDIRECT, scope, username=world["doc_user"], password=PASSWORD,
                           role=f"PractitionerRole/{world['reader']['id']}")
    assert flow.pages == ["login", "role-picker", "consent"]
    assert t1["token_type"] == "Bearer" and t1["expires_in"] > 0 and "refresh_token" in t1
    assert "user/*.rs" in t1["scope"].split()
    id_claims = jwt_claims(t1["id_token"])
    assert id_claims["fhirUser"].endswith(f"Practitioner/{world['doc']['id']}")
    assert id_claims["aud"] in (APP, [APP])

    # Same browser, second role: no second login (one sign-in session).
    t2 = flow.login_tokens(APP, REDIRECT, scope, role=f"PractitionerRole/{world['narrow']['id']}")
    assert flow.pages == ["role-picker", "consent"]
    # The front-desk role grants Patient only: its token cannot read observations.
    assert t2["scope"].split().count("user/Patient.rs") == 1 and "user/*.rs" not in t2["scope"].split()
    obs_id = world["obs"][world["pa"]["id"]]["id"]
    assert requests.get(f"{base}/Observation/{obs_id}", headers=bearer(t1["access_token"]), timeout=30).status_code == 200
    assert requests.get(f"{base}/Observation/{obs_id}", headers=bearer(t2["access_token"]), timeout=30).status_code == 403
    assert requests.get(f"{base}/Patient/{world['pa']['id']}", headers=bearer(t2["access_token"]), timeout=30).status_code == 200

    # Revoking one token leaves the other working.
    cfg = flow.config
    r = requests.post(cfg["revocation_endpoint"], data={"token": t2["access_token"], "client_id": APP}, timeout=30)
    assert r.status_code == 200
    assert requests.get(f"{base}/Patient/{world['pa']['id']}", headers=bearer(t2["access_token"]), timeout=30).status_code == 401
    assert requests.get(f"{base}/Observation/{obs_id}", headers=bearer(t1["access_token"]), timeout=30).status_code == 200
    assert jwt_claims(t1["access_token"])["role"] == f"PractitionerRole/{world['reader']['id']}"


def test_refresh_rotation_and_reuse_revokes_the_family(base, world):
    flow = Flow(base)
    t = flow.login_tokens(APP, REDIRECT, "offline_access user/*.rs", username=world["doc_user"], password=PASSWORD,
                          role=f"PractitionerRole/{world['reader']['id']}")
    token_url = flow.config["token_endpoint"]
    r1 = requests.post(token_url, data={"grant_type": "refresh_token", "refresh_token": t["refresh_token"],
                                        "client_id": APP}, timeout=30)
    assert r1.status_code == 200, r1.text
    new = r1.json()
    assert new["refresh_token"] != t["refresh_token"]
    assert requests.get(f"{base}/Patient/{world['pa']['id']}", headers=bearer(new["access_token"]), timeout=30).status_code == 200
    # The old refresh token again: reuse → invalid_grant, and the whole family is revoked.
    r2 = requests.post(token_url, data={"grant_type": "refresh_token", "refresh_token": t["refresh_token"],
                                        "client_id": APP}, timeout=30)
    assert r2.status_code == 400 and r2.json()["error"] == "invalid_grant"
    r3 = requests.post(token_url, data={"grant_type": "refresh_token", "refresh_token": new["refresh_token"],
                                        "client_id": APP}, timeout=30)
    assert r3.status_code == 400 and r3.json()["error"] == "invalid_grant"
    assert requests.get(f"{base}/Patient/{world['pa']['id']}", headers=bearer(new["access_token"]), timeout=30).status_code == 401


def test_code_replay_pkce_mismatch_and_redirect_mismatch(base, world):
    flow = Flow(base)
    scope = "user/*.rs"
    role = f"PractitionerRole/{world['reader']['id']}"
    res = flow.authorize(APP, REDIRECT, scope, username=world["doc_user"], password=PASSWORD, role=role)
    wrong = flow.exchange(APP, REDIRECT, res, code_verifier="x" * 43)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # The code is spent by the failed attempt too.
    assert flow.exchange(APP, REDIRECT, res).json()["error"] == "invalid_grant"

    res = flow.authorize(APP, REDIRECT, scope, role=role)
    assert flow.exchange(APP, REDIRECT + "/other", res).json()["error"] == "invalid_grant"

    res = flow.authorize(APP, REDIRECT, scope, role=role)
    ok = flow.exchange(APP, REDIRECT, res)
    assert ok.status_code == 200
    replay = flow.exchange(APP, REDIRECT, res)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # Replaying the code revokes what it issued.
    assert requests.get(f"{base}/Patient/{world['pa']['id']}", headers=bearer(ok.json()["access_token"]),
                        timeout=30).status_code == 401


def test_authorize_refuses_bad_requests(base, world):
    flow = Flow(base)
    ep = flow.config["authorization_endpoint"]
    # Unregistered redirect URI: an error page, never a redirect.
    r = requests.get(ep, params={"response_type": "code", "client_id": APP, "redirect_uri": "https://evil.example/cb",
                                 "scope": "user/*.rs", "state": "s", "aud": base, "code_challenge": "a" * 43,
                                 "code_challenge_method": "S256"}, allow_redirects=False, timeout=30)
    assert r.status_code == 400 and "Location" not in r.headers
    # No PKCE: redirected back with invalid_request.
    r = requests.get(ep, params={"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT,
                                 "scope": "user/*.rs", "state": "s", "aud": base}, allow_redirects=False, timeout=30)
    assert r.status_code in (302, 303) and "error=invalid_request" in r.headers["Location"]
    # plain PKCE is not accepted.
    r = requests.get(ep, params={"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT,
                                 "scope": "user/*.rs", "state": "s", "aud": base, "code_challenge": "a" * 43,
                                 "code_challenge_method": "plain"}, allow_redirects=False, timeout=30)
    assert "error=invalid_request" in r.headers["Location"]
    # Wrong audience.
    r = requests.get(ep, params={"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT,
                                 "scope": "user/*.rs", "state": "s", "aud": "https://other.example/fhir",
                                 "code_challenge": "a" * 43, "code_challenge_method": "S256"},
                     allow_redirects=False, timeout=30)
    assert "error=invalid_request" in r.headers["Location"]


def test_wrong_password_is_refused_and_csrf_is_checked(base, world):
    flow = Flow(base)
    res = flow.authorize(APP, REDIRECT, "user/*.rs", username=world["doc_user"], password="not-the-password")
    assert "login_failed" in res and "not correct" in res["login_failed"]
    # A form post without the browser's CSRF cookie is refused.
    ep = flow.config["authorization_endpoint"]
    page = flow.session.get(ep, params={"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT,
                                        "scope": "user/*.rs", "state": "s", "aud": base,
                                        "code_challenge": "a" * 43, "code_challenge_method": "S256"}, timeout=30).text
    from smart_flow import form_fields
    fields = form_fields(page, "login") | {"username": world["doc_user"], "password": PASSWORD}
    r = requests.post(ep, data=fields, allow_redirects=False, timeout=30)  # no cookies
    assert r.status_code == 403


def test_patient_token_sees_only_its_own_compartment(base, world, http):
    flow = Flow(base)
    t = flow.login_tokens(APP, REDIRECT, "launch/patient openid fhirUser patient/*.rs",
                          username=world["pat_user"], password=PASSWORD)
    assert flow.pages == ["login", "consent"]
    pa, pb = world["pa"]["id"], world["pb"]["id"]
    assert t["patient"] == pa
    h = bearer(t["access_token"])
    get = lambda path: requests.get(f"{base}/{path}", headers=h, timeout=30)
    assert get(f"Patient/{pa}").status_code == 200
    assert get(f"Patient/{pb}").status_code in (403, 404)
    assert get(f"Observation/obs-{pb}").status_code in (403, 404)
    assert get(f"Observation/obs-{pa}").status_code == 200
    # Search, totals, chains and _has never reveal the other patient.
    bundle = get("Observation?_total=accurate").json()
    ids = {e["resource"]["id"] for e in bundle.get("entry", [])}
    assert ids == {f"obs-{pa}"} and bundle["total"] == 1
    bundle = get(f"Observation?subject=Patient/{pb}&_total=accurate").json()
    assert bundle.get("entry", []) == [] and bundle["total"] == 0
    bundle = get("Observation?subject:Patient.name=Betatest&_total=accurate").json()
    assert bundle["total"] == 0
    bundle = get("Patient?_has:Observation:subject:code=8867-4&_total=accurate").json()
    assert {e["resource"]["id"] for e in bundle.get("entry", [])} == {pa}
    bundle = get("Patient?_total=accurate").json()
    assert bundle["total"] == 1
    # _revinclude does not drag in other patients' resources.
    bundle = get(f"Patient?_id={pa},{pb}&_revinclude=Observation:subject").json()
    assert {e["resource"]["id"] for e in bundle.get("entry", [])} == {pa, f"obs-{pa}"}
    # History of another patient's resource, type history, and writes outside the compartment.
    assert get(f"Observation/obs-{pb}/_history").status_code in (403, 404)
    assert get("Observation/_history").status_code == 403
    # The Practitioner is outside the Patient compartment but in the directory: patient/ scopes
    # read it (to find care) without the staff's private elements, and never write it.
    r = get(f"Practitioner/{world['doc']['id']}")
    assert r.status_code == 200, r.text[:300]
    assert not {"identifier", "birthDate", "address"} & set(r.json()), r.text[:300]
    r = requests.put(f"{base}/Practitioner/{world['doc']['id']}", headers=h | {"Content-Type": "application/fhir+json"},
                     json=r.json(), timeout=30)
    assert r.status_code == 403
    # A patient/ read-only token cannot write.
    r = requests.post(f"{base}/Observation", headers=h | {"Content-Type": "application/fhir+json"},
                      json={"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                            "subject": {"reference": f"Patient/{pa}"}}, timeout=30)
    assert r.status_code == 403
    # $everything of the other patient is refused; of its own works.
    assert get(f"Patient/{pb}/$everything").status_code in (403, 404)
    ev = get(f"Patient/{pa}/$everything").json()
    assert {e["resource"]["id"] for e in ev.get("entry", [])} >= {pa, f"obs-{pa}"}
    assert all(e["resource"]["id"] != f"obs-{pb}" for e in ev.get("entry", []))


def test_patient_user_cannot_choose_another_patient_by_launch(base, world, server):
    # A minted EHR launch for patient B cannot be used by patient A's account.
    launch = requests.post(base.replace("/fhir", "") + "/auth/launch", json={"patient": world["pb"]["id"]},
                           headers={"Authorization": f"Bearer {server.token('system/*.*')}"}, timeout=30)
    assert launch.status_code == 200, launch.text
    flow = Flow(base)
    res = flow.authorize(APP, REDIRECT, "launch patient/*.rs", username=world["pat_user"], password=PASSWORD,
                         launch=launch.json()["launch"])
    assert res.get("error") == "access_denied"


def test_ehr_launch_carries_the_patient_context(base, world, server):
    launch = requests.post(base.replace("/fhir", "") + "/auth/launch", json={"patient": world["pa"]["id"]},
                           headers={"Authorization": f"Bearer {server.token('system/*.*')}"}, timeout=30).json()["launch"]
    flow = Flow(base)
    t = flow.login_tokens(APP, REDIRECT, "launch openid fhirUser patient/*.rs", username=world["doc_user"],
                          password=PASSWORD, role=f"PractitionerRole/{world['reader']['id']}", launch=launch)
    assert t["patient"] == world["pa"]["id"] and t["need_patient_banner"] is True
    h = bearer(t["access_token"])
    assert requests.get(f"{base}/Observation/obs-{world['pa']['id']}", headers=h, timeout=30).status_code == 200
    assert requests.get(f"{base}/Observation/obs-{world['pb']['id']}", headers=h, timeout=30).status_code in (403, 404)


def test_introspection(base, world):
    flow = Flow(base)
    t = flow.login_tokens(APP, REDIRECT, "user/*.rs", username=world["doc_user"], password=PASSWORD,
                          role=f"PractitionerRole/{world['reader']['id']}")
    ep = flow.config["introspection_endpoint"]
    r = requests.post(ep, data={"token": t["access_token"]}, headers={"Authorization": f"Bearer {t['access_token']}"},
                      timeout=30)
    assert r.status_code == 200 and r.json()["active"] is True and r.json()["client_id"] == APP
    r = requests.post(ep, data={"token": "garbage"}, headers={"Authorization": f"Bearer {t['access_token']}"}, timeout=30)
    assert r.json() == {"active": False}
    # Without any authentication introspection is refused.
    assert requests.post(ep, data={"token": t["access_token"]}, timeout=30).status_code == 401


def test_cors_preflight_on_fhir_and_token_endpoints(base):
    cfg = Flow(base).config
    for url in (base + "/Patient", cfg["token_endpoint"]):
        r = requests.options(url, headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "authorization,content-type"}, timeout=30)
        assert r.status_code in (200, 204)
        assert r.headers.get("Access-Control-Allow-Origin") in ("*", "http://app.example")


def test_lockout_after_repeated_failures(base, world, server):
    user = f"locky-{world['tag']}"
    register_user(server, user, PASSWORD, f"Practitioner/{world['doc']['id']}")
    for _ in range(5):
        res = Flow(base).authorize(APP, REDIRECT, "user/*.rs", username=user, password="wrong-password")
        assert "login_failed" in res
    res = Flow(base).authorize(APP, REDIRECT, "user/*.rs", username=user, password=PASSWORD)
    assert "login_failed" in res and "locked" in res["login_failed"]


def totp_now(secret_b32: str, offset: int = 0) -> str:
    """RFC 6238 (SHA-1, 6 digits, 30 s), computed independently of the server."""
    import hashlib
    import hmac
    import struct
    import time

    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    counter = int(time.time()) // 30 + offset
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    start = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[start:start + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def start_sign_in(base):
    """A new browser at the sign-in page of a patient/*.rs authorization: (flow, authorization
    endpoint, the login form's hidden fields)."""
    from smart_flow import form_fields, pkce_pair

    flow = Flow(base)
    ep = flow.config["authorization_endpoint"]
    _, challenge = pkce_pair()
    page = flow.session.get(ep, params={"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT,
                                        "scope": "patient/*.rs", "state": "s", "aud": base,
                                        "code_challenge": challenge, "code_challenge_method": "S256"}, timeout=30).text
    return flow, ep, form_fields(page, "login")


def test_totp_second_factor_is_required_when_enrolled(base, world, server):
    user = f"totp-{world['tag']}"
    enrolled = register_user(server, user, PASSWORD, f"Patient/{world['pa']['id']}", totp=True)
    assert enrolled["require_totp"] is True and enrolled["totp_uri"].startswith("otpauth://totp/")
    flow, ep, fields = start_sign_in(base)
    fields = fields | {"username": user, "password": PASSWORD}
    # The right password alone is not enough: the page asks for the one-time code.
    r = flow.session.post(ep, data=fields, allow_redirects=False, timeout=30)
    assert r.status_code == 200 and 'name="otp"' in r.text and '<form id="consent"' not in r.text
    # A wrong code is refused.
    r = flow.session.post(ep, data=fields | {"otp": "000000" if totp_now(enrolled["totp_secret"]) != "000000" else "111111"},
                          allow_redirects=False, timeout=30)
    assert '<form id="consent"' not in r.text
    # The current code lets the person in.
    r = flow.session.post(ep, data=fields | {"otp": totp_now(enrolled["totp_secret"])}, allow_redirects=False, timeout=30)
    assert '<form id="consent"' in r.text, r.text[:500]


def test_a_totp_code_is_good_once_and_the_secret_is_not_stored_in_the_clear(base, world, server):
    """RFC 6238 §5.2: a verifier must not accept a second attempt of the same OTP after a
    successful validation. The secret itself is sealed at rest like PHI."""
    import subprocess

    user = f"totp-once-{world['tag']}"
    enrolled = register_user(server, user, PASSWORD, f"Patient/{world['pa']['id']}", totp=True)

    def sign_in(code):
        flow, ep, fields = start_sign_in(base)
        fields = fields | {"username": user, "password": PASSWORD, "otp": code}
        return flow.session.post(ep, data=fields, allow_redirects=False, timeout=30)

    code = totp_now(enrolled["totp_secret"])
    assert '<form id="consent"' in sign_in(code).text
    replayed = sign_in(code)
    assert '<form id="consent"' not in replayed.text, "the same one-time code let a second sign-in through"
    row = subprocess.run(
        ["psql", "-X", "-At", "-d", server.env["DATABASE_URL"], "-c",
         f"SELECT coalesce(totp_secret, ''), length(totp_sealed) FROM app_user WHERE username = '{user}'"],
        capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    plain, sealed_length = row.split("|")
    assert plain == "" and int(sealed_length) > 28, row
    dump = subprocess.run(["psql", "-X", "-At", "-d", server.env["DATABASE_URL"], "-c", "SELECT * FROM app_user"],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    assert enrolled["totp_secret"] not in dump


def test_logout_ends_the_sign_in_session(base, world):
    flow = Flow(base)
    role = f"PractitionerRole/{world['reader']['id']}"
    flow.login_tokens(APP, REDIRECT, "user/*.rs", username=world["doc_user"], password=PASSWORD, role=role)
    # Still signed in: no login page the second time.
    flow.login_tokens(APP, REDIRECT, "user/*.rs", role=role)
    assert "login" not in flow.pages
    logout = flow.config["authorization_endpoint"].replace("/authorize", "/logout")
    assert flow.session.post(logout, timeout=30).status_code == 200
    flow.login_tokens(APP, REDIRECT, "user/*.rs", username=world["doc_user"], password=PASSWORD, role=role)
    assert flow.pages[0] == "login"


def test_narrowing_or_ending_a_role_takes_effect_on_existing_tokens(base, world, http):
    tag = world["tag"]
    role = {"resourceType": "PractitionerRole", "id": f"temp-{tag}", "active": True,
            "practitioner": {"reference": f"Practitioner/{world['doc']['id']}"},
            "organization": {"reference": f"Organization/org-{tag}"},
            "code": [{"text": "locum"}],
            "extension": [{"url": GRANT_EXTENSION, "valueString": "user/*.rs"}]}
    put = lambda r: http.put(f"{base}/PractitionerRole/{r['id']}", json=r, headers={"Content-Type": "application/fhir+json"})
    assert put(role).status_code in (200, 201)
    flow = Flow(base)
    t = flow.login_tokens(APP, REDIRECT, "user/*.rs", username=world["doc_user"], password=PASSWORD,
                          role=f"PractitionerRole/{role['id']}")
    h = bearer(t["access_token"])
    obs = f"{base}/Observation/obs-{world['pa']['id']}"
    assert requests.get(obs, headers=h, timeout=30).status_code == 200
    # Narrowed to Patient only: the same token can no longer read observations.
    role["extension"][0]["valueString"] = "user/Patient.rs"
    assert put(role).status_code == 200
    assert requests.get(obs, headers=h, timeout=30).status_code == 403
    assert requests.get(f"{base}/Patient/{world['pa']['id']}", headers=h, timeout=30).status_code == 200
    # Ended: the token stops working.
    role["active"] = False
    assert put(role).status_code == 200
    assert requests.get(f"{base}/Patient/{world['pa']['id']}", headers=h, timeout=30).status_code == 401


def test_granular_scopes_confine_reads_and_searches_to_their_query(base, world, http):
    """SMART v2 granular scope `patient/Observation.rs?category=laboratory`: the patient's
    laboratory Observations are visible, the vital signs of the same patient are not — not by
    read, search, total, _revinclude or history — and the scope allows no writes."""
    tag = world["tag"]
    pa = world["pa"]["id"]
    cat = "http://terminology.hl7.org/CodeSystem/observation-category"

    def obs(oid, category):
        r = http.put(f"{base}/Observation/{oid}", headers={"Content-Type": "application/fhir+json"}, json={
            "resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": cat, "code": category}]}],
            "code": {"coding": [{"system": "http://example.org/granular", "code": f"g{tag}"}]},
            "subject": {"reference": f"Patient/{pa}"}})
        assert r.status_code in (200, 201), r.text

    obs(f"lab-{tag}", "laboratory")
    obs(f"vital-{tag}", "vital-signs")
    flow = Flow(base)
    t = flow.login_tokens(APP, REDIRECT, "launch/patient openid fhirUser patient/Observation.rs?category=laboratory",
                          username=world["pat_user"], password=PASSWORD)
    assert "patient/Observation.rs?category=laboratory" in t["scope"].split(), t["scope"]
    h = bearer(t["access_token"])
    get = lambda path, **p: requests.get(f"{base}/{path}", headers=h, params=p or None, timeout=30)
    assert get(f"Observation/lab-{tag}").status_code == 200
    assert get(f"Observation/vital-{tag}").status_code == 404
    assert get(f"Observation/vital-{tag}/_history").status_code == 404
    # The operator sees both: the data is there.
    both = http.get(f"{base}/Observation", params={"code": f"http://example.org/granular|g{tag}", "_total": "accurate"}).json()
    assert both["total"] == 2
    b = get("Observation", code=f"http://example.org/granular|g{tag}", _total="accurate").json()
    assert [e["resource"]["id"] for e in b.get("entry", [])] == [f"lab-{tag}"] and b["total"] == 1
    b = get("Observation", category="vital-signs", code=f"http://example.org/granular|g{tag}", _total="accurate").json()
    assert b.get("entry", []) == [] and b["total"] == 0
    # Other types are not granted at all; writes are not granted by a granular scope.
    assert get(f"Patient/{pa}").status_code == 403
    r = requests.post(f"{base}/Observation", headers=h | {"Content-Type": "application/fhir+json"}, timeout=30,
                      json={"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                            "category": [{"coding": [{"system": cat, "code": "laboratory"}]}],
                            "subject": {"reference": f"Patient/{pa}"}})
    assert r.status_code == 403
    assert get("Observation/_history").status_code == 403


def test_admin_api_registers_clients_and_users_for_operators_only(base, server, http):
    """POST /auth/admin/clients and /auth/admin/users: what the CLI registers, over HTTP, for
    an operator token only; the user registered this way can sign in to the client."""
    tag = secrets.token_hex(4)
    origin = base.rsplit("/fhir", 1)[0]
    client = {"client_id": f"api-app-{tag}", "redirect_uris": [REDIRECT], "scope": "openid fhirUser user/*.rs",
              "public": True}
    # No token → 401; a token without system/*.c → 403; nothing registered either way.
    assert requests.post(f"{origin}/auth/admin/clients", json=client, timeout=30).status_code == 401
    reader = {"Authorization": f"Bearer {server.token('system/*.rs')}"}
    assert requests.post(f"{origin}/auth/admin/clients", json=client, headers=reader, timeout=30).status_code == 403
    op = {"Authorization": http.headers["Authorization"]}
    r = requests.post(f"{origin}/auth/admin/clients", json=client, headers=op, timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["client_id"] == client["client_id"]
    assert r.headers.get("Cache-Control") == "no-store"
    # Malformed requests are refused with an OAuth-style error.
    r = requests.post(f"{origin}/auth/admin/clients", json={"client_id": f"x-{tag}", "scope": "user/*.rs", "public": True,
                                                           "secret": "both"}, headers=op, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    # A second registration of the same client_id does not silently replace the first.
    again = requests.post(f"{origin}/auth/admin/clients", json=dict(client, redirect_uris=["https://elsewhere.example/cb"]),
                          headers=op, timeout=30)
    assert again.status_code == 409, again.text
    # Redirect URIs that would run or read instead of reaching an app, and a jwks_uri the server
    # would fetch from a file or plain http elsewhere, are refused.
    for bad in ({"redirect_uris": ["javascript:alert(1)"], "public": True},
                {"redirect_uris": ["data:text/html,x"], "public": True},
                {"redirect_uris": [REDIRECT], "jwks_uri": "file:///etc/passwd"},
                {"redirect_uris": [REDIRECT], "jwks_uri": "http://keys.example/jwks"}):
        body = {"client_id": f"bad-{secrets.token_hex(3)}", "scope": "system/*.rs", **bad}
        r = requests.post(f"{origin}/auth/admin/clients", json=body, headers=op, timeout=30)
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", (bad, r.text)

    org = http.post(f"{base}/Organization", json={"resourceType": "Organization", "name": f"API org {tag}"},
                    headers={"Content-Type": "application/fhir+json"}).json()["id"]
    doc = http.post(f"{base}/Practitioner", json={"resourceType": "Practitioner", "name": [{"family": "Apitest"}]},
                    headers={"Content-Type": "application/fhir+json"}).json()["id"]
    r = http.post(f"{base}/PractitionerRole", headers={"Content-Type": "application/fhir+json"}, json={
        "resourceType": "PractitionerRole", "active": True, "practitioner": {"reference": f"Practitioner/{doc}"},
        "organization": {"reference": f"Organization/{org}"},
        "code": [{"coding": [{"system": "https://ironfhir.dev/fhir/CodeSystem/role-template", "code": "nurse"}]}]})
    assert r.status_code == 201, r.text
    user = {"username": f"api-user-{tag}", "password": PASSWORD, "fhir_user": f"Practitioner/{doc}"}
    assert requests.post(f"{origin}/auth/admin/users", json=user, headers=reader, timeout=30).status_code == 403
    r = requests.post(f"{origin}/auth/admin/users", json=user, headers=op, timeout=30)
    assert r.status_code == 201, r.text
    assert PASSWORD not in r.text
    t = Flow(base).login_tokens(client["client_id"], REDIRECT, "openid fhirUser user/*.rs",
                                username=user["username"], password=PASSWORD)
    # The nurse template's read scopes, not user/*.rs as asked.
    granted = t["scope"].split()
    assert "user/Observation.rs" in granted and "user/*.rs" not in granted and "user/Invoice.rs" not in granted


def test_an_organisation_policy_can_require_a_second_factor(base, server, http):
    """An Organization with the require-totp extension: a staff member without an enrolled
    second factor cannot act in a role there (nor in an organisation below it); once enrolled
    (TOTP), the same person gets through."""
    tag = secrets.token_hex(4)
    ext = [{"url": "https://ironfhir.dev/fhir/StructureDefinition/require-totp", "valueBoolean": True}]
    post = lambda r: http.post(f"{base}/{r['resourceType']}", json=r, headers={"Content-Type": "application/fhir+json"})
    strict = post({"resourceType": "Organization", "name": f"Strict {tag}", "extension": ext}).json()["id"]
    ward = post({"resourceType": "Organization", "name": f"Ward {tag}", "partOf": {"reference": f"Organization/{strict}"}}).json()["id"]
    users = {}
    for kind in ("plain", "enrolled"):
        doc = post({"resourceType": "Practitioner", "name": [{"family": "Policytest"}]}).json()["id"]
        assert post({"resourceType": "PractitionerRole", "active": True, "practitioner": {"reference": f"Practitioner/{doc}"},
                     "organization": {"reference": f"Organization/{ward}"},
                     "code": [{"coding": [{"system": "https://ironfhir.dev/fhir/CodeSystem/role-template", "code": "nurse"}]}]}
                    ).status_code == 201
        users[kind] = register_user(server, f"{kind}-{tag}", PASSWORD, f"Practitioner/{doc}", totp=kind == "enrolled")
    flow = Flow(base)
    ep = flow.config["authorization_endpoint"]
    from smart_flow import form_fields, pkce_pair

    def sign_in(username, otp=None):
        _, challenge = pkce_pair()
        page = flow.session.get(ep, params={"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT,
                                            "scope": "user/*.rs", "state": "s", "aud": base,
                                            "code_challenge": challenge, "code_challenge_method": "S256"}, timeout=30).text
        fields = form_fields(page, "login") | {"username": username, "password": PASSWORD}
        if otp:
            fields["otp"] = otp
        return flow.session.post(ep, data=fields, allow_redirects=False, timeout=30)

    r = sign_in(users["plain"]["username"])
    assert r.status_code == 403 and "second sign-in factor" in r.text and '<form id="consent"' not in r.text
    flow.session.cookies.clear()
    r = sign_in(users["enrolled"]["username"], totp_now(users["enrolled"]["totp_secret"]))
    assert '<form id="consent"' in r.text, r.text[:500]


def test_a_patient_sees_who_accessed_their_own_record_and_nobody_elses(base, world, http):
    pa, pb = world["pa"]["id"], world["pb"]["id"]
    assert http.get(f"{base}/Patient/{pa}").status_code == 200
    assert http.get(f"{base}/Patient/{pb}").status_code == 200
    t = Flow(base).login_tokens(APP, REDIRECT, "launch/patient openid fhirUser patient/*.rs",
                                username=world["pat_user"], password=PASSWORD)
    r = requests.get(f"{base}/AuditEvent", params={"_count": "200", "_total": "accurate"},
                     headers=bearer(t["access_token"]), timeout=30)
    assert r.status_code == 200, r.text[:300]
    events = [e["resource"] for e in r.json().get("entry", [])]
    # Each event of somebody else's access names exactly one patient concerned (entity role
    # 1): this one. (The patient's own requests are theirs to see, whatever they named.)
    for e in events:
        if e["agent"][0].get("who", {}).get("reference") == f"Patient/{pa}":
            continue
        concerned = [x["what"]["reference"] for x in e.get("entity", []) if x.get("role", {}).get("code") == "1"]
        assert concerned == [f"Patient/{pa}"], e
    # Nobody else's access to the other patient is among them.
    assert not any(f"Patient/{pb}" in {x["what"].get("reference") for x in e.get("entity", []) if "what" in x}
                   and e["agent"][0].get("altId") == "operator" for e in events)
    # The operator's read of this record is among them, with who and when.
    assert any(e["subtype"][0]["code"] == "read" and e["agent"][0].get("altId") == "operator"
               and f"Patient/{pa}" in {x["what"].get("reference") for x in e.get("entity", [])} for e in events)
