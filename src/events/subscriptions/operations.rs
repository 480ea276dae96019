//! The Backport IG's operations on Subscription, each reading the Subscription as the caller
//! first (out of reach = 404, like a Subscription that does not exist):
//!
//! - `$status` (instance, or type level with `id=`): a `searchset` Bundle of SubscriptionStatus
//!   Parameters (`query-status`).
//! - `$events` (`eventsSinceNumber`, `eventsUntilNumber`, `content`): the retained
//!   notifications as a notification Bundle (`query-event`) — catch-up after an outage; focus
//!   resources are read as the caller.
//! - `$get-ws-binding-token`: a token for `bind-with-token` on the websocket, 5 minutes.

use serde_json::{Value, json};
use sqlx::Row;

use super::notification::{self, Event};
use super::{Content, Spec};
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::store::Store;

/// Notifications returned by one `$events` call at most.
const MAX_EVENTS: i64 = 1000;

/// The Subscription as the caller may read it.
async fn readable(store: &Store, principal: &Principal, id: &Id, base: &str) -> FhirResult<Spec> {
    let stored = crate::interactions::read::read(store, principal, &ResourceType::parse("Subscription")?, id, base).await?;
    let content = stored.content.ok_or_else(|| FhirError::Gone("the Subscription was deleted".into()))?;
    Spec::parse(id.as_str(), &content, base)
}

/// The counter and last error of a Subscription.
async fn state(store: &Store, id: &str) -> FhirResult<(i64, Option<String>)> {
    let row = sqlx::query("SELECT events_since_start, last_error FROM subscription_state WHERE subscription_id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))).unwrap_or((0, None)))
}

/// `$status` of the given Subscriptions: a searchset of their SubscriptionStatus.
pub async fn status(store: &Store, principal: &Principal, ids: &[Id], base: &str) -> FhirResult<Value> {
    let mut entries = vec![];
    for id in ids {
        let spec = readable(store, principal, id, base).await?;
        let (counter, error) = state(store, id.as_str()).await?;
        let status = notification::status_parameters(&spec, base, "query-status", counter, &[], error.as_deref().filter(|_| spec.status == "error"));
        entries.push(json!({"fullUrl": format!("urn:uuid:{}", status["id"].as_str().unwrap_or_default()), "resource": status, "search": {"mode": "match"}}));
    }
    Ok(json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries}))
}

/// `$events`: the retained notifications numbered `since..=until` (both optional).
pub async fn events(store: &Store, principal: &Principal, id: &Id, params: &[(String, String)], base: &str) -> FhirResult<Value> {
    let mut spec = readable(store, principal, id, base).await?;
    let number = |name: &str| -> FhirResult<Option<i64>> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.parse::<i64>().map_err(|_| FhirError::BadRequest(format!("$events: {name} must be an integer"))))
            .transpose()
    };
    let since = number("eventsSinceNumber")?.unwrap_or(1);
    let until = number("eventsUntilNumber")?.unwrap_or(i64::MAX);
    if let Some((_, content)) = params.iter().find(|(k, _)| k == "content") {
        spec.content = match content.as_str() {
            "empty" => Content::Empty,
            "id-only" => Content::IdOnly,
            "full-resource" => Content::FullResource,
            _ => return Err(FhirError::BadRequest("$events: content is empty, id-only or full-resource".into())),
        };
    }
    let rows = sqlx::query(
        "SELECT event_number, kind, focus_type, focus_id, focus_version, interaction, recorded_at FROM subscription_notification
          WHERE subscription_id = $1 AND kind = 'event-notification' AND event_number BETWEEN $2 AND $3
          ORDER BY event_number LIMIT $4",
    )
    .bind(id.as_str())
    .bind(since)
    .bind(until)
    .bind(MAX_EVENTS)
    .fetch_all(store.pool())
    .await?;
    let events: Vec<Event> = rows.iter().map(super::delivery::event_of).collect();
    let (counter, _) = state(store, id.as_str()).await?;
    notification::bundle(store, principal, &spec, base, "query-event", counter, &events, None).await
}

/// `$get-ws-binding-token`: a token, its expiry, the Subscription and the websocket URL.
pub async fn binding_token(store: &Store, principal: &Principal, id: &Id, base: &str) -> FhirResult<Value> {
    let spec = readable(store, principal, id, base).await?;
    if spec.channel != super::Channel::Websocket {
        return Err(FhirError::BadRequest("$get-ws-binding-token: the Subscription's channel is not websocket".into()));
    }
    let (token, expires) = super::websocket::issue_token(store, id.as_str()).await?;
    Ok(json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "token", "valueString": token},
            {"name": "expiration", "valueDateTime": crate::interactions::instant(&expires)},
            {"name": "subscription", "valueString": notification::absolute(base, &format!("Subscription/{id}"))},
            {"name": "websocket-url", "valueUrl": websocket_url(base)},
        ],
    }))
}

/// The websocket endpoint of a FHIR base (`https://h/fhir` → `wss://h/ws`).
pub fn websocket_url(base: &str) -> String {
    let origin = base.trim_end_matches('/').trim_end_matches("/fhir");
    let origin = origin.strip_prefix("https://").map(|o| format!("wss://{o}")).or_else(|| origin.strip_prefix("http://").map(|o| format!("ws://{o}")));
    format!("{}/ws", origin.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_urls_follow_the_base() {
        assert_eq!(super::websocket_url("https://h.example/fhir"), "wss://h.example/ws");
        assert_eq!(super::websocket_url("http://127.0.0.1:8080/fhir/"), "ws://127.0.0.1:8080/ws");
    }
}
