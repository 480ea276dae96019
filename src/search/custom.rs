//! SearchParameters added by the server's users: active `SearchParameter` resources stored
//! here extend (or, with the same code, replace) the official ones for their base types, with
//! no code change. Loaded at start-up and after every write that may have changed one; a
//! change makes the index stale, which `reindex::spawn_if_stale` repairs in the background.

use serde_json::Value;
use sqlx::Row;

use crate::error::FhirResult;
use crate::fhir::definitions::{SearchParameter, set_custom_search_params};
use crate::store::Store;

/// Loads the active SearchParameter resources into the definitions; true when they changed.
pub async fn refresh(store: &Store) -> FhirResult<bool> {
    let rows = sqlx::query("SELECT content FROM resource WHERE resource_type = 'SearchParameter' AND NOT deleted")
        .fetch_all(store.pool())
        .await?;
    let params: Vec<SearchParameter> = rows.iter().filter_map(|r| usable(r.get::<Option<Value>, _>(0)?)).collect();
    Ok(set_custom_search_params(params))
}

/// A stored SearchParameter the search engine can use: active, with a code, base types, a
/// type and a FHIRPath expression.
fn usable(resource: Value) -> Option<SearchParameter> {
    if resource.get("status").and_then(Value::as_str) != Some("active") {
        return None;
    }
    let sp: SearchParameter = serde_json::from_value(resource).ok()?;
    let valid = !sp.code.is_empty()
        && !sp.base.is_empty()
        && sp.expression.as_deref().is_some_and(|e| !e.trim().is_empty())
        && matches!(sp.param_type.as_str(), "string" | "token" | "reference" | "date" | "number" | "quantity" | "uri");
    valid.then_some(sp)
}
