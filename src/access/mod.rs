//! May they: confinement of `patient/` scopes to the patient's compartment, as the official
//! Patient CompartmentDefinition defines it, and of role-bound `user/` scopes to the role's
//! organisation subtree (ARCHITECTURE.md "access/").
//!
//! A principal's [`Reach`] for a type says whether an interaction is confined; this module
//! turns a confinement into SQL (a membership clause added to every search, chained and
//! `_has` criteria included, so paging and totals never count what the token cannot see) and
//! into a check of one resource's content (read, vread, history entries, includes, writes).
//! [`roles`] holds role templates and delegation, [`mask`] the element masking of templates.

pub mod consent;
pub mod mask;
pub mod organization;
pub mod roles;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use sqlx::PgConnection;

use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::definitions;
use crate::search::{self, Clause, ClauseKind, Criteria};

/// The provider directory and the schedules in it: what a patient needs to find care (who
/// works where, which services and open slots there are). `patient/` scopes read and search
/// these everywhere — they hold no patient's data — with the staff's private elements masked
/// ([`mask::patient_directory`]); they never write them.
pub const DIRECTORY_TYPES: [&str; 8] =
    ["Organization", "Location", "HealthcareService", "Practitioner", "PractitionerRole", "Endpoint", "Schedule", "Slot"];

/// Whether `resource_type` is one of the [`DIRECTORY_TYPES`].
pub fn is_directory_type(resource_type: &str) -> bool {
    DIRECTORY_TYPES.contains(&resource_type)
}

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
    // Asked on every confined request and every audited read: the CompartmentDefinitions are
    // fixed, so each compartment's members are collected once.
    type Members = HashMap<String, Vec<String>>;
    static CACHE: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Arc<Members>>>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let cached = cache.lock().ok().and_then(|m| m.get(compartment).cloned());
    let members = match cached {
        Some(members) => members,
        None => {
            let mut members = Members::new();
            for (code, params) in definitions().compartment_members(compartment) {
                members.entry(code).or_default().extend(params.into_iter().filter(|p| p != "{def}"));
            }
            // R4's Patient compartment leaves Task out; a patient's reach covers the Tasks for
            // them (`Task.for`, parameter `patient`), so they can ask for a refill and follow it.
            if compartment == "Patient" {
                members.entry("Task".into()).or_default().push("patient".into());
                // A patient's app owns its Subscriptions (the server's `owner` parameter).
                members.entry("Subscription".into()).or_default().push("owner".into());
            }
            let members = Arc::new(members);
            if let Ok(mut m) = cache.lock() {
                m.insert(compartment.to_owned(), members.clone());
            }
            members
        }
    };
    members.get(resource_type).cloned().unwrap_or_default()
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

/// For a directory type in the Patient compartment (a Schedule), the clauses "no Patient is
/// referenced at any compartment parameter": what every patient may read of it.
fn no_patient_clause(resource_type: &str, base: &str) -> Option<Vec<Clause>> {
    if !is_directory_type(resource_type) {
        return None;
    }
    let rt = crate::fhir::types::ResourceType::parse(resource_type).ok()?;
    let clauses: Vec<Clause> = patient_compartment_params(resource_type)
        .into_iter()
        .map(|param| Clause {
            kind: ClauseKind::ReferencePrefix {
                paths: search::reference_paths(&rt, &param, base).unwrap_or_default(),
                prefixes: vec!["Patient/".into(), format!("{base}/Patient/")],
            },
            name: param,
            negate: true,
        })
        .collect();
    (!clauses.is_empty()).then_some(clauses)
}

/// Whether a directory resource in the Patient compartment names no patient (content check
/// of [`no_patient_clause`]).
fn names_no_patient(resource_type: &str, content: &Value, base: &str) -> bool {
    is_directory_type(resource_type)
        && crate::index::references_at(resource_type, content, base, &patient_compartment_params(resource_type))
            .iter()
            .all(|r| !r.starts_with("Patient/"))
}

/// A clause that matches nothing.
pub fn nothing() -> Clause {
    Clause { name: "_id".into(), kind: ClauseKind::Id(vec![]), negate: false }
}

/// Confines a search to what the principal may search: for every type the criteria touch (the
/// searched type, chain targets, `_has` sources) a membership clause of its reach is added
/// (patient compartment, organisation subtree, granular scopes). A masked role may not search
/// by what it cannot see (400). Every search, conditional match and picker goes through here.
pub fn confine(criteria: &mut Criteria, principal: &Principal, base: &str) -> FhirResult<()> {
    if let Some(mask) = principal.mask() {
        mask::check_criteria(criteria, &mask)?;
    }
    confine_unchecked(criteria, principal, base);
    Ok(())
}

fn confine_unchecked(criteria: &mut Criteria, principal: &Principal, base: &str) {
    for clause in &mut criteria.clauses {
        match &mut clause.kind {
            ClauseKind::Chain { targets, .. } => targets.iter_mut().for_each(|t| confine_unchecked(t, principal, base)),
            ClauseKind::Has { source, .. } => confine_unchecked(source, principal, base),
            _ => {}
        }
    }
    match principal.access(criteria.resource_type.as_str(), Interaction::Search) {
        Some(Reach::Patient(patient)) => {
            let member = compartment_clause("Patient", &patient, criteria.resource_type.as_str(), base).unwrap_or_else(nothing);
            let member = match no_patient_clause(criteria.resource_type.as_str(), base) {
                // A directory Schedule: the patient's own, or one that names no patient.
                Some(public) => Clause {
                    name: "_reach".into(),
                    kind: ClauseKind::AnyOf(vec![
                        Criteria { resource_type: criteria.resource_type.clone(), clauses: vec![member] },
                        Criteria { resource_type: criteria.resource_type.clone(), clauses: public },
                    ]),
                    negate: false,
                },
                None => member,
            };
            criteria.clauses.push(member);
        }
        Some(Reach::Organization(scope)) => {
            criteria.clauses.push(Clause { name: "_organization".into(), kind: ClauseKind::Member(scope), negate: false });
        }
        _ => {}
    }
    if let Some(filters) = principal.filters(criteria.resource_type.as_str(), Interaction::Search) {
        criteria.clauses.push(filter_clause(&criteria.resource_type, &filters, base));
    }
}

/// The clause "matches one of the granular scopes' queries" (a query that does not parse
/// matches nothing).
fn filter_clause(resource_type: &crate::fhir::types::ResourceType, filters: &[String], base: &str) -> Clause {
    let alternatives = filters.iter().filter_map(|f| search::parse_conditional(resource_type, f, base).ok()).collect();
    Clause { name: "_scope".into(), kind: ClauseKind::AnyOf(alternatives), negate: false }
}

/// Whether the current version of `resource_type/id` matches the principal's granular scopes
/// for `interaction` (true when no granular scope confines it).
pub async fn matches_filters(
    conn: &mut PgConnection,
    principal: &Principal,
    resource_type: &str,
    id: &str,
    interaction: Interaction,
    base: &str,
) -> FhirResult<bool> {
    let Some(filters) = principal.filters(resource_type, interaction) else { return Ok(true) };
    let rt = crate::fhir::types::ResourceType::parse(resource_type)?;
    let criteria = Criteria {
        clauses: vec![
            Clause { name: "_id".into(), kind: ClauseKind::Id(vec![id.to_owned()]), negate: false },
            filter_clause(&rt, &filters, base),
        ],
        resource_type: rt,
    };
    Ok(!search::matching_ids(conn, &criteria, 1).await?.is_empty())
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

/// Whether the reach covers a resource with this content, when that can be decided without
/// the database (everything but organisation subtrees).
fn reaches_locally(reach: &Reach, resource_type: &str, id: &str, content: &Value, base: &str) -> Option<bool> {
    match reach {
        Reach::All => Some(true),
        Reach::Patient(patient) => {
            Some(in_patient_compartment(resource_type, id, content, patient, base) || names_no_patient(resource_type, content, base))
        }
        Reach::Organization(_) => None,
    }
}

/// Whether the reach covers a resource with this content (an organisation subtree may read
/// the reference index, on `conn`).
pub async fn reaches(conn: &mut PgConnection, reach: &Reach, resource_type: &str, id: &str, content: &Value, base: &str) -> FhirResult<bool> {
    match (reaches_locally(reach, resource_type, id, content, base), reach) {
        (Some(known), _) => Ok(known),
        (None, Reach::Organization(scope)) => scope.contains(conn, resource_type, id, content, base).await,
        (None, _) => Ok(false),
    }
}

/// [`reaches`] taking a connection from the pool only when the reach needs one.
pub async fn reaches_pooled(pool: &sqlx::PgPool, reach: &Reach, resource_type: &str, id: &str, content: &Value, base: &str) -> FhirResult<bool> {
    match reaches_locally(reach, resource_type, id, content, base) {
        Some(known) => Ok(known),
        None => reaches(&mut *pool.acquire().await?, reach, resource_type, id, content, base).await,
    }
}

/// Whether the principal's `interaction` on `resource_type` must be decided resource by resource
/// ([`visible`], [`authorize_write`]): its reach is confined, a role's rules or mask apply, or a
/// granular scope filters it. Otherwise the write needs no look at the stored version.
pub fn checks_each_resource(principal: &Principal, reach: &Reach, resource_type: &str, interaction: Interaction) -> bool {
    *reach != Reach::All || principal.acting.is_some() || principal.filters(resource_type, interaction).is_some()
}

/// Whether the current version of `resource_type/id` (`content`, `None` when deleted or never
/// written) exists for the principal's `interaction`: within its reach and its granular
/// scopes. A confined principal cannot tell a deleted resource from an unknown one (there is
/// no content to decide by), so for it `None` is not visible. Every write path asks this
/// before it acts, so out of reach answers exactly like does not exist.
pub async fn visible(
    conn: &mut PgConnection,
    principal: &Principal,
    interaction: Interaction,
    resource_type: &str,
    id: &str,
    content: Option<&Value>,
    base: &str,
) -> FhirResult<bool> {
    let Some(reach) = principal.access(resource_type, interaction) else { return Ok(false) };
    if reach == Reach::All && principal.filters(resource_type, interaction).is_none() {
        return Ok(true);
    }
    let Some(content) = content else { return Ok(false) };
    if !reaches(&mut *conn, &reach, resource_type, id, content, base).await? {
        return Ok(false);
    }
    matches_filters(conn, principal, resource_type, id, interaction, base).await
}

/// Checks a write (create, update, patch, delete; in Bundles too) before it happens, inside
/// its transaction: [`prepare_write`], then [`check_write_reach`].
#[allow(clippy::too_many_arguments)]
pub async fn authorize_write(
    conn: &mut PgConnection,
    principal: &Principal,
    reach: &Reach,
    resource_type: &str,
    id: &str,
    old: Option<&Value>,
    mut new: Option<&mut Value>,
    base: &str,
) -> FhirResult<()> {
    prepare_write(conn, principal, resource_type, id, old, new.as_deref_mut()).await?;
    check_write_reach(conn, reach, resource_type, id, old, new.as_deref(), base).await
}

/// What a role-bound principal's write must go through before the content is final: a masked
/// role keeps the elements it cannot see, and a PractitionerRole write keeps to the delegation
/// rules (403 otherwise, audited by the caller; the creator is recorded in `new`).
pub async fn prepare_write(
    conn: &mut PgConnection,
    principal: &Principal,
    resource_type: &str,
    id: &str,
    old: Option<&Value>,
    mut new: Option<&mut Value>,
) -> FhirResult<()> {
    // A Subscription is its writer's: the owner decides who reaches it (below, and the
    // compartment and subtree rules), so it is stamped before reach is checked.
    if resource_type == "Subscription"
        && let Some(new) = new.as_deref_mut()
    {
        crate::events::subscriptions::stamp_owner(principal, new);
    }
    let Some(acting) = &principal.acting else { return Ok(()) };
    if organization::SERVER_DEFINITION_TYPES.contains(&resource_type) {
        return Err(FhirError::Forbidden(format!(
            "{resource_type} is a shared definition with server-wide effect: only operators and backend services write it, not a token bound to a role"
        )));
    }
    if let Some(new) = new.as_deref_mut() {
        mask::restore(new, old, &acting.mask);
    }
    if resource_type == "PractitionerRole"
        && let Err(refused) = roles::check_delegation(conn, acting, id, old, new).await
    {
        // The 403 is audited where every refusal is (rest::route).
        return Err(refused.error.unwrap_or_else(|| FhirError::Forbidden(format!("escalation refused: {}", refused.reason))));
    }
    Ok(())
}

/// 403 unless the version replaced (`old`) and the one written (`new`) are both within the
/// reach: the client chose the content, so this is no secret.
pub async fn check_write_reach(
    conn: &mut PgConnection,
    reach: &Reach,
    resource_type: &str,
    id: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    base: &str,
) -> FhirResult<()> {
    if let (Reach::Organization(scope), "Organization", Some(new)) = (reach, resource_type, new) {
        // The tree itself: an organisation is placed (partOf) only inside the subtree, and the
        // role's own organisation stays where it is — a role cannot move data under another
        // organisation nor its own organisation out from under its parents.
        let part_of = |c: &Value| c.get("partOf").and_then(|p| p.get("reference")).and_then(Value::as_str).map(str::to_owned);
        let placed = if scope.organizations.first().is_some_and(|own| own == id) {
            old.map(part_of) == Some(part_of(new))
        } else {
            part_of(new).and_then(|p| p.strip_prefix("Organization/").map(str::to_owned)).is_some_and(|p| scope.organizations.contains(&p))
        };
        if !placed {
            return Err(FhirError::Forbidden("an organisation can only be placed inside the acting role's organisation subtree".into()));
        }
    }
    // A new Practitioner belongs to no organisation until a PractitionerRole names it, and
    // onboarding staff starts with creating one.
    let new = new.filter(|_| !(resource_type == "Practitioner" && old.is_none() && matches!(reach, Reach::Organization(_))));
    for content in [old, new].into_iter().flatten() {
        if !reaches(conn, reach, resource_type, id, content, base).await? {
            return Err(FhirError::Forbidden(match reach {
                Reach::Patient(_) => format!("the access token is limited to its patient's compartment, and this {resource_type} is not in it"),
                _ => format!("the access token's role is limited to its organisation subtree, and this {resource_type} is not in it"),
            }));
        }
    }
    Ok(())
}

/// The roles tokens are bound to, as they act now (effective grant, mask, organisation
/// subtree), briefly cached: a token bound to a role is worth at most what the role and its
/// creators grant now, so narrowing or ending a role takes effect on the next request (at
/// once on this instance — writes to PractitionerRole and Organization clear the cache — and
/// within [`ROLE_GRANT_TTL`] on others).
#[derive(Default)]
pub struct RoleGrants {
    roles: Fresh<Option<Arc<roles::ActingRole>>>,
    /// `role|patient` → whether the patient belongs to the role's subtree.
    patients: Fresh<bool>,
}

/// How long a role is reused before it is read again.
pub const ROLE_GRANT_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers kept for [`ROLE_GRANT_TTL`] (at most 10,000; all forgotten beyond that).
struct Fresh<V>(std::sync::RwLock<HashMap<String, (V, std::time::Instant)>>);

impl<V> Default for Fresh<V> {
    fn default() -> Self {
        Fresh(Default::default())
    }
}

impl<V: Clone> Fresh<V> {
    fn get(&self, key: &str) -> Option<V> {
        let map = self.0.read().ok()?;
        map.get(key).filter(|(_, at)| at.elapsed() < ROLE_GRANT_TTL).map(|(v, _)| v.clone())
    }

    fn put(&self, key: String, value: V) {
        if let Ok(mut map) = self.0.write() {
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(key, (value, std::time::Instant::now()));
        }
    }

    fn clear(&self) {
        if let Ok(mut map) = self.0.write() {
            map.clear();
        }
    }
}

impl RoleGrants {
    /// Forgets every cached role (after a write to PractitionerRole or Organization).
    pub fn clear(&self) {
        self.roles.clear();
        self.patients.clear();
    }

    /// Whether the patient in a role-bound token's context belongs to the role's subtree,
    /// cached like the role itself.
    async fn patient_within(&self, store: &crate::store::Store, role: &str, scope: &Arc<organization::OrgScope>, patient: &str) -> FhirResult<bool> {
        let key = format!("{role}|{patient}");
        if let Some(within) = self.patients.get(&key) {
            return Ok(within);
        }
        let within = patient_in_scope(&mut *store.pool().acquire().await?, scope, patient).await?;
        self.patients.put(key, within);
        Ok(within)
    }

    async fn acting(&self, store: &crate::store::Store, role: &str) -> FhirResult<Option<Arc<roles::ActingRole>>> {
        if let Some(acting) = self.roles.get(role) {
            return Ok(acting);
        }
        let mut conn = store.pool().acquire().await?;
        let acting = roles::acting_role(&mut conn, role).await?.map(Arc::new);
        self.roles.put(role.to_owned(), acting.clone());
        Ok(acting)
    }
}

/// The principal as its role allows it now: the token's scopes narrowed to the effective grant
/// of the PractitionerRole it is bound to (401 when the role or one of its creators has
/// ended), confined to the role's organisation subtree and masked as its template says.
/// Tokens without a role (operators, backend services, patients) are returned as they are.
pub async fn with_current_role(
    store: &crate::store::Store,
    grants: &RoleGrants,
    principal: std::sync::Arc<Principal>,
) -> FhirResult<std::sync::Arc<Principal>> {
    let Some(role) = principal.role.as_deref().filter(|r| r.starts_with("PractitionerRole/")) else { return Ok(principal) };
    let Some(acting) = grants.acting(store, role).await? else {
        return Err(FhirError::Unauthorized("invalid access token: its role has ended".into()));
    };
    let token_scopes: Vec<String> = principal.scopes.iter().map(|s| s.to_v2()).collect();
    let narrowed = crate::oauth::authorize::narrow_to_grant(&token_scopes.join(" "), &acting.grant);
    let mut effective = (*principal).clone();
    effective.scopes = crate::auth::parse_scopes(&narrowed.join(" "));
    // Patient context is reach too: a role's `patient/` scopes reach the patient's compartment
    // only while the patient belongs to the role's organisation subtree (a patient moved
    // elsewhere, or a context minted around the checks, leaves the token no patient at all).
    if let Some(patient) = effective.patient.clone()
        && effective.scopes.iter().any(|s| s.context == crate::auth::ScopeContext::Patient)
        && !grants.patient_within(store, role, &acting.scope, &patient).await?
    {
        effective.patient = None;
    }
    effective.acting = Some(acting);
    Ok(std::sync::Arc::new(effective))
}

/// Whether the Patient `id` exists and belongs to the organisation subtree `scope` (SQL over
/// the reference index: the same rules as every confined search).
pub async fn patient_in_scope(conn: &mut PgConnection, scope: &Arc<organization::OrgScope>, id: &str) -> FhirResult<bool> {
    let criteria = Criteria {
        resource_type: crate::fhir::types::ResourceType::parse("Patient")?,
        clauses: vec![
            Clause { name: "_id".into(), kind: ClauseKind::Id(vec![id.to_owned()]), negate: false },
            Clause { name: "_organization".into(), kind: ClauseKind::Member(scope.clone()), negate: false },
        ],
    };
    Ok(!search::matching_ids(conn, &criteria, 1).await?.is_empty())
}
