//! Medication safety: interactions and allergies checked on every MedicationRequest write
//! (DetectedIssue, 409 for a high severity without an override reason) and as a CDS Hooks
//! service.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_outcome};

const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
const OVERRIDE: &str = "https://ironfhir.dev/fhir/StructureDefinition/interaction-override";

async fn patient(app: &TestApp) -> String {
    app.create(&json!({"resourceType": "Patient", "name": [{"family": "Synthpatient"}]})).await["id"].as_str().unwrap().to_owned()
}

fn request(patient: &str, code: &str, display: &str) -> Value {
    json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}]},
        "subject": {"reference": format!("Patient/{patient}")}})
}

#[tokio::test]
async fn a_high_severity_interaction_is_refused_unless_overridden_and_recorded_as_a_detected_issue() {
    let app = TestApp::spawn().await;
    let p = patient(&app).await;
    let warfarin = app.create(&request(&p, "855332", "Warfarin Sodium 5 MG Oral Tablet")).await;
    let aspirin = request(&p, "243670", "Aspirin 81 MG Oral Tablet");
    let outcome = expect_outcome(app.send_json(Method::POST, "MedicationRequest", &aspirin).await, 409).await;
    let said = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(said.contains("high-severity interaction") && said.contains(&format!("MedicationRequest/{}", warfarin["id"].as_str().unwrap())), "{said}");
    assert_eq!(app.count("MedicationRequest").await, 1);
    assert_eq!(app.count("DetectedIssue").await, 0, "a refused write leaves nothing");
    // Prescribed anyway, with a reason: stored, linked to the DetectedIssue that records it.
    let mut overridden = aspirin.clone();
    overridden["extension"] = json!([{"url": OVERRIDE, "valueString": "cardiology advice, INR monitored weekly"}]);
    let stored = app.create(&overridden).await;
    let link = stored["detectedIssue"][0]["reference"].as_str().expect("detectedIssue linked").to_owned();
    let issue = app.get_json(&link).await;
    assert_eq!(issue["severity"], "high");
    assert_eq!(issue["code"]["coding"][0]["code"], "DRG");
    assert_eq!(issue["patient"]["reference"], format!("Patient/{p}"));
    let implicated: Vec<&str> = issue["implicated"].as_array().unwrap().iter().map(|r| r["reference"].as_str().unwrap()).collect();
    assert_eq!(implicated, [format!("MedicationRequest/{}", stored["id"].as_str().unwrap()), format!("MedicationRequest/{}", warfarin["id"].as_str().unwrap())]);
    assert!(issue["mitigation"][0]["action"]["text"].as_str().unwrap().contains("INR monitored"));
    // Editing it without changing the medication records nothing new.
    let mut edited = stored.clone();
    edited["note"] = json!([{"text": "synthetic note"}]);
    app.put(edited).await;
    assert_eq!(app.count("DetectedIssue").await, 1);
    // Another patient's warfarin is no concern of this one's aspirin.
    let q = patient(&app).await;
    let other = app.create(&request(&q, "243670", "Aspirin 81 MG Oral Tablet")).await;
    assert!(other.get("detectedIssue").is_none());
}

#[tokio::test]
async fn moderate_interactions_and_allergies_are_recorded_and_a_critical_allergy_refused() {
    let app = TestApp::spawn().await;
    let p = patient(&app).await;
    app.create(&request(&p, "309362", "Clopidogrel 75 MG Oral Tablet")).await;
    let omeprazole = app.create(&request(&p, "402014", "Omeprazole 20 MG Delayed Release Oral Capsule")).await;
    let issue = app.get_json(omeprazole["detectedIssue"][0]["reference"].as_str().unwrap()).await;
    assert_eq!(issue["severity"], "moderate");
    // Asked for an OperationOutcome, the answer carries the finding as a warning.
    let q = patient(&app).await;
    app.create(&request(&q, "309362", "Clopidogrel 75 MG Oral Tablet")).await;
    let r = app
        .req(Method::POST, "MedicationRequest")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .body(request(&q, "402014", "Omeprazole 20 MG Delayed Release Oral Capsule").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let outcome: Value = r.json().await.unwrap();
    let warnings: Vec<&Value> = outcome["issue"].as_array().unwrap().iter().filter(|i| i["severity"] == "warning").collect();
    assert_eq!(warnings.len(), 1, "{outcome}");
    assert!(warnings[0]["diagnostics"].as_str().unwrap().contains("DetectedIssue/"));
    // Allergies: to amoxicillin (critical), to codeine (low criticality).
    for (text, criticality) in [("Amoxicillin", "high"), ("Codeine", "low")] {
        app.create(&json!({"resourceType": "AllergyIntolerance", "patient": {"reference": format!("Patient/{p}")}, "criticality": criticality,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "code": {"text": text}})).await;
    }
    let r = app.send_json(Method::POST, "MedicationRequest", &request(&p, "308182", "Amoxicillin 250 MG Oral Capsule")).await;
    let outcome = expect_outcome(r, 409).await;
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("high-severity allergy"));
    let codeine = app.create(&request(&p, "993781", "Acetaminophen 300 MG / Codeine Phosphate 30 MG Oral Tablet")).await;
    let issue = app.get_json(codeine["detectedIssue"][0]["reference"].as_str().unwrap()).await;
    assert_eq!((issue["severity"].as_str(), issue["code"]["coding"][0]["code"].as_str()), (Some("moderate"), Some("ALGY")));
}

#[tokio::test]
async fn the_check_answers_as_a_cds_hooks_service() {
    let app = TestApp::spawn().await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let discovery: Value = app.client.get(format!("{root}/cds-services")).send().await.unwrap().json().await.unwrap();
    let hooks: Vec<&str> = discovery["services"].as_array().unwrap().iter().map(|s| s["hook"].as_str().unwrap()).collect();
    assert_eq!(hooks, ["order-select", "order-sign"]);
    let p = patient(&app).await;
    app.create(&request(&p, "855332", "Warfarin Sodium 5 MG Oral Tablet")).await;
    let draft = |code: &str, display: &str| json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": request(&p, code, display)}]});
    let call = |service: &str, body: Value| app.client.post(format!("{root}/cds-services/{service}")).bearer_auth(&app.token).json(&body).send();
    // Without prefetch the service reads the patient's active medications itself.
    let r = call("medication-interactions", json!({"hook": "order-select", "hookInstance": "d1", "context": {"userId": "Practitioner/x", "patientId": p,
        "draftOrders": draft("5640", "ibuprofen")}})).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["cards"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["cards"][0]["indicator"], "critical");
    assert!(body["cards"][0]["summary"].as_str().unwrap().len() <= 140);
    // With prefetch the client's data is used; nothing interacting, no cards.
    let r = call("medication-interactions-sign", json!({"hook": "order-sign", "hookInstance": "d2", "context": {"userId": "Practitioner/x", "patientId": p,
        "draftOrders": draft("36567", "simvastatin")}, "prefetch": {"medications": {"resourceType": "Bundle", "type": "searchset", "entry": []}, "allergies": {"resourceType": "Bundle", "type": "searchset", "entry": []}}})).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["cards"], json!([]));
    // Refusals: no token, another hook than the service's, an unknown service.
    let r = app.client.post(format!("{root}/cds-services/medication-interactions")).json(&json!({"hook": "order-select"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(call("medication-interactions", json!({"hook": "order-sign", "context": {"patientId": p}})).await.unwrap().status(), 400);
    assert_eq!(call("no-such-service", json!({"hook": "order-select"})).await.unwrap().status(), 404);
}
