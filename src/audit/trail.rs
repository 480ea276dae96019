//! The audit trail's writer and verifier (migrations/0008_audit.sql).
//!
//! Requests hand their AuditEvent to one writer task and wait until it is committed (durable
//! before the response is sent). The writer takes whatever events have queued up meanwhile and
//! appends them in one transaction — group commit, one fsync for many requests — under an
//! advisory lock so that instances sharing a database extend one chain: each row's hash covers
//! its predecessor's hash, its sequence number and its event. The same transaction stores the
//! events as AuditEvent resources, which is what FHIR search reads.

use serde_json::Value;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::error::{FhirError, FhirResult};
use crate::store::Store;

/// Most events appended in one transaction.
const MAX_BATCH: usize = 512;
/// Appending tasks: while one batch waits for its commit (fsync), the next is already sent, so
/// the database is never idle between group commits.
const WRITERS: usize = 2;

type Ack = oneshot::Sender<Result<(), String>>;

/// An event, the request whose audit intents it completes (see [`super::intent`]), and who
/// waits for it.
type Queued = (Value, Option<uuid::Uuid>, Ack);

/// Handle to the writer task; cloned into the application state. `Default` is a trail that
/// records nothing (benchmarks with auditing off, tests that do not look at it).
#[derive(Clone, Default)]
pub struct AuditTrail {
    sender: Option<mpsc::Sender<Queued>>,
}

impl AuditTrail {
    /// Starts the writer on `store`.
    pub fn start(store: Store) -> Self {
        let (sender, receiver) = mpsc::channel(8192);
        let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..WRITERS {
            tokio::spawn(writer(store.clone(), receiver.clone()));
        }
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
    /// same transaction as the event is appended.
    pub async fn record_for(&self, event: Value, request_id: Option<uuid::Uuid>) -> FhirResult<()> {
        let Some(sender) = &self.sender else { return Ok(()) };
        let (ack, done) = oneshot::channel();
        let unavailable = || FhirError::Unavailable("the audit trail cannot be written; the request was not completed".into());
        sender.send((event, request_id, ack)).await.map_err(|_| unavailable())?;
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

/// Takes the events queued so far as one batch and appends it, batch after batch. Of the
/// [`WRITERS`] writers, one gathers the next batch while another's is being committed; the
/// chain lock orders their appends.
async fn writer(store: Store, receiver: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            batch
        };
        let mut events = Vec::with_capacity(batch.len());
        let mut requests = Vec::new();
        let mut acks = Vec::with_capacity(batch.len());
        for (event, request, ack) in batch {
            events.push(event);
            requests.extend(request);
            acks.push(ack);
        }
        let result = append(&store, events, &requests).await.map_err(|e| format!("{e:?}"));
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

/// Appends events to the chain in one statement, which also writes their AuditEvent resources,
/// history and index rows and deletes the audit intents of `requests` (their events are now in
/// the chain).
async fn append(store: &Store, mut events: Vec<Value>, requests: &[uuid::Uuid]) -> FhirResult<()> {
    let now = crate::interactions::now();
    let mut ids = Vec::with_capacity(events.len());
    let mut stripped = Vec::with_capacity(events.len());
    let mut macs = Vec::with_capacity(events.len());
    let mut sealed = Vec::with_capacity(events.len());
    let mut key_ids = Vec::with_capacity(events.len());
    for event in &mut events {
        // Time-ordered ids: each batch's rows land at the right edge of the id indexes instead
        // of on random pages (the event's time is in it anyway).
        let id = crate::fhir::types::Id::generate_time_ordered();
        crate::interactions::stamp(event, id.as_str(), 1, &now);
        // The event without its sealed elements (the search query), those elements sealed as
        // any resource's are, and a keyed MAC of them that the hash covers.
        let (seal, mac) = crate::crypto::seal_with_mac("AuditEvent", id.as_str(), 1, event)?;
        stripped.push(seal.content.to_string());
        sealed.push(seal.sealed);
        key_ids.push(seal.key_id);
        macs.push(mac);
        ids.push(id);
    }
    // Index rows from the complete events (a sealed element gets blind rows, as on any write).
    let index = crate::index::rows_json(ids.iter().zip(&events).map(|(id, event)| ("AuditEvent", id.as_str(), event)), "");
    let id_texts: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    // Chain lock, head, chain rows, resources, history, index rows and the requests' audit
    // intents, in one statement (migrations/0010_audit_append.sql).
    sqlx::query("SELECT audit_append($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(now)
        .bind(&id_texts)
        .bind(&stripped)
        .bind(&macs)
        .bind(requests)
        .bind(&sealed)
        .bind(&key_ids)
        .bind(&index)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// The first record that breaks the chain, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Recomputes the chain from the first record: every sequence number present, every record
/// following its predecessor, every hash matching its AuditEvent as stored (the resource row;
/// records from before migration 0010 carry their own copy, which the resource must equal), and
/// the sealed elements matching the MAC the chain covers. Returns the number of records, or the
/// first one that fails.
pub async fn verify(store: &Store) -> FhirResult<Result<i64, Broken>> {
    let mut conn = store.pool().acquire().await?;
    let mut rows = sqlx::query(
        "SELECT l.seq, l.prev_hash, l.hash, \
                sha256(l.prev_hash || convert_to(l.seq::text || coalesce(l.event, r.content)::text, 'UTF8') || coalesce(l.sealed_mac, ''::bytea)) = l.hash AS intact, \
                r.id IS NOT NULL AND NOT r.deleted AND (l.event IS NULL OR (r.content - 'meta') = (l.event - 'meta')) AS present, \
                l.sealed_mac, l.resource_id, r.sealed, r.key_id \
           FROM audit_log l LEFT JOIN resource r ON r.resource_type = 'AuditEvent' AND r.id = l.resource_id \
          ORDER BY l.seq",
    )
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
        if !row.get::<Option<bool>, _>("present").unwrap_or(false) {
            return Ok(Err(Broken { seq, reason: format!("the AuditEvent resource of record {seq} differs from the trail or is gone") }));
        }
        if !row.get::<Option<bool>, _>("intact").unwrap_or(false) {
            return Ok(Err(Broken { seq, reason: format!("record {seq} was edited (its hash does not match its content)") }));
        }
        let mac: Option<Vec<u8>> = row.get("sealed_mac");
        let ciphertext: Option<Vec<u8>> = row.get("sealed");
        if mac.is_some() || ciphertext.is_some() {
            let id: String = row.get("resource_id");
            let key: Option<String> = row.get("key_id");
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
    Ok(Ok(expected_seq - 1))
}

/// `ironfhir audit verify`: prints the result; an error (non-zero exit) names the first bad
/// record.
pub async fn verify_command(config: crate::config::Config) -> Result<(), String> {
    let db = crate::server::open_database(&config, 2, std::time::Duration::from_secs(3600)).await?;
    let result = verify(&db.store).await;
    db.close().await?;
    match result.map_err(|e| format!("cannot read the audit trail: {e}"))? {
        Ok(count) => {
            println!("audit trail intact: {count} records");
            Ok(())
        }
        Err(broken) => Err(format!("audit trail broken at record {}: {}", broken.seq, broken.reason)),
    }
}
