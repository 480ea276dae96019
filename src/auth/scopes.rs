//! SMART scopes (v2 `system/Patient.rs`, `user/*.cruds`; v1 `patient/*.read`, `user/*.write`,
//! `system/*.*`) and the interactions they allow.

/// The kind of access a REST interaction needs, as SMART v2's `c r u d s` letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    /// The word used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Read => "read",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::Search => "search",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Interaction::Create => 1,
            Interaction::Read => 2,
            Interaction::Update => 4,
            Interaction::Delete => 8,
            Interaction::Search => 16,
        }
    }
}

/// Whose data a scope is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeContext {
    /// Backend services: any data the grant names.
    System,
    /// A logged-in user: the user's own reach (organisation subtree, added by the SMART work).
    User,
    /// The patient in context only.
    Patient,
}

/// One parsed clinical scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: ScopeContext,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    permissions: u8,
}

impl Scope {
    /// Whether this scope allows `interaction` on `resource_type`.
    ///
    /// `patient/` scopes allow nothing yet: confining them to the patient compartment is the
    /// SMART work's job, and until it lands denying is the only safe answer (default deny).
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.context != ScopeContext::Patient
            && self.resource_type.as_deref().is_none_or(|t| t == resource_type)
            && self.permissions & interaction.bit() != 0
    }

    /// Whether this scope allows `interaction` on any type.
    pub fn allows_any(&self, interaction: Interaction) -> bool {
        self.context != ScopeContext::Patient && self.permissions & interaction.bit() != 0
    }

    /// Whether this scope covers every resource type (`*`), needed for system-wide operations.
    pub fn is_wildcard(&self) -> bool {
        self.resource_type.is_none()
    }
}

/// Parses a space-separated scope string; scopes that are not clinical-data scopes
/// (`openid`, `launch`, malformed ones) are ignored.
pub fn parse_scopes(scope: &str) -> Vec<Scope> {
    scope.split_whitespace().filter_map(parse_scope).collect()
}

fn parse_scope(s: &str) -> Option<Scope> {
    let (context, rest) = s.split_once('/')?;
    let context = match context {
        "system" => ScopeContext::System,
        "user" => ScopeContext::User,
        "patient" => ScopeContext::Patient,
        _ => return None,
    };
    // Granular v2 scopes (`?category=…`) narrow the grant; until search-filtered enforcement
    // exists they are refused rather than widened.
    if rest.contains('?') {
        return None;
    }
    let (resource_type, perms) = rest.split_once('.')?;
    let resource_type = match resource_type {
        "*" => None,
        t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphabetic()) => Some(t.to_owned()),
        _ => return None,
    };
    let permissions = match perms {
        "*" => 31,
        "read" => Interaction::Read.bit() | Interaction::Search.bit(),
        "write" => Interaction::Create.bit() | Interaction::Update.bit() | Interaction::Delete.bit(),
        v2 => parse_v2(v2)?,
    };
    Some(Scope { context, resource_type, permissions })
}

/// v2 permissions must be a non-empty subset of `cruds` in that order.
fn parse_v2(s: &str) -> Option<u8> {
    let order = [('c', Interaction::Create), ('r', Interaction::Read), ('u', Interaction::Update), ('d', Interaction::Delete), ('s', Interaction::Search)];
    let mut bits = 0;
    let mut pos = 0;
    for ch in s.chars() {
        let idx = order[pos..].iter().position(|(c, _)| *c == ch)? + pos;
        bits |= order[idx].1.bit();
        pos = idx + 1;
    }
    if bits == 0 { None } else { Some(bits) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_scopes_allow_exactly_their_letters() {
        let s = parse_scopes("system/Patient.rs");
        assert!(s[0].allows("Patient", Interaction::Read));
        assert!(s[0].allows("Patient", Interaction::Search));
        assert!(!s[0].allows("Patient", Interaction::Create));
        assert!(!s[0].allows("Observation", Interaction::Read));
    }

    #[test]
    fn v1_and_wildcards() {
        let s = parse_scopes("system/*.* user/Observation.write");
        assert!(s[0].allows("Anything", Interaction::Delete));
        assert!(s[1].allows("Observation", Interaction::Update));
        assert!(!s[1].allows("Observation", Interaction::Read));
    }

    #[test]
    fn malformed_and_out_of_order_scopes_grant_nothing() {
        assert!(parse_scopes("system/Patient.sr system/Patient.x system/.r openid launch system/Patient.rs?x=1").is_empty());
    }

    #[test]
    fn patient_scopes_are_denied_until_compartments_are_enforced() {
        let s = parse_scopes("patient/*.read");
        assert!(!s[0].allows("Observation", Interaction::Read));
    }
}
