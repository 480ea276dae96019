//! The audit trail: an R4 AuditEvent for every request to the FHIR API (read, vread, search,
//! history, create, update, patch, delete, operations, export; allowed or refused) and for
//! every sign-in, token request and invalid bearer token, appended to a hash chain that
//! `ironfhir audit verify` checks ([`trail`]). Events name who (user, role, client, network
//! address), what (the resource, the patient concerned, the query of a search) and how it
//! ended; never a token, secret or password.

pub mod intent;
pub mod projection;
pub mod trail;

use axum::http::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};

/// What one FHIR API request did, for its AuditEvent.
pub struct Access<'a> {
    pub principal: &'a Principal,
    pub method: &'a Method,
    /// Path segments after the FHIR base.
    pub path: &'a [&'a str],
    /// The query string (searches, conditional operations).
    pub query: &'a [(String, String)],
    pub status: StatusCode,
    /// Why a refused request was refused (the OperationOutcome's text).
    pub reason: Option<&'a str>,
    /// `Patient/ID` of the patients the request concerned.
    pub patients: Vec<String>,
    pub network: Option<String>,
    /// `Type/ID` of the resource a create made.
    pub created: Option<String>,
}

/// The requesting agent of a request's AuditEvent: the token's subject, the acting role or
/// user, the client and the network address (also what a write's audit intent records).
pub fn requesting_agent(principal: &Principal, network: Option<&str>) -> Value {
    serde_json::to_value(Agent::requesting(principal, network)).unwrap_or_default()
}

/// The interaction (restful-interaction code) and action (C/R/U/D/E) of a request.
fn interaction(method: &Method, path: &[&str]) -> (&'static str, &'static str) {
    let operation = path.iter().any(|s| s.starts_with('$'));
    match (method.as_str(), path) {
        _ if operation => ("operation", "E"),
        ("GET", []) => ("search-system", "E"),
        ("GET", ["_history"]) => ("history-system", "R"),
        ("GET", [_]) => ("search-type", "E"),
        ("POST", [_, "_search"]) => ("search-type", "E"),
        ("GET", [_, "_history"]) => ("history-type", "R"),
        ("GET", [_, _]) => ("read", "R"),
        ("GET", [_, _, "_history"]) => ("history-instance", "R"),
        ("GET", [_, _, "_history", _]) => ("vread", "R"),
        ("GET", [_, _, _]) => ("search-compartment", "E"),
        ("POST", []) => ("transaction", "E"),
        ("POST", [_]) => ("create", "C"),
        ("PUT", _) => ("update", "U"),
        ("PATCH", _) => ("patch", "U"),
        ("DELETE", _) => ("delete", "D"),
        _ => ("operation", "E"),
    }
}

/// The AuditEvent outcome for an HTTP status: 0 success, 4 refused (client errors), 8 failed.
fn outcome(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "8"
    } else if status.is_client_error() {
        "4"
    } else {
        "0"
    }
}

pub(crate) fn source() -> Value {
    serde_json::to_value(SOURCE).unwrap_or_default()
}

/// The AuditEvent of an update the server makes on its own (an expired hold cancelled, a
/// Subscription set to `error`): a RESTful update by `principal` of the version `reference`
/// (`Type/id/_history/v`), with why in `outcomeDesc`.
pub(crate) fn server_update_event(principal: &Principal, reference: &str, description: &str) -> Value {
    json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "update", "display": "update"}],
        "action": "U",
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": "0",
        "outcomeDesc": description,
        "agent": [requesting_agent(principal, None)],
        "source": source(),
        "entity": [{"what": {"reference": reference}}],
    })
}

/// A Coding of one of the fixed code systems an AuditEvent names.
#[derive(Serialize, Clone, Copy)]
pub struct Coding {
    system: &'static str,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'static str>,
}

const fn coding(system: &'static str, code: &'static str, display: &'static str) -> Coding {
    Coding { system, code, display: Some(display) }
}

const REST: Coding = coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "RESTful Operation");
const ENTITY_TYPES: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const SYSTEM_OBJECT: Coding = coding(ENTITY_TYPES, "2", "System Object");
const PERSON: Coding = coding(ENTITY_TYPES, "1", "Person");
const PATIENT_ROLE: Coding = coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient");

/// `AuditEvent.source`: this server, an application server (security-source-type 4).
#[derive(Serialize, Clone, Copy)]
struct Source {
    observer: Display,
    #[serde(rename = "type")]
    kind: [Coding; 1],
}

const SOURCE: Source = Source {
    observer: Display { display: "ironfhir" },
    kind: [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")],
};

#[derive(Serialize, Clone, Copy)]
struct Display {
    display: &'static str,
}

#[derive(Serialize, Clone)]
struct Reference {
    reference: String,
}

#[derive(Serialize, Clone)]
struct Network {
    address: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize, Clone)]
struct Text {
    text: String,
}

/// `AuditEvent.agent`.
#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Agent {
    #[serde(skip_serializing_if = "Option::is_none")]
    who: Option<Reference>,
    requestor: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    alt_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<[Text; 1]>,
}

impl Agent {
    /// The requesting agent (see [`requesting_agent`]).
    fn requesting(principal: &Principal, network: Option<&str>) -> Self {
        let who = principal.role.as_deref().filter(|r| r.starts_with("PractitionerRole/")).or(principal.fhir_user.as_deref());
        Agent {
            who: who.map(|w| Reference { reference: w.to_owned() }),
            requestor: true,
            alt_id: Some(principal.subject.clone()),
            name: principal.client_id.as_ref().map(|client| format!("client {client}")),
            network: network.map(|address| Network { address: address.to_owned(), kind: "2" }),
            role: None,
        }
    }
}

/// `AuditEvent.entity.what`: a reference, or the name of a type a request touched as a whole.
#[derive(Serialize, Clone)]
struct What {
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<String>,
}

/// `AuditEvent.entity`.
#[derive(Serialize, Clone)]
struct Entity {
    #[serde(skip_serializing_if = "Option::is_none")]
    what: Option<What>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<Coding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Coding>,
    /// The search's query string, base64 (sealed by the default PHI policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
}

impl Entity {
    /// The entity of the resource a request touched.
    fn object(reference: String) -> Self {
        Entity { what: Some(What { reference: Some(reference), display: None }), kind: Some(SYSTEM_OBJECT), role: None, query: None }
    }
}

/// `AuditEvent.meta`: the chain writer's id and time, as every stored resource has.
#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Meta {
    pub version_id: &'static str,
    pub last_updated: String,
}

/// The AuditEvent of a FHIR API request as typed data: a request builds and serialises it
/// without a `serde_json::Value` (a map per object, keys hashed and cloned), which on a
/// read-by-id was most of what auditing cost the server itself. Serialises to the same
/// document `rest_events` built as a `Value` before.
#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct RestEvent {
    resource_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) meta: Option<Meta>,
    #[serde(rename = "type")]
    kind: Coding,
    subtype: [Coding; 1],
    action: &'static str,
    recorded: String,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_desc: Option<String>,
    agent: Vec<Agent>,
    source: Source,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entity: Vec<Entity>,
}

impl RestEvent {
    /// Whether the event holds a search's query (an element the default policy seals).
    pub fn has_query(&self) -> bool {
        self.entity.iter().any(|e| e.query.is_some())
    }

    /// The event as a document (for the sealing path).
    pub fn to_value(&self) -> FhirResult<Value> {
        serde_json::to_value(self).map_err(|e| FhirError::Internal(format!("audit event: {e}")))
    }

    /// An event holding every element a rest event can hold (agents of both kinds, entities
    /// of every kind, a query, an outcome description): what the PHI policy is checked against
    /// to know whether it can seal anything in an event without a query
    /// ([`trail`]).
    pub(crate) fn fullest() -> Self {
        let principal = Principal {
            subject: "s".into(),
            client_id: Some("c".into()),
            fhir_user: Some("Practitioner/p".into()),
            role: Some("PractitionerRole/r".into()),
            patient: Some("p".into()),
            ..Default::default()
        };
        let access = Access {
            principal: &principal,
            method: &Method::GET,
            path: &["Observation"],
            query: &[("code".into(), "x".into())],
            status: StatusCode::BAD_REQUEST,
            reason: Some("r"),
            patients: vec![],
            network: Some("127.0.0.1".into()),
            created: None,
        };
        // A type-level search names the type, its query and the patient; add a resource.
        let mut event = rest_events(&access).pop().unwrap_or_else(|| rest_event_base(&access));
        event.entity.push(Entity::object("Observation/o".into()));
        event.id = Some("i".into());
        event.meta = Some(Meta { version_id: "1", last_updated: "t".into() });
        event
    }
}

/// The parts of a request's AuditEvent that do not depend on the patients it concerns.
fn rest_event_base(access: &Access<'_>) -> RestEvent {
    let principal = access.principal;
    let (subtype, action) = interaction(access.method, access.path);
    let mut agents = vec![Agent::requesting(principal, access.network.as_deref())];
    if let (Some(user), Some(role)) = (principal.fhir_user.as_deref(), principal.role.as_deref().filter(|r| r.starts_with("PractitionerRole/"))) {
        // The person behind the role, as a second agent.
        agents.push(Agent {
            who: Some(Reference { reference: user.to_owned() }),
            requestor: false,
            alt_id: None,
            name: None,
            network: None,
            role: Some([Text { text: format!("acting in {role}") }]),
        });
    }
    let mut entities = vec![];
    match access.path {
        [resource_type, id, ..] if !id.starts_with('$') && !id.starts_with('_') => {
            entities.push(Entity::object(format!("{resource_type}/{id}")));
        }
        [resource_type, ..] => match &access.created {
            Some(created) => entities.push(Entity::object(created.clone())),
            None => entities.push(Entity { what: Some(What { reference: None, display: Some((*resource_type).to_owned()) }), kind: None, role: None, query: None }),
        },
        [] => {}
    }
    let searched: Vec<&(String, String)> = access.query.iter().filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty")).collect();
    if !searched.is_empty() && action == "E" {
        use base64::Engine;
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(searched).finish();
        entities.push(Entity { what: None, kind: Some(SYSTEM_OBJECT), role: None, query: Some(base64::engine::general_purpose::STANDARD.encode(query)) });
    }
    RestEvent {
        resource_type: "AuditEvent",
        id: None,
        meta: None,
        kind: REST,
        subtype: [Coding { system: "http://hl7.org/fhir/restful-interaction", code: subtype, display: None }],
        action,
        recorded: crate::interactions::instant(&crate::interactions::now()),
        outcome: outcome(access.status),
        outcome_desc: access.reason.filter(|_| access.status.is_client_error() || access.status.is_server_error()).map(str::to_owned),
        agent: agents,
        source: SOURCE,
        entity: entities,
    }
}

/// The AuditEvents of a FHIR API request: one, or one per patient concerned.
pub fn rest_events(access: &Access<'_>) -> Vec<RestEvent> {
    let event = rest_event_base(access);
    let mut patients = access.patients.clone();
    if let Some(p) = &access.principal.patient {
        patients.push(format!("Patient/{p}"));
    }
    patients.sort();
    patients.dedup();
    if patients.is_empty() {
        return vec![event];
    }
    // One event per patient concerned (as IHE BALP does), so that a patient reading the
    // events about their record never sees another patient named as the one concerned.
    patients
        .into_iter()
        .map(|patient| {
            let mut one = event.clone();
            one.entity.push(Entity { what: Some(What { reference: Some(patient), display: None }), kind: Some(PERSON), role: Some(PATIENT_ROLE), query: None });
            one
        })
        .collect()
}

/// The AuditEvent of a refused authentication: an invalid bearer token at the FHIR API
/// (`what` = "bearer token"), a refused token request or sign-in (`client` = the client_id
/// it named, unverified). `reason` is the error and its description — never a token, secret
/// or code.
pub fn auth_failure_event(what: &str, client: Option<&str>, reason: &str, network: Option<&str>) -> Value {
    let mut agent = json!({"requestor": true, "name": match client {
        Some(c) => format!("client {c} (unverified)"),
        None => "unauthenticated caller".to_owned(),
    }});
    if let Some(c) = client {
        agent["altId"] = json!(c);
    }
    if let Some(address) = network {
        agent["network"] = json!({"address": address, "type": "2"});
    }
    json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"}],
        "action": "E",
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": "4",
        "outcomeDesc": format!("{what} refused: {reason}"),
        "agent": [agent],
        "source": source(),
    })
}

/// The extension that records who submitted an AuditEvent through the API (client, user,
/// role): the chain vouches for the event having been received, not for its content.
pub const SUBMITTER_EXTENSION: &str = "https://ironfhir.dev/fhir/StructureDefinition/audit-submitter";

/// `POST [base]/AuditEvent` (an audit repository, IHE BALP): the event is checked like any
/// create, marked with its submitter and appended to the hash chain — never stored beside it,
/// where `audit verify` could not vouch for it. Returns the stored event.
pub async fn submit(
    store: &crate::store::Store,
    trail: &trail::AuditTrail,
    principal: &crate::auth::Principal,
    mut event: Value,
    base: &str,
) -> crate::error::FhirResult<crate::store::StoredResource> {
    use crate::auth::{Interaction, Reach};
    let rt = crate::fhir::types::ResourceType::parse("AuditEvent")?;
    let reach = principal.require("AuditEvent", Interaction::Create)?;
    crate::interactions::check_body(&rt, &event, None)?;
    if let Some(object) = event.as_object_mut() {
        object.remove("id");
        object.remove("meta");
        let mut submitter = vec![json!({"url": "client", "valueString": principal.client_id.as_deref().unwrap_or("")}),
                                 json!({"url": "subject", "valueString": principal.subject})];
        if let Some(user) = &principal.fhir_user {
            submitter.push(json!({"url": "user", "valueReference": {"reference": user}}));
        }
        if let Some(role) = principal.role.as_deref().filter(|r| r.starts_with("PractitionerRole/")) {
            submitter.push(json!({"url": "role", "valueReference": {"reference": role}}));
        }
        let extensions = object.entry("extension").or_insert_with(|| json!([]));
        match extensions.as_array_mut() {
            Some(list) => {
                list.retain(|e| e.get("url").and_then(Value::as_str) != Some(SUBMITTER_EXTENSION));
                list.push(json!({"url": SUBMITTER_EXTENSION, "extension": submitter}));
            }
            None => return Err(crate::error::FhirError::BadRequest("AuditEvent.extension must be a list".into())),
        }
    }
    if reach != Reach::All || principal.acting.is_some() {
        let mut conn = store.pool().acquire().await?;
        crate::access::authorize_write(&mut conn, principal, &reach, "AuditEvent", "new", None, Some(&mut event), base).await?;
    }
    let (id, recorded) = trail.record_submitted(event.clone()).await?;
    crate::interactions::stamp(&mut event, &id, 1, &recorded);
    Ok(crate::store::StoredResource::written("AuditEvent", &id, 1, recorded, event))
}

/// A change an operator makes from the command line, recorded as an AuditEvent of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorChange {
    /// `ironfhir import`, `serve --demo`: resources written in bulk (DICOM 110107 Import).
    Import,
    /// `ironfhir reindex`: the search index rebuilt (110100 Application Activity).
    Reindex,
    /// `ironfhir keys rotate|rotate-kek`: keys replaced (110113 Security Alert, 110129 Security
    /// Configuration).
    KeyRotation,
    /// `ironfhir admin client add`: a client may now ask for tokens (110113, 110129).
    ClientRegistered,
    /// `ironfhir admin user add`: an account may now sign in (110113, 110137 User Security
    /// Attributes Changed).
    UserRegistered,
}

impl OperatorChange {
    /// (type code, type display, subtype, action) of the AuditEvent.
    fn coding(self) -> (&'static str, &'static str, Value, &'static str) {
        let dcm = |code: &str, display: &str| json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": code, "display": display});
        match self {
            OperatorChange::Import => {
                ("110107", "Import", json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "create", "display": "create"}), "C")
            }
            OperatorChange::Reindex => ("110100", "Application Activity", dcm("110131", "Software Configuration"), "E"),
            OperatorChange::KeyRotation => ("110113", "Security Alert", dcm("110129", "Security Configuration"), "U"),
            OperatorChange::ClientRegistered => ("110113", "Security Alert", dcm("110129", "Security Configuration"), "C"),
            OperatorChange::UserRegistered => ("110113", "Security Alert", dcm("110137", "User Security Attributes Changed"), "C"),
        }
    }
}

/// The AuditEvent of a change made from the command line: the command as the agent, what it
/// did in `outcomeDesc` (counts and identifiers an operator chose, never file names or
/// resource content: they may name people). Outcome 0, or 8 when the command failed.
pub fn operator_event(change: OperatorChange, command: &str, succeeded: bool, description: &str) -> Value {
    operator_event_with_outcome(change, command, if succeeded { "0" } else { "8" }, description)
}

fn operator_event_with_outcome(change: OperatorChange, command: &str, outcome: &str, description: &str) -> Value {
    let (code, display, subtype, action) = change.coding();
    json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": code, "display": display},
        "subtype": [subtype],
        "action": action,
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": outcome,
        "outcomeDesc": format!("{command}: {description}"),
        "agent": [{"requestor": true, "name": format!("ironfhir {command} (operator command line)"), "altId": command}],
        "source": source(),
    })
}

/// The AuditEvent of a bulk write made from the command line (`ironfhir import`, `serve
/// --demo`): the resource count in `outcomeDesc`; outcome 4 when some resources failed.
pub fn operator_import_event(command: &str, resources: u64, errors: u64) -> Value {
    let outcome = if errors > 0 { "4" } else { "0" };
    operator_event_with_outcome(OperatorChange::Import, command, outcome, &format!("{resources} resources written, {errors} failed"))
}

/// Appends [`operator_import_event`] to the chain from a command-line process (its own
/// writer, stopped when the process ends; the server projects the event).
pub async fn record_operator_import(store: &crate::store::Store, command: &str, resources: u64, errors: u64) -> Result<(), String> {
    trail::AuditTrail::start(store.clone())
        .record(operator_import_event(command, resources, errors))
        .await
        .map_err(|e| format!("cannot record the {command} in the audit trail: {e}"))
}

/// What a successful authentication event records: sign-in, token issuance, sign-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStep {
    /// A person signed in at the authorization server's pages.
    SignIn,
    /// The token endpoint issued tokens (any grant).
    TokenIssued,
    /// A person signed out.
    SignOut,
}

/// The AuditEvent of a successful authentication step (DICOM 110114 User Authentication,
/// subtype Login or Logout): who (`fhirUser` reference and account name when known), through
/// which client, and a description naming the grant or step — never a token, secret or code.
pub fn auth_success_event(step: AuthStep, client: Option<&str>, user: Option<&str>, fhir_user: Option<&str>, description: &str) -> Value {
    let mut person = json!({"requestor": true});
    if let Some(who) = fhir_user {
        person["who"] = json!({"reference": who});
    }
    if let Some(user) = user {
        person["altId"] = json!(user);
    }
    person["name"] = json!(user.map_or_else(|| "client".to_owned(), |u| format!("account {u}")));
    let mut agents = vec![person];
    if let Some(c) = client {
        agents.push(json!({"requestor": false, "name": format!("client {c}"), "altId": c}));
    }
    let (code, display) = match step {
        AuthStep::SignOut => ("110123", "Logout"),
        AuthStep::SignIn | AuthStep::TokenIssued => ("110122", "Login"),
    };
    json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": code, "display": display}],
        "action": "E",
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": "0",
        "outcomeDesc": description,
        "agent": agents,
        "source": source(),
    })
}

/// Records a successful authentication step (see [`auth_success_event`]). The step has
/// happened either way; a failure to record it is logged.
pub async fn record_auth_success(
    trail: &trail::AuditTrail,
    step: AuthStep,
    client: Option<&str>,
    user: Option<&str>,
    fhir_user: Option<&str>,
    description: &str,
) {
    if let Err(e) = trail.record(auth_success_event(step, client, user, fhir_user, description)).await {
        tracing::error!(error = %e, "cannot record an authentication");
    }
}

/// Records a refused authentication (see [`auth_failure_event`]); failures are logged: the
/// refusal stands either way.
pub async fn record_auth_failure(trail: &trail::AuditTrail, what: &str, client: Option<&str>, reason: &str) {
    if let Err(e) = trail.record(auth_failure_event(what, client, reason, None)).await {
        tracing::error!(error = %e, "cannot record a refused authentication");
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::{Access, rest_events};
    use crate::auth::Principal;

    fn documents(access: &Access<'_>) -> Vec<Value> {
        rest_events(access).iter().map(|e| e.to_value().expect("an event serialises")).collect()
    }

    #[test]
    fn a_read_in_a_role_names_role_and_person_the_resource_and_one_patient_per_event() {
        let principal = Principal {
            subject: "user-1".into(),
            client_id: Some("app".into()),
            fhir_user: Some("Practitioner/pr1".into()),
            role: Some("PractitionerRole/r1".into()),
            ..Default::default()
        };
        let access = Access {
            principal: &principal,
            method: &Method::GET,
            path: &["Observation", "o1"],
            query: &[],
            status: StatusCode::OK,
            reason: None,
            patients: vec!["Patient/b".into(), "Patient/a".into(), "Patient/a".into()],
            network: Some("10.0.0.1".into()),
            created: None,
        };
        let events = documents(&access);
        assert_eq!(events.len(), 2, "one event per distinct patient");
        let expected = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "action": "R",
            "recorded": events[0]["recorded"],
            "outcome": "0",
            "agent": [
                {"requestor": true, "altId": "user-1", "who": {"reference": "PractitionerRole/r1"}, "name": "client app",
                 "network": {"address": "10.0.0.1", "type": "2"}},
                {"who": {"reference": "Practitioner/pr1"}, "requestor": false, "role": [{"text": "acting in PractitionerRole/r1"}]}
            ],
            "source": {"observer": {"display": "ironfhir"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
            "entity": [
                {"what": {"reference": "Observation/o1"}, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}},
                {"what": {"reference": "Patient/a"}, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                 "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}}
            ]
        });
        assert_eq!(events[0], expected);
        assert_eq!(events[1]["entity"][1]["what"]["reference"], "Patient/b");
        assert_eq!(events[1]["entity"].as_array().map(Vec::len), Some(2), "the other patient is not named");
    }

    #[test]
    fn a_refused_search_names_its_query_and_reason_and_no_patient() {
        let principal = Principal { subject: "svc".into(), ..Default::default() };
        let query = vec![("name".to_owned(), "smi".to_owned()), ("_format".to_owned(), "json".to_owned())];
        let access = Access {
            principal: &principal,
            method: &Method::GET,
            path: &["Patient"],
            query: &query,
            status: StatusCode::FORBIDDEN,
            reason: Some("insufficient scope"),
            patients: vec![],
            network: None,
            created: None,
        };
        let events = documents(&access);
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event["subtype"][0]["code"], "search-type");
        assert_eq!((event["action"].as_str(), event["outcome"].as_str(), event["outcomeDesc"].as_str()), (Some("E"), Some("4"), Some("insufficient scope")));
        assert_eq!(event["agent"], json!([{"requestor": true, "altId": "svc"}]));
        assert_eq!(event["entity"][0], json!({"what": {"display": "Patient"}}));
        use base64::Engine;
        let searched = base64::engine::general_purpose::STANDARD.decode(event["entity"][1]["query"].as_str().unwrap_or_default()).unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&searched), "name=smi", "the query without _format");
        assert!(rest_events(&access)[0].has_query());
    }

    #[test]
    fn an_event_with_nothing_concerned_has_no_entity() {
        let principal = Principal { subject: "svc".into(), ..Default::default() };
        let access = Access {
            principal: &principal,
            method: &Method::GET,
            path: &[],
            query: &[],
            status: StatusCode::OK,
            reason: None,
            patients: vec![],
            network: None,
            created: None,
        };
        let events = documents(&access);
        assert!(events[0].get("entity").is_none());
        assert_eq!(events[0]["subtype"][0]["code"], "search-system");
    }
}
