//! read and vread — https://hl7.org/fhir/R4/http.html#read, #vread

use super::live;
use crate::auth::{Interaction, Principal};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::store::{self, Store, StoredResource, Tx};

/// The current version of a resource (404 unknown, 410 deleted).
pub async fn read(store: &Store, principal: &Principal, resource_type: &ResourceType, id: &Id) -> FhirResult<StoredResource> {
    principal.require(resource_type.as_str(), Interaction::Read)?;
    live(store.read(resource_type.as_str(), id.as_str()).await?, resource_type, id)
}

/// [`read`] inside a transaction (sees the transaction's own writes).
pub async fn read_in(tx: &mut Tx, principal: &Principal, resource_type: &ResourceType, id: &Id) -> FhirResult<StoredResource> {
    principal.require(resource_type.as_str(), Interaction::Read)?;
    live(store::read_in(tx, resource_type.as_str(), id.as_str()).await?, resource_type, id)
}

/// A specific version (404 unknown version, 410 when that version is a deletion).
pub async fn vread(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    id: &Id,
    version: &str,
) -> FhirResult<StoredResource> {
    principal.require(resource_type.as_str(), Interaction::Read)?;
    let version = parse_version(resource_type, id, version)?;
    version_found(store.vread(resource_type.as_str(), id.as_str(), version).await?, resource_type, id, version)
}

/// [`vread`] inside a transaction.
pub async fn vread_in(
    tx: &mut Tx,
    principal: &Principal,
    resource_type: &ResourceType,
    id: &Id,
    version: &str,
) -> FhirResult<StoredResource> {
    principal.require(resource_type.as_str(), Interaction::Read)?;
    let version = parse_version(resource_type, id, version)?;
    version_found(store::vread_in(tx, resource_type.as_str(), id.as_str(), version).await?, resource_type, id, version)
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
