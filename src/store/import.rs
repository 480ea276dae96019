//! SQL of `ironfhir import`: batched writes of resources with client ids and the per-file
//! progress (`import_progress`) committed in the same transaction.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Tx;
use crate::error::FhirResult;

/// How far an input file is imported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub bytes_done: i64,
    pub lines_done: i64,
    pub completed: bool,
}

/// The recorded progress of a file (zero when it was never started).
pub async fn progress<'e, E: sqlx::PgExecutor<'e>>(executor: E, file_key: &str) -> FhirResult<Progress> {
    let row = sqlx::query("SELECT bytes_done, lines_done, completed FROM import_progress WHERE file_key = $1")
        .bind(file_key)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(|r| Progress { bytes_done: r.get(0), lines_done: r.get(1), completed: r.get(2) }).unwrap_or_default())
}

/// Makes every earlier (asynchronously committed) import transaction durable: a synchronous
/// commit waits for the WAL up to its own position, which lies after all of them.
pub async fn flush(pool: &sqlx::PgPool) -> FhirResult<()> {
    sqlx::query("UPDATE import_progress SET updated_at = now() WHERE file_key = (SELECT file_key FROM import_progress ORDER BY updated_at DESC LIMIT 1)")
        .execute(pool)
        .await?;
    Ok(())
}

/// Records the progress of a file inside the transaction that wrote the corresponding resources.
pub async fn record_progress(tx: &mut Tx, file_key: &str, progress: Progress) -> FhirResult<()> {
    sqlx::query(
        "INSERT INTO import_progress (file_key, bytes_done, lines_done, completed, updated_at) VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (file_key) DO UPDATE SET bytes_done = EXCLUDED.bytes_done, lines_done = EXCLUDED.lines_done, \
         completed = EXCLUDED.completed, updated_at = EXCLUDED.updated_at",
    )
    .bind(file_key)
    .bind(progress.bytes_done)
    .bind(progress.lines_done)
    .bind(progress.completed)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One resource to write: type, id and the JSON text of the resource already stamped with its
/// id, `meta.versionId` "1" and `meta.lastUpdated`.
#[derive(Debug)]
pub struct ImportRow {
    pub resource_type: String,
    pub id: String,
    pub content: String,
    /// The history row's `method`: `PUT` (client id, update-as-create) or `POST` (a
    /// transaction Bundle's create with a server-assigned id).
    pub method: &'static str,
    /// Its search index rows ([`crate::index::rows`]).
    pub index: Vec<serde_json::Value>,
}

/// Writes many resources in one statement with the semantics of update-as-create
/// (http.html#update): a new id is version 1, an existing (or deleted) one gets the next
/// version; every row gets its history row. The `(type, id)` pairs must be distinct (PostgreSQL
/// cannot upsert one row twice in a statement). Returns the number of versions written.
pub async fn write_batch(tx: &mut Tx, rows: &[ImportRow], last_updated: DateTime<Utc>) -> FhirResult<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let types: Vec<&str> = rows.iter().map(|r| r.resource_type.as_str()).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    // The versions the batch writes, read under row locks: the sealed elements' associated
    // data names the version, so it is decided here rather than in the upsert.
    let existing: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT r.resource_type, r.id, r.version_id FROM resource r \
         JOIN UNNEST($1::text[], $2::text[]) AS k(t, i) ON r.resource_type = k.t AND r.id = k.i FOR UPDATE OF r",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let previous: std::collections::HashMap<(&str, &str), i64> =
        existing.iter().map(|(t, i, v)| ((t.as_str(), i.as_str()), *v)).collect();
    let mut versions = Vec::with_capacity(rows.len());
    let mut contents = Vec::with_capacity(rows.len());
    let mut ciphertexts = Vec::with_capacity(rows.len());
    let mut key_ids = Vec::with_capacity(rows.len());
    for r in rows {
        let version = previous.get(&(r.resource_type.as_str(), r.id.as_str())).map_or(1, |v| v + 1);
        let mut content: serde_json::Value =
            serde_json::from_str(&r.content).map_err(|e| crate::error::FhirError::BadRequest(format!("not JSON: {e}")))?;
        if let Some(meta) = content.get_mut("meta").and_then(serde_json::Value::as_object_mut) {
            meta.insert("versionId".into(), serde_json::Value::String(version.to_string()));
        }
        let sealed = crate::crypto::seal(&r.resource_type, &r.id, version, &content)?;
        versions.push(version);
        contents.push(sealed.content.to_string());
        ciphertexts.push(sealed.sealed);
        key_ids.push(sealed.key_id);
    }
    let methods: Vec<&str> = rows.iter().map(|r| r.method).collect();
    let index: Vec<&serde_json::Value> = rows.iter().flat_map(|r| r.index.iter()).collect();
    // Durability per batch is not needed: the progress row commits with the batch, so a crash
    // loses both together and a re-run writes them again; `import` ends with a synchronous
    // commit that flushes everything before it.
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut **tx).await?;
    let done = sqlx::query(
        "WITH input AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $5::text[], $7::bigint[], $8::bytea[], $9::text[]) \
           AS t(resource_type, id, content, method, version_id, sealed, key_id)), \
         current AS (INSERT INTO resource AS r (resource_type, id, version_id, last_updated, deleted, content, sealed, key_id) \
           SELECT resource_type, id, version_id, $4, false, content::jsonb, sealed, key_id FROM input \
           ON CONFLICT (resource_type, id) DO UPDATE SET version_id = EXCLUDED.version_id, last_updated = EXCLUDED.last_updated, \
             deleted = false, content = EXCLUDED.content, sealed = EXCLUDED.sealed, key_id = EXCLUDED.key_id \
           RETURNING r.resource_type, r.id, r.version_id, r.content, r.sealed, r.key_id), \
         history AS (INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, deleted, content, sealed, key_id) \
           SELECT c.resource_type, c.id, c.version_id, $4, i.method, false, c.content, c.sealed, c.key_id FROM current c \
           JOIN input i ON i.resource_type = c.resource_type AND i.id = c.id RETURNING 1), \
         written AS (SELECT count(*) AS n FROM history) \
         SELECT n, search_index_replace($1, $2, $6, false) FROM written",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&contents)
    .bind(last_updated)
    .bind(&methods)
    .bind(sqlx::types::Json(&index))
    .bind(&versions)
    .bind(&ciphertexts)
    .bind(&key_ids)
    .fetch_one(&mut **tx)
    .await?;
    Ok(done.get::<i64, _>(0) as u64)
}
