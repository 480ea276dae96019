//! Helpers shared by the fuzz targets (fuzz_targets/*.rs).
//!
//! Every target calls [`setup`] first: it installs a fixed test keyring (so the PHI sealing and
//! blind-index code runs as on a server) and a panic hook that tells a *caught* panic from a
//! crash. The server turns a panic inside the fhirbolt XML codec into a 400 (crates/fhir-xml
//! `guarded`), so such a panic is reported once per location on stderr ("caught panic") and
//! the run goes on; any panic that is not caught aborts through libfuzzer-sys and is a crash.
//! `IRONFHIR_FUZZ_STRICT_PANICS=1` makes every panic, caught or not, a crash.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Once, OnceLock};

use serde_json::Value;

/// The base URL the pure code is given (references to it are local).
pub const BASE: &str = "http://localhost:8080/fhir";

/// The largest resource or patch result the targets allow (the server's default body limit).
pub const MAX_BYTES: usize = 10 * 1024 * 1024;

/// Resource types the targets pick from when the input does not name a known one.
pub const TYPES: &[&str] = &[
    "Patient",
    "Observation",
    "Encounter",
    "Condition",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "MedicationRequest",
    "DiagnosticReport",
    "Group",
    "AuditEvent",
    "Bundle",
    "Composition",
    "Immunization",
    "Procedure",
    "SearchParameter",
];

static SETUP: Once = Once::new();
static CAUGHT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

thread_local! {
    static INPUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`setup`], and remembers `data` as the input being run (for [`finding`]).
pub fn begin(data: &[u8]) {
    setup();
    INPUT.with(|i| {
        let mut i = i.borrow_mut();
        i.clear();
        i.extend_from_slice(data);
    });
}

/// Installs the test keyring and the panic hook (idempotent).
pub fn setup() {
    SETUP.call_once(|| {
        let mut keys = HashMap::new();
        keys.insert("fuzz-k1".to_owned(), [7u8; 32]);
        ironfhir::crypto::install(Arc::new(ironfhir::crypto::Keyring::new(keys, "fuzz-k1".into(), [9u8; 32], 4)));
        // Load the embedded definitions before the first input, so their cost is not taken for
        // a slow input.
        let _ = ironfhir::fhir::definitions::definitions();
        let strict = std::env::var("IRONFHIR_FUZZ_STRICT_PANICS").is_ok_and(|v| v == "1");
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if strict {
                previous(info);
                std::process::abort();
            }
            // Not aborting here: a panic nobody catches still reaches libfuzzer-sys, which
            // aborts (a crash); one caught on purpose (fhir-xml's guard) is only noted.
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let seen = CAUGHT.get_or_init(|| Mutex::new(HashSet::new()));
            if seen.lock().map(|mut s| s.insert(at.clone())).unwrap_or(false) {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                eprintln!("ironfhir-fuzz: panic at {at}: {} (a crash unless caught)", msg.chars().take(200).collect::<String>());
            }
        }));
    });
}

/// `text` as a known resource type, or one of [`TYPES`] chosen by its first byte.
pub fn resource_type(text: &str) -> ironfhir::fhir::types::ResourceType {
    use ironfhir::fhir::types::ResourceType;
    ResourceType::parse(text.trim()).unwrap_or_else(|_| {
        let pick = text.bytes().next().unwrap_or(0) as usize % TYPES.len();
        ResourceType::parse(TYPES[pick]).expect("a known type")
    })
}

/// A small valid resource to evaluate expressions and patches on.
pub fn sample_patient() -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "id": "fuzz1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-02T03:04:05.678Z"},
        "identifier": [{"system": "http://example.org/mrn", "value": "MRN-1"}],
        "active": true,
        "name": [{"use": "official", "family": "Fuzz", "given": ["Ada", "B."]}],
        "telecom": [{"system": "phone", "value": "+1 555 0100"}],
        "gender": "female",
        "birthDate": "1970-01-31",
        "address": [{"line": ["1 Synthetic Way"], "city": "Testville", "postalCode": "00000"}],
        "managingOrganization": {"reference": "Organization/org1"},
        "generalPractitioner": [{"reference": "urn:uuid:0c3a1e52-0000-4000-8000-000000000001"}],
        "extension": [{"url": "http://example.org/ext", "valueQuantity": {"value": 1.50, "unit": "mg"}}]
    })
}

/// Everything the server does with a submitted resource before and after storing it, short of
/// SQL: structural validation, the checks of a write, index extraction (every SearchParameter's
/// FHIRPath), PHI sealing and opening, element ordering and rendering as JSON and XML,
/// `_summary` and `_elements`.
pub fn exercise_resource(value: &Value) {
    use ironfhir::fhir::types::{Id, ResourceType};
    use ironfhir::rest::format::{self, Format};
    let issues = ironfhir::fhir::validate::validate_resource(value);
    let _ = ironfhir::error::operation_outcome(&issues);
    let Some(rt_text) = value.get("resourceType").and_then(Value::as_str) else { return };
    let Ok(rt) = ResourceType::parse(rt_text) else { return };
    let url_id = value.get("id").and_then(Value::as_str).and_then(|s| Id::parse(s).ok());
    if ironfhir::interactions::check_body(&rt, value, url_id.as_ref()).is_err() {
        // Invalid content is refused (422) before it is stored or rendered.
        return;
    }
    let mut stored = value.clone();
    let id = url_id.map(|i| i.as_str().to_owned()).unwrap_or_else(|| "fuzz1".to_owned());
    let now = ironfhir::interactions::now();
    ironfhir::interactions::stamp(&mut stored, &id, 1, &now);
    let _ = ironfhir::index::index_rows(rt.as_str(), &stored, BASE);
    let _ = ironfhir::index::rows(rt.as_str(), &id, &stored, BASE);
    // Stored sealed, read back opened: must give the same resource (a failure is a 500 on read).
    let sealed = ironfhir::crypto::seal(rt.as_str(), &id, 1, &stored).expect("sealing a valid resource");
    let opened = ironfhir::crypto::open(rt.as_str(), &id, 1, Some(sealed.content.clone()), sealed.sealed.as_deref(), sealed.key_id.as_deref())
        .expect("opening what was just sealed");
    assert_eq!(opened.as_ref(), Some(&stored), "seal/open round trip changed the resource");
    for mode in ["true", "text", "data", "false"] {
        let _ = format::summarize(&stored, mode);
    }
    let _ = format::select_elements(&stored, &["name".to_owned(), "status".to_owned(), "_x".to_owned()]);
    let json = format::render(stored.clone(), Format::Json, false).expect("rendering a valid resource as JSON");
    let back: Value = serde_json::from_slice(&json).expect("our own JSON parses");
    assert_eq!(back, stored, "JSON rendering changed the resource");
    let _ = format::render(stored.clone(), Format::Json, true);
    // XML rendering of a valid resource may legitimately fail (fhirbolt's model is stricter in
    // places); the server answers that as an error, so only a panic counts here.
    match format::render(stored, Format::Xml, true) {
        Ok(xml) => {
            if let Err(e) = format::parse_in(Format::Xml, &xml) {
                finding("xml-reparse", &format!("{rt_text}: our own XML does not parse back: {e:?}"));
            }
        }
        // The server answers this with 500 (FhirError::Internal) on a read with _format=xml.
        Err(e) => finding("xml-render-500", &format!("{rt_text}: a valid resource cannot be rendered as XML: {e:?}")),
    }
}

static FINDINGS: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

/// Notes something that is not a crash of the fuzz target but would be a 5xx or a wrong answer
/// of the server; printed once per `kind` and message prefix as `ironfhir-fuzz: finding …`
/// (scripts/fuzz.sh collects these lines). `IRONFHIR_FUZZ_STRICT_FINDINGS=1` aborts instead,
/// so libFuzzer saves the input as an artifact.
///
/// The input being run ([`begin`]) is saved as `<IRONFHIR_FUZZ_FINDINGS_DIR>/<kind>-<hash>`
/// when that variable is set (scripts/fuzz.sh sets it), so the finding can be replayed with
/// `cargo fuzz run <target> <file>`.
pub fn finding(kind: &str, message: &str) {
    let input = INPUT.with(|i| i.borrow().clone());
    let input = Some(input.as_slice());
    let message: String = message.chars().take(300).collect();
    if std::env::var("IRONFHIR_FUZZ_STRICT_FINDINGS").is_ok_and(|v| v == "1") {
        eprintln!("ironfhir-fuzz: finding [{kind}] {message}");
        std::process::abort();
    }
    let key = format!("{kind}:{}", message.chars().take(80).collect::<String>());
    let seen = FINDINGS.get_or_init(|| Mutex::new(HashSet::new()));
    if seen.lock().map(|mut s| s.insert(key)).unwrap_or(false) {
        let mut saved = String::new();
        if let (Some(input), Ok(dir)) = (input, std::env::var("IRONFHIR_FUZZ_FINDINGS_DIR")) {
            let hash = input.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
            let path = std::path::Path::new(&dir).join(format!("{kind}-{hash:016x}"));
            if std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, input)).is_ok() {
                saved = format!(" (input: {})", path.display());
            }
        }
        eprintln!("ironfhir-fuzz: finding [{kind}] {message}{saved}");
    }
}
