//! Translates the simple FHIRPath forms used by SearchParameter expressions into PostgreSQL
//! jsonpath (lax mode, so arrays unwrap on member access), using the StructureDefinitions to
//! expand choice elements (`Observation.effective` → `effectiveDateTime`, `effectivePeriod` …).

use crate::fhir::definitions::{StructureDefinition, definitions};

/// One step of a simple FHIRPath expression.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Name(String),
    /// `as T`, `.as(T)`, `.ofType(T)`.
    Cast(String),
    /// `.where(resolve() is T)`: references to type T only.
    ResolveIs(String),
    /// `.where(field = 'literal')`.
    WhereEq(String, String),
}

/// Compiles `expression` for `resource_type` into `(jsonpath, element type)` pairs, one per
/// reachable element. `None` when no part of the expression has a supported form.
pub fn compile_typed(expression: &str, resource_type: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in split_top(expression, '|') {
        let Some(steps) = parse_part(part.trim()) else { continue };
        let Some(Step::Name(first)) = steps.first() else { continue };
        if first != resource_type && first != "Resource" && first != "DomainResource" {
            continue;
        }
        if let Some(paths) = resolve(&steps[1..], resource_type) {
            out.extend(paths);
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

/// For a component of a composite parameter (`root` the composite's expression, `component`
/// its component's expression relative to it): the jsonpaths of the roots and the component's
/// paths relative to a root (`$.\"code\"[*]`), refined for the component's parameter type.
pub fn compile_component(root: &str, component: &str, resource_type: &str, param_type: &str) -> Option<(Vec<String>, Vec<String>)> {
    let mut roots = Vec::new();
    let mut relative: Vec<(String, String)> = Vec::new();
    for part in split_top(root, '|') {
        let part = part.trim().trim_start_matches('(').trim_end_matches(')').trim();
        let Some(root_paths) = compile_typed(part, resource_type) else { continue };
        for comp in split_top(component, '|') {
            let full = format!("{part}.{}", comp.trim());
            let Some(full_paths) = compile_typed(&full, resource_type) else { continue };
            for (root_json, _) in &root_paths {
                for (json, ty) in &full_paths {
                    if let Some(rest) = json.strip_prefix(root_json.as_str()) {
                        let rel = (format!("${rest}"), ty.clone());
                        if !relative.contains(&rel) {
                            relative.push(rel);
                        }
                    }
                }
            }
        }
        for (json, _) in root_paths {
            if !roots.contains(&json) {
                roots.push(json);
            }
        }
    }
    if roots.is_empty() || relative.is_empty() {
        return None;
    }
    Some((roots, refine(relative, param_type)))
}

/// [`compile_typed`] refined for a parameter type: string search on a HumanName looks at its
/// name parts, token search on a CodeableConcept at its codings, date search on a Timing at its
/// events.
pub fn compile(expression: &str, resource_type: &str) -> Option<Vec<String>> {
    compile_typed(expression, resource_type).map(|paths| paths.into_iter().map(|(p, _)| p).collect())
}

/// Paths refined by element type for a parameter type.
pub fn refine(paths: Vec<(String, String)>, param_type: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (path, ty) in paths {
        match (param_type, ty.as_str()) {
            ("string", "HumanName") => {
                for f in ["family", "given", "text", "prefix", "suffix"] {
                    out.push(format!("{path}.\"{f}\"[*]"));
                }
            }
            ("string", "Address") => {
                for f in ["line", "city", "district", "state", "postalCode", "country", "text"] {
                    out.push(format!("{path}.\"{f}\"[*]"));
                }
            }
            ("token", "CodeableConcept") => out.push(format!("{path}.\"coding\"[*]")),
            ("date", "Timing") => out.push(format!("{path}.\"event\"[*]")),
            _ => out.push(path),
        }
    }
    out
}

/// Splits on `sep` outside parentheses and quotes.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut out = vec![];
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_part(part: &str) -> Option<Vec<Step>> {
    let part = part.trim();
    // `(X.y as T)` possibly followed by `.rest`.
    if let Some(inner_start) = part.strip_prefix('(') {
        let close = matching_paren(part)?;
        let inner = &inner_start[..close - 1];
        let mut steps = parse_part(inner)?;
        let rest = part[close + 1..].trim();
        if !rest.is_empty() {
            steps.extend(parse_dotted(rest.strip_prefix('.')?)?);
        }
        return Some(steps);
    }
    // `X.y as T`.
    if let Some((left, ty)) = rsplit_as(part) {
        let mut steps = parse_dotted(left)?;
        steps.push(Step::Cast(ty.to_owned()));
        return Some(steps);
    }
    parse_dotted(part)
}

fn matching_paren(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn rsplit_as(part: &str) -> Option<(&str, &str)> {
    let idx = part.rfind(" as ")?;
    let ty = part[idx + 4..].trim();
    if ty.chars().all(|c| c.is_ascii_alphanumeric()) && !part[..idx].contains('(') {
        Some((part[..idx].trim(), ty))
    } else {
        None
    }
}

fn parse_dotted(s: &str) -> Option<Vec<Step>> {
    let mut steps = vec![];
    for seg in split_top(s, '.') {
        let seg = seg.trim();
        if seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !seg.is_empty() {
            steps.push(Step::Name(seg.to_owned()));
        } else if let Some(arg) = call_arg(seg, "as").or_else(|| call_arg(seg, "ofType")) {
            steps.push(Step::Cast(arg.to_owned()));
        } else if let Some(arg) = call_arg(seg, "where") {
            let arg = arg.trim();
            if let Some(ty) = arg.strip_prefix("resolve() is ") {
                steps.push(Step::ResolveIs(ty.trim().to_owned()));
            } else {
                let (field, lit) = arg.split_once('=')?;
                let field = field.trim();
                let lit = lit.trim().strip_prefix('\'')?.strip_suffix('\'')?;
                if !field.chars().all(|c| c.is_ascii_alphanumeric()) || lit.contains(['"', '\\']) {
                    return None;
                }
                steps.push(Step::WhereEq(field.to_owned(), lit.to_owned()));
            }
        } else if let Some(arg) = call_arg(seg, "extension") {
            let url = arg.trim().strip_prefix('\'')?.strip_suffix('\'')?;
            if url.contains(['"', '\\']) {
                return None;
            }
            steps.push(Step::Name("extension".into()));
            steps.push(Step::WhereEq("url".into(), url.to_owned()));
        } else {
            return None;
        }
    }
    Some(steps)
}

fn call_arg<'a>(seg: &'a str, func: &str) -> Option<&'a str> {
    seg.strip_prefix(func)?.strip_prefix('(')?.strip_suffix(')')
}

/// A position while walking the definitions: which StructureDefinition, which element path in
/// it, the jsonpath so far and the element's type.
struct Cursor<'a> {
    sd: &'a StructureDefinition,
    path: String,
    json: String,
    ty: String,
}

fn resolve(steps: &[Step], resource_type: &str) -> Option<Vec<(String, String)>> {
    let defs = definitions();
    let sd = defs.structure(resource_type)?;
    let mut cursors = vec![Cursor { sd, path: resource_type.to_owned(), json: "$".to_owned(), ty: resource_type.to_owned() }];
    let mut i = 0;
    while i < steps.len() {
        let mut next = Vec::new();
        match &steps[i] {
            Step::Name(name) => {
                let cast = match steps.get(i + 1) {
                    Some(Step::Cast(t)) => Some(t.as_str()),
                    _ => None,
                };
                for c in &cursors {
                    next.extend(member(c, name, cast)?);
                }
                if cast.is_some() {
                    i += 1;
                }
            }
            Step::Cast(t) => {
                // A cast on a non-choice element keeps only matching types.
                next = cursors.into_iter().filter(|c| &c.ty == t).collect();
            }
            Step::ResolveIs(t) => {
                if !t.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return None;
                }
                for c in cursors {
                    next.push(Cursor { json: format!("{} ? (@.\"reference\" like_regex \"(^|/){t}/\")", c.json), ..c });
                }
            }
            Step::WhereEq(field, lit) => {
                for c in cursors {
                    next.push(Cursor { json: format!("{} ? (@.\"{field}\" == \"{lit}\")", c.json), ..c });
                }
            }
        }
        cursors = next;
        i += 1;
    }
    Some(cursors.into_iter().map(|c| (c.json, c.ty)).collect())
}

/// The cursors for member `name` of the element at `c`.
fn member<'a>(c: &Cursor<'a>, name: &str, cast: Option<&str>) -> Option<Vec<Cursor<'a>>> {
    let defs = definitions();
    let direct = format!("{}.{}", c.path, name);
    let choice = format!("{direct}[x]");
    let (element, is_choice) = match c.sd.element(&direct) {
        Some(e) => (e, false),
        None => (c.sd.element(&choice)?, true),
    };
    let mut out = Vec::new();
    if let Some(reference) = &element.content_reference {
        let target = reference.trim_start_matches('#').to_owned();
        out.push(Cursor { sd: c.sd, path: target, json: format!("{}.\"{name}\"[*]", c.json), ty: "BackboneElement".into() });
        return Some(out);
    }
    for t in &element.types {
        let ty = t.fhir_type();
        if is_choice {
            if cast.is_some_and(|cast| cast != ty) {
                continue;
            }
            let key = format!("{name}{}{}", ty[..1].to_uppercase(), &ty[1..]);
            let (sd, path) = match defs.structure(ty) {
                Some(sd) => (sd, ty.to_owned()),
                None => (c.sd, direct.clone()),
            };
            out.push(Cursor { sd, path, json: format!("{}.\"{key}\"[*]", c.json), ty: ty.to_owned() });
        } else {
            let json = format!("{}.\"{name}\"[*]", c.json);
            if ty == "BackboneElement" || ty == "Element" {
                out.push(Cursor { sd: c.sd, path: direct.clone(), json, ty: ty.to_owned() });
            } else if let Some(sd) = defs.structure(ty) {
                out.push(Cursor { sd, path: ty.to_owned(), json, ty: ty.to_owned() });
            } else {
                out.push(Cursor { sd: c.sd, path: direct.clone(), json, ty: ty.to_owned() });
            }
            break;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_common_search_parameter_forms() {
        assert_eq!(compile("Patient.name.family", "Patient").unwrap(), vec!["$.\"name\"[*].\"family\"[*]"]);
        let effective = compile("Observation.effective", "Observation").unwrap();
        assert!(effective.contains(&"$.\"effectiveDateTime\"[*]".to_owned()));
        assert!(effective.contains(&"$.\"effectivePeriod\"[*]".to_owned()));
        assert_eq!(compile("(Observation.value as Quantity) | (Observation.value as SampledData)", "Observation").unwrap().len(), 2);
        let subject = compile("Observation.subject.where(resolve() is Patient)", "Observation").unwrap();
        assert!(subject[0].contains("like_regex"));
        assert_eq!(compile("Patient.telecom.where(system='phone')", "Patient").unwrap(), vec!["$.\"telecom\"[*] ? (@.\"system\" == \"phone\")"]);
        assert!(compile("Patient.deceased.exists() and Patient.deceased != false", "Patient").is_none());
        assert_eq!(compile("Resource.meta.tag", "Patient").unwrap(), vec!["$.\"meta\"[*].\"tag\"[*]"]);
    }

    #[test]
    fn every_definition_compiles_or_is_reported_unsupported_without_panicking() {
        let defs = definitions();
        let mut supported = 0;
        let mut total = 0;
        for rt in defs.resource_types() {
            for sp in defs.search_params(rt) {
                total += 1;
                if let Some(e) = &sp.expression {
                    if compile(e, rt).is_some() {
                        supported += 1;
                    }
                }
            }
        }
        assert!(supported * 10 >= total * 8, "only {supported} of {total} search parameters compile");
    }
}
