//! Converts FHIR R4 resources between JSON and XML (https://hl7.org/fhir/R4/xml.html).
//!
//! - Output ([`json_to_xml`]) is our own writer over the JSON (`write`): it cannot fail on a
//!   valid document — subsets without required elements, narratives stored before they were
//!   checked, characters XML cannot carry — and needs no typed model.
//! - Input ([`xml_to_value`]) stays on fhirbolt's strict parser, behind a linear pre-scan
//!   (`scan`) that refuses what FHIR XML does not define and bounds what fhirbolt handles
//!   badly. fhirbolt's (de)serializers are generic and take minutes to compile; keeping every
//!   call to them behind non-generic functions in a crate of their own means the main crate can
//!   change without recompiling them.
//! - The narrative's XHTML rules ([`check_narrative`]) live here too, so that what the server
//!   accepts and what it writes are read by one reader.

mod scan;
mod text;
mod write;
mod xhtml;

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;

pub use write::{FHIR_NS, json_to_xml};
pub use xhtml::{NarrativeError, XHTML_NS, check_narrative};

/// Deepest element nesting accepted in XML input and in a narrative: serde_json's nesting
/// limit (128), which bounds JSON bodies the same way.
pub const MAX_DEPTH: usize = 128;

/// fhirbolt recurses once per nesting level with large frames (about 40 KB a level in a debug
/// build: 50 levels overflow a 2 MiB tokio worker stack). It runs on a thread of its own with
/// this much stack — address space, committed only as used — which holds [`MAX_DEPTH`] levels
/// several times over.
const PARSE_STACK_BYTES: usize = 32 * 1024 * 1024;

/// Runs a fhirbolt conversion, turning a panic inside fhirbolt (it has a few `unwrap`s on
/// unexpected input) into an error so that no client input can take a worker down.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| Err("the FHIR XML codec failed on this input".into()))
}

/// Parses an XML resource into FHIR JSON. Strict: unknown elements and attributes are an error
/// rather than silently dropped, so nothing a client sent is lost without a word. Linear in the
/// input before fhirbolt runs; errors are messages for a 400.
pub fn xml_to_value(xml: &str) -> Result<Value, String> {
    let narratives = scan::prescan(xml)?;
    let parsed = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new().stack_size(PARSE_STACK_BYTES).spawn_scoped(scope, || {
            guarded(|| {
                let config = DeserializationConfig { mode: DeserializationMode::Strict };
                let resource: Resource = fhirbolt::xml::from_str(xml, Some(config)).map_err(|e| e.to_string())?;
                let json = fhirbolt::json::to_string(&resource, None).map_err(|e| e.to_string())?;
                serde_json::from_str::<Value>(&json).map_err(|_| "the XML resource could not be converted to JSON".to_owned())
            })
        });
        match worker {
            Ok(handle) => handle.join().unwrap_or_else(|_| Err("the FHIR XML codec failed on this input".into())),
            Err(_) => Err("the server could not start the XML parser".into()),
        }
    });
    let mut value = parsed?;
    for narrative in narratives {
        place(&mut value, narrative)?;
    }
    Ok(value)
}

/// [`xml_to_value`] as JSON text.
pub fn xml_to_json(xml: &str) -> Result<String, String> {
    xml_to_value(xml).map(|v| v.to_string())
}

/// Replaces the div fhirbolt made (root attributes and whitespace lost) with the pre-scan's
/// exact copy, found by the element path the pre-scan recorded.
fn place(value: &mut Value, narrative: scan::Narrative) -> Result<(), String> {
    let mut at = value;
    for (name, index) in &narrative.path {
        at = match at.get_mut(name) {
            Some(Value::Array(items)) => items.get_mut(*index),
            Some(single) if *index == 0 => Some(single),
            _ => None,
        }
        .ok_or("a narrative div is not where FHIR XML allows one")?;
    }
    match at.as_object_mut() {
        Some(obj) if obj.contains_key("div") => {
            obj.insert("div".to_owned(), Value::String(narrative.xhtml));
            Ok(())
        }
        _ => Err("a narrative div is not where FHIR XML allows one".into()),
    }
}

#[cfg(test)]
mod tests;
