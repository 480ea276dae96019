//! Prescriptions to the pharmacy: dispenses only against an active, unexpired prescription and
//! within its repeats (also when pharmacies race); refill requests from patients; Task status
//! transitions.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_outcome};

const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

async fn patient(app: &TestApp) -> String {
    app.create(&json!({"resourceType": "Patient", "name": [{"family": "Synthpatient"}]})).await["id"].as_str().unwrap().to_owned()
}

async fn prescription(app: &TestApp, patient: &str, repeats: i64, extra: Value) -> String {
    let mut body = json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197361", "display": "Amlodipine 5 MG Oral Tablet"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "dispenseRequest": {"numberOfRepeatsAllowed": repeats, "quantity": {"value": 30}}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.create(&body).await["id"].as_str().unwrap().to_owned()
}

fn dispense(patient: &str, request: &str, status: &str) -> Value {
    json!({"resourceType": "MedicationDispense", "status": status,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197361"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "authorizingPrescription": [{"reference": format!("MedicationRequest/{request}")}]})
}

#[tokio::test]
async fn dispenses_stop_at_the_authorised_repeats_and_never_run_against_a_closed_prescription() {
    let app = TestApp::spawn().await;
    let p = patient(&app).await;
    let rx = prescription(&app, &p, 1, json!({})).await;
    // The first fill and one repeat; a cancelled dispense uses nothing up.
    app.create(&dispense(&p, &rx, "completed")).await;
    app.create(&dispense(&p, &rx, "cancelled")).await;
    app.create(&dispense(&p, &rx, "in-progress")).await;
    let r = app.send_json(Method::POST, "MedicationDispense", &dispense(&p, &rx, "completed")).await;
    let outcome = expect_outcome(r, 409).await;
    let said = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(said.contains("authorises 2 dispense(s)") && said.contains("2 were already made"), "{said}");
    assert_eq!(app.count("MedicationDispense").await, 3);
    // Turning a cancelled dispense back into a completed one is a new fill: refused too.
    let cancelled = app.get_json(&format!("MedicationDispense?status=cancelled&prescription=MedicationRequest/{rx}")).await["entry"][0]["resource"].clone();
    let mut revived = cancelled.clone();
    revived["status"] = json!("completed");
    expect_outcome(app.send_json(Method::PUT, &format!("MedicationDispense/{}", cancelled["id"].as_str().unwrap()), &revived).await, 409).await;
    // Updating an existing fill (in-progress → completed) is not a new one.
    let mut running = app.get_json(&format!("MedicationDispense?status=in-progress&prescription=MedicationRequest/{rx}")).await["entry"][0]["resource"].clone();
    running["status"] = json!("completed");
    app.put(running).await;

    // Stopped, expired, unknown prescriptions.
    let stopped = prescription(&app, &p, 5, json!({"status": "stopped"})).await;
    let outcome = expect_outcome(app.send_json(Method::POST, "MedicationDispense", &dispense(&p, &stopped, "completed")).await, 409).await;
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("is stopped"));
    let expired = prescription(&app, &p, 5, json!({"dispenseRequest": {"numberOfRepeatsAllowed": 5, "validityPeriod": {"start": "2020-01-01", "end": "2020-12-31"}}})).await;
    let outcome = expect_outcome(app.send_json(Method::POST, "MedicationDispense", &dispense(&p, &expired, "completed")).await, 409).await;
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("expired"));
    expect_outcome(app.send_json(Method::POST, "MedicationDispense", &dispense(&p, "no-such-rx", "completed")).await, 422).await;
    // Inside a transaction the same rules hold, and nothing of it is written.
    let open = prescription(&app, &p, 0, json!({})).await;
    let before = app.count("MedicationDispense").await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": dispense(&p, &open, "completed"), "request": {"method": "POST", "url": "MedicationDispense"}},
        {"resource": dispense(&p, &open, "completed"), "request": {"method": "POST", "url": "MedicationDispense"}}]});
    expect_outcome(app.send_json(Method::POST, "", &bundle).await, 409).await;
    assert_eq!(app.count("MedicationDispense").await, before);
}

#[tokio::test]
async fn pharmacies_racing_for_the_last_fill_get_one_dispense_between_them() {
    let app = TestApp::spawn().await;
    let p = patient(&app).await;
    let rx = prescription(&app, &p, 0, json!({})).await;
    let mut tasks = vec![];
    for _ in 0..20 {
        let request = app.req(Method::POST, "MedicationDispense").header("content-type", "application/fhir+json");
        let body = dispense(&p, &rx, "completed");
        tasks.push(tokio::spawn(async move { request.body(body.to_string()).send().await.unwrap().status().as_u16() }));
    }
    let mut statuses = vec![];
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");
    assert_eq!(app.count("MedicationDispense").await, 1);
}

fn refill_task(patient: &str, request: &str) -> Value {
    json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": "https://ironfhir.dev/fhir/CodeSystem/task-code", "code": "refill"}]},
        "focus": {"reference": format!("MedicationRequest/{request}")},
        "for": {"reference": format!("Patient/{patient}")}})
}

#[tokio::test]
async fn task_status_moves_only_along_the_task_state_machine() {
    let app = TestApp::spawn().await;
    let p = patient(&app).await;
    let rx = prescription(&app, &p, 0, json!({})).await;
    let task = app.create(&refill_task(&p, &rx)).await;
    let path = format!("Task/{}", task["id"].as_str().unwrap());
    let with_status = |status: &str| {
        let mut t = task.clone();
        t["status"] = json!(status);
        t
    };
    let outcome = expect_outcome(app.send_json(Method::PUT, &path, &with_status("completed")).await, 422).await;
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("cannot go from requested to completed"));
    app.put(with_status("accepted")).await;
    app.put(with_status("in-progress")).await;
    app.put(with_status("completed")).await;
    expect_outcome(app.send_json(Method::PUT, &path, &with_status("in-progress")).await, 422).await;
    // JSON Patch is held to the same rules.
    let r = app
        .req(Method::PATCH, &path)
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/status", "value": "requested"}]).to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(r, 422).await;
}

#[tokio::test]
async fn a_patient_asks_for_a_refill_of_their_own_prescription_and_can_only_withdraw_it() {
    let app = TestApp::spawn().await;
    let me = patient(&app).await;
    let other = patient(&app).await;
    let mine = prescription(&app, &me, 0, json!({})).await;
    let theirs = prescription(&app, &other, 0, json!({})).await;
    let token = app.patient_token(&me);
    let send = |method: Method, path: String, body: Value| {
        app.client.request(method, format!("{}/{path}", app.base)).bearer_auth(&token).header("content-type", "application/fhir+json").body(body.to_string()).send()
    };
    // The refill request: created.
    let r = send(Method::POST, "Task".into(), refill_task(&me, &mine)).await.unwrap();
    assert_eq!(r.status(), 201);
    let task: Value = r.json().await.unwrap();
    // Not for someone else's prescription, not on someone else's behalf, not another kind of Task.
    let r = send(Method::POST, "Task".into(), refill_task(&me, &theirs)).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = send(Method::POST, "Task".into(), refill_task(&other, &theirs)).await.unwrap();
    assert!(matches!(r.status().as_u16(), 403 | 404), "{}", r.status());
    let mut other_kind = refill_task(&me, &mine);
    other_kind["code"] = json!({"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]});
    let r = send(Method::POST, "Task".into(), other_kind).await.unwrap();
    assert_eq!(r.status(), 403);
    // The prescriber's work queue sees it.
    let queue = app.get_json("Task?status=requested&code=refill").await;
    assert_eq!(queue["total"].as_i64().or(Some(queue["entry"].as_array().map_or(0, |e| e.len() as i64))), Some(1));
    // The patient cannot accept or complete it...
    let path = format!("Task/{}", task["id"].as_str().unwrap());
    let mut accepted = task.clone();
    accepted["status"] = json!("accepted");
    let r = send(Method::PUT, path.clone(), accepted).await.unwrap();
    assert_eq!(r.status(), 403);
    // ...but may withdraw it.
    let mut withdrawn = task.clone();
    withdrawn["status"] = json!("cancelled");
    let r = send(Method::PUT, path.clone(), withdrawn).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.get_json(&path).await["status"], "cancelled");
    assert_eq!(app.count("Task").await, 1, "nothing else was created");
}
