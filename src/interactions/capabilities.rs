//! capabilities — https://hl7.org/fhir/R4/http.html#capabilities
//!
//! The CapabilityStatement is `capability-statement/base.json` completed from the loaded
//! definitions: every resource type with the interactions, search parameters and operations
//! this server really implements.

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::fhir::definitions::definitions;
use crate::search;

static BASE: &str = include_str!("../../capability-statement/base.json");

/// Interactions implemented for every resource type.
pub const TYPE_INTERACTIONS: &[&str] =
    &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// The server's CapabilityStatement: built once, and again when the custom SearchParameters
/// change (they are listed with the official ones).
pub fn capability_statement() -> Arc<Value> {
    static CS: OnceLock<Mutex<(u64, Arc<Value>)>> = OnceLock::new();
    let generation = crate::fhir::definitions::search_params_generation();
    let cache = CS.get_or_init(|| Mutex::new((generation, Arc::new(build()))));
    let Ok(mut cached) = cache.lock() else { return Arc::new(build()) };
    if cached.0 != generation {
        *cached = (generation, Arc::new(build()));
    }
    cached.1.clone()
}

fn build() -> Value {
    let mut cs: Value = serde_json::from_str(BASE).unwrap_or_else(|e| panic!("capability-statement/base.json is invalid: {e}"));
    cs["software"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let defs = definitions();
    let resources: Vec<Value> = defs
        .resource_types()
        .iter()
        .map(|rt| {
            let search_params: Vec<Value> = defs
                .search_params(rt)
                .into_iter()
                .filter(|sp| search::is_supported(sp, rt))
                .map(|sp| {
                    let mut entry = json!({"name": sp.code, "definition": sp.url, "type": sp.param_type});
                    if crate::crypto::policy::is_protected(rt, &sp.code) {
                        entry["documentation"] = json!(
                            "Reads sealed PHI: searched through a blind index, by equality only (string prefix and :exact, \
                             token system|code, code and system|, dates at year, month or day precision, :missing); \
                             :contains, date comparisons and _sort are refused with 400."
                        );
                    }
                    entry
                })
                .collect();
            let mut resource = json!({
                "type": rt,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{rt}"),
                "interaction": TYPE_INTERACTIONS.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchParam": search_params,
                "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
            });
            // FHIR JSON has no empty arrays.
            if search_params.is_empty() {
                resource.as_object_mut().map(|o| o.remove("searchParam"));
            }
            if rt == "Patient" {
                // patient-operation-everything.html; `start`/`end` are accepted and ignored.
                if let Some(ops) = resource["operation"].as_array_mut() {
                    ops.push(json!({
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                        "documentation": "Supports _since, _type and _count (paging by next links); start and end are ignored.",
                    }));
                }
            }
            if rt == "Appointment" {
                // Argonaut Scheduling (http://fhir.org/guides/argonaut/scheduling): find open
                // slots, hold one (it expires), book it. Double booking is refused (409).
                if let Some(ops) = resource["operation"].as_array_mut() {
                    for (name, doc) in [
                        ("find", "Open Slots as proposed Appointments: start, end (required), provider, location, specialty, service-type, patient, _count."),
                        ("hold", "appt-resource or appt-id: the proposed Appointment becomes pending and holds its Slots until the hold expires (--hold-seconds)."),
                        ("book", "appt-resource or appt-id: a hold that has not expired, or a proposed Appointment, becomes booked."),
                    ] {
                        ops.push(json!({
                            "name": name,
                            "definition": format!("http://fhir.org/guides/argonaut/scheduling/OperationDefinition/appointment-{name}"),
                            "documentation": doc,
                        }));
                    }
                }
            }
            if rt == "Schedule" {
                if let Some(ops) = resource["operation"].as_array_mut() {
                    ops.push(json!({
                        "name": "generate-slots",
                        "definition": "https://ironfhir.dev/fhir/OperationDefinition/Schedule-generate-slots",
                        "documentation": "Instance level: start, end (dates, at most 92 days), slot-minutes (5-480, default 15), timezone (IANA, default UTC); free Slots from the availability of the Schedule's PractitionerRole, HealthcareService or Location, minus notAvailable, skipping starts that exist.",
                    }));
                }
            }
            if rt == "Invoice" {
                if let Some(ops) = resource["operation"].as_array_mut() {
                    ops.push(json!({
                        "name": "monthly-report",
                        "definition": "https://ironfhir.dev/fhir/OperationDefinition/Invoice-monthly-report",
                        "documentation": "GET with month=YYYY-MM and format=csv (default) or ndjson: the month's invoices the token may search, then totals per issuing organisation and status.",
                    }));
                }
            }
            if rt == "Subscription" {
                // Subscriptions R5 Backport IG: the topics offered, and its operations.
                resource["extension"] = json!(crate::events::topics::topics().iter().map(|t| json!({
                    "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical",
                    "valueCanonical": t.url,
                })).collect::<Vec<_>>());
                if let Some(ops) = resource["operation"].as_array_mut() {
                    for (name, definition) in [
                        ("status", "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"),
                        ("events", "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"),
                        ("get-ws-binding-token", "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-get-ws-binding-token"),
                    ] {
                        ops.push(json!({"name": name, "definition": definition}));
                    }
                }
            }
            if rt == "Patient" || rt == "Group" {
                if let Some(ops) = resource["operation"].as_array_mut() {
                    let definition = if rt == "Patient" { "patient-export" } else { "group-export" };
                    ops.push(json!({
                        "name": "export",
                        "definition": format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{definition}"),
                    }));
                }
            }
            resource
        })
        .collect();
    let rest = &mut cs["rest"][0];
    rest["resource"] = json!(resources);
    rest["interaction"] = json!([{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}]);
    // Bulk Data Access IG v2 (export.html): system, Patient and Group level.
    rest["operation"] = json!([{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}]);
    cs["instantiates"] = json!([
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data",
        "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4",
    ]);
    cs
}
