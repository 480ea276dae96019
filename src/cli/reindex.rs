//! `ironfhir reindex` (the rebuild itself: [`crate::reindex`]).

use std::time::Duration;

use crate::config::ReindexArgs;
use crate::server;

/// Runs `ironfhir reindex`: prints the number of resources re-indexed, and records the rebuild
/// in the audit trail (DICOM 110100 Application Activity).
pub async fn run(args: ReindexArgs) -> Result<(), String> {
    let db = server::open_database(&args.config, 2, Duration::from_secs(600)).await?;
    crate::search::custom::refresh(&db.store).await.map_err(|e| format!("cannot load the custom SearchParameters: {e}"))?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} resources re-indexed ({per_sec}, {elapsed})")
            .map_err(|e| e.to_string())?,
    );
    let result =
        crate::reindex::rebuild(&db.store, args.base_url.trim_end_matches('/'), args.batch_size, args.restart, |done| bar.set_position(done)).await;
    bar.finish_and_clear();
    let outcome = match &result {
        Ok(done) => format!("{done} resources re-indexed"),
        Err(_) => "the rebuild failed".to_owned(),
    };
    let event = crate::audit::operator_event(crate::audit::OperatorChange::Reindex, "reindex", result.is_ok(), &outcome);
    let recorded = super::record(&db.store, event).await;
    db.close().await?;
    let done = result.map_err(|e| format!("reindex failed: {e}"))?;
    recorded?;
    println!("{done} resources re-indexed");
    Ok(())
}
