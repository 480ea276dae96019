//! Deletes uploads that were never completed: a pending object older than
//! `--upload-orphan-after` is claimed (`objects::claim_orphans`, `FOR UPDATE SKIP LOCKED`, so
//! of several servers one takes each), deleted from the store, then forgotten. A server that
//! stops between the two leaves the claim, which another pass takes over after [`LEASE`].
//! Completed objects are never swept: every version of a Binary that names one keeps it, as
//! history keeps the versions.

use std::time::Duration;

use super::{Documents, objects};
use crate::error::FhirResult;
use crate::store::Store;

/// How often the sweeper looks.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// A claim older than this is taken over (its server stopped mid-sweep).
pub const LEASE: Duration = Duration::from_secs(300);
/// Objects per pass at most.
const PER_PASS: i64 = 500;

/// Starts the sweeper on the current runtime.
pub fn spawn(documents: Documents, store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            if let Err(e) = sweep(&documents, &store).await {
                tracing::warn!(error = %e, "orphaned uploads could not be deleted; retrying");
            }
        }
    })
}

/// One pass; returns how many orphaned uploads were deleted.
pub async fn sweep(documents: &Documents, store: &Store) -> FhirResult<usize> {
    let mut deleted = 0;
    for key in objects::claim_orphans(store, documents.orphan_after, LEASE, PER_PASS).await? {
        match documents.store.delete(&key).await {
            Ok(()) => {
                objects::forget(store, &key).await?;
                deleted += 1;
            }
            // Left claimed: retried once the lease has passed.
            Err(e) => tracing::warn!(error = %e, "cannot delete an orphaned upload"),
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "orphaned uploads deleted");
    }
    Ok(deleted)
}
