"""Drives the authorization server's pages the way a browser would (no JavaScript needed):
authorize → login → role picker → patient picker → consent → redirect with a code, then the
token endpoint. Used by the SMART tests; the real-browser test does the same in Chromium."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import subprocess
import urllib.parse

import requests

GRANT_EXTENSION = "https://ironfhir.dev/fhir/StructureDefinition/role-grant"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def smart_config(base: str) -> dict:
    r = requests.get(base + "/.well-known/smart-configuration", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def register_client(server, client_id: str, scope: str, *, redirect_uris=(), public=True,
                    secret=None, jwks_file=None) -> dict:
    cmd = [str(server.binary), "admin", "client", "add", "--data-dir", str(server.data_dir),
           "--client-id", client_id, "--scope", scope]
    for uri in redirect_uris:
        cmd += ["--redirect-uri", uri]
    if public:
        cmd.append("--public")
    elif secret:
        cmd += ["--secret", secret]
    elif jwks_file:
        cmd += ["--jwks", str(jwks_file)]
    out = subprocess.run(cmd, env=server.env, check=True, capture_output=True, text=True, timeout=60)
    import json
    return json.loads(out.stdout)


def register_user(server, username: str, password: str, fhir_user: str, totp=False) -> dict:
    cmd = [str(server.binary), "admin", "user", "add", "--data-dir", str(server.data_dir),
           "--username", username, "--password-stdin", "--fhir-user", fhir_user]
    if totp:
        cmd.append("--totp")
    out = subprocess.run(cmd, env=server.env, input=password + "\n", check=True,
                         capture_output=True, text=True, timeout=60)
    import json
    return json.loads(out.stdout)


def form_fields(page: str, form_id: str) -> dict:
    """The hidden fields of the form with this id."""
    m = re.search(r'<form id="%s".*?</form>' % re.escape(form_id), page, re.S)
    assert m, f"no form {form_id} in page:\n{page[:2000]}"
    fields = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', m.group(0)):
        fields[name] = html.unescape(value)
    return fields


def radio_values(page: str, name: str) -> list[str]:
    return [html.unescape(v) for v in re.findall(r'<input type="radio" name="%s" value="([^"]*)"' % name, page)]


class Flow:
    """One browser (cookie jar) going through authorizations."""

    def __init__(self, base: str):
        self.base = base
        self.config = smart_config(base)
        self.session = requests.Session()
        self.pages: list[str] = []  # which pages were shown, by form id

    def authorize(self, client_id: str, redirect_uri: str, scope: str, *, username=None,
                  password=None, role=None, patient=None, approve=True, launch=None,
                  challenge=None, extra=None) -> dict:
        """Runs one authorization; returns the redirect's query parameters (code/state or
        error) and the PKCE verifier under 'verifier'."""
        verifier, default_challenge = pkce_pair()
        state = secrets.token_urlsafe(8)
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
                  "scope": scope, "state": state, "aud": self.base,
                  "code_challenge": challenge or default_challenge, "code_challenge_method": "S256"}
        if launch:
            params["launch"] = launch
        params.update(extra or {})
        r = self.session.get(self.config["authorization_endpoint"], params=params,
                             allow_redirects=False, timeout=30)
        self.pages = []
        for _ in range(8):
            if r.status_code in (302, 303, 307):
                location = r.headers["Location"]
                assert location.startswith(redirect_uri), location
                q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
                q["verifier"] = verifier
                q["sent_state"] = state
                return q
            assert r.status_code in (200, 401), (r.status_code, r.text[:1000])
            page = r.text
            url = self.config["authorization_endpoint"]
            if '<form id="login"' in page:
                self.pages.append("login")
                assert username is not None, "login page shown but no credentials given"
                data = form_fields(page, "login") | {"username": username, "password": password}
                if r.status_code == 401:
                    return {"login_failed": page}
            elif '<form id="role-picker"' in page:
                self.pages.append("role-picker")
                choices = radio_values(page, "role")
                assert role in choices, (role, choices)
                data = form_fields(page, "role-picker") | {"role": role}
            elif '<form id="patient-picker"' in page:
                self.pages.append("patient-picker")
                assert patient is not None, "patient picker shown but no patient chosen"
                data = form_fields(page, "patient-picker") | {"patient": patient}
            elif '<form id="consent"' in page:
                self.pages.append("consent")
                data = form_fields(page, "consent") | {"decision": "approve" if approve else "deny"}
            else:
                raise AssertionError("unexpected page:\n" + page[:2000])
            r = self.session.post(url, data=data, allow_redirects=False, timeout=30)
        raise AssertionError("authorization did not finish")

    def exchange(self, client_id: str, redirect_uri: str, result: dict, **overrides) -> requests.Response:
        data = {"grant_type": "authorization_code", "code": result["code"], "redirect_uri": redirect_uri,
                "client_id": client_id, "code_verifier": result["verifier"]}
        data.update(overrides)
        return requests.post(self.config["token_endpoint"], data=data, timeout=30)

    def login_tokens(self, client_id: str, redirect_uri: str, scope: str, **kw) -> dict:
        result = self.authorize(client_id, redirect_uri, scope, **kw)
        assert "code" in result, result
        assert result["state"] == result["sent_state"]
        r = self.exchange(client_id, redirect_uri, result)
        assert r.status_code == 200, r.text
        assert r.headers.get("Cache-Control") == "no-store"
        return r.json()
