//! `$validate` (resource-operation-validate.html) at type and instance level, and profile
//! claims (`meta.profile`) enforced on writes.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_outcome};

const BODYWEIGHT: &str = "http://hl7.org/fhir/StructureDefinition/bodyweight";
const VITALSIGNS: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";

fn errors(outcome: &Value) -> Vec<&Value> {
    outcome["issue"].as_array().unwrap().iter().filter(|i| i["severity"] == "error" || i["severity"] == "fatal").collect()
}

fn expressions(outcome: &Value) -> Vec<String> {
    errors(outcome).iter().flat_map(|i| i["expression"].as_array().into_iter().flatten()).filter_map(|e| e.as_str().map(str::to_owned)).collect()
}

async fn validate(app: &TestApp, path: &str, body: &Value) -> Value {
    let r = app.send_json(Method::POST, path, body).await;
    let status = r.status();
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "$validate answers 200 whatever it finds: {outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    outcome
}

/// A body weight as the official profile wants it.
fn body_weight() -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/test-1"},
        "effectiveDateTime": "2020-01-01T10:00:00Z",
        "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    })
}

#[tokio::test]
async fn validate_of_a_valid_resource_answers_200_without_error_issues() {
    let app = TestApp::spawn().await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Testperson"}], "gender": "female", "birthDate": "1980-02-03"});
    let outcome = validate(&app, "Patient/$validate", &patient).await;
    assert!(errors(&outcome).is_empty(), "{outcome}");
    // Wrapped in Parameters, as the operation definition also allows.
    let parameters = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient}]});
    let outcome = validate(&app, "Patient/$validate", &parameters).await;
    assert!(errors(&outcome).is_empty(), "{outcome}");
    assert_eq!(app.count("Patient").await, 0, "$validate stores nothing");
}

#[tokio::test]
async fn validate_of_an_invalid_resource_answers_200_with_error_issues_and_expressions() {
    let app = TestApp::spawn().await;
    let invalid = json!({"resourceType": "Patient", "foo": 1, "gender": "not-a-gender", "active": "yes", "birthDate": "1980-13-01"});
    let outcome = validate(&app, "Patient/$validate", &invalid).await;
    let mut got = expressions(&outcome);
    got.sort();
    assert_eq!(got, ["Patient.active", "Patient.birthDate", "Patient.foo", "Patient.gender"], "{outcome}");
    let wrong_type = validate(&app, "Patient/$validate", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})).await;
    assert!(!errors(&wrong_type).is_empty(), "an Observation is not a valid Patient: {wrong_type}");
    assert_eq!(app.count("Patient").await, 0);
}

#[tokio::test]
async fn instance_validate_checks_a_body_against_the_instance_or_the_stored_resource() {
    let app = TestApp::spawn().await;
    let created = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let id = created["id"].as_str().unwrap();
    // The stored resource itself (no body).
    let r = app.req(Method::GET, &format!("Patient/{id}/$validate")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let outcome: Value = r.json().await.unwrap();
    assert!(errors(&outcome).is_empty(), "{outcome}");
    // A proposed update.
    let mut proposed = created.clone();
    proposed["gender"] = json!("not-a-gender");
    let outcome = validate(&app, &format!("Patient/{id}/$validate"), &proposed).await;
    assert_eq!(expressions(&outcome), ["Patient.gender"]);
    // A body whose id is another resource's.
    let mut other = created.clone();
    other["id"] = json!("another-id");
    let outcome = validate(&app, &format!("Patient/{id}/$validate"), &other).await;
    assert_eq!(expressions(&outcome), ["Patient.id"]);
    // Nothing changed.
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["meta"]["versionId"], "1");
    // An unknown instance.
    let r = app.req(Method::GET, "Patient/no-such-id/$validate").send().await.unwrap();
    expect_outcome(r, 404).await;
}

#[tokio::test]
async fn a_claimed_profile_is_enforced_on_create() {
    let app = TestApp::spawn().await;
    let mut claimed = body_weight();
    claimed["meta"] = json!({"profile": [VITALSIGNS]});
    claimed.as_object_mut().unwrap().remove("category");
    let outcome = expect_outcome(app.send_json(Method::POST, "Observation", &claimed).await, 422).await;
    assert!(expressions(&outcome).iter().any(|e| e == "Observation.category"), "{outcome}");
    assert_eq!(app.count("Observation").await, 0);
    // The same resource without the claim is a valid base Observation.
    claimed.as_object_mut().unwrap().remove("meta");
    assert_eq!(app.send_json(Method::POST, "Observation", &claimed).await.status(), 201);
    // And with the claim and a category it conforms.
    let mut conforming = body_weight();
    conforming["meta"] = json!({"profile": [BODYWEIGHT]});
    assert_eq!(app.send_json(Method::POST, "Observation", &conforming).await.status(), 201);
}

#[tokio::test]
async fn validate_against_a_requested_profile_reports_what_the_profile_adds() {
    let app = TestApp::spawn().await;
    let query = form_urlencoded::Serializer::new(String::new()).append_pair("profile", BODYWEIGHT).finish();
    let path = format!("Observation/$validate?{query}");
    let outcome = validate(&app, &path, &body_weight()).await;
    assert!(errors(&outcome).is_empty(), "{outcome}");
    // A heart rate code is not a body weight; kg is fine but the LOINC code is fixed.
    let mut wrong = body_weight();
    wrong["code"]["coding"][0]["code"] = json!("8867-4");
    let outcome = validate(&app, &path, &wrong).await;
    assert!(expressions(&outcome).iter().any(|e| e.starts_with("Observation.code")), "{outcome}");
    // Without the profile parameter the same Observation is valid.
    let outcome = validate(&app, "Observation/$validate", &wrong).await;
    assert!(errors(&outcome).is_empty(), "{outcome}");
    // An unknown profile is an error issue, not a pass.
    let unknown = form_urlencoded::Serializer::new(String::new()).append_pair("profile", "http://example.org/StructureDefinition/none").finish();
    let outcome = validate(&app, &format!("Observation/$validate?{unknown}"), &body_weight()).await;
    assert!(!errors(&outcome).is_empty(), "{outcome}");
}
