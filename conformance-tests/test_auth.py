"""Authorization — https://hl7.org/fhir/R4/http.html#security (security.html) with SMART App
Launch scopes; RFC 6750 for the bearer-token error responses."""

import tempfile

import pytest
from fhirclient.models.observation import Observation as SmartObservation
from fhirclient.server import FHIRPermissionDeniedException, FHIRUnauthorizedException
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, ForbiddenError

from support import (
    FHIR_JSON, JSON_HEADERS, TimeoutSession, assert_outcome, create, observation, patient,
    smart_server_for, unique,
)


@pytest.fixture(scope="module")
def stored(http, base):
    pat = create(http, base, patient(family=unique()))
    obs = create(http, base, observation(f"Patient/{pat['id']}"))
    return pat, obs


def assert_401(r):
    """RFC 6750 §3: 401 with a WWW-Authenticate: Bearer challenge; body an OperationOutcome."""
    assert r.status_code == 401, r.text[:300]
    assert r.headers.get("WWW-Authenticate", "").lower().startswith("bearer"), r.headers
    assert_outcome(r, 401)


def test_request_without_token_is_401(anon, base, stored):
    """security.html / RFC 6750: without credentials every endpoint except the capability
    statement answers 401 with a WWW-Authenticate challenge and reveals no data."""
    pat, _ = stored
    for method, url in (("GET", f"{base}/Patient/{pat['id']}"),
                        ("GET", f"{base}/Patient?_id={pat['id']}"),
                        ("GET", f"{base}/_history"),
                        ("POST", f"{base}/Patient")):
        r = anon.request(method, url, json=patient(), headers=JSON_HEADERS)
        assert_401(r)
        assert pat["name"][0]["family"] not in r.text


def test_metadata_needs_no_token(anon, base):
    """http.html#capabilities: the CapabilityStatement is readable without credentials."""
    assert anon.get(f"{base}/metadata", headers={"Accept": FHIR_JSON}).status_code == 200


def test_garbage_and_tampered_tokens_are_401(anon, base, stored, token):
    """RFC 6750 §3.1 invalid_token: a token that is not a valid signed JWT is 401."""
    pat, _ = stored
    header, payload, sig = token.split(".")
    flipped = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    for bad in ("not-a-token", f"{header}.{payload}.{flipped}", f"{header}.{payload}."):
        r = anon.get(f"{base}/Patient/{pat['id']}",
                     headers={"Authorization": f"Bearer {bad}", "Accept": FHIR_JSON})
        assert_401(r)


def test_token_signed_by_another_key_is_401(anon, base, server, stored):
    """A token minted with a different data dir (so a different signing key) is not trusted."""
    pat, _ = stored
    with tempfile.TemporaryDirectory(prefix="ironfhir-otherkey-") as other:
        foreign = server.mint_token("system/*.*", data_dir=other)
    r = anon.get(f"{base}/Patient/{pat['id']}",
                 headers={"Authorization": f"Bearer {foreign}", "Accept": FHIR_JSON})
    assert_401(r)


def test_fhirpy_without_token_raises_authorization_error(base, stored):
    """fhirpy maps 401 to AuthorizationError."""
    client = SyncFHIRClient(base, requests_config={"timeout": 30})
    with pytest.raises(AuthorizationError):
        client.get("Patient", stored[0]["id"])


def test_patient_read_scope_allows_patient_read_and_search(server, base, stored):
    """SMART scopes (system/Patient.rs): read and search of Patient are permitted."""
    pat, _ = stored
    client = SyncFHIRClient(base, authorization=f"Bearer {server.token('system/Patient.rs')}",
                            requests_config={"timeout": 30})
    assert client.get("Patient", pat["id"])["id"] == pat["id"]
    found = client.resources("Patient").search(_id=pat["id"]).fetch()
    assert [p.id for p in found] == [pat["id"]]


def test_patient_read_scope_forbids_create(server, base):
    """system/Patient.rs grants no create: 403 Forbidden (security.html, http.html#status),
    with an OperationOutcome, and nothing is stored."""
    family = unique()
    s = TimeoutSession()
    s.headers["Authorization"] = f"Bearer {server.token('system/Patient.rs')}"
    r = s.post(f"{base}/Patient", json=patient(family=family), headers=JSON_HEADERS)
    assert_outcome(r, 403)
    client = SyncFHIRClient(base, authorization=f"Bearer {server.token('system/Patient.rs')}",
                            requests_config={"timeout": 30})
    assert client.resources("Patient").search(family=family).fetch() == []
    with pytest.raises(ForbiddenError):
        client.resource("Patient", name=[{"family": family}]).save()


def test_patient_read_scope_forbids_observations(server, base, stored):
    """system/Patient.rs grants nothing on Observation: read and search are 403."""
    _, obs = stored
    s = TimeoutSession()
    s.headers.update({"Authorization": f"Bearer {server.token('system/Patient.rs')}",
                      "Accept": FHIR_JSON})
    oo = assert_outcome(s.get(f"{base}/Observation/{obs['id']}"), 403)
    assert obs["subject"]["reference"] not in str(oo)
    assert_outcome(s.get(f"{base}/Observation", params={"_id": obs["id"]}), 403)
    smart = smart_server_for(base, server.token("system/Patient.rs"))
    with pytest.raises(FHIRPermissionDeniedException):
        SmartObservation.read(obs["id"], smart)


def test_smart_fhirclient_without_token_gets_401(base, stored):
    """fhirclient raises FHIRUnauthorizedException on 401."""
    smart = smart_server_for(base, None)
    with pytest.raises(FHIRUnauthorizedException):
        SmartObservation.read(stored[1]["id"], smart)
