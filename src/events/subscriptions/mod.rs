//! FHIR R4 Subscriptions (subscription.html) and the Subscriptions R5 Backport IG.
//!
//! A Subscription is evaluated as its **owner** — the token that last wrote it, recorded in
//! `subscription_owner` — through the same search every request uses (`access::confine`
//! included): a notification is queued only when the owner's search finds the resource, and a
//! full-resource payload is read as the owner with its role's mask. So a notification never
//! carries, nor by its existence reveals, a resource its owner could not read.
//!
//! - Classic R4: `criteria` is a search (`Observation?code=…`); the rest-hook POSTs an empty
//!   body to the endpoint, or with a `payload` PUTs the resource to `[endpoint]/[type]/[id]`;
//!   the websocket channel sends `ping <id>` to sockets that sent `bind <id>`.
//! - Backport (topic-based): `criteria` is a topic's canonical URL ([`super::topics`]),
//!   narrowed by `backport-filter-criteria`; notifications are `history` Bundles whose first
//!   entry is a SubscriptionStatus `Parameters` ([`notification`]), numbered without gaps per
//!   Subscription; `$status`, `$events` and `$get-ws-binding-token` ([`operations`]).
//! - Lifecycle: a client writes `requested` (or `active`), the server stores `active` (after
//!   a handshake for topic-based rest-hooks); repeated delivery failures set `error` with the
//!   reason in `Subscription.error`; `off` stops everything; writing `requested` again
//!   resumes.
//!
//! Whose a Subscription is also decides who reaches it: the server stamps the owner
//! (`subscription-owner` extension: the acting PractitionerRole, the patient of a
//! patient-context token, or the user) and the server's `owner` search parameter indexes it —
//! a patient reaches their own Subscriptions, a role those of roles in its subtree, never the
//! endpoints and headers of anyone else's.

pub mod delivery;
pub mod matching;
pub mod notification;
pub mod operations;
pub mod websocket;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row;

use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::ResourceType;
use crate::store::Tx;

use super::topics::{self, Topic};

/// The Backport IG's Subscription profile.
pub const BACKPORT_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";
/// `Subscription.criteria` extension: search-style filters narrowing a topic.
pub const FILTER_CRITERIA: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
/// `Subscription.channel.payload` extension: `empty`, `id-only` or `full-resource`.
pub const PAYLOAD_CONTENT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
/// Who owns a Subscription (stamped by the server; indexed by the `owner` search parameter).
pub const OWNER_EXTENSION: &str = "https://ironfhir.dev/fhir/StructureDefinition/subscription-owner";

/// What a notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Empty,
    IdOnly,
    FullResource,
}

impl Content {
    /// The Backport IG's code.
    pub fn code(self) -> &'static str {
        match self {
            Content::Empty => "empty",
            Content::IdOnly => "id-only",
            Content::FullResource => "full-resource",
        }
    }

    fn parse(code: &str) -> Option<Content> {
        match code {
            "empty" => Some(Content::Empty),
            "id-only" => Some(Content::IdOnly),
            "full-resource" => Some(Content::FullResource),
            _ => None,
        }
    }
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// HTTP calls to `endpoint` with these extra headers.
    RestHook { endpoint: String, headers: Vec<(String, String)> },
    /// Sockets bound to the Subscription (`/ws`).
    Websocket,
}

impl Channel {
    /// The channel type's code (`subscription_state.channel`).
    pub fn code(&self) -> &'static str {
        match self {
            Channel::RestHook { .. } => "rest-hook",
            Channel::Websocket => "websocket",
        }
    }
}

/// A Subscription as the server acts on it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub status: String,
    /// The focus type.
    pub resource_type: String,
    /// The search a focus must match after the write (criteria, or the topic's query and the
    /// Subscription's filters).
    pub query: Vec<(String, String)>,
    /// Which writes trigger (`create`, `update`, `delete`).
    pub interactions: Vec<String>,
    /// The topic of a Backport Subscription; `None` for a classic criteria search.
    pub topic: Option<&'static Topic>,
    pub channel: Channel,
    pub content: Content,
    /// Media type of payloads (`application/fhir+json` or `application/fhir+xml`).
    pub mime: String,
    /// After this the Subscription is off.
    pub end: Option<DateTime<Utc>>,
}

fn bad(message: impl Into<String>) -> FhirError {
    FhirError::BadRequest(format!("Subscription: {}", message.into()))
}

impl Spec {
    /// Reads a Subscription's content; 400 naming what the server cannot act on.
    pub fn parse(id: &str, content: &Value, base: &str) -> FhirResult<Spec> {
        let status = content.get("status").and_then(Value::as_str).unwrap_or("requested").to_owned();
        let criteria = content.get("criteria").and_then(Value::as_str).filter(|c| !c.trim().is_empty()).ok_or_else(|| bad("criteria is required"))?;
        let channel_json = content.get("channel").ok_or_else(|| bad("channel is required"))?;
        let payload = channel_json.get("payload").and_then(Value::as_str);
        let payload_content = channel_json
            .pointer("/_payload/extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| e.get("url").and_then(Value::as_str) == Some(PAYLOAD_CONTENT))
            .and_then(|e| e.get("valueCode").and_then(Value::as_str));
        let mime = match payload {
            None => "application/fhir+json".to_owned(),
            Some(m) => {
                let m = m.split(';').next().unwrap_or(m).trim();
                match m {
                    "application/fhir+json" | "application/json" | "json" => "application/fhir+json".to_owned(),
                    "application/fhir+xml" | "application/xml" | "xml" => "application/fhir+xml".to_owned(),
                    other => return Err(bad(format!("channel.payload {} is not supported (application/fhir+json or application/fhir+xml)", crate::fhir::types::sanitize(other)))),
                }
            }
        };
        let (resource_type, query, interactions, topic, content_kind) = if criteria.starts_with("http://") || criteria.starts_with("https://") {
            let topic = topics::topic(criteria).ok_or_else(|| {
                bad(format!("the topic {} is not offered by this server (the CapabilityStatement lists its topics)", crate::fhir::types::sanitize(criteria)))
            })?;
            let mut query: Vec<(String, String)> = form_urlencoded::parse(topic.query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            query.extend(filters(content, topic)?);
            let kind = match payload_content {
                Some(code) => Content::parse(code).ok_or_else(|| bad(format!("payload content {} is not empty, id-only or full-resource", crate::fhir::types::sanitize(code))))?,
                None if payload.is_some() => Content::IdOnly,
                None => Content::Empty,
            };
            (topic.resource.clone(), query, topic.interactions.clone(), Some(topic), kind)
        } else {
            let (type_name, q) = criteria.split_once('?').unwrap_or((criteria, ""));
            let rt = ResourceType::parse(type_name.trim_start_matches('/'))
                .map_err(|_| bad(format!("criteria must start with a resource type ({} is not one)", crate::fhir::types::sanitize(type_name))))?;
            if !q.is_empty() {
                crate::search::parse_conditional(&rt, q, base).map_err(|e| bad(format!("criteria: {e}")))?;
            }
            let query = form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            let kind = match (payload_content, payload) {
                (Some(code), _) => Content::parse(code).ok_or_else(|| bad(format!("payload content {} is not empty, id-only or full-resource", crate::fhir::types::sanitize(code))))?,
                (None, Some(_)) => Content::FullResource,
                (None, None) => Content::Empty,
            };
            (rt.to_string(), query, vec!["create".to_owned(), "update".to_owned()], None, kind)
        };
        let channel = match channel_json.get("type").and_then(Value::as_str) {
            Some("rest-hook") => {
                let endpoint = channel_json.get("endpoint").and_then(Value::as_str).ok_or_else(|| bad("a rest-hook channel needs an endpoint"))?;
                let url = reqwest::Url::parse(endpoint).map_err(|_| bad("channel.endpoint is not an absolute URL"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(bad("a rest-hook endpoint is an http or https URL"));
                }
                let mut headers = vec![];
                for h in channel_json.get("header").and_then(Value::as_array).into_iter().flatten() {
                    let h = h.as_str().unwrap_or_default();
                    let (name, value) = h.split_once(':').ok_or_else(|| bad("each channel.header is 'Name: value'"))?;
                    let name = name.trim();
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() || reqwest::header::HeaderValue::from_str(value.trim()).is_err() {
                        return Err(bad("a channel.header is not a valid HTTP header"));
                    }
                    headers.push((name.to_owned(), value.trim().to_owned()));
                }
                Channel::RestHook { endpoint: endpoint.to_owned(), headers }
            }
            Some("websocket") => Channel::Websocket,
            Some(other) => {
                return Err(bad(format!("channel type {} is not supported (rest-hook, websocket)", crate::fhir::types::sanitize(other))));
            }
            None => return Err(bad("channel.type is required")),
        };
        let end = match content.get("end").and_then(Value::as_str) {
            Some(s) => Some(crate::interactions::history::parse_instant("end", s).map_err(|_| bad("end is not a dateTime"))?),
            None => None,
        };
        Ok(Spec { id: id.to_owned(), status, resource_type, query, interactions, topic, channel, content: content_kind, mime, end })
    }

    /// Whether notifications should be produced now.
    pub fn is_live(&self) -> bool {
        self.status == "active" && self.end.is_none_or(|end| end > Utc::now())
    }
}

/// The `backport-filter-criteria` of a topic-based Subscription, as search pairs; 400 for a
/// filter on another type or by a parameter the topic does not offer.
fn filters(content: &Value, topic: &Topic) -> FhirResult<Vec<(String, String)>> {
    let mut pairs = vec![];
    let extensions = content.pointer("/_criteria/extension").and_then(Value::as_array).into_iter().flatten();
    for ext in extensions.filter(|e| e.get("url").and_then(Value::as_str) == Some(FILTER_CRITERIA)) {
        let value = ext.get("valueString").and_then(Value::as_str).ok_or_else(|| bad("backport-filter-criteria needs a valueString"))?;
        let query = match value.split_once('?') {
            Some((t, q)) if t == topic.resource => q,
            Some((t, _)) => {
                return Err(bad(format!(
                    "a filter of topic {} applies to {}, not {}",
                    topic.url,
                    topic.resource,
                    crate::fhir::types::sanitize(t)
                )));
            }
            None => value,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let param = k.split(':').next().unwrap_or(&k);
            if !topic.filters.iter().any(|f| f == param) {
                return Err(bad(format!(
                    "topic {} cannot be filtered by {} (it offers: {})",
                    topic.url,
                    crate::fhir::types::sanitize(param),
                    topic.filters.join(", ")
                )));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
    }
    Ok(pairs)
}

/// Stamps who owns a Subscription being written: the acting PractitionerRole, the patient of
/// a patient-context token, or the user; a token with none of those leaves no owner. What a
/// client sends in the extension is replaced.
pub fn stamp_owner(principal: &Principal, content: &mut Value) {
    let owner = match principal.access("Subscription", Interaction::Create).or_else(|| principal.access("Subscription", Interaction::Update)) {
        Some(Reach::Organization(_)) => principal.role.clone(),
        Some(Reach::Patient(patient)) => Some(format!("Patient/{patient}")),
        _ => principal.role.clone().filter(|r| r.starts_with("PractitionerRole/")).or_else(|| principal.fhir_user.clone()),
    };
    let Some(object) = content.as_object_mut() else { return };
    let mut extensions: Vec<Value> = object
        .remove("extension")
        .and_then(|e| e.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.get("url").and_then(Value::as_str) != Some(OWNER_EXTENSION))
        .collect();
    if let Some(owner) = owner {
        extensions.push(json!({"url": OWNER_EXTENSION, "valueReference": {"reference": owner}}));
    }
    if !extensions.is_empty() {
        object.insert("extension".into(), Value::Array(extensions));
    }
}

/// Before a Subscription version is stored: 400 for what the server cannot act on, the owner
/// stamped, and the status the server decides (`requested` becomes `active`, a past `end`
/// makes it `off`; `error` is cleared when the client asks again).
pub fn subscription_writing(principal: &Principal, id: &str, new: &mut Value, base: &str) -> FhirResult<()> {
    let spec = Spec::parse(id, new, base)?;
    // The server's own writes (status changes, import) keep the owner the content names.
    if !principal.is_internal() {
        stamp_owner(principal, new);
    }
    let status = match spec.status.as_str() {
        "requested" | "active" if spec.end.is_some_and(|end| end <= Utc::now()) => "off",
        "requested" | "active" => "active",
        "off" => "off",
        "error" => "error",
        other => return Err(bad(format!("status {} is not requested, active, error or off", crate::fhir::types::sanitize(other)))),
    };
    new["status"] = json!(status);
    if status == "active"
        && let Some(object) = new.as_object_mut()
    {
        object.remove("error");
    }
    Ok(())
}

/// After a Subscription version is stored (same transaction): who it notifies as, its
/// channel, and — when it became active with a topic and a rest-hook — the handshake to send.
/// A deleted Subscription forgets its owner, state and notifications.
pub async fn subscription_written(tx: &mut Tx, principal: &Principal, id: &str, old: Option<&Value>, new: Option<&Value>, base: &str) -> FhirResult<()> {
    let Some(new) = new else {
        for forget in [
            "DELETE FROM subscription_owner WHERE subscription_id = $1",
            "DELETE FROM subscription_state WHERE subscription_id = $1",
            "DELETE FROM subscription_notification WHERE subscription_id = $1",
        ] {
            sqlx::query(forget).bind(id).execute(&mut **tx).await?;
        }
        return Ok(());
    };
    let spec = Spec::parse(id, new, base)?;
    let scope: Vec<String> = principal.scopes.iter().map(|s| s.to_v2()).collect();
    // A request makes its token the owner; the server's own writes (setting `error`, import)
    // leave an existing owner as it is.
    let record = if principal.is_internal() {
        "INSERT INTO subscription_owner (subscription_id, subject, client_id, patient, fhir_user, role, scope, base)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (subscription_id) DO NOTHING"
    } else {
        "INSERT INTO subscription_owner (subscription_id, subject, client_id, patient, fhir_user, role, scope, base)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (subscription_id)
         DO UPDATE SET subject = $2, client_id = $3, patient = $4, fhir_user = $5, role = $6, scope = $7, base = $8, written_at = now()"
    };
    sqlx::query(record)
    .bind(id)
    .bind(&principal.subject)
    .bind(&principal.client_id)
    .bind(&principal.patient)
    .bind(&principal.fhir_user)
    .bind(&principal.role)
    .bind(scope.join(" "))
    .bind(base)
    .execute(&mut **tx)
    .await?;
    let was_active = old.and_then(|o| o.get("status")).and_then(Value::as_str) == Some("active");
    let reactivated = spec.status == "active" && !was_active;
    sqlx::query(
        "INSERT INTO subscription_state (subscription_id, channel) VALUES ($1, $2)
         ON CONFLICT (subscription_id) DO UPDATE SET channel = $2,
             failures = CASE WHEN $3 THEN 0 ELSE subscription_state.failures END,
             last_error = CASE WHEN $3 THEN NULL ELSE subscription_state.last_error END",
    )
    .bind(id)
    .bind(spec.channel.code())
    .bind(reactivated)
    .execute(&mut **tx)
    .await?;
    if reactivated {
        // Pending notifications wait no longer for a backoff that belonged to the old endpoint.
        sqlx::query("UPDATE subscription_notification SET next_attempt_at = now() WHERE subscription_id = $1 AND delivered_at IS NULL")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        if spec.topic.is_some() && matches!(spec.channel, Channel::RestHook { .. }) {
            sqlx::query(
                "INSERT INTO subscription_notification (subscription_id, event_number, kind) VALUES ($1, 0, 'handshake')
                 ON CONFLICT (subscription_id, event_number) DO UPDATE SET delivered_at = NULL, attempts = 0, next_attempt_at = now(), recorded_at = now()",
            )
            .bind(id)
            .execute(&mut **tx)
            .await?;
            sqlx::query("SELECT pg_notify('ironfhir_notification', $1)").bind(id).execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// Who a Subscription notifies as, and against which base.
pub struct Owner {
    pub principal: std::sync::Arc<Principal>,
    /// The FHIR base of the request that wrote the Subscription.
    pub base: String,
}

impl Owner {
    /// The base notifications use: the configured one, else the owner's.
    pub fn base<'a>(&'a self, configured: &'a str) -> &'a str {
        if configured.is_empty() { &self.base } else { configured }
    }
}

/// The principal a Subscription notifies as: the claims of the token that last wrote it, with
/// its role as that role stands now (an ended role notifies nothing: `Unauthorized`).
pub async fn owner(store: &crate::store::Store, grants: &crate::access::RoleGrants, subscription_id: &str) -> FhirResult<Option<Owner>> {
    let row = sqlx::query("SELECT subject, client_id, patient, fhir_user, role, scope, base FROM subscription_owner WHERE subscription_id = $1")
        .bind(subscription_id)
        .fetch_optional(store.pool())
        .await?;
    let Some(row) = row else { return Ok(None) };
    let scope: String = row.get(5);
    let principal = Principal {
        subject: row.get(0),
        client_id: row.get(1),
        patient: row.get(2),
        fhir_user: row.get(3),
        role: row.get(4),
        scopes: crate::auth::parse_scopes(&scope),
        // Not the server's own work: the workflow rules and checks of a request apply.
        token_id: Some(format!("subscription:{subscription_id}")),
        ..Default::default()
    };
    let principal = crate::access::with_current_role(store, grants, std::sync::Arc::new(principal)).await?;
    Ok(Some(Owner { principal, base: row.get(6) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(criteria: &str, channel: Value) -> Value {
        json!({"resourceType": "Subscription", "status": "requested", "reason": "test", "criteria": criteria, "channel": channel})
    }

    #[test]
    fn classic_criteria_and_channels_are_read_as_the_spec_says() {
        let s = Spec::parse("1", &sub("Observation?code=http://loinc.org|1975-2", json!({"type": "rest-hook", "endpoint": "https://example.org/hook", "header": ["Authorization: Bearer x"]})), "").unwrap();
        assert_eq!(s.resource_type, "Observation");
        assert_eq!(s.query, vec![("code".to_owned(), "http://loinc.org|1975-2".to_owned())]);
        assert_eq!(s.content, Content::Empty);
        assert_eq!(s.channel, Channel::RestHook { endpoint: "https://example.org/hook".into(), headers: vec![("Authorization".into(), "Bearer x".into())] });
        let s = Spec::parse("1", &sub("Patient", json!({"type": "websocket", "payload": "application/fhir+json"})), "").unwrap();
        assert_eq!((s.content, s.channel), (Content::FullResource, Channel::Websocket));
    }

    #[test]
    fn what_the_server_cannot_act_on_is_refused() {
        for (criteria, channel) in [
            ("Nonsense?x=1", json!({"type": "rest-hook", "endpoint": "https://e.org"})),
            ("Observation?no-such-param=1", json!({"type": "rest-hook", "endpoint": "https://e.org"})),
            ("Observation", json!({"type": "email", "endpoint": "mailto:a@b.org"})),
            ("Observation", json!({"type": "rest-hook"})),
            ("Observation", json!({"type": "rest-hook", "endpoint": "ftp://e.org"})),
            ("Observation", json!({"type": "rest-hook", "endpoint": "https://e.org", "header": ["no colon"]})),
            ("Observation", json!({"type": "rest-hook", "endpoint": "https://e.org", "payload": "text/plain"})),
            ("https://example.org/unknown-topic", json!({"type": "rest-hook", "endpoint": "https://e.org"})),
        ] {
            assert!(matches!(Spec::parse("1", &sub(criteria, channel.clone()), ""), Err(FhirError::BadRequest(_))), "{criteria} {channel}");
        }
    }

    #[test]
    fn topic_filters_are_checked_against_the_topic() {
        let topic = "https://ironfhir.dev/fhir/SubscriptionTopic/medication-request-for-pharmacy";
        let mut s = sub(topic, json!({"type": "rest-hook", "endpoint": "https://e.org", "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "full-resource"}]}}));
        s["_criteria"] = json!({"extension": [{"url": FILTER_CRITERIA, "valueString": "MedicationRequest?intended-dispenser=Organization/p1"}]});
        let spec = Spec::parse("1", &s, "").unwrap();
        assert_eq!(spec.content, Content::FullResource);
        assert!(spec.query.contains(&("intended-dispenser".to_owned(), "Organization/p1".to_owned())));
        assert!(spec.query.contains(&("status".to_owned(), "active".to_owned())));
        s["_criteria"] = json!({"extension": [{"url": FILTER_CRITERIA, "valueString": "MedicationRequest?category=x"}]});
        assert!(Spec::parse("1", &s, "").is_err());
        s["_criteria"] = json!({"extension": [{"url": FILTER_CRITERIA, "valueString": "Patient?name=x"}]});
        assert!(Spec::parse("1", &s, "").is_err());
    }

    #[test]
    fn the_owner_is_stamped_from_the_token_not_the_client() {
        let mut patient = Principal::internal("p", "patient/Subscription.cruds");
        patient.patient = Some("p1".into());
        let mut content = sub("Patient", json!({"type": "websocket"}));
        content["extension"] = json!([{"url": OWNER_EXTENSION, "valueReference": {"reference": "PractitionerRole/someone-else"}}]);
        stamp_owner(&patient, &mut content);
        assert_eq!(content["extension"], json!([{"url": OWNER_EXTENSION, "valueReference": {"reference": "Patient/p1"}}]));
        let system = Principal::internal("s", "system/*.*");
        stamp_owner(&system, &mut content);
        assert!(content.get("extension").is_none());
    }
}
