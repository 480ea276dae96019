//! Billing: a fulfilled Appointment is invoiced from the organisation's price table, once; the
//! monthly report lists the month's invoices with totals per organisation and status.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_outcome};

const SERVICES: &str = "urn:synthetic:services";

struct Practice {
    org: String,
    role: String,
    patient: String,
}

async fn practice(app: &TestApp) -> Practice {
    let org = app.create(&json!({"resourceType": "Organization", "name": "Synthetic Clinic"})).await["id"].as_str().unwrap().to_owned();
    let practitioner = app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Synthdoc"}]})).await["id"].as_str().unwrap().to_owned();
    let role = app
        .create(&json!({"resourceType": "PractitionerRole", "practitioner": {"reference": format!("Practitioner/{practitioner}")},
                        "organization": {"reference": format!("Organization/{org}")}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let patient = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Synthpatient"}]})).await["id"].as_str().unwrap().to_owned();
    // The clinic's own price, and a general one (must lose to the clinic's).
    for (org_context, value) in [(Some(&org), 80.0), (None, 100.0)] {
        let mut definition = json!({"resourceType": "ChargeItemDefinition", "status": "active", "url": format!("urn:synthetic:price:{value}"),
            "code": {"coding": [{"system": SERVICES, "code": "consult"}]},
            "propertyGroup": [{"priceComponent": [{"type": "base", "amount": {"value": value, "currency": "EUR"}}]}]});
        if let Some(org) = org_context {
            definition["useContext"] = json!([{"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "venue"},
                                               "valueReference": {"reference": format!("Organization/{org}")}}]);
        }
        app.create(&definition).await;
    }
    Practice { org, role, patient }
}

fn appointment(p: &Practice, service: &str, start: &str) -> Value {
    json!({"resourceType": "Appointment", "status": "booked", "start": start, "end": start.replace("T09", "T10"),
        "serviceType": [{"coding": [{"system": SERVICES, "code": service}]}],
        "participant": [{"actor": {"reference": format!("Patient/{}", p.patient)}, "status": "accepted"},
                        {"actor": {"reference": format!("PractitionerRole/{}", p.role)}, "status": "accepted"}]})
}

#[tokio::test]
async fn a_fulfilled_appointment_is_invoiced_once_from_the_organisations_price() {
    let app = TestApp::spawn().await;
    let p = practice(&app).await;
    let booked = app.create(&appointment(&p, "consult", "2027-05-03T09:00:00Z")).await;
    assert_eq!(app.count("Invoice").await, 0, "booking bills nothing");
    let mut fulfilled = booked.clone();
    fulfilled["status"] = json!("fulfilled");
    let fulfilled = app.put(fulfilled).await;
    let invoices = app.get_json(&format!("Invoice?subject=Patient/{}", p.patient)).await;
    assert_eq!(invoices["entry"].as_array().map(Vec::len), Some(1), "{invoices}");
    let invoice = &invoices["entry"][0]["resource"];
    assert_eq!(invoice["status"], "issued");
    assert_eq!(invoice["issuer"]["reference"], format!("Organization/{}", p.org));
    assert_eq!(invoice["totalNet"], json!({"value": 80.0, "currency": "EUR"}));
    let charge_ref = invoice["lineItem"][0]["chargeItemReference"]["reference"].as_str().unwrap();
    let charge = app.get_json(charge_ref).await;
    assert_eq!(charge["status"], "billable");
    assert_eq!(charge["supportingInformation"][0]["reference"], format!("Appointment/{}", booked["id"].as_str().unwrap()));
    assert_eq!(charge["definitionCanonical"][0], "urn:synthetic:price:80");
    // Editing the fulfilled appointment bills nothing more; a service without a price bills nothing.
    let mut edited = fulfilled.clone();
    edited["description"] = json!("edited afterwards");
    app.put(edited).await;
    let mut unpriced = appointment(&p, "no-price", "2027-05-04T09:00:00Z");
    unpriced["status"] = json!("fulfilled");
    app.create(&unpriced).await;
    assert_eq!(app.count("Invoice").await, 1);
    assert_eq!(app.count("ChargeItem").await, 1);
}

#[tokio::test]
async fn the_monthly_report_lists_the_months_invoices_with_totals_as_csv_and_ndjson() {
    let app = TestApp::spawn().await;
    let p = practice(&app).await;
    for day in ["2027-05-03", "2027-05-04"] {
        let mut a = appointment(&p, "consult", &format!("{day}T09:00:00Z"));
        a["status"] = json!("fulfilled");
        app.create(&a).await;
    }
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let r = app.get(&format!("Invoice/$monthly-report?month={month}")).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "invoice,date,status,issuer,subject,total_net,currency");
    assert_eq!(lines.iter().filter(|l| l.ends_with(",80.00,EUR") && l.contains(&format!("Patient/{}", p.patient))).count(), 2, "{csv}");
    assert!(lines.contains(&format!("Organization/{},issued,2,160.00,EUR", p.org).as_str()), "{csv}");
    let ndjson = app.get(&format!("Invoice/$monthly-report?month={month}&format=ndjson")).await.text().await.unwrap();
    let records: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.iter().filter(|r| r["resourceType"] == "Invoice").count(), 2);
    let total = records.iter().find(|r| r["resourceType"] == "Parameters").unwrap();
    assert_eq!(total["parameter"][3]["valueInteger"], 2);
    assert_eq!(total["parameter"][4]["valueMoney"], json!({"value": 160.0, "currency": "EUR"}));
    // Another month has none; a malformed month is 400.
    let empty = app.get("Invoice/$monthly-report?month=2001-01").await.text().await.unwrap();
    assert_eq!(empty.lines().count(), 3, "header, blank line, totals header: {empty}");
    expect_outcome(app.get("Invoice/$monthly-report?month=May").await, 400).await;
    expect_outcome(app.req(Method::GET, "Invoice/$monthly-report").send().await.unwrap(), 400).await;
}
