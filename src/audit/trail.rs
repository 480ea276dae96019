//! The audit trail's writer and verifier (`audit_log` in migrations/0001_baseline.sql, `audit_append` in migrations/functions/audit.sql).
//!
//! Requests hand their AuditEvent to one writer task and wait until it is committed (durable
//! before the response is sent). The writer takes whatever events have queued up meanwhile and
//! appends them in one transaction — group commit, one fsync for many requests — under an
//! advisory lock so that instances sharing a database extend one chain: each row's hash covers
//! its predecessor's hash, its sequence number and its event. The chain row is the durable
//! record (with the event's sealed elements); the AuditEvent resources that FHIR reads and
//! searches are projected from it ([`super::projection`]).

use serde_json::Value;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::{Meta, RestEvent};
use crate::error::{FhirError, FhirResult};
use crate::store::Store;

/// Most events appended in one transaction.
const MAX_BATCH: usize = 512;

type Ack = oneshot::Sender<Result<(), String>>;

/// An event ready to append, the request whose audit intents it completes (see
/// [`super::intent`]), and who waits for it.
type Queued = (Prepared, Option<uuid::Uuid>, Ack);

/// An AuditEvent as the writer appends it: everything that does not depend on the chain (id,
/// meta, sealing, the document's text) is done by the request's own task, in parallel with
/// other requests, so that the one writer only gathers arrays and runs the statement.
struct Prepared {
    id: String,
    recorded: chrono::DateTime<chrono::Utc>,
    /// The event without its sealed elements, as JSON text.
    content: String,
    sealed: Option<Vec<u8>>,
    key_id: Option<String>,
    /// Keyed MAC of the sealed elements, which the chain hash covers.
    mac: Option<Vec<u8>>,
}

impl Prepared {
    /// Stamps `event` with a new id and meta and seals it as any resource is sealed.
    fn new(mut event: Value) -> FhirResult<Self> {
        clean_controls(&mut event);
        let recorded = crate::interactions::now();
        // Time-ordered ids: appends land at the right edge of the id indexes instead of on
        // random pages (the event's time is in it anyway).
        let id = crate::fhir::types::Id::generate_time_ordered().as_str().to_owned();
        crate::interactions::stamp(&mut event, &id, 1, &recorded);
        Self::sealed(id, recorded, &event)
    }

    /// An event already stamped with `id` and `recorded`, sealed as any resource is sealed.
    fn sealed(id: String, recorded: chrono::DateTime<chrono::Utc>, event: &Value) -> FhirResult<Self> {
        let (seal, mac) = crate::crypto::seal_with_mac("AuditEvent", &id, 1, event)?;
        Ok(Prepared { id, recorded, content: seal.content.to_string(), sealed: seal.sealed, key_id: seal.key_id, mac })
    }

    /// [`Self::new`] for a request's typed event: serialised straight to its text when the
    /// PHI policy can seal nothing in it (no query, [`policy_seals_only_queries`]), else
    /// sealed as a document like any other event.
    fn rest(mut event: RestEvent) -> FhirResult<Self> {
        let recorded = crate::interactions::now();
        let id = crate::fhir::types::Id::generate_time_ordered().as_str().to_owned();
        event.id = Some(id.clone());
        event.meta = Some(Meta { version_id: "1", last_updated: crate::interactions::instant(&recorded) });
        if !event.has_query() && policy_seals_only_queries() {
            let content = serde_json::to_string(&event).map_err(|e| FhirError::Internal(format!("audit event: {e}")))?;
            // What a refused request named (its path, a patient in its query) may hold U+0000,
            // which the projection's jsonb cannot store: such an event is cleaned below.
            if !content.contains("\\u0000") {
                return Ok(Prepared { id, recorded, content, sealed: None, key_id: None, mac: None });
            }
        }
        let mut value = event.to_value()?;
        clean_controls(&mut value);
        Self::sealed(id, recorded, &value)
    }
}

/// Replaces U+0000 (which PostgreSQL's jsonb cannot store) and the other control characters
/// FHIR strings exclude with U+FFFD in every string of an event, so no request can make an
/// event the projection cannot store; iterative, whatever the nesting.
fn clean_controls(event: &mut Value) {
    let mut stack = vec![event];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if crate::fhir::types::has_forbidden_control(s) => {
                *s = s.chars().map(|c| if crate::fhir::types::is_forbidden_control(c) { '\u{fffd}' } else { c }).collect();
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => stack.extend(map.values_mut()),
            _ => {}
        }
    }
}

/// Whether the PHI policy seals, of everything a request's AuditEvent can hold, at most the
/// search query (`entity.query`, which the default policy seals): then an event without a
/// query has nothing to seal. Asked once of the policy in force, against the fullest event.
fn policy_seals_only_queries() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| seals_only_queries(&crate::crypto::policy::plan("AuditEvent")))
}

/// [`policy_seals_only_queries`] for the AuditEvent plan `plan`.
fn seals_only_queries(plan: &crate::crypto::policy::SealPlan) -> bool {
    let Ok(mut fullest) = RestEvent::fullest().to_value() else { return false };
    let sealed = crate::crypto::policy::extract(&mut fullest, plan);
    sealed.iter().all(|(pointer, _)| {
        let mut steps = pointer.split('/').skip(1);
        matches!(
            (steps.next(), steps.next().map(|i| i.parse::<usize>().is_ok()), steps.next(), steps.next()),
            (Some("entity"), Some(true), Some("query" | "_query"), None)
        )
    })
}

/// Handle to the writer task; cloned into the application state. `Default` is a trail that
/// records nothing (benchmarks with auditing off, tests that do not look at it).
#[derive(Clone, Default)]
pub struct AuditTrail {
    sender: Option<mpsc::Sender<Queued>>,
}

impl AuditTrail {
    /// Starts the writer on `store`. One writer: each append has a fixed cost (a statement of
    /// nine, a commit) that a larger batch shares; two or more writers, each with smaller
    /// batches, measured slower (README.md, "What PHI sealing and the audit trail cost").
    pub fn start(store: Store) -> Self {
        let (sender, receiver) = mpsc::channel(8192);
        let (head, head_seen) = tokio::sync::watch::channel(0i64);
        super::projection::spawn(store.clone(), head_seen);
        tokio::spawn(writer(store, receiver, head));
        AuditTrail { sender: Some(sender) }
    }

    /// Whether events are recorded at all.
    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Appends `event` (an AuditEvent without id and meta) and waits until it is committed;
    /// 503 when it could not be.
    pub async fn record(&self, event: Value) -> FhirResult<()> {
        self.record_for(event, None).await
    }

    /// [`Self::record`] for the request `request_id`, whose audit intents are deleted in the
    /// same transaction as the event is appended; `None` for a request that wrote no intent
    /// (the append then deletes nothing: [`super::intent::for_write`]).
    pub async fn record_for(&self, event: Value, request_id: Option<uuid::Uuid>) -> FhirResult<()> {
        self.append_prepared(|| Prepared::new(event), request_id).await
    }

    /// Appends a client-submitted AuditEvent (IHE BALP audit repository) to the chain and
    /// returns the id and time it was recorded under, so `audit verify` covers it like the
    /// server's own events.
    pub async fn record_submitted(&self, event: Value) -> FhirResult<(String, chrono::DateTime<chrono::Utc>)> {
        let prepared = Prepared::new(event)?;
        let stamp = (prepared.id.clone(), prepared.recorded);
        self.append_prepared(|| Ok(prepared), None).await?;
        Ok(stamp)
    }

    /// [`Self::record_for`] for the typed AuditEvent of a FHIR API request.
    pub async fn record_rest(&self, event: RestEvent, request_id: Option<uuid::Uuid>) -> FhirResult<()> {
        self.append_prepared(|| Prepared::rest(event), request_id).await
    }

    /// Prepares an event (only when the trail records anything: a trail that is off needs no
    /// keyring) and waits until the writer has committed it.
    async fn append_prepared(&self, prepare: impl FnOnce() -> FhirResult<Prepared>, request_id: Option<uuid::Uuid>) -> FhirResult<()> {
        let Some(sender) = &self.sender else { return Ok(()) };
        let prepared = prepare()?;
        let (ack, done) = oneshot::channel();
        let unavailable = || FhirError::Unavailable("the audit trail cannot be written; the request was not completed".into());
        sender.send((prepared, request_id, ack)).await.map_err(|_| unavailable())?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit trail write failed");
                Err(unavailable())
            }
            Err(_) => Err(unavailable()),
        }
    }
}

/// Takes the events queued so far as one batch and appends it, batch after batch: while a
/// batch is being committed the next one queues up, so batches grow with the load.
/// Each append publishes the chain's new head (its last sequence number) in `head`, which
/// wakes the projector and tells it how far behind it is ([`super::projection`]).
async fn writer(store: Store, mut receiver: mpsc::Receiver<Queued>, head: tokio::sync::watch::Sender<i64>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut requests = Vec::new();
        let mut acks = Vec::with_capacity(batch.len());
        for (event, request, ack) in batch {
            events.push(event);
            requests.extend(request);
            acks.push(ack);
        }
        let result = append(&store, events, &requests).await.map_err(|e| format!("{e:?}"));
        if let Ok(Some(last)) = result {
            head.send_modify(|seq| *seq = (*seq).max(last));
        }
        let result = result.map(|_| ());
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

/// Appends prepared events to the chain in one statement, which also deletes the audit intents
/// of `requests` (their events are now in the chain). Returns the sequence number of the last.
async fn append(store: &Store, events: Vec<Prepared>, requests: &[uuid::Uuid]) -> FhirResult<Option<i64>> {
    let n = events.len();
    let (mut ids, mut recorded, mut contents, mut macs, mut sealed, mut key_ids) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for event in events {
        ids.push(event.id);
        recorded.push(event.recorded);
        contents.push(event.content);
        macs.push(event.mac);
        sealed.push(event.sealed);
        key_ids.push(event.key_id);
    }
    // The requests' audit intents, then the chain lock, head and chain rows, in one statement
    // (`audit_append`, migrations/functions/audit.sql).
    let (last,): (Option<i64>,) = sqlx::query_as("SELECT audit_append($1, $2, $3, $4, $5, $6, $7)")
        .bind(&recorded)
        .bind(&ids)
        .bind(&contents)
        .bind(&macs)
        .bind(requests)
        .bind(&sealed)
        .bind(&key_ids)
        .fetch_one(store.pool())
        .await?;
    Ok(last)
}

/// The first record that breaks the chain, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Recomputes the chain from the first record: every sequence number present, every record
/// following its predecessor, every hash matching its event (the chain row's own text; records
/// of migrations 0010/0011 kept it only in their AuditEvent resource), every projected
/// AuditEvent resource equal to its record, and the sealed elements, in the record and in its
/// resource, matching the MAC the chain covers. Records not projected yet have no resource to
/// compare (a running server's projector is never waited for). Returns the number of records,
/// or the first one that fails.
pub async fn verify(store: &Store) -> FhirResult<Result<i64, Broken>> {
    let mut conn = store.pool().acquire().await?;
    let (projected,): (i64,) = sqlx::query_as("SELECT projected_seq FROM audit_projection").fetch_one(&mut *conn).await?;
    let mut rows = sqlx::query(
        "SELECT l.seq, l.prev_hash, l.hash, \
                sha256(l.prev_hash || convert_to(l.seq::text || coalesce(l.event_text, coalesce(l.event, r.content)::text), 'UTF8') \
                       || coalesce(l.sealed_mac, ''::bytea)) = l.hash AS intact, \
                CASE WHEN l.event_text IS NOT NULL AND l.seq > $1 THEN true \
                     ELSE r.id IS NOT NULL AND NOT r.deleted AND CASE WHEN l.event_text IS NOT NULL THEN r.content = l.event_text::jsonb \
                                                                      WHEN l.event IS NOT NULL THEN (r.content - 'meta') = (l.event - 'meta') \
                                                                      ELSE true END END AS present, \
                l.sealed_mac, l.resource_id, l.event_text IS NOT NULL AS chain_holds_seal, l.sealed AS chain_sealed, \
                l.key_id AS chain_key_id, r.id IS NOT NULL AS projected, r.sealed, r.key_id \
           FROM audit_log l LEFT JOIN resource r ON r.resource_type = 'AuditEvent' AND r.id = l.resource_id \
          ORDER BY l.seq",
    )
    .bind(projected)
    .fetch(&mut *conn);
    let mut expected_seq = 1i64;
    let mut prev = vec![0u8; 32];
    use futures::TryStreamExt;
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.get("seq");
        let prev_hash: Vec<u8> = row.get("prev_hash");
        let hash: Vec<u8> = row.get("hash");
        if seq != expected_seq {
            return Ok(Err(Broken { seq: expected_seq, reason: format!("record {expected_seq} is missing (the next record is {seq})") }));
        }
        if prev_hash != prev {
            return Ok(Err(Broken { seq, reason: format!("record {seq} does not follow record {} (a record was deleted, inserted or reordered)", seq - 1) }));
        }
        if !row.get::<Option<bool>, _>("intact").unwrap_or(false) {
            return Ok(Err(Broken { seq, reason: format!("record {seq} was edited (its hash does not match its content)") }));
        }
        if !row.get::<Option<bool>, _>("present").unwrap_or(false) {
            return Ok(Err(Broken { seq, reason: format!("the AuditEvent resource of record {seq} differs from the trail or is gone") }));
        }
        let mac: Option<Vec<u8>> = row.get("sealed_mac");
        let id: String = row.get("resource_id");
        // The sealed elements, as the chain row holds them (records since migration 0012) and
        // as the AuditEvent resource holds them (once projected), match the MAC.
        let copies = [
            (row.get::<bool, _>("chain_holds_seal"), row.get::<Option<Vec<u8>>, _>("chain_sealed"), row.get::<Option<String>, _>("chain_key_id")),
            (row.get::<bool, _>("projected"), row.get::<Option<Vec<u8>>, _>("sealed"), row.get::<Option<String>, _>("key_id")),
        ];
        for (applies, ciphertext, key) in copies {
            if !applies || (mac.is_none() && ciphertext.is_none()) {
                continue;
            }
            let matches = match (&mac, &ciphertext) {
                (Some(mac), Some(ct)) => crate::crypto::sealed_mac_matches("AuditEvent", &id, 1, ct, key.as_deref().unwrap_or(""), mac),
                _ => false,
            };
            if !matches {
                return Ok(Err(Broken { seq, reason: format!("the sealed elements of record {seq} differ from the trail") }));
            }
        }
        prev = hash;
        expected_seq += 1;
    }
    drop(rows);
    // Every AuditEvent resource is a projection of a chain record: one stored beside the chain
    // (written by an older version, an import or by hand) is an entry the trail cannot vouch for.
    let unchained: Option<(String,)> = sqlx::query_as(
        "SELECT r.id FROM resource r WHERE r.resource_type = 'AuditEvent'
            AND NOT EXISTS (SELECT 1 FROM audit_log l WHERE l.resource_id = r.id) LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((id,)) = unchained {
        return Ok(Err(Broken { seq: expected_seq, reason: format!("AuditEvent/{id} is not in the trail: it was stored beside the chain") }));
    }
    Ok(Ok(expected_seq - 1))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::seals_only_queries;
    use crate::crypto::policy::{Policy, compile};

    fn plan_sealing(paths: &[&str]) -> crate::crypto::policy::SealPlan {
        let policy = Policy { resources: BTreeMap::from([("AuditEvent".to_owned(), paths.iter().map(|p| p.to_string()).collect())]), ..Default::default() };
        compile("AuditEvent", &policy)
    }

    #[test]
    fn events_without_a_query_skip_sealing_only_while_the_policy_seals_nothing_else_they_hold() {
        // The shipped policy seals the query of searches: every other event is written as is.
        let shipped: Policy = serde_json::from_str(include_str!("../../fhir-profiles/phi-policy.json")).expect("the shipped policy parses");
        assert!(seals_only_queries(&compile("AuditEvent", &shipped)));
        assert!(seals_only_queries(&plan_sealing(&["entity.query"])));
        assert!(seals_only_queries(&plan_sealing(&[])));
        // An operator who seals more of the event gets every event sealed.
        assert!(!seals_only_queries(&plan_sealing(&["entity.query", "agent.name"])));
        assert!(!seals_only_queries(&plan_sealing(&["agent.network"])));
        assert!(!seals_only_queries(&plan_sealing(&["outcomeDesc"])));
        assert!(!seals_only_queries(&plan_sealing(&["entity.what"])));
    }
}
