//! `serve --demo`: loads a small synthetic data set (demo/demo.ndjson.gz, embedded) so a new
//! user has something to read and search right away.

use std::io::Read;

use serde_json::Value;

use crate::auth::Principal;
use crate::fhir::types::{Id, ResourceType};
use crate::interactions::update::update;
use crate::store::Store;

static DEMO: &[u8] = include_bytes!("../demo/demo.ndjson.gz");

/// Loads the demo resources that are not there yet (by id), through the same validated update
/// path as the API. Returns how many were written.
pub async fn load(store: &Store) -> Result<usize, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DEMO).read_to_string(&mut text).map_err(|e| e.to_string())?;
    let principal = Principal::internal("demo-loader", "system/*.*");
    let mut written = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let resource: Value = serde_json::from_str(line).map_err(|e| format!("demo data: {e}"))?;
        let rt = ResourceType::parse(resource["resourceType"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        let id = Id::parse(resource["id"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        if store.read(rt.as_str(), id.as_str()).await.map_err(|e| e.to_string())?.is_some() {
            continue;
        }
        update(store, &principal, &rt, &id, resource, None, "").await.map_err(|e| format!("demo data {rt}/{id}: {e}"))?;
        written += 1;
    }
    Ok(written)
}

/// A sign-in account of the demo clinic: who it is and how to sign in.
#[derive(Debug, Clone)]
pub struct DemoAccount {
    pub username: String,
    pub password: String,
    /// The role to pick at sign-in (`PractitionerRole/ID`), or the patient.
    pub acts_as: String,
    pub what: String,
}

/// The public SMART client the demo registers for its accounts.
pub const DEMO_CLIENT: &str = "ironfhir-demo-app";

/// The demo clinic, written by the clinic's own people through the API rules (prescription
/// checks, dispense limits, billing, slots): a hospital with two clinics and a pharmacy, a member
/// of staff for every role template with a sign-in account, a patient with an account, a
/// schedule with slots for the next two weeks, a booked and a fulfilled appointment (invoiced
/// from the clinic's price), a prescription to the pharmacy with a dispense, and the patient's
/// refill request. Resources keep fixed ids (`demo-…`), so a second `--demo` start writes only
/// what is missing; every start gives the accounts fresh passwords, which it returns.
pub async fn load_clinic(store: &Store, issuer: &str) -> Result<Vec<DemoAccount>, String> {
    use serde_json::json;
    let err = |e: crate::error::FhirError| format!("demo clinic: {e}");
    // The clinic's staff acting: a token-less principal would be "the server loading data",
    // which the workflow rules take as it is; the demo shows the rules, so it acts as an app.
    let principal = Principal { client_id: Some(DEMO_CLIENT.to_owned()), ..Principal::internal("demo-clinic", "system/*.*") };
    let system = crate::access::roles::templates().system.clone();
    let put = |resource: Value| {
        let principal = principal.clone();
        async move {
            let rt = ResourceType::parse(resource["resourceType"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
            let id = Id::parse(resource["id"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
            if store.read(rt.as_str(), id.as_str()).await.map_err(|e| e.to_string())?.is_some_and(|s| !s.deleted) {
                return Ok::<bool, String>(false);
            }
            update(store, &principal, &rt, &id, resource, None, "").await.map_err(|e| format!("demo clinic {rt}/{id}: {e}"))?;
            Ok(true)
        }
    };
    let org = |id: &str, name: &str, part_of: Option<&str>| {
        let mut o = json!({"resourceType": "Organization", "id": id, "active": true, "name": name});
        if let Some(p) = part_of {
            o["partOf"] = json!({"reference": format!("Organization/{p}")});
        }
        o
    };
    put(org("demo-hospital", "Demo Hospital", None)).await?;
    put(org("demo-clinic-north", "Demo Clinic North", Some("demo-hospital"))).await?;
    put(org("demo-clinic-south", "Demo Clinic South", Some("demo-hospital"))).await?;
    put(org("demo-pharmacy", "Demo Pharmacy", None)).await?;
    let staff = [
        ("admin", "demo-hospital", "Adminson"),
        ("prescriber", "demo-clinic-north", "Prescott"),
        ("nurse", "demo-clinic-north", "Nightingale"),
        ("front-desk", "demo-clinic-north", "Deskworth"),
        ("billing", "demo-hospital", "Billings"),
        ("supplier", "demo-pharmacy", "Pillbox"),
        ("auditor", "demo-hospital", "Checkley"),
    ];
    let mut accounts = vec![];
    for (template, at, family) in staff {
        let practitioner = format!("demo-{template}");
        put(json!({"resourceType": "Practitioner", "id": practitioner, "active": true, "name": [{"family": family, "given": ["Demo"]}]})).await?;
        let mut role = json!({"resourceType": "PractitionerRole", "id": format!("demo-role-{template}"), "active": true,
            "practitioner": {"reference": format!("Practitioner/{practitioner}")},
            "organization": {"reference": format!("Organization/{at}")},
            "code": [{"coding": [{"system": system, "code": template}]}]});
        if template == "prescriber" {
            role["availableTime"] = json!([{"daysOfWeek": ["mon", "tue", "wed", "thu", "fri"], "availableStartTime": "09:00:00", "availableEndTime": "12:00:00"}]);
            role["specialty"] = json!([{"coding": [{"system": "http://snomed.info/sct", "code": "394814009", "display": "General practice"}]}]);
        }
        put(role).await?;
        accounts.push(DemoAccount {
            username: format!("demo-{template}"),
            password: String::new(),
            acts_as: format!("PractitionerRole/demo-role-{template}"),
            what: format!("{template} at {at}"),
        });
    }
    put(json!({"resourceType": "Patient", "id": "demo-patient", "active": true, "gender": "female", "birthDate": "1980-05-15",
        "name": [{"family": "Example", "given": ["Demo"]}],
        "managingOrganization": {"reference": "Organization/demo-clinic-north"},
        "generalPractitioner": [{"reference": "PractitionerRole/demo-role-prescriber"}]})).await?;
    accounts.push(DemoAccount { username: "demo-patient".into(), password: String::new(), acts_as: "Patient/demo-patient".into(), what: "a patient of Demo Clinic North".into() });

    // The prescriber's schedule, slots for the next two weeks, the clinic's price for a visit.
    put(json!({"resourceType": "Schedule", "id": "demo-schedule", "active": true, "actor": [{"reference": "PractitionerRole/demo-role-prescriber"}],
        "serviceType": [{"coding": [{"system": "urn:ironfhir:demo:services", "code": "consult", "display": "Consultation"}]}]})).await?;
    let today = jiff::Zoned::now().date();
    let params = [
        ("start".to_owned(), today.to_string()),
        ("end".to_owned(), today.checked_add(jiff::Span::new().days(13)).map_err(|e| e.to_string())?.to_string()),
        ("slot-minutes".to_owned(), "30".to_owned()),
    ];
    crate::workflows::scheduling::generate::generate(store, &principal, &Id::parse("demo-schedule").map_err(|e| e.to_string())?, &params, "", 10_000, 10 << 20)
        .await
        .map_err(err)?;
    put(json!({"resourceType": "ChargeItemDefinition", "id": "demo-price-consult", "url": "urn:ironfhir:demo:price:consult", "status": "active",
        "code": {"coding": [{"system": "urn:ironfhir:demo:services", "code": "consult", "display": "Consultation"}]},
        "useContext": [{"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "venue"},
                        "valueReference": {"reference": "Organization/demo-clinic-north"}}],
        "propertyGroup": [{"priceComponent": [{"type": "base", "amount": {"value": 85.0, "currency": "EUR"}}]}]})).await?;
    // A past visit, fulfilled (so invoiced), and a future one, booked.
    let visit = |id: &str, status: &str, start: &str, end: &str| json!({"resourceType": "Appointment", "id": id, "status": status, "start": start, "end": end,
        "serviceType": [{"coding": [{"system": "urn:ironfhir:demo:services", "code": "consult", "display": "Consultation"}]}],
        "participant": [{"actor": {"reference": "Patient/demo-patient"}, "status": "accepted"},
                        {"actor": {"reference": "PractitionerRole/demo-role-prescriber"}, "status": "accepted"}]});
    let past = today.checked_sub(jiff::Span::new().days(7)).map_err(|e| e.to_string())?;
    if put(visit("demo-visit-past", "booked", &format!("{past}T08:00:00Z"), &format!("{past}T08:30:00Z"))).await? {
        let mut done = visit("demo-visit-past", "fulfilled", &format!("{past}T08:00:00Z"), &format!("{past}T08:30:00Z"));
        done["id"] = json!("demo-visit-past");
        update(store, &principal, &ResourceType::parse("Appointment").map_err(|e| e.to_string())?, &Id::parse("demo-visit-past").map_err(|e| e.to_string())?, done, None, "")
            .await
            .map_err(err)?;
    }
    let later = today.checked_add(jiff::Span::new().days(30)).map_err(|e| e.to_string())?;
    put(visit("demo-visit-next", "booked", &format!("{later}T15:00:00Z"), &format!("{later}T15:30:00Z"))).await?;
    // A prescription to the pharmacy, one dispense, and the patient's refill request.
    put(json!({"resourceType": "MedicationRequest", "id": "demo-rx", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361", "display": "Amlodipine 5 MG Oral Tablet"}]},
        "subject": {"reference": "Patient/demo-patient"}, "requester": {"reference": "PractitionerRole/demo-role-prescriber"},
        "dosageInstruction": [{"text": "one tablet daily"}],
        "dispenseRequest": {"numberOfRepeatsAllowed": 2, "quantity": {"value": 30}, "performer": {"reference": "Organization/demo-pharmacy"}}})).await?;
    put(json!({"resourceType": "MedicationDispense", "id": "demo-dispense-1", "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"}]},
        "subject": {"reference": "Patient/demo-patient"}, "performer": [{"actor": {"reference": "Organization/demo-pharmacy"}}],
        "authorizingPrescription": [{"reference": "MedicationRequest/demo-rx"}], "quantity": {"value": 30}})).await?;
    put(json!({"resourceType": "Task", "id": "demo-refill", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": "https://ironfhir.dev/fhir/CodeSystem/task-code", "code": "refill"}]},
        "focus": {"reference": "MedicationRequest/demo-rx"}, "for": {"reference": "Patient/demo-patient"},
        "owner": {"reference": "PractitionerRole/demo-role-prescriber"}})).await?;

    // Sign-in: a public SMART app and fresh passwords for every account.
    crate::oauth::accounts::add_client(store.pool(), crate::oauth::accounts::NewClient {
        client_id: DEMO_CLIENT.into(),
        redirect_uris: vec!["http://localhost:3000/callback".into(), "http://127.0.0.1:3000/callback".into()],
        scope: "openid fhirUser offline_access launch/patient user/*.cruds patient/*.cruds".into(),
        auth: crate::oauth::accounts::ClientAuth::Public,
        secret: None,
        jwks: None,
        jwks_uri: None,
    })
    .await?;
    for account in &mut accounts {
        account.password = {
            use rand::RngCore;
            let mut bytes = [0u8; 9];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
        };
        let fhir_user = if account.acts_as.starts_with("Patient/") { account.acts_as.clone() } else { format!("Practitioner/{}", account.username) };
        crate::oauth::accounts::register_user(store.pool(), account.username.clone(), account.password.clone(), fhir_user, false, issuer).await?;
    }
    Ok(accounts)
}
