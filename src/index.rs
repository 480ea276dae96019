//! Search index values of a resource: what the index tables (`search_string`, `search_token`,
//! … in migrations/0001_baseline.sql) hold. Each SearchParameter of the type is evaluated with FHIRPath
//! ([`crate::fhirpath`]) and its results become typed values the way search.html compares
//! them: strings folded for prefix search, tokens as system and code, references as local
//! `Type/id` or the absolute URL, dates as the texts PostgreSQL turns into ranges (with the
//! same function that ranges search values), numbers and quantities with their units.
//!
//! The store writes these rows in the same statement or transaction as the resource
//! ([`rows_json`] → `search_index_replace`), so the index is never behind the data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::fhir::definitions::definitions;
use crate::fhirpath::{Expression, Item};
use crate::search::normalize;

/// One indexed value of one search parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `normalized` for default and `:contains` search, `exact` for `:exact`.
    String { normalized: String, exact: String },
    Token { system: Option<String>, code: String },
    /// A local reference as `Type/id` (relative to this server), anything else as written.
    Reference(String),
    /// A date, dateTime or instant (`start == end`), or a Period's ends (`None` = open).
    Date { start: Option<String>, end: Option<String> },
    Number(f64),
    Quantity { value: f64, system: Option<String>, code: Option<String>, unit: Option<String> },
    Uri(String),
}

/// A value of a named parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub param: String,
    pub value: IndexValue,
}

/// Where a parameter's values come from.
enum Source {
    /// A plain path (`Observation.subject`, `Patient.name.given`, a choice element
    /// `Observation.effective`), walked directly in the JSON: most expressions are paths, and
    /// a walk costs a fraction of an engine evaluation.
    Path(Vec<String>),
    /// Anything else, through the FHIRPath engine (with its text, for [`param_paths`]).
    Engine(Expression, String),
}

/// Where a parameter's values come from, as [`crate::crypto::policy`] inspects it.
pub enum ParamSource {
    /// The element names of a plain path below the resource.
    Path(Vec<String>),
    /// A FHIRPath expression's text.
    Expression(String),
}

/// The sources of `resource_type`'s indexed parameter `code` (`None`: not indexed).
pub fn param_paths(resource_type: &str, code: &str) -> Option<Vec<ParamSource>> {
    let plan = plan(resource_type);
    let (_, _, sources) = plan.iter().find(|(c, _, _)| c == code)?;
    Some(
        sources
            .iter()
            .map(|(source, _)| match source {
                Source::Path(p) => ParamSource::Path(p.clone()),
                Source::Engine(_, text) => ParamSource::Expression(text.clone()),
            })
            .collect(),
    )
}

/// How one parameter's values are found: sources, each with the resource type its references
/// must name (`subject.where(resolve() is Patient)` → `subject` and `Patient`).
type Sources = Vec<(Source, Option<String>)>;

/// A type's parameters (code, type, sources), built once per type.
type Plan = Vec<(String, String, Sources)>;

/// Plans per type, for one generation of the custom SearchParameters.
type PlanCache = (u64, HashMap<String, Arc<Plan>>);

/// The AuditEvent parameters with index rows: what auditors and patients search by (who, which
/// record, which patient, when). The audit trail writes an AuditEvent for every request, so
/// each index row is paid on every read of the API; the other AuditEvent parameters (subtype,
/// action, outcome, address, …) are answered from the documents, after these have narrowed
/// the search (see README "AuditEvent search"). Custom SearchParameters are indexed as always.
const AUDIT_EVENT_INDEXED: &[&str] = &["agent", "date", "entity", "patient"];

fn plan(resource_type: &str) -> Arc<Plan> {
    static PLANS: OnceLock<Mutex<PlanCache>> = OnceLock::new();
    let plans = PLANS.get_or_init(Default::default);
    let generation = crate::fhir::definitions::search_params_generation();
    if let Ok(mut m) = plans.lock() {
        if m.0 != generation {
            *m = (generation, HashMap::new());
        }
        if let Some(p) = m.1.get(resource_type) {
            return p.clone();
        }
    }
    let built: Plan = definitions()
        .search_params(resource_type)
        .into_iter()
        .filter(|sp| !matches!(sp.param_type.as_str(), "composite" | "special"))
        .filter(|sp| resource_type != "AuditEvent" || AUDIT_EVENT_INDEXED.contains(&sp.code.as_str()) || crate::fhir::definitions::is_custom(sp))
        .filter_map(|sp| {
            let expression = sp.expression.as_deref()?;
            // Union expressions name many types (`Patient.name | Practitioner.name`); only the
            // parts for this type (or Resource/DomainResource) apply.
            let parts: Vec<String> = expression
                .split(" | ")
                .map(str::trim)
                .filter(|p| {
                    let head = p.trim_start_matches('(').split(['.', ' ']).next().unwrap_or("");
                    head == resource_type || head == "Resource" || head == "DomainResource"
                })
                .filter_map(|p| if sp.param_type == "quantity" { quantity_part(p) } else { Some(p.to_owned()) })
                .collect();
            // `resolve()` needs the target; the reference's own type says what it is, so the
            // path is evaluated without the filter and the type checked on the reference.
            let mut sources: Sources = vec![];
            let mut engine_parts = vec![];
            for (part, target) in parts.into_iter().map(|p| split_resolve(&p)) {
                match (plain_path(&part), target) {
                    (Some(path), target) => sources.push((Source::Path(path), target)),
                    (None, Some(target)) => sources.push((Source::Engine(Expression::parse(&part).ok()?, part.clone()), Some(target))),
                    (None, None) => engine_parts.push(part),
                }
            }
            if !engine_parts.is_empty() {
                let text = engine_parts.join(" | ");
                sources.push((Source::Engine(Expression::parse(&text).ok()?, text), None));
            }
            (!sources.is_empty()).then(|| (sp.code.clone(), sp.param_type.clone(), sources))
        })
        .collect();
    let built = Arc::new(built);
    if let Ok(mut m) = plans.lock()
        && m.0 == generation
    {
        m.1.insert(resource_type.to_owned(), built.clone());
    }
    built
}

/// The element names of a plain path expression (`Patient.name.given` → `name`, `given`;
/// `(Observation.effective)` → `effective`), or `None` when it needs the engine.
fn plain_path(part: &str) -> Option<Vec<String>> {
    let p = part.trim();
    let p = if p.starts_with('(') && p.ends_with(')') { p[1..p.len() - 1].trim() } else { p };
    let mut segments = p.split('.');
    let head = segments.next()?;
    if !head.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let rest: Vec<String> = segments.map(str::to_owned).collect();
    let plain = !rest.is_empty() && rest.iter().all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()));
    plain.then_some(rest)
}

/// Walks `path` from `value`, flattening arrays (FHIRPath's navigation), into `out`. A name
/// missing from an object may be a choice element (`effective` → `effectiveDateTime`): its one
/// key spelled name + a FHIR type name is taken.
fn walk<'v>(value: &'v Value, path: &[String], out: &mut Vec<&'v Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| walk(v, path, out)),
        Value::Object(map) => {
            let Some((first, rest)) = path.split_first() else {
                out.push(value);
                return;
            };
            let next = map.get(first.as_str()).or_else(|| {
                map.iter()
                    .find(|(k, _)| k.strip_prefix(first.as_str()).is_some_and(is_type_suffix))
                    .map(|(_, v)| v)
            });
            if let Some(next) = next {
                walk(next, rest, out);
            }
        }
        _ if path.is_empty() => out.push(value),
        _ => {}
    }
}

/// Whether `suffix` is a FHIR data type spelled as a choice suffix (`Quantity`, `DateTime`).
fn is_type_suffix(suffix: &str) -> bool {
    let mut chars = suffix.chars();
    let Some(first) = chars.next().filter(char::is_ascii_uppercase) else { return false };
    let defs = definitions();
    let url = |name: &str| format!("http://hl7.org/fhir/StructureDefinition/{name}");
    let lower: String = first.to_ascii_lowercase().to_string() + chars.as_str();
    defs.structure_by_url(&url(suffix)).or_else(|| defs.structure_by_url(&url(&lower))).is_some_and(|sd| sd.kind != "resource")
}

/// A JSON value as the engine would return it.
fn item_of(value: &Value) -> Option<Item> {
    Some(match value {
        Value::String(s) => Item::String(s.clone()),
        Value::Bool(b) => Item::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Item::Integer(i),
            None => Item::Decimal(n.to_string()),
        },
        Value::Object(_) => Item::Element(value.clone()),
        _ => return None,
    })
}

/// `X.subject.where(resolve() is Patient)` → (`X.subject`, `Patient`); other parts unchanged.
fn split_resolve(part: &str) -> (String, Option<String>) {
    let p = part.trim();
    let inner = if p.starts_with('(') && p.ends_with(')') { &p[1..p.len() - 1] } else { p };
    if let Some((path, rest)) = inner.rsplit_once(".where(resolve() is ")
        && let Some(target) = rest.strip_suffix(')')
        && target.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return (path.to_owned(), Some(target.to_owned()));
    }
    (p.to_owned(), None)
}

/// The resource type a reference names (`Patient/1`, `<any base>/Patient/1`, `Patient/1/_history/2`).
fn reference_type(reference: &str) -> Option<&str> {
    let path = reference.split(['?', '#']).next()?;
    let segments: Vec<&str> = path.split('/').collect();
    let n = segments.len();
    let at = if n >= 4 && segments[n - 2] == "_history" { n - 4 } else { n.checked_sub(2)? };
    segments.get(at).copied().filter(|t| t.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
}

/// A quantity parameter's path with the choice cast spelled as the JSON element
/// (`Observation.value as Quantity` → `Observation.valueQuantity`): the engine turns a cast
/// Quantity into a FHIRPath quantity and drops its `system` and `code`, which search needs.
/// Parts for other types (`as SampledData`) index nothing.
fn quantity_part(part: &str) -> Option<String> {
    let p = part.trim().trim_start_matches('(').trim_end_matches(')').trim();
    for suffix in [" as Quantity", ".as(Quantity)", ".ofType(Quantity)"] {
        if let Some(element) = p.strip_suffix(suffix) {
            return Some(format!("{element}Quantity"));
        }
    }
    (!p.contains(" as ") && !p.contains(".as(") && !p.contains(".ofType(")).then(|| p.to_owned())
}

/// Every index value of a resource. `base` turns absolute references to this server into local
/// `Type/id`. Expressions that fail to evaluate contribute nothing.
pub fn extract(resource_type: &str, resource: &Value, base: &str) -> Vec<IndexEntry> {
    extract_where(resource_type, resource, base, |_| true)
}

/// The references a resource makes at the parameters `params` (local ones as `Type/id`):
/// what compartment membership is decided by.
pub fn references_at(resource_type: &str, resource: &Value, base: &str, params: &[String]) -> Vec<String> {
    extract_where(resource_type, resource, base, |p| params.iter().any(|w| w == p))
        .into_iter()
        .filter_map(|e| match e.value {
            IndexValue::Reference(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// [`extract`] for the parameters `wanted` accepts.
fn extract_where(resource_type: &str, resource: &Value, base: &str, wanted: impl Fn(&str) -> bool) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    let mut context = None;
    let mut seen = Distinct::default();
    for (param, param_type, sources) in plan(resource_type).iter().filter(|(p, _, _)| wanted(p)) {
        for (source, target) in sources {
            let items = match source {
                Source::Path(path) => {
                    let mut found = vec![];
                    walk(resource, path, &mut found);
                    found.into_iter().filter_map(item_of).collect()
                }
                Source::Engine(expression, _) => {
                    let context = context.get_or_insert_with(|| crate::fhirpath::Context::new(resource));
                    let Ok(items) = expression.evaluate_in(context) else { continue };
                    items
                }
            };
            for item in items {
                for value in values(param_type, item, base) {
                    if let (Some(target), IndexValue::Reference(r)) = (target, &value)
                        && reference_type(r) != Some(target.as_str())
                    {
                        continue;
                    }
                    let entry = IndexEntry { param: param.clone(), value };
                    if !seen.is_new(&out, &entry) {
                        continue;
                    }
                    out.push(entry);
                }
            }
        }
    }
    out
}

/// Whether `resource_type`'s parameter `code` has rows in the index tables (its expression
/// parsed); search answers the others from the JSON documents.
pub fn is_indexed(resource_type: &str, code: &str) -> bool {
    plan(resource_type).iter().any(|(c, _, _)| c == code)
}

/// A fingerprint of what the index holds for every type: when it changes (new definitions, a
/// new extraction rule), the rows of existing resources are stale until `ironfhir reindex`.
pub fn definitions_hash() -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(EXTRACTION_VERSION.to_le_bytes());
    for rt in definitions().resource_types() {
        for (code, param_type, _) in plan(rt).iter() {
            hasher.update(rt.as_bytes());
            hasher.update(code.as_bytes());
            hasher.update(param_type.as_bytes());
            // A PHI policy that protects other parameters needs other (blind or plain) rows.
            hasher.update([u8::from(crate::crypto::policy::is_protected(rt, code))]);
        }
        for sp in definitions().search_params(rt) {
            hasher.update(sp.expression.as_deref().unwrap_or("").as_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

/// Bumped whenever `values` changes what it extracts, so existing rows get rebuilt.
const EXTRACTION_VERSION: u32 = 5;

/// The index rows of resources as the JSON `search_index_replace` takes: one object per value,
/// `k` the table (`s`tring, `t`oken, `r`eference, `d`ate, `n`umber/quantity, `u`ri) and
/// `a`–`d`/`n` its columns. `resources` are (type, id, content); `base` makes absolute
/// references to this server local.
pub fn rows_json<'a>(resources: impl IntoIterator<Item = (&'a str, &'a str, &'a Value)>, base: &str) -> Value {
    Value::Array(resources.into_iter().flat_map(|(rt, id, content)| rows(rt, id, content, base)).collect())
}

/// An instant as PostgreSQL reads a timestamptz. The end of 9999-12-31 is the first instant of
/// year 10000, which chrono writes `+10000-…` and PostgreSQL refuses (every write holding that
/// date was a 500): the sign goes. PostgreSQL has no year 0, so earlier instants are the
/// beginning of time.
fn instant_text(t: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::Datelike;
    if t.year() < 1 {
        return "-infinity".into();
    }
    let text = t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    text.strip_prefix('+').map(str::to_owned).unwrap_or(text)
}

/// One index row of a resource, before it is given its type and id: references and dates typed
/// (the audit projection inserts those as columns), other kinds with search_index_replace's
/// columns.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexRow {
    /// A blind row (`search_blind`): the keyed hash of one form of a protected value, in hex.
    Blind { param: String, hash: String },
    /// A `search_reference` row.
    Reference { param: String, target: String },
    /// A `search_date` row: the instants the value covers as PostgreSQL reads a timestamptz,
    /// `-infinity`/`infinity` when open.
    Date { param: String, low: String, high: String },
    /// A string (`s`), token (`t`), number or quantity (`n`) or uri (`u`) row.
    Column { param: String, kind: &'static str, a: Option<String>, b: Option<String>, c: Option<String>, n: Option<f64> },
}

impl IndexRow {
    /// The row as one object of search_index_replace's JSON (see [`rows_json`]).
    pub fn to_json(&self, rt: &str, id: &str) -> Value {
        match self {
            IndexRow::Blind { param, hash } => json!({"t": rt, "i": id, "p": param, "k": "b", "a": hash}),
            IndexRow::Reference { param, target } => json!({"t": rt, "i": id, "p": param, "k": "r", "a": target, "b": null, "c": null, "n": null}),
            IndexRow::Date { param, low, high } => json!({"t": rt, "i": id, "p": param, "k": "d", "c": low, "d": high}),
            IndexRow::Column { param, kind, a, b, c, n } => json!({"t": rt, "i": id, "p": param, "k": kind, "a": a, "b": b, "c": c, "n": n}),
        }
    }
}

/// The longest token code or system, reference target or uri stored verbatim in the index
/// tables. PostgreSQL refuses a btree entry over 2704 bytes (a 3,000-character identifier made
/// the whole write fail with 500); longer values are stored as [`index_key`]s.
pub const MAX_VERBATIM_KEY_BYTES: usize = 1000;

/// How much of a longer value its key keeps before the hash, so prefix searches (`:below`)
/// of up to this many bytes still match it.
pub const KEY_PREFIX_BYTES: usize = 900;

/// The form in which an exact-match index column holds `value`, and in which a search looks
/// it up: the value itself up to [`MAX_VERBATIM_KEY_BYTES`], otherwise its first
/// [`KEY_PREFIX_BYTES`] (at a character boundary), U+0001 and the SHA-256 of the whole value.
/// Equal values give equal keys and different values different keys (the hash), so exact
/// matching keeps its meaning; no stored or searched string holds U+0001 (control characters
/// are refused at the edge), so a short value never equals a long value's key.
pub fn index_key(value: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    if value.len() <= MAX_VERBATIM_KEY_BYTES {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut end = KEY_PREFIX_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let digest = sha2::Sha256::digest(value.as_bytes());
    std::borrow::Cow::Owned(format!("{}\u{1}{}", &value[..end], hex::encode(digest)))
}

/// The index rows of one resource (see [`rows_json`]).
pub fn rows(rt: &str, id: &str, content: &Value, base: &str) -> Vec<Value> {
    index_rows(rt, content, base).iter().map(|row| row.to_json(rt, id)).collect()
}

/// The index rows of one resource of type `rt`. Parameters that read sealed elements
/// ([`crate::crypto::policy::is_protected`]) get blind rows instead of their values.
pub fn index_rows(rt: &str, content: &Value, base: &str) -> Vec<IndexRow> {
    let mut rows = Vec::new();
    for entry in extract(rt, content, base) {
        if crate::crypto::policy::is_protected(rt, &entry.param) {
            for hash in crate::crypto::blind::value_hashes(rt, &entry.param, &entry.value) {
                rows.push(IndexRow::Blind { param: entry.param.clone(), hash });
            }
            continue;
        }
        let param = entry.param;
        let (kind, a, b, c, n) = match entry.value {
            IndexValue::String { normalized, exact } => ("s", Some(normalized), Some(exact), None, None),
            IndexValue::Token { system, code } => ("t", Some(index_key(&code).into_owned()), system.map(|s| index_key(&s).into_owned()), None, None),
            IndexValue::Reference(target) => {
                rows.push(IndexRow::Reference { param, target: index_key(&target).into_owned() });
                continue;
            }
            IndexValue::Date { start, end } => {
                // The instants the value covers, computed here rather than by the SQL
                // function fhir_text_range per row (same rules: search::params::date_bounds).
                let low = start.as_deref().and_then(crate::search::params::date_bounds).map(|(low, _)| instant_text(low));
                let high = end.as_deref().and_then(crate::search::params::date_bounds).map(|(_, high)| instant_text(high));
                if low.is_none() && high.is_none() {
                    continue;
                }
                let (low, high) = (low.unwrap_or_else(|| "-infinity".into()), high.unwrap_or_else(|| "infinity".into()));
                rows.push(IndexRow::Date { param, low, high });
                continue;
            }
            IndexValue::Number(n) => ("n", None, None, None, Some(n)),
            IndexValue::Quantity { value, system, code, unit } => ("n", system, code, unit, Some(value)),
            IndexValue::Uri(uri) => ("u", Some(index_key(&uri).into_owned()), None, None, None),
        };
        rows.push(IndexRow::Column { param, kind, a, b, c, n });
    }
    rows
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn string_value(s: &str) -> IndexValue {
    IndexValue::String { normalized: normalize(s), exact: s.to_owned() }
}

/// The index values of one FHIRPath result item for a parameter type.
fn values(param_type: &str, item: Item, base: &str) -> Vec<IndexValue> {
    match (param_type, item) {
        ("string", Item::String(s)) => vec![string_value(&s)],
        ("string", Item::Element(v)) => {
            // HumanName and Address: every part is searchable.
            let mut out = vec![];
            for key in ["family", "text", "city", "district", "state", "postalCode", "country"] {
                out.extend(text(&v, key).map(|s| string_value(&s)));
            }
            for key in ["given", "prefix", "suffix", "line"] {
                for s in v.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                    out.push(string_value(s));
                }
            }
            out
        }
        // A bare code's system is implied by its binding: recorded as "" (not NULL, which means
        // "a Coding without system"), so `system|code` matches it and `|code` does not.
        ("token", Item::String(code)) => vec![IndexValue::Token { system: Some(String::new()), code }],
        ("token", Item::Boolean(b)) => vec![IndexValue::Token { system: Some(String::new()), code: b.to_string() }],
        ("token", Item::Element(v)) => {
            let coding = |c: &Value| text(c, "code").map(|code| IndexValue::Token { system: text(c, "system"), code });
            if let Some(codings) = v.get("coding").and_then(Value::as_array) {
                codings.iter().filter_map(coding).collect()
            } else if v.get("code").is_some() {
                coding(&v).into_iter().collect()
            } else {
                // Identifier (system|value) and ContactPoint (value).
                let system = if v.get("system").and_then(Value::as_str).is_some_and(|s| !s.contains(':')) {
                    None // ContactPoint.system is phone/email…, not a code system
                } else {
                    text(&v, "system")
                };
                text(&v, "value").map(|code| IndexValue::Token { system, code }).into_iter().collect()
            }
        }
        ("reference", Item::Element(v)) => text(&v, "reference").map(|r| IndexValue::Reference(local(&r, base))).into_iter().collect(),
        ("reference", Item::String(s)) => vec![IndexValue::Reference(local(&s, base))],
        ("uri", Item::String(s)) => vec![IndexValue::Uri(s)],
        ("date", Item::Date(s) | Item::DateTime(s) | Item::String(s)) => vec![IndexValue::Date { start: Some(s.clone()), end: Some(s) }],
        ("date", Item::Element(v)) => {
            // Period: open ends reach the ends of time; Timing: its events.
            if v.get("start").is_some() || v.get("end").is_some() {
                vec![IndexValue::Date { start: text(&v, "start"), end: text(&v, "end") }]
            } else {
                v.get("event")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|s| IndexValue::Date { start: Some(s.to_owned()), end: Some(s.to_owned()) })
                    .collect()
            }
        }
        ("number", Item::Integer(i)) => vec![IndexValue::Number(i as f64)],
        ("number", Item::Decimal(d)) => d.parse().map(IndexValue::Number).into_iter().collect(),
        ("quantity", Item::Quantity { value, unit }) => {
            value.parse().map(|value| IndexValue::Quantity { value, system: None, code: unit, unit: None }).into_iter().collect()
        }
        ("quantity", Item::Element(v)) => {
            let Some(value) = v.get("value").and_then(Value::as_f64) else { return vec![] };
            vec![IndexValue::Quantity { value, system: text(&v, "system"), code: text(&v, "code"), unit: text(&v, "unit") }]
        }
        _ => vec![],
    }
}

/// `<base>/Type/id` → `Type/id`; other references unchanged.
fn local(reference: &str, base: &str) -> String {
    crate::fhir::types::local_reference(reference, base).to_owned()
}

/// De-duplicates index entries in linear time whatever a resource holds (a Patient with
/// 20,000 names was 12 s to index with a list scan per value): small resources compare with
/// the few entries so far, and past [`Distinct::LIST_LIMIT`] entries a set of their text forms
/// takes over (index values hold floats, so they are neither `Hash` nor `Eq`).
#[derive(Default)]
struct Distinct {
    keys: Option<std::collections::HashSet<String>>,
}

impl Distinct {
    const LIST_LIMIT: usize = 64;

    /// Whether `entry` is not in `out` yet (and remembers it when it is new).
    fn is_new(&mut self, out: &[IndexEntry], entry: &IndexEntry) -> bool {
        if self.keys.is_none() && out.len() < Self::LIST_LIMIT {
            return !out.contains(entry);
        }
        let keys = self.keys.get_or_insert_with(|| out.iter().map(|e| format!("{e:?}")).collect());
        keys.insert(format!("{entry:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;


    fn params<'a>(entries: &'a [IndexEntry], name: &str) -> Vec<&'a IndexValue> {
        entries.iter().filter(|e| e.param == name).map(|e| &e.value).collect()
    }

    #[test]
    fn a_patient_yields_folded_names_tokens_references_and_date_ranges() {
        let patient = json!({"resourceType": "Patient", "id": "p1", "active": true, "gender": "female",
            "name": [{"family": "Müller", "given": ["Zoë", "Ann"]}],
            "identifier": [{"system": "urn:example:mrn", "value": "MRN-1"}],
            "telecom": [{"system": "phone", "value": "+00 1234", "use": "home"}],
            "birthDate": "1970-05",
            "managingOrganization": {"reference": "http://fhir.example/fhir/Organization/o1"}});
        let entries = extract("Patient", &patient, "http://fhir.example/fhir");
        let family = params(&entries, "family");
        assert_eq!(family, vec![&IndexValue::String { normalized: "muller".into(), exact: "Müller".into() }]);
        assert!(params(&entries, "name").contains(&&IndexValue::String { normalized: "zoe".into(), exact: "Zoë".into() }));
        assert_eq!(params(&entries, "identifier"), vec![&IndexValue::Token { system: Some("urn:example:mrn".into()), code: "MRN-1".into() }]);
        assert_eq!(params(&entries, "phone"), vec![&IndexValue::Token { system: None, code: "+00 1234".into() }]);
        assert_eq!(params(&entries, "gender"), vec![&IndexValue::Token { system: Some(String::new()), code: "female".into() }]);
        assert_eq!(params(&entries, "active"), vec![&IndexValue::Token { system: Some(String::new()), code: "true".into() }]);
        assert_eq!(params(&entries, "organization"), vec![&IndexValue::Reference("Organization/o1".into())]);
        assert_eq!(params(&entries, "birthdate"), vec![&IndexValue::Date { start: Some("1970-05".into()), end: Some("1970-05".into()) }]);
    }

    #[test]
    fn an_observation_yields_codings_quantities_and_periods() {
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
            "subject": {"reference": "Patient/p1"},
            "effectivePeriod": {"start": "2024-01-01T10:00:00Z"},
            "valueQuantity": {"value": 72.5, "unit": "beats/min", "system": "http://unitsofmeasure.org", "code": "/min"}});
        let entries = extract("Observation", &obs, "http://x/fhir");
        assert_eq!(params(&entries, "code"), vec![&IndexValue::Token { system: Some("http://loinc.org".into()), code: "8867-4".into() }]);
        assert_eq!(params(&entries, "subject"), vec![&IndexValue::Reference("Patient/p1".into())]);
        assert_eq!(
            params(&entries, "value-quantity"),
            vec![&IndexValue::Quantity {
                value: 72.5,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("/min".into()),
                unit: Some("beats/min".into())
            }]
        );
        assert_eq!(
            params(&entries, "date"),
            vec![&IndexValue::Date { start: Some("2024-01-01T10:00:00Z".into()), end: None }],
            "an open period has no end"
        );
    }

    #[test]
    fn resolve_filters_keep_only_references_to_the_named_type() {
        let appointment = json!({"resourceType": "Appointment", "status": "booked", "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "http://x/fhir/Practitioner/d1"}, "status": "accepted"},
            {"actor": {"reference": "https://elsewhere.example/fhir/Practitioner/d2/_history/3"}, "status": "accepted"}]});
        let entries = extract("Appointment", &appointment, "http://x/fhir");
        assert_eq!(params(&entries, "patient"), vec![&IndexValue::Reference("Patient/p1".into())]);
        assert_eq!(
            params(&entries, "practitioner"),
            vec![
                &IndexValue::Reference("Practitioner/d1".into()),
                &IndexValue::Reference("https://elsewhere.example/fhir/Practitioner/d2/_history/3".into())
            ]
        );
        assert_eq!(params(&entries, "actor").len(), 3);
        assert_eq!(reference_type("urn:uuid:1234"), None);
        assert_eq!(reference_type("#contained"), None);
    }

    /// The direct JSON walk of plain paths must find exactly what the engine finds.
    #[test]
    fn plain_paths_walk_to_the_same_values_as_the_engine() {
        use std::io::Read;
        let mut text = String::new();
        flate2::read::GzDecoder::new(&include_bytes!("../demo/demo.ndjson.gz")[..]).read_to_string(&mut text).unwrap();
        let mut resources: Vec<Value> = text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
        for f in ["appointment-examplereq.json", "explanationofbenefit-example.json", "patient-container-example.json", "patient-name-extensions.json"] {
            let path = format!("{}/tests/fixtures/fhir-test-cases/r4/{f}", env!("CARGO_MANIFEST_DIR"));
            resources.push(serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap());
        }
        resources.push(json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "effectivePeriod": {"start": "2024-01-01"}, "valueQuantity": {"value": 1.50, "unit": "mg"},
            "component": [{"code": {"coding": [{"system": "s", "code": "c"}]}, "valueString": "v"}]}));
        resources.push(json!({"resourceType": "Patient", "deceasedBoolean": true, "multipleBirthInteger": 2, "birthDate": "1970"}));
        let (mut compared, mut paths) = (0, 0);
        for resource in &resources {
            let rt = resource["resourceType"].as_str().unwrap();
            for (code, param_type, sources) in plan(rt).iter() {
                for (source, _) in sources {
                    let Source::Path(path) = source else { continue };
                    paths += 1;
                    let expression = Expression::parse(&format!("{rt}.{}", path.join("."))).unwrap();
                    let by_engine: Vec<IndexValue> = expression.evaluate(resource).unwrap_or_default().into_iter().flat_map(|i| values(param_type, i, "http://x/fhir")).collect();
                    let mut found = vec![];
                    walk(resource, path, &mut found);
                    let by_walk: Vec<IndexValue> = found.into_iter().filter_map(item_of).flat_map(|i| values(param_type, i, "http://x/fhir")).collect();
                    // The engine types dates and decimals; compare what would be indexed.
                    let key = |v: &Vec<IndexValue>| { let mut k: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect(); k.sort(); k };
                    assert_eq!(key(&by_walk), key(&by_engine), "{rt}.{code} ({})", path.join("."));
                    compared += usize::from(!by_engine.is_empty());
                }
            }
        }
        assert!(compared > 200, "only {compared} of {paths} paths had values to compare");
    }

    #[test]
    fn the_official_search_parameters_parse_as_fhirpath() {
        let defs = definitions();
        let (mut total, mut planned) = (0, 0);
        for rt in defs.resource_types() {
            total += defs
                .search_params(rt)
                .iter()
                .filter(|sp| sp.expression.is_some() && !matches!(sp.param_type.as_str(), "composite" | "special"))
                .count();
            planned += plan(rt).len();
            // Every plan evaluates on a minimal resource without panicking.
            let _ = extract(rt, &json!({"resourceType": rt, "id": "x"}), "http://x/fhir");
        }
        println!("{planned} of {total} (type, parameter) expressions parse");
        assert!(planned * 100 >= total * 95, "only {planned} of {total} parse");
    }

    #[test]
    fn long_values_get_keys_that_fit_an_index_and_tell_values_apart() {
        let short = "http://loinc.org";
        assert_eq!(super::index_key(short), short);
        let long: String = "é".repeat(700); // 1,400 bytes, a char boundary falls mid-prefix
        let other = format!("{}x", &long[..long.len() - 2]);
        let (a, b) = (super::index_key(&long), super::index_key(&other));
        assert_ne!(a, b);
        assert_eq!(a, super::index_key(&long));
        assert!(a.len() <= super::MAX_VERBATIM_KEY_BYTES && a.contains('\u{1}'));
        assert!(a.starts_with(&long[..super::KEY_PREFIX_BYTES - 2]) && !a.starts_with(&long[..super::KEY_PREFIX_BYTES + 2]));
    }

    #[test]
    fn distinct_keeps_one_of_each_entry_past_the_list_limit() {
        let mut seen = Distinct::default();
        let mut out: Vec<IndexEntry> = vec![];
        for i in 0..500 {
            for _ in 0..2 {
                let entry = IndexEntry { param: "name".into(), value: IndexValue::String { normalized: format!("n{i}"), exact: format!("N{i}") } };
                if seen.is_new(&out, &entry) {
                    out.push(entry);
                }
            }
        }
        assert_eq!(out.len(), 500, "each value once, below and above the list limit");
    }
}
