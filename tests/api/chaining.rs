//! Chained parameters, reverse chaining (`_has`), `_include` and `_revinclude`
//! (search.html#chaining, #has, #include) — and that none of them reaches past the token's
//! scopes.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::TestApp;

fn observation(id: &str, subject: &str, code: &str, encounter: Option<&str>) -> Value {
    let mut o = json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": subject}});
    if let Some(e) = encounter {
        o["encounter"] = json!({"reference": e});
    }
    o
}

/// org1 ← p1 (Chainfamily) ← o1, o3 (absolute reference), e1 ← o4; p2 (Otherfamily) ← o2.
async fn fixture(app: &TestApp) {
    app.put(json!({"resourceType": "Organization", "id": "org1", "name": "Acme Synthetic Clinic"})).await;
    app.put(json!({"resourceType": "Organization", "id": "org2", "name": "Other Synthetic Clinic"})).await;
    app.put(json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Chainfamily"}],
                    "managingOrganization": {"reference": "Organization/org1"}}))
    .await;
    app.put(json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Otherfamily"}],
                    "managingOrganization": {"reference": "Organization/org2"}}))
    .await;
    app.put(json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": "Patient/p1"}}))
    .await;
    app.put(observation("o1", "Patient/p1", "1234-5", None)).await;
    app.put(observation("o2", "Patient/p2", "1234-5", None)).await;
    app.put(observation("o3", &format!("{}/Patient/p1", app.base), "9999-9", None)).await;
    app.put(observation("o4", "Patient/p1", "5555-5", Some("Encounter/e1"))).await;
}

/// (mode, Type/id) of every entry, sorted.
async fn search_as(app: &TestApp, token: &str, query: &str) -> (u16, Vec<(String, String)>) {
    let r = app.client.get(format!("{}/{query}", app.base)).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    let mut entries: Vec<(String, String)> = body["entry"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|e| e["search"]["mode"] != "outcome")
                .map(|e| {
                    let r = &e["resource"];
                    (e["search"]["mode"].as_str().unwrap_or("").to_owned(), format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()))
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    (status, entries)
}

async fn search(app: &TestApp, query: &str) -> Vec<(String, String)> {
    let (status, entries) = search_as(app, &app.token, query).await;
    assert_eq!(status, 200, "{query}");
    entries
}

fn m(refs: &[&str]) -> Vec<(String, String)> {
    entries(refs.iter().map(|r| ("match", *r)).collect())
}

fn entries(list: Vec<(&str, &str)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = list.into_iter().map(|(a, b)| (a.to_owned(), b.to_owned())).collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_chained_parameter_matches_through_the_reference_with_or_without_a_type_modifier() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    // o3 refers to p1 by its absolute URL on this server: the same resource.
    assert_eq!(search(&app, "Observation?subject:Patient.name=chainfam").await, m(&["Observation/o1", "Observation/o3", "Observation/o4"]));
    assert_eq!(search(&app, "Observation?subject.name=chainfam").await, m(&["Observation/o1", "Observation/o3", "Observation/o4"]));
    assert_eq!(search(&app, "Observation?patient.name=otherfamily").await, m(&["Observation/o2"]));
    assert_eq!(search(&app, "Observation?subject:Patient.name:exact=Chainfamily&code=1234-5").await, m(&["Observation/o1"]));
    assert_eq!(search(&app, "Observation?subject:Patient.name=nobody").await, m(&[]));
    // Chains of any depth: observation → patient → managing organisation.
    assert_eq!(search(&app, "Observation?subject:Patient.organization.name=acme").await, m(&["Observation/o1", "Observation/o3", "Observation/o4"]));
    assert_eq!(search(&app, "Observation?subject:Patient.organization.name=other").await, m(&["Observation/o2"]));
    // Chained _id and OR values.
    assert_eq!(search(&app, "Observation?subject:Patient._id=p2").await, m(&["Observation/o2"]));
    assert_eq!(search(&app, "Observation?subject:Patient.name=otherfam,chainfam&code=1234-5").await, m(&["Observation/o1", "Observation/o2"]));
}

#[tokio::test]
async fn chains_on_unknown_or_non_reference_parameters_are_ignored_or_refused_when_strict() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let all = m(&["Observation/o1", "Observation/o2", "Observation/o3", "Observation/o4"]);
    assert_eq!(search(&app, "Observation?subject:Patient.nosuchparam=x").await, all);
    // The ignored parameter is reported in an OperationOutcome entry with mode outcome.
    let body: Value = app.get("Observation?subject:Patient.nosuchparam=x").await.json().await.unwrap();
    let outcome = body["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").expect("an outcome entry");
    assert_eq!(outcome["resource"]["resourceType"], "OperationOutcome");
    assert!(outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("subject:Patient.nosuchparam"));
    assert_eq!(body["total"], 4, "the outcome entry is not a match");
    let r = app.req(Method::GET, "Observation?subject:Patient.nosuchparam=x").header("prefer", "handling=strict").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(app.get("Observation?code.name=x").await.status(), 400, "code is a token, not a reference");
    assert_eq!(app.get("Observation?subject:Medication.name=x").await.status(), 400, "not a target type of subject");
}

#[tokio::test]
async fn has_finds_resources_referenced_by_matching_resources_and_nests() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    assert_eq!(search(&app, "Patient?_has:Observation:patient:code=9999-9").await, m(&["Patient/p1"]));
    assert_eq!(search(&app, "Patient?_has:Observation:patient:code=1234-5").await, m(&["Patient/p1", "Patient/p2"]));
    assert_eq!(search(&app, "Patient?_has:Observation:subject:code=0000-0").await, m(&[]));
    // Patients with an encounter that has an observation coded 5555-5.
    assert_eq!(search(&app, "Patient?_has:Encounter:patient:_has:Observation:encounter:code=5555-5").await, m(&["Patient/p1"]));
    // Organisations managing a patient who has a 1234-5 observation… narrowed by name.
    assert_eq!(search(&app, "Organization?_has:Patient:organization:name=otherfam").await, m(&["Organization/org2"]));
    assert_eq!(app.get("Patient?_has:NoSuchType:patient:code=1").await.status(), 400);
}

#[tokio::test]
async fn include_adds_the_referenced_resources_once_with_mode_include() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    assert_eq!(
        search(&app, "Observation?code=1234-5&_include=Observation:subject").await,
        entries(vec![("match", "Observation/o1"), ("match", "Observation/o2"), ("include", "Patient/p1"), ("include", "Patient/p2")])
    );
    // o1 and o3 both point at p1 (relative and absolute): it is included once.
    assert_eq!(
        search(&app, "Observation?subject=Patient/p1&code=1234-5,9999-9&_include=Observation:patient").await,
        entries(vec![("match", "Observation/o1"), ("match", "Observation/o3"), ("include", "Patient/p1")])
    );
    // A target type restricts what is followed.
    assert_eq!(search(&app, "Observation?_id=o1&_include=Observation:subject:Group").await, m(&["Observation/o1"]));
    // Without :iterate the organisation of the included patient is not followed…
    assert_eq!(
        search(&app, "Observation?_id=o1&_include=Observation:subject&_include=Patient:organization").await,
        entries(vec![("match", "Observation/o1"), ("include", "Patient/p1")])
    );
    // …with :iterate it is.
    assert_eq!(
        search(&app, "Observation?_id=o1&_include=Observation:subject&_include:iterate=Patient:organization").await,
        entries(vec![("match", "Observation/o1"), ("include", "Patient/p1"), ("include", "Organization/org1")])
    );
    // `*`: every reference parameter.
    assert_eq!(
        search(&app, "Observation?_id=o4&_include=Observation:*").await,
        entries(vec![("match", "Observation/o4"), ("include", "Patient/p1"), ("include", "Encounter/e1")])
    );
    // Includes do not count towards the total.
    let body: Value = app.get("Observation?code=1234-5&_include=Observation:subject").await.json().await.unwrap();
    assert_eq!(body["total"], 2);
}

#[tokio::test]
async fn revinclude_adds_the_resources_that_reference_the_matches() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    assert_eq!(
        search(&app, "Patient?_id=p1&_revinclude=Observation:subject").await,
        entries(vec![("match", "Patient/p1"), ("include", "Observation/o1"), ("include", "Observation/o3"), ("include", "Observation/o4")])
    );
    assert_eq!(
        search(&app, "Organization?_id=org2&_revinclude=Patient:organization&_revinclude:iterate=Observation:patient").await,
        entries(vec![("match", "Organization/org2"), ("include", "Patient/p2"), ("include", "Observation/o2")])
    );
}

#[tokio::test]
async fn chains_has_and_includes_never_reach_types_the_token_may_not_read() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let observations_only = app.token_with("system/Observation.rs");
    // A chain into Patient would reveal patient names through which observations match.
    let (status, _) = search_as(&app, &observations_only, "Observation?subject:Patient.name=chainfam").await;
    assert_eq!(status, 403);
    let patients_only = app.token_with("system/Patient.rs");
    let (status, _) = search_as(&app, &patients_only, "Patient?_has:Observation:patient:code=9999-9").await;
    assert_eq!(status, 403);
    // Includes of types the token cannot read are left out, not leaked.
    let (status, found) = search_as(&app, &observations_only, "Observation?_id=o1&_include=Observation:subject").await;
    assert_eq!(status, 200);
    assert_eq!(found, m(&["Observation/o1"]));
    let (status, found) = search_as(&app, &patients_only, "Patient?_id=p1&_revinclude=Observation:subject").await;
    assert_eq!(status, 200);
    assert_eq!(found, m(&["Patient/p1"]));
}

#[tokio::test]
async fn a_transaction_search_entry_honours_include_too() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation?_id=o1&_include=Observation:subject"}}]});
    let r = app.send_json(Method::POST, "", &bundle).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let inner = &body["entry"][0]["resource"];
    let modes: Vec<&str> = inner["entry"].as_array().unwrap().iter().map(|e| e["search"]["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["match", "include"]);
}
