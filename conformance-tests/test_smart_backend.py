"""SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html):
client_credentials with a private_key_jwt client assertion (RFC 7523 §2.2 and §3), for an RSA
(RS384) and an EC P-384 (ES384) client key, and the RFC 6749 §5.2 errors for bad assertions.

The client keys are made here; only their public JWKS is registered with
`ironfhir admin client add --jwks`. Endpoints come from {base}/.well-known/smart-configuration."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import time
import urllib.parse

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from support import (
    FHIR_JSON, assert_outcome, body_resource, create, observation, patient, unique,
)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUTH_ERRORS = ("invalid_client", "invalid_grant")


class ClientKey:
    """A client's signing key, its kid and alg, and the public JWKS to register."""

    def __init__(self, alg: str):
        self.alg = alg
        self.kid = f"{alg.lower()}-{secrets.token_hex(6)}"
        if alg == "RS384":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif alg == "ES384":
            self.private = ec.generate_private_key(ec.SECP384R1())
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            raise ValueError(alg)
        assert "d" not in jwk
        self.jwk = {**jwk, "kid": self.kid, "alg": alg, "use": "sig", "key_ops": ["verify"]}

    @property
    def jwks(self) -> dict:
        return {"keys": [self.jwk]}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(client_id: str, aud: str, **override) -> dict:
    now = int(time.time())
    c = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + 300,
         "jti": secrets.token_urlsafe(24)}
    c.update(override)
    return c


def sign(key: ClientKey, payload: dict, kid: str | None = None) -> str:
    return jwt.encode(payload, key.private, algorithm=key.alg,
                      headers={"kid": kid or key.kid, "typ": "JWT"})


@pytest.fixture(scope="module")
def smart_config(base, anon) -> dict:
    r = anon.get(f"{base}/.well-known/smart-configuration", headers={"Accept": "application/json"})
    assert r.status_code == 200, (
        f"GET {base}/.well-known/smart-configuration: {r.status_code} {r.text[:300]}")
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == "application/json", r.headers
    return r.json()


@pytest.fixture(scope="module")
def token_url(smart_config) -> str:
    return smart_config["token_endpoint"]


def register(server, tmp_path_factory, key: ClientKey, scope: str = "system/*.rs") -> str:
    client_id = unique("backend-") + "-" + key.alg.lower()
    jwks_file = tmp_path_factory.mktemp("jwks") / f"{client_id}.json"
    jwks_file.write_text(json.dumps(key.jwks))
    cmd = [str(server.binary), "admin", "client", "add", "--data-dir", str(server.data_dir),
           "--client-id", client_id, "--scope", scope, "--jwks", str(jwks_file)]
    out = subprocess.run(cmd, env=server.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}: {out.stderr}{out.stdout}"
    try:
        printed = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"client add did not print JSON: {out.stdout!r}") from None
    assert client_id in json.dumps(printed), printed
    assert '"d"' not in json.dumps(printed), "client add printed private key material"
    return client_id


@pytest.fixture(scope="module", params=["RS384", "ES384"])
def client(request, server, tmp_path_factory):
    """(client_id, key): a backend client registered with a public JWKS."""
    key = ClientKey(request.param)
    return register(server, tmp_path_factory, key), key


@pytest.fixture(scope="module")
def stored(http, base):
    pat = create(http, base, patient(family=unique()))
    obs = create(http, base, observation(f"Patient/{pat['id']}"))
    return pat, obs


def token_request(anon, token_url, assertion: str, scope: str = "system/Patient.rs"):
    return anon.post(token_url, data={
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }, headers={"Accept": "application/json"})


def assert_token_error(r, expected=AUTH_ERRORS) -> str:
    """RFC 6749 §5.2: 400 (or 401 for invalid_client) with a JSON object whose error member is
    one of the expected codes; no access token."""
    assert r.status_code in (400, 401), f"expected 400/401, got {r.status_code}: {r.text[:400]}"
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == "application/json", (
        r.headers.get("Content-Type"), r.text[:300])
    body = r.json()
    assert body.get("error") in expected, f"error {body.get('error')!r} not in {expected}: {body}"
    assert "access_token" not in body
    return body["error"]


# ---------------------------------------------------------------- discovery

def test_discovery_advertises_backend_services(smart_config):
    """backend-services.html#discovery-requirements: token endpoint, client_credentials,
    private_key_jwt with RS384 and ES384, system scopes."""
    for key in ("token_endpoint", "jwks_uri", "introspection_endpoint", "revocation_endpoint",
                "issuer", "scopes_supported", "capabilities"):
        assert key in smart_config, f"{key} missing: {smart_config}"
    assert "client_credentials" in smart_config["grant_types_supported"]
    assert "private_key_jwt" in smart_config["token_endpoint_auth_methods_supported"]
    algs = smart_config["token_endpoint_auth_signing_alg_values_supported"]
    assert "RS384" in algs and "ES384" in algs, algs
    assert "client-confidential-asymmetric" in smart_config["capabilities"]


# ---------------------------------------------------------------- the happy path

def test_client_credentials_token_and_search(client, anon, base, token_url, stored):
    """backend-services.html#obtaining-an-access-token: a signed assertion gets a bearer token
    (RFC 6749 §5.1) for the requested system scope, which can search Patient."""
    client_id, key = client
    r = token_request(anon, token_url, sign(key, claims(client_id, token_url)))
    assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == "application/json"
    tr = r.json()
    assert tr.get("access_token"), tr
    assert tr.get("token_type", "").lower() == "bearer", tr
    assert isinstance(tr.get("expires_in"), int) and tr["expires_in"] > 0, tr
    assert tr.get("scope", "").split() == ["system/Patient.rs"], tr
    assert "refresh_token" not in tr, "backend services: no refresh token"

    s = anon.get(f"{base}/Patient", params={"_id": stored[0]["id"]},
                 headers={"Authorization": f"Bearer {tr['access_token']}", "Accept": FHIR_JSON})
    assert s.status_code == 200, f"{s.status_code}: {s.text[:400]}"
    bundle = body_resource(s, "Bundle")
    assert [e["resource"]["id"] for e in bundle.get("entry", [])] == [stored[0]["id"]]
    s = anon.get(f"{base}/Patient",
                 headers={"Authorization": f"Bearer {tr['access_token']}", "Accept": FHIR_JSON})
    assert s.status_code == 200, f"{s.status_code}: {s.text[:400]}"
    body_resource(s, "Bundle")


def test_token_response_is_not_cacheable(client, anon, token_url):
    """RFC 6749 §5.1: the token response MUST carry Cache-Control: no-store."""
    client_id, key = client
    r = token_request(anon, token_url, sign(key, claims(client_id, token_url)))
    assert r.status_code == 200, r.text[:300]
    assert "no-store" in r.headers.get("Cache-Control", "").lower(), r.headers


def test_patient_scope_does_not_reach_observation(client, anon, base, token_url, stored):
    """A token for system/Patient.rs cannot read or search Observation: 403."""
    client_id, key = client
    r = token_request(anon, token_url, sign(key, claims(client_id, token_url)))
    assert r.status_code == 200, r.text[:300]
    auth = {"Authorization": f"Bearer {r.json()['access_token']}", "Accept": FHIR_JSON}
    _, obs = stored
    assert_outcome(anon.get(f"{base}/Observation/{obs['id']}", headers=auth), 403)
    assert_outcome(anon.get(f"{base}/Observation", params={"_id": obs["id"]}, headers=auth), 403)


# ---------------------------------------------------------------- bad assertions

def test_replayed_assertion_is_refused(client, anon, token_url):
    """backend-services.html (jti): the server rejects a jti it has already seen."""
    client_id, key = client
    assertion = sign(key, claims(client_id, token_url))
    first = token_request(anon, token_url, assertion)
    assert first.status_code == 200, first.text[:300]
    assert_token_error(token_request(anon, token_url, assertion))


def test_expiry_too_far_ahead_is_refused(client, anon, token_url):
    """exp: 'no more than five minutes in the future' — ten minutes is refused."""
    client_id, key = client
    payload = claims(client_id, token_url, exp=int(time.time()) + 600)
    assert_token_error(token_request(anon, token_url, sign(key, payload)))


def test_expired_assertion_is_refused(client, anon, token_url):
    client_id, key = client
    payload = claims(client_id, token_url, exp=int(time.time()) - 120)
    assert_token_error(token_request(anon, token_url, sign(key, payload)))


def test_wrong_audience_is_refused(client, anon, token_url, base):
    """aud must be the token endpoint URL (RFC 7523 §3 item 3)."""
    client_id, key = client
    for aud in (base, token_url + "x"):
        assert_token_error(token_request(anon, token_url, sign(key, claims(client_id, aud))))


def test_an_assertion_for_another_server_is_refused_whatever_the_host_header(client, anon, token_url):
    """The token endpoint the aud is checked against is this server's, not one a client names
    with a Host header: an assertion minted for another server (same client, same key) does
    not authenticate here, even sent with that server's name as Host."""
    client_id, key = client
    port = urllib.parse.urlsplit(token_url).port
    other = f"other-server.example:{port}"
    aud = f"http://{other}/auth/token"
    r = anon.post(token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                                   "client_assertion_type": ASSERTION_TYPE,
                                   "client_assertion": sign(key, claims(client_id, aud))},
                  headers={"Host": other})
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] == "invalid_client"
    # The same client with this server's own token endpoint still gets a token.
    ok = token_request(anon, token_url, sign(key, claims(client_id, token_url)))
    assert ok.status_code == 200, ok.text


def test_an_assertion_not_valid_yet_is_refused(client, anon, token_url):
    """RFC 7523 §3 item 5: a JWT with an nbf in the future must be rejected."""
    client_id, key = client
    later = int(time.time()) + 120
    r = token_request(anon, token_url, sign(key, claims(client_id, token_url, nbf=later)))
    assert assert_token_error(r) == "invalid_client"


def test_two_client_authentication_methods_in_one_request_are_refused(client, anon, token_url):
    """RFC 6749 §2.3: the client MUST NOT use more than one authentication method in each
    request — a valid assertion does not excuse a client_secret beside it."""
    client_id, key = client
    r = anon.post(token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                                   "client_assertion_type": ASSERTION_TYPE,
                                   "client_assertion": sign(key, claims(client_id, token_url)),
                                   "client_secret": "also-a-secret"}, headers={"Accept": "application/json"})
    assert assert_token_error(r) == "invalid_client"


def test_unregistered_key_is_refused(client, anon, token_url):
    """An assertion signed by a key the client did not register: same kid, and unknown kid."""
    client_id, key = client
    stranger = ClientKey(key.alg)
    for kid in (key.kid, stranger.kid):
        assertion = sign(stranger, claims(client_id, token_url), kid=kid)
        assert_token_error(token_request(anon, token_url, assertion))


def test_alg_none_is_refused(client, anon, token_url):
    """An unsigned assertion (alg none, RFC 7519 §6) never authenticates a client."""
    client_id, key = client
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode())
    body = b64url(json.dumps(claims(client_id, token_url)).encode())
    assert_token_error(token_request(anon, token_url, f"{header}.{body}."))


def test_hmac_with_public_key_is_refused(client, anon, token_url):
    """Algorithm confusion: HS384 keyed with the registered public JWK text is refused."""
    client_id, key = client
    header = b64url(json.dumps({"alg": "HS384", "typ": "JWT", "kid": key.kid}).encode())
    body = b64url(json.dumps(claims(client_id, token_url)).encode())
    sig = hmac.new(json.dumps(key.jwk).encode(), f"{header}.{body}".encode(),
                   hashlib.sha384).digest()
    assert_token_error(token_request(anon, token_url, f"{header}.{body}.{b64url(sig)}"))


def test_client_authentication_errors_are_invalid_client(client, anon, token_url, base):
    """RFC 7523 §3.2: when the client's JWT is not valid 'The value of the "error" parameter
    MUST be the "invalid_client" error code' — for each bad assertion above."""
    client_id, key = client
    replayed = sign(key, claims(client_id, token_url))
    assert token_request(anon, token_url, replayed).status_code == 200
    stranger = ClientKey(key.alg)
    none_header = b64url(json.dumps({"alg": "none", "kid": key.kid}).encode())
    cases = {
        "replayed jti": replayed,
        "exp in 10 minutes": sign(key, claims(client_id, token_url, exp=int(time.time()) + 600)),
        "wrong aud": sign(key, claims(client_id, base)),
        "unregistered key": sign(stranger, claims(client_id, token_url), kid=key.kid),
        "alg none": f"{none_header}.{b64url(json.dumps(claims(client_id, token_url)).encode())}.",
    }
    got = {name: token_request(anon, token_url, a) for name, a in cases.items()}
    errors = {name: (r.status_code, r.json().get("error") if r.headers.get(
        "Content-Type", "").startswith("application/json") else r.text[:100])
        for name, r in got.items()}
    assert all(e[1] == "invalid_client" for e in errors.values()), errors


def test_unknown_client_is_invalid_client(anon, token_url, tmp_path_factory):
    """An assertion from a client id that is not registered: invalid_client."""
    key = ClientKey("RS384")
    client_id = unique("unregistered-")
    assert_token_error(token_request(anon, token_url, sign(key, claims(client_id, token_url))),
                       expected=("invalid_client",))


def test_scope_beyond_registration_is_not_granted(anon, token_url, server, tmp_path_factory):
    """A client registered for system/Patient.rs asking for system/Observation.rs gets no
    Observation access: either invalid_scope (RFC 6749 §5.2) or a token without that scope."""
    key = ClientKey("ES384")
    client_id = register(server, tmp_path_factory, key, scope="system/Patient.rs")
    r = token_request(anon, token_url, sign(key, claims(client_id, token_url)),
                      scope="system/Observation.rs")
    if r.status_code == 200:
        assert "system/Observation.rs" not in r.json().get("scope", "").split(), r.json()
    else:
        assert_token_error(r, expected=("invalid_scope",))


def test_refused_token_requests_and_bearer_tokens_are_audited(client, anon, http, base, token_url):
    """OAuth abuse is answered with the right error and leaves an AuditEvent (DICOM 110114
    User Authentication, outcome 4) naming the client the request claimed: a replayed client
    assertion, an unknown client, and invalid bearer tokens at the FHIR API."""
    client_id, key = client

    def audits(**params):
        r = http.get(f"{base}/AuditEvent", params={"type": "http://dicom.nema.org/resources/ontology/DCM|110114",
                                                  "outcome": "4", "_total": "accurate", **params})
        assert r.status_code == 200, r.text[:300]
        return r.json()

    before = audits(altid=client_id)["total"]
    assertion = sign(key, claims(client_id, token_url))
    assert token_request(anon, token_url, assertion).status_code == 200
    assert_token_error(token_request(anon, token_url, assertion))
    after = audits(altid=client_id)
    assert after["total"] == before + 1, after
    descs = [e["resource"].get("outcomeDesc", "") for e in after.get("entry", [])]
    assert any("invalid_client" in d for d in descs), descs
    # Nothing secret is written down: not the assertion, not its signature.
    assert not any(assertion.split(".")[2] in d for d in descs)

    stranger = f"unknown-{secrets.token_hex(4)}"
    r = anon.post(token_url, data={"grant_type": "client_credentials", "client_id": stranger, "client_secret": "x"})
    assert r.status_code in (400, 401)
    assert audits(altid=stranger)["total"] == 1

    all_before = audits()["total"]
    for bad in ("not-a-jwt", jwt.encode({"sub": "x", "aud": "ironfhir-fhir-api"}, key=None, algorithm="none")):
        r = anon.get(f"{base}/Patient", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401
        assert "invalid_token" in r.headers.get("WWW-Authenticate", "")
    assert audits()["total"] >= all_before + 2
