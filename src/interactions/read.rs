//! read and vread — https://hl7.org/fhir/R4/http.html#read, #vread

use super::live;
use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::store::{self, Store, StoredResource, Tx};

/// The current version of a resource (404 unknown, 410 deleted; 404 too when the principal's
/// reach does not cover it). `base` is the server's FHIR base URL.
pub async fn read(store: &Store, principal: &Principal, resource_type: &ResourceType, id: &Id, base: &str) -> FhirResult<StoredResource> {
    current_for(store, principal, Interaction::Read, resource_type, id, base).await
}

/// The current version as it exists for the principal's `interaction` (its reach and granular
/// scopes for that interaction): what [`read`] answers, and what `$validate?mode=delete` asks
/// for deletion.
pub async fn current_for(
    store: &Store,
    principal: &Principal,
    interaction: Interaction,
    resource_type: &ResourceType,
    id: &Id,
    base: &str,
) -> FhirResult<StoredResource> {
    let reach = principal.require(resource_type.as_str(), interaction)?;
    let stored = store.read(resource_type.as_str(), id.as_str()).await?;
    within_reach_for(store, principal, interaction, &reach, stored.as_ref(), base).await?;
    live(stored, resource_type, id)
}

/// [`read`] inside a transaction (sees the transaction's own writes).
pub async fn read_in(tx: &mut Tx, principal: &Principal, resource_type: &ResourceType, id: &Id, base: &str) -> FhirResult<StoredResource> {
    let _ = principal.require(resource_type.as_str(), Interaction::Read)?;
    let stored = store::read_in(tx, resource_type.as_str(), id.as_str()).await?;
    within_reach_in(tx, principal, stored.as_ref(), base).await?;
    live(stored, resource_type, id)
}

/// 404 unless the reach (and the granular scopes) cover the version read. A deleted version
/// has no content to decide by: a confined principal learns nothing of it either (404 rather
/// than 410).
pub async fn within_reach(store: &Store, principal: &Principal, reach: &Reach, stored: Option<&StoredResource>, base: &str) -> FhirResult<()> {
    within_reach_for(store, principal, Interaction::Read, reach, stored, base).await
}

/// [`within_reach`] for another interaction's reach and granular scopes.
async fn within_reach_for(
    store: &Store,
    principal: &Principal,
    interaction: Interaction,
    reach: &Reach,
    stored: Option<&StoredResource>,
    base: &str,
) -> FhirResult<()> {
    let Some(s) = stored else { return Ok(()) };
    if *reach == Reach::All && principal.filters(&s.resource_type, interaction).is_none() {
        return Ok(());
    }
    within_reach_on(&mut *store.pool().acquire().await?, principal, interaction, stored, base).await
}

/// [`within_reach`] on a connection (inside a transaction).
pub async fn within_reach_in(conn: &mut sqlx::PgConnection, principal: &Principal, stored: Option<&StoredResource>, base: &str) -> FhirResult<()> {
    within_reach_on(conn, principal, Interaction::Read, stored, base).await
}

/// 404 unless the version exists for the principal's `interaction` ([`crate::access::visible`]).
async fn within_reach_on(
    conn: &mut sqlx::PgConnection,
    principal: &Principal,
    interaction: Interaction,
    stored: Option<&StoredResource>,
    base: &str,
) -> FhirResult<()> {
    let Some(s) = stored else { return Ok(()) };
    if !crate::access::visible(conn, principal, interaction, &s.resource_type, &s.id, s.content.as_ref(), base).await? {
        return Err(not_known(s));
    }
    Ok(())
}

fn not_known(s: &StoredResource) -> FhirError {
    FhirError::NotFound(format!("{}/{} is not known", s.resource_type, s.id))
}

/// A specific version (404 unknown version, 410 when that version is a deletion).
pub async fn vread(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    id: &Id,
    version: &str,
    base: &str,
) -> FhirResult<StoredResource> {
    let reach = principal.require(resource_type.as_str(), Interaction::Read)?;
    let version = parse_version(resource_type, id, version)?;
    let stored = store.vread(resource_type.as_str(), id.as_str(), version).await?;
    // Out of reach answers exactly like a version that does not exist.
    match within_reach(store, principal, &reach, stored.as_ref(), base).await {
        Err(FhirError::NotFound(_)) => version_found(None, resource_type, id, version),
        Err(e) => Err(e),
        Ok(()) => version_found(stored, resource_type, id, version),
    }
}

/// [`vread`] inside a transaction.
pub async fn vread_in(
    tx: &mut Tx,
    principal: &Principal,
    resource_type: &ResourceType,
    id: &Id,
    version: &str,
    base: &str,
) -> FhirResult<StoredResource> {
    let _ = principal.require(resource_type.as_str(), Interaction::Read)?;
    let version = parse_version(resource_type, id, version)?;
    let stored = store::vread_in(tx, resource_type.as_str(), id.as_str(), version).await?;
    match within_reach_in(tx, principal, stored.as_ref(), base).await {
        Err(FhirError::NotFound(_)) => version_found(None, resource_type, id, version),
        Err(e) => Err(e),
        Ok(()) => version_found(stored, resource_type, id, version),
    }
}

fn parse_version(resource_type: &ResourceType, id: &Id, version: &str) -> FhirResult<i64> {
    version
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| FhirError::NotFound(format!("{resource_type}/{id} has no such version")))
}

fn version_found(stored: Option<StoredResource>, resource_type: &ResourceType, id: &Id, version: i64) -> FhirResult<StoredResource> {
    match stored {
        None => Err(FhirError::NotFound(format!("{resource_type}/{id} has no version {version}"))),
        Some(s) if s.deleted => Err(FhirError::Gone(format!("version {version} of {resource_type}/{id} is a deletion"))),
        Some(s) => Ok(s),
    }
}
