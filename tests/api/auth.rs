//! Authentication and authorisation: bearer tokens (401 with `WWW-Authenticate`) and SMART scopes
//! (403). The security tests assert who can NOT do what, and that a refused write left nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use ironfhir::auth::{Claims, FHIR_AUDIENCE, TokenAuthority, keys};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, expect_outcome, issue_codes};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims this server would accept (issuer, audience, one hour to live, all scopes).
fn good_claims() -> Claims {
    Claims {
        iss: "ironfhir".into(),
        sub: "test-user".into(),
        aud: FHIR_AUDIENCE.into(),
        exp: now() + 3600,
        iat: now(),
        jti: uuid::Uuid::new_v4().to_string(),
        scope: "system/*.*".into(),
        client_id: None,
        patient: None,
        fhir_user: None,
        role: None,
        encounter: None,
        grant: None,
    }
}

/// RFC 4648 §5 base64url without padding, as JWTs use (a few lines instead of a dependency).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn base64url_matches_rfc_4648_test_vectors() {
    for (input, encoded) in [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE"), ("foobar", "Zm9vYmFy")] {
        assert_eq!(base64url(input.as_bytes()), encoded);
    }
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}

/// Asserts a 401 OperationOutcome that tells the client how to authenticate; RFC 6750 §3.1:
/// `error="invalid_token"` when a token was sent, no error code when there was none.
async fn expect_401(r: reqwest::Response, case: &str, token_sent: bool) {
    assert_eq!(r.status(), 401, "{case}");
    let challenge = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    assert!(challenge.as_deref().is_some_and(|c| c.starts_with("Bearer")), "{case}: WWW-Authenticate {challenge:?}");
    assert_eq!(
        challenge.as_deref().is_some_and(|c| c.contains("error=\"invalid_token\"")),
        token_sent,
        "{case}: WWW-Authenticate {challenge:?}"
    );
    let outcome = expect_outcome(r, 401).await;
    assert_eq!(issue_codes(&outcome), ["login"], "{case}");
}

#[tokio::test]
async fn requests_without_a_token_get_401_with_www_authenticate() {
    let app = TestApp::spawn().await;
    let patient = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let id = patient["id"].as_str().unwrap();
    let read = format!("Patient/{id}");
    for (method, path) in [
        (Method::GET, read.as_str()),
        (Method::GET, "Patient"),
        (Method::POST, "Patient"),
        (Method::DELETE, read.as_str()),
        (Method::GET, "_history"),
        (Method::GET, "Foo/1"),
    ] {
        let r = app
            .client
            .request(method.clone(), format!("{}/{path}", app.base))
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient"}).to_string())
            .send()
            .await
            .unwrap();
        expect_401(r, &format!("{method} {path}"), false).await;
    }
    assert_eq!(app.count("Patient").await, 1, "the unauthenticated POST created nothing");
    assert_eq!(app.get_json(&read).await["meta"]["versionId"], "1", "the unauthenticated DELETE did nothing");
}

#[tokio::test]
async fn invalid_tokens_get_401() {
    let app = TestApp::spawn().await;
    let other_key = TokenAuthority::from_pem(&keys::generate_pem().unwrap(), "ironfhir").unwrap();
    let expired = Claims { exp: now() - 3600, iat: now() - 7200, ..good_claims() };
    let alg_none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(serde_json::to_string(&good_claims()).unwrap().as_bytes())
    );
    let good = app.tokens.sign(&good_claims()).unwrap();
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    // Another subject's claims under the signature of a valid token.
    let tampered = format!(
        "{head}.{}.{signature}",
        base64url(serde_json::to_string(&Claims { sub: "someone-else".into(), ..good_claims() }).unwrap().as_bytes())
    );
    let cases: Vec<(&str, String)> = vec![
        ("malformed", "Bearer not-a-token".into()),
        ("three empty parts", "Bearer ..".into()),
        ("empty bearer", "Bearer ".into()),
        ("basic scheme", "Basic dGVzdDp0ZXN0".into()),
        ("signed by another key", format!("Bearer {}", other_key.sign(&good_claims()).unwrap())),
        ("expired", format!("Bearer {}", app.tokens.sign(&expired).unwrap())),
        ("alg none", format!("Bearer {alg_none}")),
        ("tampered claims", format!("Bearer {tampered}")),
        ("wrong issuer", format!("Bearer {}", app.tokens.sign(&Claims { iss: "someone-else".into(), ..good_claims() }).unwrap())),
        ("wrong audience", format!("Bearer {}", app.tokens.sign(&Claims { aud: "another-api".into(), ..good_claims() }).unwrap())),
    ];
    // The control: the same claims, properly signed, are accepted.
    let ok = app.client.get(format!("{}/Patient", app.base)).header("authorization", format!("Bearer {good}")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    for (case, authorization) in cases {
        let r = app.client.get(format!("{}/Patient", app.base)).header("authorization", authorization).send().await.unwrap();
        expect_401(r, case, true).await;
    }
}

/// Sends `method path` with `token` and `body` (a resource, or a form for `_search`); returns
/// the status, checking that a 403 is a `forbidden` OperationOutcome.
async fn status_with(app: &TestApp, token: &str, method: Method, path: &str, body: Option<serde_json::Value>) -> u16 {
    let mut req = app.client.request(method, format!("{}/{path}", app.base)).bearer_auth(token);
    if path.ends_with("/_search") {
        req = req.header("content-type", "application/x-www-form-urlencoded").body("active=true");
    } else if let Some(body) = body {
        req = req.header("content-type", "application/fhir+json").body(body.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 403 {
        let outcome = expect_outcome(r, 403).await;
        assert_eq!(issue_codes(&outcome), ["forbidden"]);
    }
    status
}

#[tokio::test]
async fn a_read_search_scope_on_patient_allows_only_reading_and_searching_patients() {
    let app = TestApp::spawn().await;
    let patient = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let id = patient["id"].as_str().unwrap();
    let observation = app.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "Testcode"}})).await;
    let obs_id = observation["id"].as_str().unwrap();
    let token = app.token_with("system/Patient.rs");
    let mut updated = patient.clone();
    updated["active"] = json!(false);
    let new = json!({"resourceType": "Patient", "active": true});
    let cases: Vec<(Method, String, Option<serde_json::Value>, u16)> = vec![
        (Method::GET, format!("Patient/{id}"), None, 200),
        (Method::GET, "Patient?active=true".into(), None, 200),
        (Method::GET, format!("Patient/{id}/_history/1"), None, 200),
        (Method::POST, "Patient".into(), Some(new.clone()), 403),
        (Method::PUT, format!("Patient/{id}"), Some(updated), 403),
        (Method::PUT, "Patient/brand-new".into(), Some(json!({"resourceType": "Patient", "id": "brand-new"})), 403),
        (Method::DELETE, format!("Patient/{id}"), None, 403),
        (Method::DELETE, "Patient?active=true".into(), None, 403),
        (Method::GET, format!("Observation/{obs_id}"), None, 403),
        (Method::GET, "Observation".into(), None, 403),
        (Method::GET, "Observation/_history".into(), None, 403),
        (Method::GET, "_history".into(), None, 403),
    ];
    for (method, path, body, expected) in cases {
        assert_eq!(status_with(&app, &token, method.clone(), &path, body).await, expected, "{method} {path}");
    }
    let r = app
        .client
        .patch(format!("{}/Patient/{id}", app.base))
        .bearer_auth(&token)
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/active", "value": false}]).to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(r, 403).await;
    // Nothing the token was refused happened.
    assert_eq!(app.count("Patient").await, 1);
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["meta"]["versionId"], "1");
    expect_outcome(app.get("Patient/brand-new").await, 404).await;
}

/// One row: a token with `scope` sends `method path` (with a Patient body for writes).
struct Row {
    scope: &'static str,
    method: Method,
    path: String,
    status: u16,
}

fn row(scope: &'static str, method: Method, path: impl Into<String>, status: u16) -> Row {
    Row { scope, method, path: path.into(), status }
}

#[tokio::test]
async fn scopes_allow_exactly_the_interactions_and_types_they_name() {
    let app = TestApp::spawn().await;
    let patient = app.create(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": "1"}]})).await;
    let id = patient["id"].as_str().unwrap().to_owned();
    let read = format!("Patient/{id}");
    let rows = vec![
        // Read without search: a search is a different permission (SMART v2 `s`).
        row("system/Patient.r", Method::GET, &read, 200),
        row("system/Patient.r", Method::GET, "Patient", 403),
        row("system/Patient.r", Method::GET, "Patient?active=true", 403),
        row("system/Patient.r", Method::POST, "Patient/_search", 403),
        row("system/Patient.r", Method::GET, "Patient/_history", 403),
        // patient/ scopes grant nothing until compartments are enforced (default deny).
        row("patient/*.read", Method::GET, &read, 403),
        row("patient/*.read", Method::GET, "Patient", 403),
        row("patient/Patient.rs", Method::GET, &read, 403),
        row("patient/*.*", Method::POST, "Patient", 403),
        // A granular scope reaches only what matches its query (Patient has no `category`:
        // nothing) and never allows writes; malformed scopes grant nothing.
        row("system/Patient.rs?category=x", Method::GET, &read, 404),
        row("system/Patient.rs?category=x", Method::POST, "Patient", 403),
        row("system/Patient.sr", Method::GET, &read, 403),
        row("system/*.x", Method::GET, &read, 403),
        row("openid launch", Method::GET, &read, 403),
        row("", Method::GET, "Patient", 403),
        // v1 read: every type, no writes.
        row("system/*.read", Method::GET, &read, 200),
        row("system/*.read", Method::GET, "Observation", 200),
        row("system/*.read", Method::POST, "Patient", 403),
        row("system/*.read", Method::DELETE, &read, 403),
        // A scope on another type: 403 whether or not the resource exists (no existence oracle).
        row("system/Observation.rs", Method::GET, &read, 403),
        row("system/Observation.rs", Method::GET, "Patient/no-such-id", 403),
        row("system/Observation.rs", Method::POST, "Patient/$validate", 403),
        // user/ scopes act like system/ ones for now.
        row("user/Patient.rs", Method::GET, &read, 200),
        row("user/Patient.rs", Method::GET, "Patient", 200),
        row("user/Patient.rs", Method::POST, "Patient", 403),
        row("user/Patient.rs", Method::GET, "Observation", 403),
        // Type-level history needs search; system-level history needs a wildcard.
        row("system/Patient.rs", Method::GET, "Patient/_history", 200),
        row("system/Patient.rs system/Observation.rs", Method::GET, "_history", 403),
    ];
    let mut failures = vec![];
    for r in rows {
        let token = app.token_with(r.scope);
        let body = matches!(r.method, Method::POST | Method::PUT).then(|| json!({"resourceType": "Patient"}));
        let got = status_with(&app, &token, r.method.clone(), &r.path, body).await;
        if got != r.status {
            failures.push(format!("{:?} {} {}: expected {}, got {got}", r.scope, r.method, r.path, r.status));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // A create-only scope cannot probe for existing resources through If-None-Exist.
    let token = app.token_with("system/Patient.c");
    let r = app
        .client
        .post(format!("{}/Patient", app.base))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=urn:test|1")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(r, 403).await;
    // None of the refused requests changed anything.
    assert_eq!(app.count("Patient").await, 1);
    assert_eq!(app.history_total("Patient").await, 1);
}
