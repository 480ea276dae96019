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
    /// The path searched, relative to the base (`Observation`, `Patient/1/Observation`, ``),
    /// for the Bundle's links.
    pub path: String,
    pub request: SearchRequest,
    pub found: Vec<StoredResource>,
    pub total: Option<i64>,
    /// Whether matches follow this page.
    pub more: bool,
    /// Whether the `next` link pages by `_cursor` (keyset) rather than `_offset`.
    pub keyset: bool,
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
    let _reach = principal.require(resource_type.as_str(), Interaction::Search)?;
    let mut request = search::parse_search(resource_type, pairs, strict, base)?;
    for t in request.criteria.types() {
        let _reach = principal.require(&t, Interaction::Search)?;
    }
    // Every searched type (chains and _has included) within the principal's reach; a masked
    // role may not search, sort or include by what it cannot see.
    crate::access::confine(&mut request.criteria, principal, base)?;
    if let Some(mask) = principal.mask() {
        let mask = &*mask;
        for (param, _, _) in &request.sort {
            crate::access::mask::check_param(mask, resource_type.as_str(), param)?;
        }
        for include in &request.includes {
            check_include(mask, resource_type.as_str(), include)?;
        }
    }
    Ok(request)
}

/// 400 when an `_include`/`_revinclude` follows a reference the role's mask hides (a wildcard
/// include when any reference parameter of a type it may follow is hidden).
fn check_include(mask: &crate::access::roles::Mask, resource_type: &str, include: &search::Include) -> FhirResult<()> {
    let defs = crate::fhir::definitions::definitions();
    let sources: Vec<String> = match (&include.source, include.reverse) {
        (Some(source), _) => vec![source.clone()],
        (None, false) => vec![resource_type.to_owned()],
        (None, true) => defs.resource_types().to_vec(),
    };
    for source in &sources {
        match &include.param {
            Some(param) => crate::access::mask::check_param(mask, source, param)?,
            None => {
                for sp in defs.search_params(source).into_iter().filter(|sp| sp.param_type == "reference") {
                    crate::access::mask::check_param(mask, source, &sp.code)?;
                }
            }
        }
    }
    Ok(())
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
    let _turn = search::cost::scanning_turn(&[&request.criteria]).await?;
    let mut conn = store.pool().acquire().await?;
    run_on(&mut conn, principal, request, resource_type.to_string(), base).await
}

/// Runs a parsed search on one connection: the page, the total, whether more follow, and the
/// includes the principal may read.
async fn run_on(
    conn: &mut sqlx::PgConnection,
    principal: &Principal,
    request: SearchRequest,
    path: String,
    base: &str,
) -> FhirResult<SearchOutcome> {
    let (found, total, more) = search::execute_in(&mut *conn, &request).await?;
    let included = readable_includes(conn, principal, &request, &found, base).await?;
    let keyset = search::pages_by_cursor(&request);
    Ok(SearchOutcome { path, request, found, total, more, keyset, included })
}

/// The `_include`/`_revinclude` resources of a page that the principal may read: types its
/// scopes do not cover are not fetched, and resources outside a `patient/` scope's
/// compartment are dropped (includes do not count towards totals or paging).
async fn readable_includes(
    conn: &mut sqlx::PgConnection,
    principal: &Principal,
    request: &SearchRequest,
    found: &[StoredResource],
    base: &str,
) -> FhirResult<Vec<StoredResource>> {
    let allowed = |t: &str| principal.allows(t, Interaction::Read);
    let included = search::fetch_includes(&mut *conn, &request.includes, found, base, &allowed).await?;
    let mut kept = Vec::with_capacity(included.len());
    for r in included {
        let inside = match (principal.access(&r.resource_type, Interaction::Read), &r.content) {
            (Some(reach), Some(content)) => {
                crate::access::reaches(&mut *conn, &reach, &r.resource_type, &r.id, content, base).await?
                    && crate::access::matches_filters(&mut *conn, principal, &r.resource_type, &r.id, Interaction::Read, base).await?
            }
            _ => false,
        };
        if inside {
            kept.push(r);
        }
    }
    Ok(kept)
}

/// Compartment search (`GET [base]/Patient/1/Observation`, compartmentdefinition.html): the
/// type-level search, restricted to resources that reference the compartment's resource
/// through any of the parameters the official CompartmentDefinition lists for the type. A type
/// that is not part of the compartment finds nothing.
#[allow(clippy::too_many_arguments)]
pub async fn compartment_search(
    store: &Store,
    principal: &Principal,
    compartment: &ResourceType,
    id: &crate::fhir::types::Id,
    resource_type: &ResourceType,
    pairs: &[(String, String)],
    strict: bool,
    base: &str,
) -> FhirResult<SearchOutcome> {
    let mut request = parse_checked(principal, resource_type, pairs, strict, base)?;
    let member = crate::access::compartment_clause(compartment.as_str(), id.as_str(), resource_type.as_str(), base)
        .unwrap_or_else(crate::access::nothing);
    request.criteria.clauses.push(member);
    let _turn = search::cost::scanning_turn(&[&request.criteria]).await?;
    let mut conn = store.pool().acquire().await?;
    run_on(&mut conn, principal, request, format!("{compartment}/{id}/{resource_type}"), base).await
}

/// System-level search (`GET [base]?_type=A,B&…`): the parameters must apply to every listed
/// type (otherwise 400), or to every type when `_type` is absent (the common parameters). Types
/// the principal may not search are left out unless named in `_type` (then 403). Results are
/// ordered by type and id.
pub async fn system_search(store: &Store, principal: &Principal, pairs: &[(String, String)], base: &str) -> FhirResult<SearchOutcome> {
    let defs = crate::fhir::definitions::definitions();
    let mut types: Option<Vec<String>> = None;
    for (k, v) in pairs.iter().filter(|(k, _)| k == "_type") {
        let list = types.get_or_insert_with(Vec::new);
        for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !defs.is_resource_type(t) {
                return Err(crate::error::FhirError::BadRequest(format!("{k}: '{}' is not a resource type", crate::fhir::types::sanitize(t))));
            }
            let _ = principal.require(t, Interaction::Search)?;
            list.push(t.to_owned());
        }
    }
    let explicit = types.is_some();
    let full_text = pairs.iter().any(|(k, _)| k.starts_with("_content") || k.starts_with("_text"));
    if full_text && types.as_ref().is_none_or(|t| t.len() > search::cost::MAX_FULL_TEXT_TYPES) {
        return Err(crate::error::FhirError::BadRequest(format!(
            "_content and _text read every resource of every type searched: name at most {} types with _type",
            search::cost::MAX_FULL_TEXT_TYPES
        )));
    }
    let types = types.unwrap_or_else(|| defs.resource_types().iter().filter(|t| principal.allows(t, Interaction::Search)).cloned().collect());
    if !principal.allows_any(Interaction::Search) {
        return Err(crate::error::FhirError::Forbidden("the access token's scopes do not allow search".into()));
    }
    let rest: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "_type").cloned().collect();
    let mut parts = vec![];
    let mut first: Option<SearchRequest> = None;
    for t in &types {
        let rt = ResourceType::parse(t)?;
        let request = parse_checked(principal, &rt, &rest, true, base).map_err(|e| match e {
            crate::error::FhirError::BadRequest(m) if !explicit => {
                crate::error::FhirError::BadRequest(format!("{m} (without _type only parameters common to all types can be used)"))
            }
            other => other,
        })?;
        parts.push(request.criteria.clone());
        first.get_or_insert(request);
    }
    let Some(mut request) = first else {
        return Err(crate::error::FhirError::Forbidden("the access token's scopes do not allow searching any type".into()));
    };
    let _turn = search::cost::scanning_turn(&parts.iter().collect::<Vec<_>>()).await?;
    let (found, total) = search::execute_union(store.pool(), &parts, None, request.count, request.offset).await?;
    if explicit {
        request.used.insert(0, ("_type".into(), types.join(",")));
    }
    let mut conn = store.pool().acquire().await?;
    let included = readable_includes(&mut conn, principal, &request, &found, base).await?;
    let more = ((request.offset + found.len()) as i64) < total;
    if request.cursor.is_some() {
        return Err(crate::error::FhirError::BadRequest("system-level search pages with _offset, not _cursor".into()));
    }
    Ok(SearchOutcome { path: String::new(), request, found, total: Some(total), more, keyset: false, included })
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
    let _turn = search::cost::scanning_turn(&[&request.criteria]).await?;
    run_on(&mut **tx, principal, request, resource_type.to_string(), base).await
}
