//! Scheduling: no double booking (guaranteed by PostgreSQL, whatever path writes the
//! Appointment), Slots that follow their Appointments, and the Argonaut operations `$find`,
//! `$hold` and `$book` with holds that expire.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, expect_outcome, issue_codes};

/// A practitioner with a Schedule and three free half-hour Slots on 2027-03-01 (09:00, 09:30,
/// 10:00 UTC); returns (practitioner id, slot ids).
async fn practice(app: &TestApp) -> (String, Vec<String>) {
    let practitioner = app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Synthdoc"}]})).await["id"].as_str().unwrap().to_owned();
    let schedule = app
        .create(&json!({"resourceType": "Schedule", "actor": [{"reference": format!("Practitioner/{practitioner}")}]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut slots = vec![];
    for (start, end) in [("09:00", "09:30"), ("09:30", "10:00"), ("10:00", "10:30")] {
        let slot = app
            .create(&json!({"resourceType": "Slot", "schedule": {"reference": format!("Schedule/{schedule}")}, "status": "free",
                            "start": format!("2027-03-01T{start}:00Z"), "end": format!("2027-03-01T{end}:00Z")}))
            .await;
        slots.push(slot["id"].as_str().unwrap().to_owned());
    }
    (practitioner, slots)
}

async fn new_patient(app: &TestApp) -> String {
    app.create(&json!({"resourceType": "Patient", "name": [{"family": "Synthpatient"}]})).await["id"].as_str().unwrap().to_owned()
}

fn appointment(practitioner: &str, patient: &str, start: &str, end: &str) -> Value {
    json!({"resourceType": "Appointment", "status": "booked", "start": start, "end": end, "participant": [
        {"actor": {"reference": format!("Practitioner/{practitioner}")}, "status": "accepted"},
        {"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]})
}

async fn slot_status(app: &TestApp, id: &str) -> String {
    app.get_json(&format!("Slot/{id}")).await["status"].as_str().unwrap().to_owned()
}

fn parameters(name: &str, value: Value) -> Value {
    let mut p = json!({"name": name});
    if value.get("resourceType").is_some() {
        p["resource"] = value;
    } else {
        p["valueReference"] = value;
    }
    json!({"resourceType": "Parameters", "parameter": [p]})
}

/// The Appointment in a `$hold`/`$book` answer.
async fn operation_result(r: reqwest::Response) -> Value {
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resourceType"], "Bundle");
    body["entry"][0]["resource"].clone()
}

#[tokio::test]
async fn fifty_clients_racing_for_one_practitioners_time_leave_one_booked_appointment_and_49_conflicts() {
    let app = TestApp::spawn().await;
    let (practitioner, _) = practice(&app).await;
    let patient = new_patient(&app).await;
    // No Slot: only the practitioner's occupancy (the exclusion constraint) stands between them.
    let body = appointment(&practitioner, &patient, "2027-03-01T14:00:00Z", "2027-03-01T14:20:00Z");
    let mut tasks = vec![];
    for i in 0..50 {
        let request = app.req(Method::POST, "Appointment").header("content-type", "application/fhir+json");
        // Each client a slightly different time: all overlap 14:05–14:15.
        let mut body = body.clone();
        body["start"] = json!(format!("2027-03-01T14:0{}:00Z", i % 5));
        body["end"] = json!(format!("2027-03-01T14:1{}:00Z", 5 + i % 5));
        tasks.push(tokio::spawn(async move { request.body(body.to_string()).send().await.unwrap() }));
    }
    let mut created = 0;
    let mut conflicts = 0;
    for task in tasks {
        let r = task.await.unwrap();
        match r.status().as_u16() {
            201 => created += 1,
            409 => {
                let outcome = expect_outcome(r, 409).await;
                assert_eq!(issue_codes(&outcome), ["conflict"]);
                let said = outcome["issue"][0]["diagnostics"].as_str().unwrap();
                assert!(said.contains(&format!("Practitioner/{practitioner}")) && said.contains("double booking"), "{said}");
                conflicts += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((created, conflicts), (1, 49));
    let found = app.get_json(&format!("Appointment?actor=Practitioner/{practitioner}&_summary=count")).await;
    assert_eq!(found["total"], 1, "exactly one appointment stored");
}

#[tokio::test]
async fn fifty_clients_booking_one_slot_through_book_leave_one_booked_appointment() {
    let app = TestApp::spawn().await;
    let (practitioner, slots) = practice(&app).await;
    let mut patients = vec![];
    for _ in 0..50 {
        patients.push(new_patient(&app).await);
    }
    let found = app.get_json(&format!("Appointment/$find?start=2027-03-01T09:00:00Z&end=2027-03-01T09:30:00Z&provider=Practitioner/{practitioner}")).await;
    assert_eq!(found["total"], 1);
    let proposal = found["entry"][0]["resource"].clone();
    let mut tasks = vec![];
    for patient in &patients {
        let mut mine = proposal.clone();
        mine["participant"].as_array_mut().unwrap().push(json!({"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}));
        let request = app.req(Method::POST, "Appointment/$book").header("content-type", "application/fhir+json");
        let body = parameters("appt-resource", mine);
        tasks.push(tokio::spawn(async move { request.body(body.to_string()).send().await.unwrap() }));
    }
    let mut statuses = vec![];
    for task in tasks {
        let r = task.await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 409 {
            assert_eq!(issue_codes(&expect_outcome(r, 409).await), ["conflict"]);
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 49, "{statuses:?}");
    assert_eq!(slot_status(&app, &slots[0]).await, "busy");
    let booked = app.get_json(&format!("Appointment?slot=Slot/{}&status=booked&_summary=count", slots[0])).await;
    assert_eq!(booked["total"], 1);
}

#[tokio::test]
async fn overlapping_appointments_of_a_practitioner_are_refused_through_post_put_and_transactions() {
    let app = TestApp::spawn().await;
    let (practitioner, _) = practice(&app).await;
    let (other, _) = practice(&app).await;
    let patient = new_patient(&app).await;
    let first = app.create(&appointment(&practitioner, &patient, "2027-03-02T10:00:00Z", "2027-03-02T10:30:00Z")).await;
    // Overlapping: refused, naming who is taken.
    let r = app.send_json(Method::POST, "Appointment", &appointment(&practitioner, &patient, "2027-03-02T10:29:00Z", "2027-03-02T11:00:00Z")).await;
    let outcome = expect_outcome(r, 409).await;
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains(&format!("Practitioner/{practitioner}")));
    // Back to back, another practitioner at the same time, a cancelled one: all fine.
    app.create(&appointment(&practitioner, &patient, "2027-03-02T10:30:00Z", "2027-03-02T11:00:00Z")).await;
    app.create(&appointment(&other, &patient, "2027-03-02T10:00:00Z", "2027-03-02T10:30:00Z")).await;
    let mut cancelled = appointment(&practitioner, &patient, "2027-03-02T10:00:00Z", "2027-03-02T10:30:00Z");
    cancelled["status"] = json!("cancelled");
    app.create(&cancelled).await;
    // Moving an appointment onto a taken time by PUT: refused, the stored version unchanged.
    let mut moved = first.clone();
    moved["start"] = json!("2027-03-02T10:45:00Z");
    moved["end"] = json!("2027-03-02T11:15:00Z");
    let r = app.send_json(Method::PUT, &format!("Appointment/{}", first["id"].as_str().unwrap()), &moved).await;
    expect_outcome(r, 409).await;
    assert_eq!(app.get_json(&format!("Appointment/{}", first["id"].as_str().unwrap())).await["meta"]["versionId"], "1");
    // A transaction with two overlapping appointments: all or nothing.
    let before = app.count("Appointment").await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": appointment(&other, &patient, "2027-03-03T08:00:00Z", "2027-03-03T09:00:00Z"), "request": {"method": "POST", "url": "Appointment"}},
        {"resource": appointment(&other, &patient, "2027-03-03T08:30:00Z", "2027-03-03T09:30:00Z"), "request": {"method": "POST", "url": "Appointment"}}]});
    let r = app.send_json(Method::POST, "", &bundle).await;
    expect_outcome(r, 409).await;
    assert_eq!(app.count("Appointment").await, before, "nothing of the transaction was written");
}

#[tokio::test]
async fn slots_follow_their_appointments_and_a_reschedule_is_atomic() {
    let app = TestApp::spawn().await;
    let (practitioner, slots) = practice(&app).await;
    let patient = new_patient(&app).await;
    let mut body = appointment(&practitioner, &patient, "2027-03-01T09:00:00Z", "2027-03-01T09:30:00Z");
    body["slot"] = json!([{"reference": format!("Slot/{}", slots[0])}]);
    let booked = app.create(&body).await;
    let id = booked["id"].as_str().unwrap().to_owned();
    assert_eq!(slot_status(&app, &slots[0]).await, "busy");
    // Reschedule to the next slot: the old one is freed and the new one taken, together.
    let mut moved = booked.clone();
    moved["slot"] = json!([{"reference": format!("Slot/{}", slots[1])}]);
    moved["start"] = json!("2027-03-01T09:30:00Z");
    moved["end"] = json!("2027-03-01T10:00:00Z");
    let moved = app.put(moved).await;
    assert_eq!((slot_status(&app, &slots[0]).await.as_str(), slot_status(&app, &slots[1]).await.as_str()), ("free", "busy"));
    // Another appointment takes slot 2; moving ours there fails and changes nothing.
    let other_patient = new_patient(&app).await;
    let mut other = appointment(&practitioner, &other_patient, "2027-03-01T10:00:00Z", "2027-03-01T10:30:00Z");
    other["slot"] = json!([{"reference": format!("Slot/{}", slots[2])}]);
    app.create(&other).await;
    let mut onto_taken = moved.clone();
    onto_taken["slot"] = json!([{"reference": format!("Slot/{}", slots[2])}]);
    onto_taken["start"] = json!("2027-03-01T10:00:00Z");
    onto_taken["end"] = json!("2027-03-01T10:30:00Z");
    let r = app.send_json(Method::PUT, &format!("Appointment/{id}"), &onto_taken).await;
    expect_outcome(r, 409).await;
    assert_eq!(slot_status(&app, &slots[1]).await, "busy", "the old slot stays ours");
    // Cancelling frees the slot; deleting the other one frees its slot too.
    let mut cancelled = app.get_json(&format!("Appointment/{id}")).await;
    cancelled["status"] = json!("cancelled");
    app.put(cancelled).await;
    assert_eq!(slot_status(&app, &slots[1]).await, "free");
    let other_id = app.get_json(&format!("Appointment?slot=Slot/{}", slots[2])).await["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.req(Method::DELETE, &format!("Appointment/{other_id}")).send().await.unwrap().status(), 200);
    assert_eq!(slot_status(&app, &slots[2]).await, "free");
}

#[tokio::test]
async fn bookings_that_a_slot_cannot_take_are_refused() {
    let app = TestApp::spawn().await;
    let (practitioner, slots) = practice(&app).await;
    let patient = new_patient(&app).await;
    let with_slot = |slot: &str, start: &str, end: &str| {
        let mut a = appointment(&practitioner, &patient, start, end);
        a["slot"] = json!([{"reference": format!("Slot/{slot}")}]);
        a
    };
    // Outside the slot's time.
    let r = app.send_json(Method::POST, "Appointment", &with_slot(&slots[0], "2027-03-01T09:15:00Z", "2027-03-01T09:45:00Z")).await;
    expect_outcome(r, 422).await;
    // A slot that does not exist.
    let r = app.send_json(Method::POST, "Appointment", &with_slot("no-such-slot", "2027-03-01T09:00:00Z", "2027-03-01T09:30:00Z")).await;
    expect_outcome(r, 422).await;
    // A slot marked unavailable.
    let mut slot = app.get_json(&format!("Slot/{}", slots[1])).await;
    slot["status"] = json!("busy-unavailable");
    app.put(slot).await;
    let r = app.send_json(Method::POST, "Appointment", &with_slot(&slots[1], "2027-03-01T09:30:00Z", "2027-03-01T10:00:00Z")).await;
    let outcome = expect_outcome(r, 409).await;
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("busy-unavailable"));
    // An end before the start, or only one of them.
    let r = app.send_json(Method::POST, "Appointment", &appointment(&practitioner, &patient, "2027-03-05T10:00:00Z", "2027-03-05T09:00:00Z")).await;
    expect_outcome(r, 422).await;
    let mut half = appointment(&practitioner, &patient, "2027-03-05T10:00:00Z", "2027-03-05T11:00:00Z");
    half.as_object_mut().unwrap().remove("end");
    let r = app.send_json(Method::POST, "Appointment", &half).await;
    expect_outcome(r, 422).await;
    assert_eq!(app.count("Appointment").await, 0, "nothing was stored");
    assert_eq!(slot_status(&app, &slots[0]).await, "free");
}

#[tokio::test]
async fn find_hold_and_book_and_a_hold_that_expires_stops_blocking_without_a_manual_step() {
    let app = TestApp::spawn_with(Options { hold_seconds: 1, ..Options::default() }).await;
    let (practitioner, slots) = practice(&app).await;
    let patient = new_patient(&app).await;
    // $find: the three free slots, earliest first, as proposed appointments.
    let found = app.get_json(&format!("Appointment/$find?start=2027-03-01&end=2027-03-02&provider=Practitioner/{practitioner}&patient=Patient/{patient}")).await;
    assert_eq!(found["type"], "searchset");
    let proposals: Vec<&Value> = found["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    assert_eq!(proposals.len(), 3);
    assert!(proposals.iter().all(|p| p["status"] == "proposed"));
    assert_eq!(proposals[0]["start"], "2027-03-01T09:00:00Z");
    assert_eq!(proposals[0]["slot"][0]["reference"], format!("Slot/{}", slots[0]));
    let actors: Vec<&str> = proposals[0]["participant"].as_array().unwrap().iter().map(|p| p["actor"]["reference"].as_str().unwrap()).collect();
    assert_eq!(actors, [format!("Practitioner/{practitioner}"), format!("Patient/{patient}")]);
    // Another practitioner's slots are not offered; a window without slots offers nothing.
    let (_, _) = practice(&app).await;
    assert_eq!(app.get_json(&format!("Appointment/$find?start=2027-03-01&end=2027-03-02&provider=Practitioner/{practitioner}")).await["total"], 3);
    assert_eq!(app.get_json(&format!("Appointment/$find?start=2027-04-01&end=2027-04-02&provider=Practitioner/{practitioner}")).await["total"], 0);
    expect_outcome(app.get("Appointment/$find?end=2027-03-02").await, 400).await;

    // $hold the first: pending, slot busy-tentative, no longer found.
    let held = operation_result(app.send_json(Method::POST, "Appointment/$hold", &parameters("appt-resource", proposals[0].clone())).await).await;
    assert_eq!(held["status"], "pending");
    assert_eq!(slot_status(&app, &slots[0]).await, "busy-tentative");
    assert_eq!(app.get_json(&format!("Appointment/$find?start=2027-03-01&end=2027-03-02&provider=Practitioner/{practitioner}")).await["total"], 2);
    // $book it (by reference): booked, slot busy.
    let reference = json!({"reference": format!("Appointment/{}", held["id"].as_str().unwrap())});
    let booked = operation_result(app.send_json(Method::POST, "Appointment/$book", &parameters("appt-id", reference.clone())).await).await;
    assert_eq!(booked["status"], "booked");
    assert!(booked.get("extension").is_none(), "the hold's expiry is gone");
    assert_eq!(slot_status(&app, &slots[0]).await, "busy");
    expect_outcome(app.send_json(Method::POST, "Appointment/$hold", &parameters("appt-id", reference)).await, 409).await;

    // Hold the second and let it expire: a booking of the same time goes through at once...
    let held = operation_result(app.send_json(Method::POST, "Appointment/$hold", &parameters("appt-resource", proposals[1].clone())).await).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let late = json!({"reference": format!("Appointment/{}", held["id"].as_str().unwrap())});
    let r = app.send_json(Method::POST, "Appointment/$book", &parameters("appt-id", late)).await;
    let outcome = expect_outcome(r, 409).await;
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("hold expired"), "{outcome}");
    let other_patient = new_patient(&app).await;
    let mut takeover = appointment(&practitioner, &other_patient, "2027-03-01T09:30:00Z", "2027-03-01T10:00:00Z");
    takeover["slot"] = json!([{"reference": format!("Slot/{}", slots[1])}]);
    assert_eq!(slot_status(&app, &slots[1]).await, "busy-tentative", "the sweeper has not run");
    app.create(&takeover).await;
    assert_eq!(slot_status(&app, &slots[1]).await, "busy");
    // ...and the sweeper cancels the expired hold, leaving the new booking's slot busy.
    let swept = ironfhir::workflows::scheduling::holds::sweep(&app.store, &Default::default(), "").await.unwrap();
    assert_eq!(swept, 1);
    let expired = app.get_json(&format!("Appointment/{}", held["id"].as_str().unwrap())).await;
    assert_eq!(expired["status"], "cancelled");
    assert_eq!(expired["cancelationReason"]["text"], "hold expired");
    assert_eq!(slot_status(&app, &slots[1]).await, "busy");
    // A third hold expires with nobody taking its slot: the sweeper frees it.
    let held = operation_result(app.send_json(Method::POST, "Appointment/$hold", &parameters("appt-resource", proposals[2].clone())).await).await;
    assert_eq!(slot_status(&app, &slots[2]).await, "busy-tentative");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(ironfhir::workflows::scheduling::holds::sweep(&app.store, &Default::default(), "").await.unwrap(), 1);
    assert_eq!(app.get_json(&format!("Appointment/{}", held["id"].as_str().unwrap())).await["status"], "cancelled");
    assert_eq!(slot_status(&app, &slots[2]).await, "free");
}

#[tokio::test]
async fn an_expired_hold_does_not_block_a_booking_before_the_sweeper_runs() {
    let app = TestApp::spawn_with(Options { hold_seconds: 1, ..Options::default() }).await;
    let (practitioner, _) = practice(&app).await;
    let patient = new_patient(&app).await;
    // A hold on the practitioner's time without a slot.
    let mut proposal = appointment(&practitioner, &patient, "2027-03-09T09:00:00Z", "2027-03-09T09:30:00Z");
    proposal["status"] = json!("proposed");
    let r = app.send_json(Method::POST, "Appointment/$hold", &parameters("appt-resource", proposal.clone())).await;
    // A hold needs a slot to hold.
    expect_outcome(r, 400).await;
    let booked = appointment(&practitioner, &patient, "2027-03-09T09:00:00Z", "2027-03-09T09:30:00Z");
    // Pending with an expiry in the past, written directly: the database ignores it for overlap.
    let mut pending = booked.clone();
    pending["status"] = json!("pending");
    pending["extension"] = json!([{"url": ironfhir::workflows::scheduling::HOLD_EXTENSION, "valueInstant": "2026-01-01T00:00:00Z"}]);
    let hold = app.create(&pending).await;
    app.create(&booked).await;
    // The sweeper then cancels the lapsed hold.
    assert_eq!(ironfhir::workflows::scheduling::holds::sweep(&app.store, &Default::default(), "").await.unwrap(), 1);
    assert_eq!(app.get_json(&format!("Appointment/{}", hold["id"].as_str().unwrap())).await["status"], "cancelled");
    // A hold that has not expired blocks like a booking.
    let mut live = pending.clone();
    live["start"] = json!("2027-03-10T09:00:00Z");
    live["end"] = json!("2027-03-10T09:30:00Z");
    live["extension"] = json!([{"url": ironfhir::workflows::scheduling::HOLD_EXTENSION, "valueInstant": "2099-01-01T00:00:00Z"}]);
    app.create(&live).await;
    let mut clash = booked.clone();
    clash["start"] = json!("2027-03-10T09:15:00Z");
    clash["end"] = json!("2027-03-10T09:45:00Z");
    expect_outcome(app.send_json(Method::POST, "Appointment", &clash).await, 409).await;
}

#[tokio::test]
async fn a_patient_finds_care_in_the_directory_and_books_for_themselves_only() {
    let app = TestApp::spawn().await;
    let (practitioner, slots) = practice(&app).await;
    let mut doc = app.get_json(&format!("Practitioner/{practitioner}")).await;
    doc["birthDate"] = json!("1970-01-01");
    doc["identifier"] = json!([{"system": "urn:synthetic:staff", "value": "S-1"}]);
    app.put(doc).await;
    let me = new_patient(&app).await;
    let someone_else = new_patient(&app).await;
    let token = app.patient_token(&me);
    let as_patient = |method: Method, path: &str| app.client.request(method, format!("{}/{path}", app.base)).bearer_auth(&token);

    // The directory: readable and searchable, without the staff's private elements.
    let r = as_patient(Method::GET, &format!("Practitioner/{practitioner}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert!(seen.get("birthDate").is_none() && seen.get("identifier").is_none(), "{seen}");
    assert_eq!(seen["name"][0]["family"], "Synthdoc");
    let r = as_patient(Method::GET, &format!("Slot?schedule.actor=Practitioner/{practitioner}&status=free")).send().await.unwrap();
    let bundle: Value = r.json().await.unwrap();
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(3), "{bundle}");
    // Searching by what is hidden is refused; the directory is never written.
    let r = as_patient(Method::GET, "Practitioner?identifier=S-1").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = as_patient(Method::PUT, &format!("Practitioner/{practitioner}")).header("content-type", "application/fhir+json").body(seen.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // Another patient is still out of reach, and so is a Schedule that names them.
    let r = as_patient(Method::GET, &format!("Patient/{someone_else}")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let theirs = app.create(&json!({"resourceType": "Schedule", "actor": [{"reference": format!("Patient/{someone_else}")}]})).await;
    let r = as_patient(Method::GET, &format!("Schedule/{}", theirs["id"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let schedules: Value = as_patient(Method::GET, "Schedule?_total=accurate").send().await.unwrap().json().await.unwrap();
    assert_eq!(schedules["total"], 1, "only the practitioner's schedule: {schedules}");

    // $find, then $book for themselves...
    let r = as_patient(Method::GET, &format!("Appointment/$find?start=2027-03-01&end=2027-03-02&provider=Practitioner/{practitioner}&patient=Patient/{me}")).send().await.unwrap();
    let found: Value = r.json().await.unwrap();
    assert_eq!(found["total"], 3, "{found}");
    let proposal = found["entry"][0]["resource"].clone();
    let r = as_patient(Method::POST, "Appointment/$book").header("content-type", "application/fhir+json").body(parameters("appt-resource", proposal.clone()).to_string()).send().await.unwrap();
    let booked = operation_result(r).await;
    assert_eq!(booked["status"], "booked");
    assert_eq!(slot_status(&app, &slots[0]).await, "busy");
    // ...but not for someone else.
    let mut for_other = found["entry"][1]["resource"].clone();
    for_other["participant"][1]["actor"]["reference"] = json!(format!("Patient/{someone_else}"));
    let r = as_patient(Method::POST, "Appointment/$book").header("content-type", "application/fhir+json").body(parameters("appt-resource", for_other).to_string()).send().await.unwrap();
    assert!(matches!(r.status().as_u16(), 403 | 404), "{}", r.status());
    assert_eq!(slot_status(&app, &slots[1]).await, "free");
}

#[tokio::test]
async fn slots_are_generated_from_the_roles_opening_hours_in_its_time_zone_once() {
    let app = TestApp::spawn().await;
    let practitioner = app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Synthdoc"}]})).await["id"].as_str().unwrap().to_owned();
    let role = app
        .create(&json!({"resourceType": "PractitionerRole", "practitioner": {"reference": format!("Practitioner/{practitioner}")},
            "availableTime": [{"daysOfWeek": ["mon", "tue", "wed", "thu", "fri"], "availableStartTime": "09:00:00", "availableEndTime": "12:00:00"}],
            "notAvailable": [{"description": "training", "during": {"start": "2027-03-03T00:00:00Z", "end": "2027-03-04T00:00:00Z"}}]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let schedule = app.create(&json!({"resourceType": "Schedule", "actor": [{"reference": format!("PractitionerRole/{role}")}]})).await["id"].as_str().unwrap().to_owned();
    let path = format!("Schedule/{schedule}/$generate-slots?start=2027-03-01&end=2027-03-07&slot-minutes=30&timezone=America/New_York");
    let r = app.req(Method::POST, &path).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "transaction-response");
    // Mon–Fri, 6 half hours each, Wednesday blocked: 4 × 6.
    assert_eq!(body["entry"].as_array().unwrap().len(), 24);
    let found = app.get_json(&format!("Appointment/$find?start=2027-03-01&end=2027-03-02&provider=PractitionerRole/{role}")).await;
    assert_eq!(found["total"], 6);
    // 09:00 in New York in March before daylight saving: 14:00 UTC.
    assert_eq!(found["entry"][0]["resource"]["start"], "2027-03-01T14:00:00Z");
    // Again: nothing new.
    let again: Value = app.req(Method::POST, &path).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["entry"].as_array().map_or(0, Vec::len), 0, "{again}");
    assert_eq!(app.count("Slot").await, 24);
    // Bad input.
    expect_outcome(app.req(Method::POST, &format!("Schedule/{schedule}/$generate-slots?start=2027-03-01&end=2027-03-07&timezone=Mars/Olympus")).send().await.unwrap(), 400).await;
    expect_outcome(app.req(Method::POST, &format!("Schedule/{schedule}/$generate-slots?start=2027-03-01&end=2028-03-07")).send().await.unwrap(), 400).await;
}
