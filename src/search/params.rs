//! Parsing of search query parameters: escapes, OR lists, prefixes, result parameters.

use super::{Clause, ClauseKind, Criteria, Prefix, build_clause};
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::definitions;
use crate::fhir::types::{ResourceType, sanitize};

/// Default and maximum page sizes.
pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;

/// `_total` (search.html#total): the default counts only for free — when the first page
/// holds every match; beyond that a count costs as much as the search, so it is made on
/// request: `accurate` counts, `estimate` takes PostgreSQL's planner estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    WhenKnown,
    None,
    Estimate,
    Accurate,
}

/// A fully parsed type-level search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub criteria: Criteria,
    pub count: usize,
    pub offset: usize,
    /// `_sort` keys in order: `(parameter, descending, how to sort)`.
    pub sort: Vec<(String, bool, super::SortKey)>,
    /// How `Bundle.total` is found (`_total`, search.html#total).
    pub total: TotalMode,
    /// `_summary` value, if any.
    pub summary: Option<String>,
    /// `_elements`, if any.
    pub elements: Option<Vec<String>>,
    /// The parameters actually used, for the self link (unknown ones left out).
    pub used: Vec<(String, String)>,
    /// `_include` / `_revinclude` (with `:iterate`), in request order.
    pub includes: Vec<Include>,
    /// Parameters left out because they are unknown or unsupported (lenient handling), for
    /// the `search.mode = outcome` entry.
    pub ignored: Vec<String>,
    /// `_cursor` of a `next` link: the sort key of the previous page's last match (keyset
    /// paging, see `search::cursor_after`).
    pub cursor: Option<String>,
}

/// One `_include` or `_revinclude` (search.html#include).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// `_revinclude`: resources of `source` that reference the matches.
    pub reverse: bool,
    /// `:iterate`: also applies to the resources included so far.
    pub iterate: bool,
    /// The type whose reference parameter is followed; `None` for `*` (any type).
    pub source: Option<String>,
    /// The reference parameter; `None` for `*` (all of the type's reference parameters).
    pub param: Option<String>,
    /// `Type:param:target` restricts the referenced type.
    pub target: Option<String>,
}

/// How deep `:iterate` follows references (a guard against cycles and explosions).
pub const MAX_INCLUDE_DEPTH: usize = 4;

/// Parses an `_include`/`_revinclude` value: `*`, `Type:*`, `Type:param`, `Type:param:Target`.
fn parse_include(value: &str, reverse: bool, iterate: bool) -> Result<Include, String> {
    if value == "*" {
        return Ok(Include { reverse, iterate, source: None, param: None, target: None });
    }
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or_default();
    let param = parts.next().ok_or("expected Type:parameter")?;
    let target = parts.next();
    if parts.next().is_some() {
        return Err("expected Type:parameter[:TargetType]".into());
    }
    let defs = definitions();
    if !defs.is_resource_type(source) {
        return Err(format!("'{}' is not a resource type", sanitize(source)));
    }
    if param != "*" {
        let sp = defs.search_param(source, param).ok_or_else(|| format!("{} has no search parameter '{}'", source, sanitize(param)))?;
        if sp.param_type != "reference" {
            return Err(format!("'{}' is not a reference parameter", sanitize(param)));
        }
    }
    if let Some(t) = target {
        if !defs.is_resource_type(t) {
            return Err(format!("'{}' is not a resource type", sanitize(t)));
        }
    }
    Ok(Include {
        reverse,
        iterate,
        source: Some(source.to_owned()),
        param: (param != "*").then(|| param.to_owned()),
        target: target.map(str::to_owned),
    })
}

/// The jsonpath paths of a reference parameter on a type (what chains and includes follow).
pub fn reference_paths(resource_type: &ResourceType, code: &str, base: &str) -> Option<Vec<String>> {
    let sp = definitions().search_param(resource_type.as_str(), code)?;
    if sp.param_type != "reference" {
        return None;
    }
    match build_clause(sp, resource_type, code, None, "x", base).ok()?.kind {
        ClauseKind::Reference { paths, .. } => Some(paths),
        _ => None,
    }
}

/// How many links a chained or reverse-chained parameter may have (`a.b.c` has 3; each `_has:`
/// counts one): each link is a nested query, so an unbounded chain exhausts the stack or the
/// database (a 20,000-link chain aborted the process).
pub const MAX_CHAIN_LINKS: usize = 6;

/// 400 when a parameter name chains further than [`MAX_CHAIN_LINKS`]; counted on the text
/// before anything is parsed, so the check itself is linear.
fn check_chain_length(key: &str) -> FhirResult<()> {
    let links = key.matches('.').count() + key.matches("_has:").count();
    if links > MAX_CHAIN_LINKS {
        return Err(FhirError::BadRequest(format!(
            "parameter '{}…': chains and _has are limited to {MAX_CHAIN_LINKS} links",
            sanitize(&key.chars().take(60).collect::<String>())
        )));
    }
    Ok(())
}

/// A chained parameter `ref[:Type].rest=value`; `Ok(None)` when a parameter is unknown.
fn parse_chain(resource_type: &ResourceType, key: &str, value: &str, base: &str) -> FhirResult<Option<Clause>> {
    check_chain_length(key)?;
    let bad = |why: String| FhirError::BadRequest(format!("chained parameter '{}': {why}", sanitize(key)));
    let Some((left, rest)) = key.split_once('.') else { return Ok(None) };
    let (name, type_modifier) = match left.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (left, None),
    };
    let defs = definitions();
    let Some(sp) = defs.search_param(resource_type.as_str(), name) else { return Ok(None) };
    if sp.param_type != "reference" {
        return Err(bad("only reference parameters can be chained".into()));
    }
    let Some(paths) = reference_paths(resource_type, name, base) else { return Ok(None) };
    let candidates: Vec<String> = match type_modifier {
        Some(t) => {
            if !defs.is_resource_type(t) || (!sp.target.is_empty() && !sp.target.iter().any(|x| x == t)) {
                return Err(bad(format!("'{}' is not a target type of {name}", sanitize(t))));
            }
            vec![t.to_owned()]
        }
        None if sp.target.is_empty() => defs.resource_types().to_vec(),
        None => sp.target.clone(),
    };
    // The next parameter (`name`, `name:exact`, `organization.name`, `_has:…`).
    let next_name = rest.split(['.', ':']).next().unwrap_or_default();
    let mut targets = vec![];
    for t in candidates {
        let known = next_name == "_has" || defs.search_param(&t, next_name).is_some();
        if !known {
            continue;
        }
        let rt = ResourceType::parse(&t)?;
        let inner = parse_search(&rt, &[(rest.to_owned(), value.to_owned())], true, base)?;
        targets.push(inner.criteria);
    }
    if targets.is_empty() {
        return Ok(None);
    }
    Ok(Some(Clause { name: key.to_owned(), kind: ClauseKind::Chain { paths, base: base.to_owned(), targets }, negate: false }))
}

/// A reverse chain `_has:Type:reference:rest=value` (nests); `Ok(None)` when unknown.
fn parse_has(resource_type: &ResourceType, key: &str, value: &str, base: &str) -> FhirResult<Option<Clause>> {
    check_chain_length(key)?;
    let bad = |why: &str| FhirError::BadRequest(format!("parameter '{}': {why}", sanitize(key)));
    let parts: Vec<&str> = key.splitn(4, ':').collect();
    let [_, source, reference, rest] = parts.as_slice() else {
        return Err(bad("expected _has:Type:reference:parameter"));
    };
    if !definitions().is_resource_type(source) {
        return Err(bad("unknown resource type"));
    }
    let source_type = ResourceType::parse(source)?;
    let Some(paths) = reference_paths(&source_type, reference, base) else { return Ok(None) };
    let next_name = rest.split(['.', ':']).next().unwrap_or_default();
    if next_name != "_has" && definitions().search_param(source, next_name).is_none() {
        return Ok(None);
    }
    let inner = parse_search(&source_type, &[((*rest).to_owned(), value.to_owned())], true, base)?;
    let _ = resource_type;
    Ok(Some(Clause { name: key.to_owned(), kind: ClauseKind::Has { paths, base: base.to_owned(), source: inner.criteria }, negate: false }))
}

/// How many parameters one search may have (each is a clause of the query, an include or a
/// result parameter). 70,000 `code=` parameters were 5 s of work ending in a 500 (PostgreSQL
/// takes at most 65,535 bound values per statement).
pub const MAX_SEARCH_PARAMETERS: usize = 100;
/// How many comma-separated values (alternatives) one parameter may have.
pub const MAX_VALUES_PER_PARAMETER: usize = 1000;
/// How many keys `_sort` may have (2,000 keys ended in PostgreSQL's 1,664-column limit).
pub const MAX_SORT_KEYS: usize = 12;

/// 400 when a search is larger than the bounds above; counted on the text before anything is
/// parsed, so an oversized search costs no more than reading it.
fn check_size(pairs: &[(String, String)]) -> FhirResult<()> {
    if pairs.len() > MAX_SEARCH_PARAMETERS {
        return Err(FhirError::BadRequest(format!(
            "a search may have at most {MAX_SEARCH_PARAMETERS} parameters (this one has {})",
            pairs.len()
        )));
    }
    if pairs.iter().filter(|(k, _)| k == "_sort").count() > 1 {
        return Err(FhirError::BadRequest("parameter '_sort': may be given once (list the keys, comma-separated)".into()));
    }
    for (key, value) in pairs {
        let values = value.matches(',').count() + 1;
        let limit = if key == "_sort" { MAX_SORT_KEYS } else { MAX_VALUES_PER_PARAMETER };
        if values > limit {
            return Err(FhirError::BadRequest(format!(
                "parameter '{}': at most {limit} comma-separated values (this one has {values})",
                sanitize(&key.chars().take(60).collect::<String>())
            )));
        }
    }
    Ok(())
}

/// The deepest `_offset` a page may start at: past it, keyset paging (`next` links) is the
/// way on. Also keeps the value within PostgreSQL's bigint (2^64-1 was a 500).
pub const MAX_OFFSET: usize = 1_000_000;

/// `_offset`: a non-negative integer of at most [`MAX_OFFSET`].
pub fn parse_offset(value: &str) -> Result<usize, &'static str> {
    match value.parse::<u64>() {
        Ok(n) if n <= MAX_OFFSET as u64 => Ok(n as usize),
        Ok(_) => Err("must be at most 1000000 (follow the next links to page further)"),
        Err(_) => Err("must be a non-negative integer"),
    }
}

/// Parses `pairs` into a search request. Unknown or unsupported parameters are ignored, or
/// rejected with 400 when `strict` (`Prefer: handling=strict`, and conditional interactions).
/// `base` is the server's FHIR base URL, against which relative references resolve.
pub fn parse_search(resource_type: &ResourceType, pairs: &[(String, String)], strict: bool, base: &str) -> FhirResult<SearchRequest> {
    let mut request = SearchRequest {
        criteria: Criteria { resource_type: resource_type.clone(), clauses: Vec::<Clause>::new() },
        count: DEFAULT_COUNT,
        offset: 0,
        sort: vec![],
        total: TotalMode::WhenKnown,
        summary: None,
        elements: None,
        used: vec![],
        includes: vec![],
        ignored: vec![],
        cursor: None,
    };
    let bad = |name: &str, why: &str| FhirError::BadRequest(format!("parameter '{}': {why}", sanitize(name)));
    // The one gate for search text (queries, _search forms, If-None-Exist, conditional URLs and
    // references in Bundles): PostgreSQL cannot hold U+0000, and FHIR values exclude controls.
    if let Some((key, _)) = pairs.iter().find(|(k, v)| crate::fhir::types::has_forbidden_control(k) || crate::fhir::types::has_forbidden_control(v)) {
        return Err(bad(key, "a control character (U+0000–U+001F other than tab, CR, LF) is not allowed in search parameters"));
    }
    check_size(pairs)?;
    for (key, value) in pairs {
        match key.as_str() {
            "_count" => {
                request.count = value.parse::<usize>().map_err(|_| bad(key, "must be a non-negative integer"))?.min(MAX_COUNT);
            }
            "_offset" => {
                request.offset = parse_offset(value).map_err(|why| bad(key, why))?;
                continue;
            }
            "_cursor" => {
                request.cursor = Some(value.clone());
                continue;
            }
            "_sort" => {
                for k in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                    let (name, desc) = match k.strip_prefix('-') {
                        Some(n) => (n, true),
                        None => (k, false),
                    };
                    match super::sort_key(resource_type, name) {
                        Some(key) => request.sort.push((name.to_owned(), desc, key)),
                        None if strict => return Err(bad(key, &format!("cannot sort on '{}'", sanitize(name)))),
                        None => request.ignored.push(format!("_sort={name}")),
                    }
                }
            }
            "_total" => match value.as_str() {
                "none" => request.total = TotalMode::None,
                "estimate" => request.total = TotalMode::Estimate,
                "accurate" => request.total = TotalMode::Accurate,
                _ => return Err(bad(key, "must be none, estimate or accurate")),
            },
            "_summary" => match value.as_str() {
                "true" | "false" | "text" | "data" | "count" => {
                    if value == "count" {
                        request.count = 0;
                        request.total = TotalMode::Accurate;
                    }
                    request.summary = Some(value.clone());
                }
                _ => return Err(bad(key, "must be true, false, text, data or count")),
            },
            "_elements" => {
                request.elements = Some(value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect());
            }
            "_format" | "_pretty" => continue,
            "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
                let reverse = key.starts_with("_revinclude");
                match parse_include(value, reverse, key.ends_with(":iterate")) {
                    Ok(include) if !(reverse && include.source.is_none()) => request.includes.push(include),
                    Ok(_) if strict => return Err(bad(key, "_revinclude needs Type:parameter")),
                    Err(e) if strict => return Err(bad(key, &e)),
                    _ => {
                        request.ignored.push(key.clone());
                        continue;
                    }
                }
            }
            _ if key.starts_with("_has:") || is_chain(key) => {
                let parsed = if key.starts_with("_has:") {
                    parse_has(resource_type, key, value, base)?
                } else {
                    parse_chain(resource_type, key, value, base)?
                };
                match parsed {
                    Some(clause) => request.criteria.clauses.push(clause),
                    None if strict => return Err(bad(key, &format!("unknown search parameter for {resource_type}"))),
                    None => {
                        request.ignored.push(key.clone());
                        continue;
                    }
                }
            }
            _ => {
                let (name, modifier) = match key.split_once(':') {
                    Some((n, m)) => (n, Some(m)),
                    None => (key.as_str(), None),
                };
                let Some(sp) = definitions().search_param(resource_type.as_str(), name) else {
                    if strict {
                        return Err(bad(key, &format!("unknown search parameter for {resource_type}")));
                    }
                    request.ignored.push(key.clone());
                    continue;
                };
                match build_clause(sp, resource_type, name, modifier, value, base) {
                    Ok(clause) => request.criteria.clauses.push(clause),
                    Err(e) if strict => return Err(e),
                    Err(FhirError::BadRequest(msg)) if msg.contains("not supported") || msg.contains("unsupported modifier") => {
                        request.ignored.push(key.clone());
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        request.used.push((key.clone(), value.clone()));
    }
    Ok(request)
}

/// Whether a key is a chain (`subject.name`, `subject:Patient.name`): a `.` after the
/// parameter name and its optional type modifier.
fn is_chain(key: &str) -> bool {
    match key.split_once('.') {
        Some((left, _)) => !left.is_empty() && left.split(':').count() <= 2,
        None => false,
    }
}

/// Splits a value on unescaped commas (OR) and unescapes `\,` `\|` `\$` `\\`.
pub fn split_or(raw: &str) -> Vec<String> {
    split_unescaped(raw, ',')
}

/// Splits on an unescaped separator and unescapes the pieces.
pub fn split_unescaped(raw: &str, sep: char) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next @ (',' | '|' | '$' | '\\')) if next != sep => {
                    // Escaped character that is not our separator: keep it escaped for the
                    // next split level.
                    cur.push('\\');
                    cur.push(next);
                }
                Some(next) => cur.push(next),
                None => cur.push('\\'),
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Removes the remaining search escapes (`\|`, `\$`, `\\`) from a piece that is not split further.
pub fn unescape_value(s: &str) -> String {
    s.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$").replace("\\\\", "\\")
}

/// `system|code`, `|code`, `system|`, `code` → `(system, code)`; `Some("")` system means "no system".
pub fn split_token(v: &str) -> (Option<String>, Option<String>) {
    let parts = split_unescaped(v, '|');
    let clean = |s: &str| unescape_value(s);
    match parts.as_slice() {
        [code] => (None, Some(clean(code))),
        [system, code] => (Some(clean(system)), if code.is_empty() { None } else { Some(clean(code)) }),
        _ => (None, Some(clean(v))),
    }
}

/// Splits a comparison prefix off an ordered value (`ge2020` → `(Ge, "2020")`).
pub fn split_prefix(v: &str) -> Result<(Prefix, String), String> {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        if let Some(rest) = v.strip_prefix(text) {
            return Ok((prefix, rest.to_owned()));
        }
    }
    if v.is_empty() {
        return Err("empty value".into());
    }
    Ok((Prefix::Eq, v.to_owned()))
}

/// Checks a date search value: a FHIR date or dateTime that exists (`2020-13-45`, `2020-02-30`
/// and `T25:61` are refused, never silently matching nothing).
pub fn check_date(v: &str) -> Result<(), String> {
    let b = v.as_bytes();
    let ok = b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit) && b.iter().all(|c| c.is_ascii_digit() || b"-:T.+Z".contains(c));
    if ok && date_bounds(v).is_some() { Ok(()) } else { Err("not a valid date (a FHIR date or dateTime that exists)".into()) }
}

/// The instants a date search value covers, `[low, high)` — exactly what the SQL function
/// `fhir_text_range` (migrations/functions/search.sql) makes of the stored texts: a year, month or day in UTC
/// when no zone is given, a time to its minute, second or millisecond. `None` when it is not a
/// FHIR date. Computed here so search SQL binds plain instants (no function call to plan).
pub fn date_bounds(v: &str) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    use chrono::{Duration, Months, NaiveDate, TimeZone, Utc};
    let day = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| Utc.from_utc_datetime(&t));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    // Every form below is ASCII and is cut at byte offsets: other text is no date (and
    // `1-\u{fffd}nt` cut inside a character panicked, a 500 on every write of such a Period).
    if !v.is_ascii() {
        return None;
    }
    match v.len() {
        4 if digits(v) => {
            let low = day(v.parse().ok()?, 1, 1)?;
            Some((low, low.checked_add_months(Months::new(12))?))
        }
        7 if digits(&v[..4]) && &v[4..5] == "-" && digits(&v[5..]) => {
            let low = day(v[..4].parse().ok()?, v[5..].parse().ok()?, 1)?;
            Some((low, low.checked_add_months(Months::new(1))?))
        }
        10 => {
            let d = NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()?;
            let low = Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?);
            Some((low, low + Duration::days(1)))
        }
        _ => {
            let (date, time) = v.split_once('T')?;
            let zone_at = time.find(['Z', '+', '-']).unwrap_or(time.len());
            let (clock, zone) = time.split_at(zone_at);
            let zone = if zone.is_empty() { "Z" } else { zone };
            let (clock, step) = match clock.len() {
                5 => (format!("{clock}:00"), Duration::minutes(1)),
                8 => (clock.to_owned(), Duration::seconds(1)),
                n if n > 9 && clock.as_bytes()[8] == b'.' => (clock.to_owned(), Duration::milliseconds(1)),
                _ => return None,
            };
            let low = chrono::DateTime::parse_from_rfc3339(&format!("{date}T{clock}{zone}")).ok()?.with_timezone(&Utc);
            Some((low, low + step))
        }
    }
}

/// The implicit range of a decimal search value: `100` means [99.5, 100.5) (search.html#number).
pub fn number_range(v: &str) -> Option<(f64, f64)> {
    let n: f64 = v.parse().ok()?;
    if !n.is_finite() {
        return None;
    }
    let mantissa = v.split(['e', 'E']).next().unwrap_or(v);
    // Checked: `0.5e-2147483648` overflowed `exponent - decimals` and panicked the handler.
    let decimals = i32::try_from(mantissa.split_once('.').map_or(0, |(_, d)| d.len())).ok()?;
    let exponent: i32 = match v.split_once(['e', 'E']) {
        Some((_, e)) => e.parse().ok()?,
        None => 0,
    };
    let half = 0.5 * 10f64.powi(exponent.checked_sub(decimals)?);
    Some((n - half, n + half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_bounds_follow_the_precision_written() {
        let b = |v: &str| date_bounds(v).map(|(l, h)| (l.to_rfc3339(), h.to_rfc3339()));
        assert_eq!(b("2024"), Some(("2024-01-01T00:00:00+00:00".into(), "2025-01-01T00:00:00+00:00".into())));
        assert_eq!(b("2024-02"), Some(("2024-02-01T00:00:00+00:00".into(), "2024-03-01T00:00:00+00:00".into())));
        assert_eq!(b("2024-12"), Some(("2024-12-01T00:00:00+00:00".into(), "2025-01-01T00:00:00+00:00".into())));
        assert_eq!(b("2024-02-29"), Some(("2024-02-29T00:00:00+00:00".into(), "2024-03-01T00:00:00+00:00".into())));
        assert_eq!(b("2024-02-29T10:00"), Some(("2024-02-29T10:00:00+00:00".into(), "2024-02-29T10:01:00+00:00".into())));
        assert_eq!(b("2024-02-29T10:00:05+02:00"), Some(("2024-02-29T08:00:05+00:00".into(), "2024-02-29T08:00:06+00:00".into())));
        assert_eq!(b("2024-02-29T10:00:05.25Z").map(|x| x.1), Some("2024-02-29T10:00:05.251+00:00".into()));
        assert_eq!(b("2024-13"), None);
        assert_eq!(b("2024-02-30"), None);
        assert_eq!(b("20x4"), None);
        assert_eq!(b("1-\u{fffd}nt"), None);
        assert_eq!(b("2024-0\u{e9}"), None);
    }

    #[test]
    fn numbers_with_extreme_exponents_are_no_numbers_or_ranges_not_panics() {
        assert!(number_range("0.5e-2147483648").is_none(), "the precision's exponent does not fit: no range");
        assert!(number_range("1e2147483648").is_none());
        assert!(number_range("1e400").is_none());
        let (lo, hi) = number_range("0.5e-300").expect("a tiny number");
        assert!(lo <= 0.5e-300 && 0.5e-300 <= hi);
    }

    #[test]
    fn escaped_commas_and_pipes_survive_splitting() {
        assert_eq!(split_or("a\\,b,c"), vec!["a,b".to_owned(), "c".to_owned()]);
        assert_eq!(split_token("http://x\\|y|12"), (Some("http://x|y".into()), Some("12".into())));
        assert_eq!(split_token("|12"), (Some(String::new()), Some("12".into())));
        assert_eq!(split_token("sys|"), (Some("sys".into()), None));
    }

    #[test]
    fn number_precision_follows_significant_digits() {
        assert_eq!(number_range("100"), Some((99.5, 100.5)));
        let (lo, hi) = number_range("0.5").unwrap();
        assert!((lo - 0.45).abs() < 1e-9 && (hi - 0.55).abs() < 1e-9);
    }
}
