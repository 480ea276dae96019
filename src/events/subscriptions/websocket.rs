//! The websocket channel (`GET /ws`, upgraded).
//!
//! - R4 (subscription.html#2.46.7.2): the client sends `bind <id>` on a connection opened with
//!   its access token (`Authorization: Bearer …` on the upgrade request); the server answers
//!   `bound <id>` and sends `ping <id>` for each notification.
//! - Backport IG: the client gets a token from `Subscription/<id>/$get-ws-binding-token` and
//!   sends `bind-with-token <token>` (no header needed — browsers cannot set one); the server
//!   answers with a handshake Bundle and then sends each notification Bundle (topic-based) or
//!   `ping <id>` (criteria-based).
//!
//! Binding reads the Subscription as the caller (out of reach = `error`, exactly as for an id
//! that does not exist). Sockets live on the instance they connected to: each instance's
//! notifier wakes on `ironfhir_notification` and sends its sockets the events past their
//! cursor, so it does not matter which instance queued them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use sha2::Digest;
use sqlx::Row;
use tokio::sync::{mpsc, watch};

use super::notification::{self, Event};
use super::{Content, Spec};
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::rest::AppState;
use crate::store::Store;

/// How long a binding token is good for.
pub const TOKEN_LIFETIME: chrono::Duration = chrono::Duration::minutes(5);

/// One bound socket.
struct Bound {
    socket: u64,
    sender: mpsc::UnboundedSender<String>,
    /// Last event number sent to it.
    cursor: i64,
}

/// The sockets bound on this instance, by Subscription id.
#[derive(Default)]
pub struct Hub {
    bound: Mutex<HashMap<String, Vec<Bound>>>,
    next_socket: std::sync::atomic::AtomicU64,
}

impl Hub {
    fn add(&self, subscription: &str, socket: u64, sender: mpsc::UnboundedSender<String>, cursor: i64) {
        if let Ok(mut bound) = self.bound.lock() {
            bound.entry(subscription.to_owned()).or_default().push(Bound { socket, sender, cursor });
        }
    }

    fn remove(&self, socket: u64) {
        if let Ok(mut bound) = self.bound.lock() {
            bound.values_mut().for_each(|v| v.retain(|b| b.socket != socket));
            bound.retain(|_, v| !v.is_empty());
        }
    }

    /// Subscriptions with bound sockets and the smallest cursor among them.
    fn watched(&self) -> Vec<(String, i64)> {
        self.bound.lock().map(|b| b.iter().map(|(id, v)| (id.clone(), v.iter().map(|s| s.cursor).min().unwrap_or(0))).collect()).unwrap_or_default()
    }

    /// Sends `messages` (event number, text) to the sockets of `subscription` whose cursor is
    /// behind them; whether any socket was sent anything.
    fn send(&self, subscription: &str, messages: &[(i64, String)]) -> bool {
        let mut sent = false;
        if let Ok(mut bound) = self.bound.lock()
            && let Some(sockets) = bound.get_mut(subscription)
        {
            for socket in sockets.iter_mut() {
                let behind = socket.cursor;
                for (number, text) in messages.iter().filter(|(n, _)| *n > behind) {
                    if socket.sender.send(text.clone()).is_ok() {
                        socket.cursor = *number;
                        sent = true;
                    }
                }
            }
        }
        sent
    }

    /// How many sockets are bound (for tests and metrics).
    pub fn bound_sockets(&self) -> usize {
        self.bound.lock().map(|b| b.values().map(Vec::len).sum()).unwrap_or(0)
    }
}

/// Runs this instance's notifier: after each `ironfhir_notification` (or every second), sends
/// bound sockets the notifications past their cursors.
pub fn spawn_notifier(
    store: Store,
    hub: Arc<Hub>,
    grants: Arc<crate::access::RoleGrants>,
    trail: crate::audit::trail::AuditTrail,
    mut wake: watch::Receiver<u64>,
) {
    tokio::spawn(async move {
        loop {
            for (subscription, cursor) in hub.watched() {
                if let Err(e) = notify(&store, &grants, &trail, &hub, &subscription, cursor).await {
                    tracing::warn!(error = %e, subscription = %subscription, "websocket notification failed");
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.changed()).await;
        }
    });
}

/// Sends the notifications past `cursor` to the sockets bound to `subscription`; those that
/// name resources are audited like a rest-hook round.
async fn notify(store: &Store, grants: &crate::access::RoleGrants, trail: &crate::audit::trail::AuditTrail, hub: &Hub, subscription: &str, cursor: i64) -> FhirResult<()> {
    let rows = sqlx::query(
        "SELECT event_number, kind, focus_type, focus_id, focus_version, interaction, recorded_at
           FROM subscription_notification
          WHERE subscription_id = $1 AND kind = 'event-notification' AND event_number > $2
          ORDER BY event_number LIMIT 500",
    )
    .bind(subscription)
    .bind(cursor)
    .fetch_all(store.pool())
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let events: Vec<Event> = rows.iter().map(super::delivery::event_of).collect();
    let Some(spec) = super::delivery::current_spec(store, subscription, "").await? else { return Ok(()) };
    let (messages, owner) = messages(store, grants, &spec, &events).await?;
    let sent = hub.send(subscription, &messages);
    if let Some(owner) = owner.filter(|_| sent && spec.content != Content::Empty) {
        let named: Vec<&Event> = events.iter().filter(|e| e.focus_id.is_some() && e.number > cursor).collect();
        if !named.is_empty() {
            trail.record(super::delivery::audit_event(&owner, &spec, &named, true)).await?;
        }
    }
    let last = events.last().map(|e| e.number).unwrap_or(cursor);
    sqlx::query("UPDATE subscription_notification SET delivered_at = now() WHERE subscription_id = $1 AND event_number <= $2 AND delivered_at IS NULL")
        .bind(subscription)
        .bind(last)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// The websocket texts of `events`: `ping <id>` for criteria-based Subscriptions, one
/// notification Bundle each for topic-based ones (focus read as the owner, who is returned
/// then, for the audit trail).
async fn messages(store: &Store, grants: &crate::access::RoleGrants, spec: &Spec, events: &[Event]) -> FhirResult<(Vec<(i64, String)>, Option<Arc<Principal>>)> {
    if spec.topic.is_none() && spec.content != Content::IdOnly {
        return Ok((events.iter().map(|e| (e.number, format!("ping {}", spec.id))).collect(), None));
    }
    let owner = match super::owner(store, grants, &spec.id).await {
        Ok(Some(owner)) => owner,
        _ => return Ok((vec![], None)),
    };
    let mut out = vec![];
    for event in events {
        let bundle = notification::bundle(store, &owner.principal, spec, &owner.base, "event-notification", event.number, std::slice::from_ref(event), None).await?;
        out.push((event.number, bundle.to_string()));
    }
    Ok((out, Some(owner.principal)))
}

/// `GET /ws`: upgrades to a websocket. An `Authorization` header, if sent, is checked like
/// any request's and allows `bind <id>`.
pub async fn upgrade(State(state): State<Arc<AppState>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let principal = if headers.contains_key(axum::http::header::AUTHORIZATION) {
        match crate::rest::authenticate(&state, &headers) {
            Ok(p) => match crate::access::with_current_role(&state.store, &state.role_grants, p).await {
                Ok(p) => Some(p),
                Err(e) => return crate::rest::error_response(&e, crate::rest::format::Format::Json, false),
            },
            Err(e) => return crate::rest::error_response(&e, crate::rest::format::Format::Json, false),
        }
    } else {
        None
    };
    ws.max_message_size(4096).on_upgrade(move |socket| session(state, principal, socket))
}

/// One connection: reads bind requests, writes what the hub queues for it.
async fn session(state: Arc<AppState>, principal: Option<Arc<Principal>>, socket: WebSocket) {
    let Some(events) = state.events.clone() else { return };
    let hub = events.hub.clone();
    let id = hub.next_socket.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (sender, mut outgoing) = mpsc::unbounded_channel::<String>();
    let (mut sink, mut stream) = futures::StreamExt::split(socket);
    let writer = tokio::spawn(async move {
        use futures::SinkExt;
        let mut keepalive = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                text = outgoing.recv() => match text {
                    Some(text) => if sink.send(Message::Text(text.into())).await.is_err() { return },
                    None => return,
                },
                _ = keepalive.tick() => if sink.send(Message::Ping(Vec::new().into())).await.is_err() { return },
            }
        }
    });
    while let Some(Ok(message)) = futures::StreamExt::next(&mut stream).await {
        let Message::Text(text) = message else {
            continue;
        };
        let reply = bind(&state, principal.as_deref(), text.as_str(), &sender, id).await;
        if let Some(reply) = reply
            && sender.send(reply).is_err()
        {
            break;
        }
    }
    hub.remove(id);
    writer.abort();
}

/// Handles one client message; the text to answer.
async fn bind(state: &AppState, principal: Option<&Principal>, text: &str, sender: &mpsc::UnboundedSender<String>, socket: u64) -> Option<String> {
    let text = text.trim();
    let (subscription, reader) = if let Some(id) = text.strip_prefix("bind-with-token ") {
        match redeem(&state.store, id.trim()).await {
            Ok(Some(subscription)) => (subscription, None),
            _ => return Some("error invalid or expired binding token".into()),
        }
    } else if let Some(id) = text.strip_prefix("bind ") {
        let id = id.trim().to_owned();
        let Some(principal) = principal else { return Some(format!("error {} the connection carries no access token", crate::fhir::types::sanitize(&id))) };
        (id, Some(principal))
    } else {
        return None;
    };
    let reply_error = |why: &str| Some(format!("error {} {why}", crate::fhir::types::sanitize(&subscription)));
    // The caller must be able to read the Subscription (out of reach = unknown).
    let readable = match (reader, Id::parse(&subscription), ResourceType::parse("Subscription")) {
        (Some(p), Ok(id), Ok(rt)) => crate::interactions::read::read(&state.store, p, &rt, &id, "").await.map(|_| ()),
        (None, Ok(_), Ok(_)) => Ok(()),
        _ => Err(FhirError::NotFound("no such Subscription".into())),
    };
    if readable.is_err() {
        return reply_error("unknown Subscription");
    }
    let spec = match super::delivery::current_spec(&state.store, &subscription, "").await {
        Ok(Some(spec)) if spec.channel == super::Channel::Websocket => spec,
        Ok(Some(_)) => return reply_error("is not a websocket Subscription"),
        _ => return reply_error("unknown Subscription"),
    };
    let cursor: i64 = sqlx::query_scalar("SELECT events_since_start FROM subscription_state WHERE subscription_id = $1")
        .bind(&subscription)
        .fetch_optional(state.store.pool())
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let Some(events) = &state.events else { return reply_error("events are not running") };
    events.hub.add(&subscription, socket, sender.clone(), cursor);
    if spec.topic.is_some() {
        let handshake = notification::status_parameters(&spec, "", "handshake", cursor, &[], None);
        let bundle = serde_json::json!({
            "resourceType": "Bundle", "type": "history",
            "meta": {"profile": [notification::NOTIFICATION_PROFILE]},
            "timestamp": crate::interactions::instant(&crate::interactions::now()),
            "entry": [{"fullUrl": format!("urn:uuid:{}", handshake["id"].as_str().unwrap_or_default()), "resource": handshake,
                       "request": {"method": "GET", "url": format!("Subscription/{subscription}/$status")}, "response": {"status": "200"}}],
        });
        return Some(bundle.to_string());
    }
    Some(format!("bound {subscription}"))
}

/// Issues a binding token for `subscription` (the caller's right to read it already checked).
pub async fn issue_token(store: &Store, subscription: &str) -> FhirResult<(String, chrono::DateTime<chrono::Utc>)> {
    use base64::Engine;
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let expires = chrono::Utc::now() + TOKEN_LIFETIME;
    sqlx::query("DELETE FROM subscription_ws_token WHERE expires_at < now()").execute(store.pool()).await?;
    sqlx::query("INSERT INTO subscription_ws_token (token_hash, subscription_id, expires_at) VALUES ($1, $2, $3)")
        .bind(sha2::Sha256::digest(token.as_bytes()).to_vec())
        .bind(subscription)
        .bind(expires)
        .execute(store.pool())
        .await?;
    Ok((token, expires))
}

/// The Subscription an unexpired binding token stands for.
async fn redeem(store: &Store, token: &str) -> FhirResult<Option<String>> {
    let row = sqlx::query("SELECT subscription_id FROM subscription_ws_token WHERE token_hash = $1 AND expires_at > now()")
        .bind(sha2::Sha256::digest(token.as_bytes()).to_vec())
        .fetch_optional(store.pool())
        .await?;
    Ok(row.map(|r| r.get(0)))
}
