//! The transactional outbox and its dispatcher.
//!
//! Rows come from the trigger `outbox_capture` (migrations/functions/events.sql): one per
//! registered consumer for every resource version written, inside the writing transaction —
//! an event exists exactly when its write committed, whatever path wrote it, and survives a
//! `kill -9` of the server or a PostgreSQL restart like the write itself.
//!
//! Dispatch: the outbox is cut into 16 partitions by resource (`outbox_partition`). Every
//! server instance leases the free partitions of each consumer (`outbox_lease`,
//! `FOR UPDATE SKIP LOCKED`, 10 s, renewed while it works; a killed instance's partitions
//! are taken over when its leases run out) and hands the consumer batches in
//! `event_id` order; the consumer's work and the deletion of the batch commit together, with
//! the lease rows share-locked so no other instance can take the partitions mid-batch. A
//! batch that fails is rolled back and retried: delivery is at least once, and the events of
//! one resource (one partition, written one after another under the resource's row lock)
//! never overtake each other.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio::sync::watch;

use crate::store::{Store, Tx};

/// Events handed to a consumer per batch at most.
pub const BATCH: i64 = 500;

/// How long a partition lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(10);

/// How often an idle dispatcher looks at the outbox without being woken (a missed
/// notification, or a partition another instance let go).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// One committed write, as the outbox records it.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub event_id: i64,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    /// `create`, `update` or `delete`.
    pub interaction: String,
    /// When the write's transaction queued the event.
    pub recorded_at: DateTime<Utc>,
}

/// The future a consumer returns for one batch.
pub type ConsumeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A reader of the outbox. `consume` runs inside the transaction that deletes the batch: what
/// it writes commits with the deletion, and an error rolls both back (the batch comes again).
pub trait Consumer: Send + Sync + 'static {
    /// The consumer's name in `outbox_consumer`.
    fn name(&self) -> &'static str;
    /// Handles one batch, in order.
    fn consume<'a>(&'a self, tx: &'a mut Tx, events: &'a [OutboxEvent]) -> ConsumeFuture<'a>;
}

/// Registers a consumer: from the next write on, every write queues an event for it too.
pub async fn register(store: &Store, name: &str) -> Result<(), sqlx::Error> {
    let mut tx = store.pool().begin().await?;
    sqlx::query("INSERT INTO outbox_consumer (name) VALUES ($1) ON CONFLICT DO NOTHING").bind(name).execute(&mut *tx).await?;
    sqlx::query("INSERT INTO outbox_lease (consumer, partition) SELECT $1, p FROM generate_series(0, 15) p ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Events waiting for `consumer` (all partitions): how far behind its dispatchers are.
pub async fn backlog(store: &Store, consumer: &str) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    let row = sqlx::query("SELECT count(*), min(recorded_at) FROM outbox_event WHERE consumer = $1").bind(consumer).fetch_one(store.pool()).await?;
    Ok((row.get(0), row.get(1)))
}

/// Listens for `ironfhir_outbox` notifications (sent by the trigger at commit): the returned
/// channel changes whenever events were queued. Reconnects after a lost connection.
pub async fn listen(store: Store) -> watch::Receiver<u64> {
    notifications(store, "ironfhir_outbox").await
}

/// A channel that changes at every notification on `channel` (and once after each reconnect,
/// so nothing queued during a gap waits for the idle poll).
pub async fn notifications(store: Store, channel: &'static str) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            match sqlx::postgres::PgListener::connect_with(store.pool()).await {
                Ok(mut listener) => {
                    if let Err(e) = listener.listen(channel).await {
                        tracing::warn!(error = %e, channel, "cannot LISTEN; retrying");
                    } else {
                        tx.send_modify(|n| *n += 1);
                        while listener.recv().await.is_ok() {
                            tx.send_modify(|n| *n += 1);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, channel, "cannot connect to LISTEN; retrying"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    rx
}

/// Runs `consumer`'s dispatcher on this instance until the process ends.
pub fn spawn(store: Store, consumer: Arc<dyn Consumer>, mut wake: watch::Receiver<u64>, instance: uuid::Uuid) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            match dispatch_available(&store, consumer.as_ref(), instance).await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, consumer = consumer.name(), "outbox batch failed; it will be retried");
                    // 0.1 s, 0.2 s … at most 5 s between attempts while the failure lasts.
                    let backoff = Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5));
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
            let _ = tokio::time::timeout(IDLE_POLL, wake.changed()).await;
        }
    });
}

/// Leases what partitions are free and dispatches batches until the leased partitions are
/// empty; returns the number of events handled.
pub async fn dispatch_available(store: &Store, consumer: &dyn Consumer, instance: uuid::Uuid) -> Result<usize, String> {
    let leased = lease(store, consumer.name(), instance).await.map_err(|e| e.to_string())?;
    if leased.is_empty() {
        return Ok(0);
    }
    let mut handled = 0;
    let started = std::time::Instant::now();
    loop {
        let n = dispatch_batch(store, consumer, instance).await?;
        handled += n;
        if (n as i64) < BATCH {
            return Ok(handled);
        }
        if started.elapsed() > LEASE / 3 {
            // A long backlog: renew the leases before they could run out.
            return Ok(handled);
        }
    }
}

/// Takes (or renews) this instance's partitions of `consumer`: its own and the ones whose
/// lease ran out; partitions being taken by another instance right now are skipped.
async fn lease(store: &Store, consumer: &str, instance: uuid::Uuid) -> Result<Vec<i16>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE outbox_lease SET holder = $2, expires_at = now() + make_interval(secs => $3)
          WHERE (consumer, partition) IN (
                SELECT consumer, partition FROM outbox_lease
                 WHERE consumer = $1 AND (holder = $2 OR expires_at < now())
                 FOR UPDATE SKIP LOCKED)
          RETURNING partition",
    )
    .bind(consumer)
    .bind(instance)
    .bind(LEASE.as_secs_f64())
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// One batch: share-locks this instance's live leases (so they cannot be taken over until the
/// batch commits), reads the oldest events of those partitions, lets the consumer handle them
/// and deletes them, all in one transaction.
async fn dispatch_batch(store: &Store, consumer: &dyn Consumer, instance: uuid::Uuid) -> Result<usize, String> {
    let mut tx = store.pool().begin().await.map_err(|e| e.to_string())?;
    let partitions: Vec<i16> = sqlx::query_scalar(
        "SELECT partition FROM outbox_lease WHERE consumer = $1 AND holder = $2 AND expires_at > now() FOR SHARE",
    )
    .bind(consumer.name())
    .bind(instance)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    if partitions.is_empty() {
        return Ok(0);
    }
    let rows = sqlx::query(
        "SELECT event_id, resource_type, id, version_id, interaction, recorded_at FROM outbox_event
          WHERE consumer = $1 AND partition = ANY($2) ORDER BY event_id LIMIT $3",
    )
    .bind(consumer.name())
    .bind(&partitions)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Ok(0);
    }
    let events: Vec<OutboxEvent> = rows
        .iter()
        .map(|r| OutboxEvent {
            event_id: r.get(0),
            resource_type: r.get(1),
            id: r.get(2),
            version_id: r.get(3),
            interaction: r.get(4),
            recorded_at: r.get(5),
        })
        .collect();
    consumer.consume(&mut tx, &events).await?;
    let ids: Vec<i64> = events.iter().map(|e| e.event_id).collect();
    sqlx::query("DELETE FROM outbox_event WHERE event_id = ANY($1)").bind(&ids).execute(&mut *tx).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(events.len())
}
