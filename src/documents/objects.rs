//! The `document_object` table (migrations/0004_documents.sql): which stored object belongs to
//! which Binary and how far its upload got. Only this module writes SQL on it.

use std::time::Duration;

use sqlx::Row;

use crate::error::FhirResult;
use crate::store::Store;

/// How far an upload got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Stored,
    Sweeping,
}

/// One object row.
#[derive(Debug, Clone)]
pub struct Object {
    pub key: String,
    pub resource_type: String,
    pub resource_id: String,
    pub state: State,
    pub content_type: String,
    pub size: u64,
    pub sha1: Option<[u8; 20]>,
}

fn state(text: &str) -> State {
    match text {
        "stored" => State::Stored,
        "sweeping" => State::Sweeping,
        _ => State::Pending,
    }
}

fn object(row: &sqlx::postgres::PgRow) -> Object {
    Object {
        key: row.get("key"),
        resource_type: row.get("resource_type"),
        resource_id: row.get("resource_id"),
        state: state(row.get::<String, _>("state").as_str()),
        content_type: row.get("content_type"),
        size: u64::try_from(row.get::<i64, _>("size")).unwrap_or(0),
        sha1: row.get::<Option<Vec<u8>>, _>("sha1").and_then(|h| <[u8; 20]>::try_from(h.as_slice()).ok()),
    }
}

/// Records an upload that was asked for.
pub async fn insert_pending(store: &Store, o: &Object) -> FhirResult<()> {
    sqlx::query(
        "INSERT INTO document_object (key, resource_type, resource_id, state, content_type, size, sha1) VALUES ($1, $2, $3, 'pending', $4, $5, $6)",
    )
    .bind(&o.key)
    .bind(&o.resource_type)
    .bind(&o.resource_id)
    .bind(&o.content_type)
    .bind(i64::try_from(o.size).unwrap_or(i64::MAX))
    .bind(o.sha1.map(|h| h.to_vec()))
    .execute(store.pool())
    .await?;
    Ok(())
}

/// The row of a key.
pub async fn get(store: &Store, key: &str) -> FhirResult<Option<Object>> {
    let row = sqlx::query("SELECT * FROM document_object WHERE key = $1").bind(key).fetch_optional(store.pool()).await?;
    Ok(row.as_ref().map(object))
}

/// Marks a pending upload stored with its verified digest; false when it is no longer pending
/// (completed already, or claimed by the sweeper).
pub async fn mark_stored(store: &Store, key: &str, sha1: &[u8; 20]) -> FhirResult<bool> {
    let done = sqlx::query("UPDATE document_object SET state = 'stored', sha1 = $2, completed_at = now() WHERE key = $1 AND state = 'pending'")
        .bind(key)
        .bind(sha1.to_vec())
        .execute(store.pool())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Claims up to `limit` uploads pending for longer than `after` (or sweeps left unfinished for
/// longer than `lease`), so that of several servers exactly one deletes each.
pub async fn claim_orphans(store: &Store, after: Duration, lease: Duration, limit: i64) -> FhirResult<Vec<String>> {
    let rows = sqlx::query(
        "UPDATE document_object SET state = 'sweeping', claimed_at = now() \
         WHERE key IN (SELECT key FROM document_object \
                       WHERE (state = 'pending' AND created_at < now() - make_interval(secs => $1)) \
                          OR (state = 'sweeping' AND claimed_at < now() - make_interval(secs => $2)) \
                       ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT $3) \
         RETURNING key",
    )
    .bind(after.as_secs_f64())
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Forgets a swept object (after it was deleted from the store).
pub async fn forget(store: &Store, key: &str) -> FhirResult<()> {
    sqlx::query("DELETE FROM document_object WHERE key = $1 AND state = 'sweeping'").bind(key).execute(store.pool()).await?;
    Ok(())
}
