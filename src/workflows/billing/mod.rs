//! Billing: an Invoice for every fulfilled Appointment, priced by the organisation's price table
//! (ChargeItemDefinition), and the monthly report of a role's invoices.
//!
//! - [`appointment_written`] runs with every Appointment write (`interactions::rules`): when an
//!   Appointment becomes `fulfilled`, a ChargeItem (the service, the patient, the appointment as
//!   supporting information) and an Invoice (issued by the organisation of the practitioner role
//!   or location that took part, one line, totals) are written in the same transaction. The
//!   price is the `base` price component of the active ChargeItemDefinition whose `code` matches
//!   the appointment's `serviceType` or `appointmentType`, the one whose `useContext` names the
//!   issuing organisation first, then one that names none. Without a price nothing is billed.
//! - [`monthly_report`] (`Invoice/$monthly-report?month=YYYY-MM`) reads the month's invoices
//!   as the requesting principal (a billing or admin role sees its organisation subtree) and
//!   answers CSV or NDJSON with totals per issuing organisation and status.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::store::{self, Store, Tx};

fn status(resource: &Value) -> &str {
    resource.get("status").and_then(Value::as_str).unwrap_or("")
}

/// The references under `key` of each object in a list (`participant[].actor`).
fn references(list: Option<&Value>, key: &str) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|p| super::references(p.get(key)))
        .map(|r| r.split("/_history/").next().unwrap_or(r).to_owned())
        .collect()
}

use super::target_id as local;

/// Bills an Appointment that has just become fulfilled (see the module doc).
pub async fn appointment_written(tx: &mut Tx, old: Option<&Value>, new: Option<&Value>, base: &str) -> FhirResult<()> {
    let Some(appointment) = new else { return Ok(()) };
    if status(appointment) != "fulfilled" || old.map(status) == Some("fulfilled") {
        return Ok(());
    }
    let actors = references(appointment.get("participant"), "actor");
    let Some(patient) = actors.iter().find_map(|r| local(r, "Patient")).map(|id| format!("Patient/{id}")) else { return Ok(()) };
    let organization = issuing_organization(tx, &actors).await?;
    let codes: Vec<(Option<String>, String)> = ["/serviceType", "/appointmentType"]
        .iter()
        .filter_map(|p| appointment.pointer(p))
        .flat_map(|v| match v {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        })
        .flat_map(|concept| concept.get("coding").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter_map(|c| {
            let code = c.get("code").and_then(Value::as_str)?.to_owned();
            Some((c.get("system").and_then(Value::as_str).map(str::to_owned), code))
        })
        .collect();
    if codes.is_empty() {
        return Ok(());
    }
    let definitions = store::charge_item_definitions(tx, &codes.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>()).await?;
    let Some((definition, coding, amount)) = price(&definitions, &codes, organization.as_deref()) else { return Ok(()) };
    let appointment_id = appointment.get("id").and_then(Value::as_str).unwrap_or_default();
    let now = crate::interactions::now();
    let charge_id = Id::generate();
    let mut charge = json!({
        "resourceType": "ChargeItem",
        "status": "billable",
        "code": {"coding": [coding]},
        "subject": {"reference": patient},
        "quantity": {"value": 1},
        "enteredDate": crate::interactions::instant(&now),
        "supportingInformation": [{"reference": format!("Appointment/{appointment_id}")}],
    });
    if let Some(start) = appointment.get("start") {
        charge["occurrenceDateTime"] = start.clone();
    }
    if let Some(url) = definition.get("url").and_then(Value::as_str) {
        charge["definitionCanonical"] = json!([url]);
    }
    let invoice_id = Id::generate();
    let mut invoice = json!({
        "resourceType": "Invoice",
        "status": "issued",
        "subject": {"reference": patient},
        "date": crate::interactions::instant(&now),
        "lineItem": [{"sequence": 1, "chargeItemReference": {"reference": format!("ChargeItem/{charge_id}")},
                      "priceComponent": [{"type": "base", "amount": amount}]}],
        "totalNet": amount,
        "totalGross": amount,
    });
    if let Some(org) = &organization {
        charge["performingOrganization"] = json!({"reference": org});
        invoice["issuer"] = json!({"reference": org});
    }
    crate::interactions::stamp(&mut charge, charge_id.as_str(), 1, &now);
    crate::interactions::stamp(&mut invoice, invoice_id.as_str(), 1, &now);
    store::insert_new(tx, "ChargeItem", charge_id.as_str(), now, &charge, base).await?;
    store::insert_new(tx, "Invoice", invoice_id.as_str(), now, &invoice, base).await
}

/// The organisation that bills: that of a PractitionerRole taking part, else the managing
/// organisation of a Location.
async fn issuing_organization(tx: &mut Tx, actors: &[String]) -> FhirResult<Option<String>> {
    for (rt, pointer) in [("PractitionerRole", "/organization/reference"), ("Location", "/managingOrganization/reference")] {
        for id in actors.iter().filter_map(|r| local(r, rt)) {
            if let Some(content) = store::current_content(tx, rt, id).await?
                && let Some(org) = content.pointer(pointer).and_then(Value::as_str).and_then(|r| local(r, "Organization"))
            {
                return Ok(Some(format!("Organization/{org}")));
            }
        }
    }
    Ok(None)
}

/// The matching definition, the coding it matched and its base price (Money): one naming
/// `organization` in its `useContext` first, then one naming no organisation.
fn price<'a>(definitions: &'a [Value], codes: &[(Option<String>, String)], organization: Option<&str>) -> Option<(&'a Value, Value, Value)> {
    let matching = |d: &&Value| -> Option<Value> {
        d.pointer("/code/coding")?.as_array()?.iter().find(|c| {
            let code = c.get("code").and_then(Value::as_str);
            let system = c.get("system").and_then(Value::as_str);
            codes.iter().any(|(s, k)| Some(k.as_str()) == code && (s.is_none() || system.is_none() || s.as_deref() == system))
        }).cloned()
    };
    let orgs_of = |d: &Value| -> Vec<String> {
        d.get("useContext").and_then(Value::as_array).into_iter().flatten()
            .filter_map(|u| u.pointer("/valueReference/reference").and_then(Value::as_str).map(str::to_owned))
            .filter(|r| local(r, "Organization").is_some())
            .collect()
    };
    let base_price = |d: &Value| -> Option<Value> {
        d.get("propertyGroup")?.as_array()?.iter()
            .flat_map(|g| g.get("priceComponent").and_then(Value::as_array).cloned().unwrap_or_default())
            .find(|p| p.get("type").and_then(Value::as_str) == Some("base"))
            .and_then(|p| p.get("amount").cloned())
            .filter(|a| a.get("value").is_some())
    };
    let mut ranked: Vec<(u8, &Value)> = definitions
        .iter()
        .filter(|d| status(d) == "active")
        .filter_map(|d| {
            let orgs = orgs_of(d);
            let rank = match organization {
                Some(o) if orgs.iter().any(|r| local(r, "Organization") == local(o, "Organization")) => 0,
                _ if orgs.is_empty() => 1,
                _ => return None,
            };
            Some((rank, d))
        })
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().find_map(|(_, d)| Some((d, matching(&d)?, base_price(d)?)))
}

/// The output of [`monthly_report`].
pub enum ReportFormat {
    Csv,
    Ndjson,
}

/// `Invoice/$monthly-report?month=YYYY-MM`: the month's invoices (by `Invoice.date`) that the
/// principal may search, one per row or line, then the totals per issuing organisation and
/// status (net amounts, per currency).
pub async fn monthly_report(store: &Store, principal: &Principal, month: Option<&str>, format: ReportFormat, base: &str) -> FhirResult<String> {
    let month = month.ok_or_else(|| FhirError::BadRequest("$monthly-report needs month=YYYY-MM".into()))?;
    let valid = month.len() == 7 && month.as_bytes()[4] == b'-' && crate::search::params::date_bounds(month).is_some();
    if !valid {
        return Err(FhirError::BadRequest("$monthly-report: month must be YYYY-MM".into()));
    }
    let invoice_type = ResourceType::parse("Invoice")?;
    let mut invoices: Vec<Value> = vec![];
    let page = 500;
    loop {
        let pairs: Vec<(String, String)> = vec![
            ("date".into(), month.to_owned()),
            ("_sort".into(), "date,_id".into()),
            ("_count".into(), page.to_string()),
            ("_offset".into(), invoices.len().to_string()),
        ];
        let outcome = crate::interactions::search::search(store, principal, &invoice_type, &pairs, false, base).await?;
        let more = outcome.more;
        invoices.extend(outcome.found.into_iter().filter_map(|r| r.content));
        if !more || invoices.len() >= 1_000_000 {
            break;
        }
    }
    let mut totals: BTreeMap<(String, String, String), (u64, f64)> = BTreeMap::new();
    for invoice in &invoices {
        let issuer = invoice.pointer("/issuer/reference").and_then(Value::as_str).unwrap_or("").to_owned();
        let currency = invoice.pointer("/totalNet/currency").and_then(Value::as_str).unwrap_or("").to_owned();
        let net = invoice.pointer("/totalNet/value").and_then(Value::as_f64).unwrap_or(0.0);
        let entry = totals.entry((issuer, status(invoice).to_owned(), currency)).or_default();
        entry.0 += 1;
        entry.1 += net;
    }
    let cents = |v: f64| format!("{v:.2}");
    Ok(match format {
        ReportFormat::Csv => {
            let mut out = String::from("invoice,date,status,issuer,subject,total_net,currency\n");
            for i in &invoices {
                let field = |p: &str| csv_field(i.pointer(p).map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())).unwrap_or_default());
                out += &format!(
                    "{},{},{},{},{},{},{}\n",
                    field("/id"), field("/date"), field("/status"), field("/issuer/reference"), field("/subject/reference"),
                    i.pointer("/totalNet/value").and_then(Value::as_f64).map(cents).unwrap_or_default(), field("/totalNet/currency")
                );
            }
            out += "\nissuer,status,invoices,total_net,currency\n";
            for ((issuer, status, currency), (count, net)) in &totals {
                out += &format!("{},{},{count},{},{}\n", csv_field(issuer.clone()), csv_field(status.clone()), cents(*net), csv_field(currency.clone()));
            }
            out
        }
        ReportFormat::Ndjson => {
            let mut out = String::new();
            for i in &invoices {
                out += &i.to_string();
                out.push('\n');
            }
            for ((issuer, status, currency), (count, net)) in &totals {
                let line = json!({"resourceType": "Parameters", "parameter": [
                    {"name": "month", "valueString": month},
                    {"name": "issuer", "valueString": issuer},
                    {"name": "status", "valueCode": status},
                    {"name": "invoices", "valueInteger": count},
                    {"name": "totalNet", "valueMoney": {"value": (net * 100.0).round() / 100.0, "currency": currency}}]});
                out += &line.to_string();
                out.push('\n');
            }
            out
        }
    })
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or line break; a leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet does not run it as a formula.
fn csv_field(value: String) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) { format!("'{value}") } else { value };
    if value.contains([',', '"', '\n', '\r']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value }
}
