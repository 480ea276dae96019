//! `ironfhir audit verify` (the check itself: [`crate::audit::trail::verify`]).

/// `ironfhir audit verify`: prints the result; an error (non-zero exit) names the first bad
/// record.
pub async fn verify(config: crate::config::Config) -> Result<(), String> {
    let db = crate::server::open_database(&config, 2, std::time::Duration::from_secs(3600)).await?;
    let result = crate::audit::trail::verify(&db.store).await;
    db.close().await?;
    match result.map_err(|e| format!("cannot read the audit trail: {e}"))? {
        Ok(count) => {
            println!("audit trail intact: {count} records");
            Ok(())
        }
        Err(broken) => Err(format!("audit trail broken at record {}: {}", broken.seq, broken.reason)),
    }
}
