//! update, update-as-create and conditional update — https://hl7.org/fhir/R4/http.html#update, #cond-update

use serde_json::Value;

use super::{WriteOutcome, check_body, now, stamp};
use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::search;
use crate::store::{self, Store, StoredResource, Tx};

/// `If-Match: W/"3"` parsed to a version number; anything else never matches (412).
pub fn parse_if_match(header: &str) -> Option<i64> {
    let v = header.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.trim_matches('"').parse().ok()
}

/// Replaces `rt/id` with `body`, or creates it with that id when it does not exist (or was deleted).
pub async fn update(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    id: &Id,
    body: Value,
    if_match: Option<&str>,
    base: &str,
) -> FhirResult<WriteOutcome> {
    let reach = principal.require(resource_type.as_str(), Interaction::Update)?;
    check_body(resource_type, &body, Some(id))?;
    // A confined principal's update must look at the current version first (put_version).
    if if_match.is_none()
        && !super::rules::has_rules(resource_type.as_str())
        && !crate::access::checks_each_resource(principal, &reach, resource_type.as_str(), Interaction::Update)
        && principal.access(resource_type.as_str(), Interaction::Create) == Some(Reach::All)
    {
        return upsert_fast(store, resource_type, id, body, base).await;
    }
    let body = &body;
    store
        .with_transaction(move |mut tx| {
            Box::pin(async move {
                let result = put_version(&mut tx, principal, resource_type, id, body.clone(), if_match, "PUT", false, base).await;
                (tx, result)
            })
        })
        .await
}

/// Conditional update: the search `criteria` picks the resource to replace (none → create,
/// one → update, several → 412). `base` is the server's FHIR base URL.
pub async fn conditional_update(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    criteria: &str,
    body: Value,
    if_match: Option<&str>,
    base: &str,
) -> FhirResult<WriteOutcome> {
    let _ = principal.require(resource_type.as_str(), Interaction::Update)?;
    let _ = principal.require(resource_type.as_str(), Interaction::Search)?;
    let mut criteria = search::parse_conditional(resource_type, criteria, base)?;
    crate::access::confine(&mut criteria, principal, base)?;
    check_body(resource_type, &body, None)?;
    let body_id = match body.get("id") {
        Some(Value::String(s)) => Some(Id::parse(s)?),
        Some(_) => return Err(FhirError::BadRequest("id must be a string".into())),
        None => None,
    };
    let (body, criteria, body_id) = (&body, &criteria, &body_id);
    store
        .with_transaction(move |mut tx| {
            Box::pin(async move {
                let result = conditional_update_in(&mut tx, principal, resource_type, criteria, body, body_id.as_ref(), if_match, base).await;
                (tx, result)
            })
        })
        .await
}

async fn conditional_update_in(
    tx: &mut Tx,
    principal: &Principal,
    resource_type: &ResourceType,
    criteria: &search::Criteria,
    body: &Value,
    body_id: Option<&Id>,
    if_match: Option<&str>,
    base: &str,
) -> FhirResult<WriteOutcome> {
    let rt = resource_type.as_str();
    store::lock_criteria(tx, &format!("{rt}?{}", criteria.canonical())).await?;
    let matches = search::matching_ids(tx, criteria, 2).await?;
    let (id, fresh) = match (matches.as_slice(), body_id) {
        ([], Some(id)) => (id.clone(), false),
        ([], None) => (Id::generate(), true),
        ([one], Some(id)) if one != id.as_str() => {
            return Err(FhirError::BadRequest("the id in the body differs from the resource the criteria matched".into()));
        }
        ([one], _) => (Id::parse(one)?, false),
        _ => return Err(FhirError::PreconditionFailed("the criteria matched more than one resource".into())),
    };
    put_version(tx, principal, resource_type, &id, body.clone(), if_match, "PUT", fresh, base).await
}

/// The common update: no If-Match and the right to create, so a single statement can write
/// whatever version comes next.
async fn upsert_fast(store: &Store, resource_type: &ResourceType, id: &Id, mut body: Value, base: &str) -> FhirResult<WriteOutcome> {
    let last_updated = now();
    stamp(&mut body, id.as_str(), 1, &last_updated);
    let (version_id, created) = store::upsert_one(store, resource_type.as_str(), id.as_str(), last_updated, "PUT", &body, base).await?;
    if version_id != 1 {
        stamp(&mut body, id.as_str(), version_id, &last_updated);
    }
    Ok(WriteOutcome {
        stored: StoredResource::written(resource_type.as_str(), id.as_str(), version_id, last_updated, body),
        created,
    })
}

/// Writes the next version of `rt/id` inside a transaction, honouring `If-Match`.
///
/// For a confined principal (patient compartment, organisation subtree, granular scopes) a
/// resource outside its reach does not exist: 404, the same answer as for an id that was never
/// used — so such a principal cannot create at an id of its choosing (`server_chose_id` is
/// true for the fresh id of a conditional update that matched nothing), and a deleted or
/// dangling id cannot be re-created by someone it never belonged to.
#[allow(clippy::too_many_arguments)]
pub async fn put_version(
    tx: &mut Tx,
    principal: &Principal,
    resource_type: &ResourceType,
    id: &Id,
    mut body: Value,
    if_match: Option<&str>,
    method: &str,
    server_chose_id: bool,
    base: &str,
) -> FhirResult<WriteOutcome> {
    let rt = resource_type.as_str();
    let current = store::lock_current(tx, rt, id.as_str()).await?;
    let reach = principal.require(rt, Interaction::Update)?;
    // The version replaced: the access checks and the workflow rules both judge it (read once).
    let checks = crate::access::checks_each_resource(principal, &reach, rt, Interaction::Update);
    let old = if checks || super::rules::has_rules(rt) { store::current_content(tx, rt, id.as_str()).await? } else { None };
    if checks {
        if !server_chose_id && !crate::access::visible(tx, principal, Interaction::Update, rt, id.as_str(), old.as_ref(), base).await? {
            return Err(FhirError::NotFound(format!("{rt}/{id} is not known")));
        }
        // Both the version replaced and the one written must be within reach (and a role's
        // delegation rules and mask apply).
        crate::access::authorize_write(tx, principal, &reach, rt, id.as_str(), old.as_ref(), Some(&mut body), base).await?;
    }
    if let Some(expected) = if_match {
        let current_version = current.filter(|(_, deleted)| !deleted).map(|(v, _)| v);
        if parse_if_match(expected).is_none() || current_version != parse_if_match(expected) {
            return Err(FhirError::PreconditionFailed(format!(
                "If-Match does not match the current version of {rt}/{id}"
            )));
        }
    }
    let (version_id, created) = match current {
        Some((v, deleted)) => (v + 1, deleted),
        None => (1, true),
    };
    if created {
        let _ = principal.require(rt, Interaction::Create)?;
    }
    let last_updated = now();
    stamp(&mut body, id.as_str(), version_id, &last_updated);
    // Workflow rules (an Appointment's Slots, a dispense's prescription) see the version replaced.
    super::rules::before_write(tx, principal, rt, id.as_str(), old.as_ref(), &mut body, base).await?;
    store::write_version(tx, rt, id.as_str(), version_id, last_updated, method, Some(&body), base).await?;
    super::rules::after_write(tx, principal, rt, id.as_str(), old.as_ref(), Some(&body), base).await?;
    Ok(WriteOutcome {
        stored: StoredResource::written(rt, id.as_str(), version_id, last_updated, body),
        created,
    })
}
