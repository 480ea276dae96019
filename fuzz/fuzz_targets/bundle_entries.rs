//! Bundle processing, the part that needs no database: the body is parsed like `POST [base]`
//! (`rest::format::parse_in`) and validated as a Bundle, then every entry goes through the
//! public steps `interactions::bundle::prepare` takes — request.url split into type, id and
//! query (`ResourceType::parse`, `Id::parse`, `search::parse_conditional` for conditional
//! URLs and `ifNoneExist`), the entry's resource checked like a single write
//! (`interactions::check_body`, then everything a stored resource goes through), a PATCH
//! entry's Binary decoded and its JSON Patch parsed (`interactions::patch::parse_patch`) and
//! applied with the size bound (`apply_bounded`) to a sample resource.
//!
//! `prepare`, `parse_url`, the `urn:uuid:` rewriting (`Links`) and `collect_references` are
//! private to src/interactions/bundle.rs, so they are reached only through
//! `interactions::bundle::process`, which needs PostgreSQL: see the `bundle_process` target.
#![no_main]
use base64::Engine;
use ironfhir::fhir::types::{Id, ResourceType};
use ironfhir::rest::format::{Format, parse_in};
use ironfhir_fuzz::{BASE, MAX_BYTES};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    ironfhir_fuzz::begin(data);
    let Ok(bundle) = parse_in(Format::Json, data) else { return };
    let _ = ironfhir::fhir::validate::validate_resource(&bundle);
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else { return };
    for entry in entries.iter().take(64) {
        let request = entry.get("request");
        let text = |name: &str| request.and_then(|r| r.get(name)).and_then(Value::as_str);
        let url = text("url").unwrap_or_default();
        let relative = url.strip_prefix(BASE).unwrap_or(url).trim_start_matches('/');
        let (path, query) = relative.split_once('?').unwrap_or((relative, ""));
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_encoding_decode(s))
            .collect();
        let Some(rt) = segments.first().and_then(|t| ResourceType::parse(t).ok()) else { continue };
        let id = segments.get(1).and_then(|s| Id::parse(s).ok());
        if !query.is_empty() {
            let _ = ironfhir::search::parse_conditional(&rt, query, BASE);
        }
        if let Some(q) = text("ifNoneExist") {
            let _ = ironfhir::search::parse_conditional(&rt, q, BASE);
        }
        if let Some(m) = text("ifMatch") {
            let _ = ironfhir::interactions::update::parse_if_match(m);
        }
        let resource = entry.get("resource");
        match text("method") {
            Some("POST" | "PUT") => {
                if let Some(resource) = resource {
                    if ironfhir::interactions::check_body(&rt, resource, id.as_ref()).is_ok() {
                        ironfhir_fuzz::exercise_resource(resource);
                    }
                }
            }
            Some("PATCH") => {
                let Some(data) = resource.and_then(|r| r.get("data")).and_then(Value::as_str) else { continue };
                let compact: String = data.chars().filter(|c| !c.is_whitespace()).collect();
                let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(compact) else { continue };
                let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else { continue };
                let Ok(patch) = ironfhir::interactions::patch::parse_patch(doc) else { continue };
                let mut target = ironfhir_fuzz::sample_patient();
                if ironfhir::interactions::patch::apply_bounded(&mut target, &patch, MAX_BYTES).is_ok() {
                    let _ = ironfhir::interactions::check_body(&rt, &target, id.as_ref());
                }
            }
            _ => {}
        }
    }
});

fn percent_encoding_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}
