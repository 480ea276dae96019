//! The outbox consumer that turns writes into numbered notifications.
//!
//! For each batch of events and each live Subscription on the events' type, ONE search runs
//! as the Subscription's owner: its criteria (or topic query and filters) plus `_id=` the
//! batch's ids. What the owner's search does not find — outside its reach, masked, withheld
//! by a Consent, or simply not matching — queues nothing. A delete is judged by whether the
//! owner could read the version before it (only topics that list `delete` see deletes).
//! Notifications are numbered per Subscription by a counter bumped in the same transaction
//! that deletes the events, so numbers have no gaps and every committed write is judged once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Spec;
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::events::outbox::{ConsumeFuture, Consumer, OutboxEvent};
use crate::fhir::types::{Id, ResourceType};
use crate::store::{Store, Tx};

/// The outbox consumer name of Subscriptions.
pub const CONSUMER: &str = "subscriptions";

/// How long the list of live Subscriptions is reused (a batch holding a Subscription write
/// reloads it at once).
const LIVE_TTL: Duration = Duration::from_secs(1);

/// Subscriptions read per page when the list is reloaded.
const PAGE: usize = 1000;

/// Evaluates Subscriptions against the outbox's events.
pub struct Matcher {
    store: Store,
    grants: Arc<crate::access::RoleGrants>,
    base: String,
    live: Mutex<Option<(Instant, Arc<Vec<Spec>>)>>,
}

impl Matcher {
    pub fn new(store: Store, grants: Arc<crate::access::RoleGrants>, base: String) -> Self {
        Matcher { store, grants, base, live: Mutex::new(None) }
    }

    /// The active, unexpired Subscriptions (read by the server itself, every one of them).
    async fn live_subscriptions(&self) -> FhirResult<Arc<Vec<Spec>>> {
        if let Ok(live) = self.live.lock()
            && let Some((at, specs)) = live.as_ref()
            && at.elapsed() < LIVE_TTL
        {
            return Ok(specs.clone());
        }
        let specs = Arc::new(load_live(&self.store, &self.base).await?);
        if let Ok(mut live) = self.live.lock() {
            *live = Some((Instant::now(), specs.clone()));
        }
        Ok(specs)
    }

    fn forget_live(&self) {
        if let Ok(mut live) = self.live.lock() {
            *live = None;
        }
    }

    /// The events of `events` that `spec`'s owner finds: indexes into `events`.
    async fn matching(&self, spec: &Spec, events: &[&OutboxEvent]) -> FhirResult<Vec<usize>> {
        let owner = match super::owner(&self.store, &self.grants, &spec.id).await {
            Ok(Some(owner)) => owner.principal,
            Ok(None) => return Ok(vec![]),
            // The owner's role has ended: nothing more is sent in its name.
            Err(FhirError::Unauthorized(_)) => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let rt = ResourceType::parse(&spec.resource_type)?;
        let mut matched = vec![];
        let written: Vec<&str> = events.iter().filter(|e| e.interaction != "delete").map(|e| e.id.as_str()).collect();
        let found = if written.is_empty() { HashSet::new() } else { self.found_as(&owner, &rt, spec, &written).await? };
        for (i, event) in events.iter().enumerate() {
            let hit = if event.interaction == "delete" {
                self.could_read_before_delete(&owner, &rt, event).await?
            } else {
                found.contains(event.id.as_str())
            };
            if hit {
                matched.push(i);
            }
        }
        Ok(matched)
    }

    /// The ids among `ids` that the owner's search with the Subscription's query finds.
    async fn found_as(&self, owner: &Principal, rt: &ResourceType, spec: &Spec, ids: &[&str]) -> FhirResult<HashSet<String>> {
        let unique: HashSet<&str> = ids.iter().copied().collect();
        let mut pairs = spec.query.clone();
        pairs.push(("_id".into(), unique.iter().copied().collect::<Vec<_>>().join(",")));
        pairs.push(("_count".into(), unique.len().max(1).to_string()));
        pairs.push(("_total".into(), "none".into()));
        pairs.push(("_elements".into(), "id".into()));
        match crate::interactions::search::search(&self.store, owner, rt, &pairs, false, &self.base).await {
            Ok(outcome) => Ok(outcome.found.into_iter().map(|r| r.id).collect()),
            // The owner may no longer search this type, or the criteria stopped parsing (a
            // custom SearchParameter removed): nothing matches.
            Err(FhirError::Forbidden(_) | FhirError::BadRequest(_) | FhirError::NotFound(_) | FhirError::Unauthorized(_)) => Ok(HashSet::new()),
            Err(e) => Err(e),
        }
    }

    /// Whether the owner could read the version a delete replaced.
    async fn could_read_before_delete(&self, owner: &Principal, rt: &ResourceType, event: &OutboxEvent) -> FhirResult<bool> {
        let Ok(id) = Id::parse(&event.id) else { return Ok(false) };
        let before = (event.version_id - 1).to_string();
        match crate::interactions::read::vread(&self.store, owner, rt, &id, &before, &self.base).await {
            Ok(stored) => Ok(stored.content.is_some()),
            Err(FhirError::Forbidden(_) | FhirError::NotFound(_) | FhirError::Gone(_) | FhirError::Unauthorized(_) | FhirError::BadRequest(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Every active Subscription the server can act on, with an unexpired `end`.
async fn load_live(store: &Store, base: &str) -> FhirResult<Vec<Spec>> {
    let reader = Principal::internal("ironfhir-subscriptions", "system/Subscription.rs");
    let rt = ResourceType::parse("Subscription")?;
    let mut specs = vec![];
    let mut offset = 0;
    loop {
        let pairs = vec![
            ("status".to_owned(), "active".to_owned()),
            ("_count".to_owned(), PAGE.to_string()),
            ("_offset".to_owned(), offset.to_string()),
            ("_total".to_owned(), "none".to_owned()),
        ];
        let outcome = crate::interactions::search::search(store, &reader, &rt, &pairs, false, base).await?;
        let n = outcome.found.len();
        for r in outcome.found {
            let Some(content) = r.content.as_ref() else { continue };
            match Spec::parse(&r.id, content, base) {
                Ok(spec) if spec.is_live() => specs.push(spec),
                Ok(_) => {}
                Err(_) => tracing::warn!(subscription = %r.id, "an active Subscription cannot be acted on; skipped"),
            }
        }
        if n < PAGE {
            return Ok(specs);
        }
        offset += n;
    }
}

/// Queues notification `event` for `subscription_id`, numbered after its previous one.
async fn queue(tx: &mut Tx, subscription_id: &str, event: &OutboxEvent) -> FhirResult<()> {
    sqlx::query(
        "WITH n AS (UPDATE subscription_state SET events_since_start = events_since_start + 1
                     WHERE subscription_id = $1 RETURNING events_since_start)
         INSERT INTO subscription_notification
                (subscription_id, event_number, kind, focus_type, focus_id, focus_version, interaction, recorded_at)
         SELECT $1, events_since_start, 'event-notification', $2, $3, $4, $5, $6 FROM n",
    )
    .bind(subscription_id)
    .bind(&event.resource_type)
    .bind(&event.id)
    .bind(event.version_id)
    .bind(&event.interaction)
    .bind(event.recorded_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Consumer for Matcher {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn consume<'a>(&'a self, tx: &'a mut Tx, events: &'a [OutboxEvent]) -> ConsumeFuture<'a> {
        Box::pin(async move {
            let result: FhirResult<()> = async {
                if events.iter().any(|e| e.resource_type == "Subscription") {
                    self.forget_live();
                }
                let live = self.live_subscriptions().await?;
                let mut notified: Vec<&str> = vec![];
                for spec in live.iter() {
                    let relevant: Vec<&OutboxEvent> =
                        events.iter().filter(|e| e.resource_type == spec.resource_type && spec.interactions.contains(&e.interaction)).collect();
                    if relevant.is_empty() {
                        continue;
                    }
                    for i in self.matching(spec, &relevant).await? {
                        queue(tx, &spec.id, relevant[i]).await?;
                        notified.push(&spec.id);
                    }
                }
                notified.sort_unstable();
                notified.dedup();
                for id in notified {
                    sqlx::query("SELECT pg_notify('ironfhir_notification', $1)").bind(id).execute(&mut **tx).await?;
                }
                Ok(())
            }
            .await;
            result.map_err(|e| e.to_string())
        })
    }
}
