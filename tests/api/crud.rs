//! create, read, vread, update, update-as-create, patch, delete (http.html).

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, expect_outcome};

fn patient() -> serde_json::Value {
    json!({"resourceType": "Patient", "name": [{"family": "Testperson", "given": ["Ann"]}], "gender": "female"})
}

#[tokio::test]
async fn create_assigns_id_version_and_returns_location_etag_and_last_modified() {
    let app = TestApp::spawn().await;
    let r = app.send_json(Method::POST, "Patient", &json!({"resourceType": "Patient", "id": "client-id", "active": true})).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    assert!(r.headers().contains_key("last-modified"));
    let body: serde_json::Value = r.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_ne!(id, "client-id", "a client id on create is ignored (http.html#create)");
    assert!(location.ends_with(&format!("/Patient/{id}/_history/1")), "{location}");
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn read_returns_the_current_version_and_vread_every_version() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    let mut changed = created.clone();
    changed["gender"] = json!("male");
    let r = app.send_json(Method::PUT, &format!("Patient/{id}"), &changed).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    let current: serde_json::Value = app.get(&format!("Patient/{id}")).await.json().await.unwrap();
    assert_eq!(current["gender"], "male");
    assert_eq!(current["meta"]["versionId"], "2");
    let v1: serde_json::Value = app.get(&format!("Patient/{id}/_history/1")).await.json().await.unwrap();
    assert_eq!(v1["gender"], "female");
    expect_outcome(app.get(&format!("Patient/{id}/_history/3")).await, 404).await;
}

#[tokio::test]
async fn update_with_a_new_client_id_creates_the_resource() {
    let app = TestApp::spawn().await;
    let r = app.send_json(Method::PUT, "Patient/new-1", &json!({"resourceType": "Patient", "id": "new-1", "active": true})).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers()["location"].to_str().unwrap().ends_with("/Patient/new-1/_history/1"));
    assert_eq!(app.get("Patient/new-1").await.status(), 200);
}

#[tokio::test]
async fn delete_makes_reads_answer_410_and_a_later_update_revives_it() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    let r = app.req(Method::DELETE, &format!("Patient/{id}")).send().await.unwrap();
    assert!(r.status() == 200 || r.status() == 204);
    expect_outcome(app.get(&format!("Patient/{id}")).await, 410).await;
    expect_outcome(app.get(&format!("Patient/{id}/_history/2")).await, 410).await;
    let r = app.send_json(Method::PUT, &format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["etag"], "W/\"3\"");
}

#[tokio::test]
async fn json_patch_changes_the_resource_and_bumps_the_version() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    let r = app
        .req(Method::PATCH, &format!("Patient/{id}"))
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/gender", "value": "other"}, {"op": "add", "path": "/active", "value": true}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["gender"], "other");
    assert_eq!(body["active"], true);
    assert_eq!(body["meta"]["versionId"], "2");
}
