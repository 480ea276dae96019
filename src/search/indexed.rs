//! Search clauses answered from the index tables (migrations/0001_baseline.sql, written by
//! [`crate::index`]): `r.id IN (SELECT id FROM search_<kind> WHERE resource_type = … AND
//! param = … AND <value test>)`, so PostgreSQL seeks the `(resource_type, param, value)` indexes
//! instead of evaluating jsonpath over every resource of the type. Chains and `_has` become
//! joins over `search_reference`.
//!
//! The value tests mean exactly what the jsonpath forms in `push_clause` mean; clauses whose
//! parameter has no index rows (its expression did not parse), composite parameters and the
//! rarer modifiers (`:text`, `:of-type`, `:identifier`) stay on the JSON documents.

use sqlx::{Postgres, QueryBuilder};

use super::{Clause, ClauseKind, Criteria, StringMode, UriMode, like_escape, push_any, push_number_test, push_range_test, push_where};
use crate::fhir::definitions::definitions;
use crate::index;

/// The table holding a parameter type's values.
fn table(param_type: &str) -> Option<&'static str> {
    Some(match param_type {
        "string" => "search_string",
        "token" => "search_token",
        "reference" => "search_reference",
        "date" => "search_date",
        "number" | "quantity" => "search_number",
        "uri" => "search_uri",
        _ => return None,
    })
}

/// The SearchParameter code a clause's name starts with (`name:exact` → `name`,
/// `subject:Patient.name` → `subject`, `_has:Observation:patient:code` → `_has`).
fn code_of(name: &str) -> &str {
    name.split([':', '.']).next().unwrap_or(name)
}

/// The type of `code` on `resource_type` when its values are in the index tables.
fn indexed_type(resource_type: &str, code: &str) -> Option<String> {
    if !index::is_indexed(resource_type, code) {
        return None;
    }
    definitions().search_params(resource_type).into_iter().find(|sp| sp.code == code).map(|sp| sp.param_type.clone())
}

/// Pushes the clause as a test on the index tables and returns true, or pushes nothing and
/// returns false when the clause must be answered from the documents. `resource_type` is the
/// type the clause's criteria search (the `r` of the surrounding query).
pub(super) fn push_indexed(sql: &mut QueryBuilder<Postgres>, resource_type: &str, clause: &Clause) -> bool {
    match &clause.kind {
        ClauseKind::Has { source, .. } => return push_has(sql, resource_type, &clause.name, source),
        ClauseKind::InCompartment { params, values, .. } => return push_in_compartment(sql, resource_type, params, values),
        ClauseKind::Member(membership) => {
            membership.push_sql(sql, resource_type);
            return true;
        }
        ClauseKind::AnyOf(alternatives) => {
            sql.push("(false");
            for alternative in alternatives {
                sql.push(" OR (true");
                push_where(sql, alternative);
                sql.push(")");
            }
            sql.push(")");
            return true;
        }
        _ => {}
    }
    let code = code_of(&clause.name);
    let Some(param_type) = indexed_type(resource_type, code) else { return false };
    if crate::crypto::policy::is_protected(resource_type, code) {
        return push_blind(sql, resource_type, code, &clause.kind);
    }
    let Some(table) = table(&param_type) else { return false };
    match &clause.kind {
        ClauseKind::Missing { missing, .. } => {
            sql.push(if *missing { "NOT EXISTS (SELECT 1 FROM " } else { "EXISTS (SELECT 1 FROM " });
            sql.push(table).push(" s WHERE s.resource_type = r.resource_type AND s.id = r.id AND s.param = ");
            sql.push_bind(code.to_owned()).push(")");
            true
        }
        ClauseKind::String { values, mode, .. } => {
            open(sql, table, resource_type, code);
            push_any(sql, values.iter(), |sql, value| match mode {
                StringMode::Exact => {
                    sql.push("s.exact = ").push_bind(value.clone());
                }
                StringMode::StartsWith => push_string_prefix(sql, &super::normalize(value)),
                StringMode::Contains => {
                    sql.push("s.normalized LIKE ").push_bind(format!("%{}%", like_escape(&super::normalize(value))));
                }
            });
            sql.push("))");
            true
        }
        ClauseKind::Token { values, .. } => {
            open(sql, table, resource_type, code);
            push_any(sql, values.iter(), |sql, (system, code)| {
                sql.push("(true");
                if let Some(code) = code {
                    sql.push(" AND s.code = ").push_bind(index::index_key(code).into_owned());
                }
                // Bare codes are stored with system "" (see `index::values`): a system in the
                // query cannot be checked against them, so only their code must match.
                match (system, code) {
                    (Some(s), _) if s.is_empty() => {
                        sql.push(" AND s.system IS NULL");
                    }
                    (Some(s), Some(_)) => {
                        sql.push(" AND (s.system = ").push_bind(index::index_key(s).into_owned()).push(" OR s.system = '')");
                    }
                    (Some(s), None) => {
                        sql.push(" AND s.system = ").push_bind(index::index_key(s).into_owned());
                    }
                    (None, _) => {}
                }
                sql.push(")");
            });
            sql.push("))");
            true
        }
        ClauseKind::Reference { values, .. } if param_type == "reference" => {
            open(sql, table, resource_type, code);
            let keys: Vec<String> = values.iter().map(|v| index::index_key(v).into_owned()).collect();
            sql.push("s.target = ANY(").push_bind(keys).push(")))");
            true
        }
        ClauseKind::ReferencePrefix { prefixes, .. } if param_type == "reference" => {
            // Stored targets are local, so only the relative prefixes (`Patient/`) can match.
            open(sql, table, resource_type, code);
            push_any(sql, prefixes.iter().filter(|p| !p.contains(':')), |sql, prefix| push_prefix(sql, "s.target", prefix));
            sql.push(" OR false))");
            true
        }
        ClauseKind::Chain { targets, .. } if param_type == "reference" => {
            open(sql, table, resource_type, code);
            sql.push("s.target IN (");
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
            sql.push(")))");
            true
        }
        ClauseKind::Date { values, .. } => {
            open(sql, table, resource_type, code);
            push_any(sql, values.iter(), |sql, (prefix, value)| push_range_test(sql, "s.low", "s.high", *prefix, value));
            sql.push("))");
            true
        }
        ClauseKind::Number { values, quantity, .. } => {
            open(sql, table, resource_type, code);
            push_any(sql, values.iter().zip(quantity), |sql, ((prefix, lo, hi), (system, unit))| {
                push_number_test(sql, ("s.value", "s.system", "s.code", "s.unit"), *prefix, *lo, *hi, system, unit);
            });
            sql.push("))");
            true
        }
        ClauseKind::Uri { values, mode, .. } => {
            open(sql, table, resource_type, code);
            push_any(sql, values.iter(), |sql, value| match mode {
                UriMode::Exact => {
                    sql.push("s.uri = ").push_bind(index::index_key(value).into_owned());
                }
                UriMode::Below => push_prefix(sql, "s.uri", value),
                UriMode::Above => {
                    sql.push(" ").push_bind(value.clone()).push(" LIKE (replace(replace(replace(s.uri, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%')");
                }
            });
            sql.push("))");
            true
        }
        _ => false,
    }
}

/// `r.id IN (…)`: the `source_type` resources whose reference parameter `code` names one of
/// `targets` (local `Type/id`), for `_revinclude`; false (nothing pushed) when `code` is not
/// an indexed reference parameter of `source_type`.
pub(super) fn push_referencing(sql: &mut QueryBuilder<Postgres>, source_type: &str, code: &str, targets: Vec<String>) -> bool {
    if indexed_type(source_type, code).as_deref() != Some("reference") {
        return false;
    }
    open(sql, "search_reference", source_type, code);
    sql.push("s.target = ANY(").push_bind(targets).push(")))");
    true
}

/// The query of the distinct targets that `resource_type` resources `ids` reference through
/// the reference parameter `code` (for `_include`); `None` when `code` is not indexed.
pub(super) fn referenced_by(resource_type: &str, code: &str, ids: &[String]) -> Option<QueryBuilder<Postgres>> {
    if indexed_type(resource_type, code).as_deref() != Some("reference") {
        return None;
    }
    let mut sql = QueryBuilder::new("SELECT DISTINCT s.target FROM search_reference s WHERE s.resource_type = ");
    sql.push_bind(resource_type.to_owned()).push(" AND s.id = ANY(").push_bind(ids.to_vec());
    sql.push(") AND s.param = ").push_bind(code.to_owned());
    Some(sql)
}

/// `r.id IN (SELECT s.id FROM <table> s WHERE s.resource_type = <rt> AND s.param = <code> AND (`
/// — the caller closes both parentheses.
fn open(sql: &mut QueryBuilder<Postgres>, table: &str, resource_type: &str, code: &str) {
    sql.push("r.id IN (SELECT s.id FROM ").push(table).push(" s WHERE s.resource_type = ");
    sql.push_bind(resource_type.to_owned()).push(" AND s.param = ").push_bind(code.to_owned()).push(" AND (");
}

/// `column` starts with `prefix`, as a range of the byte-ordered `text_pattern_ops` index
/// (`~>=~`/`~<~`), which PostgreSQL can seek whether or not the plan knows the value.
fn push_prefix(sql: &mut QueryBuilder<Postgres>, column: &str, prefix: &str) {
    sql.push("(").push(column).push(" ~>=~ ").push_bind(prefix.to_owned());
    match prefix_successor(prefix) {
        Some(upper) => {
            sql.push(" AND ").push(column).push(" ~<~ ").push_bind(upper);
        }
        None => {
            sql.push(" AND starts_with(").push(column).push(", ").push_bind(prefix.to_owned()).push(")");
        }
    }
    sql.push(")");
}

/// How many characters of a normalized string the prefix index covers (`search_string_value` in migrations/0001_baseline.sql).
const STRING_PREFIX_INDEXED_CHARS: usize = 250;

/// `s.normalized` starts with `prefix`: a range on the indexed `left(s.normalized, 250)`, and
/// for a longer prefix also the whole value (the index entry holds only its start).
fn push_string_prefix(sql: &mut QueryBuilder<Postgres>, prefix: &str) {
    let indexed: String = prefix.chars().take(STRING_PREFIX_INDEXED_CHARS).collect();
    push_prefix(sql, "left(s.normalized, 250)", &indexed);
    if indexed.len() < prefix.len() {
        sql.push(" AND starts_with(s.normalized, ").push_bind(prefix.to_owned()).push(")");
    }
}

/// The least string greater than every string starting with `prefix` (its last character
/// incremented), when there is one.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Compartment membership over `search_reference`: any of `params` names one of `values`.
fn push_in_compartment(sql: &mut QueryBuilder<Postgres>, resource_type: &str, params: &[String], values: &[String]) -> bool {
    if params.is_empty() || params.iter().any(|p| indexed_type(resource_type, p).as_deref() != Some("reference")) {
        return false;
    }
    sql.push("r.id IN (SELECT s.id FROM search_reference s WHERE s.resource_type = ").push_bind(resource_type.to_owned());
    sql.push(" AND s.param = ANY(").push_bind(params.to_vec()).push(") AND s.target = ANY(").push_bind(values.to_vec()).push("))");
    true
}

/// `_has:Source:param:…` (search.html#has) over `search_reference`: the ids of `resource_type`
/// that a live `source` resource matching the inner criteria references through `param`.
fn push_has(sql: &mut QueryBuilder<Postgres>, resource_type: &str, name: &str, source: &Criteria) -> bool {
    // `_has:Observation:patient:code` → the reference parameter `patient` of Observation.
    let mut parts = name.split(':');
    let (Some("_has"), Some(_), Some(param)) = (parts.next(), parts.next(), parts.next()) else { return false };
    let source_type = source.resource_type.as_str();
    if indexed_type(source_type, param).as_deref() != Some("reference") {
        return false;
    }
    let prefix = format!("{resource_type}/");
    sql.push("r.id IN (SELECT substr(s.target, ").push_bind(prefix.chars().count() as i32 + 1);
    sql.push(") FROM search_reference s WHERE s.resource_type = ").push_bind(source_type.to_owned());
    sql.push(" AND s.param = ").push_bind(param.to_owned());
    sql.push(" AND starts_with(s.target, ").push_bind(prefix).push(")");
    sql.push(" AND s.id IN (SELECT r.id FROM resource r WHERE r.resource_type = ").push_bind(source_type.to_owned());
    sql.push(" AND NOT r.deleted");
    push_where(sql, source);
    sql.push("))");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_successor_bounds_exactly_the_strings_with_that_prefix() {
        assert_eq!(prefix_successor("smi").as_deref(), Some("smj"));
        assert_eq!(prefix_successor("zo\u{10FFFF}").as_deref(), Some("zp"));
        assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        for s in ["smith", "smi", "smi\u{10FFFF}x"] {
            assert!(("smi".."smj").contains(&s));
        }
    }

    #[test]
    fn clause_names_map_to_their_parameter() {
        assert_eq!(code_of("name:exact"), "name");
        assert_eq!(code_of("subject:Patient.name"), "subject");
        assert_eq!(code_of("subject.name"), "subject");
        assert_eq!(code_of("value-quantity"), "value-quantity");
    }
}

/// A clause on a protected parameter, answered from `search_blind` by the keyed hashes of the
/// searched values (`crypto::blind`; `search::check_protected` admitted only these forms).
fn push_blind(sql: &mut QueryBuilder<Postgres>, resource_type: &str, code: &str, kind: &ClauseKind) -> bool {
    let hash = |form: &str, value: &str| crate::crypto::blind::search_hash(resource_type, code, form, value).unwrap_or_default();
    let hashes: Vec<Vec<u8>> = match kind {
        ClauseKind::Missing { missing, .. } => {
            sql.push(if *missing { "NOT EXISTS (SELECT 1 FROM " } else { "EXISTS (SELECT 1 FROM " });
            sql.push("search_blind s WHERE s.resource_type = r.resource_type AND s.id = r.id AND s.param = ");
            sql.push_bind(code.to_owned()).push(")");
            return true;
        }
        ClauseKind::String { values, mode: StringMode::StartsWith, .. } => values.iter().map(|v| hash("s", &super::normalize(v))).collect(),
        ClauseKind::String { values, mode: StringMode::Exact, .. } => values.iter().map(|v| hash("x", v)).collect(),
        ClauseKind::Token { values, .. } => values
            .iter()
            .filter_map(|(system, code)| match (system, code) {
                (None, Some(code)) => Some(hash("c", code)),
                (Some(system), Some(code)) => Some(hash("t", &format!("{system}|{code}"))),
                (Some(system), None) => Some(hash("y", system)),
                (None, None) => None,
            })
            .collect(),
        ClauseKind::Date { values, .. } => values.iter().map(|(_, v)| hash("d", v)).collect(),
        ClauseKind::Reference { values, .. } | ClauseKind::Uri { values, mode: UriMode::Exact, .. } => values.iter().map(|v| hash("v", v)).collect(),
        // Refused when the search was parsed; matching nothing is the safe answer.
        _ => vec![],
    };
    sql.push("r.id IN (SELECT s.id FROM search_blind s WHERE s.resource_type = ").push_bind(resource_type.to_owned());
    sql.push(" AND s.param = ").push_bind(code.to_owned());
    sql.push(" AND s.hash = ANY(").push_bind(hashes).push("))");
    true
}
