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

/// An event ready to append, the request whose audit intents it completes (see
/// [`super::intent`]), and who waits for it.
type Queued = (Prepared, Option<uuid::Uuid>, Ack);

/// An AuditEvent as the writer appends it: everything that does not depend on the chain (id,
/// meta, sealing, index rows, the document's text) is done by the request's own task, in
/// parallel with other requests, so that the one writer only gathers arrays and runs the
/// statement.
struct Prepared {
    id: String,
    recorded: chrono::DateTime<chrono::Utc>,
    /// The event without its sealed elements, as JSON text.
    content: String,
    sealed: Option<Vec<u8>>,
    key_id: Option<String>,
    /// Keyed MAC of the sealed elements, which the chain hash covers.
    mac: Option<Vec<u8>>,
    index: Vec<crate::index::IndexRow>,
}

impl Prepared {
    /// Stamps `event` with a new id and meta, seals it as any resource is sealed and computes
    /// its index rows from the complete event (a sealed element gets blind rows).
    fn new(mut event: Value) -> FhirResult<Self> {
        let recorded = crate::interactions::now();
        // Time-ordered ids: appends land at the right edge of the id indexes instead of on
        // random pages (the event's time is in it anyway).
        let id = crate::fhir::types::Id::generate_time_ordered();
        crate::interactions::stamp(&mut event, id.as_str(), 1, &recorded);
        let (seal, mac) = crate::crypto::seal_with_mac("AuditEvent", id.as_str(), 1, &event)?;
        let index = crate::index::index_rows("AuditEvent", &event, "");
        Ok(Prepared { id: id.as_str().to_owned(), recorded, content: seal.content.to_string(), sealed: seal.sealed, key_id: seal.key_id, mac, index })
    }
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
        tokio::spawn(writer(store, receiver));
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
        let prepared = Prepared::new(event)?;
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
async fn writer(store: Store, mut receiver: mpsc::Receiver<Queued>) {
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
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

/// Appends prepared events to the chain in one statement, which also writes their AuditEvent
/// resources, history and index rows and deletes the audit intents of `requests` (their events
/// are now in the chain).
async fn append(store: &Store, events: Vec<Prepared>, requests: &[uuid::Uuid]) -> FhirResult<()> {
    let n = events.len();
    let (mut ids, mut recorded, mut contents, mut macs, mut sealed, mut key_ids) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    // References and dates (what AuditEvent's indexed parameters produce) as typed arrays, any
    // other kind as search_index_replace's JSON rows.
    let mut index = IndexArrays::default();
    for event in events {
        for row in event.index {
            index.add(&event.id, row);
        }
        ids.push(event.id);
        recorded.push(event.recorded);
        contents.push(event.content);
        macs.push(event.mac);
        sealed.push(event.sealed);
        key_ids.push(event.key_id);
    }
    // Resources, history, index rows, the requests' audit intents, then the chain lock, head and
    // chain rows, in one statement (migrations/0011_audit_append_parallel.sql).
    sqlx::query("SELECT audit_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)")
        .bind(&recorded)
        .bind(&ids)
        .bind(&contents)
        .bind(&macs)
        .bind(requests)
        .bind(&sealed)
        .bind(&key_ids)
        .bind(&index.ref_ids)
        .bind(&index.ref_params)
        .bind(&index.ref_targets)
        .bind(&index.date_ids)
        .bind(&index.date_params)
        .bind(&index.date_lows)
        .bind(&index.date_highs)
        .bind(Value::Array(index.other))
        .execute(store.pool())
        .await?;
    Ok(())
}

/// A batch's index rows in the shape audit_append inserts them: references and dates as
/// columns, rows of other kinds as search_index_replace's JSON.
#[derive(Default)]
struct IndexArrays {
    ref_ids: Vec<String>,
    ref_params: Vec<String>,
    ref_targets: Vec<String>,
    date_ids: Vec<String>,
    date_params: Vec<String>,
    date_lows: Vec<String>,
    date_highs: Vec<String>,
    other: Vec<Value>,
}

impl IndexArrays {
    fn add(&mut self, id: &str, row: crate::index::IndexRow) {
        use crate::index::IndexRow;
        match row {
            IndexRow::Reference { param, target } => {
                self.ref_ids.push(id.to_owned());
                self.ref_params.push(param);
                self.ref_targets.push(target);
            }
            IndexRow::Date { param, low, high } => {
                self.date_ids.push(id.to_owned());
                self.date_params.push(param);
                self.date_lows.push(low);
                self.date_highs.push(high);
            }
            other => self.other.push(other.to_json("AuditEvent", id)),
        }
    }
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
