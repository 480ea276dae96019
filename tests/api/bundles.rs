//! batch and transaction Bundles (http.html#transaction): processing order, urn:uuid and
//! conditional references, atomicity, conditional entries, response shapes, limits, scopes and
//! concurrent transactions. Synthetic data only.

use base64::Engine;
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, expect_outcome};

const MRN: &str = "urn:test:mrn";

fn patient(mrn: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}], "name": [{"family": "Testperson"}]})
}

fn observation(subject: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "Test measurement"}, "subject": {"reference": subject}})
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

fn post(full_url: &str, resource: Value) -> Value {
    let rt = resource["resourceType"].as_str().unwrap().to_owned();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rt}})
}

fn put(url: &str, resource: Value) -> Value {
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

fn get(url: &str) -> Value {
    json!({"request": {"method": "GET", "url": url}})
}

fn delete(url: &str) -> Value {
    json!({"request": {"method": "DELETE", "url": url}})
}

fn urn() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

async fn submit(app: &TestApp, body: &Value) -> Response {
    app.send_json(Method::POST, "", body).await
}

/// Submits a Bundle with another token.
async fn submit_as(app: &TestApp, token: &str, body: &Value) -> Response {
    app.client
        .post(format!("{}/", app.base))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Submits a Bundle, asserts 200 and the response type, returns the response entries.
async fn submit_ok(app: &TestApp, body: &Value) -> Vec<Value> {
    let r = submit(app, body).await;
    let status = r.status();
    let response: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["resourceType"], "Bundle");
    let kind = body["type"].as_str().unwrap();
    assert_eq!(response["type"], format!("{kind}-response"));
    response["entry"].as_array().cloned().unwrap_or_default()
}

fn status(entry: &Value) -> &str {
    entry["response"]["status"].as_str().unwrap_or_else(|| panic!("no response.status in {entry}"))
}

/// `Patient/abc` from a response entry's `location` (`Patient/abc/_history/1`).
fn reference_of(entry: &Value) -> String {
    let location = entry["response"]["location"].as_str().unwrap_or_else(|| panic!("no location in {entry}"));
    let parts: Vec<&str> = location.split('/').collect();
    assert_eq!(parts.len(), 4, "{location}");
    assert_eq!(parts[2], "_history", "{location}");
    format!("{}/{}", parts[0], parts[1])
}

fn diagnostics(outcome: &Value) -> String {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{} {}", i["diagnostics"].as_str().unwrap_or(""), i["expression"]))
        .collect::<Vec<_>>()
        .join("; ")
}

fn binary_patch(ops: Value) -> Value {
    json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
        "data": base64::engine::general_purpose::STANDARD.encode(ops.to_string())})
}

// ---------------------------------------------------------------------------------------------
// References
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_transaction_rewrites_urn_uuid_references_to_the_ids_the_server_assigns() {
    let app = TestApp::spawn().await;
    let p = urn();
    let mut obs = observation(&p);
    obs["contained"] = json!([{"resourceType": "Specimen", "id": "s1", "subject": {"reference": p}}]);
    obs["specimen"] = json!({"reference": "#s1"});
    let entries = submit_ok(
        &app,
        &bundle("transaction", vec![
            post(&urn(), obs),
            post(&p, patient("urn-1")),
            get(&format!("Observation?subject={p}")),
        ]),
    )
    .await;
    assert_eq!(entries.len(), 3);
    assert_eq!(status(&entries[0]), "201 Created");
    assert_eq!(status(&entries[1]), "201 Created");
    let patient_ref = reference_of(&entries[1]);
    let stored = app.get_json(&reference_of(&entries[0])).await;
    assert_eq!(stored["subject"]["reference"], patient_ref.as_str());
    assert_eq!(stored["contained"][0]["subject"]["reference"], patient_ref.as_str(), "references in contained resources too");
    assert_eq!(stored["specimen"]["reference"], "#s1", "local references are left alone");
    assert_eq!(entries[0]["resource"]["subject"]["reference"], patient_ref.as_str(), "the response shows the stored resource");
    // The search in the same transaction named the patient by its fullUrl.
    assert_eq!(status(&entries[2]), "200 OK");
    assert_eq!(entries[2]["resource"]["type"], "searchset");
    assert_eq!(entries[2]["resource"]["total"], 1);
}

#[tokio::test]
async fn conditional_references_resolve_to_the_single_match_and_fail_with_412_otherwise() {
    let app = TestApp::spawn().await;
    let existing = app.create(&patient("cond-1")).await;
    let id = existing["id"].as_str().unwrap();
    app.create(&patient("twice")).await;
    app.create(&patient("twice")).await;

    let entries =
        submit_ok(&app, &bundle("transaction", vec![post(&urn(), observation(&format!("Patient?identifier={MRN}|cond-1")))])).await;
    let stored = app.get_json(&reference_of(&entries[0])).await;
    assert_eq!(stored["subject"]["reference"], format!("Patient/{id}"));

    for criteria in ["cond-none", "twice"] {
        let body = bundle("transaction", vec![
            post(&urn(), observation(&format!("Patient?identifier={MRN}|{criteria}"))),
            post(&urn(), patient("cond-rolled-back")),
        ]);
        let outcome = expect_outcome(submit(&app, &body).await, 412).await;
        assert!(diagnostics(&outcome).contains("Bundle.entry[0]"), "{outcome}");
    }
    assert_eq!(app.count("Observation").await, 1, "only the first transaction wrote");
    assert_eq!(app.count("Patient").await, 3);

    // In a batch only the entry with the unresolvable reference fails.
    let entries = submit_ok(
        &app,
        &bundle("batch", vec![
            post(&urn(), observation(&format!("Patient?identifier={MRN}|cond-none"))),
            post(&urn(), observation(&format!("Patient?identifier={MRN}|cond-1"))),
        ]),
    )
    .await;
    assert_eq!(status(&entries[0]), "412 Precondition Failed");
    assert_eq!(entries[0]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(status(&entries[1]), "201 Created");
}

// ---------------------------------------------------------------------------------------------
// Atomicity and processing order
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_transaction_with_one_invalid_entry_rolls_back_every_entry() {
    let app = TestApp::spawn().await;
    let p = urn();
    let invalid = json!({"resourceType": "Observation", "code": {"text": "Test measurement"}, "subject": {"reference": p}});
    let r = submit(&app, &bundle("transaction", vec![post(&p, patient("atomic-1")), post(&urn(), invalid)])).await;
    let outcome = expect_outcome(r, 422).await;
    let text = diagnostics(&outcome);
    assert!(text.contains("Bundle.entry[1]"), "the failing entry is named: {text}");
    assert!(!text.contains("Bundle.entry[0]"), "{text}");
    assert_eq!(app.count("Patient").await, 0, "the first entry's resource does not exist");
    assert_eq!(app.history_total("Patient").await, 0);

    // A failure found only while writing (an unknown resource to patch) rolls back too.
    let r = submit(
        &app,
        &bundle("transaction", vec![
            post(&urn(), patient("atomic-2")),
            json!({"resource": binary_patch(json!([{"op": "add", "path": "/active", "value": true}])),
                   "request": {"method": "PATCH", "url": "Patient/no-such-patient"}}),
        ]),
    )
    .await;
    let outcome = expect_outcome(r, 404).await;
    assert!(diagnostics(&outcome).contains("Bundle.entry[1]"), "{outcome}");
    assert_eq!(app.count("Patient").await, 0);
}

#[tokio::test]
async fn a_transaction_processes_deletes_then_creates_before_reads_and_searches() {
    let app = TestApp::spawn().await;
    let doomed = app.create(&patient("order-old")).await;
    let doomed_id = doomed["id"].as_str().unwrap();
    let entries = submit_ok(
        &app,
        &bundle("transaction", vec![
            get(&format!("Patient?_id={doomed_id}")),
            get(&format!("Patient?identifier={MRN}|order-new")),
            post(&urn(), patient("order-new")),
            delete(&format!("Patient/{doomed_id}")),
        ]),
    )
    .await;
    assert_eq!(entries[0]["resource"]["total"], 0, "the search ran after the delete");
    assert_eq!(entries[1]["resource"]["total"], 1, "the search ran after the create");
    assert_eq!(status(&entries[2]), "201 Created");
    assert_eq!(status(&entries[3]), "204 No Content");
    expect_outcome(app.get(&format!("Patient/{doomed_id}")).await, 410).await;
}

#[tokio::test]
async fn a_read_of_a_resource_the_same_transaction_deletes_fails_and_rolls_the_delete_back() {
    let app = TestApp::spawn().await;
    let kept = app.create(&patient("order-read")).await;
    let id = kept["id"].as_str().unwrap();
    let body = bundle("transaction", vec![get(&format!("Patient/{id}")), delete(&format!("Patient/{id}"))]);
    let outcome = expect_outcome(submit(&app, &body).await, 410).await;
    assert!(diagnostics(&outcome).contains("Bundle.entry[0]"), "{outcome}");
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["meta"]["versionId"], "1", "the delete was rolled back");
}

#[tokio::test]
async fn a_transaction_may_not_change_the_same_resource_twice() {
    let app = TestApp::spawn().await;
    let existing = app.create(&patient("twice-changed")).await;
    let id = existing["id"].as_str().unwrap();
    let body = bundle("transaction", vec![delete(&format!("Patient/{id}")), put(&format!("Patient/{id}"), existing.clone())]);
    let outcome = expect_outcome(submit(&app, &body).await, 400).await;
    assert!(diagnostics(&outcome).contains("Bundle.entry[1]"), "{outcome}");
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["meta"]["versionId"], "1");
}

// ---------------------------------------------------------------------------------------------
// Conditional and versioned entries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn if_none_exist_in_a_transaction_reuses_the_match_and_references_point_to_it() {
    let app = TestApp::spawn().await;
    let existing = app.create(&patient("ine-1")).await;
    let id = existing["id"].as_str().unwrap();
    let conditional_post = |full_url: &str, mrn: &str| {
        let mut e = post(full_url, patient(mrn));
        e["request"]["ifNoneExist"] = json!(format!("identifier={MRN}|{mrn}"));
        e
    };
    let (p1, p2) = (urn(), urn());
    let entries = submit_ok(
        &app,
        &bundle("transaction", vec![
            conditional_post(&p1, "ine-1"),
            conditional_post(&p2, "ine-2"),
            post(&urn(), observation(&p1)),
            post(&urn(), observation(&p2)),
        ]),
    )
    .await;
    assert_eq!(status(&entries[0]), "200 OK", "matched: nothing created");
    assert_eq!(reference_of(&entries[0]), format!("Patient/{id}"));
    assert_eq!(status(&entries[1]), "201 Created");
    let obs1 = app.get_json(&reference_of(&entries[2])).await;
    assert_eq!(obs1["subject"]["reference"], format!("Patient/{id}"));
    let obs2 = app.get_json(&reference_of(&entries[3])).await;
    assert_eq!(obs2["subject"]["reference"], reference_of(&entries[1]).as_str());
    assert_eq!(app.count("Patient").await, 2);
    assert_eq!(app.history_total("Patient").await, 2, "the matched patient got no new version");
}

#[tokio::test]
async fn a_stale_if_match_fails_the_transaction_with_412_and_rolls_back() {
    let app = TestApp::spawn().await;
    let mut current = app.create(&patient("if-match")).await;
    let id = current["id"].as_str().unwrap().to_owned();
    current["active"] = json!(true);
    let r = app.send_json(Method::PUT, &format!("Patient/{id}"), &current).await;
    assert_eq!(r.status(), 200);
    current["active"] = json!(false);

    let mut stale = put(&format!("Patient/{id}"), current.clone());
    stale["request"]["ifMatch"] = json!("W/\"1\"");
    let r = submit(&app, &bundle("transaction", vec![post(&urn(), patient("if-match-new")), stale])).await;
    let outcome = expect_outcome(r, 412).await;
    assert!(diagnostics(&outcome).contains("Bundle.entry[1]"), "{outcome}");
    assert_eq!(app.count("Patient").await, 1, "the POST was rolled back");
    let now = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(now["meta"]["versionId"], "2");
    assert_eq!(now["active"], true);

    let mut fresh = put(&format!("Patient/{id}"), current.clone());
    fresh["request"]["ifMatch"] = json!("W/\"2\"");
    let entries = submit_ok(&app, &bundle("transaction", vec![fresh])).await;
    assert_eq!(status(&entries[0]), "200 OK");
    assert_eq!(entries[0]["response"]["etag"], "W/\"3\"");
}

#[tokio::test]
async fn conditional_update_and_delete_entries_find_their_target_by_search() {
    let app = TestApp::spawn().await;
    let existing = app.create(&patient("cu-1")).await;
    let id = existing["id"].as_str().unwrap();
    let doomed = app.create(&patient("cd-1")).await;
    let mut changed = patient("cu-1");
    changed["active"] = json!(true);
    let p = urn();
    let mut conditional_put = put(&format!("Patient?identifier={MRN}|cu-1"), changed);
    conditional_put["fullUrl"] = json!(p);
    let entries = submit_ok(
        &app,
        &bundle("transaction", vec![
            conditional_put,
            delete(&format!("Patient?identifier={MRN}|cd-1")),
            put(&format!("Patient?identifier={MRN}|cu-new"), patient("cu-new")),
            post(&urn(), observation(&p)),
        ]),
    )
    .await;
    assert_eq!(status(&entries[0]), "200 OK");
    assert_eq!(reference_of(&entries[0]), format!("Patient/{id}"));
    assert_eq!(status(&entries[1]), "204 No Content");
    assert_eq!(status(&entries[2]), "201 Created");
    let obs = app.get_json(&reference_of(&entries[3])).await;
    assert_eq!(obs["subject"]["reference"], format!("Patient/{id}"), "a conditional PUT's fullUrl resolves to its match");
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["active"], true);
    expect_outcome(app.get(&format!("Patient/{}", doomed["id"].as_str().unwrap())).await, 410).await;
}

// ---------------------------------------------------------------------------------------------
// Batch
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_batch_answers_each_entry_with_its_own_status_and_a_failure_does_not_affect_the_others() {
    let app = TestApp::spawn().await;
    let existing = app.create(&patient("batch-1")).await;
    let id = existing["id"].as_str().unwrap();
    let mut stale = put(&format!("Patient/{id}"), existing.clone());
    stale["request"]["ifMatch"] = json!("W/\"7\"");
    let fhirpath_patch = json!({"resource": {"resourceType": "Parameters"}, "request": {"method": "PATCH", "url": format!("Patient/{id}")}});
    let entries = submit_ok(
        &app,
        &bundle("batch", vec![
            post(&urn(), patient("batch-new")),
            post(&urn(), json!({"resourceType": "Observation", "subject": {"reference": format!("Patient/{id}")}})),
            get("Patient/no-such-patient"),
            stale,
            fhirpath_patch,
            get(&format!("Patient/{id}")),
            json!({"request": {"method": "GET", "url": "NoSuchType/1"}}),
            json!({"request": {"method": "POST"}}),
        ]),
    )
    .await;
    let statuses: Vec<&str> = entries.iter().map(status).collect();
    assert_eq!(statuses, [
        "201 Created",
        "422 Unprocessable Entity",
        "404 Not Found",
        "412 Precondition Failed",
        "400 Bad Request",
        "200 OK",
        "404 Not Found",
        "400 Bad Request"
    ]);
    for failed in [1, 2, 3, 4, 6, 7] {
        assert_eq!(entries[failed]["response"]["outcome"]["resourceType"], "OperationOutcome", "entry {failed}");
        assert!(entries[failed].get("resource").is_none());
    }
    assert!(diagnostics(&entries[4]["response"]["outcome"]).contains("FHIRPath Patch"), "the unsupported patch format is named");
    assert_eq!(entries[5]["resource"]["id"], id);
    assert_eq!(app.count("Patient").await, 2, "the successful POST was kept");
    assert_eq!(app.count("Observation").await, 0);
    assert_eq!(app.get_json(&format!("Patient/{id}")).await["meta"]["versionId"], "1");
}

// ---------------------------------------------------------------------------------------------
// Response shapes
// ---------------------------------------------------------------------------------------------

fn assert_version_response(entry: &Value, status_line: &str, version: u32) {
    let response = &entry["response"];
    assert_eq!(response["status"], status_line, "{entry}");
    assert_eq!(response["etag"], format!("W/\"{version}\""), "{entry}");
    let last_modified = response["lastModified"].as_str().unwrap_or_else(|| panic!("lastModified in {entry}"));
    chrono::DateTime::parse_from_rfc3339(last_modified).expect("lastModified is an instant");
}

#[tokio::test]
async fn transaction_responses_carry_status_location_etag_and_last_modified_per_entry() {
    let app = TestApp::spawn().await;
    let updated = app.create(&patient("shape-update")).await;
    let uid = updated["id"].as_str().unwrap().to_owned();
    let patched = app.create(&patient("shape-patch")).await;
    let pid = patched["id"].as_str().unwrap().to_owned();
    let deleted = app.create(&patient("shape-delete")).await;
    let did = deleted["id"].as_str().unwrap().to_owned();
    let read = app.create(&patient("shape-read")).await;
    let rid = read["id"].as_str().unwrap().to_owned();
    let mut changed = updated.clone();
    changed["active"] = json!(true);
    let mut not_modified = get(&format!("Patient/{rid}"));
    not_modified["request"]["ifNoneMatch"] = json!("W/\"1\"");
    let entries = submit_ok(
        &app,
        &bundle("transaction", vec![
            post(&urn(), patient("shape-new")),
            put("Patient/shape-client-id", json!({"resourceType": "Patient", "id": "shape-client-id"})),
            put(&format!("Patient/{uid}"), changed),
            json!({"resource": binary_patch(json!([{"op": "add", "path": "/active", "value": false}])),
                   "request": {"method": "PATCH", "url": format!("Patient/{pid}")}}),
            delete(&format!("Patient/{did}")),
            get(&format!("Patient/{rid}")),
            not_modified,
            get(&format!("Patient/{uid}/_history/1")),
        ]),
    )
    .await;
    assert_eq!(entries.len(), 8);
    assert_version_response(&entries[0], "201 Created", 1);
    let location = entries[0]["response"]["location"].as_str().unwrap();
    assert!(location.starts_with("Patient/") && location.ends_with("/_history/1"), "{location}");
    assert!(entries[0]["fullUrl"].as_str().unwrap().ends_with(&reference_of(&entries[0])));
    assert_eq!(entries[0]["resource"]["meta"]["versionId"], "1");
    assert_version_response(&entries[1], "201 Created", 1);
    assert_eq!(entries[1]["response"]["location"], "Patient/shape-client-id/_history/1");
    assert_version_response(&entries[2], "200 OK", 2);
    assert_eq!(entries[2]["response"]["location"], format!("Patient/{uid}/_history/2"));
    assert_eq!(entries[2]["resource"]["active"], true);
    assert_version_response(&entries[3], "200 OK", 2);
    assert_eq!(entries[3]["resource"]["active"], false, "the JSON Patch from the Binary was applied");
    assert_eq!(status(&entries[4]), "204 No Content");
    assert_version_response(&entries[5], "200 OK", 1);
    assert_eq!(entries[5]["resource"]["id"], rid.as_str());
    assert_version_response(&entries[6], "304 Not Modified", 1);
    assert!(entries[6].get("resource").is_none());
    assert_eq!(entries[7]["resource"]["meta"]["versionId"], "1", "vread");
    assert!(entries[7]["resource"].get("active").is_none());
    assert_eq!(app.get_json(&format!("Patient/{pid}")).await["active"], false);
}

#[tokio::test]
async fn prefer_return_minimal_leaves_the_resources_out_of_a_batch_response() {
    let app = TestApp::spawn().await;
    let body = bundle("batch", vec![post(&urn(), patient("minimal-1")), put("Patient/minimal-2", json!({"resourceType": "Patient", "id": "minimal-2"}))]);
    let r = app
        .req(Method::POST, "")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let response: Value = r.json().await.unwrap();
    assert_eq!(response["type"], "batch-response");
    for entry in response["entry"].as_array().unwrap() {
        assert!(entry.get("resource").is_none(), "{entry}");
        assert_version_response(entry, "201 Created", 1);
        assert!(entry["response"]["location"].as_str().unwrap().ends_with("/_history/1"));
    }
}

#[tokio::test]
async fn a_post_to_the_base_that_is_not_a_batch_or_transaction_is_a_bad_request() {
    let app = TestApp::spawn().await;
    for body in [json!({"resourceType": "Bundle", "type": "collection"}), patient("not-a-bundle")] {
        expect_outcome(submit(&app, &body).await, 400).await;
    }
    // An empty transaction is fine and answers an empty transaction-response.
    assert!(submit_ok(&app, &json!({"resourceType": "Bundle", "type": "transaction"})).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Volume and limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_synthea_style_transaction_of_300_entries_completes_and_every_reference_resolves() {
    let app = TestApp::spawn().await;
    let org = app
        .create(&json!({"resourceType": "Organization", "identifier": [{"system": "urn:test:org", "value": "clinic-1"}], "name": "Test Clinic"}))
        .await;
    let org_ref = format!("Organization/{}", org["id"].as_str().unwrap());
    let patient_url = urn();
    let mut entries = vec![post(&patient_url, patient("synthea-1"))];
    let encounter_urls: Vec<String> = (0..49).map(|_| urn()).collect();
    for url in &encounter_urls {
        entries.push(post(
            url,
            json!({"resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": patient_url},
                "serviceProvider": {"reference": "Organization?identifier=urn:test:org|clinic-1"}}),
        ));
    }
    for i in 0..250 {
        let mut obs = observation(&patient_url);
        obs["encounter"] = json!({"reference": encounter_urls[i % encounter_urls.len()]});
        obs["valueQuantity"] = json!({"value": i, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"});
        entries.push(post(&urn(), obs));
    }
    assert_eq!(entries.len(), 300);
    let response = submit_ok(&app, &bundle("transaction", entries)).await;
    assert_eq!(response.len(), 300);
    assert!(response.iter().all(|e| status(e) == "201 Created"));
    let patient_ref = reference_of(&response[0]);
    let encounter_refs: std::collections::HashSet<String> = response[1..50].iter().map(reference_of).collect();
    assert_eq!(encounter_refs.len(), 49);

    let observations = app.get_json(&format!("Observation?subject={patient_ref}&_count=1000")).await;
    assert_eq!(observations["total"], 250);
    for entry in observations["entry"].as_array().unwrap() {
        let encounter = entry["resource"]["encounter"]["reference"].as_str().unwrap();
        assert!(encounter_refs.contains(encounter), "{encounter} is one of the created encounters");
    }
    let encounters = app.get_json(&format!("Encounter?subject={patient_ref}&_count=1000")).await;
    assert_eq!(encounters["total"], 49);
    for entry in encounters["entry"].as_array().unwrap() {
        assert_eq!(entry["resource"]["serviceProvider"]["reference"], org_ref.as_str());
    }
    assert!(!observations.to_string().contains("urn:uuid") && !encounters.to_string().contains("urn:uuid"), "no placeholder was stored");
}

#[tokio::test]
async fn a_bundle_with_more_entries_than_the_limit_is_refused_with_413() {
    let app = TestApp::spawn_with_bundle_limit(Options::default(), 5).await;
    let entries = |n: usize| (0..n).map(|i| post(&urn(), patient(&format!("limit-{i}")))).collect::<Vec<_>>();
    let outcome = expect_outcome(submit(&app, &bundle("transaction", entries(6))).await, 413).await;
    assert!(diagnostics(&outcome).contains('5'), "{outcome}");
    expect_outcome(submit(&app, &bundle("batch", entries(6))).await, 413).await;
    assert_eq!(app.count("Patient").await, 0);
    assert_eq!(submit_ok(&app, &bundle("transaction", entries(5))).await.len(), 5);
}

// ---------------------------------------------------------------------------------------------
// Authorisation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_entry_outside_the_token_scopes_fails_the_whole_transaction_with_403() {
    let app = TestApp::spawn().await;
    let token = app.token_with("system/Patient.cruds");
    let p = urn();
    let both = |kind: &str| bundle(kind, vec![post(&p, patient("scoped-1")), post(&urn(), observation(&p))]);
    let outcome = expect_outcome(submit_as(&app, &token, &both("transaction")).await, 403).await;
    assert!(diagnostics(&outcome).contains("Bundle.entry[1]"), "{outcome}");
    assert_eq!(app.count("Patient").await, 0, "nothing was written");
    assert_eq!(app.count("Observation").await, 0);

    // In a batch only the forbidden entry fails.
    let r = submit_as(&app, &token, &both("batch")).await;
    assert_eq!(r.status(), 200);
    let response: Value = r.json().await.unwrap();
    let statuses: Vec<&str> = response["entry"].as_array().unwrap().iter().map(status).collect();
    assert_eq!(statuses, ["201 Created", "403 Forbidden"]);
    assert_eq!(app.count("Observation").await, 0);

    // Reads and searches inside a Bundle need their scopes too.
    let read_only = app.token_with("system/Patient.r");
    let r = submit_as(&app, &read_only, &bundle("transaction", vec![get("Patient?identifier=x")])).await;
    expect_outcome(r, 403).await;
    let r = submit_as(&app, &read_only, &bundle("batch", vec![get("Patient?identifier=x")])).await;
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_transactions_updating_the_same_two_resources_in_opposite_order_leave_no_mixed_state() {
    let app = TestApp::spawn().await;
    let a = app.create(&patient("race-a")).await;
    let b = app.create(&patient("race-b")).await;
    let (aid, bid) = (a["id"].as_str().unwrap().to_owned(), b["id"].as_str().unwrap().to_owned());
    let write = |id: &str, mrn: &str, writer: &str| {
        let mut p = patient(mrn);
        p["id"] = json!(id);
        p["name"] = json!([{"family": writer}]);
        put(&format!("Patient/{id}"), p)
    };
    for round in 0..5 {
        let (t1, t2) = (format!("Writer-{round}-one"), format!("Writer-{round}-two"));
        // Other writes between the two contended ones widen the window in which each
        // transaction holds one row lock and waits for the other.
        let fillers = |writer: &str| (0..20).map(|i| write(&format!("{writer}-{i}"), &format!("filler-{i}"), writer)).collect::<Vec<_>>();
        let mut first = vec![write(&aid, "race-a", &t1)];
        first.extend(fillers(&t1));
        first.push(write(&bid, "race-b", &t1));
        let mut second = vec![write(&bid, "race-b", &t2)];
        second.extend(fillers(&t2));
        second.push(write(&aid, "race-a", &t2));
        let (first, second) = (bundle("transaction", first), bundle("transaction", second));
        let (r1, r2) = futures::future::join(submit(&app, &first), submit(&app, &second)).await;
        let mut succeeded = vec![];
        for (r, writer) in [(r1, &t1), (r2, &t2)] {
            match r.status().as_u16() {
                200 => succeeded.push(writer.clone()),
                409 => {
                    expect_outcome(r, 409).await;
                }
                other => panic!("round {round}: unexpected status {other}: {}", r.text().await.unwrap()),
            }
        }
        assert!(!succeeded.is_empty(), "round {round}: at least one transaction commits");
        let (now_a, now_b) = (app.get_json(&format!("Patient/{aid}")).await, app.get_json(&format!("Patient/{bid}")).await);
        let family = |p: &Value| p["name"][0]["family"].as_str().unwrap().to_owned();
        assert_eq!(family(&now_a), family(&now_b), "round {round}: both resources come from the same transaction");
        assert!(succeeded.contains(&family(&now_a)), "round {round}: the state is a committed transaction's");
        assert_eq!(now_a["meta"]["versionId"], now_b["meta"]["versionId"], "round {round}: every commit wrote both");
    }
}

#[tokio::test]
async fn the_capability_statement_advertises_transaction_and_batch() {
    let app = TestApp::spawn().await;
    let metadata = app.get_json("metadata").await;
    let system: Vec<&str> =
        metadata["rest"][0]["interaction"].as_array().unwrap().iter().filter_map(|i| i["code"].as_str()).collect();
    assert!(system.contains(&"transaction") && system.contains(&"batch"), "{system:?}");
}

#[tokio::test]
async fn a_transaction_can_be_sent_and_answered_in_xml() {
    let app = TestApp::spawn().await;
    let xml = r#"<Bundle xmlns="http://hl7.org/fhir">
  <type value="transaction"/>
  <entry>
    <fullUrl value="urn:uuid:0b5c7d3e-0000-4000-8000-000000000001"/>
    <resource><Patient><name><family value="Testperson"/></name></Patient></resource>
    <request><method value="POST"/><url value="Patient"/></request>
  </entry>
  <entry>
    <fullUrl value="urn:uuid:0b5c7d3e-0000-4000-8000-000000000002"/>
    <resource><Observation><status value="final"/><code><text value="Test measurement"/></code>
      <subject><reference value="urn:uuid:0b5c7d3e-0000-4000-8000-000000000001"/></subject></Observation></resource>
    <request><method value="POST"/><url value="Observation"/></request>
  </entry>
</Bundle>"#;
    let r = app
        .req(Method::POST, "")
        .header("content-type", "application/fhir+xml")
        .header("accept", "application/fhir+xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("<type value=\"transaction-response\"/>"), "{body}");
    assert_eq!(body.matches("<status value=\"201 Created\"/>").count(), 2, "{body}");
    let observations = app.get_json("Observation").await;
    let subject = observations["entry"][0]["resource"]["subject"]["reference"].as_str().unwrap();
    assert!(subject.starts_with("Patient/") && !subject.contains("urn:"), "{subject}");
}
