//! search (type level, GET and POST _search) — https://hl7.org/fhir/R4/http.html#search

use crate::auth::{Interaction, Principal};
use crate::error::FhirResult;
use crate::fhir::types::ResourceType;
use crate::search::{self, SearchRequest};
use crate::store::{Store, StoredResource, Tx};

/// Parses and runs a type-level search; returns the request as understood (for links), the
/// page of matches and the total. `base` is the server's FHIR base URL (for reference values).
pub async fn search(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    pairs: &[(String, String)],
    strict: bool,
    base: &str,
) -> FhirResult<(SearchRequest, Vec<StoredResource>, Option<i64>)> {
    principal.require(resource_type.as_str(), Interaction::Search)?;
    let request = search::parse_search(resource_type, pairs, strict, base)?;
    let (found, total) = search::execute(store.pool(), &request).await?;
    Ok((request, found, total))
}

/// [`search`] inside a transaction (a GET entry of a transaction Bundle sees the entries
/// processed before it).
pub async fn search_in(
    tx: &mut Tx,
    principal: &Principal,
    resource_type: &ResourceType,
    pairs: &[(String, String)],
    strict: bool,
    base: &str,
) -> FhirResult<(SearchRequest, Vec<StoredResource>, Option<i64>)> {
    principal.require(resource_type.as_str(), Interaction::Search)?;
    let request = search::parse_search(resource_type, pairs, strict, base)?;
    let (found, total) = search::execute_in(&mut **tx, &request).await?;
    Ok((request, found, total))
}
