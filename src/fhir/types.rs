//! Validated newtypes for the parts of a URL that name a resource.

use std::fmt;

use crate::error::FhirError;
use crate::fhir::definitions::definitions;

/// A concrete R4 resource type name, checked against the loaded definitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(String);

impl ResourceType {
    /// Parses a type name from a URL; unknown types are 404 as http.html says.
    pub fn parse(name: &str) -> Result<Self, FhirError> {
        if definitions().is_resource_type(name) {
            Ok(ResourceType(name.to_owned()))
        } else {
            Err(FhirError::NotFound(format!("unknown resource type '{}'", sanitize(name))))
        }
    }

    /// The type name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource id: `[A-Za-z0-9\-\.]{1,64}` (datatypes.html#id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    /// Whether `s` satisfies the FHIR id rules.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    }

    /// Parses an id; a malformed id is a 400.
    pub fn parse(s: &str) -> Result<Self, FhirError> {
        if Self::is_valid(s) {
            Ok(Id(s.to_owned()))
        } else {
            Err(FhirError::BadRequest(format!("'{}' is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})", sanitize(s))))
        }
    }

    /// A fresh server-assigned id (a UUID, as most servers use).
    pub fn generate() -> Self {
        Id(uuid::Uuid::new_v4().to_string())
    }

    /// A fresh id that sorts by creation time (UUIDv7), for records whose time is no secret
    /// (AuditEvents): consecutive inserts share index pages instead of touching random ones.
    pub fn generate_time_ordered() -> Self {
        Id(uuid::Uuid::now_v7().to_string())
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference on this server's base (`<base>/Type/id`) as the local `Type/id`; any other
/// reference unchanged (references.html: relative references are relative to the base).
pub fn local_reference<'a>(reference: &'a str, base: &str) -> &'a str {
    reference.strip_prefix(base).and_then(|r| r.strip_prefix('/')).unwrap_or(reference)
}

/// Shortens and strips control characters from client text before it is echoed in an error.
pub fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}
