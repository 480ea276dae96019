//! The PHI policy: which elements of which resource types are sealed.
//!
//! The policy is data (`fhir-profiles/phi-policy.json`, or the operator's `--phi-policy` file):
//! data types sealed wherever they occur, element names sealed anywhere, and extra paths per
//! resource type. It is compiled per resource type, through the official StructureDefinitions,
//! into a [`SealPlan`]: a tree of JSON keys whose leaves are the elements to remove from the
//! stored document. The same tree decides which search parameters read sealed data and so
//! must go through blind indexes ([`is_protected`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Deserialize;
use serde_json::Value;

use crate::fhir::definitions::{StructureDefinition, definitions};

static DEFAULT_POLICY: &str = include_str!("../../fhir-profiles/phi-policy.json");

/// The policy file's shape.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Data type → its sealed children (`["*"]`: the whole element).
    #[serde(default)]
    pub data_types: BTreeMap<String, Vec<String>>,
    /// string/markdown elements sealed wherever they occur (`comment`).
    #[serde(default)]
    pub element_names: Vec<String>,
    /// Resource type (`*` = every type) → dotted paths below the resource (`identifier.value`).
    #[serde(default)]
    pub resources: BTreeMap<String, Vec<String>>,
}

/// What to do at one JSON key of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Remove the element (and its `_key` primitive extension sibling).
    Seal,
    /// Descend: the element holds sealed children.
    Fields(BTreeMap<String, Node>),
}

/// A resource type's sealed elements as a tree of JSON keys (choice elements by their typed
/// key, `deceasedDateTime`).
pub type SealPlan = BTreeMap<String, Node>;

static POLICY: OnceLock<Policy> = OnceLock::new();

/// Installs the operator's policy file (before the first seal); without it the default applies.
pub fn install(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the PHI policy {}: {e}", path.display()))?;
    let policy: Policy = serde_json::from_str(&text).map_err(|e| format!("the PHI policy {} is not valid: {e}", path.display()))?;
    POLICY.set(policy).map_err(|_| "the PHI policy is already in use".to_owned())
}

/// Installs a policy value (tests of the search engine run under a policy that seals nothing).
pub fn install_policy(policy: Policy) -> Result<(), String> {
    POLICY.set(policy).map_err(|_| "the PHI policy is already in use".to_owned())
}

fn policy() -> &'static Policy {
    POLICY.get_or_init(|| serde_json::from_str(DEFAULT_POLICY).unwrap_or_default())
}

/// The compiled plan of a resource type (cached).
pub fn plan(resource_type: &str) -> Arc<SealPlan> {
    static PLANS: OnceLock<Mutex<HashMap<String, Arc<SealPlan>>>> = OnceLock::new();
    let plans = PLANS.get_or_init(Default::default);
    if let Some(p) = plans.lock().ok().and_then(|m| m.get(resource_type).cloned()) {
        return p;
    }
    let built = Arc::new(compile(resource_type, policy()));
    if let Ok(mut m) = plans.lock() {
        m.insert(resource_type.to_owned(), built.clone());
    }
    built
}

/// Builds the plan of `resource_type` under `policy`.
pub fn compile(resource_type: &str, policy: &Policy) -> SealPlan {
    let defs = definitions();
    let mut compiler = Compiler { policy, datatype_plans: HashMap::new(), in_progress: HashSet::new() };
    let mut plan = match defs.structure(resource_type) {
        Some(sd) => compiler.children(sd, resource_type, 0),
        None => SealPlan::new(),
    };
    let explicit = policy.resources.get("*").into_iter().chain(policy.resources.get(resource_type)).flatten();
    for path in explicit {
        let segments: Vec<&str> = path.split('.').collect();
        let sd = defs.structure(resource_type);
        insert_path(&mut plan, sd, resource_type, &segments);
    }
    plan
}

struct Compiler<'p> {
    policy: &'p Policy,
    datatype_plans: HashMap<String, SealPlan>,
    in_progress: HashSet<String>,
}

impl Compiler<'_> {
    /// The plan of the children of the element at `path` of `sd` (a resource, backbone element
    /// or data type).
    fn children(&mut self, sd: &StructureDefinition, path: &str, depth: usize) -> SealPlan {
        let mut plan = SealPlan::new();
        if depth > 8 {
            return plan;
        }
        let children: Vec<_> = sd.children(path).cloned().collect();
        for element in children {
            let name = element.name().to_owned();
            if matches!(name.as_str(), "id" | "extension" | "modifierExtension" | "meta") {
                continue;
            }
            let choice = element.is_choice();
            let base = name.trim_end_matches("[x]");
            for ty in &element.types {
                let ty = ty.fhir_type().to_owned();
                let key = if choice { format!("{base}{}", capitalise(&ty)) } else { base.to_owned() };
                let node = if let Some(target) = &element.content_reference {
                    // `#Questionnaire.item`: the referenced backbone again, one level deeper.
                    let target = target.trim_start_matches('#').to_owned();
                    Some(self.children(sd, &target, depth + 1)).filter(|p| !p.is_empty()).map(Node::Fields)
                } else {
                    self.element_node(sd, &element.path, &name, &ty, depth)
                };
                if let Some(node) = node {
                    plan.insert(key, node);
                }
            }
            if element.types.is_empty()
                && let Some(target) = &element.content_reference
            {
                let target = target.trim_start_matches('#').to_owned();
                let sub = self.children(sd, &target, depth + 1);
                if !sub.is_empty() {
                    plan.insert(base.to_owned(), Node::Fields(sub));
                }
            }
        }
        plan
    }

    /// What an element of type `ty` named `name` at `path` contributes.
    fn element_node(&mut self, sd: &StructureDefinition, path: &str, name: &str, ty: &str, depth: usize) -> Option<Node> {
        if let Some(children) = self.policy.data_types.get(ty) {
            if children.iter().any(|c| c == "*") {
                return Some(Node::Seal);
            }
            let fields: BTreeMap<String, Node> = children.iter().map(|c| (c.clone(), Node::Seal)).collect();
            return Some(Node::Fields(fields));
        }
        if matches!(ty, "string" | "markdown") && self.policy.element_names.iter().any(|n| n == name) {
            return Some(Node::Seal);
        }
        if ty == "Resource" {
            // contained resources, Bundle.entry.resource, Parameters.parameter.resource.
            return Some(Node::Seal);
        }
        if matches!(ty, "BackboneElement" | "Element") {
            let sub = self.children(sd, path, depth + 1);
            return (!sub.is_empty()).then_some(Node::Fields(sub));
        }
        let is_complex = ty.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        if !is_complex || matches!(ty, "Extension" | "Reference" | "Meta" | "Coding" | "CodeableConcept" | "Quantity" | "Period") {
            return None;
        }
        let sub = self.datatype(ty);
        (!sub.is_empty()).then_some(Node::Fields(sub))
    }

    /// The plan inside a complex data type, memoised; recursion through itself seals nothing.
    fn datatype(&mut self, ty: &str) -> SealPlan {
        if let Some(p) = self.datatype_plans.get(ty) {
            return p.clone();
        }
        if !self.in_progress.insert(ty.to_owned()) {
            return SealPlan::new();
        }
        let plan = match definitions().structure(ty) {
            Some(sd) => self.children(sd, ty, 1),
            None => SealPlan::new(),
        };
        self.in_progress.remove(ty);
        self.datatype_plans.insert(ty.to_owned(), plan.clone());
        plan
    }
}

/// Adds an explicit policy path (`identifier.value`, `deceased[x]`) to `plan`.
fn insert_path(plan: &mut SealPlan, sd: Option<&StructureDefinition>, parent_path: &str, segments: &[&str]) {
    let Some((first, rest)) = segments.split_first() else { return };
    // A choice element (`deceased[x]`) names one key per allowed type.
    let keys: Vec<String> = match first.strip_suffix("[x]") {
        Some(base) => sd
            .and_then(|sd| sd.element(&format!("{parent_path}.{first}")))
            .map(|e| e.types.iter().map(|t| format!("{base}{}", capitalise(t.fhir_type()))).collect())
            .unwrap_or_default(),
        None => vec![(*first).to_owned()],
    };
    for key in keys {
        if rest.is_empty() {
            plan.insert(key, Node::Seal);
            continue;
        }
        let entry = plan.entry(key).or_insert_with(|| Node::Fields(BTreeMap::new()));
        if let Node::Fields(children) = entry {
            insert_path(children, sd, &format!("{parent_path}.{first}"), rest);
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// Whether the element path `keys` (`name`, `given`; a choice element by its base name)
/// reaches sealed data in `resource_type`: at a sealed element, inside one, or above one.
pub fn path_is_sealed(resource_type: &str, keys: &[String]) -> bool {
    let plan = plan(resource_type);
    let mut level: &SealPlan = &plan;
    for key in keys {
        let matching: Vec<&Node> = level
            .iter()
            .filter(|(k, _)| *k == key || k.strip_prefix(key.as_str()).is_some_and(|s| s.starts_with(|c: char| c.is_ascii_uppercase())))
            .map(|(_, n)| n)
            .collect();
        match matching.as_slice() {
            [] => return false,
            [Node::Fields(children), ..] if matching.len() == 1 => level = children,
            _ => return true,
        }
    }
    // The path ends above sealed children (`identifier` with a sealed `value`).
    true
}

/// Whether `resource_type`'s search parameter `code` reads sealed elements, so that its index
/// values are blind (keyed hashes) and only equality-style searches work on it.
pub fn is_protected(resource_type: &str, code: &str) -> bool {
    protected_params(resource_type).contains(code)
}

/// The protected parameters of a type, computed once per type and per generation of the
/// custom SearchParameters (a new one over a sealed path is protected from its first write).
/// Index extraction asks for every value it writes, so this is one lookup, not a path walk.
fn protected_params(resource_type: &str) -> Arc<HashSet<String>> {
    type Cache = (u64, HashMap<String, Arc<HashSet<String>>>);
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let generation = crate::fhir::definitions::search_params_generation();
    if let Ok(mut m) = cache.lock() {
        if m.0 != generation {
            *m = (generation, HashMap::new());
        }
        if let Some(set) = m.1.get(resource_type) {
            return set.clone();
        }
    }
    let set: HashSet<String> = definitions()
        .search_params(resource_type)
        .into_iter()
        .map(|sp| sp.code.clone())
        .filter(|code| {
            crate::index::param_paths(resource_type, code).is_some_and(|sources| {
                sources.iter().any(|source| match source {
                    crate::index::ParamSource::Path(keys) => path_is_sealed(resource_type, keys),
                    // An expression the engine evaluates: protected when any of its paths
                    // (function calls and their arguments left out) reaches sealed data.
                    crate::index::ParamSource::Expression(text) => {
                        expression_paths(resource_type, text).iter().any(|keys| path_is_sealed(resource_type, keys))
                    }
                })
            })
        })
        .collect();
    let set = Arc::new(set);
    if let Ok(mut m) = cache.lock()
        && m.0 == generation
    {
        m.1.insert(resource_type.to_owned(), set.clone());
    }
    set
}

/// The element paths below `resource_type` that an expression navigates: parenthesised groups
/// (function arguments, `where(…)` criteria) are dropped, then every dotted chain starting at
/// the type becomes its element names (`Patient.telecom.where(system='email')` → `telecom`,
/// `where`; the first sealed name decides).
pub(crate) fn expression_paths(resource_type: &str, text: &str) -> Vec<Vec<String>> {
    // A call's parentheses (after a name) hide their content; grouping parentheses do not.
    let mut flat = String::new();
    let mut stack: Vec<bool> = vec![];
    let mut brackets = 0;
    for c in text.chars() {
        let hidden = stack.iter().any(|call| *call) || brackets > 0;
        match c {
            '(' => {
                let call = !hidden && flat.ends_with(|p: char| p.is_ascii_alphanumeric());
                stack.push(call);
                flat.push(' ');
            }
            ')' => {
                stack.pop();
            }
            '[' => brackets += 1,
            ']' => brackets -= 1,
            _ if !hidden => flat.push(c),
            _ => {}
        }
    }
    flat.split(|c: char| c.is_whitespace() || c == '|')
        .filter_map(|token| token.strip_prefix(resource_type)?.strip_prefix('.').map(str::to_owned))
        .map(|rest| rest.split('.').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>())
        .filter(|keys| !keys.is_empty())
        .collect()
}

/// Removes the sealed elements of `resource` (per `plan`) and returns them as (JSON pointer,
/// value) pairs; nothing is removed from arrays, so the pointers stay valid for [`restore`].
pub fn extract(resource: &mut Value, plan: &SealPlan) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    extract_at(resource, plan, &mut String::new(), &mut out);
    out
}

fn extract_at(value: &mut Value, plan: &SealPlan, pointer: &mut String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                extract_at(item, plan, pointer, out);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, node) in plan {
                let len = pointer.len();
                match node {
                    Node::Seal => {
                        for k in [key.clone(), format!("_{key}")] {
                            if let Some(v) = map.remove(&k) {
                                out.push((format!("{pointer}/{}", escape(&k)), v));
                            }
                        }
                    }
                    Node::Fields(children) => {
                        if let Some(child) = map.get_mut(key) {
                            pointer.push('/');
                            pointer.push_str(&escape(key));
                            extract_at(child, children, pointer, out);
                            pointer.truncate(len);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// Puts sealed elements back where [`extract`] took them.
pub fn restore(resource: &mut Value, sealed: Vec<(String, Value)>) -> Result<(), String> {
    for (pointer, value) in sealed {
        let (parent, key) = pointer.rsplit_once('/').ok_or("a sealed element has no location")?;
        let target = resource.pointer_mut(parent).and_then(Value::as_object_mut).ok_or("a sealed element's parent is missing")?;
        target.insert(unescape(key), value);
    }
    Ok(())
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn unescape(key: &str) -> String {
    key.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patient_plan_covers_the_issue_list() {
        let plan = plan("Patient");
        for key in ["name", "telecom", "address", "birthDate", "deceasedBoolean", "deceasedDateTime", "contained"] {
            assert_eq!(plan.get(key), Some(&Node::Seal), "{key}");
        }
        let Some(Node::Fields(identifier)) = plan.get("identifier") else { panic!("identifier") };
        assert_eq!(identifier.get("value"), Some(&Node::Seal));
        assert!(identifier.get("system").is_none());
        let Some(Node::Fields(text)) = plan.get("text") else { panic!("text") };
        assert_eq!(text.get("div"), Some(&Node::Seal));
        let Some(Node::Fields(contact)) = plan.get("contact") else { panic!("contact") };
        assert_eq!(contact.get("name"), Some(&Node::Seal));
        assert!(plan.get("gender").is_none());
        assert!(plan.get("managingOrganization").is_none());
    }

    #[test]
    fn free_text_through_data_types_and_names() {
        let plan = plan("MedicationRequest");
        let Some(Node::Fields(dosage)) = plan.get("dosageInstruction") else { panic!("dosage") };
        assert_eq!(dosage.get("text"), Some(&Node::Seal));
        assert_eq!(plan.get("note"), Some(&Node::Seal));
        assert_eq!(super::plan("Appointment").get("comment"), Some(&Node::Seal));
        assert_eq!(super::plan("Communication").get("payload"), Some(&Node::Seal));
        let Some(Node::Fields(content)) = super::plan("DocumentReference").get("content").cloned() else { panic!("content") };
        let Some(Node::Fields(attachment)) = content.get("attachment") else { panic!("attachment") };
        assert_eq!(attachment.get("data"), Some(&Node::Seal));
        assert!(attachment.get("contentType").is_none());
        // Practitioner identifiers are sealed, an Organization's are not (not a person).
        assert!(super::plan("Organization").get("identifier").is_none());
    }

    #[test]
    fn extract_and_restore_round_trip() {
        let original = json!({"resourceType": "Patient", "id": "x", "gender": "female",
            "name": [{"family": "Synthetic"}], "_birthDate": {"extension": []}, "birthDate": "1970-01-02",
            "identifier": [{"system": "urn:s", "value": "v1"}, {"system": "urn:t"}],
            "text": {"status": "generated", "div": "<div>x</div>"}});
        let mut doc = original.clone();
        let sealed = extract(&mut doc, &plan("Patient"));
        assert_eq!(doc, json!({"resourceType": "Patient", "id": "x", "gender": "female",
            "identifier": [{"system": "urn:s"}, {"system": "urn:t"}], "text": {"status": "generated"}}));
        restore(&mut doc, sealed).unwrap();
        assert_eq!(doc, original);
    }

    #[test]
    fn protected_parameters() {
        for p in ["name", "family", "given", "phonetic", "birthdate", "identifier", "telecom", "email", "phone", "address", "address-city", "deceased"] {
            assert!(is_protected("Patient", p), "{p}");
        }
        for p in ["gender", "organization", "general-practitioner", "_id", "active", "link"] {
            assert!(!is_protected("Patient", p), "{p}");
        }
        assert!(is_protected("Patient", "death-date"), "through a grouped cast of a sealed choice");
        assert!(is_protected("Bundle", "composition"), "entry[0].resource is sealed");
        assert!(!is_protected("Observation", "code"));
        assert!(!is_protected("Observation", "value-string"), "words inside casts and calls do not count");
        assert!(!is_protected("ActivityDefinition", "composed-of"), "relatedArtifact.where(…).resource is a canonical");
        assert!(!is_protected("Organization", "identifier"));
    }
}
