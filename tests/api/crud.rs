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

/// What the body of a write response holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Body {
    Empty,
    Resource,
    Outcome,
}

#[tokio::test]
async fn prefer_return_chooses_the_body_of_create_and_update_responses() {
    let app = TestApp::spawn().await;
    let cases = [
        (None, Body::Resource),
        (Some("return=representation"), Body::Resource),
        (Some("return=minimal"), Body::Empty),
        (Some("return=OperationOutcome"), Body::Outcome),
        (Some("handling=lenient, return=minimal"), Body::Empty),
    ];
    for (prefer, expected) in cases {
        let mut create = app.req(Method::POST, "Patient").header("content-type", "application/fhir+json").body(patient().to_string());
        if let Some(prefer) = prefer {
            create = create.header("prefer", prefer);
        }
        let r = create.send().await.unwrap();
        assert_eq!(r.status(), 201, "{prefer:?}");
        // The headers are there whatever the body.
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let id = location.split("/Patient/").nth(1).unwrap().split('/').next().unwrap().to_owned();
        assert_eq!(r.headers()["etag"], "W/\"1\"", "{prefer:?}");
        assert!(r.headers().contains_key("last-modified"), "{prefer:?}");
        check_body(r, expected, prefer, &id).await;

        let mut update = app
            .req(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient", "id": id, "active": true}).to_string());
        if let Some(prefer) = prefer {
            update = update.header("prefer", prefer);
        }
        let r = update.send().await.unwrap();
        assert_eq!(r.status(), 200, "{prefer:?}");
        assert_eq!(r.headers()["etag"], "W/\"2\"", "{prefer:?}");
        assert!(r.headers()["location"].to_str().unwrap().ends_with(&format!("/Patient/{id}/_history/2")), "{prefer:?}");
        check_body(r, expected, prefer, &id).await;
        // Whatever came back, the write happened.
        assert_eq!(app.get_json(&format!("Patient/{id}")).await["active"], true, "{prefer:?}");
    }
}

async fn check_body(r: reqwest::Response, expected: Body, prefer: Option<&str>, id: &str) {
    let bytes = r.bytes().await.unwrap();
    let got = if bytes.is_empty() {
        Body::Empty
    } else {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        match body["resourceType"].as_str() {
            Some("Patient") => {
                assert_eq!(body["id"], id, "{prefer:?}");
                Body::Resource
            }
            Some("OperationOutcome") => Body::Outcome,
            _ => panic!("{prefer:?}: unexpected body {body}"),
        }
    };
    assert_eq!(got, expected, "{prefer:?}");
}

#[tokio::test]
async fn vread_of_a_deletion_answers_410_and_of_an_unknown_version_404() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    assert!(app.req(Method::DELETE, &format!("Patient/{id}")).send().await.unwrap().status().is_success());
    assert_eq!(app.get_json(&format!("Patient/{id}/_history/1")).await["name"][0]["family"], "Testperson");
    expect_outcome(app.get(&format!("Patient/{id}/_history/2")).await, 410).await;
    for version in ["3", "0", "abc"] {
        expect_outcome(app.get(&format!("Patient/{id}/_history/{version}")).await, 404).await;
    }
    // Deleting again changes nothing (http.html#delete: idempotent).
    assert!(app.req(Method::DELETE, &format!("Patient/{id}")).send().await.unwrap().status().is_success());
    assert_eq!(app.get_json(&format!("Patient/{id}/_history")).await["total"], 2);
}

#[tokio::test]
async fn a_minimal_valid_instance_of_diverse_resource_types_can_be_created_and_read_back() {
    let app = TestApp::spawn().await;
    let types = [
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "Testcode"}}),
        json!({"resourceType": "Encounter", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}),
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/test-1"}, "medicationCodeableConcept": {"text": "Testmedication"}}),
        json!({"resourceType": "Appointment", "status": "booked",
               "participant": [{"status": "accepted", "actor": {"reference": "Patient/test-1"}}]}),
        json!({"resourceType": "Slot", "schedule": {"reference": "Schedule/test-1"}, "status": "free",
               "start": "2030-01-01T09:00:00Z", "end": "2030-01-01T09:30:00Z"}),
        json!({"resourceType": "Schedule", "actor": [{"reference": "Practitioner/test-1"}]}),
        json!({"resourceType": "Task", "status": "requested", "intent": "order"}),
        json!({"resourceType": "Invoice", "status": "draft"}),
        json!({"resourceType": "Consent", "status": "active",
               "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
               "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]}),
        json!({"resourceType": "DocumentReference", "status": "current",
               "content": [{"attachment": {"contentType": "text/plain", "data": "VGVzdA=="}}]}),
        json!({"resourceType": "AuditEvent", "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
               "recorded": "2030-01-01T09:00:00Z", "agent": [{"requestor": true}], "source": {"observer": {"display": "Testsystem"}}}),
        json!({"resourceType": "Organization", "name": "Testorganisation"}),
        json!({"resourceType": "Questionnaire", "status": "draft", "item": [{"linkId": "1", "type": "string", "text": "Testquestion"}]}),
        json!({"resourceType": "Binary", "contentType": "text/plain", "data": "VGVzdA=="}),
        json!({"resourceType": "Bundle", "type": "collection"}),
    ];
    for body in types {
        let rt = body["resourceType"].as_str().unwrap();
        let r = app.send_json(Method::POST, rt, &body).await;
        let status = r.status();
        let created: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{rt}: {created}");
        let read = app.get_json(&format!("{rt}/{}", created["id"].as_str().unwrap())).await;
        assert_eq!(read, created, "{rt}");
        for (key, value) in body.as_object().unwrap() {
            assert_eq!(&read[key], value, "{rt}.{key} read back as sent");
        }
        // (The audit trail writes AuditEvents of its own: count only what was sent.)
        if rt != "AuditEvent" {
            assert_eq!(app.count(rt).await, 1, "{rt}");
        }
    }
}
