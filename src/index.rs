//! Search index values of a resource: the write half of the planned index tables
//! (ARCHITECTURE.md, "Next: search index tables"). Each official SearchParameter of the type is
//! evaluated with FHIRPath ([`crate::fhirpath`]) and its results become typed values the way
//! search.html compares them: strings folded for prefix search, tokens as system and code,
//! references as local `Type/id` or the absolute URL, dates and numbers as ranges.
//!
//! Not wired into the writes yet; `extract` is what the index tables will store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use crate::fhir::definitions::definitions;
use crate::fhirpath::{Expression, Item};
use crate::search::normalize;
use crate::search::params::number_range;

/// One indexed value of one search parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `normalized` for default and `:contains` search, `exact` for `:exact`.
    String { normalized: String, exact: String },
    Token { system: Option<String>, code: String },
    /// A local reference as `Type/id` (relative to this server), anything else as written.
    Reference(String),
    /// The instants the value covers, `[low, high)`.
    Date { low: DateTime<Utc>, high: DateTime<Utc> },
    /// The interval implied by the value's precision.
    Number { low: f64, high: f64 },
    Quantity { low: f64, high: f64, system: Option<String>, code: Option<String> },
    Uri(String),
}

/// A value of a named parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub param: String,
    pub value: IndexValue,
}

/// A type's parameters with parsed expressions, built once per type.
type Plan = Vec<(String, String, Expression)>;

fn plan(resource_type: &str) -> Arc<Plan> {
    static PLANS: OnceLock<Mutex<HashMap<String, Arc<Plan>>>> = OnceLock::new();
    let plans = PLANS.get_or_init(Default::default);
    if let Some(p) = plans.lock().ok().and_then(|m| m.get(resource_type).cloned()) {
        return p;
    }
    let built: Plan = definitions()
        .search_params(resource_type)
        .into_iter()
        .filter(|sp| !matches!(sp.param_type.as_str(), "composite" | "special"))
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
            if parts.is_empty() {
                return None;
            }
            let parsed = Expression::parse(&parts.join(" | ")).ok()?;
            Some((sp.code.clone(), sp.param_type.clone(), parsed))
        })
        .collect();
    let built = Arc::new(built);
    if let Ok(mut m) = plans.lock() {
        m.insert(resource_type.to_owned(), built.clone());
    }
    built
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
    let mut out = Vec::new();
    for (param, param_type, expression) in plan(resource_type).iter() {
        let Ok(items) = expression.evaluate(resource) else { continue };
        for item in items {
            for value in values(param_type, item, base) {
                let entry = IndexEntry { param: param.clone(), value };
                if !out.contains(&entry) {
                    out.push(entry);
                }
            }
        }
    }
    out
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
        ("token", Item::String(code)) => vec![IndexValue::Token { system: None, code }],
        ("token", Item::Boolean(b)) => vec![IndexValue::Token { system: None, code: b.to_string() }],
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
        ("date", Item::Date(s) | Item::DateTime(s) | Item::String(s)) => date_range(&s).map(|(low, high)| IndexValue::Date { low, high }).into_iter().collect(),
        ("date", Item::Element(v)) => {
            // Period: open ends reach the ends of time; Timing: its events.
            if v.get("start").is_some() || v.get("end").is_some() {
                let low = text(&v, "start").and_then(|s| date_range(&s)).map(|r| r.0).unwrap_or(DateTime::<Utc>::MIN_UTC);
                let high = text(&v, "end").and_then(|s| date_range(&s)).map(|r| r.1).unwrap_or(DateTime::<Utc>::MAX_UTC);
                vec![IndexValue::Date { low, high }]
            } else {
                v.get("event")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(date_range)
                    .map(|(low, high)| IndexValue::Date { low, high })
                    .collect()
            }
        }
        ("number", Item::Integer(i)) => number_range(&i.to_string()).map(|(low, high)| IndexValue::Number { low, high }).into_iter().collect(),
        ("number", Item::Decimal(d)) => number_range(&d).map(|(low, high)| IndexValue::Number { low, high }).into_iter().collect(),
        ("quantity", Item::Quantity { value, unit }) => number_range(&value)
            .map(|(low, high)| IndexValue::Quantity { low, high, system: None, code: unit })
            .into_iter()
            .collect(),
        ("quantity", Item::Element(v)) => {
            let Some(number) = v.get("value").filter(|n| n.is_number()).map(|n| n.to_string()) else { return vec![] };
            number_range(&number)
                .map(|(low, high)| IndexValue::Quantity { low, high, system: text(&v, "system"), code: text(&v, "code").or_else(|| text(&v, "unit")) })
                .into_iter()
                .collect()
        }
        _ => vec![],
    }
}

/// `<base>/Type/id` → `Type/id`; other references unchanged.
fn local(reference: &str, base: &str) -> String {
    crate::fhir::types::local_reference(reference, base).to_owned()
}

/// The instants a FHIR date, dateTime or instant covers (search.html#date): a year, month or
/// day is the whole period (in UTC when no zone is given); a time is exact to its precision.
pub fn date_range(s: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let day = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| Utc.from_utc_datetime(&t));
    match s.len() {
        4 => {
            let y: i32 = s.parse().ok()?;
            Some((day(y, 1, 1)?, day(y + 1, 1, 1)?))
        }
        7 => {
            let (y, m) = s.split_once('-')?;
            let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
            let next = if m == 12 { day(y + 1, 1, 1)? } else { day(y, m + 1, 1)? };
            Some((day(y, m, 1)?, next))
        }
        10 => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            let low = Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?);
            Some((low, low + chrono::Duration::days(1)))
        }
        _ => {
            let t = DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|t| Utc.from_utc_datetime(&t)))
                .ok()?;
            // Precision: seconds unless fractional digits are given.
            let fraction = s.split_once('.').map(|(_, f)| f.chars().take_while(char::is_ascii_digit).count() as u32).unwrap_or(0);
            let step = chrono::Duration::nanoseconds(10i64.pow(9u32.saturating_sub(fraction.min(9))));
            Some((t, t + step))
        }
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
        assert_eq!(params(&entries, "gender"), vec![&IndexValue::Token { system: None, code: "female".into() }]);
        assert_eq!(params(&entries, "active"), vec![&IndexValue::Token { system: None, code: "true".into() }]);
        assert_eq!(params(&entries, "organization"), vec![&IndexValue::Reference("Organization/o1".into())]);
        let (low, high) = date_range("1970-05").unwrap();
        assert_eq!(params(&entries, "birthdate"), vec![&IndexValue::Date { low, high }]);
        assert_eq!(high - low, chrono::Duration::days(31));
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
        match params(&entries, "value-quantity").as_slice() {
            [IndexValue::Quantity { low, high, system, code }] => {
                assert!((*low - 72.45).abs() < 1e-9 && (*high - 72.55).abs() < 1e-9);
                assert_eq!((system.as_deref(), code.as_deref()), (Some("http://unitsofmeasure.org"), Some("/min")));
            }
            other => panic!("{other:?}"),
        }
        match params(&entries, "date").as_slice() {
            [IndexValue::Date { high, .. }] => assert_eq!(*high, DateTime::<Utc>::MAX_UTC, "an open period reaches the end of time"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn date_ranges_follow_the_precision_written() {
        let (l, h) = date_range("2024").unwrap();
        assert_eq!((l.to_rfc3339(), h.to_rfc3339()), ("2024-01-01T00:00:00+00:00".into(), "2025-01-01T00:00:00+00:00".into()));
        let (l, h) = date_range("2024-02-29").unwrap();
        assert_eq!(h - l, chrono::Duration::days(1));
        let (l, h) = date_range("2024-02-29T10:00:00+02:00").unwrap();
        assert_eq!((l.to_rfc3339(), (h - l).num_seconds()), ("2024-02-29T08:00:00+00:00".into(), 1));
        let (l, h) = date_range("2024-02-29T10:00:00.250Z").unwrap();
        assert_eq!((h - l).num_milliseconds(), 1, "milliseconds are exact to the millisecond");
        let _ = l;
        assert!(date_range("not a date").is_none());
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
}
