//! Every error the server promises is a status code plus an OperationOutcome
//! (http.html#2.21.0.13 "Error handling"), never a 5xx, and a rejected write leaves nothing behind.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, expect_outcome, issue_codes};

/// One request expected to fail.
struct Case {
    what: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
}

fn case(what: &'static str, method: Method, path: impl Into<String>, content_type: Option<&'static str>, body: impl Into<String>, status: u16) -> Case {
    Case { what, method, path: path.into(), content_type, body: body.into(), status }
}

async fn run(app: &TestApp, cases: Vec<Case>) {
    for c in cases {
        let mut req = app.req(c.method.clone(), &c.path);
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let r = req.body(c.body.clone()).send().await.unwrap();
        assert!(r.status().as_u16() < 500, "{}: server error {}", c.what, r.status());
        assert_eq!(r.status().as_u16(), c.status, "{} ({} {})", c.what, c.method, c.path);
        let outcome = expect_outcome(r, c.status).await;
        assert!(!issue_codes(&outcome).is_empty(), "{}: an issue with a code", c.what);
    }
}

const FHIR_JSON: Option<&str> = Some("application/fhir+json");

#[tokio::test]
async fn malformed_requests_answer_400_and_store_nothing() {
    let app = TestApp::spawn().await;
    let existing = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let id = existing["id"].as_str().unwrap().to_owned();
    let at = format!("Patient/{id}");
    let cases = vec![
        case("malformed JSON on create", Method::POST, "Patient", FHIR_JSON, r#"{"resourceType": "Patient","#, 400),
        case("malformed JSON on update", Method::PUT, &at, FHIR_JSON, "{not json", 400),
        case("a JSON array instead of a resource", Method::POST, "Patient", FHIR_JSON, "[1, 2]", 400),
        case("a JSON string instead of a resource", Method::POST, "Patient", FHIR_JSON, r#""Patient""#, 400),
        case("an empty body", Method::POST, "Patient", FHIR_JSON, "", 400),
        case("no resourceType", Method::POST, "Patient", FHIR_JSON, r#"{"active": true}"#, 400),
        case("resourceType differs from the URL on create", Method::POST, "Patient", FHIR_JSON, r#"{"resourceType": "Observation"}"#, 400),
        case("resourceType differs from the URL on update", Method::PUT, &at, FHIR_JSON, format!(r#"{{"resourceType": "Observation", "id": "{id}"}}"#), 400),
        case("id in the body differs from the URL", Method::PUT, &at, FHIR_JSON, r#"{"resourceType": "Patient", "id": "another-id"}"#, 400),
        case("update without an id in the body", Method::PUT, &at, FHIR_JSON, r#"{"resourceType": "Patient", "active": false}"#, 400),
        case("an id in the URL that breaks the id rules", Method::PUT, "Patient/bad_id!", FHIR_JSON, r#"{"resourceType": "Patient", "id": "bad_id!"}"#, 400),
        case("malformed XML", Method::POST, "Patient", Some("application/fhir+xml"), "<Patient xmlns=\"http://hl7.org/fhir\"><active", 400),
        case("a JSON Patch that is not an array of operations", Method::PATCH, &at, Some("application/json-patch+json"), r#"{"op": "add"}"#, 400),
        case("a JSON Patch with an unknown operation", Method::PATCH, &at, Some("application/json-patch+json"), r#"[{"op": "frobnicate", "path": "/active"}]"#, 400),
        case("a JSON Patch that is not JSON", Method::PATCH, &at, Some("application/json-patch+json"), "[{", 400),
        case("a malformed search date", Method::GET, "Patient?birthdate=yesterday", None, "", 400),
        case("a malformed _count", Method::GET, "Patient?_count=many", None, "", 400),
        case("a malformed _since", Method::GET, "Patient/_history?_since=yesterday", None, "", 400),
    ];
    run(&app, cases).await;
    assert_eq!(app.count("Patient").await, 1);
    assert_eq!(app.count("Observation").await, 0);
    assert_eq!(app.history_total("Patient").await, 1, "no new version of the existing resource");
}

#[tokio::test]
async fn unknown_types_ids_and_paths_answer_404() {
    let app = TestApp::spawn().await;
    let cases = vec![
        case("unknown type, instance", Method::GET, "Foo/1", None, "", 404),
        case("unknown type, search", Method::GET, "Foo", None, "", 404),
        case("unknown type, create", Method::POST, "Foo", FHIR_JSON, r#"{"resourceType": "Foo"}"#, 404),
        case("a data type is not a resource type", Method::GET, "HumanName", None, "", 404),
        case("type names are case-sensitive", Method::GET, "patient", None, "", 404),
        case("missing resource", Method::GET, "Patient/does-not-exist", None, "", 404),
        case("missing resource, history", Method::GET, "Patient/does-not-exist/_history", None, "", 404),
        case("missing resource, vread", Method::GET, "Patient/does-not-exist/_history/1", None, "", 404),
        case("missing resource, patch", Method::PATCH, "Patient/does-not-exist", Some("application/json-patch+json"), r#"[{"op": "add", "path": "/active", "value": true}]"#, 404),
        case("an invalid id can name no resource", Method::GET, "Patient/not$valid", None, "", 404),
        case("unknown path under /fhir", Method::GET, "Patient/1/_history/1/extra", None, "", 404),
        case("unknown operation", Method::POST, "Patient/$no-such-operation", FHIR_JSON, "{}", 404),
    ];
    run(&app, cases).await;
    // Outside /fhir: still an OperationOutcome.
    let r = app.client.get(format!("{}/no/such/path", app.base.trim_end_matches("/fhir"))).send().await.unwrap();
    expect_outcome(r, 404).await;
    assert_eq!(app.count("Patient").await, 0, "the PATCH of a missing resource did not create it");
}

#[tokio::test]
async fn a_deleted_resource_answers_410() {
    let app = TestApp::spawn().await;
    let created = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let id = created["id"].as_str().unwrap();
    assert!(app.req(Method::DELETE, &format!("Patient/{id}")).send().await.unwrap().status().is_success());
    let outcome = expect_outcome(app.get(&format!("Patient/{id}")).await, 410).await;
    assert_eq!(issue_codes(&outcome), ["deleted"]);
    let r = app
        .req(Method::PATCH, &format!("Patient/{id}"))
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op": "add", "path": "/active", "value": false}]"#)
        .send()
        .await
        .unwrap();
    expect_outcome(r, 410).await;
}

#[tokio::test]
async fn invalid_content_answers_422_with_the_expression_of_each_problem() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"resourceType": "Patient", "foo": 1}), "Patient.foo"),
        (json!({"resourceType": "Patient", "gender": "not-a-gender"}), "Patient.gender"),
        (json!({"resourceType": "Patient", "active": "yes"}), "Patient.active"),
        (json!({"resourceType": "Patient", "birthDate": "03/02/1980"}), "Patient.birthDate"),
        (json!({"resourceType": "Patient", "name": {"family": "Testperson"}}), "Patient.name"),
        (json!({"resourceType": "Patient", "name": [{"given": "Ann"}]}), "Patient.name[0].given"),
        (json!({"resourceType": "Observation", "code": {"text": "Testcode"}}), "Observation.status"),
    ];
    for (body, expression) in cases {
        let rt = body["resourceType"].as_str().unwrap();
        let outcome = expect_outcome(app.send_json(Method::POST, rt, &body).await, 422).await;
        let issues = outcome["issue"].as_array().unwrap();
        assert!(
            issues.iter().any(|i| i["severity"] == "error" && i["expression"].as_array().is_some_and(|e| e.iter().any(|e| e == expression))),
            "{expression}: {outcome}"
        );
    }
    // The same on update: nothing changes.
    let created = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let id = created["id"].as_str().unwrap();
    let r = app.send_json(Method::PUT, &format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id, "gender": "x"})).await;
    expect_outcome(r, 422).await;
    assert_eq!(app.count("Patient").await, 1);
    assert_eq!(app.count("Observation").await, 0);
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["meta"]["versionId"], "1");
}

#[tokio::test]
async fn unsupported_content_types_answer_415() {
    let app = TestApp::spawn().await;
    let created = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let at = format!("Patient/{}", created["id"].as_str().unwrap());
    let resource = created.to_string();
    let cases = vec![
        case("text/plain on create", Method::POST, "Patient", Some("text/plain"), resource.clone(), 415),
        case("text/plain on update", Method::PUT, &at, Some("text/plain"), resource.clone(), 415),
        case("a form on create", Method::POST, "Patient", Some("application/x-www-form-urlencoded"), "active=true", 415),
        case("a resource instead of a JSON Patch", Method::PATCH, &at, FHIR_JSON, resource.clone(), 415),
        case("a JSON Patch as plain JSON", Method::PATCH, &at, Some("text/plain"), r#"[{"op": "add", "path": "/active", "value": false}]"#, 415),
        case("a resource body on _search", Method::POST, "Patient/_search", FHIR_JSON, "{}", 415),
    ];
    run(&app, cases).await;
    assert_eq!(app.count("Patient").await, 1);
    assert_eq!(app.history_total("Patient").await, 1);
}

#[tokio::test]
async fn a_body_over_the_limit_answers_413_and_stores_nothing() {
    let app = TestApp::spawn_with(Options { max_body_bytes: 1000, ..Options::default() }).await;
    let big = json!({"resourceType": "Patient", "name": [{"family": "Testperson", "given": ["A".repeat(2000)]}]});
    let small = json!({"resourceType": "Patient", "name": [{"family": "Testperson"}]});
    let r = app.send_json(Method::POST, "Patient", &big).await;
    let outcome = expect_outcome(r, 413).await;
    assert_eq!(issue_codes(&outcome), ["too-costly"]);
    let created = app.create(&small).await;
    let id = created["id"].as_str().unwrap();
    let mut big_update = big.clone();
    big_update["id"] = json!(id);
    expect_outcome(app.send_json(Method::PUT, &format!("Patient/{id}"), &big_update).await, 413).await;
    assert_eq!(app.count("Patient").await, 1);
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["meta"]["versionId"], "1");
}

#[tokio::test]
async fn a_patch_that_makes_the_resource_invalid_answers_422_and_leaves_it_unchanged() {
    let app = TestApp::spawn().await;
    let created = app.create(&json!({"resourceType": "Patient", "gender": "female"})).await;
    let id = created["id"].as_str().unwrap();
    for (patch, status) in [
        (json!([{"op": "replace", "path": "/gender", "value": "not-a-gender"}]), 422),
        (json!([{"op": "add", "path": "/foo", "value": 1}]), 422),
        (json!([{"op": "remove", "path": "/gender"}, {"op": "add", "path": "/active", "value": "yes"}]), 422),
        // The patched body must still be the resource the URL names.
        (json!([{"op": "replace", "path": "/resourceType", "value": "Observation"}]), 400),
    ] {
        let r = app
            .req(Method::PATCH, &format!("Patient/{id}"))
            .header("content-type", "application/json-patch+json")
            .body(patch.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{patch}");
        expect_outcome(r, status).await;
    }
    let current = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(current["meta"]["versionId"], "1");
    assert_eq!(current["gender"], "female");
    assert_eq!(app.history_total("Patient").await, 1);
}

#[tokio::test]
async fn a_patch_that_cannot_be_applied_answers_an_outcome_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let created = app.create(&json!({"resourceType": "Patient", "gender": "female"})).await;
    let id = created["id"].as_str().unwrap();
    for patch in [
        json!([{"op": "test", "path": "/gender", "value": "male"}, {"op": "remove", "path": "/gender"}]),
        json!([{"op": "remove", "path": "/birthDate"}]),
    ] {
        let r = app
            .req(Method::PATCH, &format!("Patient/{id}"))
            .header("content-type", "application/json-patch+json")
            .body(patch.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{patch}: {}", r.status());
        let status = r.status().as_u16();
        expect_outcome(r, status).await;
    }
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["gender"], "female");
    assert_eq!(app.history_total("Patient").await, 1);
}

#[tokio::test]
async fn unsupported_methods_answer_405_with_an_operation_outcome() {
    let app = TestApp::spawn().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
    ]});
    let cases = vec![
        // POST at the base processes batch/transaction Bundles (bundles.rs); other methods do not.
        case("a Bundle PUT to the base", Method::PUT, "", FHIR_JSON, bundle.to_string(), 405),
        case("DELETE of a history", Method::DELETE, "Patient/1/_history", None, "", 405),
        case("POST to metadata", Method::POST, "metadata", FHIR_JSON, "{}", 405),
        case("a conditional delete without criteria", Method::DELETE, "Patient", None, "", 405),
    ];
    run(&app, cases).await;
    assert_eq!(app.count("Patient").await, 0, "nothing was written");
}

#[tokio::test]
async fn errors_are_rendered_in_the_requested_format() {
    let app = TestApp::spawn().await;
    let r = app.get("Patient/does-not-exist?_format=xml").await;
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+xml"));
    let body = r.text().await.unwrap();
    assert!(body.contains("<OperationOutcome xmlns=\"http://hl7.org/fhir\">"), "{body}");
    assert!(body.contains("not-found"), "{body}");
}

/// Diagnostics name elements, never the submitted values (error.rs: no PHI in error messages).
#[tokio::test]
async fn error_messages_do_not_echo_submitted_content() {
    let app = TestApp::spawn().await;
    let secret = "Testsecret-Diagnosis-1234";
    let bodies = [
        json!({"resourceType": "Patient", "gender": secret}),
        json!({"resourceType": "Patient", "birthDate": secret}),
        json!({"resourceType": "Patient", "name": [{"family": secret, "use": secret}]}),
    ];
    for body in bodies {
        let r = app.send_json(Method::POST, "Patient", &body).await;
        let text = r.text().await.unwrap();
        assert!(!text.contains(secret), "{text}");
    }
    let r = app.req(Method::POST, "Patient").header("content-type", "application/fhir+json").body(format!("{{\"x\": \"{secret}")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(!r.text().await.unwrap().contains(secret));
}

#[tokio::test]
async fn a_rejected_write_leaves_no_history_behind() {
    let app = TestApp::spawn().await;
    let before: Value = app.get_json("_history").await;
    assert_eq!(before["total"], 0);
    for body in [json!({"resourceType": "Patient", "foo": 1}), json!({"resourceType": "Observation"})] {
        let rt = body["resourceType"].as_str().unwrap();
        expect_outcome(app.send_json(Method::POST, rt, &body).await, 422).await;
    }
    expect_outcome(app.send_json(Method::PUT, "Patient/new-one", &json!({"resourceType": "Patient", "id": "new-one", "foo": 1})).await, 422).await;
    expect_outcome(app.get("Patient/new-one").await, 404).await;
    assert_eq!(app.get_json("_history").await["total"], 0);
}
