//! Search: query string → typed [`Criteria`] → SQL.
//!
//! Clauses on indexed parameters (nearly all) become lookups in the index tables that every
//! write maintains ([`indexed`], [`crate::index`]). The rest — composite parameters, `:text`,
//! `:of-type`, `:identifier`, `_text`/`_content`, the few parameters whose FHIRPath the engine
//! cannot parse — are answered from the JSONB documents by translating the SearchParameters'
//! simple FHIRPath forms (paths, choice types, `as`, `where(resolve() is X)`,
//! `where(field='value')`) into PostgreSQL jsonpath ([`push_clause`]); both forms mean the same.
//! Every client value is a bound parameter; only jsonpath built from the definitions is
//! interpolated into SQL text — and even that is bound.
//!
//! Search statements are not cached as prepared statements (`persistent(false)`): PostgreSQL
//! then plans each one for its actual values. A cached generic plan guesses selectivities, and
//! over the index tables a wrong guess starts from the least selective clause (measured on 1M
//! resources: the generic plan of `Observation?subject=…&code=…&date=ge…` started from the
//! 56,562 rows of one code and took 3.5 s; the custom plan 0.6 ms).

pub mod cost;
pub mod custom;
mod indexed;
pub mod params;
mod paths;

use serde_json::Value;
use sqlx::{Postgres, QueryBuilder, Row};

use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::{SearchParameter, definitions};
use crate::fhir::types::{ResourceType, sanitize};
use crate::store::StoredResource;
pub use params::{Include, MAX_INCLUDE_DEPTH, SearchRequest, TotalMode, parse_search, reference_paths};

/// A parsed set of search conditions on one resource type (ANDed clauses).
#[derive(Debug, Clone)]
pub struct Criteria {
    pub resource_type: ResourceType,
    pub clauses: Vec<Clause>,
}

impl Criteria {
    /// A stable text form of the criteria, used to serialise concurrent conditional writes.
    pub fn canonical(&self) -> String {
        let mut parts: Vec<String> = self.clauses.iter().map(|c| format!("{c:?}")).collect();
        parts.sort();
        parts.join("&")
    }
}

/// A membership test the search engine can push into its SQL without knowing what it means:
/// the layer that confines searches (`access`) implements it, so search depends on no caller.
pub trait Membership: std::fmt::Debug + Send + Sync {
    /// Pushes the SQL test "row `r` (of `resource_type`) is a member".
    fn push_sql(&self, sql: &mut QueryBuilder<Postgres>, resource_type: &str);
}

/// One search parameter occurrence: its values are ORed.
#[derive(Debug, Clone)]
pub struct Clause {
    /// The parameter as written, with modifier (`name:exact`) — for the self link.
    pub name: String,
    pub kind: ClauseKind,
    /// `:not` / `ne`-style negation of the whole clause.
    pub negate: bool,
}

/// What a clause tests.
#[derive(Debug, Clone)]
pub enum ClauseKind {
    Id(Vec<String>),
    LastUpdated(Vec<(Prefix, String)>),
    /// `:missing=true|false` on any parameter.
    Missing { paths: Vec<String>, missing: bool },
    String { paths: Vec<String>, values: Vec<String>, mode: StringMode },
    Token { paths: Vec<String>, values: Vec<(Option<String>, Option<String>)> },
    /// `values`: every stored reference text that names a wanted resource (see [`reference_forms`]).
    Reference { paths: Vec<String>, values: Vec<String> },
    /// A reference to any resource whose stored reference text starts with one of `prefixes`
    /// (`Patient/`, `<base>/Patient/`): membership in some patient's compartment, for export.
    /// Built by the server, never parsed from a request.
    ReferencePrefix { paths: Vec<String>, prefixes: Vec<String> },
    /// Membership in a compartment (`Patient/1/Observation`): a reference at any of the
    /// compartment's parameters `params` (whose paths are `paths`) names one of `values`.
    /// Built by the server, never parsed from a request.
    InCompartment { params: Vec<String>, paths: Vec<String>, values: Vec<String> },
    /// Matching at least one of the alternatives (granular scopes: each scope's query is one).
    /// Built by the server from scopes, never parsed from a request parameter.
    AnyOf(Vec<Criteria>),
    /// Belonging to a set that the layer above defines (an organisation subtree of a
    /// role-bound token, [`crate::access::organization`]), pushed as SQL by its [`Membership`].
    /// Built by the server, never parsed from a request.
    Member(std::sync::Arc<dyn Membership>),
    /// `_text` (the narrative) or `_content` (every string in the resource): some value's words
    /// all occur in the text, case- and accent-insensitively (search.html#text).
    FullText { narrative_only: bool, values: Vec<Vec<String>> },
    /// A composite parameter (`code-value-quantity=loinc|8480-6$gt100`): some element at one
    /// of `roots` satisfies every component clause of one of the `alternatives` (OR values);
    /// component clauses' paths are relative to that element.
    Composite { roots: Vec<String>, alternatives: Vec<Vec<ClauseKind>> },
    /// Token `:text`: the text of a CodeableConcept, or a Coding's display, starts with a value
    /// (case- and accent-insensitive).
    TokenText { paths: Vec<String>, values: Vec<String> },
    /// Identifier `:of-type` (`type-system|type-code|value`).
    IdentifierOfType { paths: Vec<String>, values: Vec<(String, String, String)> },
    /// Reference `:identifier` (`system|value`, `|value`, `value`): `Reference.identifier`.
    ReferenceIdentifier { paths: Vec<String>, values: Vec<(Option<String>, String)> },
    /// A chained parameter (`subject:Patient.name=x`, search.html#chaining): a reference at
    /// `paths` names a live resource matching one of `targets` (one per possible target type;
    /// each may chain further). `base` turns absolute references to this server into local ones.
    Chain { paths: Vec<String>, base: String, targets: Vec<Criteria> },
    /// A reverse chain (`_has:Observation:patient:code=x`, search.html#has): a live resource
    /// matching `source` references this one at `paths`.
    Has { paths: Vec<String>, base: String, source: Criteria },
    Date { paths: Vec<String>, values: Vec<(Prefix, String)> },
    Number { paths: Vec<String>, values: Vec<(Prefix, f64, f64)>, quantity: Vec<(Option<String>, Option<String>)> },
    Uri { paths: Vec<String>, values: Vec<String>, mode: UriMode },
}

/// String matching modes (search.html#string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    StartsWith,
    Exact,
    Contains,
}

/// uri matching modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMode {
    Exact,
    Below,
    Above,
}

/// Comparison prefixes for ordered types (search.html#prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// Parses the query of a conditional interaction (`identifier=sys|1&name=x`). Unknown
/// parameters are an error here: silently ignoring one would widen the match. `base` is the
/// server's FHIR base URL, against which relative references resolve.
pub fn parse_conditional(resource_type: &ResourceType, query: &str, base: &str) -> FhirResult<Criteria> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        return Err(FhirError::BadRequest("conditional interactions need search criteria".into()));
    }
    let request = parse_search(resource_type, &pairs, true, base)?;
    if request.criteria.clauses.is_empty() {
        return Err(FhirError::BadRequest("conditional interactions need search criteria".into()));
    }
    Ok(request.criteria)
}

/// Builds the clause for one parameter occurrence; `base` is the server's FHIR base URL.
pub fn build_clause(
    sp: &SearchParameter,
    resource_type: &ResourceType,
    name: &str,
    modifier: Option<&str>,
    raw: &str,
    base: &str,
) -> FhirResult<Clause> {
    let bad = |why: &str| FhirError::BadRequest(format!("search parameter '{}': {why}", sanitize(name)));
    let values: Vec<String> = params::split_or(raw);
    let plain: Vec<String> = values.iter().map(|v| params::unescape_value(v)).collect();
    if values.iter().all(|v| v.is_empty()) {
        return Err(bad("empty value"));
    }
    let full_name = match modifier {
        Some(m) => format!("{name}:{m}"),
        None => name.to_owned(),
    };
    if sp.code == "_id" {
        if modifier.is_some() {
            return Err(bad("modifier not supported"));
        }
        return Ok(Clause { name: full_name, kind: ClauseKind::Id(plain), negate: false });
    }
    if sp.code == "_lastUpdated" {
        let values = values.iter().map(|v| params::split_prefix(v)).collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
        for (_, v) in &values {
            params::check_date(v).map_err(|e| bad(&e))?;
        }
        return Ok(Clause { name: full_name, kind: ClauseKind::LastUpdated(values), negate: false });
    }
    if sp.code == "_text" || sp.code == "_content" {
        if modifier == Some("missing") {
            let missing = match raw {
                "true" => true,
                "false" => false,
                _ => return Err(bad(":missing takes true or false")),
            };
            // A resource always has content; the narrative may be absent.
            let path = if sp.code == "_text" { "$.\"text\".\"div\"" } else { "$" };
            return Ok(Clause { name: full_name, kind: ClauseKind::Missing { paths: vec![path.into()], missing }, negate: false });
        }
        if modifier.is_some() {
            return Err(bad("unsupported modifier"));
        }
        let values: Vec<Vec<String>> =
            plain.iter().map(|v| normalize(v).split_whitespace().map(str::to_owned).collect::<Vec<_>>()).filter(|w| !w.is_empty()).collect();
        if values.is_empty() {
            return Err(bad("needs a word to search for"));
        }
        // Each word is a pass over the text of every document of the type.
        if values.iter().map(Vec::len).sum::<usize>() > cost::MAX_FULL_TEXT_WORDS {
            return Err(bad(&format!("at most {} words", cost::MAX_FULL_TEXT_WORDS)));
        }
        return Ok(Clause { name: full_name, kind: ClauseKind::FullText { narrative_only: sp.code == "_text", values }, negate: false });
    }
    if crate::crypto::policy::is_protected(resource_type.as_str(), &sp.code) {
        check_protected(&sp.param_type, modifier, &values).map_err(|why| bad(&why))?;
    }
    let expression = sp.expression.as_deref().ok_or_else(|| bad("not supported by this server"))?;
    // An expression jsonpath cannot express still works for the clauses the index tables
    // answer (FHIRPath extracted it on write); the JSON forms then match nothing.
    let typed = match paths::compile_typed(expression, resource_type.as_str()) {
        Some(typed) => typed,
        None if crate::index::is_indexed(resource_type.as_str(), &sp.code) => vec![],
        None => return Err(bad("not supported by this server")),
    };
    let compiled: Vec<String> = typed.iter().map(|(p, _)| p.clone()).collect();
    if modifier == Some("missing") {
        let missing = match raw {
            "true" => true,
            "false" => false,
            _ => return Err(bad(":missing takes true or false")),
        };
        return Ok(Clause { name: full_name, kind: ClauseKind::Missing { paths: compiled, missing }, negate: false });
    }
    let paths = paths::refine(typed, &sp.param_type);
    let mut negate = false;
    let kind = match sp.param_type.as_str() {
        "string" => {
            let mode = match modifier {
                None => StringMode::StartsWith,
                Some("exact") => StringMode::Exact,
                Some("contains") => StringMode::Contains,
                Some(_) => return Err(bad("unsupported modifier")),
            };
            ClauseKind::String { paths, values: plain, mode }
        }
        "composite" => {
            if modifier.is_some() {
                return Err(bad("unsupported modifier"));
            }
            let defs = definitions();
            let mut components = vec![];
            for c in &sp.component {
                let url = c.get("definition").and_then(Value::as_str).ok_or_else(|| bad("not supported by this server"))?;
                let relative = c.get("expression").and_then(Value::as_str).ok_or_else(|| bad("not supported by this server"))?;
                let csp = defs
                    .search_params(resource_type.as_str())
                    .into_iter()
                    .find(|s| s.url == url)
                    .ok_or_else(|| bad("not supported by this server"))?;
                let (roots, paths) = paths::compile_component(expression, relative, resource_type.as_str(), &csp.param_type)
                    .ok_or_else(|| bad("not supported by this server"))?;
                components.push((csp, roots, paths));
            }
            let roots = components.first().map(|(_, r, _)| r.clone()).ok_or_else(|| bad("not supported by this server"))?;
            let mut alternatives = vec![];
            for v in &values {
                let parts = params::split_unescaped(v, '$');
                if parts.len() != components.len() {
                    return Err(bad(&format!("a value needs {} parts separated by $", components.len())));
                }
                let mut kinds = vec![];
                for ((csp, _, paths), part) in components.iter().zip(parts) {
                    // `values` were split on unescaped commas, so a part's commas stay escaped.
                    let clause = build_clause(csp, resource_type, &csp.code, None, &part, base)?;
                    kinds.push(with_paths(clause.kind, paths.clone()).ok_or_else(|| bad("not supported by this server"))?);
                }
                alternatives.push(kinds);
            }
            ClauseKind::Composite { roots, alternatives }
        }
        "token" if modifier == Some("text") => ClauseKind::TokenText { paths, values: plain.iter().map(|v| normalize(v)).collect() },
        "token" if modifier == Some("of-type") => {
            let mut triples = vec![];
            for v in &values {
                let parts = params::split_unescaped(v, '|');
                let [system, code, value] = parts.as_slice() else {
                    return Err(bad(":of-type takes type-system|type-code|value"));
                };
                if code.is_empty() || value.is_empty() {
                    return Err(bad(":of-type needs a type code and a value"));
                }
                triples.push((params::unescape_value(system), params::unescape_value(code), params::unescape_value(value)));
            }
            ClauseKind::IdentifierOfType { paths, values: triples }
        }
        "reference" if modifier == Some("identifier") => {
            let values = values
                .iter()
                .map(|v| match params::split_token(v) {
                    (system, Some(value)) => Ok((system.filter(|s| !s.is_empty()), value)),
                    _ => Err(bad(":identifier takes system|value")),
                })
                .collect::<FhirResult<Vec<_>>>()?;
            ClauseKind::ReferenceIdentifier { paths, values }
        }
        "token" => {
            match modifier {
                None => {}
                Some("not") => negate = true,
                Some(_) => return Err(bad("unsupported modifier")),
            }
            let values = values.iter().map(|v| params::split_token(v)).collect();
            ClauseKind::Token { paths, values }
        }
        "reference" => {
            if modifier.is_some_and(|t| !definitions().is_resource_type(t)) {
                return Err(bad("unsupported modifier"));
            }
            let values = plain.iter().filter(|v| !v.is_empty()).flat_map(|v| reference_forms(sp, modifier, v, base)).collect();
            ClauseKind::Reference { paths, values }
        }
        "date" => {
            if modifier.is_some() {
                return Err(bad("unsupported modifier"));
            }
            let values = values.iter().map(|v| params::split_prefix(v)).collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
            for (_, v) in &values {
                params::check_date(v).map_err(|e| bad(&e))?;
            }
            ClauseKind::Date { paths, values }
        }
        "number" | "quantity" => {
            if modifier.is_some() {
                return Err(bad("unsupported modifier"));
            }
            let mut nums = Vec::new();
            let mut units = Vec::new();
            for v in &values {
                let (prefix, rest) = params::split_prefix(v).map_err(|e| bad(&e))?;
                let mut parts = params::split_unescaped(&rest, '|').into_iter();
                let number = parts.next().unwrap_or_default();
                let (lo, hi) = params::number_range(&number).ok_or_else(|| bad("not a number"))?;
                nums.push((prefix, lo, hi));
                let system = parts.next().filter(|s| !s.is_empty());
                let code = parts.next().filter(|s| !s.is_empty());
                units.push((system, code));
            }
            ClauseKind::Number { paths, values: nums, quantity: units }
        }
        "uri" => {
            let mode = match modifier {
                None => UriMode::Exact,
                Some("below") => UriMode::Below,
                Some("above") => UriMode::Above,
                Some(_) => return Err(bad("unsupported modifier")),
            };
            // Longer uris are indexed by a key that keeps only their first bytes
            // (`index::index_key`): a prefix past those bytes could not be told apart.
            let limit = if mode == UriMode::Below { crate::index::KEY_PREFIX_BYTES } else { crate::index::MAX_VERBATIM_KEY_BYTES };
            if mode != UriMode::Exact && plain.iter().any(|v| v.len() > limit) {
                return Err(bad(&format!(":{} takes uris of at most {limit} bytes", modifier.unwrap_or_default())));
            }
            ClauseKind::Uri { paths, values: plain, mode }
        }
        _ => return Err(bad("not supported by this server")),
    };
    Ok(Clause { name: full_name, kind, negate })
}

/// The stored reference texts that a reference search value names (search.html#reference).
///
/// A relative reference is relative to the server's base (references.html), so `Patient/1` and
/// `<base>/Patient/1` are the same resource and match each other both ways; a reference with
/// the same type and id on another server is another resource and must not match (a search for
/// one patient's data would return another's). A bare id means a local reference to any of the
/// parameter's target types (or to the type a `:Type` modifier names). Exact texts only, so the
/// comparison needs no pattern matching on client input.
fn reference_forms(sp: &SearchParameter, type_modifier: Option<&str>, value: &str, base: &str) -> Vec<String> {
    let local = |relative: String| vec![format!("{base}/{relative}"), relative];
    if let Some(t) = type_modifier {
        return local(format!("{t}/{value}"));
    }
    if value.contains(':') {
        // Absolute: a URL, `urn:uuid:`, `urn:oid:` or a canonical.
        let mut forms = vec![value.to_owned()];
        let relative = crate::fhir::types::local_reference(value, base);
        if relative != value {
            forms.push(relative.to_owned());
        }
        return forms;
    }
    if value.contains('/') {
        return local(value.to_owned());
    }
    let types: &[String] = if sp.target.is_empty() { definitions().resource_types() } else { &sp.target };
    types.iter().flat_map(|t| local(format!("{t}/{value}"))).collect()
}

/// Appends `AND <clause>` for every clause to a query over `resource r`.
fn push_where(sql: &mut QueryBuilder<Postgres>, criteria: &Criteria) {
    for clause in &criteria.clauses {
        sql.push(" AND ");
        if clause.negate {
            sql.push("NOT ");
        }
        sql.push("(");
        if !indexed::push_indexed(sql, criteria.resource_type.as_str(), clause) {
            push_clause(sql, &clause.kind);
        }
        sql.push(")");
    }
}

/// Pushes `a OR b OR …` for the items (the caller wraps it in parentheses when needed).
fn push_any<T>(sql: &mut QueryBuilder<Postgres>, items: impl IntoIterator<Item = T>, mut each: impl FnMut(&mut QueryBuilder<Postgres>, T)) {
    let mut none = true;
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        each(sql, item);
        none = false;
    }
    // No alternatives match nothing (an empty `()` was a syntax error, answered 500).
    if none {
        sql.push("false");
    }
}

/// `EXISTS (SELECT 1 FROM jsonb_path_query(r.content, <path>) v WHERE <cond>) OR …` over all paths.
fn push_exists(sql: &mut QueryBuilder<Postgres>, paths: &[String], mut cond: impl FnMut(&mut QueryBuilder<Postgres>)) {
    push_any(sql, paths.iter(), |sql, path| {
        sql.push("EXISTS (SELECT 1 FROM jsonb_path_query(r.content, ");
        sql.push_bind(path.clone());
        sql.push("::jsonpath) v WHERE ");
        cond(sql);
        sql.push(")");
    });
}

fn push_clause(sql: &mut QueryBuilder<Postgres>, kind: &ClauseKind) {
    match kind {
        ClauseKind::Id(ids) => {
            sql.push("r.id = ANY(").push_bind(ids.clone()).push(")");
        }
        ClauseKind::LastUpdated(values) => {
            push_any(sql, values.iter(), |sql, (prefix, v)| {
                push_range_test(sql, "r.last_updated", "(r.last_updated + interval '1 millisecond')", *prefix, v);
            });
        }
        ClauseKind::Missing { paths, missing } => {
            if *missing {
                sql.push("NOT (");
            } else {
                sql.push("(");
            }
            push_any(sql, paths.iter(), |sql, path| {
                sql.push("jsonb_path_exists(r.content, ").push_bind(path.clone()).push("::jsonpath)");
            });
            sql.push(")");
        }
        ClauseKind::String { paths, values, mode } => {
            push_exists(sql, paths, |sql| {
                sql.push("jsonb_typeof(v) = 'string' AND (");
                push_any(sql, values.iter(), |sql, value| {
                    match mode {
                        StringMode::Exact => {
                            sql.push("v #>> '{}' = ").push_bind(value.clone());
                        }
                        StringMode::StartsWith => {
                            sql.push("fhir_normalize(v #>> '{}') LIKE ").push_bind(format!("{}%", like_escape(&normalize(value))));
                        }
                        StringMode::Contains => {
                            sql.push("fhir_normalize(v #>> '{}') LIKE ").push_bind(format!("%{}%", like_escape(&normalize(value))));
                        }
                    }
                });
                sql.push(")");
            });
        }
        ClauseKind::Token { paths, values } => {
            push_exists(sql, paths, |sql| {
                sql.push("(");
                push_any(sql, values.iter(), |sql, (system, code)| {
                    sql.push("(CASE jsonb_typeof(v) WHEN 'object' THEN (true");
                    if let Some(code) = code {
                        sql.push(" AND coalesce(v ->> 'code', v ->> 'value') = ").push_bind(code.clone());
                    }
                    match system {
                        Some(s) if s.is_empty() => {
                            sql.push(" AND v ->> 'system' IS NULL");
                        }
                        Some(s) => {
                            sql.push(" AND v ->> 'system' = ").push_bind(s.clone());
                        }
                        None => {}
                    }
                    sql.push(") ELSE ");
                    match code {
                        // A bare code/boolean/string: only the code part can match; a system in the
                        // query cannot be checked against an element without one.
                        Some(code) if system.as_deref().is_none_or(|s| !s.is_empty()) => {
                            sql.push("(v #>> '{}') = ").push_bind(code.clone());
                        }
                        _ => {
                            sql.push("false");
                        }
                    }
                    sql.push(" END)");
                });
                sql.push(")");
            });
        }
        ClauseKind::Reference { paths, values } | ClauseKind::InCompartment { paths, values, .. } => {
            // `Reference.reference`, or the string of a canonical/uri element.
            push_exists(sql, paths, |sql| {
                sql.push("coalesce(v ->> 'reference', v #>> '{}') = ANY(").push_bind(values.clone()).push(")");
            });
        }
        // Always answered by indexed::push_indexed.
        ClauseKind::Member(_) | ClauseKind::AnyOf(_) => {
            sql.push("false");
        }
        ClauseKind::ReferencePrefix { paths, prefixes } => {
            push_exists(sql, paths, |sql| {
                sql.push("(");
                push_any(sql, prefixes.iter(), |sql, prefix| {
                    sql.push("starts_with(coalesce(v ->> 'reference', ''), ").push_bind(prefix.clone()).push(")");
                });
                sql.push(")");
            });
        }
        ClauseKind::Composite { roots, alternatives } => {
            push_any(sql, roots.iter(), |sql, root| {
                // The derived table named `r` makes the component clauses (written against
                // `r.content`) look at the root element.
                sql.push("EXISTS (SELECT 1 FROM (SELECT c AS content FROM jsonb_path_query(r.content, ");
                sql.push_bind(root.clone());
                sql.push("::jsonpath) c) r WHERE ");
                push_any(sql, alternatives.iter(), |sql, parts| {
                    sql.push("(true");
                    for part in parts {
                        sql.push(" AND (");
                        push_clause(sql, part);
                        sql.push(")");
                    }
                    sql.push(")");
                });
                sql.push(")");
            });
        }
        ClauseKind::FullText { narrative_only, values } => {
            let (text, raw) = if *narrative_only { (NARRATIVE_TEXT, RAW_NARRATIVE) } else { (ALL_STRINGS, RAW_CONTENT) };
            sql.push("(");
            push_any(sql, values.iter(), |sql, words| {
                sql.push("(true");
                // A word of a string is also in the document's text as stored (JSON escapes
                // only quotes, backslashes and control characters; tags become spaces): that
                // cheap test rules most documents out before their strings are gathered.
                for word in words.iter().filter(|w| !w.contains(['"', '\\'])) {
                    sql.push(" AND fhir_normalize(").push(raw).push(") LIKE ").push_bind(format!("%{}%", like_escape(word)));
                }
                for word in words {
                    sql.push(" AND fhir_normalize(").push(text).push(") LIKE ").push_bind(format!("%{}%", like_escape(word)));
                }
                sql.push(")");
            });
            sql.push(")");
        }
        ClauseKind::TokenText { paths, values } => {
            push_exists(sql, paths, |sql| {
                sql.push("EXISTS (SELECT 1 FROM (SELECT v ->> 'text' UNION ALL SELECT v ->> 'display' UNION ALL \
                          SELECT c ->> 'display' FROM jsonb_array_elements(CASE jsonb_typeof(v -> 'coding') WHEN 'array' THEN v -> 'coding' ELSE '[]'::jsonb END) c) t(s) \
                          WHERE (");
                push_any(sql, values.iter(), |sql, value| {
                    sql.push("starts_with(fhir_normalize(t.s), ").push_bind(value.clone()).push(")");
                });
                sql.push("))");
            });
        }
        ClauseKind::IdentifierOfType { paths, values } => {
            push_exists(sql, paths, |sql| {
                sql.push("(");
                push_any(sql, values.iter(), |sql, (system, code, value)| {
                    sql.push("(v ->> 'value' = ").push_bind(value.clone());
                    sql.push(" AND EXISTS (SELECT 1 FROM jsonb_array_elements(CASE jsonb_typeof(v -> 'type' -> 'coding') WHEN 'array' THEN v -> 'type' -> 'coding' ELSE '[]'::jsonb END) c WHERE c ->> 'code' = ");
                    sql.push_bind(code.clone());
                    if !system.is_empty() {
                        sql.push(" AND c ->> 'system' = ").push_bind(system.clone());
                    }
                    sql.push("))");
                });
                sql.push(")");
            });
        }
        ClauseKind::ReferenceIdentifier { paths, values } => {
            push_exists(sql, paths, |sql| {
                sql.push("(");
                push_any(sql, values.iter(), |sql, (system, value)| {
                    sql.push("(v -> 'identifier' ->> 'value' = ").push_bind(value.clone());
                    if let Some(system) = system {
                        sql.push(" AND v -> 'identifier' ->> 'system' = ").push_bind(system.clone());
                    }
                    sql.push(")");
                });
                sql.push(")");
            });
        }
        ClauseKind::Chain { paths, base, targets } => {
            push_exists(sql, paths, |sql| {
                push_local_reference(sql, "v ->> 'reference'", base);
                sql.push(" IN (");
                for (i, target) in targets.iter().enumerate() {
                    if i > 0 {
                        sql.push(" UNION ALL ");
                    }
                    // The inner `r` shadows the outer one inside the subquery.
                    sql.push("SELECT r.resource_type || '/' || r.id FROM resource r WHERE r.resource_type = ");
                    sql.push_bind(target.resource_type.as_str().to_owned());
                    sql.push(" AND NOT r.deleted");
                    push_where(sql, target);
                }
                sql.push(")");
            });
        }
        ClauseKind::Has { paths, base, source } => {
            sql.push("(r.resource_type || '/' || r.id) IN (");
            for (i, path) in paths.iter().enumerate() {
                if i > 0 {
                    sql.push(" UNION ALL ");
                }
                sql.push("SELECT ");
                push_local_reference(sql, "v ->> 'reference'", base);
                sql.push(" FROM resource r, jsonb_path_query(r.content, ");
                sql.push_bind(path.clone());
                sql.push("::jsonpath) v WHERE r.resource_type = ");
                sql.push_bind(source.resource_type.as_str().to_owned());
                sql.push(" AND NOT r.deleted");
                push_where(sql, source);
            }
            sql.push(")");
        }
        ClauseKind::Date { paths, values } => {
            push_exists(sql, paths, |sql| {
                sql.push("(");
                push_any(sql, values.iter(), |sql, (prefix, value)| {
                    push_range_test(sql, "lower(fhir_value_range(v))", "upper(fhir_value_range(v))", *prefix, value);
                });
                sql.push(")");
            });
        }
        ClauseKind::Number { paths, values, quantity } => {
            push_exists(sql, paths, |sql| {
                sql.push("(");
                push_any(sql, values.iter().zip(quantity), |sql, ((prefix, lo, hi), (system, code))| {
                    let num = "(CASE jsonb_typeof(v) WHEN 'number' THEN fhir_number(v) WHEN 'object' THEN fhir_number(v -> 'value') END)";
                    let columns = (num, "v ->> 'system'", "v ->> 'code'", "v ->> 'unit'");
                    push_number_test(sql, columns, *prefix, *lo, *hi, system, code);
                });
                sql.push(")");
            });
        }
        ClauseKind::Uri { paths, values, mode } => {
            push_exists(sql, paths, |sql| {
                sql.push("jsonb_typeof(v) = 'string' AND (");
                push_any(sql, values.iter(), |sql, value| {
                    match mode {
                        UriMode::Exact => {
                            sql.push("v #>> '{}' = ").push_bind(value.clone());
                        }
                        UriMode::Below => {
                            sql.push("v #>> '{}' LIKE ").push_bind(format!("{}%", like_escape(value)));
                        }
                        UriMode::Above => {
                            sql.push(" ").push_bind(value.clone()).push(" LIKE (replace(replace(v #>> '{}', '%', '\\%'), '_', '\\_') || '%')");
                        }
                    }
                });
                sql.push(")");
            });
        }
    }
}

/// Range comparison per search.html#prefix between a target `[low, high)` (SQL expressions:
/// index columns, or the range of a JSON value) and the range `S` a FHIR date search value
/// covers ([`params::date_bounds`], bound as instants). One meaning for every date search.
fn push_range_test(sql: &mut QueryBuilder<Postgres>, low: &str, high: &str, prefix: Prefix, value: &str) {
    // Values were checked when the clause was built; one that is no date matches nothing.
    let Some((s_low, s_high)) = params::date_bounds(value) else {
        sql.push("false");
        return;
    };
    let contains = |sql: &mut QueryBuilder<Postgres>| {
        sql.push("(").push(low).push(" >= ").push_bind(s_low).push(" AND ").push(high).push(" <= ").push_bind(s_high).push(")");
    };
    sql.push("(");
    match prefix {
        Prefix::Eq => contains(sql),
        Prefix::Ne => {
            sql.push("NOT ");
            contains(sql);
        }
        Prefix::Gt => {
            sql.push(high).push(" > ").push_bind(s_high);
        }
        Prefix::Lt => {
            sql.push(low).push(" < ").push_bind(s_low);
        }
        Prefix::Ge => {
            sql.push(high).push(" > ").push_bind(s_high).push(" OR ");
            contains(sql);
        }
        Prefix::Le => {
            sql.push(low).push(" < ").push_bind(s_low).push(" OR ");
            contains(sql);
        }
        Prefix::Sa => {
            sql.push(low).push(" >= ").push_bind(s_high);
        }
        Prefix::Eb => {
            sql.push(high).push(" <= ").push_bind(s_low);
        }
        Prefix::Ap => {
            sql.push(low).push(" < ").push_bind(s_high).push(" AND ").push(high).push(" > ").push_bind(s_low);
        }
    }
    sql.push(")");
}

/// Number/quantity comparison per search.html#number: `value` (a SQL expression) against the
/// search value's implicit range `[lo, hi)`, and for quantities `number|system|code` (a code)
/// or `number||unit` (a code or a unit) against the `system`, `code` and `unit` expressions.
fn push_number_test(
    sql: &mut QueryBuilder<Postgres>,
    (value, system_at, code_at, unit_at): (&str, &str, &str, &str),
    prefix: Prefix,
    lo: f64,
    hi: f64,
    system: &Option<String>,
    code: &Option<String>,
) {
    sql.push("(");
    let mid = (lo + hi) / 2.0;
    match prefix {
        Prefix::Eq | Prefix::Ap => {
            let (lo, hi) = if prefix == Prefix::Ap { (mid - mid.abs() * 0.1, mid + mid.abs() * 0.1) } else { (lo, hi) };
            sql.push(value).push(" >= ").push_bind(lo).push(" AND ").push(value).push(" < ").push_bind(hi);
        }
        Prefix::Ne => {
            sql.push("NOT (").push(value).push(" >= ").push_bind(lo).push(" AND ").push(value).push(" < ").push_bind(hi).push(")");
        }
        Prefix::Gt | Prefix::Sa => {
            sql.push(value).push(" > ").push_bind(mid);
        }
        Prefix::Lt | Prefix::Eb => {
            sql.push(value).push(" < ").push_bind(mid);
        }
        Prefix::Ge => {
            sql.push(value).push(" >= ").push_bind(mid);
        }
        Prefix::Le => {
            sql.push(value).push(" <= ").push_bind(mid);
        }
    }
    if let Some(system) = system {
        sql.push(" AND ").push(system_at).push(" = ").push_bind(system.clone());
    }
    if let Some(code) = code {
        sql.push(" AND (").push(code_at).push(" = ").push_bind(code.clone());
        if system.is_none() {
            sql.push(" OR ").push(unit_at).push(" = ").push_bind(code.clone());
        }
        sql.push(")");
    }
    sql.push(")");
}

/// A clause kind with its paths replaced (composite components evaluate relative paths).
fn with_paths(kind: ClauseKind, new: Vec<String>) -> Option<ClauseKind> {
    Some(match kind {
        ClauseKind::String { values, mode, .. } => ClauseKind::String { paths: new, values, mode },
        ClauseKind::Token { values, .. } => ClauseKind::Token { paths: new, values },
        ClauseKind::Reference { values, .. } => ClauseKind::Reference { paths: new, values },
        ClauseKind::Date { values, .. } => ClauseKind::Date { paths: new, values },
        ClauseKind::Number { values, quantity, .. } => ClauseKind::Number { paths: new, values, quantity },
        ClauseKind::Uri { values, mode, .. } => ClauseKind::Uri { paths: new, values, mode },
        _ => return None,
    })
}

/// What a search may ask of a protected parameter (one that reads sealed elements and is
/// searched through its blind index, `crypto::blind`): equality forms only.
fn check_protected(param_type: &str, modifier: Option<&str>, values: &[String]) -> Result<(), String> {
    const WHY: &str = "it reads sealed PHI and is searched through a blind index";
    match (param_type, modifier) {
        (_, Some("missing")) => Ok(()),
        ("string", None | Some("exact")) => Ok(()),
        ("string", Some(m)) => Err(format!(":{m} does not work on this parameter ({WHY}: prefix and :exact do)")),
        ("token", None | Some("not")) => Ok(()),
        ("token", Some(m)) => Err(format!(":{m} does not work on this parameter ({WHY}: system|code, code and system| do)")),
        ("reference" | "uri", None) => Ok(()),
        ("date", None) => {
            for v in values {
                let (prefix, date) = params::split_prefix(v)?;
                let shaped = matches!(date.len(), 4 | 7 | 10) && date.chars().all(|c| c.is_ascii_digit() || c == '-');
                if prefix != Prefix::Eq || !shaped {
                    return Err(format!("only equality at year, month or day precision works on this parameter ({WHY}); no ranges, prefixes or times"));
                }
            }
            Ok(())
        }
        _ => Err(format!("this search does not work on this parameter ({WHY})")),
    }
}

/// How a `_sort` parameter orders resources.
#[derive(Debug, Clone)]
pub enum SortKey {
    LastUpdated,
    Id,
    /// The smallest (ascending) or largest (descending) value at `paths`, compared as the
    /// parameter type says; resources without a value sort last.
    Values { paths: Vec<String>, param_type: String },
}

/// The sort key of a parameter on a type, if it can be sorted on (search.html#sort).
pub fn sort_key(resource_type: &ResourceType, name: &str) -> Option<SortKey> {
    match name {
        "_lastUpdated" => return Some(SortKey::LastUpdated),
        "_id" => return Some(SortKey::Id),
        _ => {}
    }
    let sp = definitions().search_param(resource_type.as_str(), name)?;
    // Blind-indexed values have no order.
    if crate::crypto::policy::is_protected(resource_type.as_str(), name) {
        return None;
    }
    if !matches!(sp.param_type.as_str(), "string" | "token" | "date" | "number" | "quantity" | "reference" | "uri") {
        return None;
    }
    let typed = paths::compile_typed(sp.expression.as_deref()?, resource_type.as_str())?;
    let paths = if sp.param_type == "string" {
        // A name sorts by its family name, an address by its first line, not by any part.
        typed.into_iter().flat_map(|t| paths::refine(vec![t], "string").into_iter().take(1)).collect()
    } else {
        paths::refine(typed, &sp.param_type)
    };
    Some(SortKey::Values { paths, param_type: sp.param_type.clone() })
}

/// Pushes the ORDER BY expression of a sort key.
fn push_sort_key(sql: &mut QueryBuilder<Postgres>, key: &SortKey, descending: bool) {
    let (paths, param_type) = match key {
        SortKey::LastUpdated => {
            sql.push("r.last_updated");
            return;
        }
        SortKey::Id => {
            sql.push("r.id");
            return;
        }
        SortKey::Values { paths, param_type } => (paths, param_type.as_str()),
    };
    let value = match (param_type, descending) {
        ("date", false) => "lower(fhir_value_range(v))",
        ("date", true) => "upper(fhir_value_range(v))",
        ("string", _) => "CASE jsonb_typeof(v) WHEN 'string' THEN fhir_normalize(v #>> '{}') END",
        ("token", _) => "CASE jsonb_typeof(v) WHEN 'object' THEN coalesce(v ->> 'code', v ->> 'value') ELSE v #>> '{}' END",
        ("number", _) => "CASE jsonb_typeof(v) WHEN 'number' THEN (v #>> '{}')::numeric END",
        ("quantity", _) => "CASE jsonb_typeof(v -> 'value') WHEN 'number' THEN (v ->> 'value')::numeric END",
        ("reference", _) => "coalesce(v ->> 'reference', v #>> '{}')",
        _ => "v #>> '{}'",
    };
    if paths.is_empty() {
        sql.push("NULL::text");
        return;
    }
    sql.push(if descending { "(SELECT max(s.x) FROM (" } else { "(SELECT min(s.x) FROM (" });
    for (i, path) in paths.iter().enumerate() {
        if i > 0 {
            sql.push(" UNION ALL ");
        }
        sql.push("SELECT ").push(value).push(" FROM jsonb_path_query(r.content, ").push_bind(path.clone()).push("::jsonpath) v");
    }
    sql.push(") s(x))");
}

/// Pushes `expr` (a reference text) as a local `Type/id` when it is an absolute URL on `base`.
fn push_local_reference(sql: &mut QueryBuilder<Postgres>, expr: &str, base: &str) {
    let prefix = format!("{base}/");
    let from = prefix.chars().count() as i32 + 1;
    sql.push("(CASE WHEN starts_with(coalesce(").push(expr).push(", ''), ").push_bind(prefix);
    sql.push(") THEN substr(").push(expr).push(", ").push_bind(from).push(") ELSE ").push(expr).push(" END)");
}

impl Criteria {
    /// Every resource type the criteria look at (itself, chained targets, `_has` sources), so
    /// the caller can check the principal may search them all.
    pub fn types(&self) -> Vec<String> {
        let mut out = vec![self.resource_type.as_str().to_owned()];
        for clause in &self.clauses {
            match &clause.kind {
                ClauseKind::Chain { targets, .. } => targets.iter().for_each(|t| out.extend(t.types())),
                ClauseKind::Has { source, .. } => out.extend(source.types()),
                _ => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Case- and accent-folding of string search (search.html#string): lower case, and the Latin
/// letters with diacritics of `ACCENTED` replaced by their base letters. Must equal the SQL
/// function `fhir_normalize` (migrations/functions/search.sql) so values and stored text fold alike.
pub fn normalize(s: &str) -> String {
    s.chars()
        .map(|c| match ACCENTED.chars().position(|a| a == c) {
            Some(i) => UNACCENTED.chars().nth(i).unwrap_or(c),
            None => c,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Keep in sync with `fhir_normalize` in migrations/functions/search.sql (and its ASCII fast path).
const ACCENTED: &str = "ÀÁÂÃÄÅàáâãäåÇçÈÉÊËèéêëÌÍÎÏìíîïÑñÒÓÔÕÖØòóôõöøÙÚÛÜùúûüÝýÿŠšŽžŁłŚśŹźŻżĆćŃńĘęĄąŐőŰűČčŘřĎďŤťŇňĚěŮů";
const UNACCENTED: &str = "AAAAAAaaaaaaCcEEEEeeeeIIIIiiiiNnOOOOOOooooooUUUUuuuuYyySsZzLlSsZzZzCcNnEeAaOoUuCcRrDdTtNnEeUu";

/// The narrative's text for `_text`: the XHTML with its tags removed.
const NARRATIVE_TEXT: &str = "regexp_replace(coalesce(r.content -> 'text' ->> 'div', ''), '<[^>]*>', ' ', 'g')";
/// The narrative as stored, tags and all: a cheap first test for `_text`.
const RAW_NARRATIVE: &str = "coalesce(r.content -> 'text' ->> 'div', '')";
/// The document as JSON text: a cheap first test for `_content`.
const RAW_CONTENT: &str = "r.content::text";
/// Every string of the resource, space-separated, for `_content`.
const ALL_STRINGS: &str = "coalesce((SELECT string_agg(v #>> '{}', ' ') FROM jsonb_path_query(r.content, 'strict $.**') v \
                           WHERE jsonb_typeof(v) = 'string'), '')";

/// Escapes `%`, `_` and `\` for LIKE.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// Ids of up to `limit` live resources matching `criteria`, inside a write transaction.
pub async fn matching_ids(tx: &mut sqlx::PgConnection, criteria: &Criteria, limit: i64) -> FhirResult<Vec<String>> {
    let mut sql = QueryBuilder::<Postgres>::new("SELECT r.id FROM resource r WHERE r.resource_type = ");
    sql.push_bind(criteria.resource_type.as_str().to_owned());
    sql.push(" AND NOT r.deleted");
    push_where(&mut sql, criteria);
    sql.push(" LIMIT ").push_bind(limit);
    let rows = sql.build().persistent(false).fetch_all(&mut *tx).await?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

/// The resources that `_include`/`_revinclude` add to a page of `matches` (search.html#include):
/// forward includes follow the matches' reference parameters to live local resources,
/// reverse includes find live resources whose parameter references a match; `:iterate` repeats
/// on what was included, up to [`MAX_INCLUDE_DEPTH`] rounds. Resources of types `allowed`
/// rejects are never fetched, and nothing is returned twice or duplicates a match.
pub async fn fetch_includes(
    conn: &mut sqlx::PgConnection,
    includes: &[Include],
    matches: &[StoredResource],
    base: &str,
    allowed: &(dyn Fn(&str) -> bool + Send + Sync),
) -> FhirResult<Vec<StoredResource>> {
    use std::collections::HashSet;
    if includes.is_empty() || matches.is_empty() {
        return Ok(vec![]);
    }
    let key = |r: &StoredResource| (r.resource_type.clone(), r.id.clone());
    let mut seen: HashSet<(String, String)> = matches.iter().map(key).collect();
    let mut frontier: Vec<(String, String)> = matches.iter().map(key).collect();
    let mut out: Vec<StoredResource> = vec![];
    let rounds = if includes.iter().any(|i| i.iterate) { MAX_INCLUDE_DEPTH } else { 1 };
    for round in 0..rounds {
        let mut wanted: Vec<(String, String)> = vec![];
        let mut found: Vec<StoredResource> = vec![];
        for include in includes.iter().filter(|i| round == 0 || i.iterate) {
            if include.reverse {
                let Some(source) = &include.source else { continue };
                if !allowed(source) {
                    continue;
                }
                let source_type = ResourceType::parse(source)?;
                let refs: Vec<String> =
                    frontier.iter().flat_map(|(t, id)| [format!("{t}/{id}"), format!("{base}/{t}/{id}")]).collect();
                let local: Vec<String> = frontier.iter().map(|(t, id)| format!("{t}/{id}")).collect();
                for code in include_params(&source_type, include.param.as_deref()) {
                    let Some(paths) = reference_paths(&source_type, &code, base) else { continue };
                    let mut sql = QueryBuilder::<Postgres>::new(
                        "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.content, r.sealed, r.key_id FROM resource r WHERE r.resource_type = ",
                    );
                    sql.push_bind(source.clone()).push(" AND NOT r.deleted AND (");
                    if !indexed::push_referencing(&mut sql, source, &code, local.clone()) {
                        push_exists(&mut sql, &paths, |sql| {
                            sql.push("(v ->> 'reference') = ANY(").push_bind(refs.clone()).push(")");
                        });
                    }
                    sql.push(") LIMIT ").push_bind(MAX_COUNT_INCLUDED as i64);
                    for row in sql.build().persistent(false).fetch_all(&mut *conn).await? {
                        let r = stored_from_row(&row)?;
                        if seen.insert(key(&r)) {
                            found.push(r);
                        }
                    }
                }
            } else {
                let mut by_type: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
                for (t, id) in &frontier {
                    if include.source.as_deref().is_none_or(|s| s == t) {
                        by_type.entry(t.as_str()).or_default().push(id.clone());
                    }
                }
                for (t, ids) in by_type {
                    let rt = ResourceType::parse(t)?;
                    for code in include_params(&rt, include.param.as_deref()) {
                        let Some(paths) = reference_paths(&rt, &code, base) else { continue };
                        let mut queries = vec![];
                        if let Some(sql) = indexed::referenced_by(t, &code, &ids) {
                            queries.push(sql);
                        } else {
                            for path in paths {
                                let mut sql = QueryBuilder::<Postgres>::new("SELECT DISTINCT ");
                                push_local_reference(&mut sql, "v ->> 'reference'", base);
                                sql.push(" FROM resource r, jsonb_path_query(r.content, ").push_bind(path).push("::jsonpath) v");
                                sql.push(" WHERE r.resource_type = ").push_bind(t.to_owned());
                                sql.push(" AND r.id = ANY(").push_bind(ids.clone()).push(")");
                                queries.push(sql);
                            }
                        }
                        for mut sql in queries {
                            for row in sql.build().persistent(false).fetch_all(&mut *conn).await? {
                                let Some(reference) = row.get::<Option<String>, _>(0) else { continue };
                                let Some((rt, id)) = reference.split_once('/') else { continue };
                                if id.contains('/') || !definitions().is_resource_type(rt) || !crate::fhir::types::Id::is_valid(id) {
                                    continue; // another server, a version-specific or contained reference
                                }
                                if include.target.as_deref().is_some_and(|target| target != rt) || !allowed(rt) {
                                    continue;
                                }
                                let k = (rt.to_owned(), id.to_owned());
                                if !seen.contains(&k) && !wanted.contains(&k) {
                                    wanted.push(k);
                                }
                            }
                        }
                    }
                }
            }
        }
        if !wanted.is_empty() {
            let (types, ids): (Vec<String>, Vec<String>) = wanted.into_iter().unzip();
            let rows = sqlx::query(
                "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.content, r.sealed, r.key_id FROM resource r \
                 JOIN UNNEST($1::text[], $2::text[]) AS w(resource_type, id) ON r.resource_type = w.resource_type AND r.id = w.id \
                 WHERE NOT r.deleted",
            )
            .bind(&types)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
            for row in rows {
                let r = stored_from_row(&row)?;
                if seen.insert(key(&r)) {
                    found.push(r);
                }
            }
        }
        if found.is_empty() {
            break;
        }
        frontier = found.iter().map(key).collect();
        out.extend(found);
        if out.len() >= MAX_COUNT_INCLUDED {
            break;
        }
    }
    Ok(out)
}

/// Most included resources per page.
const MAX_COUNT_INCLUDED: usize = 5000;

/// The reference parameters an include follows on a type: the named one, or all for `*`.
fn include_params(resource_type: &ResourceType, param: Option<&str>) -> Vec<String> {
    match param {
        Some(p) => vec![p.to_owned()],
        None => definitions()
            .search_params(resource_type.as_str())
            .into_iter()
            .filter(|sp| sp.param_type == "reference")
            .map(|sp| sp.code.clone())
            .collect(),
    }
}

/// A result row as a complete resource (its sealed elements opened).
fn stored_from_row(r: &sqlx::postgres::PgRow) -> FhirResult<StoredResource> {
    let resource_type: String = r.get(0);
    let id: String = r.get(1);
    let version_id: i64 = r.get(2);
    let content = crate::store::open_row(&resource_type, &id, version_id, r)?;
    Ok(StoredResource { resource_type, id, version_id, last_updated: r.get(3), deleted: false, content, method: None })
}

/// Runs a search: one page of matches, the total when asked for, and whether more follow.
pub async fn execute(pool: &sqlx::PgPool, request: &SearchRequest) -> FhirResult<(Vec<StoredResource>, Option<i64>, bool)> {
    let mut conn = pool.acquire().await?;
    execute_in(&mut conn, request).await
}

/// [`execute`] on one connection — inside a transaction it sees the transaction's own writes
/// (a GET entry of a transaction Bundle).
pub async fn execute_in(conn: &mut sqlx::PgConnection, request: &SearchRequest) -> FhirResult<(Vec<StoredResource>, Option<i64>, bool)> {
    if request.count == 0 {
        // search.html#count: `_count=0` asks for how many match and no entries — the total is
        // counted unless `_total=none` (or `estimate`) says otherwise.
        let total = match request.total {
            TotalMode::WhenKnown => count_matches(conn, &request.criteria).await.map(Some)?,
            _ => total_of_all(conn, request).await?,
        };
        return Ok((vec![], total, false));
    }
    let mut sql = QueryBuilder::<Postgres>::new("");
    push_page_query(&mut sql, request)?;
    let rows = sql.build().persistent(false).fetch_all(&mut *conn).await?;
    let more = rows.len() > request.count;
    let total = match (request.total, more, &request.cursor) {
        (TotalMode::None, ..) => None,
        // A first page that holds every match is the count (no second query).
        (_, false, None) if request.offset == 0 || !rows.is_empty() => Some((request.offset + rows.len()) as i64),
        _ => total_of_all(conn, request).await?,
    };
    Ok((rows.iter().take(request.count).map(stored_from_row).collect::<FhirResult<_>>()?, total, more))
}

/// `Bundle.total` when it needs a query of its own (see [`TotalMode`]).
async fn total_of_all(conn: &mut sqlx::PgConnection, request: &SearchRequest) -> FhirResult<Option<i64>> {
    match request.total {
        TotalMode::Accurate => count_matches(conn, &request.criteria).await.map(Some),
        TotalMode::Estimate => estimate_matches(conn, &request.criteria).await.map(Some),
        TotalMode::WhenKnown | TotalMode::None => Ok(None),
    }
}

/// The number of live resources matching `criteria`.
async fn count_matches(conn: &mut sqlx::PgConnection, criteria: &Criteria) -> FhirResult<i64> {
    let mut sql = QueryBuilder::<Postgres>::new("SELECT count(*) FROM resource r WHERE r.resource_type = ");
    sql.push_bind(criteria.resource_type.as_str().to_owned());
    sql.push(" AND NOT r.deleted");
    push_where(&mut sql, criteria);
    Ok(sql.build().persistent(false).fetch_one(conn).await?.get::<i64, _>(0))
}

/// The matches PostgreSQL's planner expects (`_total=estimate`): no rows are read.
async fn estimate_matches(conn: &mut sqlx::PgConnection, criteria: &Criteria) -> FhirResult<i64> {
    let mut sql = QueryBuilder::<Postgres>::new("EXPLAIN (FORMAT JSON) SELECT 1 FROM resource r WHERE r.resource_type = ");
    sql.push_bind(criteria.resource_type.as_str().to_owned());
    sql.push(" AND NOT r.deleted");
    push_where(&mut sql, criteria);
    let plan: Value = sql.build().persistent(false).fetch_one(conn).await?.get(0);
    Ok(plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0).round() as i64)
}

/// The query of one page of matches (one row more than the page tells whether more follow).
fn push_page_query(sql: &mut QueryBuilder<Postgres>, request: &SearchRequest) -> FhirResult<()> {
    let criteria = &request.criteria;
    sql.push("SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.content, r.sealed, r.key_id FROM resource r WHERE r.resource_type = ");
    sql.push_bind(criteria.resource_type.as_str().to_owned());
    sql.push(" AND NOT r.deleted");
    push_where(sql, criteria);
    if let Some(cursor) = &request.cursor {
        push_after_cursor(sql, request, cursor)?;
    }
    sql.push(" ORDER BY ");
    for (_, descending, key) in &request.sort {
        push_sort_key(sql, key, *descending);
        sql.push(if *descending { " DESC NULLS LAST, " } else { " ASC NULLS LAST, " });
    }
    sql.push("r.id ASC LIMIT ").push_bind(request.count as i64 + 1);
    if request.cursor.is_none() {
        sql.push(" OFFSET ").push_bind(request.offset as i64);
    }
    Ok(())
}

/// PostgreSQL's plan (`EXPLAIN (FORMAT JSON)`) for the page query of a search: lets tests and
/// operators check that a search seeks the index tables instead of scanning.
pub async fn explain(pool: &sqlx::PgPool, request: &SearchRequest) -> FhirResult<Value> {
    let mut sql = QueryBuilder::<Postgres>::new("EXPLAIN (FORMAT JSON) ");
    push_page_query(&mut sql, request)?;
    let row = sql.build().persistent(false).fetch_one(pool).await?;
    Ok(row.get::<Value, _>(0))
}

/// Whether a search pages by keyset (`_cursor`): when it is ordered only by `_lastUpdated`
/// and `_id` (the default order is by id), the next page starts after the last match's key,
/// so pages neither repeat nor skip matches while resources are created or deleted between
/// requests. Other orders page by offset.
pub fn pages_by_cursor(request: &SearchRequest) -> bool {
    request.sort.iter().all(|(_, _, key)| matches!(key, SortKey::LastUpdated | SortKey::Id))
}

/// The `_cursor` after `last`: its sort key values, `~`-separated (ids cannot contain `~`).
pub fn cursor_after(request: &SearchRequest, last: &StoredResource) -> String {
    let mut parts: Vec<String> = request
        .sort
        .iter()
        .map(|(_, _, key)| match key {
            SortKey::LastUpdated => last.last_updated.timestamp_micros().to_string(),
            _ => last.id.clone(),
        })
        .collect();
    parts.push(last.id.clone());
    parts.join("~")
}

/// `AND (rows after the cursor in the search's order)`: a lexicographic comparison over the
/// sort keys and the final `id`.
fn push_after_cursor(sql: &mut QueryBuilder<Postgres>, request: &SearchRequest, cursor: &str) -> FhirResult<()> {
    let bad = || FhirError::BadRequest("_cursor is not valid for this search (use the links of the previous page)".into());
    if !pages_by_cursor(request) {
        return Err(bad());
    }
    let values: Vec<&str> = cursor.split('~').collect();
    let mut keys: Vec<(bool, bool)> = request.sort.iter().map(|(_, desc, key)| (matches!(key, SortKey::LastUpdated), *desc)).collect();
    keys.push((false, false));
    if values.len() != keys.len() {
        return Err(bad());
    }
    sql.push(" AND (");
    for i in 0..keys.len() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(true");
        for (j, ((is_time, desc), value)) in keys.iter().zip(&values).enumerate().take(i + 1) {
            let op = if j < i { " = " } else if *desc { " < " } else { " > " };
            if *is_time {
                let micros: i64 = value.parse().map_err(|_| bad())?;
                let time = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
                sql.push(" AND r.last_updated").push(op).push_bind(time);
            } else {
                sql.push(" AND r.id").push(op).push_bind(value.to_string());
            }
        }
        sql.push(")");
    }
    sql.push(")");
    Ok(())
}

/// One page of the union of several criteria (each one's clauses ANDed, the criteria ORed) over
/// live resources of any type, de-duplicated and ordered by type then id, plus the total size of
/// the union. `since` keeps only resources last updated at or after it. Serves operations that
/// gather resources across types (Patient `$everything`).
pub async fn execute_union(
    pool: &sqlx::PgPool,
    parts: &[Criteria],
    since: Option<chrono::DateTime<chrono::Utc>>,
    count: usize,
    offset: usize,
) -> FhirResult<(Vec<StoredResource>, i64)> {
    if parts.is_empty() {
        return Ok((vec![], 0));
    }
    let mut conn = pool.acquire().await?;
    let mut sql = QueryBuilder::<Postgres>::new("SELECT count(*) FROM (");
    push_union(&mut sql, parts, since);
    sql.push(") k");
    let total = sql.build().persistent(false).fetch_one(&mut *conn).await?.get::<i64, _>(0);
    if count == 0 {
        return Ok((vec![], total));
    }
    let mut sql = QueryBuilder::<Postgres>::new("SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.content, r.sealed, r.key_id FROM (");
    push_union(&mut sql, parts, since);
    sql.push(") k JOIN resource r ON r.resource_type = k.resource_type AND r.id = k.id");
    sql.push(" ORDER BY r.resource_type COLLATE \"C\" ASC, r.id COLLATE \"C\" ASC LIMIT ").push_bind(count as i64);
    sql.push(" OFFSET ").push_bind(offset as i64);
    let rows = sql.build().persistent(false).fetch_all(&mut *conn).await?;
    Ok((rows.iter().map(stored_from_row).collect::<FhirResult<_>>()?, total))
}

/// `SELECT resource_type, id … UNION SELECT …` for each criteria (UNION de-duplicates).
fn push_union(sql: &mut QueryBuilder<Postgres>, parts: &[Criteria], since: Option<chrono::DateTime<chrono::Utc>>) {
    for (i, criteria) in parts.iter().enumerate() {
        if i > 0 {
            sql.push(" UNION ");
        }
        sql.push("SELECT r.resource_type, r.id FROM resource r WHERE r.resource_type = ");
        sql.push_bind(criteria.resource_type.as_str().to_owned());
        sql.push(" AND NOT r.deleted");
        if let Some(since) = since {
            sql.push(" AND r.last_updated >= ").push_bind(since);
        }
        push_where(sql, criteria);
    }
}

/// The query that streams one type's live resources as JSON text for Bulk Data export:
/// `since` keeps resources updated after it; a resource must match one of `any_of` (patient
/// compartment membership; empty means no restriction) and one of `filters` (`_typeFilter`
/// criteria; empty means no restriction). Unordered, so PostgreSQL can scan sequentially.
pub fn export_query(
    resource_type: &ResourceType,
    since: Option<chrono::DateTime<chrono::Utc>>,
    any_of: &[Criteria],
    filters: &[Criteria],
) -> QueryBuilder<Postgres> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "SELECT r.id, r.version_id, CASE WHEN r.sealed IS NULL THEN r.content::text END AS text, \
         CASE WHEN r.sealed IS NOT NULL THEN r.content END AS content, r.sealed, r.key_id FROM resource r WHERE r.resource_type = ",
    );
    sql.push_bind(resource_type.as_str().to_owned());
    sql.push(" AND NOT r.deleted");
    if let Some(since) = since {
        sql.push(" AND r.last_updated > ").push_bind(since);
    }
    for group in [any_of, filters] {
        if group.is_empty() {
            continue;
        }
        sql.push(" AND (");
        push_any(&mut sql, group.iter(), |sql, criteria| {
            sql.push("(true");
            push_where(sql, criteria);
            sql.push(")");
        });
        sql.push(")");
    }
    sql
}

/// Whether this engine can evaluate `sp` on `resource_type` (what the CapabilityStatement lists).
pub fn is_supported(sp: &SearchParameter, resource_type: &str) -> bool {
    if matches!(sp.code.as_str(), "_id" | "_lastUpdated" | "_text" | "_content") {
        return true;
    }
    if sp.param_type == "composite" {
        // Supported when every component compiles relative to the composite's expression.
        let defs = definitions();
        let Some(expression) = sp.expression.as_deref() else { return false };
        return !sp.component.is_empty()
            && sp.component.iter().all(|c| {
                let url = c.get("definition").and_then(Value::as_str);
                let relative = c.get("expression").and_then(Value::as_str);
                let csp = defs.search_params(resource_type).into_iter().find(|s| Some(s.url.as_str()) == url);
                match (csp, relative) {
                    (Some(csp), Some(relative)) => {
                        is_supported(csp, resource_type) && paths::compile_component(expression, relative, resource_type, &csp.param_type).is_some()
                    }
                    _ => false,
                }
            });
    }
    matches!(sp.param_type.as_str(), "string" | "token" | "reference" | "date" | "number" | "quantity" | "uri")
        && (crate::index::is_indexed(resource_type, &sp.code) || sp.expression.as_deref().and_then(|e| paths::compile(e, resource_type)).is_some())
}
