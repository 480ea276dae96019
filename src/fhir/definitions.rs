//! The official FHIR R4 definitions, loaded once from `fhir-profiles/` (embedded in the binary).
//!
//! Everything the server knows about FHIR — which resource types exist, their elements, types,
//! cardinalities and bindings, the search parameters, value sets and compartments — comes from
//! here (ARCHITECTURE.md invariant 8), never from hand-kept lists.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

static PROFILES_RESOURCES: &[u8] = include_bytes!("../../fhir-profiles/r4/profiles-resources.json.gz");
static PROFILES_TYPES: &[u8] = include_bytes!("../../fhir-profiles/r4/profiles-types.json.gz");
static PROFILES_OTHERS: &[u8] = include_bytes!("../../fhir-profiles/r4/profiles-others.json.gz");
static SEARCH_PARAMETERS: &[u8] = include_bytes!("../../fhir-profiles/r4/search-parameters.json.gz");
/// The server's own SearchParameters (what its access rules index, such as a Subscription's owner).
static SERVER_SEARCH_PARAMETERS: &str = include_str!("../../fhir-profiles/server-search-parameters.json");
static VALUESETS: &[u8] = include_bytes!("../../fhir-profiles/r4/valuesets.json.gz");

/// One element of a StructureDefinition snapshot, reduced to what validation and search read.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ElementDefinition {
    /// e.g. `Patient.contact.name`, `Observation.value[x]`.
    pub path: String,
    /// Element id; differs from `path` for slices (`Observation.category:VSCat`).
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub slice_name: Option<String>,
    #[serde(default)]
    pub min: u32,
    /// `"1"`, `"*"`, `"0"`.
    #[serde(default = "star")]
    pub max: String,
    #[serde(default, rename = "type")]
    pub types: Vec<TypeRef>,
    #[serde(default)]
    pub binding: Option<Binding>,
    /// `#Questionnaire.item` style reference to another element's definition (recursion).
    #[serde(default)]
    pub content_reference: Option<String>,
    #[serde(default)]
    pub is_modifier: bool,
    #[serde(default)]
    pub is_summary: bool,
    /// `fixed[x]` / `pattern[x]` and friends are kept raw: `(json key, value)`.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

fn star() -> String {
    "*".to_owned()
}

impl ElementDefinition {
    /// The `fixed[x]` value of this element, if the definition fixes one.
    pub fn fixed(&self) -> Option<(&str, &Value)> {
        self.rest.iter().find(|(k, _)| k.starts_with("fixed")).map(|(k, v)| (k.as_str(), v))
    }

    /// The `pattern[x]` value of this element, if the definition gives one.
    pub fn pattern(&self) -> Option<(&str, &Value)> {
        self.rest.iter().find(|(k, _)| k.starts_with("pattern")).map(|(k, v)| (k.as_str(), v))
    }

    /// Maximum cardinality as a number; `None` means unbounded.
    pub fn max_count(&self) -> Option<u32> {
        if self.max == "*" { None } else { self.max.parse().ok() }
    }

    /// The last path segment (`value[x]`, `family`).
    pub fn name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }

    /// Whether this is a choice element (`value[x]`).
    pub fn is_choice(&self) -> bool {
        self.path.ends_with("[x]")
    }
}

/// An element's allowed type.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeRef {
    /// Type name (`string`, `HumanName`, `Reference`) or a FHIRPath system type URL for `id`s.
    pub code: String,
    #[serde(default)]
    pub target_profile: Vec<String>,
    #[serde(default)]
    pub profile: Vec<String>,
}

impl TypeRef {
    /// The FHIR type name, mapping the `http://hl7.org/fhirpath/System.String` codes used for
    /// primitive values' `value` elements and for `Resource.id` back to FHIR names.
    pub fn fhir_type(&self) -> &str {
        match self.code.as_str() {
            "http://hl7.org/fhirpath/System.String" => "string",
            "http://hl7.org/fhirpath/System.Boolean" => "boolean",
            "http://hl7.org/fhirpath/System.Integer" => "integer",
            "http://hl7.org/fhirpath/System.Decimal" => "decimal",
            "http://hl7.org/fhirpath/System.Date" => "date",
            "http://hl7.org/fhirpath/System.DateTime" => "dateTime",
            "http://hl7.org/fhirpath/System.Time" => "time",
            other => other,
        }
    }
}

/// A terminology binding on an element.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    /// `required`, `extensible`, `preferred`, `example`.
    pub strength: String,
    #[serde(default)]
    pub value_set: Option<String>,
}

/// A StructureDefinition (resource, data type or profile) with its snapshot.
#[derive(Debug, Clone)]
pub struct StructureDefinition {
    pub url: String,
    pub id: String,
    pub name: String,
    /// `primitive-type`, `complex-type`, `resource`, `logical`.
    pub kind: String,
    pub is_abstract: bool,
    /// The type it defines or constrains (`Patient` for the vital-signs profile too).
    pub type_name: String,
    /// `specialization` or `constraint`.
    pub derivation: Option<String>,
    pub base_definition: Option<String>,
    pub elements: Vec<ElementDefinition>,
}

impl StructureDefinition {
    /// The snapshot element with exactly this path and no slice name.
    pub fn element(&self, path: &str) -> Option<&ElementDefinition> {
        self.elements.iter().find(|e| e.path == path && e.slice_name.is_none())
    }

    /// The non-slice elements directly below `path`.
    pub fn children<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a ElementDefinition> + 'a {
        self.elements.iter().filter(move |e| {
            e.slice_name.is_none()
                && e.path.len() > path.len() + 1
                && e.path.starts_with(path)
                && e.path.as_bytes()[path.len()] == b'.'
                && !e.path[path.len() + 1..].contains('.')
        })
    }
}

/// A SearchParameter definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchParameter {
    pub url: String,
    pub id: String,
    /// The name used in URLs (`name`, `birthdate`, `_id`).
    pub code: String,
    /// Resource types it applies to (`Resource` for the common ones).
    pub base: Vec<String>,
    /// `number`, `date`, `string`, `token`, `reference`, `composite`, `quantity`, `uri`, `special`.
    #[serde(rename = "type")]
    pub param_type: String,
    #[serde(default)]
    pub expression: Option<String>,
    #[serde(default)]
    pub xpath: Option<String>,
    #[serde(default)]
    pub target: Vec<String>,
    #[serde(default)]
    pub modifier: Vec<String>,
    #[serde(default)]
    pub comparator: Vec<String>,
    #[serde(default)]
    pub component: Vec<Value>,
    #[serde(default)]
    pub multiple_or: Option<bool>,
    #[serde(default)]
    pub multiple_and: Option<bool>,
}

/// The loaded definitions; get them with [`definitions()`].
pub struct Definitions {
    /// Concrete resource types by name (`Patient` …), 145 of them in R4 plus abstract bases.
    structures: HashMap<String, StructureDefinition>,
    /// Every StructureDefinition by canonical URL, including data types and profiles.
    by_url: HashMap<String, StructureDefinition>,
    resource_types: Vec<String>,
    search_params: HashMap<String, Vec<SearchParameter>>,
    value_sets: HashMap<String, Value>,
    code_systems: HashMap<String, Value>,
    /// Other conformance resources (OperationDefinition, CompartmentDefinition) by type then id.
    others: HashMap<String, Vec<Value>>,
    code_cache: std::sync::Mutex<HashMap<String, Option<std::sync::Arc<HashSet<(String, String)>>>>>,
}

/// The process-wide definitions, parsed on first use (about 11 MB of JSON).
/// SearchParameters the server's users added (active `SearchParameter` resources), on top of
/// the official ones. Leaked on purpose: callers hold `&'static` references, and a set only
/// changes when someone edits a SearchParameter.
static CUSTOM_SEARCH_PARAMS: std::sync::RwLock<Vec<&'static SearchParameter>> = std::sync::RwLock::new(Vec::new());
static CUSTOM_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Replaces the custom SearchParameters; returns whether the set changed (then caches built
/// from the parameters, such as the index extraction plans, must be rebuilt).
pub fn set_custom_search_params(mut params: Vec<SearchParameter>) -> bool {
    use std::sync::atomic::Ordering;
    let key = |sp: &SearchParameter| serde_json::to_string(&(&sp.url, &sp.code, &sp.base, &sp.param_type, &sp.expression, &sp.target)).unwrap_or_default();
    params.sort_by_key(|sp| key(sp));
    let Ok(mut custom) = CUSTOM_SEARCH_PARAMS.write() else { return false };
    let same = custom.len() == params.len() && custom.iter().zip(&params).all(|(a, b)| key(a) == key(b));
    if same {
        return false;
    }
    *custom = params.into_iter().map(|sp| &*Box::leak(Box::new(sp))).collect();
    CUSTOM_GENERATION.fetch_add(1, Ordering::SeqCst);
    true
}

/// Whether `sp` is one of the custom SearchParameters (not an official one).
pub fn is_custom(sp: &SearchParameter) -> bool {
    CUSTOM_SEARCH_PARAMS.read().is_ok_and(|custom| custom.iter().any(|c| std::ptr::eq(*c, sp)))
}

/// Changes whenever the custom SearchParameters change.
pub fn search_params_generation() -> u64 {
    CUSTOM_GENERATION.load(std::sync::atomic::Ordering::SeqCst)
}

pub fn definitions() -> &'static Definitions {
    static DEFS: OnceLock<Definitions> = OnceLock::new();
    DEFS.get_or_init(|| Definitions::load().unwrap_or_else(|e| panic!("embedded FHIR definitions are corrupt: {e}")))
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::with_capacity(bytes.len() * 8);
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

#[derive(Deserialize)]
struct Bundle {
    entry: Vec<Entry>,
}
#[derive(Deserialize)]
struct Entry {
    resource: Value,
}

fn entries(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let raw = gunzip(bytes).map_err(|e| e.to_string())?;
    let bundle: Bundle = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
    Ok(bundle.entry.into_iter().map(|e| e.resource).collect())
}

fn parse_sd(mut value: Value) -> Result<StructureDefinition, String> {
    let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let elements = value
        .get_mut("snapshot")
        .and_then(|s| s.get_mut("element"))
        .map(Value::take)
        .unwrap_or(Value::Array(vec![]));
    let elements: Vec<ElementDefinition> = serde_json::from_value(elements).map_err(|e| e.to_string())?;
    Ok(StructureDefinition {
        url: get(&value, "url").unwrap_or_default(),
        id: get(&value, "id").unwrap_or_default(),
        name: get(&value, "name").unwrap_or_default(),
        kind: get(&value, "kind").unwrap_or_default(),
        is_abstract: value.get("abstract").and_then(Value::as_bool).unwrap_or(false),
        type_name: get(&value, "type").unwrap_or_default(),
        derivation: get(&value, "derivation"),
        base_definition: get(&value, "baseDefinition"),
        elements,
    })
}

impl Definitions {
    fn load() -> Result<Self, String> {
        let mut structures = HashMap::new();
        let mut by_url = HashMap::new();
        let mut others: HashMap<String, Vec<Value>> = HashMap::new();
        for file in [PROFILES_TYPES, PROFILES_RESOURCES, PROFILES_OTHERS] {
            for resource in entries(file)? {
                let rt = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
                if rt == "StructureDefinition" {
                    let sd = parse_sd(resource)?;
                    if sd.derivation.as_deref() != Some("constraint") {
                        structures.insert(sd.type_name.clone(), sd.clone());
                    }
                    by_url.insert(sd.url.clone(), sd);
                } else {
                    others.entry(rt).or_default().push(resource);
                }
            }
        }
        let mut resource_types: Vec<String> = structures
            .values()
            .filter(|sd| sd.kind == "resource" && !sd.is_abstract)
            .map(|sd| sd.type_name.clone())
            .collect();
        resource_types.sort();

        let mut search_params: HashMap<String, Vec<SearchParameter>> = HashMap::new();
        let server: Vec<Value> = serde_json::from_str(SERVER_SEARCH_PARAMETERS).map_err(|e| e.to_string())?;
        for resource in entries(SEARCH_PARAMETERS)?.into_iter().chain(server) {
            let sp: SearchParameter = serde_json::from_value(resource).map_err(|e| e.to_string())?;
            for base in &sp.base {
                search_params.entry(base.clone()).or_default().push(sp.clone());
            }
        }

        let mut value_sets = HashMap::new();
        let mut code_systems = HashMap::new();
        for resource in entries(VALUESETS)? {
            let url = resource.get("url").and_then(Value::as_str).unwrap_or_default().to_owned();
            match resource.get("resourceType").and_then(Value::as_str) {
                Some("ValueSet") => {
                    value_sets.insert(url, resource);
                }
                Some("CodeSystem") => {
                    code_systems.insert(url, resource);
                }
                _ => {}
            }
        }
        Ok(Definitions {
            structures,
            by_url,
            resource_types,
            search_params,
            value_sets,
            code_systems,
            others,
            code_cache: Default::default(),
        })
    }

    /// Names of all concrete R4 resource types, sorted.
    pub fn resource_types(&self) -> &[String] {
        &self.resource_types
    }

    /// Whether `name` is a concrete R4 resource type (case-sensitive, as in URLs).
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types.binary_search_by(|t| t.as_str().cmp(name)).is_ok()
    }

    /// The base definition of a resource or data type by type name (`Patient`, `HumanName`, `string`).
    pub fn structure(&self, type_name: &str) -> Option<&StructureDefinition> {
        self.structures.get(type_name)
    }

    /// Any StructureDefinition (including profiles) by canonical URL; a `|version` suffix is ignored.
    pub fn structure_by_url(&self, url: &str) -> Option<&StructureDefinition> {
        let url = url.split('|').next().unwrap_or(url);
        self.by_url.get(url)
    }

    /// Search parameters that apply to `resource_type`, including the common `Resource` and
    /// `DomainResource` ones, and the server's own (see [`set_custom_search_params`]), which
    /// replace an official parameter with the same code.
    pub fn search_params(&self, resource_type: &str) -> Vec<&SearchParameter> {
        let mut out: Vec<&SearchParameter> = Vec::new();
        let bases = [resource_type, "DomainResource", "Resource"];
        for base in bases {
            if let Some(list) = self.search_params.get(base) {
                out.extend(list.iter());
            }
        }
        if let Ok(custom) = CUSTOM_SEARCH_PARAMS.read() {
            for sp in custom.iter().filter(|sp| sp.base.iter().any(|b| bases.contains(&b.as_str()))) {
                out.retain(|o| o.code != sp.code);
                out.push(*sp);
            }
        }
        out
    }

    /// The search parameter named `code` for `resource_type`.
    pub fn search_param(&self, resource_type: &str, code: &str) -> Option<&SearchParameter> {
        self.search_params(resource_type).into_iter().find(|sp| sp.code == code)
    }

    /// Conformance resources of another kind (OperationDefinition, CompartmentDefinition).
    pub fn conformance_resources(&self, resource_type: &str) -> &[Value] {
        self.others.get(resource_type).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The CompartmentDefinition for `Patient`, `Encounter`, `RelatedPerson`, `Practitioner` or `Device`.
    pub fn compartment(&self, code: &str) -> Option<&Value> {
        self.conformance_resources("CompartmentDefinition")
            .iter()
            .find(|c| c.get("code").and_then(Value::as_str) == Some(code))
    }

    /// Every resource type a CompartmentDefinition lists, with the search parameters that put a
    /// resource of that type into the compartment (empty: the type is never a member).
    pub fn compartment_members(&self, code: &str) -> Vec<(String, Vec<String>)> {
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
        };
        self.compartment(code)
            .and_then(|c| c.get("resource"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|entry| Some((entry.get("code")?.as_str()?.to_owned(), strings(entry.get("param")))))
            .collect()
    }

    /// A ValueSet by canonical URL (a `|version` suffix is ignored).
    pub fn value_set(&self, url: &str) -> Option<&Value> {
        self.value_sets.get(url.split('|').next().unwrap_or(url))
    }

    /// A CodeSystem by canonical URL.
    pub fn code_system(&self, url: &str) -> Option<&Value> {
        self.code_systems.get(url)
    }

    /// The `(system, code)` pairs of a value set when it can be enumerated from the loaded
    /// definitions (includes of whole code systems, explicit concept lists, nested value sets).
    /// `None` when the value set is unknown or refers to an external or filtered terminology,
    /// in which case callers must not reject codes they cannot check.
    pub fn value_set_codes(&self, url: &str) -> Option<std::sync::Arc<HashSet<(String, String)>>> {
        let key = url.split('|').next().unwrap_or(url).to_owned();
        if let Ok(cache) = self.code_cache.lock() {
            if let Some(hit) = cache.get(&key) {
                return hit.clone();
            }
        }
        let computed = self.expand(&key, 0).map(std::sync::Arc::new);
        if let Ok(mut cache) = self.code_cache.lock() {
            cache.insert(key, computed.clone());
        }
        computed
    }

    fn expand(&self, url: &str, depth: u32) -> Option<HashSet<(String, String)>> {
        if depth > 8 {
            return None;
        }
        let vs = self.value_set(url)?;
        let compose = vs.get("compose")?;
        if compose.get("exclude").is_some() {
            return None;
        }
        let mut out = HashSet::new();
        for include in compose.get("include")?.as_array()? {
            if include.get("filter").is_some() {
                return None;
            }
            if let Some(nested) = include.get("valueSet").and_then(Value::as_array) {
                for n in nested {
                    out.extend(self.expand(n.as_str()?, depth + 1)?);
                }
            }
            let Some(system) = include.get("system").and_then(Value::as_str) else { continue };
            if let Some(concepts) = include.get("concept").and_then(Value::as_array) {
                for c in concepts {
                    out.insert((system.to_owned(), c.get("code")?.as_str()?.to_owned()));
                }
            } else {
                let cs = self.code_system(system)?;
                if cs.get("content").and_then(Value::as_str) != Some("complete") {
                    return None;
                }
                collect_concepts(system, cs.get("concept")?, &mut out);
            }
        }
        Some(out)
    }
}

fn collect_concepts(system: &str, concepts: &Value, out: &mut HashSet<(String, String)>) {
    for c in concepts.as_array().into_iter().flatten() {
        if let Some(code) = c.get("code").and_then(Value::as_str) {
            out.insert((system.to_owned(), code.to_owned()));
        }
        if let Some(nested) = c.get("concept") {
            collect_concepts(system, nested, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_all_r4_resource_types() {
        let defs = definitions();
        assert_eq!(defs.resource_types().len(), 146, "R4 4.0.1 defines 146 concrete resource types");
        assert!(defs.is_resource_type("Patient"));
        assert!(!defs.is_resource_type("SubscriptionStatus"), "R4B additions are trimmed");
        assert!(!defs.is_resource_type("DomainResource"));
    }

    #[test]
    fn knows_elements_search_parameters_and_value_sets() {
        let defs = definitions();
        let patient = defs.structure("Patient").unwrap();
        assert_eq!(patient.element("Patient.gender").unwrap().binding.as_ref().unwrap().strength, "required");
        assert!(defs.search_param("Patient", "birthdate").is_some());
        assert!(defs.search_param("Patient", "_id").is_some());
        let genders = defs.value_set_codes("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1").unwrap();
        assert!(genders.contains(&("http://hl7.org/fhir/administrative-gender".into(), "female".into())));
        assert!(defs.compartment("Patient").is_some());
    }
}
