//! What a notification looks like on the wire.
//!
//! Topic-based (Backport IG, R4 form): a `history` Bundle whose first entry is the
//! SubscriptionStatus as a `Parameters` resource (`backport-subscription-status-r4`), followed
//! by one entry per focus — with the resource for `full-resource`, its URL only for `id-only`,
//! none for `empty`. Classic R4 criteria Subscriptions use the same Bundle only when they ask
//! for `id-only`; otherwise the rest-hook posts nothing or PUTs the resource
//! ([`super::delivery`]). Focus resources are read as the Subscription's owner (or, for
//! `$events`, as the caller) and masked like any response to them.

use serde_json::{Value, json};

use super::{Content, Spec};
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::store::Store;

/// The Backport IG's profiles of the R4 notification Bundle and its status Parameters.
pub const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";
pub const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

/// One queued notification event.
#[derive(Debug, Clone)]
pub struct Event {
    pub number: i64,
    /// `event-notification` or `handshake`.
    pub kind: String,
    pub focus_type: Option<String>,
    pub focus_id: Option<String>,
    pub focus_version: Option<i64>,
    pub interaction: Option<String>,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// A reference to `path` against `base` (relative when the base is unknown).
pub fn absolute(base: &str, path: &str) -> String {
    if base.is_empty() { path.to_owned() } else { format!("{}/{path}", base.trim_end_matches('/')) }
}

/// The SubscriptionStatus of a Subscription, as the R4 Backport's `Parameters`.
pub fn status_parameters(spec: &Spec, base: &str, notification_type: &str, events_since_start: i64, events: &[Event], error: Option<&str>) -> Value {
    let mut parameters = vec![json!({"name": "subscription", "valueReference": {"reference": absolute(base, &format!("Subscription/{}", spec.id))}})];
    if let Some(topic) = spec.topic {
        parameters.push(json!({"name": "topic", "valueCanonical": topic.url}));
    }
    parameters.push(json!({"name": "status", "valueCode": spec.status}));
    parameters.push(json!({"name": "type", "valueCode": notification_type}));
    parameters.push(json!({"name": "events-since-subscription-start", "valueString": events_since_start.to_string()}));
    for event in events.iter().filter(|e| e.kind == "event-notification") {
        let mut part = vec![
            json!({"name": "event-number", "valueString": event.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": crate::interactions::instant(&event.recorded_at)}),
        ];
        if spec.content != Content::Empty
            && let (Some(t), Some(id), Some(v)) = (&event.focus_type, &event.focus_id, event.focus_version)
        {
            part.push(json!({"name": "focus", "valueReference": {"reference": absolute(base, &format!("{t}/{id}/_history/{v}"))}}));
        }
        parameters.push(json!({"name": "notification-event", "part": part}));
    }
    if let Some(error) = error {
        parameters.push(json!({"name": "error", "valueCodeableConcept": {"text": error}}));
    }
    json!({
        "resourceType": "Parameters",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    })
}

/// A notification Bundle for `events` of `spec`, focus resources read as `reader`.
#[allow(clippy::too_many_arguments)]
pub async fn bundle(
    store: &Store,
    reader: &Principal,
    spec: &Spec,
    base: &str,
    notification_type: &str,
    events_since_start: i64,
    events: &[Event],
    error: Option<&str>,
) -> FhirResult<Value> {
    let status = status_parameters(spec, base, notification_type, events_since_start, events, error);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", status["id"].as_str().unwrap_or_default()),
        "resource": status,
        "request": {"method": "GET", "url": absolute(base, &format!("Subscription/{}/$status", spec.id))},
        "response": {"status": "200"},
    })];
    if spec.content != Content::Empty {
        for event in events {
            let (Some(t), Some(id), Some(v)) = (&event.focus_type, &event.focus_id, event.focus_version) else { continue };
            let (method, status) = match event.interaction.as_deref() {
                Some("create") => ("POST", "201"),
                Some("delete") => ("DELETE", "204"),
                _ => ("PUT", "200"),
            };
            let mut entry = json!({
                "fullUrl": absolute(base, &format!("{t}/{id}")),
                "request": {"method": method, "url": format!("{t}/{id}")},
                "response": {"status": status},
            });
            if spec.content == Content::FullResource && method != "DELETE" {
                match focus_as(store, reader, t, id, v, base).await? {
                    Some(resource) => entry["resource"] = resource,
                    // Out of the reader's reach by now: the entry says nothing of it.
                    None => continue,
                }
            }
            entries.push(entry);
        }
    }
    Ok(json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": crate::interactions::instant(&crate::interactions::now()),
        "entry": entries,
    }))
}

/// Version `version` of a focus as `reader` may see it (masked), or `None` when it may not.
pub async fn focus_as(store: &Store, reader: &Principal, resource_type: &str, id: &str, version: i64, base: &str) -> FhirResult<Option<Value>> {
    let (Ok(rt), Ok(id)) = (ResourceType::parse(resource_type), Id::parse(id)) else { return Ok(None) };
    match crate::interactions::read::vread(store, reader, &rt, &id, &version.to_string(), base).await {
        Ok(stored) => Ok(stored.content.map(|mut content| {
            if let Some(mask) = reader.mask() {
                crate::access::mask::apply(&mut content, &mask);
            }
            content
        })),
        Err(FhirError::Forbidden(_) | FhirError::NotFound(_) | FhirError::Gone(_) | FhirError::Unauthorized(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
