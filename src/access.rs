//! May they: confinement of `patient/` scopes to the patient's compartment, as the official
//! Patient CompartmentDefinition defines it (ARCHITECTURE.md "access/").
//!
//! A principal's [`Reach`] for a type says whether an interaction is confined; this module
//! turns a confinement into SQL (a membership clause added to every search, chained and
//! `_has` criteria included, so paging and totals never count what the token cannot see) and
//! into a check of one resource's content (read, vread, history entries, includes, writes).

use serde_json::Value;

use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::definitions;
use crate::search::{self, Clause, ClauseKind, Criteria};

/// Whether resources of `resource_type` can be in a Patient compartment (Patient itself is).
pub fn in_patient_compartment_type(resource_type: &str) -> bool {
    resource_type == "Patient" || !patient_compartment_params(resource_type).is_empty()
}

/// The parameters that put a resource of `resource_type` in a patient's compartment (without
/// Patient's own `{def}` marker).
pub fn patient_compartment_params(resource_type: &str) -> Vec<String> {
    compartment_params("Patient", resource_type)
}

fn compartment_params(compartment: &str, resource_type: &str) -> Vec<String> {
    definitions()
        .compartment_members(compartment)
        .into_iter()
        .filter(|(code, _)| code == resource_type)
        .flat_map(|(_, params)| params)
        .filter(|p| p != "{def}")
        .collect()
}

/// The search clause "member of `compartment`/`id`'s compartment" for `resource_type`, or
/// `None` when the type cannot be a member (then nothing matches).
pub fn compartment_clause(compartment: &str, id: &str, resource_type: &str, base: &str) -> Option<Clause> {
    if resource_type == compartment {
        // The compartment's own resource is its only member of that type.
        return Some(Clause { name: "_id".into(), kind: ClauseKind::Id(vec![id.to_owned()]), negate: false });
    }
    let params = compartment_params(compartment, resource_type);
    if params.is_empty() {
        return None;
    }
    let rt = crate::fhir::types::ResourceType::parse(resource_type).ok()?;
    let paths = params.iter().flat_map(|p| search::reference_paths(&rt, p, base).unwrap_or_default()).collect();
    let values = vec![format!("{compartment}/{id}"), format!("{base}/{compartment}/{id}")];
    Some(Clause { name: compartment.to_owned(), kind: ClauseKind::InCompartment { params, paths, values }, negate: false })
}

/// A clause that matches nothing.
pub fn nothing() -> Clause {
    Clause { name: "_id".into(), kind: ClauseKind::Id(vec![]), negate: false }
}

/// Confines a search to what the principal may search: for every type the criteria touch (the
/// searched type, chain targets, `_has` sources) whose reach is a patient's compartment, a
/// membership clause is added.
pub fn confine(criteria: &mut Criteria, principal: &Principal, base: &str) {
    for clause in &mut criteria.clauses {
        match &mut clause.kind {
            ClauseKind::Chain { targets, .. } => targets.iter_mut().for_each(|t| confine(t, principal, base)),
            ClauseKind::Has { source, .. } => confine(source, principal, base),
            _ => {}
        }
    }
    if let Some(Reach::Patient(patient)) = principal.access(criteria.resource_type.as_str(), Interaction::Search) {
        let member = compartment_clause("Patient", &patient, criteria.resource_type.as_str(), base).unwrap_or_else(nothing);
        criteria.clauses.push(member);
    }
}

/// Whether a resource (its content) is in `patient`'s compartment.
pub fn in_patient_compartment(resource_type: &str, id: &str, content: &Value, patient: &str, base: &str) -> bool {
    if resource_type == "Patient" {
        return id == patient;
    }
    let params = patient_compartment_params(resource_type);
    if params.is_empty() {
        return false;
    }
    let want = format!("Patient/{patient}");
    crate::index::references_at(resource_type, content, base, &params).iter().any(|r| *r == want)
}

/// Whether the reach covers a resource with this content.
pub fn reaches(reach: &Reach, resource_type: &str, id: &str, content: &Value, base: &str) -> bool {
    match reach {
        Reach::All => true,
        Reach::Patient(patient) => in_patient_compartment(resource_type, id, content, patient, base),
    }
}

/// Fails unless the reach covers the resource: 404 for reads (a resource outside the grant is
/// not acknowledged to exist), 403 for writes (the client chose the content).
pub fn check_read(reach: &Reach, resource_type: &str, id: &str, content: &Value, base: &str) -> FhirResult<()> {
    if reaches(reach, resource_type, id, content, base) {
        Ok(())
    } else {
        Err(FhirError::NotFound(format!("{resource_type}/{} is not known", crate::fhir::types::sanitize(id))))
    }
}

/// Fails with 403 unless the reach covers the resource as it would be written.
pub fn check_write(reach: &Reach, resource_type: &str, id: &str, content: &Value, base: &str) -> FhirResult<()> {
    if reaches(reach, resource_type, id, content, base) {
        Ok(())
    } else {
        Err(FhirError::Forbidden(format!(
            "the access token is limited to its patient's compartment, and this {resource_type} is not in it"
        )))
    }
}

/// The current grants of PractitionerRoles, briefly cached: a token bound to a role is worth at
/// most what the role grants now, so narrowing or ending a role takes effect on the next
/// request (at once on this instance — writes to PractitionerRole clear the cache — and within
/// [`ROLE_GRANT_TTL`] on others).
#[derive(Default)]
pub struct RoleGrants {
    cache: std::sync::RwLock<std::collections::HashMap<String, (Option<String>, std::time::Instant)>>,
}

/// How long a role's grant is reused before it is read again.
pub const ROLE_GRANT_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl RoleGrants {
    /// Forgets every cached grant (after a write to PractitionerRole).
    pub fn clear(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
    }

    async fn grant(&self, state: &crate::rest::AppState, role: &str) -> FhirResult<Option<String>> {
        if let Ok(c) = self.cache.read()
            && let Some((grant, at)) = c.get(role)
            && at.elapsed() < ROLE_GRANT_TTL
        {
            return Ok(grant.clone());
        }
        let grant = crate::oauth::authorize::role_grant(state, role).await?;
        if let Ok(mut c) = self.cache.write() {
            if c.len() > 10_000 {
                c.clear();
            }
            c.insert(role.to_owned(), (grant.clone(), std::time::Instant::now()));
        }
        Ok(grant)
    }
}

/// The principal as its role allows it now: the token's scopes narrowed to the current grant
/// of the PractitionerRole it is bound to (401 when the role has ended). Tokens without a role
/// (operators, backend services, patients) are returned as they are.
pub async fn with_current_role(
    state: &crate::rest::AppState,
    principal: std::sync::Arc<Principal>,
) -> FhirResult<std::sync::Arc<Principal>> {
    let Some(role) = principal.role.as_deref().filter(|r| r.starts_with("PractitionerRole/")) else { return Ok(principal) };
    let Some(grant) = state.role_grants.grant(state, role).await? else {
        return Err(FhirError::Unauthorized("invalid access token: its role has ended".into()));
    };
    let token_scopes: Vec<String> = principal.scopes.iter().map(|s| s.to_v2()).collect();
    let narrowed = crate::oauth::authorize::narrow_to_grant(&token_scopes.join(" "), &grant);
    let mut effective = (*principal).clone();
    effective.scopes = crate::auth::parse_scopes(&narrowed.join(" "));
    Ok(std::sync::Arc::new(effective))
}
