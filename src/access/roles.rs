//! Role templates and the staff hierarchy's delegation (README "Staff hierarchy").
//!
//! A PractitionerRole names a template in `code` (system [`Templates::system`]); the template
//! gives the role's default grant, whether it may delegate, and the elements it must not see.
//! A role created by another role records its creator ([`CREATED_BY_EXTENSION`], set by the
//! server); its *effective* grant is its own grant intersected with its creator's effective
//! grant, up the chain, so narrowing or ending a role narrows or ends every descendant on
//! their next request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use serde_json::Value;
use sqlx::PgConnection;

use super::organization::OrgScope;
use crate::error::{FhirError, FhirResult};

/// The extension (valueReference) naming the PractitionerRole that created a role.
pub const CREATED_BY_EXTENSION: &str = "https://ironfhir.dev/fhir/StructureDefinition/role-created-by";
/// The extension (valueBoolean) that gives or withholds the delegate right, overriding the
/// template's.
pub const DELEGATE_EXTENSION: &str = "https://ironfhir.dev/fhir/StructureDefinition/role-delegate";
/// How many creators up a chain is followed; deeper chains (or cycles) end the role.
const MAX_CHAIN: usize = 64;

/// One role template.
#[derive(Debug, Clone, Deserialize)]
pub struct Template {
    #[serde(default)]
    pub display: String,
    /// Space-separated scopes the template grants.
    pub grant: String,
    /// Whether roles of this template may create and manage sub-roles.
    #[serde(default)]
    pub delegate: bool,
    /// Hidden top-level elements per resource type (`*` for every type).
    #[serde(default)]
    pub mask: BTreeMap<String, Vec<String>>,
}

/// The role templates in force (fhir-profiles/role-templates.json unless replaced).
#[derive(Debug, Clone, Deserialize)]
pub struct Templates {
    /// The code system of template codes in `PractitionerRole.code`.
    pub system: String,
    pub templates: BTreeMap<String, Template>,
}

static TEMPLATES: OnceLock<Templates> = OnceLock::new();

/// Installs the templates from `path` (`--role-templates`); without a call the embedded ones
/// apply. Fails on a file that does not parse.
pub fn install_templates(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parsed: Templates = serde_json::from_str(&text).map_err(|e| format!("{} is not a role template file: {e}", path.display()))?;
    TEMPLATES.set(parsed).map_err(|_| "role templates are already installed".to_owned())
}

/// The templates in force.
pub fn templates() -> &'static Templates {
    TEMPLATES.get_or_init(|| {
        serde_json::from_str(include_str!("../../fhir-profiles/role-templates.json"))
            .unwrap_or_else(|e| panic!("the embedded role templates are corrupt: {e}"))
    })
}

impl Templates {
    /// The template a PractitionerRole names, if any.
    pub fn of_role(&self, role: &Value) -> Option<(&str, &Template)> {
        role.get("code")?.as_array()?.iter().find_map(|cc| {
            cc.get("coding")?.as_array()?.iter().find_map(|c| {
                if c.get("system").and_then(Value::as_str) != Some(self.system.as_str()) {
                    return None;
                }
                let code = c.get("code").and_then(Value::as_str)?;
                self.templates.get_key_value(code).map(|(k, t)| (k.as_str(), t))
            })
        })
    }
}

/// Elements hidden from a role: `(resource type or "*", element name)`.
pub type Mask = BTreeSet<(String, String)>;

/// What one role states about itself, before its creators are taken into account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnGrant {
    /// Template grant narrowed by the role-grant extension (or the extension alone for roles
    /// without a template).
    pub grant: String,
    pub delegate: bool,
    pub mask: Mask,
}

/// The grant a PractitionerRole states.
pub fn own_grant(role: &Value) -> OwnGrant {
    let stated = extension_strings(role, crate::oauth::accounts::ROLE_GRANT_EXTENSION);
    let template = templates().of_role(role);
    let grant = match (template, stated.is_empty()) {
        (Some((_, t)), true) => t.grant.clone(),
        (Some((_, t)), false) => crate::auth::scopes::intersect(&stated.join(" "), &t.grant).join(" "),
        (None, _) => stated.join(" "),
    };
    let delegate = extension_bool(role, DELEGATE_EXTENSION).unwrap_or(template.is_some_and(|(_, t)| t.delegate));
    let mask = template
        .into_iter()
        .flat_map(|(_, t)| t.mask.iter())
        .flat_map(|(rt, elements)| elements.iter().map(move |e| (rt.clone(), e.clone())))
        .collect();
    OwnGrant { grant, delegate, mask }
}

/// The PractitionerRole that created `role` (`PractitionerRole/ID`), from its extension.
pub fn created_by(role: &Value) -> Option<String> {
    role.get("extension")?.as_array()?.iter().find_map(|e| {
        (e.get("url").and_then(Value::as_str) == Some(CREATED_BY_EXTENSION))
            .then(|| e.get("valueReference")?.get("reference")?.as_str().map(str::to_owned))
            .flatten()
    })
}

/// The Organization id a PractitionerRole belongs to.
pub fn organization_of(role: &Value) -> Option<String> {
    role.get("organization")?.get("reference")?.as_str()?.strip_prefix("Organization/").map(str::to_owned)
}

fn extension_strings(role: &Value, url: &str) -> Vec<String> {
    role.get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(url))
        .filter_map(|e| e.get("valueString").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn extension_bool(role: &Value, url: &str) -> Option<bool> {
    role.get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))?
        .get("valueBoolean")?
        .as_bool()
}

/// A role as a request acts in it: its effective grant, delegate right and mask (its chain
/// of creators applied) and its organisation subtree.
#[derive(Debug, Clone)]
pub struct ActingRole {
    /// `PractitionerRole/ID`.
    pub reference: String,
    pub grant: String,
    pub delegate: bool,
    pub mask: Arc<Mask>,
    pub scope: Arc<OrgScope>,
    /// `PractitionerRole/ID` of the role's creators, nearest first.
    pub ancestors: Vec<String>,
}

async fn load_role(conn: &mut PgConnection, id: &str) -> FhirResult<Option<Value>> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT content FROM resource WHERE resource_type = 'PractitionerRole' AND id = $1 AND NOT deleted")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(c,)| c))
}

/// The effective grant, delegate right and mask of a role and its creators: `None` when the
/// role or any creator is gone, inactive or outside its period (ending a role ends its
/// descendants), or the chain is too deep or loops.
pub async fn effective(conn: &mut PgConnection, role: &str) -> FhirResult<Option<(OwnGrant, Vec<String>, Value)>> {
    let Some(first_id) = role.strip_prefix("PractitionerRole/") else { return Ok(None) };
    let Some(first) = load_role(conn, first_id).await? else { return Ok(None) };
    if !role_is_current(&first) {
        return Ok(None);
    }
    let mut total = own_grant(&first);
    let mut ancestors: Vec<String> = vec![];
    let mut next = created_by(&first);
    while let Some(creator) = next {
        if ancestors.len() >= MAX_CHAIN || ancestors.contains(&creator) || creator == role {
            return Ok(None);
        }
        let Some(id) = creator.strip_prefix("PractitionerRole/") else { return Ok(None) };
        let Some(content) = load_role(conn, id).await? else { return Ok(None) };
        if !role_is_current(&content) {
            return Ok(None);
        }
        let own = own_grant(&content);
        total.grant = crate::auth::scopes::intersect(&total.grant, &own.grant).join(" ");
        total.delegate &= own.delegate;
        total.mask.extend(own.mask);
        next = created_by(&content);
        ancestors.push(creator);
    }
    Ok(Some((total, ancestors, first)))
}

/// Loads the role a token is bound to, as it acts now; `None` when it has ended.
pub async fn acting_role(conn: &mut PgConnection, role: &str) -> FhirResult<Option<ActingRole>> {
    let Some((grant, ancestors, content)) = effective(conn, role).await? else { return Ok(None) };
    let organization = organization_of(&content);
    let mut scope = match &organization {
        Some(org) => OrgScope::load(conn, org).await?,
        None => OrgScope::default(),
    };
    scope.withheld_from = super::consent::identities(conn, role, &content, organization.as_deref()).await?;
    Ok(Some(ActingRole {
        reference: role.to_owned(),
        grant: grant.grant,
        delegate: grant.delegate,
        mask: Arc::new(grant.mask),
        scope: Arc::new(scope),
        ancestors,
    }))
}

/// Why a role-bound principal may not write this PractitionerRole (delegation rules), or
/// `Ok` with the content to store (the creator recorded). `old` is the stored role for updates
/// and deletes; `new` the submitted one (absent for deletes).
pub async fn check_delegation(
    conn: &mut PgConnection,
    actor: &ActingRole,
    target_id: &str,
    old: Option<&Value>,
    new: Option<&mut Value>,
) -> Result<(), Escalation> {
    if !actor.delegate {
        return Err(Escalation::new("the acting role has no right to delegate (create or change roles)"));
    }
    let target = format!("PractitionerRole/{target_id}");
    if target == actor.reference || actor.ancestors.contains(&target) {
        return Err(Escalation::new("a role cannot change itself or a role above it"));
    }
    if let Some(old) = old {
        // Only the roles this role (or its descendants) created.
        if !descends_from(conn, old, &actor.reference).await.map_err(Escalation::from)? {
            return Err(Escalation::new("a role can only change the roles it or its sub-roles created"));
        }
    }
    let Some(new) = new else { return Ok(()) };
    let Some(org) = organization_of(new) else {
        return Err(Escalation::new("a delegated role must name its organization (Organization/ID)"));
    };
    if !actor.scope.organizations.contains(&org) {
        return Err(Escalation::new("a delegated role must be in the acting role's organisation subtree"));
    }
    let own = own_grant(new);
    if !crate::auth::scopes::covered_all(&own.grant, &actor.grant) {
        return Err(Escalation::new("the role's grant goes beyond the acting role's effective grant"));
    }
    if own.delegate && !actor.delegate {
        return Err(Escalation::new("the role would get a delegate right the acting role does not have"));
    }
    // The creator is the server's to record: the creator of a new role is the actor, an
    // updated role keeps its creator.
    let creator = match old {
        Some(old) => created_by(old).unwrap_or_else(|| actor.reference.clone()),
        None => actor.reference.clone(),
    };
    set_created_by(new, &creator);
    Ok(())
}

/// Whether `role` was created by `ancestor` or by one of its descendants.
async fn descends_from(conn: &mut PgConnection, role: &Value, ancestor: &str) -> FhirResult<bool> {
    let mut next = created_by(role);
    let mut seen = 0;
    while let Some(creator) = next {
        if creator == ancestor {
            return Ok(true);
        }
        seen += 1;
        if seen > MAX_CHAIN {
            return Ok(false);
        }
        let Some(id) = creator.strip_prefix("PractitionerRole/") else { return Ok(false) };
        let Some(content) = load_role(conn, id).await? else { return Ok(false) };
        next = created_by(&content);
    }
    Ok(false)
}

/// Replaces any creator extension with `creator`.
fn set_created_by(role: &mut Value, creator: &str) {
    let Some(object) = role.as_object_mut() else { return };
    let extensions = object.entry("extension").or_insert_with(|| Value::Array(vec![]));
    if let Some(list) = extensions.as_array_mut() {
        list.retain(|e| e.get("url").and_then(Value::as_str) != Some(CREATED_BY_EXTENSION));
        list.push(serde_json::json!({"url": CREATED_BY_EXTENSION, "valueReference": {"reference": creator}}));
    }
}

/// A refused delegation: 403, and an audit record of the attempt.
#[derive(Debug)]
pub struct Escalation {
    pub reason: String,
    pub error: Option<FhirError>,
}

impl Escalation {
    fn new(reason: &str) -> Self {
        Escalation { reason: reason.to_owned(), error: None }
    }
}

impl From<FhirError> for Escalation {
    fn from(e: FhirError) -> Self {
        Escalation { reason: String::new(), error: Some(e) }
    }
}

/// Whether a PractitionerRole is active now (active not false, period not ended or not begun).
pub fn role_is_current(role: &Value) -> bool {
    if role.get("active").and_then(Value::as_bool) == Some(false) {
        return false;
    }
    period_covers(role.get("period"), chrono::Utc::now())
}

/// Whether a FHIR Period covers the instant `now`. Its bounds are dateTimes of any precision:
/// an `end` of "2024" lasts to the end of 2024, a `start` of "2024-05" begins on 1 May. A
/// bound that is not a FHIR dateTime ends the period (never a role that silently never ends).
pub fn period_covers(period: Option<&Value>, now: chrono::DateTime<chrono::Utc>) -> bool {
    let bound = |key: &str| period.and_then(|p| p.get(key)).map(|v| v.as_str().and_then(crate::search::params::date_bounds));
    let ended = match bound("end") {
        None => false,
        Some(None) => true,
        Some(Some((_, high))) => now >= high,
    };
    let not_begun = match bound("start") {
        None => false,
        Some(None) => true,
        Some(Some((low, _))) => now < low,
    };
    !ended && !not_begun
}

#[cfg(test)]
mod period_tests {
    use super::period_covers;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    #[test]
    fn period_bounds_of_every_precision_are_honoured() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).single().unwrap_or_default();
        let covers = |p: serde_json::Value| period_covers(Some(&p), now);
        assert!(!covers(json!({"end": "2024"})), "a role that ended in 2024 has ended");
        assert!(!covers(json!({"end": "2026-11"})));
        assert!(covers(json!({"end": "2026-12"})), "the whole of December is covered");
        assert!(covers(json!({"end": "2026"})));
        assert!(!covers(json!({"end": "2026-12-06"})));
        assert!(covers(json!({"end": "2026-12-07"})));
        assert!(!covers(json!({"end": "2026-12-07T11:59:00Z"})));
        assert!(covers(json!({"end": "2026-12-07T13:00:00+00:00"})));
        assert!(!covers(json!({"start": "2027"})));
        assert!(covers(json!({"start": "2026-12"})));
        assert!(!covers(json!({"end": "not a date"})), "an unreadable end ends the role");
        assert!(period_covers(None, now));
    }
}

