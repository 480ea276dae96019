//! A JSON Patch document (`PATCH [type]/[id]` with application/json-patch+json): parsed
//! (`interactions::patch::parse_patch`), applied with the size bound
//! (`interactions::patch::apply_bounded`, 64 KiB here) to a sample Patient, and the result
//! checked like the server checks it (`interactions::check_body`, then everything a stored
//! resource goes through). A patch that passes the bound but yields a larger document is a
//! finding (the bound is what keeps `copy` from doubling a resource per operation).
#![no_main]
use ironfhir::fhir::types::{Id, ResourceType};
use ironfhir::rest::format::{Format, parse_in};
use libfuzzer_sys::fuzz_target;

const BOUND: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    ironfhir_fuzz::begin(data);
    let Ok(doc) = parse_in(Format::Json, data) else { return };
    let Ok(patch) = ironfhir::interactions::patch::parse_patch(doc) else { return };
    let mut target = ironfhir_fuzz::sample_patient();
    if ironfhir::interactions::patch::apply_bounded(&mut target, &patch, BOUND).is_err() {
        return;
    }
    let size = serde_json::to_vec(&target).map(|v| v.len()).unwrap_or(0);
    if size > BOUND {
        ironfhir_fuzz::finding("patch-bound", &format!("apply_bounded accepted a patch whose result has {size} bytes (bound {BOUND})"));
    }
    let rt = ResourceType::parse("Patient").expect("Patient");
    let id = Id::parse("fuzz1").expect("id");
    if ironfhir::interactions::check_body(&rt, &target, Some(&id)).is_ok() {
        ironfhir_fuzz::exercise_resource(&target);
    }
});
