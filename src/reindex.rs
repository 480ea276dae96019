//! Rebuilding the search index tables from the stored resources: `ironfhir reindex`, and
//! `serve` in the background when the index was built from other SearchParameters (or by an
//! older extraction) than the running binary's ([`crate::index::definitions_hash`]).
//!
//! Online: resources are re-indexed in keyset-ordered batches, each in its own short
//! transaction that holds share locks on the batch's rows, so a concurrent write of one of
//! them waits for the batch instead of being overwritten by older values. The position is
//! committed with every batch (`search_index_state`), so an interrupted rebuild resumes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Row;

use crate::error::FhirResult;
use crate::index;
use crate::store::Store;

/// Resources re-indexed per transaction.
pub const DEFAULT_BATCH: i64 = 500;

/// Whether the index rows were built by the running binary's definitions, and where an
/// unfinished rebuild for these same definitions stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexState {
    pub current: bool,
    pub resume: Option<(String, String)>,
}

/// Reads the index state.
pub async fn state(store: &Store) -> FhirResult<IndexState> {
    let row = sqlx::query("SELECT definitions_hash, building_hash, resume_type, resume_id FROM search_index_state")
        .fetch_one(store.pool())
        .await?;
    let hash = index::definitions_hash();
    let built: Option<String> = row.get(0);
    let building: Option<String> = row.get(1);
    let resume = match (row.get::<Option<String>, _>(2), row.get::<Option<String>, _>(3)) {
        (Some(t), Some(i)) if building.as_deref() == Some(hash.as_str()) => Some((t, i)),
        _ => None,
    };
    let in_progress = building.is_some();
    Ok(IndexState { current: built.as_deref() == Some(hash.as_str()) && !in_progress, resume })
}

/// A database without resources has nothing to index: records the running definitions, so
/// that loading it (`import`, the API) does not make a later `serve` rebuild every row.
pub async fn mark_current_if_empty(store: &Store) -> FhirResult<()> {
    sqlx::query(
        "UPDATE search_index_state SET definitions_hash = $1, building_hash = NULL, resume_type = NULL, resume_id = NULL, \
         updated_at = now() WHERE definitions_hash IS DISTINCT FROM $1 AND NOT EXISTS (SELECT 1 FROM resource)",
    )
    .bind(index::definitions_hash())
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Rebuilds every live resource's index rows; `restart` ignores a recorded position (one for
/// other definitions is always ignored). `report` is called after each batch with the
/// resources done so far. Returns that count.
pub async fn rebuild(store: &Store, base: &str, batch: i64, restart: bool, mut report: impl FnMut(u64)) -> FhirResult<u64> {
    let hash = index::definitions_hash();
    let mut after = if restart { None } else { state(store).await?.resume };
    if after.is_none() {
        // A fresh start: mark the index as being rebuilt before the first batch commits.
        sqlx::query("UPDATE search_index_state SET building_hash = $1, resume_type = '', resume_id = '', updated_at = now()")
            .bind(&hash)
            .execute(store.pool())
            .await?;
        after = Some((String::new(), String::new()));
    }
    let mut done = 0u64;
    while let Some((last_type, last_id)) = after.take() {
        let mut tx = store.pool().begin().await?;
        let rows = sqlx::query(
            "SELECT resource_type, id, version_id, content, sealed, key_id FROM resource \
             WHERE (resource_type, id) > ($1, $2) AND NOT deleted \
             ORDER BY resource_type, id LIMIT $3 FOR SHARE",
        )
        .bind(&last_type)
        .bind(&last_id)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        // The index is built from the complete resources (blind rows from the sealed elements).
        let resources: Vec<(String, String, Value)> = rows
            .iter()
            .map(|r| {
                let (t, i): (String, String) = (r.get(0), r.get(1));
                let content = crate::store::open_row(&t, &i, r.get(2), r)?.unwrap_or(Value::Null);
                Ok((t, i, content))
            })
            .collect::<crate::error::FhirResult<_>>()?;
        let types: Vec<&str> = resources.iter().map(|r| r.0.as_str()).collect();
        let ids: Vec<&str> = resources.iter().map(|r| r.1.as_str()).collect();
        let entries = index::rows_json(resources.iter().map(|(t, i, c)| (t.as_str(), i.as_str(), c)), base);
        sqlx::query("SELECT search_index_replace($1, $2, $3, false)")
            .bind(&types)
            .bind(&ids)
            .bind(&entries)
            .execute(&mut *tx)
            .await?;
        done += resources.len() as u64;
        match resources.last() {
            Some((t, i, _)) if resources.len() as i64 == batch => {
                sqlx::query("UPDATE search_index_state SET resume_type = $1, resume_id = $2, updated_at = now()")
                    .bind(t)
                    .bind(i)
                    .execute(&mut *tx)
                    .await?;
                after = Some((t.clone(), i.clone()));
            }
            _ => {
                sqlx::query(
                    "UPDATE search_index_state SET definitions_hash = $1, building_hash = NULL, resume_type = NULL, \
                     resume_id = NULL, updated_at = now()",
                )
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        report(done);
    }
    Ok(done)
}

static RUNNING: AtomicBool = AtomicBool::new(false);
static AGAIN: AtomicBool = AtomicBool::new(false);

/// When the index is not current (at `serve` start, or after a SearchParameter changed),
/// rebuilds it in the background: searches keep working, but miss resources not yet
/// re-indexed until it finishes. One rebuild at a time; a trigger during one re-checks after it.
pub fn spawn_if_stale(store: Store, base: String) {
    if RUNNING.swap(true, Ordering::SeqCst) {
        AGAIN.store(true, Ordering::SeqCst);
        return;
    }
    tokio::spawn(async move {
        loop {
            AGAIN.store(false, Ordering::SeqCst);
            rebuild_if_stale(&store, &base).await;
            if !AGAIN.load(Ordering::SeqCst) {
                break;
            }
        }
        RUNNING.store(false, Ordering::SeqCst);
        if AGAIN.swap(false, Ordering::SeqCst) {
            spawn_if_stale(store, base);
        }
    });
}

async fn rebuild_if_stale(store: &Store, base: &str) {
    match state(store).await {
        Ok(s) if s.current => {}
        Ok(s) => {
            tracing::warn!(resuming = s.resume.is_some(), "search index is out of date: rebuilding it in the background");
            let started = Instant::now();
            let mut last_log = Instant::now();
            let result = rebuild(store, base, DEFAULT_BATCH, false, |done| {
                if last_log.elapsed() > Duration::from_secs(10) {
                    tracing::info!(done, "search index rebuild in progress");
                    last_log = Instant::now();
                }
            })
            .await;
            match result {
                Ok(done) => tracing::info!(done, seconds = started.elapsed().as_secs(), "search index rebuilt"),
                Err(e) => tracing::error!(error = %e, "search index rebuild failed; run `ironfhir reindex`"),
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the search index state"),
    }
}
