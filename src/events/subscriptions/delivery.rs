//! Rest-hook delivery: each instance leases Subscriptions that have notifications due
//! (`subscription_state`, row locks decide between instances) and sends them in event-number
//! order per resource (up to 16 resources at a time), so a receiver sees each resource's events in order. A failed call
//! (no answer within 10 s, or not 2xx) is retried with exponential backoff (1 s, 2 s, 4 s …
//! at most 10 min) and holds back the notifications behind it; after `max_failures` failures
//! in a row the Subscription is set to `error` with the reason. Each round's deliveries that
//! carry or name resources are one AuditEvent (the Subscription and every focus version).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::watch;

use super::notification::{self, Event};
use super::{Channel, Content, Spec};
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::store::Store;

/// Notifications sent per lease round at most.
const PER_ROUND: i64 = 200;

/// How long a lease on a Subscription's deliveries lasts.
const LEASE_SECONDS: f64 = 15.0;

/// A round stops taking new notifications after this long, well inside the lease.
const ROUND_BUDGET: Duration = Duration::from_secs(8);

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Resources whose notifications are sent at the same time, per Subscription.
const CONCURRENT: usize = 16;

/// Time allowed for one call to an endpoint.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The delivery machinery of one instance.
pub struct Delivery {
    pub store: Store,
    pub grants: Arc<crate::access::RoleGrants>,
    pub trail: crate::audit::trail::AuditTrail,
    pub base: String,
    pub instance: uuid::Uuid,
    pub max_failures: i32,
    pub retention: chrono::Duration,
}

/// Listens for `ironfhir_notification` (sent when notifications are queued).
pub async fn listen(store: Store) -> watch::Receiver<u64> {
    crate::events::outbox::notifications(store, "ironfhir_notification").await
}

/// Runs the rest-hook delivery loop of this instance.
pub fn spawn(delivery: Arc<Delivery>, mut wake: watch::Receiver<u64>) {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(CALL_TIMEOUT).redirect(reqwest::redirect::Policy::none()).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the rest-hook HTTP client; Subscriptions are not delivered");
                return;
            }
        };
        let mut last_prune = std::time::Instant::now();
        loop {
            match claim(&delivery).await {
                Ok(claimed) => {
                    let rounds = claimed.into_iter().map(|id| {
                        let (delivery, client) = (delivery.clone(), client.clone());
                        async move {
                            if let Err(e) = deliver(&delivery, &client, &id).await {
                                tracing::warn!(error = %e, subscription = %id, "rest-hook delivery round failed");
                            }
                            let _ = release(&delivery, &id).await;
                        }
                    });
                    futures::future::join_all(rounds).await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim Subscriptions for delivery"),
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = std::time::Instant::now();
                if let Err(e) = prune(&delivery).await {
                    tracing::warn!(error = %e, "cannot prune old notifications");
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), wake.changed()).await;
        }
    });
}

/// Leases the rest-hook Subscriptions with notifications due that no other instance holds.
async fn claim(d: &Delivery) -> FhirResult<Vec<String>> {
    let rows = sqlx::query(
        "UPDATE subscription_state s SET holder = $1, lease_until = now() + make_interval(secs => $2)
          WHERE s.channel = 'rest-hook' AND (s.lease_until < now() OR s.holder = $1)
            AND EXISTS (SELECT 1 FROM subscription_notification n
                         WHERE n.subscription_id = s.subscription_id AND n.delivered_at IS NULL AND n.next_attempt_at <= now())
          RETURNING subscription_id",
    )
    .bind(d.instance)
    .bind(LEASE_SECONDS)
    .fetch_all(d.store.pool())
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn release(d: &Delivery, id: &str) -> FhirResult<()> {
    sqlx::query("UPDATE subscription_state SET holder = NULL, lease_until = '-infinity' WHERE subscription_id = $1 AND holder = $2")
        .bind(id)
        .bind(d.instance)
        .execute(d.store.pool())
        .await?;
    Ok(())
}

/// Deletes delivered notifications (and never-delivered websocket ones) older than the
/// retention.
async fn prune(d: &Delivery) -> FhirResult<()> {
    sqlx::query(
        "DELETE FROM subscription_notification n USING subscription_state s
          WHERE n.subscription_id = s.subscription_id AND n.recorded_at < now() - make_interval(secs => $1)
            AND (n.delivered_at IS NOT NULL OR s.channel = 'websocket')",
    )
    .bind(d.retention.num_seconds() as f64)
    .execute(d.store.pool())
    .await?;
    Ok(())
}

/// The current Subscription as the server reads it itself; `None` when deleted.
pub async fn current_spec(store: &Store, id: &str, base: &str) -> FhirResult<Option<Spec>> {
    let reader = Principal::internal("ironfhir-subscriptions", "system/Subscription.r");
    let (Ok(rt), Ok(id)) = (ResourceType::parse("Subscription"), Id::parse(id)) else { return Ok(None) };
    match crate::interactions::read::read(store, &reader, &rt, &id, base).await {
        Ok(stored) => match stored.content {
            Some(content) => Spec::parse(id.as_str(), &content, base).map(Some).or(Ok(None)),
            None => Ok(None),
        },
        Err(FhirError::NotFound(_) | FhirError::Gone(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The pending notifications of a Subscription that are due, in order — except those behind
/// an undelivered notification of the same resource (waiting for its retry): a resource's
/// notifications are never delivered out of order.
async fn due(store: &Store, id: &str) -> FhirResult<Vec<(Event, i32)>> {
    let rows = sqlx::query(
        "SELECT n.event_number, n.kind, n.focus_type, n.focus_id, n.focus_version, n.interaction, n.recorded_at, n.attempts
           FROM subscription_notification n
          WHERE n.subscription_id = $1 AND n.delivered_at IS NULL AND n.next_attempt_at <= now()
            AND NOT EXISTS (SELECT 1 FROM subscription_notification e
                             WHERE e.subscription_id = n.subscription_id AND e.delivered_at IS NULL
                               AND e.event_number < n.event_number AND e.next_attempt_at > now()
                               AND (e.kind = 'handshake' OR (e.focus_type = n.focus_type AND e.focus_id = n.focus_id)))
          ORDER BY n.event_number LIMIT $2",
    )
    .bind(id)
    .bind(PER_ROUND)
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(|r| (event_of(r), r.get(7))).collect())
}

/// A notification row (columns event_number … recorded_at first).
pub fn event_of(r: &sqlx::postgres::PgRow) -> Event {
    Event {
        number: r.get(0),
        kind: r.get(1),
        focus_type: r.get(2),
        focus_id: r.get(3),
        focus_version: r.get(4),
        interaction: r.get(5),
        recorded_at: r.get(6),
    }
}

/// One round for one Subscription: sends what is due, each resource's notifications in order.
async fn deliver(d: &Delivery, client: &reqwest::Client, id: &str) -> FhirResult<()> {
    let Some(spec) = current_spec(&d.store, id, &d.base).await? else { return Ok(()) };
    if !spec.is_live() {
        return Ok(());
    }
    let Channel::RestHook { endpoint, headers } = &spec.channel else { return Ok(()) };
    let owner = match super::owner(&d.store, &d.grants, id).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return fail_subscription(d, &spec, "the Subscription has no owner to notify as").await,
        Err(FhirError::Unauthorized(_)) => return fail_subscription(d, &spec, "the role that owns the Subscription has ended").await,
        Err(e) => return Err(e),
    };
    let started = std::time::Instant::now();
    let base = owner.base(&d.base).to_owned();
    let owner = owner.principal;
    let due = due(&d.store, id).await?;
    let counter = events_since_start(&d.store, id).await?;
    // Each delivered notification is marked as it goes; the state and the AuditEvent are
    // recorded once at the round's end. A handshake goes alone and first; the rest go as
    // one sequence per resource, up to CONCURRENT sequences at a time, so each resource's
    // notifications arrive in order while different resources' overlap.
    let mut delivered: Vec<Event> = vec![];
    let mut failures: Vec<(Event, i32, String)> = vec![];
    let mut groups: Vec<Vec<(Event, i32)>> = vec![];
    let mut group_of: std::collections::HashMap<(Option<String>, Option<String>), usize> = Default::default();
    for (event, attempts) in due {
        let key = if event.kind == "handshake" { (None, None) } else { (event.focus_type.clone(), event.focus_id.clone()) };
        match group_of.get(&key) {
            Some(&i) => groups[i].push((event, attempts)),
            None => {
                group_of.insert(key, groups.len());
                groups.push(vec![(event, attempts)]);
            }
        }
    }
    let handshake_first = groups.first().is_some_and(|g| g.first().is_some_and(|(e, _)| e.kind == "handshake"));
    let (first, rest) = if handshake_first { groups.split_at(1) } else { groups.split_at(0) };
    for stage in [first.to_vec(), rest.to_vec()] {
        let sequences = stage.into_iter().map(|group| {
            let (owner, base, spec) = (&owner, base.as_str(), &spec);
            async move {
                let mut sent = vec![];
                for (event, attempts) in group {
                    if started.elapsed() > ROUND_BUDGET {
                        return (sent, None);
                    }
                    match send(d, client, spec, owner, base, endpoint, headers, &event, counter).await {
                        Ok(()) => {
                            // Marked before the resource's next one is sent: after a crash
                            // at most the notification in flight comes again, never an
                            // older version after a newer one.
                            let marked = sqlx::query(
                                "UPDATE subscription_notification SET delivered_at = now(), attempts = attempts + 1 WHERE subscription_id = $1 AND event_number = $2",
                            )
                            .bind(id)
                            .bind(event.number)
                            .execute(d.store.pool())
                            .await;
                            sent.push(event);
                            if marked.is_err() {
                                return (sent, None);
                            }
                        }
                        Err(reason) => return (sent, Some((event, attempts, reason))),
                    }
                }
                (sent, None)
            }
        });
        let outcomes: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(futures::stream::iter(sequences), CONCURRENT)).await;
        for (sent, failed) in outcomes {
            delivered.extend(sent);
            failures.extend(failed);
        }
        if !failures.is_empty() {
            break; // a failed handshake holds everything back
        }
    }
    if !delivered.is_empty() {
        let numbers: Vec<i64> = delivered.iter().map(|e| e.number).collect();
        sqlx::query("UPDATE subscription_state SET failures = 0, last_error = NULL, last_delivered = greatest(last_delivered, $2) WHERE subscription_id = $1")
            .bind(id)
            .bind(numbers.iter().max().copied().unwrap_or(0))
            .execute(d.store.pool())
            .await?;
        let named: Vec<&Event> = delivered.iter().filter(|e| e.kind != "handshake" && e.focus_id.is_some()).collect();
        if spec.content != Content::Empty && !named.is_empty() {
            d.trail.record(audit_event(&owner, &spec, &named, true)).await?;
        }
    }
    if let Some((_, _, reason)) = failures.first() {
        let reason = reason.clone();
        for (event, attempts, _) in &failures {
            sqlx::query(
                "UPDATE subscription_notification SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $3)
                  WHERE subscription_id = $1 AND event_number = $2",
            )
            .bind(id)
            .bind(event.number)
            .bind(backoff(attempts + 1).as_secs_f64())
            .execute(d.store.pool())
            .await?;
        }
        let failed: i32 =
            sqlx::query_scalar("UPDATE subscription_state SET failures = failures + 1, last_error = $2 WHERE subscription_id = $1 RETURNING failures")
                .bind(id)
                .bind(&reason)
                .fetch_one(d.store.pool())
                .await?;
        tracing::info!(subscription = %id, failures = failed, "rest-hook delivery failed: {reason}");
        let named: Vec<&Event> = failures.iter().map(|(e, _, _)| e).filter(|e| e.focus_id.is_some()).collect();
        if spec.content != Content::Empty && !named.is_empty() {
            d.trail.record(audit_event(&owner, &spec, &named, false)).await?;
        }
        if failed >= d.max_failures {
            fail_subscription(d, &spec, &format!("{failed} delivery rounds in a row failed; last: {reason}")).await?;
        }
    }
    Ok(())
}

/// 1 s, 2 s, 4 s … after the n-th failed attempt, at most [`MAX_BACKOFF`].
pub fn backoff(attempts: i32) -> Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    Duration::from_secs(1u64 << exp.min(10)).min(MAX_BACKOFF)
}

async fn events_since_start(store: &Store, id: &str) -> FhirResult<i64> {
    Ok(sqlx::query_scalar("SELECT events_since_start FROM subscription_state WHERE subscription_id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
        .unwrap_or(0))
}

/// One call. Topic-based, `id-only` and handshakes: the notification Bundle, POSTed. Classic
/// R4: no payload — an empty POST; a payload — the resource PUT to `[endpoint]/[type]/[id]`.
#[allow(clippy::too_many_arguments)]
async fn send(
    d: &Delivery,
    client: &reqwest::Client,
    spec: &Spec,
    owner: &Principal,
    base: &str,
    endpoint: &str,
    headers: &[(String, String)],
    event: &Event,
    counter: i64,
) -> Result<(), String> {
    let bundle_form = spec.topic.is_some() || spec.content == Content::IdOnly || event.kind == "handshake";
    // events-since-subscription-start "inclusive of this notification": an event's own number
    // (the same on every redelivery); the current count for a handshake.
    let counter = if event.kind == "handshake" { counter } else { event.number };
    let (method, url, body) = if bundle_form {
        let kind = if event.kind == "handshake" { "handshake" } else { "event-notification" };
        let events: Vec<Event> = if event.kind == "handshake" { vec![] } else { vec![event.clone()] };
        let bundle = notification::bundle(&d.store, owner, spec, base, kind, counter, &events, None).await.map_err(|e| e.to_string())?;
        (reqwest::Method::POST, endpoint.to_owned(), Some(render(bundle, &spec.mime)?))
    } else if spec.content == Content::FullResource {
        let (Some(t), Some(id), Some(v)) = (&event.focus_type, &event.focus_id, event.focus_version) else { return Ok(()) };
        match notification::focus_as(&d.store, owner, t, id, v, base).await.map_err(|e| e.to_string())? {
            Some(resource) => (reqwest::Method::PUT, format!("{}/{t}/{id}", endpoint.trim_end_matches('/')), Some(render(resource, &spec.mime)?)),
            // No longer the owner's to see: nothing is sent.
            None => return Ok(()),
        }
    } else {
        (reqwest::Method::POST, endpoint.to_owned(), None)
    };
    let mut request = client.request(method, &url);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    request = match body {
        Some(bytes) => request.header("content-type", spec.mime.as_str()).body(bytes),
        None => request.header("content-length", "0"),
    };
    match request.send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the endpoint answered {}", response.status().as_u16())),
        Err(e) if e.is_timeout() => Err("the endpoint did not answer in time".to_owned()),
        Err(_) => Err("the endpoint could not be reached".to_owned()),
    }
}

fn render(value: Value, mime: &str) -> Result<Vec<u8>, String> {
    let format = if mime == "application/fhir+xml" { crate::rest::format::Format::Xml } else { crate::rest::format::Format::Json };
    crate::rest::format::render(value, format, false).map_err(|e| e.to_string())
}

/// The AuditEvent of one delivery round: the owner's data transmitted to the endpoint (the
/// Subscription and each focus version as entities).
pub(super) fn audit_event(owner: &Principal, spec: &Spec, events: &[&Event], delivered: bool) -> Value {
    let mut entity = vec![json!({"what": {"reference": format!("Subscription/{}", spec.id)}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "22", "display": "Job Stream"}})];
    for event in events {
        if let (Some(t), Some(id), Some(v)) = (&event.focus_type, &event.focus_id, event.focus_version) {
            entity.push(json!({"what": {"reference": format!("{t}/{id}/_history/{v}")}}));
        }
    }
    let numbers = match (events.first(), events.last()) {
        (Some(a), Some(b)) if a.number != b.number => format!("notifications {} to {}", a.number, b.number),
        (Some(a), _) => format!("notification {}", a.number),
        _ => "notifications".to_owned(),
    };
    json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110106", "display": "Export"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}],
        "action": "R",
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": if delivered { "0" } else { "4" },
        "outcomeDesc": format!("Subscription {numbers} ({})", if delivered { "delivered" } else { "delivery failed" }),
        "agent": [crate::audit::requesting_agent(owner, None)],
        "source": crate::audit::source(),
        "entity": entity,
    })
}

/// Sets a Subscription to `error` with `reason` (a write by the server itself, audited).
pub async fn fail_subscription(d: &Delivery, spec: &Spec, reason: &str) -> FhirResult<()> {
    set_status(&d.store, &d.trail, &spec.id, "error", Some(reason), &d.base).await
}

/// Writes a Subscription's status (and `error`) through the ordinary update path as the
/// server, with its audit intent and AuditEvent.
pub async fn set_status(store: &Store, trail: &crate::audit::trail::AuditTrail, id: &str, status: &str, error: Option<&str>, base: &str) -> FhirResult<()> {
    let principal = Arc::new(Principal::internal("ironfhir-subscriptions", "system/Subscription.rs system/Subscription.u"));
    let rt = ResourceType::parse("Subscription")?;
    let id = Id::parse(id)?;
    let request_id = uuid::Uuid::new_v4();
    let write = write_status(store, &principal, &rt, &id, status, error, base);
    let written = if trail.enabled() {
        crate::audit::intent::scope(crate::audit::intent::Intent::new(request_id, principal.clone(), None), write).await?
    } else {
        write.await?
    };
    if let Some(version) = written {
        let event = crate::audit::server_update_event(&principal, &format!("Subscription/{id}/_history/{version}"), &format!("Subscription status set to {status}"));
        trail.record_for(event, Some(request_id)).await?;
    }
    Ok(())
}

async fn write_status(
    store: &Store,
    principal: &Principal,
    rt: &ResourceType,
    id: &Id,
    status: &str,
    error: Option<&str>,
    base: &str,
) -> FhirResult<Option<i64>> {
    store
        .with_transaction(|mut tx| {
            Box::pin(async move {
                let result = async {
                    let Some(mut content) = crate::store::current_content(&mut tx, "Subscription", id.as_str()).await? else { return Ok(None) };
                    if content.get("status").and_then(Value::as_str) == Some(status) {
                        return Ok(None);
                    }
                    content["status"] = json!(status);
                    match error {
                        Some(e) => content["error"] = json!(e),
                        None => {
                            if let Some(o) = content.as_object_mut() {
                                o.remove("error");
                            }
                        }
                    }
                    let outcome = crate::interactions::update::put_version(&mut tx, principal, rt, id, content, None, "PUT", false, base).await?;
                    Ok(Some(outcome.stored.version_id))
                }
                .await;
                (tx, result)
            })
        })
        .await
}
