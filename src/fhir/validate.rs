//! Structural validation of FHIR R4 JSON resources against the official StructureDefinitions.
//!
//! Rules: https://hl7.org/fhir/R4/json.html (representation) and
//! https://hl7.org/fhir/R4/datatypes.html (primitive formats). The element tree, types,
//! cardinalities, fixed/pattern values and bindings all come from `fhir-profiles/` through
//! [`definitions()`] (ARCHITECTURE.md invariant 8); nothing here lists elements by hand.
//!
//! Checked: the resource type; unknown elements; choice elements (`value[x]` as `valueQuantity`);
//! `_name` companions of primitives; array versus single value; empty arrays, objects and
//! strings; `null`; min/max cardinality; JSON kinds and formats of every primitive type;
//! required bindings whose value set can be enumerated; fixed and pattern values; the resource
//! `id`; `Narrative.div` (well-formed XHTML in one div, txt-1 and txt-2 of narrative.html, read
//! by `fhir_xml::check_narrative`); contained and nested resources; and every profile in `meta.profile`
//! that the definitions hold (narrowed cardinality and types, fixed/pattern values, bindings,
//! value/url-discriminated slices with a minimum).
//!
//! Not checked: FHIRPath invariants (`constraint`), reference targets and resolution,
//! extension definitions (not in `fhir-profiles/`), extensible/preferred bindings, code systems
//! we cannot enumerate, `exists`/`type`/`profile`
//! discriminators and `resolve()` paths.
//!
//! Diagnostics never repeat the submitted data (invariant 7): they name elements, types and
//! definition-side values only; the `expression` locates the element.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use serde_json::{Map, Value};

use crate::error::{Issue, Severity};
use crate::fhir::definitions::{ElementDefinition, StructureDefinition, TypeRef, definitions};

/// Deeper nesting than this is reported instead of followed, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;
/// datatypes.html#string: strings are limited to 1 MB.
const MAX_STRING_BYTES: usize = 1024 * 1024;

/// The longest decimal accepted, in characters of its JSON text. FHIR sets no bound, but every
/// stored decimal is also a PostgreSQL numeric (which refuses `1e999999`) and an indexed float8:
/// 64 characters is far past any measured quantity and keeps both from failing the write.
const MAX_DECIMAL_CHARS: usize = 64;

/// Period per-1 ("if present, start SHALL have a lower value than end"), compared as the
/// ranges the values cover so that `2020` … `2020-06` holds. A value that is no date is
/// reported by its own check, not here.
fn period_is_ordered(period: &Map<String, Value>) -> bool {
    let bounds = |key: &str| period.get(key).and_then(Value::as_str).and_then(crate::search::params::date_bounds);
    match (bounds("start"), bounds("end")) {
        (Some((start, _)), Some((_, end))) => start < end,
        _ => true,
    }
}

/// Whether `path` (`Patient.contained[0]`) names a resource in a `contained` list.
fn is_contained_path(path: &str) -> bool {
    path.strip_suffix(']').and_then(|p| p.rsplit_once('[')).is_some_and(|(element, _)| element.ends_with(".contained"))
}

/// Whether a decimal can be stored and indexed exactly as sent: short enough
/// ([`MAX_DECIMAL_CHARS`]), and zero or of a magnitude between 1e-300 and 1e300, so that it
/// neither overflows nor silently underflows to zero as a float8.
fn decimal_is_storable(n: &serde_json::Number) -> bool {
    let text = n.to_string();
    if text.len() > MAX_DECIMAL_CHARS {
        return false;
    }
    let Ok(x) = text.parse::<f64>() else { return false };
    let mantissa_is_zero = text.split(['e', 'E']).next().is_some_and(|m| m.bytes().all(|c| matches!(c, b'0' | b'.' | b'-' | b'+')));
    if mantissa_is_zero {
        return true;
    }
    x.is_finite() && (1e-300..=1e300).contains(&x.abs())
}
/// After this many issues the rest of the resource is not looked at; the client has enough to fix.
const MAX_ISSUES: usize = 500;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Validates a resource against its base definition and any profile in `meta.profile` that
/// fhir-profiles/ holds. Returns every issue found; no error-severity issue means valid.
/// A claimed profile the server does not hold gives a warning (`not-supported`), not an error.
pub fn validate_resource(resource: &Value) -> Vec<Issue> {
    let mut v = Validator::default();
    v.resource(resource, None, None, 0);
    v.finish()
}

/// Validates against one specific profile URL (used by `$validate?profile=`); an unknown
/// profile gives one `not-supported` error.
///
/// Only what the profile adds is returned: issues that [`validate_resource`] reports for the
/// same resource are left out, so callers can concatenate both lists without duplicates.
pub fn validate_against_profile(resource: &Value, profile_url: &str) -> Vec<Issue> {
    let Some(profile) = definitions().structure_by_url(profile_url) else {
        return vec![Issue::error("not-supported", "the requested profile is not known to this server")];
    };
    let mut v = Validator::default();
    let Some((obj, rt)) = v.resource_header(resource, None) else {
        // The base validation already says what is wrong with the resource itself.
        return vec![];
    };
    if profile.kind != "resource" || profile.type_name != rt {
        v.report(
            "invalid",
            "resourceType",
            format!("the profile constrains {}, not this resource type", profile.type_name),
        );
    } else {
        v.with_profile(profile, |v| v.object(Scope::root(profile), obj, rt, 0, true));
    }
    let already: HashSet<IssueKey> = validate_resource(resource).iter().map(issue_key).collect();
    v.finish().into_iter().filter(|i| !already.contains(&issue_key(i))).collect()
}

// ---------------------------------------------------------------------------------------------
// The walker
// ---------------------------------------------------------------------------------------------

/// Accumulates issues while walking one resource.
#[derive(Default)]
struct Validator {
    issues: Vec<Issue>,
    /// Set while checking a constraint profile's snapshot. The base walk has already checked
    /// JSON shape and formats, so the profile walk only reports what the profile adds
    /// (cardinality, types, fixed/pattern values, bindings, slices) and does not descend into
    /// data types the profile leaves as they are.
    profile: Option<&'static str>,
    too_deep: bool,
    stopped: bool,
}

/// Dedup key of an issue: the base and a profile walk may find the same problem.
type IssueKey = (&'static str, &'static str, Vec<String>);

fn issue_key(i: &Issue) -> IssueKey {
    (i.severity.code(), i.code, i.expression.clone())
}

/// Where the definitions of an object's members come from: one element of one snapshot.
/// Its children are either declared inline (BackboneElement, a profile's unfolded type) or,
/// for data types, found in the type's own StructureDefinition (see [`Validator::child_scope`]).
#[derive(Clone, Copy)]
struct Scope {
    sd: &'static StructureDefinition,
    ix: &'static SdIndex,
    elem: usize,
}

impl Scope {
    fn root(sd: &'static StructureDefinition) -> Scope {
        Scope { sd, ix: index(sd), elem: 0 }
    }
    fn at(self, elem: usize) -> Scope {
        Scope { elem, ..self }
    }
    fn def(self) -> &'static ElementDefinition {
        &self.sd.elements[self.elem]
    }
    fn children(self) -> &'static [usize] {
        &self.ix.children[self.elem]
    }
    fn slices(self) -> &'static [usize] {
        &self.ix.slices[self.elem]
    }
}

/// The JSON members of one object that belong to one element: `name` and/or `_name`.
struct Found<'v> {
    /// The element definition used for the values (a type slice of a choice in profiles).
    elem: usize,
    /// The direct child of the object's scope the members belong to (for presence checks).
    owner: usize,
    /// JSON name without `_` (`valueQuantity`).
    name: &'v str,
    ty: Option<&'static TypeRef>,
    value: Option<&'v Value>,
    ext: Option<&'v Value>,
}

impl Validator {
    fn base(&self) -> bool {
        self.profile.is_none()
    }

    fn push(&mut self, issue: Issue) {
        if self.issues.len() >= MAX_ISSUES {
            if !self.stopped {
                self.stopped = true;
                self.issues
                    .push(Issue::error("too-costly", "too many issues; the rest of the resource was not checked"));
            }
            return;
        }
        self.issues.push(issue);
    }

    /// An error at `path`; in a profile walk the diagnostics name the profile.
    fn report(&mut self, code: &'static str, path: &str, text: impl Into<String>) {
        let mut text = text.into();
        if let Some(url) = self.profile {
            text = format!("{text} (profile {url})");
        }
        self.push(Issue::error(code, text).at(path));
    }

    /// A JSON-shape error: only the base walk reports these.
    fn shape(&mut self, path: &str, text: &str) {
        if self.base() {
            self.report("structure", path, text);
        }
    }

    fn with_profile(&mut self, profile: &'static StructureDefinition, f: impl FnOnce(&mut Self)) {
        let saved = self.profile.replace(profile.url.as_str());
        f(self);
        self.profile = saved;
    }

    fn finish(self) -> Vec<Issue> {
        let mut seen = HashSet::new();
        self.issues.into_iter().filter(|i| seen.insert(issue_key(i))).collect()
    }

    /// Checks that `v` is an object naming a concrete resource type; returns it and the type.
    /// `path` is the resource's location when nested (`Bundle.entry[0].resource`).
    fn resource_header<'v>(&mut self, v: &'v Value, path: Option<&str>) -> Option<(&'v Map<String, Value>, &'v str)> {
        let rt_path = path.map_or_else(|| "resourceType".to_owned(), |p| format!("{p}.resourceType"));
        let Some(obj) = v.as_object() else {
            self.report("structure", path.unwrap_or("resourceType"), "a resource must be a JSON object");
            return None;
        };
        match obj.get("resourceType") {
            None => self.report("required", &rt_path, "a resource must have a resourceType"),
            Some(Value::String(rt)) if definitions().is_resource_type(rt) => return Some((obj, rt.as_str())),
            Some(Value::String(_)) => self.report("invalid", &rt_path, "resourceType is not an R4 resource type"),
            Some(_) => self.report("structure", &rt_path, "resourceType must be a JSON string"),
        }
        None
    }

    /// Validates a resource (the top level, a contained one, `Bundle.entry.resource` …) against
    /// its base definition, then against the profiles it claims in `meta.profile`.
    fn resource(&mut self, v: &Value, path: Option<&str>, expected: Option<&str>, depth: usize) {
        let Some((obj, rt)) = self.resource_header(v, path) else { return };
        if let Some(expected) = expected.filter(|e| !matches!(*e, "Resource" | "DomainResource"))
            && expected != rt
        {
            let at = path.map_or_else(|| "resourceType".to_owned(), |p| format!("{p}.resourceType"));
            self.report("invalid", &at, format!("a {expected} is expected here"));
            return;
        }
        let Some(sd) = definitions().structure(rt) else { return };
        let base_path = path.unwrap_or(rt);
        if path.is_some_and(is_contained_path) {
            self.contained_rules(obj, base_path);
        }
        self.object(Scope::root(sd), obj, base_path, depth, true);
        self.claimed_profiles(obj, rt, base_path, depth);
    }

    /// The invariants every contained resource keeps (DomainResource dom-2, dom-4): it holds
    /// no resources of its own — so containment is one level deep, whatever a client nests —
    /// and has no version or last-updated time apart from its container's.
    fn contained_rules(&mut self, obj: &Map<String, Value>, path: &str) {
        if obj.contains_key("contained") {
            self.report("invariant", &format!("{path}.contained"), "dom-2: a contained resource must not contain resources");
        }
        let meta = obj.get("meta");
        for key in ["versionId", "lastUpdated"] {
            if meta.and_then(|m| m.get(key)).is_some() {
                self.report("invariant", &format!("{path}.meta.{key}"), format!("dom-4: a contained resource has no meta.{key} of its own"));
            }
        }
    }

    /// meta.profile: each held constraint profile is walked; unknown ones are a warning.
    fn claimed_profiles(&mut self, obj: &Map<String, Value>, rt: &str, path: &str, depth: usize) {
        let profiles = obj.get("meta").and_then(|m| m.get("profile")).and_then(Value::as_array);
        for (i, url) in profiles.into_iter().flatten().enumerate() {
            let Some(url) = url.as_str() else { continue };
            let at = format!("{path}.meta.profile[{i}]");
            match definitions().structure_by_url(url) {
                None => {
                    let mut w = Issue::error(
                        "not-supported",
                        "the claimed profile is not known to this server; it was not checked",
                    )
                    .at(at);
                    w.severity = Severity::Warning;
                    self.push(w);
                }
                Some(p) if p.kind != "resource" || p.type_name != rt => {
                    self.report(
                        "invalid",
                        &at,
                        format!("the claimed profile constrains {}, not this resource type", p.type_name),
                    );
                }
                Some(p) if p.derivation.as_deref() == Some("constraint") => {
                    self.with_profile(p, |v| v.object(Scope::root(p), obj, path, depth, true));
                }
                Some(_) => {} // the base definition itself: already checked
            }
        }
    }

    /// Validates the members of one JSON object against the children of `scope`.
    fn object(&mut self, scope: Scope, obj: &Map<String, Value>, path: &str, depth: usize, resource_root: bool) {
        if self.stopped {
            return;
        }
        if depth > MAX_DEPTH {
            if !self.too_deep {
                self.too_deep = true;
                self.report(
                    "structure",
                    path,
                    format!("elements are nested more than {MAX_DEPTH} levels deep; not checked further"),
                );
            }
            return;
        }
        if obj.is_empty() {
            self.shape(path, "an object must not be empty");
            return;
        }

        // Group the members by element: `given` and `_given` belong together.
        let mut found: Vec<Found> = Vec::with_capacity(obj.len());
        for (key, value) in obj {
            if resource_root && key == "resourceType" {
                continue;
            }
            let (name, is_ext) = match key.strip_prefix('_') {
                Some(n) => (n, true),
                None => (key.as_str(), false),
            };
            let Some((owner, ty)) = find_child(scope, name) else {
                self.unknown_member(scope, key, name, path);
                continue;
            };
            // In profiles a choice may be type-sliced (`value[x]:valueQuantity`).
            let elem = scope
                .at(owner)
                .slices()
                .iter()
                .copied()
                .find(|&s| scope.sd.elements[s].slice_name.as_deref() == Some(name))
                .unwrap_or(owner);
            let entry = match found.iter().position(|f| f.name == name) {
                Some(i) => &mut found[i],
                None => {
                    found.push(Found { elem, owner, name, ty, value: None, ext: None });
                    let last = found.len() - 1;
                    &mut found[last]
                }
            };
            if is_ext { entry.ext = Some(value) } else { entry.value = Some(value) }
        }

        for (i, f) in found.iter().enumerate() {
            if scope.sd.elements[f.owner].is_choice() && found[..i].iter().any(|g| g.owner == f.owner) {
                self.shape(&format!("{path}.{}", f.name), "only one type may be given for a choice element");
                continue;
            }
            let root_id = resource_root && f.name == "id";
            self.occurrences(scope.at(f.elem), f, path, depth, root_id);
        }

        // Presence: required elements, and slices with a minimum.
        for &c in scope.children() {
            let def = &scope.sd.elements[c];
            let present: Vec<&Found> = found.iter().filter(|f| f.owner == c).collect();
            if present.is_empty() && def.min >= 1 {
                self.report(
                    "required",
                    &format!("{path}.{}", def.name()),
                    format!("the element '{}' is required (min {})", def.name(), def.min),
                );
            }
            if scope.at(c).slices().is_empty() {
                continue;
            }
            if def.is_choice() {
                for &s in scope.at(c).slices() {
                    let slice = &scope.sd.elements[s];
                    let name = slice.slice_name.as_deref().unwrap_or_default();
                    if slice.min >= 1 && !present.iter().any(|f| f.name == name) {
                        self.report(
                            "required",
                            &format!("{path}.{}", def.name()),
                            format!("the element must be given as '{name}'"),
                        );
                    }
                }
            } else {
                let (items, repeating) = match present.first().and_then(|f| f.value) {
                    Some(Value::Array(a)) => (a.iter().collect(), true),
                    Some(v) => (vec![v], false),
                    None => (vec![], base_max(def) != "1"),
                };
                self.check_slices(scope.at(c), &items, repeating, &format!("{path}.{}", def.name()), depth);
            }
        }
    }

    /// A member the scope does not define. In a profile walk it matters only when it is a
    /// choice type the profile has taken away; the base walk reports everything else.
    fn unknown_member(&mut self, scope: Scope, key: &str, name: &str, path: &str) {
        if self.base() {
            self.report(
                "structure",
                &format!("{path}.{key}"),
                format!("unknown element (not defined for {})", scope.def().path),
            );
            return;
        }
        let narrowed = scope.children().iter().map(|&c| &scope.sd.elements[c]).any(|e| {
            e.name().strip_suffix("[x]").and_then(|b| name.strip_prefix(b)).is_some_and(|suffix| {
                let mut t = suffix.to_owned();
                if let Some(first) = t.get_mut(..1) {
                    first.make_ascii_lowercase();
                }
                definitions().structure(suffix).is_some() || definitions().structure(&t).is_some()
            })
        });
        if narrowed {
            self.report("structure", &format!("{path}.{key}"), "this type is not allowed here");
        }
    }

    /// The members of one element: JSON shape (array or single), nulls, `_` companions, counts.
    fn occurrences(&mut self, scope: Scope, f: &Found, path: &str, depth: usize, root_id: bool) {
        let def = scope.def();
        let p = format!("{path}.{}", f.name);
        let xp = format!("{path}._{}", f.name);
        let primitive = root_id || f.ty.is_some_and(|t| is_primitive(t.fhir_type()));
        let mut ext = f.ext;
        if ext.is_some() && !primitive {
            self.shape(&xp, "only primitive elements may have a '_' companion");
            ext = None;
        }
        // The JSON shape follows the base definition: a profile's `max = 1` on a repeating
        // element still leaves it an array (json.html#repeating).
        if base_max(def) != "1" {
            let values: &[Value] = match f.value {
                None => &[],
                Some(Value::Array(a)) => a,
                Some(_) => return self.shape(&p, "a repeating element must be a JSON array"),
            };
            let exts: &[Value] = match ext {
                None => &[],
                Some(Value::Array(a)) => a,
                Some(_) => return self.shape(&xp, "the '_' companion of a repeating element must be a JSON array"),
            };
            if f.value.is_some() && values.is_empty() {
                self.shape(&p, "an array must not be empty");
            }
            if ext.is_some() && exts.is_empty() {
                self.shape(&xp, "an array must not be empty");
            }
            let count = values.len().max(exts.len());
            for i in 0..count {
                let v = values.get(i).filter(|v| !v.is_null());
                let x = exts.get(i).filter(|x| !x.is_null());
                let ip = format!("{p}[{i}]");
                if v.is_none() && x.is_none() {
                    self.shape(&ip, "null is only allowed where the '_' companion has content at the same position");
                    continue;
                }
                self.item(scope, f.ty, root_id, v, x, &ip, depth);
            }
            self.count(def, count, &p);
        } else {
            if matches!(f.value, Some(Value::Array(_))) {
                return self.shape(&p, "a single-valued element must not be a JSON array");
            }
            if matches!(ext, Some(Value::Array(_))) {
                return self.shape(&xp, "the '_' companion of a single-valued element must not be a JSON array");
            }
            self.count(def, 1, &p);
            self.item(scope, f.ty, root_id, f.value, ext, &p, depth);
        }
    }

    /// Numeric cardinality (profiles narrow it; `max = 0` forbids the element).
    fn count(&mut self, def: &ElementDefinition, count: usize, path: &str) {
        if let Some(max) = def.max_count().map(|m| m as usize)
            && count > max
        {
            let text = if max == 0 {
                "this element is not allowed here".to_owned()
            } else {
                format!("at most {max} item(s) allowed")
            };
            self.report("structure", path, text);
        }
        if count > 0 && count < def.min as usize {
            self.report("required", path, format!("at least {} item(s) required", def.min));
        }
    }

    /// One value of an element (`ext` is its `_` companion for primitives).
    // The arguments are the walk's state at this point; bundling them would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn item(
        &mut self,
        scope: Scope,
        ty: Option<&'static TypeRef>,
        root_id: bool,
        value: Option<&Value>,
        ext: Option<&Value>,
        path: &str,
        depth: usize,
    ) {
        if let Some(x) = ext {
            self.primitive_extensions(x, path, depth);
        }
        let Some(v) = value else { return };
        if v.is_null() {
            return self.shape(path, "null is not allowed as a value");
        }
        let def = scope.def();
        if let Some(target) = &def.content_reference {
            // `#Questionnaire.item`: the definition of another element of the same snapshot.
            let id = target.rsplit_once('#').map_or(target.as_str(), |(_, id)| id);
            match (v.as_object(), scope.ix.by_id.get(id)) {
                (Some(obj), Some(&t)) => self.object(scope.at(t), obj, path, depth + 1, false),
                (None, _) => self.shape(path, "this element must be a JSON object"),
                _ => {}
            }
            return;
        }
        let t = if root_id { "id" } else { ty.map_or("", TypeRef::fhir_type) };
        if is_primitive(t) {
            if self.base() {
                self.primitive(t, v, path);
            }
        } else if is_resource_type(t) {
            if self.base() {
                self.resource(v, Some(path), Some(t), depth + 1);
            }
            return;
        } else {
            let Some(obj) = v.as_object() else {
                return self.shape(path, &format!("a {t} must be a JSON object"));
            };
            if let Some(inner) = self.child_scope(scope, t) {
                self.object(inner, obj, path, depth + 1, false);
            }
            if t == "Period" && self.base() && !period_is_ordered(obj) {
                self.report("invariant", path, "per-1: a Period's start must not be after its end");
            }
            // A single type profile such as SimpleQuantity (`Observation.referenceRange.low`);
            // with several, any one may apply, which is not worth guessing at.
            if let Some([url]) = ty.map(|t| t.profile.as_slice()).filter(|_| self.base())
                && let Some(p) =
                    definitions().structure_by_url(url).filter(|p| p.derivation.as_deref() == Some("constraint"))
            {
                self.with_profile(p, |s| s.object(Scope::root(p), obj, path, depth + 1, false));
            }
        }
        self.fixed_and_pattern(def, v, path);
        self.binding(def, t, v, path);
    }

    /// Where the children of a complex value are defined: inline in this snapshot (backbone
    /// elements, a profile's unfolded type), else the data type's base definition — which a
    /// profile walk leaves to the base walk.
    fn child_scope(&self, scope: Scope, t: &str) -> Option<Scope> {
        if !scope.children().is_empty() {
            return Some(scope);
        }
        if !self.base() {
            return None;
        }
        definitions().structure(t).map(Scope::root)
    }

    /// `_name` content of a primitive: an Element (id, extension).
    fn primitive_extensions(&mut self, x: &Value, path: &str, depth: usize) {
        if !self.base() {
            return;
        }
        match (x.as_object(), definitions().structure("Element")) {
            (Some(obj), Some(element)) => self.object(Scope::root(element), obj, path, depth + 1, false),
            (None, _) => self.shape(path, "the '_' companion of a primitive must be a JSON object"),
            _ => {}
        }
    }

    /// JSON kind and lexical format of a primitive (json.html#primitive, datatypes.html).
    fn primitive(&mut self, t: &str, v: &Value, path: &str) {
        match t {
            "boolean" => {
                if !v.is_boolean() {
                    self.shape(path, "a boolean must be a JSON true or false");
                }
            }
            "integer" | "positiveInt" | "unsignedInt" => {
                let Some(n) = v.as_i64() else {
                    return if v.is_number() {
                        self.report("value", path, format!("value is not a valid {t} (a whole number within 32 bits)"))
                    } else {
                        self.shape(path, &format!("a {t} must be a JSON number"))
                    };
                };
                let min = match t {
                    "positiveInt" => 1,
                    "unsignedInt" => 0,
                    _ => i64::from(i32::MIN),
                };
                if n < min || n > i64::from(i32::MAX) {
                    self.report("value", path, format!("value is out of range for {t}"));
                }
            }
            "decimal" => match v {
                Value::Number(n) if !decimal_is_storable(n) => self.report(
                    "value",
                    path,
                    format!(
                        "value is not a decimal this server can store: at most {MAX_DECIMAL_CHARS} characters, \
                         and zero or a magnitude between 1e-300 and 1e300"
                    ),
                ),
                Value::Number(_) => {}
                _ => self.shape(path, "a decimal must be a JSON number"),
            },
            _ => {
                let Some(s) = v.as_str() else {
                    return self.shape(path, &format!("a {t} must be a JSON string"));
                };
                if s.is_empty() {
                    return self.report("value", path, "value must not be an empty string");
                }
                if s.len() > MAX_STRING_BYTES {
                    return self.report("value", path, "value is longer than 1 MB");
                }
                if t == "xhtml" {
                    // The narrative says which rule it breaks (never quoting the narrative).
                    if let Err(e) = fhir_xml::check_narrative(s) {
                        self.report(e.issue_code(), path, e.message);
                    }
                    return;
                }
                if !valid_primitive(t, s) {
                    self.report("value", path, format!("value is not a valid {t}"));
                }
            }
        }
    }

    /// fixed[x]: exact equality; pattern[x]: the value contains the pattern.
    fn fixed_and_pattern(&mut self, def: &ElementDefinition, v: &Value, path: &str) {
        if let Some((_, fixed)) = def.fixed()
            && v != fixed
        {
            let text = match fixed.as_str() {
                Some(f) if f.len() <= 100 => format!("value must be exactly '{f}'"),
                _ => "value does not match the fixed value of the definition".to_owned(),
            };
            self.report("value", path, text);
        }
        if let Some((_, pattern)) = def.pattern()
            && !contains_pattern(v, pattern)
        {
            self.report("value", path, "value does not match the pattern of the definition");
        }
    }

    /// Required bindings on code, Coding and CodeableConcept, when the value set can be enumerated.
    fn binding(&mut self, def: &ElementDefinition, t: &str, v: &Value, path: &str) {
        let Some(binding) = &def.binding else { return };
        let Some(vs) = binding.value_set.as_deref().filter(|_| binding.strength == "required") else { return };
        if !matches!(t, "code" | "Coding" | "CodeableConcept") {
            return;
        }
        let Some(codes) = value_set(vs) else { return };
        let ok = match t {
            "code" => v.as_str().is_none_or(|c| codes.any_system.contains(c)),
            "Coding" => codes.has_coding(v),
            _ => match v.get("coding").and_then(Value::as_array) {
                Some(codings) if !codings.is_empty() => codings.iter().any(|c| codes.has_coding(c)),
                _ => true,
            },
        };
        if !ok {
            self.report("code-invalid", path, format!("the code is not in the required value set {vs}"));
        }
    }

    /// Slices of one element (profiles): each slice's minimum and maximum over the items that
    /// match its discriminators, and the slice's own constraints on those items.
    fn check_slices(&mut self, sliced: Scope, items: &[&Value], repeating: bool, path: &str, depth: usize) {
        let discriminators =
            sliced.def().rest.get("slicing").and_then(|s| s.get("discriminator")).and_then(Value::as_array);
        let Some(discriminators) = discriminators.filter(|d| !d.is_empty()) else { return };
        for &s in sliced.slices() {
            let slice = sliced.at(s);
            let Some(matcher) = slice_matcher(slice, discriminators) else { continue };
            let matched: Vec<usize> =
                (0..items.len()).filter(|&i| matcher.iter().all(|d| d.matches(items[i]))).collect();
            let def = slice.def();
            let name = def.slice_name.as_deref().unwrap_or_default();
            if matched.len() < def.min as usize {
                self.report("required", path, format!("at least {} item(s) must match the slice '{name}'", def.min));
            }
            if def.max_count().is_some_and(|max| matched.len() > max as usize) {
                self.report("structure", path, format!("at most {} item(s) may match the slice '{name}'", def.max));
            }
            for i in matched {
                let ip = if repeating { format!("{path}[{i}]") } else { path.to_owned() };
                self.item(slice, def.types.first(), false, Some(items[i]), None, &ip, depth);
            }
        }
    }
}

/// The child of `scope` a JSON member name belongs to, with the type it selects.
fn find_child(scope: Scope, name: &str) -> Option<(usize, Option<&'static TypeRef>)> {
    let mut choice = None;
    for &c in scope.children() {
        let e = &scope.sd.elements[c];
        let en = e.name();
        if en == name {
            return Some((c, e.types.first()));
        }
        if let Some(suffix) = en.strip_suffix("[x]").and_then(|base| name.strip_prefix(base))
            && let Some(t) = e.types.iter().find(|t| type_suffix_matches(t.fhir_type(), suffix))
        {
            choice = Some((c, Some(t)));
        }
    }
    choice
}

/// `valueDateTime` selects `dateTime`: the type code with its first letter upper-cased.
fn type_suffix_matches(code: &str, suffix: &str) -> bool {
    let (Some(c), Some(s)) = (code.chars().next(), suffix.chars().next()) else { return false };
    s.is_ascii_uppercase() && c.eq_ignore_ascii_case(&s) && code[c.len_utf8()..] == suffix[s.len_utf8()..]
}

/// The maximum of the element in its base definition, which decides array versus single.
fn base_max(def: &ElementDefinition) -> &str {
    def.rest.get("base").and_then(|b| b.get("max")).and_then(Value::as_str).unwrap_or(&def.max)
}

fn is_primitive(t: &str) -> bool {
    definitions().structure(t).is_some_and(|sd| sd.kind == "primitive-type")
}

fn is_resource_type(t: &str) -> bool {
    matches!(t, "Resource" | "DomainResource") || definitions().is_resource_type(t)
}

// ---------------------------------------------------------------------------------------------
// Patterns and slices
// ---------------------------------------------------------------------------------------------

/// pattern[x] semantics: every member of the pattern is present in the value with a matching
/// value; every item of a pattern array is matched by some item of the value's array.
fn contains_pattern(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(v), Value::Object(p)) => {
            p.iter().all(|(k, pv)| v.get(k).is_some_and(|vv| contains_pattern(vv, pv)))
        }
        (Value::Array(v), Value::Array(p)) => p.iter().all(|pv| v.iter().any(|vv| contains_pattern(vv, pv))),
        (v, p) => v == p,
    }
}

/// One discriminator of a slice, reduced to what an item must carry.
enum Discriminator {
    /// Extension slices: the item's `url`.
    Url(&'static str),
    /// The values at `path` must include one equal to (fixed) or containing (pattern) `expected`.
    Value { path: Vec<&'static str>, expected: &'static Value, pattern: bool },
}

impl Discriminator {
    fn matches(&self, item: &Value) -> bool {
        match self {
            Discriminator::Url(url) => item.get("url").and_then(Value::as_str) == Some(url),
            Discriminator::Value { path, expected, pattern } => {
                let mut values = vec![item];
                for seg in path {
                    values = values.into_iter().filter_map(|v| v.get(seg)).flat_map(flatten).collect();
                }
                values.into_iter().any(|v| if *pattern { contains_pattern(v, expected) } else { v == *expected })
            }
        }
    }
}

fn flatten(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    }
}

/// What an item must carry to belong to `slice`; `None` when a discriminator cannot be
/// evaluated here (`exists`, `type`, `profile`, `resolve()`), in which case the slice is skipped.
fn slice_matcher(slice: Scope, discriminators: &'static [Value]) -> Option<Vec<Discriminator>> {
    let mut out = Vec::with_capacity(discriminators.len());
    for d in discriminators {
        let kind = d.get("type").and_then(Value::as_str)?;
        let path = d.get("path").and_then(Value::as_str)?;
        if !matches!(kind, "value" | "pattern") || path.contains('(') {
            return None;
        }
        let segments: Vec<&'static str> = if path == "$this" { vec![] } else { path.split('.').collect() };
        if let Some((expected, pattern)) = constraint_at(slice, &segments) {
            out.push(Discriminator::Value { path: segments, expected, pattern });
        } else if path == "url" {
            // Extension slices name their definition as the type profile; its url is fixed there.
            let url = slice.def().types.first().and_then(|t| t.profile.first())?;
            out.push(Discriminator::Url(url.as_str()));
        } else {
            return None;
        }
    }
    Some(out)
}

/// The fixed or pattern value a slice definition gives at `segments` below `scope`, looking
/// into nested slices (`component:SystolicBP.code.coding:SBPCode.code`) and into a fixed or
/// pattern value given higher up. The flag says whether it is a pattern.
fn constraint_at(scope: Scope, segments: &[&str]) -> Option<(&'static Value, bool)> {
    let def = scope.def();
    let here = def.fixed().map(|(_, v)| (v, false)).or_else(|| def.pattern().map(|(_, v)| (v, true)));
    if let Some((mut v, pattern)) = here {
        for seg in segments {
            v = match v {
                Value::Array(a) => a.first()?.get(seg)?,
                other => other.get(seg)?,
            };
        }
        return Some((v, pattern));
    }
    let (first, rest) = segments.split_first()?;
    let &child = scope.children().iter().find(|&&c| scope.sd.elements[c].name() == *first)?;
    let child = scope.at(child);
    constraint_at(child, rest).or_else(|| child.slices().iter().find_map(|&s| constraint_at(child.at(s), rest)))
}

// ---------------------------------------------------------------------------------------------
// Primitive formats (datatypes.html#primitive), written out instead of regexes
// ---------------------------------------------------------------------------------------------

/// Whether a non-empty JSON string is a valid lexical form of primitive type `t`.
fn valid_primitive(t: &str, s: &str) -> bool {
    match t {
        "id" => s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
        "code" => is_code(s),
        "date" => date_prefix(s.as_bytes()).is_some_and(|(n, _)| n == s.len()),
        "dateTime" => is_date_time(s, false),
        "instant" => is_date_time(s, true),
        "time" => time_at(s.as_bytes(), 0) == Some(s.len()),
        "oid" => is_oid(s),
        "uuid" => is_uuid(s),
        "uri" | "url" | "canonical" => !s.chars().any(char::is_whitespace),
        "base64Binary" => is_base64(s),
        "xhtml" => fhir_xml::check_narrative(s).is_ok(),
        // string, markdown and anything else string-shaped: some non-whitespace content.
        _ => !s.chars().all(char::is_whitespace),
    }
}

/// `[^\s]+(\s[^\s]+)*`: no leading, trailing or doubled whitespace.
fn is_code(s: &str) -> bool {
    let mut prev_ws = true;
    for c in s.chars() {
        let ws = c.is_whitespace();
        if ws && prev_ws {
            return false;
        }
        prev_ws = ws;
    }
    !prev_ws
}

/// `n` ASCII digits at `b[at..]` as a number.
fn num(b: &[u8], at: usize, n: usize) -> Option<u32> {
    b.get(at..at + n)?.iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` (real calendar values, year ≥ 1) at the start of `b`:
/// the length read and the precision (1 year, 2 month, 3 day).
fn date_prefix(b: &[u8]) -> Option<(usize, u8)> {
    let year = num(b, 0, 4).filter(|&y| y > 0)?;
    if b.get(4) != Some(&b'-') {
        return Some((4, 1));
    }
    let month = num(b, 5, 2).filter(|m| (1..=12).contains(m))?;
    if b.get(7) != Some(&b'-') {
        return Some((7, 2));
    }
    num(b, 8, 2).filter(|&d| d >= 1 && d <= days_in_month(year, month))?;
    Some((10, 3))
}

/// `hh:mm:ss(.s+)?` at `b[at..]`; returns where it ends. `24:00` is not a time in FHIR.
fn time_at(b: &[u8], at: usize) -> Option<usize> {
    num(b, at, 2).filter(|&h| h <= 23)?;
    (b.get(at + 2) == Some(&b':')).then_some(())?;
    num(b, at + 3, 2).filter(|&m| m <= 59)?;
    (b.get(at + 5) == Some(&b':')).then_some(())?;
    num(b, at + 6, 2).filter(|&s| s <= 60)?;
    let mut end = at + 8;
    if b.get(end) == Some(&b'.') {
        let start = end + 1;
        end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return None;
        }
    }
    Some(end)
}

/// `Z` or `(+|-)hh:mm` (offsets up to 14:00) at `b[at..]`; returns where it ends.
fn zone_at(b: &[u8], at: usize) -> Option<usize> {
    match b.get(at)? {
        b'Z' => Some(at + 1),
        b'+' | b'-' => {
            let h = num(b, at + 1, 2)?;
            (b.get(at + 3) == Some(&b':')).then_some(())?;
            let m = num(b, at + 4, 2)?;
            ((h <= 13 && m <= 59) || (h == 14 && m == 0)).then_some(at + 6)
        }
        _ => None,
    }
}

/// dateTime: a (partial) date, or a full date with `Thh:mm:ss(.s)` and a zone.
/// instant (`require_time`): always the full form.
fn is_date_time(s: &str, require_time: bool) -> bool {
    let b = s.as_bytes();
    let Some((n, precision)) = date_prefix(b) else { return false };
    if n == b.len() {
        return !require_time;
    }
    precision == 3 && b[n] == b'T' && time_at(b, n + 1).and_then(|end| zone_at(b, end)) == Some(b.len())
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else { return false };
    let mut arcs = rest.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut more = 0;
    for arc in arcs {
        let digits = !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit());
        if !digits || (arc.len() > 1 && arc.starts_with('0')) {
            return false;
        }
        more += 1;
    }
    first_ok && more > 0
}

/// `urn:uuid:` and a lower-case 8-4-4-4-12 hex UUID.
fn is_uuid(s: &str) -> bool {
    let Some(u) = s.strip_prefix("urn:uuid:") else { return false };
    u.len() == 36
        && u.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// Base64 alphabet, `=` padding only at the end, whole 4-character groups; whitespace ignored.
fn is_base64(s: &str) -> bool {
    let (mut n, mut pad) = (0usize, 0usize);
    for b in s.bytes() {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            b'=' => pad += 1,
            b if pad == 0 && (b.is_ascii_alphanumeric() || b == b'+' || b == b'/') => {}
            _ => return false,
        }
        n += 1;
    }
    pad <= 2 && n.is_multiple_of(4)
}

// ---------------------------------------------------------------------------------------------
// Precomputed lookups (built once per StructureDefinition / value set)
// ---------------------------------------------------------------------------------------------

/// Parent → children and sliced element → slices of one snapshot, by element position.
/// Built from element ids, which keep slices apart (`Observation.category:VSCat.coding`
/// has the path `Observation.category.coding` but belongs to the slice, not the base element).
struct SdIndex {
    children: Vec<Vec<usize>>,
    slices: Vec<Vec<usize>>,
    by_id: HashMap<&'static str, usize>,
}

impl SdIndex {
    fn build(sd: &'static StructureDefinition) -> SdIndex {
        let n = sd.elements.len();
        let id_of = |e: &'static ElementDefinition| e.id.as_deref().unwrap_or(&e.path);
        let mut by_id = HashMap::with_capacity(n);
        for (i, e) in sd.elements.iter().enumerate() {
            by_id.entry(id_of(e)).or_insert(i);
        }
        let mut children = vec![Vec::new(); n];
        let mut slices = vec![Vec::new(); n];
        for (i, e) in sd.elements.iter().enumerate().skip(1) {
            let Some((parent, last)) = id_of(e).rsplit_once('.') else { continue };
            match last.split_once(':') {
                None => {
                    if let Some(&p) = by_id.get(parent) {
                        children[p].push(i);
                    }
                }
                // Re-slices (`a:b/c`) are left out: treated lightly, like slices generally.
                Some((_, name)) if name.contains('/') => {}
                Some((base, _)) => {
                    if let Some(&s) = by_id.get(format!("{parent}.{base}").as_str()) {
                        slices[s].push(i);
                    }
                }
            }
        }
        SdIndex { children, slices, by_id }
    }
}

/// The index of a snapshot, built on first use. Definitions live for the whole process and
/// are a fixed set, so each index is leaked once and shared as `&'static` (bounded memory,
/// no reference counting on the hot path).
fn index(sd: &'static StructureDefinition) -> &'static SdIndex {
    static CACHE: OnceLock<RwLock<HashMap<String, &'static SdIndex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(ix) = cache.read().unwrap_or_else(PoisonError::into_inner).get(&sd.url) {
        return ix;
    }
    let mut cache = cache.write().unwrap_or_else(PoisonError::into_inner);
    cache.entry(sd.url.clone()).or_insert_with(|| Box::leak(Box::new(SdIndex::build(sd))))
}

/// The codes of a value set, arranged for lookups without allocating.
struct Codes {
    by_system: HashMap<String, HashSet<String>>,
    /// For `code` elements and codings without a system: the code in any system.
    any_system: HashSet<String>,
}

impl Codes {
    fn has_coding(&self, coding: &Value) -> bool {
        let code = coding.get("code").and_then(Value::as_str);
        match (coding.get("system").and_then(Value::as_str), code) {
            (Some(system), Some(code)) => self.by_system.get(system).is_some_and(|codes| codes.contains(code)),
            (None, Some(code)) => self.any_system.contains(code),
            // No code: nothing a binding can check.
            _ => true,
        }
    }
}

/// The enumerable codes of a value set (cached); `None` when it cannot be enumerated.
fn value_set(url: &str) -> Option<Arc<Codes>> {
    static CACHE: OnceLock<RwLock<HashMap<String, Option<Arc<Codes>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.read().unwrap_or_else(PoisonError::into_inner).get(url) {
        return hit.clone();
    }
    let codes = definitions().value_set_codes(url).map(|pairs| {
        let mut by_system: HashMap<String, HashSet<String>> = HashMap::new();
        let mut any_system = HashSet::new();
        for (system, code) in pairs.iter() {
            by_system.entry(system.clone()).or_default().insert(code.clone());
            any_system.insert(code.clone());
        }
        Arc::new(Codes { by_system, any_system })
    });
    cache.write().unwrap_or_else(PoisonError::into_inner).insert(url.to_owned(), codes.clone());
    codes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `(code, expression)` of every error-severity issue.
    fn errors(resource: &Value) -> Vec<(&'static str, String)> {
        validate_resource(resource)
            .into_iter()
            .filter(|i| i.severity == Severity::Error)
            .map(|i| (i.code, i.expression.join(" | ")))
            .collect()
    }

    // Official examples from the HL7 fhir-test-cases repository (r4/), embedded verbatim so the
    // test does not depend on files outside the crate.
    const APPOINTMENT_EXAMPLEREQ: &str = r#"{
  "resourceType": "Appointment", "id": "examplereq",
  "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Brian MRI results discussion</div>"},
  "identifier": [{"system": "http://example.org/sampleappointment-identifier", "value": "123"}],
  "status": "proposed",
  "serviceCategory": [{"coding": [{"system": "http://example.org/service-category", "code": "gp", "display": "General Practice"}]}],
  "specialty": [{"coding": [{"system": "http://snomed.info/sct", "code": "394814009", "display": "General practice"}]}],
  "appointmentType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "WALKIN", "display": "A previously unscheduled walk-in visit"}]},
  "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "413095006"}], "text": "Clinical Review"}],
  "description": "Discussion on the results of your recent MRI",
  "minutesDuration": 15,
  "slot": [{"reference": "Slot/example"}],
  "created": "2015-12-02",
  "comment": "Further expand on the results of the MRI and determine the next actions that may be appropriate.",
  "participant": [
    {"actor": {"reference": "Patient/example", "display": "Peter James Chalmers"}, "required": "required", "status": "needs-action"},
    {"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}]}], "required": "required", "status": "needs-action"},
    {"actor": {"reference": "Location/1", "display": "South Wing, second floor"}, "required": "required", "status": "accepted"}
  ],
  "requestedPeriod": [{"start": "2016-06-02", "end": "2016-06-09"}]
}"#;

    const EXPLANATIONOFBENEFIT_EXAMPLE: &str = r#"{
  "resourceType" : "ExplanationOfBenefit", "id": "example",
  "supportingInfo" : [
    {"sequence" : 1, "category" : {"coding" : [{"system" : "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBSupportingInfoType", "code" : "additionalbodysite"}]}},
    {"sequence" : 2, "category" : {"coding" : [{"system" : "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBSupportingInfoType", "code" : "additionalbodysite"}]}}
  ],
  "item" : [{"sequence" : 1, "informationSequence" : [2]}, {"sequence" : 2, "informationSequence" : [1]}]
}"#;

    const PATIENT_CONTAINER_EXAMPLE: &str = r#"{
  "resourceType" : "Patient", "id" : "example-container",
  "contained" : [{"resourceType" : "Organization", "id" : "1"}],
  "name" : [{"text" : "some-name"}],
  "managingOrganization" : {"reference" : "1", "display" : "Gastroenterology"}
}"#;

    const PATIENT_NAME_EXTENSIONS: &str = r#"{
  "resourceType": "Patient", "id": "example", "active": true,
  "name": [{
    "use": "maiden", "family": "Windsor",
    "given": [null, "James"],
    "_given": [{"extension": [{"url": "https://example.org/syllable-count", "valueString": "five"}]}],
    "period": {"end": "2002"}
  }]
}"#;

    #[test]
    fn official_examples_have_no_errors() {
        for (name, text) in [
            ("appointment-examplereq", APPOINTMENT_EXAMPLEREQ),
            ("patient-container-example", PATIENT_CONTAINER_EXAMPLE),
            ("patient-name-extensions", PATIENT_NAME_EXTENSIONS),
        ] {
            let resource: Value = serde_json::from_str(text).unwrap();
            assert_eq!(errors(&resource), vec![], "{name}");
        }
    }

    /// This fixture (written for FHIRPath tests) omits the elements R4 makes mandatory for an
    /// ExplanationOfBenefit; everything it does contain is valid, so those are the only errors.
    #[test]
    fn explanation_of_benefit_example_lacks_only_mandatory_elements() {
        let resource: Value = serde_json::from_str(EXPLANATIONOFBENEFIT_EXAMPLE).unwrap();
        let mut got = errors(&resource);
        got.sort();
        let mut want: Vec<(&str, String)> = [
            "status",
            "type",
            "use",
            "patient",
            "created",
            "insurer",
            "provider",
            "outcome",
            "insurance",
            "item[0].productOrService",
            "item[1].productOrService",
        ]
        .iter()
        .map(|e| ("required", format!("ExplanationOfBenefit.{e}")))
        .collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn invalid_resources_report_issue_code_and_expression() {
        let vital_signs_without_category = json!({
            "resourceType": "Observation",
            "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/1"},
            "effectiveDateTime": "2020-01-01T10:00:00Z"
        });
        /// name, resource, expected `(code, expression)` of every error.
        type Case = (&'static str, Value, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            ("unknown element", json!({"resourceType": "Patient", "foo": 1}), vec![("structure", "Patient.foo")]),
            (
                "string for a boolean",
                json!({"resourceType": "Patient", "active": "true"}),
                vec![("structure", "Patient.active")],
            ),
            (
                "single value for an array element",
                json!({"resourceType": "Patient", "name": {"family": "x"}}),
                vec![("structure", "Patient.name")],
            ),
            (
                "array for a single element",
                json!({"resourceType": "Patient", "birthDate": ["2000-01-01"]}),
                vec![("structure", "Patient.birthDate")],
            ),
            (
                "missing required elements",
                json!({"resourceType": "Observation"}),
                vec![("required", "Observation.status"), ("required", "Observation.code")],
            ),
            (
                "month 13",
                json!({"resourceType": "Patient", "birthDate": "1980-13-01"}),
                vec![("value", "Patient.birthDate")],
            ),
            (
                "30 February",
                json!({"resourceType": "Patient", "birthDate": "2001-02-29"}),
                vec![("value", "Patient.birthDate")],
            ),
            (
                "dateTime without seconds",
                json!({"resourceType": "Patient", "deceasedDateTime": "2001-02-03T10:00Z"}),
                vec![("value", "Patient.deceasedDateTime")],
            ),
            (
                "gender not in the value set",
                json!({"resourceType": "Patient", "gender": "robot"}),
                vec![("code-invalid", "Patient.gender")],
            ),
            (
                "CodeableConcept outside a required value set",
                json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/1"},
                       "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "bogus"}]}}),
                vec![("code-invalid", "AllergyIntolerance.clinicalStatus")],
            ),
            ("bad id", json!({"resourceType": "Patient", "id": "a b"}), vec![("value", "Patient.id")]),
            (
                "id over 64 characters",
                json!({"resourceType": "Patient", "id": "a".repeat(65)}),
                vec![("value", "Patient.id")],
            ),
            (
                "empty string",
                json!({"resourceType": "Patient", "name": [{"family": ""}]}),
                vec![("value", "Patient.name[0].family")],
            ),
            (
                "whitespace-only string",
                json!({"resourceType": "Patient", "name": [{"family": "  "}]}),
                vec![("value", "Patient.name[0].family")],
            ),
            ("null value", json!({"resourceType": "Patient", "gender": null}), vec![("structure", "Patient.gender")]),
            (
                "null in an array",
                json!({"resourceType": "Patient", "name": [{"given": ["a", null]}]}),
                vec![("structure", "Patient.name[0].given[1]")],
            ),
            ("empty array", json!({"resourceType": "Patient", "name": []}), vec![("structure", "Patient.name")]),
            (
                "empty object",
                json!({"resourceType": "Patient", "maritalStatus": {}}),
                vec![("structure", "Patient.maritalStatus")],
            ),
            (
                "fraction for an integer",
                json!({"resourceType": "Patient", "multipleBirthInteger": 2.5}),
                vec![("value", "Patient.multipleBirthInteger")],
            ),
            (
                "two types for one choice element",
                json!({"resourceType": "Patient", "deceasedBoolean": true, "deceasedDateTime": "2020"}),
                vec![("structure", "Patient.deceasedDateTime")],
            ),
            (
                "choice with a type it does not allow",
                json!({"resourceType": "Patient", "deceasedString": "x"}),
                vec![("structure", "Patient.deceasedString")],
            ),
            (
                "resourceType inside an element",
                json!({"resourceType": "Patient", "name": [{"resourceType": "HumanName"}]}),
                vec![("structure", "Patient.name[0].resourceType")],
            ),
            (
                "'_' companion of a complex element",
                json!({"resourceType": "Patient", "_name": [{}]}),
                vec![("structure", "Patient._name")],
            ),
            (
                "backbone element child",
                json!({"resourceType": "Patient", "contact": [{"name": {"family": 1}}]}),
                vec![("structure", "Patient.contact[0].name.family")],
            ),
            (
                "narrative div that is not a div",
                json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<p>x</p>"}}),
                vec![("value", "Patient.text.div")],
            ),
            (
                "narrative that is not well-formed XHTML",
                json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><<<"}}),
                vec![("value", "Patient.text.div")],
            ),
            (
                "narrative with a script (txt-1), in a contained resource",
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o1", "text": {"status": "generated",
                    "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>"}}]}),
                vec![("invariant", "Patient.contained[0].text.div")],
            ),
            (
                "narrative with an event attribute (txt-1)",
                json!({"resourceType": "Patient", "text": {"status": "generated",
                    "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=\"x\" onerror=\"alert(1)\"/></div>"}}),
                vec![("invariant", "Patient.text.div")],
            ),
            (
                "extension without url",
                json!({"resourceType": "Patient", "extension": [{"valueString": "x"}]}),
                vec![("required", "Patient.extension[0].url")],
            ),
            (
                "contained resource with an unknown element",
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o1", "foo": true}]}),
                vec![("structure", "Patient.contained[0].foo")],
            ),
            (
                "contained resource holding resources of its own (dom-2) and a version (dom-4)",
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o1", "meta": {"versionId": "3"},
                    "contained": [{"resourceType": "Organization", "id": "o2"}]}]}),
                vec![("invariant", "Patient.contained[0].contained"), ("invariant", "Patient.contained[0].meta.versionId")],
            ),
            (
                "period ending before it starts (per-1)",
                json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                    "period": {"start": "2021-03-02", "end": "2021-03-01T10:00:00Z"}}),
                vec![("invariant", "Encounter.period")],
            ),
            (
                "bundle entry resource",
                json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "gender": "robot"}}]}),
                vec![("code-invalid", "Bundle.entry[0].resource.gender")],
            ),
            (
                "nested items through contentReference",
                json!({"resourceType": "Questionnaire", "status": "draft",
                       "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "bogus": 1}]}]}),
                vec![("structure", "Questionnaire.item[0].item[0].bogus")],
            ),
            (
                "SimpleQuantity forbids a comparator",
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                       "referenceRange": [{"low": {"value": 1, "comparator": "<"}}]}),
                vec![("structure", "Observation.referenceRange[0].low.comparator")],
            ),
            (
                "vitalsigns profile without the vital-signs category",
                vital_signs_without_category,
                vec![("required", "Observation.category")],
            ),
        ];
        for (name, resource, want) in cases {
            let want: Vec<(&str, String)> = want.into_iter().map(|(c, e)| (c, e.to_owned())).collect();
            assert_eq!(errors(&resource), want, "{name}");
        }
    }

    #[test]
    fn top_level_must_be_a_known_resource() {
        assert_eq!(errors(&json!([1])), vec![("structure", "resourceType".to_owned())]);
        assert_eq!(errors(&json!({"id": "x"})), vec![("required", "resourceType".to_owned())]);
        assert_eq!(errors(&json!({"resourceType": "Unicorn"})), vec![("invalid", "resourceType".to_owned())]);
        assert_eq!(errors(&json!({"resourceType": "DomainResource"})), vec![("invalid", "resourceType".to_owned())]);
        assert_eq!(errors(&json!({"resourceType": 3})), vec![("structure", "resourceType".to_owned())]);
        assert_eq!(errors(&json!({"resourceType": "Patient"})), vec![]);
    }

    #[test]
    fn primitive_companions_follow_json_rules() {
        let ok = json!({"resourceType": "Patient", "birthDate": "1970-03-30",
            "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-03-30T14:35:45-05:00"}]},
            "_gender": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}});
        assert_eq!(errors(&ok), vec![]);
        let both_null =
            json!({"resourceType": "Patient", "name": [{"given": [null, "a"], "_given": [null, {"id": "x"}]}]});
        assert_eq!(errors(&both_null), vec![("structure", "Patient.name[0].given[0]".to_owned())]);
        let single_as_array = json!({"resourceType": "Patient", "gender": "male", "_gender": [{"id": "x"}]});
        assert_eq!(errors(&single_as_array), vec![("structure", "Patient._gender".to_owned())]);
        let bad_content = json!({"resourceType": "Patient", "gender": "male", "_gender": {"value": "x"}});
        assert_eq!(errors(&bad_content), vec![("structure", "Patient.gender.value".to_owned())]);
    }

    #[test]
    fn primitive_formats() {
        let cases: &[(&str, &str, bool)] = &[
            ("date", "2020", true),
            ("date", "2020-02", true),
            ("date", "2020-02-29", true),
            ("date", "2021-02-29", false),
            ("date", "2020-00", false),
            ("date", "0000", false),
            ("date", "2020-1-01", false),
            ("date", "2020-01-01T00:00:00Z", false),
            ("dateTime", "2020-01", true),
            ("dateTime", "2020-01-01T10:11:12Z", true),
            ("dateTime", "2020-01-01T10:11:12.123+14:00", true),
            ("dateTime", "2020-01-01T10:11:12", false),
            ("dateTime", "2020-01-01T10:11Z", false),
            ("dateTime", "2020-01-01T24:00:00Z", false),
            ("dateTime", "2020-01T10:11:12Z", false),
            ("dateTime", "2020-01-01T10:11:12+14:30", false),
            ("dateTime", "2020-01-01T10:11:12.Z", false),
            ("instant", "2020-01-01T10:11:12.5-03:00", true),
            ("instant", "2020-01-01", false),
            ("time", "23:59:60", true),
            ("time", "10:11:12.001", true),
            ("time", "10:11", false),
            ("time", "24:00:00", false),
            ("id", "a-B.9", true),
            ("id", "a_b", false),
            ("code", "a b", true),
            ("code", " a", false),
            ("code", "a  b", false),
            ("code", "a ", false),
            ("oid", "urn:oid:1.2.840.10008", true),
            ("oid", "urn:oid:3.1", false),
            ("oid", "urn:oid:1.02", false),
            ("oid", "urn:oid:1", false),
            ("uuid", "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", true),
            ("uuid", "urn:uuid:C757873D-EC9A-4326-A141-556F43239520", false),
            ("uuid", "c757873d-ec9a-4326-a141-556f43239520", false),
            ("uri", "http://example.org/a?b=c", true),
            ("uri", "http://example.org/a b", false),
            ("base64Binary", "aGVsbG8=", true),
            ("base64Binary", "aGVs\nbG8h", true),
            ("base64Binary", "aGVsbG8", false),
            ("base64Binary", "aG=sbG8=", false),
            ("base64Binary", "aGVsbG8*", false),
            ("xhtml", "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>", true),
            ("xhtml", "<div xmlns=\"http://www.w3.org/1999/xhtml\"/>", false),
            ("xhtml", "<div>x</div>", false),
            ("xhtml", "<div><<<", false),
            ("xhtml", "text", false),
            ("string", "x", true),
            ("string", " \n", false),
        ];
        for &(t, s, valid) in cases {
            assert_eq!(valid_primitive(t, s), valid, "{t} {s:?}");
        }
    }

    #[test]
    fn json_number_kinds() {
        let cases = [
            (
                json!({"resourceType": "Appointment", "status": "proposed", "participant": [{"status": "accepted", "type": [{"text": "x"}]}], "minutesDuration": 0}),
                "value",
            ),
            (
                json!({"resourceType": "Appointment", "status": "proposed", "participant": [{"status": "accepted", "type": [{"text": "x"}]}], "minutesDuration": "15"}),
                "structure",
            ),
            (
                json!({"resourceType": "Appointment", "status": "proposed", "participant": [{"status": "accepted", "type": [{"text": "x"}]}], "minutesDuration": 3_000_000_000u64}),
                "value",
            ),
            (
                json!({"resourceType": "Appointment", "status": "proposed", "participant": [{"status": "accepted", "type": [{"text": "x"}]}], "priority": -1}),
                "value",
            ),
        ];
        for (resource, code) in cases {
            let got = errors(&resource);
            assert_eq!(got.len(), 1, "{resource}");
            assert_eq!(got[0].0, code, "{resource}");
        }
        let decimal = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1.5"}});
        assert_eq!(errors(&decimal), vec![("structure", "Observation.valueQuantity.value".to_owned())]);
    }

    /// Invariant 7: no submitted value ever appears in a diagnostic.
    #[test]
    fn diagnostics_never_quote_submitted_values() {
        const SECRET: &str = "Zqx7Secret";
        let resource = json!({
            "resourceType": "Patient",
            "id": format!("{SECRET} id"),
            "gender": SECRET,
            "birthDate": format!("{SECRET}-01"),
            "active": SECRET,
            "name": [{"family": [SECRET], "given": SECRET, "use": SECRET}],
            "telecom": [{"system": SECRET, "value": 5}],
            "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": SECRET}]},
            "contained": [{"resourceType": "Observation", "status": SECRET, "code": {"text": SECRET}, "valueDateTime": SECRET}],
            "multipleBirthInteger": SECRET,
            "meta": {"profile": [format!("http://example.org/{SECRET}")]},
        });
        let issues = validate_resource(&resource);
        assert!(issues.len() >= 10, "{issues:?}");
        for issue in &issues {
            assert!(!issue.diagnostics.contains(SECRET), "{issue:?}");
        }
        let issues = validate_against_profile(&resource, &format!("http://example.org/{SECRET}"));
        assert!(issues.iter().all(|i| !i.diagnostics.contains(SECRET)), "{issues:?}");
    }

    fn body_weight() -> Value {
        json!({
            "resourceType": "Observation",
            "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bodyweight"]},
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": "Patient/1"},
            "effectiveDateTime": "2020-01-01T10:00:00Z",
            "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
        })
    }

    #[test]
    fn claimed_profiles_are_checked() {
        assert_eq!(errors(&body_weight()), vec![]);

        let mut wrong_code = body_weight();
        wrong_code["code"]["coding"][0]["code"] = json!("8302-2");
        assert_eq!(errors(&wrong_code), vec![("required", "Observation.code.coding".to_owned())]);

        let mut wrong_type = body_weight();
        let quantity = wrong_type.as_object_mut().unwrap().remove("valueQuantity").unwrap();
        wrong_type["valueString"] = json!("70 kg");
        assert_eq!(errors(&wrong_type), vec![("structure", "Observation.valueString".to_owned())]);

        let mut missing_unit = body_weight();
        missing_unit["valueQuantity"] = quantity;
        missing_unit["valueQuantity"].as_object_mut().unwrap().remove("unit");
        assert_eq!(errors(&missing_unit), vec![("required", "Observation.valueQuantity.unit".to_owned())]);

        let mut bp = body_weight();
        bp["meta"]["profile"] = json!(["http://hl7.org/fhir/StructureDefinition/bp"]);
        bp["code"]["coding"][0]["code"] = json!("85354-9");
        bp.as_object_mut().unwrap().remove("valueQuantity");
        let component = |code: &str, unit: &str| {
            json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                   "valueQuantity": {"value": 100, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": unit}})
        };
        bp["component"] = json!([component("8480-6", "mm[Hg]"), component("8462-4", "mm[Hg]")]);
        assert_eq!(errors(&bp), vec![]);
        bp["component"][1] = component("8462-4", "mmHg");
        assert_eq!(errors(&bp), vec![("value", "Observation.component[1].valueQuantity.code".to_owned())]);
        bp["component"][1] = component("8480-6", "mm[Hg]");
        assert_eq!(
            errors(&bp),
            vec![("structure", "Observation.component".to_owned()), ("required", "Observation.component".to_owned())],
            "two systolic components and no diastolic one"
        );
    }

    #[test]
    fn unknown_claimed_profile_is_a_warning() {
        let mut resource = body_weight();
        resource["meta"]["profile"] = json!(["http://example.org/StructureDefinition/mine"]);
        let issues = validate_resource(&resource);
        assert_eq!(issues.len(), 1);
        assert_eq!((issues[0].severity, issues[0].code), (Severity::Warning, "not-supported"));
        assert_eq!(issues[0].expression, vec!["Observation.meta.profile[0]".to_owned()]);
    }

    #[test]
    fn validate_against_profile_reports_only_what_the_profile_adds() {
        let mut plain = body_weight();
        plain.as_object_mut().unwrap().remove("meta");
        plain.as_object_mut().unwrap().remove("status");
        assert_eq!(errors(&plain), vec![("required", "Observation.status".to_owned())]);
        assert!(validate_against_profile(&plain, "http://hl7.org/fhir/StructureDefinition/bodyweight").is_empty());
        assert!(
            validate_against_profile(&plain, "http://hl7.org/fhir/StructureDefinition/vitalsigns|4.0.1").is_empty()
        );

        plain["category"] = json!([{"text": "vitals"}]);
        let issues = validate_against_profile(&plain, "http://hl7.org/fhir/StructureDefinition/heartrate");
        let got: Vec<_> = issues.iter().map(|i| (i.code, i.expression.join(""))).collect();
        let want = [
            ("value", "Observation.valueQuantity.code"),
            ("required", "Observation.code.coding"),
            ("required", "Observation.category"),
        ];
        assert_eq!(
            got,
            want.map(|(c, e)| (c, e.to_owned())),
            "heart rate is in /min, has its own LOINC code and the vital-signs category"
        );

        let unknown = validate_against_profile(&plain, "http://example.org/nope");
        assert_eq!(unknown.len(), 1);
        assert_eq!((unknown[0].severity, unknown[0].code), (Severity::Error, "not-supported"));

        let wrong_type = validate_against_profile(
            &json!({"resourceType": "Patient"}),
            "http://hl7.org/fhir/StructureDefinition/bodyweight",
        );
        assert_eq!(wrong_type.len(), 1);
        assert_eq!((wrong_type[0].code, wrong_type[0].expression[0].as_str()), ("invalid", "resourceType"));
    }

    #[test]
    fn deep_nesting_is_reported_not_followed() {
        let mut item = json!({"linkId": "leaf", "type": "string"});
        for i in 0..200 {
            item = json!({"linkId": format!("{i}"), "type": "group", "item": [item]});
        }
        let resource = json!({"resourceType": "Questionnaire", "status": "draft", "item": [item]});
        let got = errors(&resource);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "structure");

        let mut ext = json!({"url": "http://example.org/x", "valueString": "x"});
        for _ in 0..200 {
            ext = json!({"url": "http://example.org/x", "extension": [ext]});
        }
        assert_eq!(errors(&json!({"resourceType": "Patient", "extension": [ext]})).len(), 1);
    }

    #[test]
    fn many_problems_are_capped() {
        let names: Vec<Value> = (0..2000).map(|_| json!({"family": 1})).collect();
        let issues = validate_resource(&json!({"resourceType": "Patient", "name": names}));
        assert_eq!(issues.len(), MAX_ISSUES + 1);
        assert_eq!(issues.last().map(|i| i.code), Some("too-costly"));
    }

    #[test]
    fn pattern_containment() {
        let pattern = json!({"coding": [{"system": "s", "code": "c"}]});
        assert!(contains_pattern(
            &json!({"coding": [{"system": "x", "code": "y"}, {"system": "s", "code": "c", "display": "d"}], "text": "t"}),
            &pattern
        ));
        assert!(!contains_pattern(&json!({"coding": [{"system": "s", "code": "other"}]}), &pattern));
        assert!(!contains_pattern(&json!({"text": "t"}), &pattern));
        assert!(contains_pattern(&json!("a"), &json!("a")));
        assert!(!contains_pattern(&json!(1), &json!("1")));
    }

    #[test]
    fn snapshot_index_keeps_slices_apart() {
        let vitals = definitions().structure_by_url("http://hl7.org/fhir/StructureDefinition/vitalsigns").unwrap();
        let root = Scope::root(vitals);
        let (category, _) = find_child(root, "category").unwrap();
        let category = root.at(category);
        let slice_names: Vec<_> =
            category.slices().iter().filter_map(|&s| vitals.elements[s].slice_name.as_deref()).collect();
        assert_eq!(slice_names, ["VSCat"]);
        assert!(category.children().is_empty(), "the VSCat children belong to the slice, not to category");
        let (value, ty) = find_child(root, "valueDateTime").unwrap();
        assert_eq!(vitals.elements[value].path, "Observation.value[x]");
        assert_eq!(ty.map(TypeRef::fhir_type), Some("dateTime"));
        assert!(find_child(root, "valueFoo").is_none());
    }
}
