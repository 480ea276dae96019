//! A request body in FHIR JSON: parse (`rest::format::parse_in`, what every write does first),
//! then everything a valid resource goes through (ironfhir_fuzz::exercise_resource).
#![no_main]
use ironfhir::rest::format::{Format, parse_in};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ironfhir_fuzz::begin(data);
    if let Ok(value) = parse_in(Format::Json, data) {
        ironfhir_fuzz::exercise_resource(&value);
    }
});
