//! Content negotiation and (de)serialisation: `application/fhir+json` and `application/fhir+xml`,
//! `_format`, `Accept`, `_pretty`, `_summary`, `_elements` — https://hl7.org/fhir/R4/http.html#mime-type

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::FhirError;
use crate::fhir::definitions::{ElementDefinition, StructureDefinition, definitions};

/// A wire format of FHIR resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// The Content-Type this server sends for the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }
}

/// Maps a MIME type or `_format` shorthand to a format; `None` when not FHIR JSON/XML.
fn format_of(mime: &str) -> Option<Format> {
    let base = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match base.as_str() {
        "json" | "application/json" | "application/fhir+json" | "application/json+fhir" => Some(Format::Json),
        "xml" | "text/xml" | "application/xml" | "application/fhir+xml" | "application/xml+fhir" => Some(Format::Xml),
        _ => None,
    }
}

/// The response format: `_format` overrides `Accept`; no preference means JSON; an Accept
/// that names only other types is 406.
pub fn negotiate(format_param: Option<&str>, headers: &HeaderMap) -> Result<Format, FhirError> {
    if let Some(f) = format_param {
        return format_of(f).ok_or_else(|| FhirError::NotAcceptable("_format must be json or xml (FHIR JSON or XML)".into()));
    }
    let Some(accept) = headers.get("accept").and_then(|v| v.to_str().ok()) else {
        return Ok(Format::Json);
    };
    if accept.trim().is_empty() {
        return Ok(Format::Json);
    }
    let mut ranges: Vec<(f32, usize, &str)> = accept
        .split(',')
        .enumerate()
        .map(|(i, r)| {
            let mut parts = r.split(';');
            let mime = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            (q, i, mime)
        })
        .filter(|(q, _, _)| *q > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1)));
    for (_, _, mime) in ranges {
        if let Some(f) = format_of(mime) {
            return Ok(f);
        }
        if mime == "*/*" || mime == "application/*" {
            return Ok(Format::Json);
        }
    }
    Err(FhirError::NotAcceptable("this server answers with application/fhir+json or application/fhir+xml".into()))
}

/// Parses a request body that must be a FHIR resource, honouring Content-Type (415 otherwise).
pub fn parse_resource_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, FhirError> {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = if content_type.is_empty() {
        // Lenient: a body without Content-Type is taken as JSON if it looks like JSON.
        Format::Json
    } else {
        format_of(content_type).ok_or_else(|| {
            FhirError::UnsupportedMediaType("send resources as application/fhir+json or application/fhir+xml".into())
        })?
    };
    if body.is_empty() {
        return Err(FhirError::BadRequest("the request body is empty".into()));
    }
    parse_in(format, body)
}

/// Parses bytes in a known format (400 when malformed, or when a string holds a control
/// character FHIR strings exclude).
pub fn parse_in(format: Format, body: &[u8]) -> Result<Value, FhirError> {
    let value = parse_unchecked(format, body)?;
    if let Some(at) = crate::fhir::types::forbidden_control_in(&value) {
        return Err(FhirError::Invalid(vec![
            crate::error::Issue::error("invalid", "a string holds a control character (U+0000–U+001F other than tab, CR, LF), which FHIR strings exclude")
                .at(crate::fhir::types::sanitize(&at)),
        ]));
    }
    Ok(value)
}

fn parse_unchecked(format: Format, body: &[u8]) -> Result<Value, FhirError> {
    match format {
        Format::Json => serde_json::from_slice::<Value>(body).map_err(|e| {
            FhirError::BadRequest(format!("the body is not valid JSON (line {}, column {})", e.line(), e.column()))
        }),
        Format::Xml => {
            let text = std::str::from_utf8(body).map_err(|_| FhirError::BadRequest("the XML body is not UTF-8".into()))?;
            fhir_xml::xml_to_value(text)
                .map_err(|e| FhirError::BadRequest(format!("the body is not a valid FHIR XML resource: {}", first_line(&e))))
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

/// Serialises a resource for the response. XML is written by our own writer (crates/fhir-xml)
/// from the JSON, ordered by the definitions at every level as FHIR XML requires: it renders
/// any document the server holds, subsets without their required elements included.
pub fn render(mut value: Value, format: Format, pretty: bool) -> Result<Vec<u8>, FhirError> {
    match format {
        Format::Json => {
            crate::fhir::order::order_resources(&mut value);
            if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }
                .map_err(|e| FhirError::Internal(e.to_string()))
        }
        Format::Xml => {
            crate::fhir::order::order_elements(&mut value);
            fhir_xml::json_to_xml(&value, pretty)
                .map(String::into_bytes)
                .map_err(|e| FhirError::Internal(format!("XML rendering failed: {e}")))
        }
    }
}

/// The `SUBSETTED` tag that marks summarised or element-filtered resources.
fn mark_subsetted(obj: &mut Map<String, Value>) {
    let meta = obj.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| Value::Array(vec![]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(serde_json::json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "subsetted"
            }));
        }
    }
}

/// The top-level element definition a member belongs to: `_name` companions to their element,
/// choice members (`medicationCodeableConcept`) to the choice (`medication[x]`).
fn top_element<'d>(sd: Option<&'d StructureDefinition>, rt: &'d str, key: &str) -> Option<&'d ElementDefinition> {
    let name = key.trim_start_matches('_');
    let sd = sd?;
    sd.element(&format!("{rt}.{name}"))
        .or_else(|| sd.children(rt).find(|e| e.is_choice() && name.starts_with(e.name().trim_end_matches("[x]"))))
}

/// Whether a top-level member is mandatory (min ≥ 1): subsets keep those (search.html#summary,
/// #elements).
fn is_mandatory(sd: Option<&StructureDefinition>, rt: &str, key: &str) -> bool {
    top_element(sd, rt, key).is_some_and(|e| e.min > 0)
}

/// Applies `_summary` (`true`, `text`, `data`, `false`) — search.html#summary.
pub fn summarize(resource: &Value, mode: &str) -> Value {
    let Some(obj) = resource.as_object() else { return resource.clone() };
    let rt = obj.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let sd = definitions().structure(rt);
    let is_summary = |key: &str| -> bool { top_element(sd, rt, key).is_some_and(|e| e.is_summary || e.min > 0) };
    let mut out = Map::new();
    match mode {
        "true" => {
            for (k, v) in obj {
                if matches!(k.as_str(), "resourceType" | "id" | "meta") || is_summary(k) {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        "text" => {
            for (k, v) in obj {
                if matches!(k.as_str(), "resourceType" | "id" | "meta" | "text") || is_mandatory(sd, rt, k) {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        "data" => {
            for (k, v) in obj {
                if k != "text" {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        _ => return resource.clone(),
    }
    mark_subsetted(&mut out);
    Value::Object(out)
}

/// Applies `_elements`: keeps the named top-level elements plus `id`, `meta` and mandatory ones.
pub fn select_elements(resource: &Value, elements: &[String]) -> Value {
    let Some(obj) = resource.as_object() else { return resource.clone() };
    let rt = obj.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let sd = definitions().structure(rt);
    let wanted = |k: &str| {
        let name = k.trim_start_matches('_');
        elements.iter().any(|e| {
            let e = e.strip_prefix(&format!("{rt}.")).unwrap_or(e);
            e == name || (name.starts_with(e) && sd.and_then(|sd| sd.element(&format!("{rt}.{e}[x]"))).is_some())
        })
    };
    let mut out = Map::new();
    for (k, v) in obj {
        if matches!(k.as_str(), "resourceType" | "id" | "meta") || is_mandatory(sd, rt, k) || wanted(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    mark_subsetted(&mut out);
    Value::Object(out)
}
