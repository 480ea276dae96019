//! Patient `$everything` (patient-operation-everything.html): the patient, its compartment as
//! the Patient CompartmentDefinition defines it, the resources it references as `include`,
//! `_type`, `_since`, `_count` paging and the scopes' filtering. Synthetic data only.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_outcome, link};

fn observation(id: &str, patient: &str) -> Value {
    json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
    })
}

/// Patient `pat-a` (with a practitioner and an organization), its encounters, observations,
/// conditions and a medication request; patient `pat-b` with one observation of its own.
async fn fixture(app: &TestApp) {
    app.put_new(json!({"resourceType": "Practitioner", "id": "gp-1", "name": [{"family": "Synthdoc"}]})).await;
    app.put_new(json!({"resourceType": "Organization", "id": "org-1", "name": "Synthetic Clinic"})).await;
    app.put_new(json!({"resourceType": "Practitioner", "id": "gp-unrelated", "name": [{"family": "Otherdoc"}]})).await;
    app.put_new(json!({
            "resourceType": "Patient", "id": "pat-a", "name": [{"family": "Testperson"}],
            "generalPractitioner": [{"reference": "Practitioner/gp-1"}],
            "managingOrganization": {"reference": "Organization/org-1"},
        }))
    .await;
    app.put_new(json!({"resourceType": "Patient", "id": "pat-b", "name": [{"family": "Otherperson"}]})).await;
    for e in ["enc-1", "enc-2"] {
        app.put_new(json!({
                "resourceType": "Encounter", "id": e, "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": "Patient/pat-a"},
            }))
        .await;
    }
    for o in ["obs-1", "obs-2", "obs-3"] {
        app.put_new(observation(o, "pat-a")).await;
    }
    app.put_new(observation("obs-other", "pat-b")).await;
    for c in ["cond-1", "cond-2"] {
        app.put_new(json!({
                "resourceType": "Condition", "id": c,
                "code": {"text": "synthetic condition"},
                "subject": {"reference": "Patient/pat-a"},
            }))
        .await;
    }
    app.put_new(json!({
            "resourceType": "MedicationRequest", "id": "medreq-1", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"text": "synthetic medication"},
            "subject": {"reference": "Patient/pat-a"},
        }))
    .await;
}

/// Everything of pat-a that the default (full access) token sees: `Type/id` → search mode.
fn expected_all() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Condition/cond-1", "match"),
        ("Condition/cond-2", "match"),
        ("Encounter/enc-1", "match"),
        ("Encounter/enc-2", "match"),
        ("MedicationRequest/medreq-1", "match"),
        ("Observation/obs-1", "match"),
        ("Observation/obs-2", "match"),
        ("Observation/obs-3", "match"),
        ("Organization/org-1", "include"),
        ("Patient/pat-a", "match"),
        ("Practitioner/gp-1", "include"),
    ]
}

/// `(Type/id, search.mode)` of the entries of a Bundle, in order.
fn entries(bundle: &Value) -> Vec<(String, String)> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let r = &e["resource"];
                    (
                        format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()),
                        e["search"]["mode"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn keys(bundle: &Value) -> Vec<String> {
    entries(bundle).into_iter().map(|(k, _)| k).collect()
}

async fn get_with(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.client.get(format!("{}/{path}", app.base)).bearer_auth(token).send().await.unwrap()
}

#[tokio::test]
async fn everything_returns_the_patient_its_compartment_and_the_resources_it_references_but_not_another_patients_data() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let bundle = app.get_json("Patient/pat-a/$everything?_count=100").await;
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
    let expected: Vec<(String, String)> = expected_all().into_iter().map(|(k, m)| (k.to_owned(), m.to_owned())).collect();
    assert_eq!(entries(&bundle), expected, "{bundle}");
    assert_eq!(bundle["total"], expected.len());
    assert!(!keys(&bundle).contains(&"Observation/obs-other".to_owned()));
    assert!(!keys(&bundle).contains(&"Patient/pat-b".to_owned()));
    assert!(link(&bundle, "next").is_none());
    for e in bundle["entry"].as_array().unwrap() {
        let r = &e["resource"];
        assert_eq!(e["fullUrl"], format!("{}/{}/{}", app.base, r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn everything_also_answers_a_post_without_a_body() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let r = app.req(Method::POST, "Patient/pat-a/$everything?_count=100").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bundle: Value = r.json().await.unwrap();
    assert_eq!(keys(&bundle).len(), expected_all().len(), "{bundle}");
}

#[tokio::test]
async fn the_type_parameter_restricts_the_result_to_the_listed_types() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let bundle = app.get_json("Patient/pat-a/$everything?_type=Observation").await;
    assert_eq!(keys(&bundle), ["Observation/obs-1", "Observation/obs-2", "Observation/obs-3"], "{bundle}");
    let bundle = app.get_json("Patient/pat-a/$everything?_type=Patient,Condition").await;
    assert_eq!(keys(&bundle), ["Condition/cond-1", "Condition/cond-2", "Patient/pat-a"], "{bundle}");
    expect_outcome(app.get("Patient/pat-a/$everything?_type=NoSuchType").await, 400).await;
}

#[tokio::test]
async fn the_since_parameter_keeps_only_resources_updated_at_or_after_the_instant() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = app.put_new(observation("obs-late", "pat-a")).await;
    let since = late["meta"]["lastUpdated"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let updated = app
        .send_json(Method::PUT, "Condition/cond-2", &json!({
            "resourceType": "Condition", "id": "cond-2",
            "code": {"text": "synthetic condition, revised"},
            "subject": {"reference": "Patient/pat-a"},
        }))
        .await;
    assert_eq!(updated.status(), 200);
    let query = form_urlencoded::Serializer::new(String::new()).append_pair("_since", &since).finish();
    let bundle = app.get_json(&format!("Patient/pat-a/$everything?{query}")).await;
    assert_eq!(keys(&bundle), ["Condition/cond-2", "Observation/obs-late"], "{bundle}");
    expect_outcome(app.get("Patient/pat-a/$everything?_since=yesterday").await, 400).await;
}

#[tokio::test]
async fn count_paging_with_next_links_visits_every_resource_exactly_once() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let mut page = app.get_json("Patient/pat-a/$everything?_count=2").await;
    let mut seen: Vec<String> = vec![];
    let mut pages = 0;
    loop {
        pages += 1;
        let ks = keys(&page);
        assert!(ks.len() <= 2, "{page}");
        assert_eq!(page["total"], expected_all().len());
        seen.extend(ks);
        let Some(next) = link(&page, "next") else { break };
        assert!(next.contains("_count=2"), "{next}");
        page = app.client.get(&next).bearer_auth(&app.token).send().await.unwrap().json().await.unwrap();
        assert!(pages < 20, "paging does not end");
    }
    let expected: Vec<String> = expected_all().into_iter().map(|(k, _)| k.to_owned()).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, expected.len().div_ceil(2));
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
}

#[tokio::test]
async fn an_unknown_patient_is_404_a_deleted_one_410_and_other_types_have_no_everything() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    expect_outcome(app.get("Patient/no-such-patient/$everything").await, 404).await;
    let r = app.req(Method::DELETE, "Patient/pat-b").send().await.unwrap();
    assert!(r.status().is_success());
    expect_outcome(app.get("Patient/pat-b/$everything").await, 410).await;
    expect_outcome(app.get("Observation/obs-1/$everything").await, 404).await;
}

#[tokio::test]
async fn a_token_limited_to_patients_and_observations_gets_only_those() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let token = app.token_with("system/Patient.rs system/Observation.rs");
    let r = get_with(&app, &token, "Patient/pat-a/$everything?_count=100").await;
    assert_eq!(r.status(), 200);
    let bundle: Value = r.json().await.unwrap();
    assert_eq!(keys(&bundle), ["Observation/obs-1", "Observation/obs-2", "Observation/obs-3", "Patient/pat-a"], "{bundle}");
}

#[tokio::test]
async fn a_token_that_may_not_read_the_patient_is_refused() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let token = app.token_with("system/Observation.rs");
    expect_outcome(get_with(&app, &token, "Patient/pat-a/$everything").await, 403).await;
}

#[tokio::test]
async fn the_capability_statement_lists_everything_on_patient_only() {
    let app = TestApp::spawn().await;
    let cs = app.get_json("metadata").await;
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let has_everything = |rt: &str| {
        resources.iter().find(|r| r["type"] == rt).unwrap()["operation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "everything" && o["definition"] == "http://hl7.org/fhir/OperationDefinition/Patient-everything")
    };
    assert!(has_everything("Patient"));
    assert!(!has_everything("Observation"));
}
