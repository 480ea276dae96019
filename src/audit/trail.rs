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
        let projector = std::sync::Arc::new(tokio::sync::Notify::new());
        super::projection::spawn(store.clone(), projector.clone());
        tokio::spawn(writer(store, receiver, projector));
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

async fn writer(store: Store, mut receiver: mpsc::Receiver<Queued>, projector: std::sync::Arc<tokio::sync::Notify>) {
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
        projector.notify_one();
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

/// Appends events to the chain in one transaction, which also deletes the audit intents of
/// `requests` (their events are now in the chain). The chain row is the durable record; the
/// searchable AuditEvent resources are projected from it ([`super::projection`]).
async fn append(store: &Store, mut events: Vec<Value>, requests: &[uuid::Uuid]) -> FhirResult<()> {
    let now = crate::interactions::now();
    let mut ids = Vec::with_capacity(events.len());
    let mut stripped = Vec::with_capacity(events.len());
    let mut macs = Vec::with_capacity(events.len());
    let mut sealed = Vec::with_capacity(events.len());
    let mut key_ids = Vec::with_capacity(events.len());
    for event in &mut events {
        let id = crate::fhir::types::Id::generate();
        crate::interactions::stamp(event, id.as_str(), 1, &now);
        // The event without its sealed elements (the search query), those elements sealed as
        // the resource's would be, and a keyed MAC of them that the hash covers.
        let (seal, mac) = crate::crypto::seal_with_mac("AuditEvent", id.as_str(), 1, event)?;
        stripped.push(seal.content.to_string());
        sealed.push(seal.sealed);
        key_ids.push(seal.key_id);
        macs.push(mac);
        ids.push(id);
    }
    let id_texts: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    // Chain lock, head, one row per event and the requests' audit intents, in one statement
    // (migrations/0010_audit_projection.sql).
    sqlx::query("SELECT audit_append($1, $2, $3, $4, $5, $6, $7)")
        .bind(now)
        .bind(&id_texts)
        .bind(&stripped)
        .bind(&macs)
        .bind(requests)
        .bind(&sealed)
        .bind(&key_ids)
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
/// following its predecessor, every hash matching its content, and every searchable AuditEvent
/// equal to its record. Returns the number of records, or the first one that fails.
pub async fn verify(store: &Store) -> FhirResult<Result<i64, Broken>> {
    let mut conn = store.pool().acquire().await?;
    // Records not projected yet have no AuditEvent resource to compare (no lock is taken: a
    // running server's projector is never waited for).
    let (projected,): (i64,) = sqlx::query_as("SELECT projected_seq FROM audit_projection").fetch_one(&mut *conn).await?;
    let mut rows = sqlx::query(
        "SELECT seq, prev_hash, hash, sha256(prev_hash || convert_to(seq::text || event::text, 'UTF8') || coalesce(sealed_mac, ''::bytea)) = hash AS intact
           FROM audit_log ORDER BY seq",
    )
    .fetch(&mut *conn);
    let mut expected_seq = 1i64;
    let mut prev = vec![0u8; 32];
    use futures::TryStreamExt;
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.get(0);
        let prev_hash: Vec<u8> = row.get(1);
        let hash: Vec<u8> = row.get(2);
        let intact: bool = row.get(3);
        if seq != expected_seq {
            return Ok(Err(Broken { seq: expected_seq, reason: format!("record {expected_seq} is missing (the next record is {seq})") }));
        }
        if prev_hash != prev {
            return Ok(Err(Broken { seq, reason: format!("record {seq} does not follow record {} (a record was deleted, inserted or reordered)", seq - 1) }));
        }
        if !intact {
            return Ok(Err(Broken { seq, reason: format!("record {seq} was edited (its hash does not match its content)") }));
        }
        prev = hash;
        expected_seq += 1;
    }
    drop(rows);
    let differing: Option<(i64,)> = sqlx::query_as(
        "SELECT l.seq FROM audit_log l
           LEFT JOIN resource r ON r.resource_type = 'AuditEvent' AND r.id = l.resource_id
          WHERE l.seq <= $1 AND (r.id IS NULL OR r.deleted OR (r.content - 'meta') IS DISTINCT FROM (l.event - 'meta'))
          ORDER BY l.seq LIMIT 1",
    )
    .bind(projected)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((seq,)) = differing {
        return Ok(Err(Broken { seq, reason: format!("the AuditEvent resource of record {seq} differs from the trail or is gone") }));
    }
    // The sealed elements of every record and of its AuditEvent still match the MAC the chain
    // covers.
    let mut sealed = sqlx::query(
        "SELECT l.seq, l.sealed_mac, l.resource_id, l.sealed, l.key_id, r.version_id, r.sealed AS r_sealed, r.key_id AS r_key_id
           FROM audit_log l LEFT JOIN resource r ON r.resource_type = 'AuditEvent' AND r.id = l.resource_id AND l.seq <= $1
          WHERE l.sealed_mac IS NOT NULL OR l.sealed IS NOT NULL OR r.sealed IS NOT NULL ORDER BY l.seq",
    )
    .bind(projected)
    .fetch(&mut *conn);
    while let Some(row) = sealed.try_next().await? {
        let seq: i64 = row.get(0);
        let mac: Option<Vec<u8>> = row.get(1);
        let id: String = row.get(2);
        let matches = |ct: Option<Vec<u8>>, key: Option<String>, version: i64| match (&mac, ct) {
            (Some(mac), Some(ct)) => crate::crypto::sealed_mac_matches("AuditEvent", &id, version, &ct, key.as_deref().unwrap_or(""), mac),
            _ => false,
        };
        let projected_row = row.get::<Option<i64>, _>(5);
        if !matches(row.get(3), row.get(4), 1) || projected_row.is_some_and(|version| !matches(row.get(6), row.get(7), version)) {
            return Ok(Err(Broken { seq, reason: format!("the sealed elements of record {seq} differ from the trail") }));
        }
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
