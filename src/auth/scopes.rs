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
    /// The search query of a granular scope (`patient/Observation.rs?category=laboratory`):
    /// only resources matching it are reachable. Granular scopes allow reads and searches only.
    pub filter: Option<String>,
}

impl Scope {
    /// Whether this scope allows `interaction` on `resource_type`. For `patient/` scopes this
    /// is only half the answer: the principal confines them to the patient's compartment
    /// ([`crate::auth::Principal::access`]).
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.resource_type.as_deref().is_none_or(|t| t == resource_type) && self.permissions & interaction.bit() != 0
    }

    /// Whether this scope allows `interaction` on any type.
    pub fn allows_any(&self, interaction: Interaction) -> bool {
        self.permissions & interaction.bit() != 0
    }

    /// The scope in SMART v2 form (`patient/Observation.rs`).
    pub fn to_v2(&self) -> String {
        let context = match self.context {
            ScopeContext::System => "system",
            ScopeContext::User => "user",
            ScopeContext::Patient => "patient",
        };
        let letters: String = [('c', Interaction::Create), ('r', Interaction::Read), ('u', Interaction::Update), ('d', Interaction::Delete), ('s', Interaction::Search)]
            .iter()
            .filter(|(_, i)| self.permissions & i.bit() != 0)
            .map(|(c, _)| *c)
            .collect();
        let filter = self.filter.as_deref().map(|f| format!("?{f}")).unwrap_or_default();
        format!("{context}/{}.{letters}{filter}", self.resource_type.as_deref().unwrap_or("*"))
    }

    /// Whether this scope covers every resource type (`*`), needed for system-wide operations.
    pub fn is_wildcard(&self) -> bool {
        self.resource_type.is_none()
    }
}

/// Scopes that are not about clinical data, granted only when listed exactly.
pub const NON_CLINICAL: &[&str] =
    &["openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter", "offline_access", "online_access"];

/// The part of a requested scope that `allowed` permits: the scope itself when some allowed
/// scope covers it, a narrower one (fewer permissions, or `patient/` under a `user/` grant)
/// when only part of it is permitted, `None` when nothing is. A `user/` scope also covers the
/// same `patient/` scope (a patient's compartment is within the user's reach).
pub fn narrow(requested: &str, allowed: &[&str]) -> Option<String> {
    if allowed.contains(&requested) {
        return Some(requested.to_owned());
    }
    let wanted = parse_scope(requested)?;
    let mut best: Option<Scope> = None;
    for a in allowed.iter().filter_map(|a| parse_scope(a)) {
        let context_ok = a.context == wanted.context || (a.context == ScopeContext::User && wanted.context == ScopeContext::Patient);
        if !context_ok {
            continue;
        }
        let resource_type = match (&a.resource_type, &wanted.resource_type) {
            (None, t) => t.clone(),
            (Some(t), None) => Some(t.clone()),
            (Some(a), Some(w)) if a == w => Some(w.clone()),
            _ => continue,
        };
        let permissions = a.permissions & wanted.permissions;
        let Some(filter) = meet_filter(&wanted.filter, &a.filter) else { continue };
        if permissions == 0 {
            continue;
        }
        let candidate = Scope { context: wanted.context, resource_type: resource_type.clone(), permissions, filter: filter.clone() };
        // The exact request wins; otherwise the widest candidate of the requested type.
        if resource_type == wanted.resource_type && permissions == wanted.permissions && filter == wanted.filter {
            return Some(requested.to_owned());
        }
        if best.as_ref().is_none_or(|b| permissions.count_ones() > b.permissions.count_ones()) {
            best = Some(candidate);
        }
    }
    best.map(|b| b.to_v2())
}

/// Whether `requested` is fully permitted by `allowed`.
pub fn covered_by(requested: &str, allowed: &[&str]) -> bool {
    narrow(requested, allowed).is_some_and(|n| n == requested)
}

/// The scopes of `requested` (space-separated) that `allowed` permits: each requested scope
/// as it is when one allowed scope covers it, otherwise its meet with every allowed scope
/// (`user/*.rs` under `user/Patient.rs user/Observation.r` → both); non-clinical scopes pass
/// only when listed in `allowed`.
pub fn intersect(requested: &str, allowed: &str) -> Vec<String> {
    let allowed_list: Vec<&str> = allowed.split_whitespace().collect();
    let allowed_scopes: Vec<Scope> = allowed_list.iter().filter_map(|a| parse_scope(a)).collect();
    let mut out: Vec<String> = vec![];
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for r in requested.split_whitespace() {
        let Some(wanted) = parse_scope(r) else {
            if allowed_list.contains(&r) {
                push(r.to_owned());
            }
            continue;
        };
        match narrow(r, &allowed_list) {
            Some(n) if n == r => push(n),
            _ => allowed_scopes.iter().filter_map(|a| meet(&wanted, a)).for_each(|m| push(m.to_v2())),
        }
    }
    out
}

/// What both scopes allow, in `wanted`'s context (`patient/` under a `user/` grant stays
/// `patient/`), or `None`.
fn meet(wanted: &Scope, allowed: &Scope) -> Option<Scope> {
    let context_ok = allowed.context == wanted.context || (allowed.context == ScopeContext::User && wanted.context == ScopeContext::Patient);
    if !context_ok {
        return None;
    }
    let resource_type = match (&allowed.resource_type, &wanted.resource_type) {
        (None, t) => t.clone(),
        (Some(t), None) => Some(t.clone()),
        (Some(a), Some(w)) if a == w => Some(w.clone()),
        _ => return None,
    };
    let permissions = allowed.permissions & wanted.permissions;
    let filter = meet_filter(&wanted.filter, &allowed.filter)?;
    (permissions != 0).then_some(Scope { context: wanted.context, resource_type, permissions, filter })
}

/// The filter both granular scopes impose: either one's when the other has none, the same one
/// when both have it; `None` (no meet) when they differ, since one scope holds one query.
fn meet_filter(a: &Option<String>, b: &Option<String>) -> Option<Option<String>> {
    match (a, b) {
        (None, f) | (f, None) => Some(f.clone()),
        (Some(x), Some(y)) if x == y => Some(Some(x.clone())),
        _ => None,
    }
}

/// Whether every permission `requested` names (space-separated scopes) is one `allowed`
/// gives, possibly spread over several allowed scopes: a delegated grant must be a subset of
/// the delegating role's. A `*` type is only covered by `*`.
pub fn covered_all(requested: &str, allowed: &str) -> bool {
    let allowed = parse_scopes(allowed);
    requested.split_whitespace().all(|r| {
        let Some(wanted) = parse_scope(r) else { return NON_CLINICAL.contains(&r) };
        [Interaction::Create, Interaction::Read, Interaction::Update, Interaction::Delete, Interaction::Search]
            .into_iter()
            .filter(|i| wanted.permissions & i.bit() != 0)
            .all(|i| {
                allowed.iter().any(|a| {
                    let context_ok = a.context == wanted.context || (a.context == ScopeContext::User && wanted.context == ScopeContext::Patient);
                    let type_ok = a.resource_type.is_none() || a.resource_type == wanted.resource_type;
                    let filter_ok = a.filter.is_none() || a.filter == wanted.filter;
                    context_ok && type_ok && filter_ok && a.permissions & i.bit() != 0
                })
            })
    })
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
    // Granular v2 scopes (`patient/Observation.rs?category=laboratory`): the query confines
    // reads and searches; they never allow writes.
    let (rest, filter) = match rest.split_once('?') {
        Some((_, "")) => return None,
        Some((r, q)) => (r, Some(q.to_owned())),
        None => (rest, None),
    };
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
    let permissions = if filter.is_some() { permissions & (Interaction::Read.bit() | Interaction::Search.bit()) } else { permissions };
    if permissions == 0 || (filter.is_some() && resource_type.is_none()) {
        return None;
    }
    Some(Scope { context, resource_type, permissions, filter })
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
        assert!(parse_scopes("system/Patient.sr system/Patient.x system/.r openid launch system/*.rs?x=1 system/Patient.rs?").is_empty());
    }

    #[test]
    fn narrowing_keeps_only_what_the_grant_allows() {
        assert_eq!(intersect("user/*.cruds patient/Observation.rs openid", "user/*.rs openid"), vec!["user/*.rs", "patient/Observation.rs", "openid"]);
        assert_eq!(intersect("user/Patient.read", "user/Patient.rs"), vec!["user/Patient.read"]);
        assert_eq!(intersect("system/*.rs fhirUser", "user/*.rs"), Vec::<String>::new());
        assert_eq!(intersect("user/*.rs", "user/Observation.r"), vec!["user/Observation.r"]);
        assert!(covered_by("patient/*.read", &["user/*.*"]));
        assert!(!covered_by("user/*.read", &["patient/*.*"]));
        assert_eq!(intersect("user/*.rs", "user/Patient.rs user/Observation.r"), vec!["user/Patient.rs", "user/Observation.r"]);
        assert_eq!(intersect("user/*.cruds", "user/*.cruds"), vec!["user/*.cruds"]);
        assert!(covered_all("user/Patient.rs", "user/Patient.r user/Patient.s"));
        assert!(covered_all("user/Patient.rs user/Observation.r", "user/*.rs"));
        assert!(!covered_all("user/*.rs", "user/Patient.rs user/Observation.rs"));
        assert!(!covered_all("user/Patient.cruds", "user/Patient.rs"));
        assert!(!covered_all("system/Patient.rs", "user/*.rs"));
        // Granular scopes keep their query through narrowing, allow only r/s, need a type.
        assert_eq!(intersect("patient/Observation.rs?category=laboratory", "patient/*.rs"), vec!["patient/Observation.rs?category=laboratory"]);
        assert_eq!(intersect("patient/*.rs", "patient/Observation.rs?category=laboratory"), vec!["patient/Observation.rs?category=laboratory"]);
        assert_eq!(parse_scopes("patient/Observation.cruds?category=laboratory")[0].to_v2(), "patient/Observation.rs?category=laboratory");
        assert!(parse_scopes("patient/*.rs?category=laboratory").is_empty());
        assert!(!covered_all("user/Observation.rs", "user/Observation.rs?category=laboratory"));
    }
}
