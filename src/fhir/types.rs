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
/// Whether text holds a character FHIR strings exclude (below U+0020 other than tab, CR and
/// LF): refused with 400 wherever client text enters (bodies, URLs, search values, OAuth
/// fields), because PostgreSQL cannot store U+0000 and no FHIR string may carry the others.
pub fn has_forbidden_control(s: &str) -> bool {
    s.chars().any(is_forbidden_control)
}

/// A character FHIR strings exclude (see [`has_forbidden_control`]).
pub fn is_forbidden_control(c: char) -> bool {
    c < ' ' && !matches!(c, '\t' | '\r' | '\n')
}

/// The JSON pointer-ish location of the first string (key or value) in `value` that
/// [`has_forbidden_control`], if any; iterative, so nesting cannot exhaust the stack.
pub fn forbidden_control_in(value: &serde_json::Value) -> Option<String> {
    let mut stack: Vec<(&serde_json::Value, String)> = vec![(value, String::new())];
    while let Some((v, at)) = stack.pop() {
        match v {
            serde_json::Value::String(s) if has_forbidden_control(s) => return Some(at),
            serde_json::Value::Array(items) => stack.extend(items.iter().enumerate().map(|(i, x)| (x, format!("{at}[{i}]")))),
            serde_json::Value::Object(map) => {
                for (k, x) in map {
                    if has_forbidden_control(k) {
                        return Some(at);
                    }
                    stack.push((x, if at.is_empty() { k.clone() } else { format!("{at}.{k}") }));
                }
            }
            _ => {}
        }
    }
    None
}

pub fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}
