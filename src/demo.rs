//! `serve --demo`: loads a small synthetic data set (demo/demo.ndjson.gz, embedded) so a new
//! user has something to read and search right away.

use std::io::Read;

use serde_json::Value;

use crate::auth::Principal;
use crate::fhir::types::{Id, ResourceType};
use crate::interactions::update::update;
use crate::store::Store;

static DEMO: &[u8] = include_bytes!("../demo/demo.ndjson.gz");

/// Loads the demo resources that are not there yet (by id), through the same validated update
/// path as the API. Returns how many were written.
pub async fn load(store: &Store) -> Result<usize, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DEMO).read_to_string(&mut text).map_err(|e| e.to_string())?;
    let principal = Principal::internal("demo-loader", "system/*.*");
    let mut written = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let resource: Value = serde_json::from_str(line).map_err(|e| format!("demo data: {e}"))?;
        let rt = ResourceType::parse(resource["resourceType"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        let id = Id::parse(resource["id"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        if store.read(rt.as_str(), id.as_str()).await.map_err(|e| e.to_string())?.is_some() {
            continue;
        }
        update(store, &principal, &rt, &id, resource, None, "").await.map_err(|e| format!("demo data {rt}/{id}: {e}"))?;
        written += 1;
    }
    Ok(written)
}
