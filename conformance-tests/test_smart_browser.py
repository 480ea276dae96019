"""SMART App Launch 2.0 standalone launch in a real browser
(https://hl7.org/fhir/smart-app-launch/app-launch.html): the static app in smart-app/ uses the
SMART JavaScript client (fhirclient 2.6.3: discovery, PKCE S256, code exchange, requests) and
smart-app/drive.mjs walks headless Chromium (playwright-core) through ironfhir's login, role
picker, patient picker and consent pages twice in one browser context, once per role.

Needs node and Debian's chromium (run.sh installs chromium and the npm packages); without them
the test fails rather than skips. Screenshots of every page go to $SMART_ARTIFACTS (default
conformance-tests/artifacts/smart-browser/)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import shutil
import subprocess
import threading
from pathlib import Path

import jwt
import pytest

from support import TimeoutSession, create, unique

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "smart-app"
CHROMIUM = os.environ.get("SMART_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SMART_ARTIFACTS", HERE / "artifacts" / "smart-browser"))
CLIENT_ID = "smart-browser-app"
SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs user/*.rs"
ROLE_GRANT = "https://ironfhir.dev/fhir/StructureDefinition/role-grant"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def app_server():
    """The static app (launch.html, index.html, node_modules/fhirclient) on 127.0.0.1."""
    bundle = APP_DIR / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
    assert bundle.is_file(), (
        f"{bundle} missing: run `npm ci --prefix {APP_DIR}` (conformance-tests/run.sh does)")
    handler = functools.partial(_QuietHandler, directory=str(APP_DIR))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_cli(server, *args: str, stdin: str | None = None) -> dict:
    """`ironfhir admin ...` with the server's config; returns the JSON it printed."""
    cmd = [str(server.binary), "admin", *args]
    out = subprocess.run(cmd, env=server.env, input=stdin, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}: {out.stderr}{out.stdout}"
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"{cmd} did not print JSON ({e}): {out.stdout!r}") from None


@pytest.fixture(scope="module")
def world(server, http, base, app_server):
    """Organization, Practitioner with two PractitionerRoles (role-grant user/*.rs), a Patient
    of the organisation with one Observation; the app registered as a public client and a user
    whose fhirUser is the Practitioner."""
    org = create(http, base, {"resourceType": "Organization", "active": True,
                              "name": unique("Testclinic")})
    pract = create(http, base, {"resourceType": "Practitioner", "active": True,
                                "name": [{"family": unique("Testdoc"), "given": ["Testgiven"]}]})
    roles = []
    for code, display in (("doctor", "Doctor"), ("researcher", "Researcher")):
        roles.append(create(http, base, {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": f"Practitioner/{pract['id']}"},
            "organization": {"reference": f"Organization/{org['id']}"},
            "code": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/practitioner-role",
                "code": code, "display": display}]}],
            "extension": [{"url": ROLE_GRANT, "valueString": "user/*.rs"}],
        }))
    pat = create(http, base, {
        "resourceType": "Patient", "active": True,
        "name": [{"use": "official", "family": unique("Testperson"), "given": ["Testgiven"]}],
        "gender": "other", "birthDate": "1980-02-29",
        "managingOrganization": {"reference": f"Organization/{org['id']}"},
    })
    obs = create(http, base, {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                             "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{pat['id']}"},
        "effectiveDateTime": "2021-03-04T05:06:07Z",
        "valueQuantity": {"value": 61, "unit": "beats/minute",
                          "system": "http://unitsofmeasure.org", "code": "/min"},
    })

    client = run_cli(server, "client", "add", "--data-dir", str(server.data_dir),
                     "--client-id", CLIENT_ID, "--redirect-uri", f"{app_server}index.html",
                     "--scope", SCOPE, "--public")
    assert CLIENT_ID in json.dumps(client), f"client add printed {client}"
    username = unique("testclinician")
    password = secrets.token_urlsafe(18)
    user = run_cli(server, "user", "add", "--data-dir", str(server.data_dir),
                   "--username", username, "--password-stdin",
                   "--fhir-user", f"Practitioner/{pract['id']}", stdin=password + "\n")
    assert username in json.dumps(user), f"user add printed {user}"
    assert password not in json.dumps(user), "user add echoed the password"
    return {"org": org, "practitioner": pract, "roles": roles, "patient": pat,
            "observation": obs, "username": username, "password": password,
            "app": app_server}


@pytest.fixture(scope="module")
def smart_config(base, anon):
    r = anon.get(f"{base}/.well-known/smart-configuration", headers={"Accept": "application/json"})
    assert r.status_code == 200, (
        f"GET {base}/.well-known/smart-configuration: {r.status_code} {r.text[:300]}")
    return r.json()


@pytest.fixture(scope="module")
def drive(server, world, base, smart_config):
    """Runs smart-app/drive.mjs once; its JSON summary."""
    node = shutil.which("node")
    assert node, "node not found (CI installs it; see conformance-tests/run.sh)"
    assert Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} missing: apt-get install chromium (conformance-tests/run.sh does as root)")
    assert (APP_DIR / "node_modules" / "playwright-core").is_dir(), (
        f"playwright-core missing: npm ci --prefix {APP_DIR}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    env = dict(os.environ)
    env.update({
        "SMART_APP_URL": world["app"],
        "SMART_ISS": base,
        "SMART_CLIENT_ID": CLIENT_ID,
        "SMART_SCOPE": SCOPE,
        "SMART_USERNAME": world["username"],
        "SMART_PASSWORD": world["password"],
        "SMART_ROLES": ",".join(f"PractitionerRole/{r['id']}" for r in world["roles"]),
        "SMART_PATIENT": world["patient"]["id"],
        "SMART_ARTIFACTS": str(ARTIFACTS),
        "SMART_CHROMIUM": CHROMIUM,
    })
    out = subprocess.run([node, str(APP_DIR / "drive.mjs")], env=env, capture_output=True,
                         text=True, timeout=600, cwd=APP_DIR)
    try:
        summary = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"drive.mjs exited {out.returncode} without a JSON summary:\n"
                             f"stdout: {out.stdout[-3000:]}\nstderr: {out.stderr[-3000:]}") from None
    summary["_exit"] = out.returncode
    summary["_stderr"] = out.stderr[-3000:]
    return summary


def explain(summary: dict) -> str:
    """What to show when an assertion on the summary fails."""
    keep = {k: summary.get(k) for k in ("error", "network", "console", "_exit", "_stderr")}
    keep["launches"] = [{k: v for k, v in l.items() if k != "result"}
                        for l in summary.get("launches", [])]
    return json.dumps(keep, indent=1)[-6000:]


def launch(summary: dict, n: int) -> dict:
    launches = summary.get("launches", [])
    assert len(launches) >= n, f"launch {n} did not start:\n{explain(summary)}"
    return launches[n - 1]


def app_result(summary: dict, n: int) -> dict:
    rec = launch(summary, n)
    result = rec.get("result")
    assert result is not None, f"launch {n} did not reach the app:\n{explain(summary)}"
    assert result.get("ok"), f"launch {n}: app failed: {result.get('error')}\n{explain(summary)}"
    return result


def test_discovery_document(smart_config, base):
    """app-launch.html#smart-configuration: endpoints, PKCE S256 and the SMART capabilities a
    standalone patient launch by a practitioner needs."""
    for key in ("authorization_endpoint", "token_endpoint", "grant_types_supported",
                "code_challenge_methods_supported", "capabilities", "issuer", "jwks_uri"):
        assert key in smart_config, f"{key} missing from {smart_config}"
    assert "authorization_code" in smart_config["grant_types_supported"]
    assert "S256" in smart_config["code_challenge_methods_supported"]
    assert "plain" not in smart_config["code_challenge_methods_supported"]
    for cap in ("launch-standalone", "client-public", "context-standalone-patient",
                "permission-offline", "sso-openid-connect"):
        assert cap in smart_config["capabilities"], f"capability {cap} not declared"


def test_both_launches_got_tokens(drive, world):
    """Both standalone launches end in the app with a bearer token for the chosen patient."""
    for n in (1, 2):
        res = app_result(drive, n)
        tr = res["tokenResponse"]
        assert tr.get("access_token"), tr
        assert tr.get("token_type", "").lower() == "bearer", tr
        assert isinstance(tr.get("expires_in"), int) and tr["expires_in"] > 0, tr
        assert tr.get("patient") == world["patient"]["id"], tr
        granted = tr.get("scope", "").split()
        assert "launch/patient" in granted and "openid" in granted, tr
    assert drive["_exit"] == 0 and drive["ok"], explain(drive)
    assert (app_result(drive, 1)["tokenResponse"]["access_token"]
            != app_result(drive, 2)["tokenResponse"]["access_token"])


def test_app_reads_patient_in_context_and_searches(drive, world):
    """client.patient.read() returns the picked patient; Observation?patient= finds its
    Observation."""
    for n in (1, 2):
        res = app_result(drive, n)
        assert res["patientId"] == world["patient"]["id"]
        assert res["patient"] == {"ok": True, "id": world["patient"]["id"],
                                  "resourceType": "Patient"}, res["patient"]
        obs = res["observations"]
        assert obs["ok"], obs
        assert obs["value"]["resourceType"] == "Bundle"
        assert world["observation"]["id"] in obs["value"]["ids"], obs


def test_pages_shown_and_single_sign_on(drive, world):
    """The first launch signs in; the second, in the same browser, does not see the login page
    again but still picks its role, the patient and consents. Both role pickers offer both
    roles; the patient picker offers the patient."""
    first, second = launch(drive, 1), launch(drive, 2)
    kinds1 = [p["kind"] for p in first["pages"]]
    kinds2 = [p["kind"] for p in second["pages"]]
    assert kinds1[:1] == ["login"], f"first launch pages {kinds1}\n{explain(drive)}"
    assert "login" not in kinds2, f"second launch asked to sign in again: {kinds2}"
    role_ids = [f"PractitionerRole/{r['id']}" for r in world["roles"]]
    for rec, kinds in ((first, kinds1), (second, kinds2)):
        for needed in ("role-picker", "patient-picker", "consent", "app"):
            assert needed in kinds, f"launch {rec['n']} pages {kinds}\n{explain(drive)}"
        assert set(role_ids) <= set(rec["rolesOffered"]), rec["rolesOffered"]
        assert world["patient"]["id"] in rec["patientsOffered"], rec["patientsOffered"]
    assert first["role"] != second["role"]
    for rec in (first, second):
        for p in rec["pages"]:
            assert Path(p["screenshot"]).is_file(), p


def openid_configuration(anon, issuer: str) -> dict:
    """scopes-and-launch-context.html 'Steps for using an ID token': GET
    {issuer}/.well-known/openid-configuration."""
    r = anon.get(issuer.rstrip("/") + "/.well-known/openid-configuration",
                 headers={"Accept": "application/json"})
    assert r.status_code == 200, f"{r.url}: {r.status_code} {r.text[:300]}"
    return r.json()


def test_id_token_and_fhir_user(drive, world, smart_config, base, anon):
    """scope openid fhirUser: the token response carries an id_token (OpenID Connect Core
    §3.1.3.3), validated as SMART's 'Steps for using an ID token' say: its iss is the issuer,
    {iss}/.well-known/openid-configuration names the jwks_uri whose key verifies the signature,
    aud is the client id, and fhirUser is the user's Practitioner (absolute, or relative to
    the FHIR base)."""
    pract_ref = f"Practitioner/{world['practitioner']['id']}"
    for n in (1, 2):
        res = app_result(drive, n)
        raw = res["tokenResponse"].get("id_token")
        assert raw, f"launch {n}: no id_token for scope openid fhirUser: {res['tokenResponse']}"
        # fhirclient's getFhirUser() gives the last two path segments of the claim
        assert res["fhirUser"] == pract_ref, res["fhirUser"]
        unverified = jwt.decode(raw, options={"verify_signature": False})
        assert unverified.get("iss") == smart_config["issuer"], unverified
        oidc = openid_configuration(anon, unverified["iss"])
        assert oidc.get("issuer") == unverified["iss"], oidc
        header = jwt.get_unverified_header(raw)
        key = jwt.PyJWKClient(oidc["jwks_uri"]).get_signing_key_from_jwt(raw)
        claims = jwt.decode(raw, key.key, algorithms=[header["alg"]], audience=CLIENT_ID,
                            issuer=smart_config["issuer"],
                            options={"require": ["iss", "sub", "aud", "exp", "iat"]})
        assert claims["fhirUser"] in (pract_ref, f"{base}/{pract_ref}"), claims


def test_id_token_signed_with_rs256(drive, smart_config, anon):
    """scopes-and-launch-context.html (sso-openid-connect): 'The EHR SHALL support Signing ID
    Tokens with RSA SHA-256'. The app registered no id_token signing algorithm, so the OIDC
    default applies (OpenID Connect Dynamic Client Registration §2,
    id_token_signed_response_alg: 'The default, if omitted, is RS256'); OpenID Connect
    Discovery §3: id_token_signing_alg_values_supported 'MUST' include RS256."""
    oidc = openid_configuration(anon, smart_config["issuer"])
    assert "RS256" in oidc.get("id_token_signing_alg_values_supported", []), oidc
    raw = app_result(drive, 1)["tokenResponse"].get("id_token")
    assert raw, "no id_token"
    assert jwt.get_unverified_header(raw)["alg"] == "RS256", jwt.get_unverified_header(raw)


def test_both_tokens_work_side_by_side(drive, world):
    """After the second launch got its token, the first tab's token still works (and the
    second's too): one sign-in session, two independent grants."""
    rr = drive.get("rerunAfterSecondLaunch")
    assert rr, explain(drive)
    for page in ("page1", "page2"):
        r = rr[page]
        assert r["ok"], r
        v = r["value"]
        assert v["patient"].get("ok") and v["patient"]["id"] == world["patient"]["id"], v
        assert v["observations"]["ok"], v
        assert world["observation"]["id"] in v["observations"]["value"]["ids"], v
    assert rr["page1"]["value"]["accessToken"] != rr["page2"]["value"]["accessToken"]


def test_refresh_grant_of_a_public_client(drive, world, smart_config, anon, base):
    """app-launch.html#step-7-refresh with the second launch's (unused) refresh token, sent
    exactly as SMART defines it: grant_type and refresh_token ('For public apps,
    authentication is not possible (and thus not required)'); no client_id (RFC 6749 §6: a
    public client need not authenticate; the refresh token is bound to its client)."""
    tr = app_result(drive, 2)["tokenResponse"]
    assert tr.get("refresh_token"), f"no refresh_token for offline_access: {tr}"
    r = anon.post(smart_config["token_endpoint"],
                  data={"grant_type": "refresh_token", "refresh_token": tr["refresh_token"]},
                  headers={"Accept": "application/json"})
    if r.status_code != 200:
        # Not a workaround: only to say in the failure whether adding client_id changes it.
        again = anon.post(smart_config["token_endpoint"],
                          data={"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                "refresh_token": tr["refresh_token"]},
                          headers={"Accept": "application/json"})
        raise AssertionError(
            f"POST {smart_config['token_endpoint']} grant_type=refresh_token&refresh_token=… "
            f"-> {r.status_code} WWW-Authenticate: {r.headers.get('WWW-Authenticate')!r} "
            f"{r.text[:300]}; the same with client_id={CLIENT_ID} -> {again.status_code}")
    new = r.json()
    assert new.get("access_token") and new["access_token"] != tr["access_token"], new
    assert new.get("token_type", "").lower() == "bearer", new
    assert isinstance(new.get("expires_in"), int) and new["expires_in"] > 0, new
    assert set(new.get("scope", "").split()) <= set(tr["scope"].split()), new
    assert "no-store" in r.headers.get("Cache-Control", "").lower(), r.headers
    got = anon.get(f"{base}/Patient/{world['patient']['id']}",
                   headers={"Authorization": f"Bearer {new['access_token']}",
                            "Accept": "application/fhir+json"})
    assert got.status_code == 200, got.text[:300]


def test_refresh_token(drive, world):
    """offline_access: the token response has a refresh_token; the refresh grant (RFC 6749 §6,
    sent by fhirclient as a public client: grant_type and refresh_token only) returns a new
    access token that works."""
    tr = app_result(drive, 1)["tokenResponse"]
    assert tr.get("refresh_token"), f"no refresh_token for offline_access: {tr}"
    ref = drive.get("refresh")
    assert ref and ref.get("ok"), f"refresh failed: {json.dumps(ref)}\n{explain(drive)}"
    assert ref["tokenChanged"], ref
    after = ref["after"]
    assert after["patient"].get("ok") and after["patient"]["id"] == world["patient"]["id"], after
    assert after["observations"]["ok"], after
