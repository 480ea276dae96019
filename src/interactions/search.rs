//! search (type level, GET and POST _search) — https://hl7.org/fhir/R4/http.html#search

use crate::auth::{Interaction, Principal};
use crate::error::FhirResult;
use crate::fhir::types::ResourceType;
use crate::search::{self, SearchRequest};
use crate::store::{Store, StoredResource, Tx};

/// What a search found: the request as understood (for links), the page of matches, the
/// total, and the resources `_include`/`_revinclude` added.
#[derive(Debug)]
pub struct SearchOutcome {
    pub request: SearchRequest,
    pub found: Vec<StoredResource>,
    pub total: Option<i64>,
    pub included: Vec<StoredResource>,
}

/// Parses a search and checks the principal may search every type it touches (chained
/// targets and `_has` sources too: a chain must not reveal what the token cannot search).
fn parse_checked(
    principal: &Principal,
    resource_type: &ResourceType,
    pairs: &[(String, String)],
    strict: bool,
    base: &str,
) -> FhirResult<SearchRequest> {
    principal.require(resource_type.as_str(), Interaction::Search)?;
    let request = search::parse_search(resource_type, pairs, strict, base)?;
    for t in request.criteria.types() {
        principal.require(&t, Interaction::Search)?;
    }
    Ok(request)
}

/// Parses and runs a type-level search. `base` is the server's FHIR base URL (for reference
/// values). Included resources of types the principal may not read are left out.
pub async fn search(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    pairs: &[(String, String)],
    strict: bool,
    base: &str,
) -> FhirResult<SearchOutcome> {
    let request = parse_checked(principal, resource_type, pairs, strict, base)?;
    let mut conn = store.pool().acquire().await?;
    let (found, total) = search::execute_in(&mut conn, &request).await?;
    let allowed = |t: &str| principal.allows(t, Interaction::Read);
    let included = search::fetch_includes(&mut conn, &request.includes, &found, base, &allowed).await?;
    Ok(SearchOutcome { request, found, total, included })
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
) -> FhirResult<SearchOutcome> {
    let request = parse_checked(principal, resource_type, pairs, strict, base)?;
    let (found, total) = search::execute_in(&mut **tx, &request).await?;
    let allowed = |t: &str| principal.allows(t, Interaction::Read);
    let included = search::fetch_includes(&mut **tx, &request.includes, &found, base, &allowed).await?;
    Ok(SearchOutcome { request, found, total, included })
}
