//! Subscriptions, end to end: the app with its event machinery, a real HTTP receiver for the
//! rest-hooks, writes through the API. Notifications arrive for what matches and the owner may
//! read — never for anything else — in order, numbered without gaps; failing endpoints are
//! retried and end in `error`; the Backport operations answer from the same records.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp};

/// One call a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

/// An HTTP endpoint on a random port that records every call and answers `status` (changeable).
pub struct Receiver {
    pub url: String,
    pub calls: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<std::sync::atomic::AtomicU16>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let calls: Arc<Mutex<Vec<Received>>> = Default::default();
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (c, s) = (calls.clone(), status.clone());
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (c, s) = (c.clone(), s.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 10 << 20).await.unwrap_or_default();
                c.lock().unwrap().push(Received {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    authorization: parts.headers.get("authorization").map(|v| v.to_str().unwrap_or_default().to_owned()),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                axum::http::StatusCode::from_u16(s.load(std::sync::atomic::Ordering::SeqCst)).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, calls, status }
    }

    pub fn calls(&self) -> Vec<Received> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until at least `n` calls arrived (panics after 20 s), then returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            assert!(Instant::now() < deadline, "only {} of {n} notifications arrived: {calls:?}", calls.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn events_config(max_failures: i32) -> ironfhir::events::EventsConfig {
    ironfhir::events::EventsConfig {
        nats_url: None,
        nats_stream: "ironfhir".into(),
        max_delivery_failures: max_failures,
        notification_retention: chrono::Duration::hours(1),
    }
}

async fn app_with_events(max_failures: i32) -> TestApp {
    TestApp::spawn_with(Options { events: Some(events_config(max_failures)), ..Options::default() }).await
}

fn observation(patient: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "subject": {"reference": format!("Patient/{patient}")},
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]}})
}

async fn post_as(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    let rt = body["resourceType"].as_str().unwrap();
    app.client
        .post(format!("{}/{rt}", app.base))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Lets the dispatcher and the delivery loop run past everything written so far.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_rest_hook_gets_each_matching_write_in_order_with_its_headers_and_nothing_else() {
    let app = app_with_events(10).await;
    let hook = Receiver::start().await;
    app.put_new(json!({"resourceType": "Patient", "id": "p1"})).await;
    let sub = app
        .create(&json!({"resourceType": "Subscription", "status": "requested", "reason": "glucose results",
            "criteria": "Observation?code=http://loinc.org|2339-0",
            "channel": {"type": "rest-hook", "endpoint": hook.url, "payload": "application/fhir+json", "header": ["Authorization: Bearer synthetic-hook-secret"]}}))
        .await;
    // subscription.html: the server, not the client, makes it active.
    assert_eq!(sub["status"], "active");
    let matching = app.create(&observation("p1", "2339-0")).await;
    app.create(&observation("p1", "8867-4")).await;
    let mut updated = matching.clone();
    updated["status"] = json!("amended");
    app.put(updated).await;
    let calls = hook.wait_for(2).await;
    settle().await;
    let calls_after = hook.calls();
    assert_eq!(calls_after.len(), 2, "one call per matching write, none for the other code: {calls_after:?}");
    let id = matching["id"].as_str().unwrap();
    for (call, version) in calls.iter().zip(["1", "2"]) {
        // A payload: the resource is PUT to [endpoint]/[type]/[id].
        assert_eq!((call.method.as_str(), call.path.as_str()), ("PUT", format!("/hook/Observation/{id}").as_str()));
        assert_eq!(call.authorization.as_deref(), Some("Bearer synthetic-hook-secret"));
        let body: Value = serde_json::from_str(&call.body).unwrap();
        assert_eq!(body["meta"]["versionId"], version, "in write order");
    }
}

#[tokio::test]
async fn without_a_payload_the_rest_hook_is_an_empty_post() {
    let app = app_with_events(10).await;
    let hook = Receiver::start().await;
    app.create(&json!({"resourceType": "Subscription", "status": "requested", "reason": "any patient",
        "criteria": "Patient", "channel": {"type": "rest-hook", "endpoint": hook.url}}))
        .await;
    app.put_new(json!({"resourceType": "Patient", "id": "p-empty", "gender": "female"})).await;
    let calls = hook.wait_for(1).await;
    assert_eq!((calls[0].method.as_str(), calls[0].path.as_str(), calls[0].body.as_str()), ("POST", "/hook", ""));
}

#[tokio::test]
async fn a_notification_never_carries_or_reveals_a_resource_its_owner_cannot_read() {
    let app = app_with_events(10).await;
    let hook = Receiver::start().await;
    for p in ["pa", "pb"] {
        app.put_new(json!({"resourceType": "Patient", "id": p})).await;
    }
    let patient_a = app.patient_token("pa");
    let created = post_as(&app, &patient_a, &json!({"resourceType": "Subscription", "status": "requested", "reason": "my results",
        "criteria": "Observation", "channel": {"type": "rest-hook", "endpoint": hook.url, "payload": "application/fhir+json"}}))
    .await;
    assert_eq!(created.status(), 201);
    let sub: Value = created.json().await.unwrap();
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    // The server stamps the owner from the token.
    assert_eq!(sub["extension"][0]["valueReference"]["reference"], "Patient/pa");
    let theirs = app.create(&observation("pb", "2339-0")).await;
    let mine = app.create(&observation("pa", "2339-0")).await;
    hook.wait_for(1).await;
    settle().await;
    let calls = hook.calls();
    assert_eq!(calls.len(), 1, "only the owner's own Observation: {calls:?}");
    assert!(calls[0].path.ends_with(&format!("/Observation/{}", mine["id"].as_str().unwrap())));
    assert!(!calls.iter().any(|c| c.body.contains(theirs["id"].as_str().unwrap()) || c.path.contains(theirs["id"].as_str().unwrap())));
    // Nor does the Subscription itself reach anyone else: another patient, or a staff role.
    let patient_b = app.patient_token("pb");
    let other = app.client.get(format!("{}/Subscription/{sub_id}", app.base)).bearer_auth(&patient_b).send().await.unwrap();
    assert_eq!(other.status(), 404);
    let listed: Value = app.client.get(format!("{}/Subscription", app.base)).bearer_auth(&patient_b).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["total"], 0, "{listed}");
    let own: Value = app.client.get(format!("{}/Subscription", app.base)).bearer_auth(&patient_a).send().await.unwrap().json().await.unwrap();
    assert_eq!(own["total"], 1, "{own}");
    // $status and $events answer the owner, and 404 to others.
    let status = app.client.get(format!("{}/Subscription/{sub_id}/$status", app.base)).bearer_auth(&patient_b).send().await.unwrap();
    assert_eq!(status.status(), 404);
    let events: Value = app.client.get(format!("{}/Subscription/{sub_id}/$events", app.base)).bearer_auth(&patient_a).send().await.unwrap().json().await.unwrap();
    let text = events.to_string();
    assert!(text.contains(mine["id"].as_str().unwrap()) && !text.contains(theirs["id"].as_str().unwrap()), "{events}");
}

/// The values of a SubscriptionStatus Parameters' top-level parameter.
fn param<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["parameter"].as_array()?.iter().find(|p| p["name"] == name)
}

#[tokio::test]
async fn a_topic_subscription_gets_a_handshake_then_numbered_notification_bundles_and_status_and_events_agree() {
    let app = app_with_events(10).await;
    let hook = Receiver::start().await;
    app.put_new(json!({"resourceType": "Patient", "id": "pt"})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "other"})).await;
    let sub = app
        .create(&json!({"resourceType": "Subscription", "status": "requested", "reason": "refill tasks",
            "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"]},
            "criteria": "https://ironfhir.dev/fhir/SubscriptionTopic/task-changed",
            "_criteria": {"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria", "valueString": "Task?patient=Patient/pt"}]},
            "channel": {"type": "rest-hook", "endpoint": hook.url, "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content", "valueCode": "id-only"}]}}}))
        .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let task = |patient: &str| json!({"resourceType": "Task", "status": "requested", "intent": "order", "for": {"reference": format!("Patient/{patient}")}});
    let first = app.create(&task("pt")).await;
    app.create(&task("other")).await;
    let second = app.create(&task("pt")).await;
    hook.wait_for(3).await;
    settle().await;
    let calls: Vec<Value> = hook.calls().iter().map(|c| serde_json::from_str(&c.body).unwrap()).collect();
    assert_eq!(calls.len(), 3, "handshake and the two Tasks of the filtered patient: {calls:?}");
    let status = |b: &Value| b["entry"][0]["resource"].clone();
    assert_eq!(calls[0]["type"], "history");
    assert_eq!(param(&status(&calls[0]), "type").unwrap()["valueCode"], "handshake");
    for (bundle, (n, task)) in calls[1..].iter().zip([(1, &first), (2, &second)]) {
        let s = status(bundle);
        assert_eq!(param(&s, "type").unwrap()["valueCode"], "event-notification");
        assert_eq!(param(&s, "topic").unwrap()["valueCanonical"], "https://ironfhir.dev/fhir/SubscriptionTopic/task-changed");
        assert_eq!(param(&s, "events-since-subscription-start").unwrap()["valueString"], n.to_string());
        let event = param(&s, "notification-event").unwrap();
        assert_eq!(event["part"][0]["valueString"], n.to_string(), "numbers without gaps");
        assert_eq!(event["part"][2]["valueReference"]["reference"], format!("{}/Task/{}/_history/1", app.base, task["id"].as_str().unwrap()));
        // id-only: the focus entry has its URL and no resource.
        assert!(bundle["entry"][1]["fullUrl"].as_str().unwrap().ends_with(&format!("Task/{}", task["id"].as_str().unwrap())));
        assert!(bundle["entry"][1].get("resource").is_none());
    }
    let status_bundle = app.get_json(&format!("Subscription/{sub_id}/$status")).await;
    let s = &status_bundle["entry"][0]["resource"];
    assert_eq!(param(s, "events-since-subscription-start").unwrap()["valueString"], "2");
    assert_eq!(param(s, "status").unwrap()["valueCode"], "active");
    // $events: catch-up after an outage, with the resources this time.
    let events = app.get_json(&format!("Subscription/{sub_id}/$events?eventsSinceNumber=2&content=full-resource")).await;
    let s = &events["entry"][0]["resource"];
    assert_eq!(param(s, "type").unwrap()["valueCode"], "query-event");
    let numbers: Vec<&Value> = s["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == "notification-event").map(|p| &p["part"][0]["valueString"]).collect();
    assert_eq!(numbers, vec![&json!("2")]);
    assert_eq!(events["entry"][1]["resource"]["id"], second["id"]);
    // The CapabilityStatement lists the topic.
    let metadata = app.get_json("metadata").await;
    assert!(metadata.to_string().contains("https://ironfhir.dev/fhir/SubscriptionTopic/task-changed"));
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_backoff_then_the_subscription_is_in_error_and_resumes_when_requested_again() {
    let app = app_with_events(2).await;
    let hook = Receiver::start().await;
    hook.status.store(500, std::sync::atomic::Ordering::SeqCst);
    let sub = app
        .create(&json!({"resourceType": "Subscription", "status": "requested", "reason": "flaky receiver",
            "criteria": "Patient", "channel": {"type": "rest-hook", "endpoint": hook.url}}))
        .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    app.put_new(json!({"resourceType": "Patient", "id": "p-retry"})).await;
    // First attempt, then one retry about a second later: two failures end in `error`.
    let calls = hook.wait_for(2).await;
    assert!(calls.len() >= 2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let errored = loop {
        let s = app.get_json(&format!("Subscription/{sub_id}")).await;
        if s["status"] == "error" {
            break s;
        }
        assert!(Instant::now() < deadline, "never set to error: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(errored["error"].as_str().unwrap().contains("500"), "{errored}");
    // In error, nothing more is attempted.
    settle().await;
    let before = hook.calls().len();
    settle().await;
    assert_eq!(hook.calls().len(), before);
    // The client fixes its endpoint and asks again: the notification still pending arrives.
    hook.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let mut again = errored.clone();
    again["status"] = json!("requested");
    let resumed = app.put(again).await;
    assert_eq!(resumed["status"], "active");
    assert!(resumed.get("error").is_none());
    hook.wait_for(before + 1).await;
    let s = app.get_json(&format!("Subscription/{sub_id}")).await;
    assert_eq!(s["status"], "active");
}

#[tokio::test]
async fn subscriptions_the_server_cannot_act_on_are_refused_with_the_reason() {
    let app = app_with_events(10).await;
    for (body, needle) in [
        (json!({"criteria": "Observation", "channel": {"type": "email", "endpoint": "mailto:x@example.org"}}), "not supported"),
        (json!({"criteria": "Observation?nonsense-param=1", "channel": {"type": "rest-hook", "endpoint": "https://example.org/h"}}), "criteria"),
        (json!({"criteria": "https://example.org/no-such-topic", "channel": {"type": "rest-hook", "endpoint": "https://example.org/h"}}), "topic"),
    ] {
        let mut sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "r"});
        sub.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        let r = app.send_json(Method::POST, "Subscription", &sub).await;
        let outcome = crate::helpers::expect_outcome(r, 400).await;
        assert!(outcome.to_string().contains(needle), "{outcome}");
    }
    assert_eq!(app.count("Subscription").await, 0, "nothing half-written");
}

#[tokio::test]
async fn every_write_path_queues_its_event_in_its_own_transaction() {
    // No dispatcher: the outbox keeps what the writes queued.
    let app = TestApp::spawn().await;
    app.put_new(json!({"resourceType": "Patient", "id": "o1"})).await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "o1", "gender": "male"}, "request": {"method": "PUT", "url": "Patient/o1"}}]});
    let r = app.send_json(Method::POST, "", &bundle).await;
    assert_eq!(r.status(), 200);
    let r = app.req(Method::DELETE, "Patient/o1").send().await.unwrap();
    assert!(r.status().is_success());
    // A failed write queues nothing.
    let r = app.send_json(Method::PUT, "Patient/o1", &json!({"resourceType": "Patient", "id": "o1", "gender": "not-a-code"})).await;
    assert_eq!(r.status(), 422);
    let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT resource_type, id, version_id, interaction FROM outbox_event WHERE consumer = 'subscriptions' AND resource_type = 'Patient' ORDER BY event_id",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    let o1: Vec<(i64, &str)> = rows.iter().filter(|r| r.1 == "o1").map(|r| (r.2, r.3.as_str())).collect();
    assert_eq!(o1, vec![(1, "create"), (2, "update"), (3, "delete")]);
    assert_eq!(rows.len(), 4, "and the Bundle's created Patient: {rows:?}");
    // AuditEvents are not events: every read writes one.
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_event WHERE resource_type = 'AuditEvent'").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(audit, 0);
}
