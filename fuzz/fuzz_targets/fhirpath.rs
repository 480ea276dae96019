//! FHIRPath (src/fhirpath.rs over rh-fhirpath): the first line of the input is the expression,
//! the rest, when it is a JSON object, the resource it is evaluated on (a built-in Patient
//! otherwise). Custom SearchParameters bring client-written expressions into the server (PUT
//! SearchParameter with `expression`), which index extraction then evaluates on every write.
#![no_main]
use ironfhir::fhirpath::{Context, Expression};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    ironfhir_fuzz::begin(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (expression, rest) = text.split_once('\n').unwrap_or((text, ""));
    let resource = serde_json::from_str::<Value>(rest).ok().filter(Value::is_object).unwrap_or_else(ironfhir_fuzz::sample_patient);
    let Ok(parsed) = Expression::parse(expression) else { return };
    let _ = parsed.evaluate(&resource);
    let context = Context::new(&resource);
    let _ = parsed.evaluate_in(&context);
});
