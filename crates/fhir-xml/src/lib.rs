//! Converts FHIR R4 resources between JSON and XML.
//!
//! fhirbolt's (de)serializers are generic and take minutes to compile; keeping every call to
//! them behind these non-generic functions in a crate of their own means the main crate can
//! change without recompiling them.

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};

/// Runs a fhirbolt conversion, turning a panic inside fhirbolt (it has a few `unwrap`s on
/// unexpected input) into an error so that no client input can take a worker down.
fn guarded(f: impl FnOnce() -> Result<String, String>) -> Result<String, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| Err("the FHIR XML codec failed on this input".into()))
}

/// Parses an XML resource and returns it as FHIR JSON. Strict: unknown elements are an error
/// rather than silently dropped, so nothing a client sent is lost without a word.
pub fn xml_to_json(xml: &str) -> Result<String, String> {
    guarded(|| {
        let config = DeserializationConfig { mode: DeserializationMode::Strict };
        let resource: Resource = fhirbolt::xml::from_str(xml, Some(config)).map_err(|e| e.to_string())?;
        fhirbolt::json::to_string(&resource, None).map_err(|e| e.to_string())
    })
}

/// Renders a FHIR JSON resource (already validated by the server) as XML.
pub fn json_to_xml(json: &str) -> Result<String, String> {
    guarded(|| {
        let config = DeserializationConfig { mode: DeserializationMode::Lax };
        let resource: Resource = fhirbolt::json::from_str(json, Some(config)).map_err(|e| e.to_string())?;
        fhirbolt::xml::to_string(&resource, None).map_err(|e| e.to_string())
    })
}
