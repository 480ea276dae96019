//! history at instance, type and system level — https://hl7.org/fhir/R4/http.html#history

use chrono::{DateTime, Utc};

use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::store::{HistoryQuery, Store, StoredResource};

/// Default and maximum page sizes of history bundles.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

/// Parsed `_since`, `_at`, `_count` and the paging cursor.
#[derive(Debug, Default, Clone)]
pub struct HistoryParams {
    pub since: Option<DateTime<Utc>>,
    pub at: Option<DateTime<Utc>>,
    pub count: usize,
    pub before_seq: Option<i64>,
}

impl HistoryParams {
    /// Parses the history parameters; malformed values are 400.
    pub fn parse(pairs: &[(String, String)]) -> FhirResult<Self> {
        let mut p = HistoryParams { count: DEFAULT_COUNT, ..Default::default() };
        for (k, v) in pairs {
            match k.as_str() {
                "_since" => p.since = Some(parse_instant(k, v)?),
                "_at" => p.at = Some(parse_instant(k, v)?),
                "_count" => {
                    p.count = v
                        .parse::<usize>()
                        .map_err(|_| FhirError::BadRequest("_count must be a non-negative integer".into()))?
                        .clamp(1, MAX_COUNT)
                }
                "_page" => {
                    p.before_seq = Some(v.parse().map_err(|_| FhirError::BadRequest("_page is not a valid cursor".into()))?)
                }
                _ => {}
            }
        }
        Ok(p)
    }
}

pub(crate) fn parse_instant(name: &str, v: &str) -> FhirResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        })
        .map_err(|_| FhirError::BadRequest(format!("{name} must be an instant such as 2024-01-31T12:00:00Z")))
}

/// One page of history: entries newest first, the cursor of the next page, and the total.
pub struct HistoryPage {
    pub entries: Vec<StoredResource>,
    pub next_cursor: Option<i64>,
    pub total: i64,
}

/// History of one resource, one type, or the whole system (`resource_type`/`id` absent).
pub async fn history(
    store: &Store,
    principal: &Principal,
    resource_type: Option<&ResourceType>,
    id: Option<&Id>,
    params: &HistoryParams,
    base: &str,
) -> FhirResult<HistoryPage> {
    let reach = match (resource_type, id) {
        (Some(rt), Some(_)) => principal.require(rt.as_str(), Interaction::Read)?,
        (Some(rt), None) => match principal.require(rt.as_str(), Interaction::Search)? {
            Reach::All => Reach::All,
            // Type history has no compartment filter in SQL; its totals and pages would count
            // other patients' versions.
            Reach::Patient(_) => {
                return Err(FhirError::Forbidden("type-level history is not available to patient-scoped tokens".into()));
            }
            Reach::Organization(_) => {
                return Err(FhirError::Forbidden("type-level history is not available to tokens bound to a role".into()));
            }
        },
        _ => {
            // System history spans every type: only a principal that reaches everything of
            // every type may see it. A token bound to a role reaches its organisation subtree
            // only, and history rows have no index to confine them by in SQL (totals and
            // pages would count the rest), so it is refused like type-level history.
            let everything = principal.acting.is_none()
                && principal.role.as_deref().is_none_or(|r| !r.starts_with("PractitionerRole/"))
                && principal.scopes.iter().any(|s| {
                    s.is_wildcard() && s.filter.is_none() && s.context != crate::auth::ScopeContext::Patient && s.allows_any(Interaction::Search)
                });
            if !everything {
                return Err(FhirError::Forbidden("system-level history needs a scope on all resource types".into()));
            }
            Reach::All
        }
    };
    if let Some(rt) = resource_type
        && id.is_none()
        && principal.filters(rt.as_str(), Interaction::Search).is_some()
    {
        return Err(FhirError::Forbidden("type-level history is not available under granular scopes".into()));
    }
    if let (Some(rt), Some(id)) = (resource_type, id)
        && principal.filters(rt.as_str(), Interaction::Read).is_some()
        && !crate::access::matches_filters(&mut *store.pool().acquire().await?, principal, rt.as_str(), id.as_str(), Interaction::Read, base).await?
    {
        return Err(FhirError::NotFound(format!("{rt}/{id} is not known")));
    }
    if let (false, Some(rt), Some(id)) = (reach == Reach::All, resource_type, id) {
        // The resource as it is now must be within reach; its versions outside it are left
        // out below.
        let current = store.read(rt.as_str(), id.as_str()).await?;
        let inside = match current.as_ref().and_then(|c| c.content.as_ref()) {
            Some(content) => crate::access::reaches_pooled(store.pool(), &reach, rt.as_str(), id.as_str(), content, base).await?,
            None => false,
        };
        if !inside {
            return Err(FhirError::NotFound(format!("{rt}/{id} is not known")));
        }
    }
    let query = HistoryQuery {
        resource_type: resource_type.map(ResourceType::as_str),
        id: id.map(Id::as_str),
        since: params.since,
        at: params.at,
        before_seq: params.before_seq,
        count: params.count,
    };
    let (mut entries, next_cursor) = store.history(&query).await?;
    if reach != Reach::All {
        let mut kept = Vec::with_capacity(entries.len());
        for e in entries {
            let inside = match &e.content {
                Some(c) => crate::access::reaches_pooled(store.pool(), &reach, &e.resource_type, &e.id, c, base).await?,
                None => true,
            };
            if inside {
                kept.push(e);
            }
        }
        entries = kept;
    }
    if let (Some(rt), Some(id)) = (resource_type, id) {
        if entries.is_empty() && params.before_seq.is_none() && store.read(rt.as_str(), id.as_str()).await?.is_none() {
            return Err(FhirError::NotFound(format!("{rt}/{id} is not known")));
        }
    }
    let total = store.history_total(&query).await?;
    Ok(HistoryPage { entries, next_cursor, total })
}
