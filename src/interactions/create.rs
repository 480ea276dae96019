//! create and conditional create — https://hl7.org/fhir/R4/http.html#create, #ccreate

use serde_json::Value;

use super::{WriteOutcome, check_body, now, stamp};
use crate::auth::{Interaction, Principal};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::search;
use crate::store::{self, Store, StoredResource, Tx};

/// Creates a resource with a server-assigned id. With `if_none_exist` (a search query), an
/// existing single match is returned instead (200), several matches are 412. `base` is the
/// server's FHIR base URL, against which relative references in the query resolve.
pub async fn create(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    mut body: Value,
    if_none_exist: Option<&str>,
    base: &str,
) -> FhirResult<WriteOutcome> {
    let reach = principal.require(resource_type.as_str(), Interaction::Create)?;
    check_body(resource_type, &body, None)?;
    if if_none_exist.is_some() {
        let _ = principal.require(resource_type.as_str(), Interaction::Search)?;
    }
    let criteria = match if_none_exist {
        Some(q) => {
            let mut criteria = search::parse_conditional(resource_type, q, base)?;
            crate::access::confine(&mut criteria, principal, base)?;
            Some(criteria)
        }
        None => None,
    };
    // http.html#create: a client-supplied id is ignored.
    let id = Id::generate();
    if reach != crate::auth::Reach::All || principal.acting.is_some() {
        let mut conn = store.pool().acquire().await?;
        crate::access::authorize_write(&mut conn, principal, &reach, resource_type.as_str(), id.as_str(), None, Some(&mut body), base).await?;
    }
    let last_updated = now();
    stamp(&mut body, id.as_str(), 1, &last_updated);
    let rt = resource_type.as_str();
    // An Appointment's write also moves its Slots, in the same transaction.
    if criteria.is_none() && !super::rules::has_rules(rt) {
        store::create_one(store, rt, id.as_str(), last_updated, &body, base).await?;
        return Ok(WriteOutcome {
            stored: StoredResource::written(rt, id.as_str(), 1, last_updated, body),
            created: true,
        });
    }
    let (body, criteria, id) = (&body, &criteria, &id);
    store
        .with_transaction(move |mut tx| {
            Box::pin(async move {
                let result = create_in(&mut tx, principal, rt, id, last_updated, body.clone(), criteria.as_ref(), base).await;
                (tx, result)
            })
        })
        .await
}

/// The create inside a transaction: with `criteria` (If-None-Exist) a single match is returned
/// instead (200), several are 412; otherwise `body` (already stamped with `id`, version 1 and
/// `last_updated`) is inserted. Used by [`create`] and by transaction Bundles.
#[allow(clippy::too_many_arguments)]
pub async fn create_in(
    tx: &mut Tx,
    principal: &Principal,
    rt: &str,
    id: &Id,
    last_updated: chrono::DateTime<chrono::Utc>,
    mut body: Value,
    criteria: Option<&search::Criteria>,
    base: &str,
) -> FhirResult<WriteOutcome> {
    if let Some(criteria) = criteria {
        store::lock_criteria(tx, &format!("{rt}?{}", criteria.canonical())).await?;
        let matches = search::matching_ids(tx, criteria, 2).await?;
        match matches.len() {
            0 => {}
            1 => {
                let existing = store::current_content(tx, rt, &matches[0]).await?;
                let stored = read_locked(tx, rt, &matches[0], existing).await?;
                return Ok(WriteOutcome { stored, created: false });
            }
            _ => return Err(FhirError::PreconditionFailed("If-None-Exist matched more than one resource".into())),
        }
    }
    super::rules::before_write(tx, principal, rt, id.as_str(), None, &mut body, base).await?;
    store::insert_new(tx, rt, id.as_str(), last_updated, &body, base).await?;
    super::rules::after_write(tx, principal, rt, id.as_str(), None, Some(&body), base).await?;
    Ok(WriteOutcome {
        stored: StoredResource::written(rt, id.as_str(), 1, last_updated, body),
        created: true,
    })
}

/// The current version of a matched resource, locked for the rest of the transaction.
pub(crate) async fn read_locked(
    tx: &mut Tx,
    rt: &str,
    id: &str,
    content: Option<Value>,
) -> FhirResult<StoredResource> {
    let (version_id, deleted) = store::lock_current(tx, rt, id)
        .await?
        .ok_or_else(|| FhirError::Conflict("the matched resource disappeared".into()))?;
    let last_updated = content
        .as_ref()
        .and_then(|c| c.pointer("/meta/lastUpdated"))
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(super::now);
    Ok(StoredResource { resource_type: rt.to_owned(), id: id.to_owned(), version_id, last_updated, deleted, content, method: None })
}
