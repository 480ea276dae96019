//! delete and conditional delete — https://hl7.org/fhir/R4/http.html#delete, #3.1.0.7.1

use super::now;
use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::search;
use crate::store::{self, Store, Tx};

/// Deletes `rt/id`: a new history version marks it deleted and reads answer 410. Deleting a
/// resource that does not exist or is already deleted succeeds without a new version. Returns
/// the number of resources deleted (0 or 1).
pub async fn delete(store: &Store, principal: &Principal, resource_type: &ResourceType, id: &Id, base: &str) -> FhirResult<u32> {
    let reach = principal.require(resource_type.as_str(), Interaction::Delete)?;
    let reach = &reach;
    store
        .with_transaction(move |mut tx| {
            Box::pin(async move {
                let result = match check_delete(&mut tx, principal, reach, resource_type.as_str(), id.as_str(), base).await {
                    Ok(true) => delete_in(&mut tx, principal, resource_type.as_str(), id.as_str()).await,
                    Ok(false) => Ok(0),
                    Err(e) => Err(e),
                };
                (tx, result)
            })
        })
        .await
}

/// Whether the delete goes ahead: a confined principal deletes only what is within its reach
/// (and a role-bound one only the PractitionerRoles it may manage). `false` when the resource
/// does not exist for the principal — outside its reach it answers like an unknown id
/// (nothing deleted), never with a status that would tell it exists.
pub async fn check_delete(tx: &mut Tx, principal: &Principal, reach: &Reach, rt: &str, id: &str, base: &str) -> FhirResult<bool> {
    if crate::access::checks_each_resource(principal, reach, rt, Interaction::Delete) {
        let current = store::current_content(tx, rt, id).await?;
        if !crate::access::visible(tx, principal, Interaction::Delete, rt, id, current.as_ref(), base).await? {
            return Ok(false);
        }
        if let Some(current) = current {
            crate::access::authorize_write(tx, principal, reach, rt, id, Some(&current), None, base).await?;
        }
    }
    Ok(true)
}

/// Conditional delete (single-match mode): no match succeeds with nothing deleted, one match is
/// deleted, several matches are 412. `base` is the server's FHIR base URL.
pub async fn conditional_delete(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    criteria: &str,
    base: &str,
) -> FhirResult<u32> {
    let _ = principal.require(resource_type.as_str(), Interaction::Delete)?;
    let _ = principal.require(resource_type.as_str(), Interaction::Search)?;
    let mut criteria = search::parse_conditional(resource_type, criteria, base)?;
    crate::access::confine(&mut criteria, principal, base)?;
    let criteria = &criteria;
    store
        .with_transaction(move |mut tx| {
            Box::pin(async move {
                let result = conditional_delete_in(&mut tx, principal, resource_type.as_str(), criteria, base).await;
                (tx, result)
            })
        })
        .await
}

async fn conditional_delete_in(tx: &mut Tx, principal: &Principal, rt: &str, criteria: &search::Criteria, base: &str) -> FhirResult<u32> {
    let matches = search::matching_ids(tx, criteria, 2).await?;
    match matches.as_slice() {
        [] => Ok(0),
        [one] => {
            let reach = principal.require(rt, Interaction::Delete)?;
            if !check_delete(tx, principal, &reach, rt, one, base).await? {
                return Ok(0);
            }
            delete_in(tx, principal, rt, one).await
        }
        _ => Err(FhirError::PreconditionFailed("the criteria matched more than one resource".into())),
    }
}

/// The delete inside a transaction (0 when there was nothing to delete). Used by [`delete`] and
/// by transaction Bundles.
pub async fn delete_in(tx: &mut Tx, principal: &Principal, rt: &str, id: &str) -> FhirResult<u32> {
    match store::lock_current(tx, rt, id).await? {
        Some((version, false)) => {
            let replaced = if super::rules::has_rules(rt) { store::current_content(tx, rt, id).await? } else { None };
            // A delete leaves no index rows, so no base is needed to make references local.
            store::write_version(tx, rt, id, version + 1, now(), "DELETE", None, "").await?;
            super::rules::after_write(tx, principal, rt, id, replaced.as_ref(), None, "").await?;
            Ok(1)
        }
        _ => Ok(0),
    }
}
