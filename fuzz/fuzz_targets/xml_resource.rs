//! A request body in FHIR XML: `rest::format::parse_in(Format::Xml, …)` (what every write
//! with Content-Type application/fhir+xml does: crates/fhir-xml, then the control-character
//! check), then rendering the result back as XML (`rest::format::render`) and parsing that
//! again — our own XML must parse — then everything a valid resource goes through
//! (ironfhir_fuzz::exercise_resource). Only ironfhir's public API is used, so the fhir-xml
//! crate's own functions can change without breaking this target.
#![no_main]
use ironfhir::rest::format::{Format, parse_in, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ironfhir_fuzz::begin(data);
    let Ok(value) = parse_in(Format::Xml, data) else { return };
    // Whatever XML was accepted must render as JSON.
    let _ = render(value.clone(), Format::Json, false).expect("an accepted XML resource renders as JSON");
    match render(value.clone(), Format::Xml, false) {
        Ok(xml) => {
            if let Err(e) = parse_in(Format::Xml, &xml) {
                ironfhir_fuzz::finding("xml-roundtrip", &format!("XML we wrote does not parse back: {e:?}"));
            }
        }
        // A read of it with _format=xml would be a 500 (FhirError::Internal).
        Err(e) => ironfhir_fuzz::finding("xml-render-500", &format!("an accepted XML resource cannot be rendered as XML: {e:?}")),
    }
    ironfhir_fuzz::exercise_resource(&value);
});
