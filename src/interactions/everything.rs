//! Patient `$everything` — https://hl7.org/fhir/R4/patient-operation-everything.html
//!
//! The patient, every resource in the patient's compartment as the official Patient
//! CompartmentDefinition defines it (a resource of a listed type whose any listed parameter
//! references `Patient/{id}`), and the resources the patient itself references
//! (`generalPractitioner`, `managingOrganization`) as `search.mode = include`. One query over
//! the union of those criteria, ordered by type then id, paged by offset. `start`/`end` are
//! accepted and ignored (no clinical-date filtering).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::history::parse_instant;
use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::definitions;
use crate::fhir::types::{Id, ResourceType, sanitize};
use crate::search::params::{DEFAULT_COUNT, MAX_COUNT};
use crate::search::{self, Clause, ClauseKind, Criteria};
use crate::store::{Store, StoredResource};

/// `_since`, `_type`, `_count` and the paging offset (`start`/`end` are ignored).
#[derive(Debug, Clone)]
pub struct EverythingParams {
    pub since: Option<DateTime<Utc>>,
    /// `_type` as given (validated type names), `None` for all types.
    pub types: Option<Vec<String>>,
    pub count: usize,
    pub offset: usize,
}

impl EverythingParams {
    /// Parses the operation's parameters; malformed values are 400.
    pub fn parse(pairs: &[(String, String)]) -> FhirResult<Self> {
        let mut p = EverythingParams { since: None, types: None, count: DEFAULT_COUNT, offset: 0 };
        for (k, v) in pairs {
            match k.as_str() {
                "_since" => p.since = Some(parse_instant(k, v)?),
                "_type" => {
                    let list = p.types.get_or_insert_with(Vec::new);
                    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if !definitions().is_resource_type(t) {
                            return Err(FhirError::BadRequest(format!("_type: '{}' is not a resource type", sanitize(t))));
                        }
                        if !list.iter().any(|x| x == t) {
                            list.push(t.to_owned());
                        }
                    }
                }
                "_count" => {
                    p.count = v
                        .parse::<usize>()
                        .map_err(|_| FhirError::BadRequest("_count must be a non-negative integer".into()))?
                        .min(MAX_COUNT)
                }
                "_offset" => {
                    p.offset = crate::search::params::parse_offset(v).map_err(|why| FhirError::BadRequest(format!("_offset {why}")))?
                }
                _ => {}
            }
        }
        Ok(p)
    }

    /// Whether `_type` (or its absence) includes the type. The audit trail's AuditEvents
    /// (one per access, the `$everything` call's own included) only when `_type` names them.
    fn wants(&self, resource_type: &str) -> bool {
        match &self.types {
            Some(t) => t.iter().any(|x| x == resource_type),
            None => resource_type != "AuditEvent",
        }
    }
}

/// One page of `$everything`: entries with `true` for `search.mode = include`, and the total.
pub struct EverythingPage {
    pub entries: Vec<(StoredResource, bool)>,
    pub total: i64,
}

/// Runs `Patient/{id}/$everything`: 403 without read access to the Patient, 404 unknown,
/// 410 deleted. Types the principal may not search are left out.
pub async fn everything(store: &Store, principal: &Principal, id: &Id, params: &EverythingParams, base: &str) -> FhirResult<EverythingPage> {
    let patient_type = ResourceType::parse("Patient")?;
    let patient = super::read::read(store, principal, &patient_type, id, base).await?;
    let reference = format!("Patient/{id}");
    // A type is included when the principal reaches this patient's resources of it: every
    // resource, or (patient/ scopes) the compartment of this very patient.
    let reaches = |t: &str| match principal.access(t, Interaction::Search) {
        Some(Reach::All) => true,
        Some(Reach::Patient(p)) => p == id.as_str(),
        // Confined below, like any search.
        Some(Reach::Organization(_)) => true,
        None => false,
    };
    let by_id = |rt: ResourceType, id: &str| Criteria {
        resource_type: rt,
        clauses: vec![Clause { name: "_id".into(), kind: ClauseKind::Id(vec![id.to_owned()]), negate: false }],
    };

    let mut parts = vec![];
    if params.wants("Patient") {
        parts.push(by_id(patient_type.clone(), id.as_str()));
    }
    // The compartment members: one criteria per (type, param); the union ORs them.
    let compartment = definitions().compartment_members("Patient");
    if compartment.is_empty() {
        return Err(FhirError::Internal("the Patient CompartmentDefinition is missing".into()));
    }
    for (code, compartment_params) in &compartment {
        let code = code.as_str();
        if !params.wants(code) || !reaches(code) {
            continue;
        }
        let Ok(rt) = ResourceType::parse(code) else { continue };
        for param in compartment_params {
            let request = search::parse_search(&rt, &[(param.clone(), reference.clone())], false, base)?;
            if request.criteria.clauses.len() == 1 {
                parts.push(request.criteria);
            } else {
                tracing::debug!(resource_type = code, param, "compartment parameter not supported by the search engine");
            }
        }
    }
    // What the patient references itself: its general practitioners and managing organization.
    let mut included: HashSet<(String, String)> = HashSet::new();
    if let Some(content) = &patient.content {
        let refs = content
            .get("generalPractitioner")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(content.get("managingOrganization"))
            .filter_map(|r| r.get("reference").and_then(Value::as_str));
        for r in refs {
            let local = crate::fhir::types::local_reference(r, base);
            let Some((t, rid)) = local.split_once('/') else { continue };
            if !params.wants(t) || !reaches(t) || !Id::is_valid(rid) {
                continue;
            }
            let Ok(rt) = ResourceType::parse(t) else { continue };
            if included.insert((t.to_owned(), rid.to_owned())) {
                parts.push(by_id(rt, rid));
            }
        }
    }

    // Confined like any search; a membership that only an element the role may not see
    // establishes (a masked reference) is left out rather than used.
    parts.retain_mut(|part| crate::access::confine(part, principal, base).is_ok());
    let (found, total) = search::execute_union(store.pool(), &parts, params.since, params.count, params.offset).await?;
    let entries = found
        .into_iter()
        .map(|r| {
            let include = included.contains(&(r.resource_type.clone(), r.id.clone()));
            (r, include)
        })
        .collect();
    Ok(EverythingPage { entries, total })
}
