//! Conditional interactions (http.html#ccreate, #cond-update, #3.1.0.7.1 conditional delete,
//! conditional patch) and version-aware requests: `If-Match` (http.html#concurrency),
//! `If-None-Match` / `If-Modified-Since` (http.html#cread), and concurrent writers.

use chrono::{Duration, Utc};
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::helpers::{TestApp, entry_ids, expect_outcome};

const SYSTEM: &str = "urn:test:mrn";

fn patient_with(value: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}], "name": [{"family": "Testperson"}]})
}

async fn create_if_none_exist(app: &TestApp, body: &Value, criteria: &str) -> Response {
    app.req(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", criteria)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn json_patch(app: &TestApp, path: &str, patch: Value) -> Response {
    app.req(Method::PATCH, path).header("content-type", "application/json-patch+json").body(patch.to_string()).send().await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Conditional create
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn conditional_create_without_a_match_creates_the_resource() {
    let app = TestApp::spawn().await;
    app.create(&patient_with("other")).await;
    let r = create_if_none_exist(&app, &patient_with("1"), &format!("identifier={SYSTEM}|1")).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("location"));
    assert_eq!(app.count("Patient").await, 2);
}

#[tokio::test]
async fn conditional_create_with_one_match_returns_the_existing_resource_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let existing = app.create(&patient_with("1")).await;
    let mut body = patient_with("1");
    body["gender"] = json!("female");
    let r = create_if_none_exist(&app, &body, &format!("identifier={SYSTEM}|1")).await;
    assert_eq!(r.status(), 200);
    let returned: Value = r.json().await.unwrap();
    assert_eq!(returned["id"], existing["id"]);
    assert_eq!(returned["meta"]["versionId"], "1");
    assert!(returned.get("gender").is_none(), "the submitted body is not stored");
    assert_eq!(app.count("Patient").await, 1);
    assert_eq!(app.history_total("Patient").await, 1);
}

#[tokio::test]
async fn conditional_create_with_several_matches_returns_412_and_creates_nothing() {
    let app = TestApp::spawn().await;
    app.create(&patient_with("1")).await;
    app.create(&patient_with("1")).await;
    let r = create_if_none_exist(&app, &patient_with("1"), &format!("identifier={SYSTEM}|1")).await;
    expect_outcome(r, 412).await;
    assert_eq!(app.count("Patient").await, 2);
}

#[tokio::test]
async fn concurrent_conditional_creates_with_the_same_criteria_create_exactly_one_resource() {
    let app = TestApp::spawn().await;
    let criteria = format!("identifier={SYSTEM}|race");
    let body = patient_with("race");
    let responses = futures::future::join_all((0..8).map(|_| create_if_none_exist(&app, &body, &criteria))).await;
    let mut ids = vec![];
    let mut created = 0;
    for r in responses {
        let status = r.status().as_u16();
        assert!(status == 201 || status == 200, "status {status}");
        created += usize::from(status == 201);
        let body: Value = r.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created, 1, "exactly one request created the resource");
    ids.dedup();
    assert_eq!(ids.len(), 1, "every request answered with the same resource");
    let found = app.get_json(&format!("Patient?identifier={SYSTEM}|race")).await;
    assert_eq!(found["total"], 1);
}

// ---------------------------------------------------------------------------------------------
// Conditional update, delete, patch
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn conditional_update_creates_when_nothing_matches() {
    let app = TestApp::spawn().await;
    let r = app.send_json(Method::PUT, &format!("Patient?identifier={SYSTEM}|1"), &patient_with("1")).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["meta"]["versionId"], "1");
    assert_eq!(app.get_json(&format!("Patient?identifier={SYSTEM}|1")).await["total"], 1);
}

#[tokio::test]
async fn conditional_update_updates_the_single_match() {
    let app = TestApp::spawn().await;
    let existing = app.create(&patient_with("1")).await;
    app.create(&patient_with("2")).await;
    let mut body = patient_with("1");
    body["gender"] = json!("other");
    let r = app.send_json(Method::PUT, &format!("Patient?identifier={SYSTEM}|1"), &body).await;
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["id"], existing["id"]);
    assert_eq!(updated["meta"]["versionId"], "2");
    let read = app.get_json(&format!("Patient/{}", existing["id"].as_str().unwrap())).await;
    assert_eq!(read["gender"], "other");
    assert_eq!(app.count("Patient").await, 2);
}

#[tokio::test]
async fn conditional_update_with_several_matches_returns_412_and_changes_nothing() {
    let app = TestApp::spawn().await;
    app.create(&patient_with("1")).await;
    app.create(&patient_with("1")).await;
    let r = app.send_json(Method::PUT, &format!("Patient?identifier={SYSTEM}|1"), &patient_with("1")).await;
    expect_outcome(r, 412).await;
    assert_eq!(app.history_total("Patient").await, 2);
}

#[tokio::test]
async fn conditional_delete_deletes_a_single_match_and_refuses_several() {
    let app = TestApp::spawn().await;
    let one = app.create(&patient_with("1")).await;
    app.create(&patient_with("2")).await;
    app.create(&patient_with("2")).await;

    // No match: an ordinary delete of nothing (success, nothing deleted).
    let r = app.req(Method::DELETE, &format!("Patient?identifier={SYSTEM}|none")).send().await.unwrap();
    assert!(r.status() == 200 || r.status() == 204, "status {}", r.status());
    assert_eq!(app.history_total("Patient").await, 3);

    let r = app.req(Method::DELETE, &format!("Patient?identifier={SYSTEM}|1")).send().await.unwrap();
    assert!(r.status() == 200 || r.status() == 204, "status {}", r.status());
    expect_outcome(app.get(&format!("Patient/{}", one["id"].as_str().unwrap())).await, 410).await;

    let r = app.req(Method::DELETE, &format!("Patient?identifier={SYSTEM}|2")).send().await.unwrap();
    expect_outcome(r, 412).await;
    assert_eq!(app.count("Patient").await, 2, "a refused conditional delete deletes nothing");
}

#[tokio::test]
async fn conditional_patch_patches_a_single_match_and_refuses_none_or_several() {
    let app = TestApp::spawn().await;
    let one = app.create(&patient_with("1")).await;
    app.create(&patient_with("2")).await;
    app.create(&patient_with("2")).await;
    let patch = json!([{"op": "add", "path": "/active", "value": true}]);

    let r = json_patch(&app, &format!("Patient?identifier={SYSTEM}|1"), patch.clone()).await;
    assert_eq!(r.status(), 200);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["id"], one["id"]);
    assert_eq!(patched["active"], true);
    assert_eq!(patched["meta"]["versionId"], "2");

    // A patch cannot create: no match is 404 (as R5 spells out for conditional patch).
    expect_outcome(json_patch(&app, &format!("Patient?identifier={SYSTEM}|none"), patch.clone()).await, 404).await;
    expect_outcome(json_patch(&app, &format!("Patient?identifier={SYSTEM}|2"), patch).await, 412).await;
    assert_eq!(app.get_json("Patient?active=true").await["total"], 1);
    assert_eq!(app.history_total("Patient").await, 4);
}

// ---------------------------------------------------------------------------------------------
// If-Match (version-aware update)
// ---------------------------------------------------------------------------------------------

async fn put_if_match(app: &TestApp, path: &str, body: &Value, if_match: &str) -> Response {
    app.req(Method::PUT, path)
        .header("content-type", "application/fhir+json")
        .header("if-match", if_match)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn update_with_the_current_if_match_returns_200() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient_with("1")).await;
    let id = created["id"].as_str().unwrap();
    let r = put_if_match(&app, &format!("Patient/{id}"), &created, "W/\"1\"").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
}

#[tokio::test]
async fn update_with_stale_if_match_returns_412() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient_with("1")).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.send_json(Method::PUT, &format!("Patient/{id}"), &created).await.status(), 200);
    let mut stale = created.clone();
    stale["gender"] = json!("male");
    expect_outcome(put_if_match(&app, &format!("Patient/{id}"), &stale, "W/\"1\"").await, 412).await;
    let current = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(current["meta"]["versionId"], "2");
    assert!(current.get("gender").is_none());
    // The same guard on a JSON Patch.
    let r = app
        .req(Method::PATCH, &format!("Patient/{id}"))
        .header("content-type", "application/json-patch+json")
        .header("if-match", "W/\"1\"")
        .body(json!([{"op": "add", "path": "/gender", "value": "male"}]).to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(r, 412).await;
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["meta"]["versionId"], "2");
}

#[tokio::test]
async fn update_with_if_match_on_a_missing_resource_returns_412_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let r = put_if_match(&app, "Patient/not-there", &json!({"resourceType": "Patient", "id": "not-there"}), "W/\"1\"").await;
    expect_outcome(r, 412).await;
    expect_outcome(app.get("Patient/not-there").await, 404).await;
}

#[tokio::test]
async fn concurrent_updates_of_one_resource_all_succeed_with_consecutive_versions() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient_with("1")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("Patient/{id}");
    let responses = futures::future::join_all((0..10).map(|i| {
        let mut body = created.clone();
        body["name"][0]["given"] = json!([format!("Writer{i}")]);
        let path = path.clone();
        let app = &app;
        async move { app.send_json(Method::PUT, &path, &body).await }
    }))
    .await;
    let mut versions: Vec<i64> = vec![];
    for r in responses {
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        versions.push(body["meta"]["versionId"].as_str().unwrap().parse().unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=11).collect::<Vec<i64>>());
    let history = app.get_json(&format!("{path}/_history")).await;
    assert_eq!(history["total"], 11);
    assert_eq!(history["entry"].as_array().unwrap().len(), 11);
}

// ---------------------------------------------------------------------------------------------
// Conditional read
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn read_with_if_none_match_of_the_current_version_returns_304() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient_with("1")).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.send_json(Method::PUT, &format!("Patient/{id}"), &created).await.status(), 200);
    let read = |etag: &'static str| app.req(Method::GET, &format!("Patient/{id}")).header("if-none-match", etag).send();
    let r = read("W/\"2\"").await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    assert!(r.bytes().await.unwrap().is_empty());
    let r = read("W/\"1\"").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["meta"]["versionId"], "2");
}

#[tokio::test]
async fn read_with_if_modified_since_returns_304_unless_modified_after_it() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient_with("1")).await;
    let id = created["id"].as_str().unwrap();
    let http_date = |t: chrono::DateTime<Utc>| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let read = |since: String| app.req(Method::GET, &format!("Patient/{id}")).header("if-modified-since", since).send();
    let r = read(http_date(Utc::now() + Duration::hours(1))).await.unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = read(http_date(Utc::now() - Duration::hours(1))).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], id);
}

#[tokio::test]
async fn conditional_interactions_match_only_live_resources() {
    let app = TestApp::spawn().await;
    let gone = app.create(&patient_with("1")).await;
    let r = app.req(Method::DELETE, &format!("Patient/{}", gone["id"].as_str().unwrap())).send().await.unwrap();
    assert!(r.status().is_success());
    // The deleted resource does not count as a match: the conditional create creates.
    let r = create_if_none_exist(&app, &patient_with("1"), &format!("identifier={SYSTEM}|1")).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_ne!(created["id"], gone["id"]);
    assert_eq!(entry_ids(&app.get_json(&format!("Patient?identifier={SYSTEM}|1")).await), [created["id"].as_str().unwrap()]);
}
