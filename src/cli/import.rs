//! `ironfhir import FILE|DIR…` (the loading itself: [`crate::import`]).

use std::time::Duration;

use crate::config::ImportArgs;
use crate::server;

/// Runs `import`; `Err` (non-zero exit) when a file could not be read or any resource failed.
pub async fn run(args: ImportArgs) -> Result<(), String> {
    let inputs = crate::import::inputs(&args.files)?;
    if inputs.is_empty() {
        return Err("no *.json or *.ndjson files to import".into());
    }
    // Parse the FHIR definitions while the database starts.
    let definitions = tokio::task::spawn_blocking(|| {
        crate::fhir::definitions::definitions();
    });
    let db = server::open_database(&args.config, args.parallel + 2, Duration::from_secs(600)).await?;
    let _ = definitions.await;
    crate::search::custom::refresh(&db.store).await.map_err(|e| format!("cannot load the custom SearchParameters: {e}"))?;
    let documents = args.documents.build(&args.config.data_dir, crate::auth::keys::load_or_create(&args.config)?.as_bytes())?;
    let result = crate::import::import(&db.store, &args, inputs, Some(documents)).await;
    db.close().await?;
    result
}
