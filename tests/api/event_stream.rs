//! The event stream on the NATS JetStream of this machine (127.0.0.1:4222): every change is
//! published once per event id, in order per resource, with no ids or values in subjects or
//! headers; and nothing acknowledged is lost when the server is killed with SIGKILL mid-load —
//! neither on the stream nor for a rest-hook Subscription.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp};
use crate::subscriptions::Receiver;

const NATS: &str = "nats://127.0.0.1:4222";

/// One message read back from the stream.
#[derive(Debug)]
struct Published {
    subject: String,
    message_id: String,
    header_names: Vec<String>,
    payload: Value,
}

/// Reads every message of the stream `name` (subjects `name.>`) from the start.
async fn read_stream(name: &str) -> Vec<Published> {
    let js = async_nats::jetstream::new(async_nats::connect(NATS).await.expect("NATS on 127.0.0.1:4222"));
    let stream = js.get_stream(name.to_ascii_uppercase()).await.expect("the server created its stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config { ack_policy: async_nats::jetstream::consumer::AckPolicy::None, ..Default::default() })
        .await
        .unwrap();
    let mut out = vec![];
    loop {
        let mut batch = consumer.fetch().max_messages(1000).expires(Duration::from_millis(500)).messages().await.unwrap();
        let mut n = 0;
        while let Some(Ok(m)) = batch.next().await {
            n += 1;
            let headers = m.headers.clone().unwrap_or_default();
            out.push(Published {
                subject: m.subject.to_string(),
                message_id: headers.get("Nats-Msg-Id").map(|v| v.to_string()).unwrap_or_default(),
                header_names: headers.iter().map(|(k, _)| k.to_string()).collect(),
                payload: serde_json::from_slice(&m.payload).unwrap(),
            });
        }
        if n == 0 {
            return out;
        }
    }
}

async fn delete_stream(name: &str) {
    if let Ok(client) = async_nats::connect(NATS).await {
        let _ = async_nats::jetstream::new(client).delete_stream(name.to_ascii_uppercase()).await;
    }
}

fn stream_name() -> String {
    format!("ironfhirtest{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn every_change_is_published_once_per_event_in_order_with_nothing_identifying_in_subjects_or_headers() {
    let name = stream_name();
    let mut config = crate::subscriptions::events_config(10);
    config.nats_url = Some(NATS.into());
    config.nats_stream = name.clone();
    let app = TestApp::spawn_with(Options { events: Some(config), ..Options::default() }).await;
    app.put_new(json!({"resourceType": "Patient", "id": "s1", "name": [{"family": "Synthetic"}]})).await;
    for gender in ["male", "female", "other"] {
        app.put(json!({"resourceType": "Patient", "id": "s1", "gender": gender})).await;
    }
    assert!(app.req(reqwest::Method::DELETE, "Patient/s1").send().await.unwrap().status().is_success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let messages = loop {
        let messages = read_stream(&name).await;
        if messages.len() >= 5 || Instant::now() > deadline {
            break messages;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    delete_stream(&name).await;
    let seen: Vec<(String, String)> = messages.iter().map(|m| (m.subject.clone(), m.payload["versionId"].as_str().unwrap().to_owned())).collect();
    assert_eq!(
        seen,
        vec![
            (format!("{name}.Patient.create"), "1".into()),
            (format!("{name}.Patient.update"), "2".into()),
            (format!("{name}.Patient.update"), "3".into()),
            (format!("{name}.Patient.update"), "4".into()),
            (format!("{name}.Patient.delete"), "5".into()),
        ]
    );
    for m in &messages {
        assert_eq!(m.message_id, m.payload["eventId"].to_string(), "the message id is the event id (de-duplication)");
        assert_eq!(m.header_names, vec!["Nats-Msg-Id".to_owned()]);
        let keys: Vec<&String> = m.payload.as_object().unwrap().keys().collect();
        assert_eq!(keys, vec!["eventId", "resourceType", "id", "versionId", "interaction", "recorded"], "id-only payload");
        assert!(!m.payload.to_string().contains("Synthetic"));
    }
}

/// A writer's acknowledged versions per Patient id.
type Acknowledged = Arc<Mutex<HashMap<String, Vec<i64>>>>;

#[tokio::test]
async fn nothing_acknowledged_is_lost_when_the_server_is_killed_mid_load() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url, db) = crate::helpers::fresh_database().await;
    let _db = crate::helpers::DatabaseGuard(db);
    let dir = crate::cli::temp_dir("kill9");
    let name = stream_name();
    let port = crate::cli::free_port();
    let args = ["--nats-url", NATS, "--nats-stream", name.as_str()];
    let token = crate::cli::admin_token(&dir, "system/*.*");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let mut server = crate::cli::start(&dir, Some(&url), port, &args);
    crate::cli::wait_ready(&client, &format!("{base}/metadata")).await;
    let hook = Receiver::start().await;
    let sub = client
        .post(format!("{base}/Subscription"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Subscription", "status": "requested", "reason": "every patient write",
            "criteria": "Patient", "channel": {"type": "rest-hook", "endpoint": hook.url, "payload": "application/fhir+json"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(sub.status(), 201);
    // Four writers, each updating its own Patient as fast as the server acknowledges.
    let acknowledged: Acknowledged = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, token, base, acknowledged, stop) = (client.clone(), token.clone(), base.clone(), acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                let id = format!("k{w}");
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    let body = json!({"resourceType": "Patient", "id": id, "birthDate": format!("19{:02}-01-01", n % 100)});
                    let sent = client.put(format!("{base}/Patient/{id}")).bearer_auth(&token).header("content-type", "application/fhir+json").body(body.to_string()).send().await;
                    let Ok(r) = sent else { continue };
                    if !r.status().is_success() {
                        continue;
                    }
                    let Ok(stored) = r.json::<Value>().await else { continue };
                    if let Some(v) = stored["meta"]["versionId"].as_str().and_then(|v| v.parse().ok()) {
                        acknowledged.lock().unwrap().entry(id.clone()).or_default().push(v);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // SIGKILL: no shutdown, no flush.
    server.child.kill().unwrap();
    let _ = server.child.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        let _ = w.await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let total: usize = acknowledged.values().map(Vec::len).sum();
    assert!(total >= 20, "the load ran: {total} acknowledged writes");
    drop(server);
    let _server = crate::cli::start(&dir, Some(&url), port, &args);
    crate::cli::wait_ready(&client, &format!("{base}/metadata")).await;
    // Every acknowledged version reaches the stream and the rest-hook, each resource's in order.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = read_stream(&name).await;
        let streamed = versions_by_id(messages.iter().filter(|m| m.payload["resourceType"] == "Patient").map(|m| {
            (m.payload["id"].as_str().unwrap().to_owned(), m.payload["versionId"].as_str().unwrap().parse::<i64>().unwrap())
        }));
        let hooked = versions_by_id(hook.calls().iter().filter_map(|c| {
            let body: Value = serde_json::from_str(&c.body).ok()?;
            Some((body["id"].as_str()?.to_owned(), body["meta"]["versionId"].as_str()?.parse::<i64>().ok()?))
        }));
        let complete = |got: &HashMap<String, Vec<i64>>| acknowledged.iter().all(|(id, vs)| vs.iter().all(|v| got.get(id).is_some_and(|g| g.contains(v))));
        if complete(&streamed) && complete(&hooked) {
            for got in [&streamed, &hooked] {
                for (id, vs) in got {
                    assert!(vs.windows(2).all(|w| w[0] <= w[1]), "{id}: versions out of order {vs:?}");
                }
            }
            break;
        }
        assert!(Instant::now() < deadline, "acknowledged writes missing after the restart: {acknowledged:?} streamed {streamed:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    delete_stream(&name).await;
}

fn versions_by_id(pairs: impl Iterator<Item = (String, i64)>) -> HashMap<String, Vec<i64>> {
    let mut by_id: HashMap<String, Vec<i64>> = HashMap::new();
    for (id, v) in pairs {
        by_id.entry(id).or_default().push(v);
    }
    by_id
}
