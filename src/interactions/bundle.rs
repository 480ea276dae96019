//! batch and transaction Bundles — https://hl7.org/fhir/R4/http.html#transaction
//!
//! `POST [base]` with a Bundle of type `batch` or `transaction`.
//!
//! - **transaction** (http.html#trules): every entry runs in ONE database transaction, in the
//!   order the spec gives — DELETE, then POST, then PUT/PATCH, then GET/HEAD (bundle order within
//!   each group). The first failing entry rolls everything back; the request then answers that
//!   entry's status with an OperationOutcome naming `Bundle.entry[n]`. The resources changed by
//!   the DELETE/POST/PUT/PATCH entries may not overlap (400).
//! - **batch** (http.html#brules): each entry runs in its own database transaction (same order)
//!   and answers its own status in the `batch-response`; the request answers 200.
//!
//! Before anything is written, each POST/PUT/PATCH entry's target is resolved — a new id, the
//! single match of `ifNoneExist` or of a conditional URL, or the id in the URL — and its
//! `fullUrl` (`urn:uuid:`, `urn:oid:` or any other) maps to `Type/id`. Every `reference` in every
//! resource of the Bundle (contained resources included) that names a mapped fullUrl is
//! rewritten, as are `urn:` values in the search parameters of request URLs. Conditional
//! references (`Patient?identifier=sys|1`) resolve by search against the stored resources:
//! exactly one match becomes `Patient/<id>`, none or several fail with 412.
//!
//! Entries are authorised (`principal.require`) and validated ([`check_body`]) like the single
//! interactions, and written by the same functions inside the Bundle's transaction
//! ([`create::create_in`], [`update::put_version`], [`patch::patch_in`], [`delete::delete_in`],
//! [`read::read_in`], [`super::search::search_in`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{WriteOutcome, check_body, create, delete, now, patch, read, stamp, update};
use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::definitions;
use crate::fhir::types::{Id, ResourceType, sanitize};
use crate::search;
use crate::store::{self, Store, StoredResource, Tx};

/// `batch` or `transaction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Batch,
    Transaction,
}

impl BundleKind {
    /// `Bundle.type` of the response.
    pub fn response_type(self) -> &'static str {
        match self {
            BundleKind::Batch => "batch-response",
            BundleKind::Transaction => "transaction-response",
        }
    }
}

/// What one entry did.
#[derive(Debug)]
pub enum EntryOutcome {
    /// create, update or patch; a conditional create that matched has `created == false`.
    Write(WriteOutcome),
    /// delete: the number of resources deleted (0 or 1).
    Deleted(u32),
    /// read or vread; `head` leaves the resource out of the response.
    Read { stored: StoredResource, head: bool },
    /// read whose `ifNoneMatch` / `ifModifiedSince` held (304).
    NotModified(StoredResource),
    /// type-level search.
    Search(super::search::SearchOutcome),
}

/// A processed Bundle: one result per request entry, in the request's order.
#[derive(Debug)]
pub struct BundleResult {
    pub kind: BundleKind,
    pub entries: Vec<FhirResult<EntryOutcome>>,
}

/// Processes a `batch` or `transaction` Bundle. `base` is the server's FHIR base URL; a Bundle
/// with more than `max_entries` entries is refused with 413, and so is a PATCH entry whose
/// result would exceed `max_resource_bytes`. A failed transaction is an error
/// naming the failing entry; a batch always succeeds with each entry's own result.
pub async fn process(
    store: &Store,
    principal: &Principal,
    bundle: Value,
    base: &str,
    max_entries: usize,
    max_resource_bytes: usize,
) -> FhirResult<BundleResult> {
    process_recorded(store, principal, bundle, base, max_entries, max_resource_bytes, None).await
}

/// [`process`] for `ironfhir import`: a transaction also records `record` (the file's
/// `import_progress`) in its own database transaction, so the Bundle and the fact that it was
/// imported commit together. (A batch has no single transaction; the caller records it after.)
pub async fn process_recorded(
    store: &Store,
    principal: &Principal,
    bundle: Value,
    base: &str,
    max_entries: usize,
    max_resource_bytes: usize,
    record: Option<(&str, store::import::Progress)>,
) -> FhirResult<BundleResult> {
    let Value::Object(mut bundle) = bundle else {
        return Err(bad("the body must be a Bundle of type batch or transaction"));
    };
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(bad("POST to the base URL takes a Bundle of type batch or transaction (http.html#transaction)"));
    }
    let kind = match bundle.get("type").and_then(Value::as_str) {
        Some("batch") => BundleKind::Batch,
        Some("transaction") => BundleKind::Transaction,
        _ => return Err(bad("Bundle.type must be batch or transaction (http.html#transaction)")),
    };
    let raw = match bundle.remove("entry") {
        None => vec![],
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(bad("Bundle.entry must be an array")),
    };
    if raw.len() > max_entries {
        return Err(FhirError::PayloadTooLarge(format!(
            "the Bundle has {} entries; this server takes at most {max_entries}",
            raw.len()
        )));
    }
    // An entry that can read AuditEvents sees every event recorded before the Bundle (they are
    // projected from the audit chain: audit::projection).
    let reads_audit_events = raw.iter().any(|e| {
        let request = e.get("request");
        let url = request.and_then(|r| r.get("url")).and_then(Value::as_str).unwrap_or("");
        let method = request.and_then(|r| r.get("method")).and_then(Value::as_str).unwrap_or("");
        matches!(method, "GET" | "HEAD") && crate::audit::projection::url_reads_audit_events(url)
    });
    if reads_audit_events {
        crate::audit::projection::catch_up(store).await?;
    }
    let mut prepared: Vec<FhirResult<Entry>> =
        raw.into_iter().enumerate().map(|(i, e)| prepare(i, e, principal, base, max_resource_bytes)).collect();
    reject_duplicate_full_urls(&mut prepared);
    match kind {
        BundleKind::Transaction => {
            let entries = prepared
                .into_iter()
                .enumerate()
                .map(|(i, e)| e.map_err(|err| at_entry(err, i)))
                .collect::<FhirResult<Vec<Entry>>>()?;
            let outcomes = run_transaction(store, principal, &entries, base, record).await?;
            Ok(BundleResult { kind, entries: outcomes.into_iter().map(Ok).collect() })
        }
        BundleKind::Batch => Ok(BundleResult { kind, entries: run_batch(store, principal, prepared, base).await }),
    }
}

fn bad(message: impl Into<String>) -> FhirError {
    FhirError::BadRequest(message.into())
}

// ---------------------------------------------------------------------------------------------
// Entries
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

/// What `request.url` names.
#[derive(Debug, Clone)]
enum Target {
    /// `Type` (POST).
    Type,
    /// `Type/id`.
    Instance(Id),
    /// `Type/id/_history/vid`.
    Version(Id, String),
    /// `Type?query` (possibly empty): a search for GET, the criteria of a conditional
    /// PUT/PATCH/DELETE.
    Query(String),
}

/// One request entry, parsed, authorised and validated.
#[derive(Debug)]
struct Entry {
    index: usize,
    full_url: Option<String>,
    method: Method,
    rt: ResourceType,
    target: Target,
    /// The resource of POST/PUT; the JSON Patch document (decoded from the Binary) of PATCH.
    body: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<DateTime<Utc>>,
    /// The largest resource a PATCH of this entry may produce (`--max-body-bytes`).
    max_patch_result: usize,
}

fn prepare(index: usize, raw: Value, principal: &Principal, base: &str, max_patch_result: usize) -> FhirResult<Entry> {
    let Value::Object(mut raw) = raw else { return Err(bad("an entry must be a JSON object")) };
    let full_url = match raw.get("fullUrl") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("fullUrl must be a string")),
    };
    let request = raw
        .get("request")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("the entry has no request (method and url)"))?;
    let text = |name: &str| -> FhirResult<Option<String>> {
        match request.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("request.{name} must be a string"))),
        }
    };
    let method = match text("method")?.as_deref() {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("PATCH") => Method::Patch,
        Some("DELETE") => Method::Delete,
        Some(other) => return Err(bad(format!("request.method '{}' is not supported", sanitize(other)))),
        None => return Err(bad("request.method is missing")),
    };
    let url = text("url")?.ok_or_else(|| bad("request.url is missing"))?;
    let (rt, target) = parse_url(method, &url, base)?;
    let if_modified_since = text("ifModifiedSince")?
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad("request.ifModifiedSince must be a FHIR instant"))
        })
        .transpose()?;
    let mut entry = Entry {
        index,
        full_url,
        method,
        rt,
        target,
        body: None,
        if_none_exist: text("ifNoneExist")?,
        if_match: text("ifMatch")?,
        if_none_match: text("ifNoneMatch")?,
        if_modified_since,
        max_patch_result,
    };
    authorize(principal, &entry)?;
    entry.body = checked_body(&entry, raw.remove("resource"))?;
    Ok(entry)
}

/// `request.url` → resource type and target; absolute URLs must be on this server's base.
fn parse_url(method: Method, url: &str, base: &str) -> FhirResult<(ResourceType, Target)> {
    let relative = url.strip_prefix(base).filter(|r| r.is_empty() || r.starts_with(['/', '?'])).unwrap_or(url);
    let relative = relative.trim_start_matches('/');
    if relative.contains("://") {
        return Err(bad("request.url must be relative to this server's base URL"));
    }
    let (path, query) = match relative.split_once('?') {
        Some((p, q)) => (p, Some(q).filter(|q| !q.is_empty()).map(str::to_owned)),
        None => (relative, None),
    };
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let Some((first, rest)) = s.split_first() else {
        return Err(bad("request.url must start with a resource type"));
    };
    let rt = ResourceType::parse(first)?;
    let read_id = |id: &str| Id::parse(id).map_err(|_| FhirError::NotFound(format!("{rt}/{} is not known", sanitize(id))));
    let target = match (method, rest, query) {
        (Method::Post, [], None) => Target::Type,
        (Method::Post, _, _) => return Err(bad("a POST entry creates a resource: its request.url is the resource type")),
        (Method::Get | Method::Head, [], q) => Target::Query(q.unwrap_or_default()),
        (Method::Get | Method::Head, [id], _) => Target::Instance(read_id(id)?),
        (Method::Get | Method::Head, [id, "_history", version], _) => Target::Version(read_id(id)?, (*version).to_owned()),
        (Method::Put | Method::Patch | Method::Delete, [], Some(q)) => Target::Query(q),
        (Method::Put | Method::Patch | Method::Delete, [], None) => {
            return Err(bad("a PUT, PATCH or DELETE entry needs a resource id or search criteria in request.url"));
        }
        (Method::Put | Method::Patch | Method::Delete, [id], None) => Target::Instance(Id::parse(id)?),
        _ => {
            return Err(bad(
                "this request.url is not supported in a Bundle (read, vread, search, create, update, patch and delete are)",
            ));
        }
    };
    Ok((rt, target))
}

/// The scopes an entry needs, as the single interaction would check them.
/// Entries that a `patient/`-confined token may not use in a Bundle (their targets are found
/// by unconfined criteria or have no content to check) are refused here.
fn authorize(principal: &Principal, e: &Entry) -> FhirResult<()> {
    let rt = e.rt.as_str();
    if rt == "AuditEvent" && !matches!(e.method, Method::Get | Method::Head) {
        // Submitted events join the hash chain one by one; a Bundle would store them beside it.
        return Err(FhirError::MethodNotAllowed(
            "AuditEvents are appended to the audit trail with POST [base]/AuditEvent, not written in a Bundle".into(),
        ));
    }
    let conditional = matches!(e.target, Target::Query(_));
    // Organisation subtrees are checked on every write path (conditional matches are
    // confined, deletes check the resource), so only patient confinement is refused here.
    let confined_write = |reach: Reach, what: &str| match reach {
        Reach::All | Reach::Organization(_) => Ok(()),
        Reach::Patient(_) => Err(FhirError::Forbidden(format!("{what} entries are not available to patient-scoped tokens"))),
    };
    match e.method {
        Method::Get | Method::Head => principal.require(rt, if conditional { Interaction::Search } else { Interaction::Read }).map(drop),
        Method::Post => {
            let reach = principal.require(rt, Interaction::Create)?;
            if e.if_none_exist.is_some() {
                let _ = principal.require(rt, Interaction::Search)?;
                confined_write(reach, "conditional create")?;
            }
            Ok(())
        }
        Method::Put | Method::Patch | Method::Delete => {
            let reach = principal.require(rt, if e.method == Method::Delete { Interaction::Delete } else { Interaction::Update })?;
            if conditional {
                let _ = principal.require(rt, Interaction::Search)?;
                confined_write(reach.clone(), "conditional")?;
            }
            if e.method == Method::Delete {
                confined_write(reach, "DELETE")?;
            }
            Ok(())
        }
    }
}

/// Validates the resource of a POST/PUT entry like a single write; decodes a PATCH entry's
/// Binary into its JSON Patch document. Resources of GET/DELETE entries are ignored.
fn checked_body(e: &Entry, resource: Option<Value>) -> FhirResult<Option<Value>> {
    match e.method {
        Method::Post | Method::Put => {
            let resource = resource.ok_or_else(|| bad("a POST or PUT entry needs a resource"))?;
            let url_id = match &e.target {
                Target::Instance(id) => Some(id),
                _ => None,
            };
            check_body(&e.rt, &resource, url_id)?;
            if e.method == Method::Put {
                body_id(&resource)?;
            }
            Ok(Some(resource))
        }
        Method::Patch => patch_document(resource).map(Some),
        Method::Get | Method::Head | Method::Delete => Ok(None),
    }
}

fn body_id(resource: &Value) -> FhirResult<Option<Id>> {
    match resource.get("id") {
        Some(Value::String(s)) => Ok(Some(Id::parse(s)?)),
        Some(_) => Err(bad("id must be a string")),
        None => Ok(None),
    }
}

/// A PATCH entry carries its patch as a Binary (http.html#patch): JSON Patch only.
fn patch_document(resource: Option<Value>) -> FhirResult<Value> {
    let resource = resource.ok_or_else(|| {
        bad("a PATCH entry needs a Binary resource holding a JSON Patch (contentType application/json-patch+json)")
    })?;
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("Binary") => {}
        Some("Parameters") => {
            return Err(bad(
                "FHIRPath Patch (a Parameters resource) is not supported; send a Binary with contentType application/json-patch+json",
            ));
        }
        _ => return Err(bad("a PATCH entry's resource must be a Binary holding a JSON Patch")),
    }
    let content_type = resource.get("contentType").and_then(Value::as_str).unwrap_or("");
    if content_type.split(';').next().unwrap_or("").trim() != "application/json-patch+json" {
        return Err(bad("the Binary of a PATCH entry must have contentType application/json-patch+json (JSON Patch)"));
    }
    let data = resource.get("data").and_then(Value::as_str).ok_or_else(|| bad("the Binary of a PATCH entry has no data"))?;
    let compact: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| bad("Binary.data of a PATCH entry is not base64"))?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| bad("Binary.data of a PATCH entry is not JSON"))?;
    patch::parse_patch(doc.clone())?;
    Ok(doc)
}

/// Bundle invariant bdl-7: fullUrls are unique; the later duplicate fails.
fn reject_duplicate_full_urls(prepared: &mut [FhirResult<Entry>]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, p) in prepared.iter_mut().enumerate() {
        let Some(url) = p.as_ref().ok().and_then(|e| e.full_url.clone()) else { continue };
        match seen.get(&url) {
            Some(first) => {
                *p = Err(bad(format!("fullUrl is the same as that of Bundle.entry[{first}]; fullUrls must be unique")));
            }
            None => {
                seen.insert(url, i);
            }
        }
    }
}

/// Names the failing entry in a transaction's error, keeping its status.
fn at_entry(error: FhirError, index: usize) -> FhirError {
    let entry = format!("Bundle.entry[{index}]");
    let p = |m: String| format!("{entry}: {m}");
    match error {
        FhirError::BadRequest(m) => FhirError::BadRequest(p(m)),
        FhirError::Invalid(issues) => FhirError::Invalid(
            issues
                .into_iter()
                .map(|mut issue| {
                    issue.diagnostics = p(issue.diagnostics);
                    issue.expression = if issue.expression.is_empty() {
                        vec![entry.clone()]
                    } else {
                        // `Patient.name[0]` → `Bundle.entry[3].resource.name[0]`.
                        issue
                            .expression
                            .iter()
                            .map(|x| match x.split_once('.') {
                                Some((_, rest)) => format!("{entry}.resource.{rest}"),
                                None => format!("{entry}.resource"),
                            })
                            .collect()
                    };
                    issue
                })
                .collect(),
        ),
        FhirError::Unauthorized(m) => FhirError::Unauthorized(p(m)),
        FhirError::Forbidden(m) => FhirError::Forbidden(p(m)),
        FhirError::NotFound(m) => FhirError::NotFound(p(m)),
        FhirError::Gone(m) => FhirError::Gone(p(m)),
        FhirError::MethodNotAllowed(m) => FhirError::MethodNotAllowed(p(m)),
        FhirError::NotAcceptable(m) => FhirError::NotAcceptable(p(m)),
        FhirError::Conflict(m) => FhirError::Conflict(p(m)),
        FhirError::PreconditionFailed(m) => FhirError::PreconditionFailed(p(m)),
        FhirError::PayloadTooLarge(m) => FhirError::PayloadTooLarge(p(m)),
        FhirError::UnsupportedMediaType(m) => FhirError::UnsupportedMediaType(p(m)),
        FhirError::Retryable(m) => FhirError::Retryable(p(m)),
        FhirError::Unavailable(m) => FhirError::Unavailable(p(m)),
        FhirError::Internal(m) => FhirError::Internal(m),
        FhirError::Sealed(m) => FhirError::Sealed(p(m)),
    }
}

// ---------------------------------------------------------------------------------------------
// References
// ---------------------------------------------------------------------------------------------

/// What the fullUrls of the Bundle resolve to.
struct Links<'a> {
    base: &'a str,
    /// fullUrl → `Type/id`, for the entries whose target is known.
    resolved: HashMap<String, String>,
    /// `urn:` fullUrl → entry index of every entry (a reference to one that was not resolved
    /// is an error rather than a dangling `urn:` stored for ever).
    urns: HashMap<String, usize>,
}

impl<'a> Links<'a> {
    fn new(base: &'a str, entries: &[Entry]) -> Self {
        let urns = entries
            .iter()
            .filter_map(|e| e.full_url.as_ref().filter(|u| is_urn(u)).map(|u| (u.clone(), e.index)))
            .collect();
        Links { base, resolved: HashMap::new(), urns }
    }

    /// Replaces `urn:uuid:`/`urn:oid:` tokens that name resolved entries; `None` when none did.
    fn rewrite_text(&self, s: &str) -> Option<String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        let mut changed = false;
        while let Some(pos) = [rest.find("urn:uuid:"), rest.find("urn:oid:")].into_iter().flatten().min() {
            out.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            let prefix = if tail.starts_with("urn:uuid:") { 9 } else { 8 };
            let end = tail[prefix..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
                .map_or(tail.len(), |n| prefix + n);
            let token = &tail[..end];
            match self.resolved.get(token) {
                Some(r) => {
                    out.push_str(r);
                    changed = true;
                }
                None => out.push_str(token),
            }
            rest = &tail[end..];
        }
        out.push_str(rest);
        changed.then_some(out)
    }

    /// A request URL's query with `urn:` values of resolved entries rewritten.
    fn rewrite_query(&self, query: &str) -> String {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut changed = false;
        let pairs: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| match self.rewrite_text(&v) {
                Some(v) => {
                    changed = true;
                    (k, v)
                }
                None => (k, v),
            })
            .collect();
        if !changed {
            return query.to_owned();
        }
        form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
    }
}

fn is_urn(s: &str) -> bool {
    s.starts_with("urn:uuid:") || s.starts_with("urn:oid:")
}

/// `Type?query` in a `reference`: a conditional reference (http.html#trules).
fn conditional_reference(reference: &str) -> Option<(&str, &str)> {
    let (path, query) = reference.split_once('?')?;
    (!query.is_empty() && !path.contains('/') && definitions().is_resource_type(path)).then_some((path, query))
}

/// `Word?query` with no scheme or path: the shape of a conditional reference, whatever the word.
fn looks_conditional(reference: &str) -> bool {
    reference.split_once('?').is_some_and(|(path, _)| !path.is_empty() && path.bytes().all(|c| c.is_ascii_alphanumeric()))
}

/// "the reference at <JSON Pointer>", for errors about a reference without echoing its value.
fn reference_at(pointer: &str) -> String {
    format!("the reference at {}", crate::fhir::types::sanitize(pointer))
}

/// Every `reference` string in `value` with its JSON Pointer.
fn collect_references(value: &Value, pointer: &mut String, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(obj) => {
            for (key, v) in obj {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                match v {
                    Value::String(s) if key == "reference" => found.push((pointer.clone(), s.clone())),
                    _ => collect_references(v, pointer, found),
                }
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                collect_references(v, pointer, found);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// Rewrites the references of one resource: fullUrls of Bundle entries → `Type/id`,
/// conditional references → the single match (searched once per distinct reference).
async fn resolve_references(
    tx: &mut Tx,
    principal: &Principal,
    links: &Links<'_>,
    cache: &mut HashMap<String, String>,
    resource: &mut Value,
) -> FhirResult<()> {
    let mut found = vec![];
    collect_references(resource, &mut String::new(), &mut found);
    for (pointer, reference) in found {
        let replacement = if let Some(r) = links.resolved.get(&reference) {
            r.clone()
        } else if let Some(other) = links.urns.get(&reference) {
            return Err(bad(format!("a reference names Bundle.entry[{other}], which was not processed successfully")));
        } else if let Some((type_name, query)) = conditional_reference(&reference) {
            match cache.get(&reference) {
                Some(r) => r.clone(),
                None => {
                    let r = resolve_conditional(tx, principal, links, type_name, query).await?;
                    cache.insert(reference.clone(), r.clone());
                    r
                }
            }
        } else if is_urn(&reference) {
            // bundle.html#references: a urn: names an entry of this Bundle; stored as it is, it
            // would be a reference that nothing can ever resolve.
            return Err(bad(format!("{} names no entry of this Bundle (no entry has it as its fullUrl)", reference_at(&pointer))));
        } else if looks_conditional(&reference) {
            return Err(bad(format!(
                "{} cannot be resolved: a conditional reference is a resource type and search criteria (Type?param=value)",
                reference_at(&pointer)
            )));
        } else {
            continue;
        };
        if let Some(slot) = resource.pointer_mut(&pointer) {
            *slot = Value::String(replacement);
        }
    }
    Ok(())
}

async fn resolve_conditional(
    tx: &mut Tx,
    principal: &Principal,
    links: &Links<'_>,
    type_name: &str,
    query: &str,
) -> FhirResult<String> {
    let rt = ResourceType::parse(type_name)?;
    let _ = principal.require(rt.as_str(), Interaction::Search)?;
    let mut criteria = search::parse_conditional(&rt, &links.rewrite_query(query), links.base)?;
    crate::access::confine(&mut criteria, principal, links.base)?;
    let ids = search::matching_ids(tx, &criteria, 2).await?;
    match ids.as_slice() {
        [one] => Ok(format!("{rt}/{one}")),
        [] => Err(FhirError::PreconditionFailed(format!("a conditional reference to {rt} matched no resource"))),
        _ => Err(FhirError::PreconditionFailed(format!("a conditional reference to {rt} matched more than one resource"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Processing steps (shared by transaction and batch)
// ---------------------------------------------------------------------------------------------

/// Where a POST/PUT/PATCH entry lands, decided before any resource is written.
enum Plan {
    /// POST: a new resource with this id.
    Create(Id),
    /// POST whose `ifNoneExist` matched this resource: nothing is written.
    Existing(StoredResource),
    /// PUT/PATCH of this id; `true` when the server chose the id (a conditional update that
    /// matched nothing), which a confined principal may create at.
    Write(Id, bool),
}

impl Plan {
    fn key(&self, rt: &ResourceType) -> String {
        match self {
            Plan::Create(id) | Plan::Write(id, _) => format!("{rt}/{id}"),
            Plan::Existing(s) => format!("{}/{}", s.resource_type, s.id),
        }
    }
}

/// The ids (at most two) matching the criteria of a conditional entry; `lock` serialises
/// concurrent conditional writes with the same criteria, like the single interactions do.
/// The criteria are confined to the principal's reach like a search: a match outside it is no
/// match (out of reach = does not exist).
async fn conditional_matches(
    tx: &mut Tx,
    principal: &Principal,
    e: &Entry,
    query: &str,
    links: &Links<'_>,
    lock: bool,
) -> FhirResult<Vec<String>> {
    let mut criteria = search::parse_conditional(&e.rt, &links.rewrite_query(query), links.base)?;
    crate::access::confine(&mut criteria, principal, links.base)?;
    if lock {
        store::lock_criteria(tx, &format!("{}?{}", e.rt, criteria.canonical())).await?;
    }
    search::matching_ids(tx, &criteria, 2).await
}

async fn plan(tx: &mut Tx, principal: &Principal, e: &Entry, links: &Links<'_>) -> FhirResult<Plan> {
    let rt = e.rt.as_str();
    match (e.method, &e.target) {
        (Method::Post, _) => {
            let Some(query) = &e.if_none_exist else { return Ok(Plan::Create(Id::generate())) };
            // `ifNoneExist` is the query part; tolerate a leading `Type?`.
            let query = query.split_once('?').map_or(query.as_str(), |(_, q)| q);
            let ids = conditional_matches(tx, principal, e, query, links, true).await?;
            match ids.as_slice() {
                [] => Ok(Plan::Create(Id::generate())),
                [one] => {
                    let content = store::current_content(tx, rt, one).await?;
                    Ok(Plan::Existing(create::read_locked(tx, rt, one, content).await?))
                }
                _ => Err(FhirError::PreconditionFailed("ifNoneExist matched more than one resource".into())),
            }
        }
        (_, Target::Instance(id)) => Ok(Plan::Write(id.clone(), false)),
        (Method::Put, Target::Query(query)) => {
            let ids = conditional_matches(tx, principal, e, query, links, true).await?;
            let body_id = match &e.body {
                Some(body) => body_id(body)?,
                None => None,
            };
            let (id, fresh) = match (ids.as_slice(), body_id) {
                ([], Some(id)) => (id, false),
                ([], None) => (Id::generate(), true),
                ([one], Some(id)) if one != id.as_str() => {
                    return Err(bad("the id in the resource differs from the resource the criteria matched"));
                }
                ([one], _) => (Id::parse(one)?, false),
                _ => return Err(FhirError::PreconditionFailed("the criteria matched more than one resource".into())),
            };
            Ok(Plan::Write(id, fresh))
        }
        (Method::Patch, Target::Query(query)) => {
            let ids = conditional_matches(tx, principal, e, query, links, false).await?;
            match ids.as_slice() {
                [one] => Ok(Plan::Write(Id::parse(one)?, false)),
                [] => Err(FhirError::NotFound("the criteria matched no resource".into())),
                _ => Err(FhirError::PreconditionFailed("the criteria matched more than one resource".into())),
            }
        }
        _ => Err(FhirError::Internal("no write plan for this entry".into())),
    }
}

/// Writes a planned POST/PUT/PATCH entry; `body` has its references resolved.
async fn write(tx: &mut Tx, principal: &Principal, e: &Entry, plan: Plan, body: Option<Value>, base: &str) -> FhirResult<EntryOutcome> {
    let missing = || FhirError::Internal("entry without body".into());
    let outcome = match (plan, e.method) {
        (Plan::Existing(stored), _) => WriteOutcome { stored, created: false },
        (Plan::Create(id), _) => {
            let mut body = body.ok_or_else(missing)?;
            let reach = principal.require(e.rt.as_str(), Interaction::Create)?;
            crate::access::authorize_write(tx, principal, &reach, e.rt.as_str(), id.as_str(), None, Some(&mut body), base).await?;
            let last_updated = now();
            stamp(&mut body, id.as_str(), 1, &last_updated);
            create::create_in(tx, principal, e.rt.as_str(), &id, last_updated, body, None, base).await?
        }
        (Plan::Write(id, _), Method::Patch) => {
            let patch = patch::parse_patch(body.ok_or_else(missing)?)?;
            patch::patch_in(tx, principal, &e.rt, Some(&id), None, &patch, e.if_match.as_deref(), e.max_patch_result, base).await?
        }
        (Plan::Write(id, fresh), _) => {
            let body = body.ok_or_else(missing)?;
            update::put_version(tx, principal, &e.rt, &id, body, e.if_match.as_deref(), "PUT", fresh, base).await?
        }
    };
    Ok(EntryOutcome::Write(outcome))
}

/// A DELETE entry; returns the id it targeted, if any.
async fn delete_entry(tx: &mut Tx, principal: &Principal, e: &Entry, links: &Links<'_>) -> FhirResult<(EntryOutcome, Option<Id>)> {
    let rt = e.rt.as_str();
    let id = match &e.target {
        Target::Instance(id) => id.clone(),
        Target::Query(query) => match conditional_matches(tx, principal, e, query, links, false).await?.as_slice() {
            [] => return Ok((EntryOutcome::Deleted(0), None)),
            [one] => Id::parse(one)?,
            _ => return Err(FhirError::PreconditionFailed("the criteria matched more than one resource".into())),
        },
        _ => return Err(FhirError::Internal("no delete target".into())),
    };
    // Out of reach answers like an unknown id, `ifMatch` included.
    let reach = principal.require(rt, Interaction::Delete)?;
    let exists = delete::check_delete(tx, principal, &reach, rt, id.as_str(), links.base).await?;
    if let Some(expected) = &e.if_match {
        let current = store::lock_current(tx, rt, id.as_str()).await?.filter(|(_, deleted)| !deleted && exists).map(|(v, _)| v);
        if current.is_none() || current != update::parse_if_match(expected) {
            return Err(FhirError::PreconditionFailed(format!("ifMatch does not match the current version of {rt}/{id}")));
        }
    }
    if !exists {
        return Ok((EntryOutcome::Deleted(0), Some(id)));
    }
    let deleted = delete::delete_in(tx, principal, rt, id.as_str()).await?;
    Ok((EntryOutcome::Deleted(deleted), Some(id)))
}

/// A GET/HEAD entry: read, vread (with `ifNoneMatch` / `ifModifiedSince`) or search.
async fn get_entry(tx: &mut Tx, principal: &Principal, e: &Entry, links: &Links<'_>) -> FhirResult<EntryOutcome> {
    let stored = match &e.target {
        Target::Instance(id) => read::read_in(tx, principal, &e.rt, id, links.base).await?,
        Target::Version(id, version) => read::vread_in(tx, principal, &e.rt, id, version, links.base).await?,
        Target::Query(query) => {
            let query = links.rewrite_query(query);
            let pairs: Vec<(String, String)> =
                form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            return Ok(EntryOutcome::Search(super::search::search_in(tx, principal, &e.rt, &pairs, false, links.base).await?));
        }
        Target::Type => return Err(FhirError::Internal("no read target".into())),
    };
    let not_modified = match (&e.if_none_match, e.if_modified_since) {
        (Some(tags), _) => tags.split(',').map(str::trim).any(|t| t == "*" || update::parse_if_match(t) == Some(stored.version_id)),
        (None, Some(since)) => stored.last_updated <= since,
        (None, None) => false,
    };
    if not_modified {
        return Ok(EntryOutcome::NotModified(stored));
    }
    Ok(EntryOutcome::Read { stored, head: e.method == Method::Head })
}

// ---------------------------------------------------------------------------------------------
// Transaction
// ---------------------------------------------------------------------------------------------

/// Runs all entries in one database transaction (retried as a whole on serialization
/// failures and deadlocks); a failure is tagged with the failing entry.
async fn run_transaction(
    store: &Store,
    principal: &Principal,
    entries: &[Entry],
    base: &str,
    record: Option<(&str, store::import::Progress)>,
) -> FhirResult<Vec<EntryOutcome>> {
    let failed = AtomicUsize::new(usize::MAX);
    let failed_ref = &failed;
    let result = store
        .with_transaction(move |mut tx| {
            Box::pin(async move {
                failed_ref.store(usize::MAX, Ordering::Relaxed);
                let mut result = transaction_in(&mut tx, principal, entries, base, failed_ref).await;
                if let (Ok(_), Some((key, progress))) = (&result, record) {
                    if let Err(e) = store::import::record_progress(&mut tx, key, progress).await {
                        result = Err(e);
                    }
                }
                (tx, result)
            })
        })
        .await;
    result.map_err(|e| match failed.load(Ordering::Relaxed) {
        usize::MAX => e,
        index => at_entry(e, index),
    })
}

/// Records which entry failed.
fn tagged<T>(failed: &AtomicUsize, index: usize, result: FhirResult<T>) -> FhirResult<T> {
    if result.is_err() {
        failed.store(index, Ordering::Relaxed);
    }
    result
}

/// http.html#trules: resources changed by steps 1–3 may not overlap.
fn claim(changed: &mut HashMap<String, usize>, key: String, index: usize) -> FhirResult<()> {
    match changed.get(&key) {
        Some(other) => Err(bad(format!(
            "changes the same resource as Bundle.entry[{other}]; the resources a transaction changes may not overlap"
        ))),
        None => {
            changed.insert(key, index);
            Ok(())
        }
    }
}

fn is_write(m: Method) -> bool {
    matches!(m, Method::Post | Method::Put | Method::Patch)
}

async fn transaction_in(
    tx: &mut Tx,
    principal: &Principal,
    entries: &[Entry],
    base: &str,
    failed: &AtomicUsize,
) -> FhirResult<Vec<EntryOutcome>> {
    let mut links = Links::new(base, entries);
    let mut out: Vec<Option<EntryOutcome>> = entries.iter().map(|_| None).collect();
    let mut changed: HashMap<String, usize> = HashMap::new();

    // 1. DELETE
    for e in entries.iter().filter(|e| e.method == Method::Delete) {
        let (outcome, id) = tagged(failed, e.index, delete_entry(tx, principal, e, &links).await)?;
        if let Some(id) = id {
            tagged(failed, e.index, claim(&mut changed, format!("{}/{id}", e.rt), e.index))?;
        }
        out[e.index] = Some(outcome);
    }

    // 2. Where every POST/PUT/PATCH lands. Targets known without a search come first, so that
    //    conditional URLs may name them by their fullUrl.
    let pass = |e: &Entry| match (e.method, &e.target) {
        (Method::Post, _) if e.if_none_exist.is_none() => 0,
        (_, Target::Instance(_)) => 0,
        (Method::Post, _) => 1,
        _ => 2,
    };
    let mut plans: HashMap<usize, Plan> = HashMap::new();
    for p in 0..3 {
        for e in entries.iter().filter(|e| is_write(e.method) && pass(e) == p) {
            let plan = tagged(failed, e.index, plan(tx, principal, e, &links).await)?;
            let key = plan.key(&e.rt);
            if matches!(plan, Plan::Write(..)) {
                tagged(failed, e.index, claim(&mut changed, key.clone(), e.index))?;
            }
            if let Some(url) = &e.full_url {
                links.resolved.insert(url.clone(), key);
            }
            plans.insert(e.index, plan);
        }
    }

    // 3. Resolve the references of everything to be written before anything is written.
    let mut cache = HashMap::new();
    let mut bodies: HashMap<usize, Value> = HashMap::new();
    for e in entries.iter().filter(|e| is_write(e.method)) {
        if matches!(plans.get(&e.index), Some(Plan::Existing(_))) {
            continue;
        }
        let Some(mut body) = e.body.clone() else { continue };
        tagged(failed, e.index, resolve_references(tx, principal, &links, &mut cache, &mut body).await)?;
        bodies.insert(e.index, body);
    }

    // 4. POST, then PUT/PATCH. The POSTs that create (most of a Synthea-style Bundle) are
    //    written together in one statement, all with the transaction's one timestamp.
    let last_updated = now();
    let mut creates: Vec<(usize, &ResourceType, Id, Value)> = vec![];
    for e in entries.iter().filter(|e| e.method == Method::Post) {
        match plans.remove(&e.index) {
            // Types with workflow rules are created one by one (the rules see what the entries
            // before them wrote); the rest together.
            Some(Plan::Create(id)) if !super::rules::has_rules(e.rt.as_str()) => {
                let mut body = bodies.remove(&e.index).ok_or_else(|| FhirError::Internal("entry without body".into()))?;
                let _ = tagged(failed, e.index, principal.require(e.rt.as_str(), Interaction::Create))?;
                tagged(failed, e.index, crate::access::prepare_write(tx, principal, e.rt.as_str(), id.as_str(), None, Some(&mut body)).await)?;
                stamp(&mut body, id.as_str(), 1, &last_updated);
                creates.push((e.index, &e.rt, id, body));
            }
            Some(plan) => out[e.index] = Some(tagged(failed, e.index, write(tx, principal, e, plan, bodies.remove(&e.index), base).await)?),
            None => return Err(FhirError::Internal("entry without plan".into())),
        }
    }
    if let Some((first, ..)) = creates.first() {
        let rows: Vec<(&str, &str, &Value)> = creates.iter().map(|(_, rt, id, body)| (rt.as_str(), id.as_str(), body)).collect();
        tagged(failed, *first, store::insert_many_new(tx, &rows, last_updated, base).await)?;
        // Reach is checked once everything is inserted: a new Observation belongs to a
        // subtree through the new Patient of the same Bundle.
        for (index, rt, id, body) in &creates {
            let reach = tagged(failed, *index, principal.require(rt.as_str(), Interaction::Create))?;
            tagged(failed, *index, crate::access::check_write_reach(tx, &reach, rt.as_str(), id.as_str(), None, Some(body), base).await)?;
        }
    }
    for (index, rt, id, body) in creates {
        let stored = StoredResource::written(rt.as_str(), id.as_str(), 1, last_updated, body);
        out[index] = Some(EntryOutcome::Write(WriteOutcome { stored, created: true }));
    }
    for e in entries.iter().filter(|e| matches!(e.method, Method::Put | Method::Patch)) {
        let plan = plans.remove(&e.index).ok_or_else(|| FhirError::Internal("entry without plan".into()))?;
        let outcome = tagged(failed, e.index, write(tx, principal, e, plan, bodies.remove(&e.index), base).await)?;
        out[e.index] = Some(outcome);
    }

    // 5. GET/HEAD, seeing everything above.
    for e in entries.iter().filter(|e| matches!(e.method, Method::Get | Method::Head)) {
        out[e.index] = Some(tagged(failed, e.index, get_entry(tx, principal, e, &links).await)?);
    }

    out.into_iter().map(|o| o.ok_or_else(|| FhirError::Internal("an entry was not processed".into()))).collect()
}

// ---------------------------------------------------------------------------------------------
// Batch
// ---------------------------------------------------------------------------------------------

/// Runs each entry in its own database transaction, in the transaction order; fullUrls of
/// entries that succeeded resolve for the entries processed after them.
async fn run_batch(
    store: &Store,
    principal: &Principal,
    prepared: Vec<FhirResult<Entry>>,
    base: &str,
) -> Vec<FhirResult<EntryOutcome>> {
    let mut results: Vec<Option<FhirResult<EntryOutcome>>> = prepared.iter().map(|_| None).collect();
    let mut entries = vec![];
    for (i, p) in prepared.into_iter().enumerate() {
        match p {
            Ok(e) => entries.push(e),
            Err(err) => results[i] = Some(Err(err)),
        }
    }
    let mut links = Links::new(base, &entries);
    let groups: [&[Method]; 4] = [&[Method::Delete], &[Method::Post], &[Method::Put, Method::Patch], &[Method::Get, Method::Head]];
    for group in groups {
        for e in entries.iter().filter(|e| group.contains(&e.method)) {
            let links_ref = &links;
            let result = store
                .with_transaction(move |mut tx| {
                    Box::pin(async move {
                        let result = batch_entry(&mut tx, principal, e, links_ref).await;
                        (tx, result)
                    })
                })
                .await;
            if let (Ok((_, Some(key))), Some(url)) = (&result, &e.full_url) {
                links.resolved.insert(url.clone(), key.clone());
            }
            results[e.index] = Some(result.map(|(outcome, _)| outcome));
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(FhirError::Internal("an entry was not processed".into())))).collect()
}

/// One batch entry; returns what its fullUrl resolves to, for writes.
async fn batch_entry(
    tx: &mut Tx,
    principal: &Principal,
    e: &Entry,
    links: &Links<'_>,
) -> FhirResult<(EntryOutcome, Option<String>)> {
    match e.method {
        Method::Delete => Ok((delete_entry(tx, principal, e, links).await?.0, None)),
        Method::Get | Method::Head => Ok((get_entry(tx, principal, e, links).await?, None)),
        Method::Post | Method::Put | Method::Patch => {
            let plan = plan(tx, principal, e, links).await?;
            let key = plan.key(&e.rt);
            let body = match (&plan, e.body.clone()) {
                (Plan::Existing(_), _) | (_, None) => None,
                (_, Some(mut body)) => {
                    resolve_references(tx, principal, links, &mut HashMap::new(), &mut body).await?;
                    Some(body)
                }
            };
            Ok((write(tx, principal, e, plan, body, links.base).await?, Some(key)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn links(resolved: &[(&str, &str)]) -> Links<'static> {
        Links {
            base: "http://h/fhir",
            resolved: resolved.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            urns: HashMap::new(),
        }
    }

    #[test]
    fn urn_tokens_in_text_are_replaced_only_when_resolved() {
        let l = links(&[("urn:uuid:abc-1", "Patient/9"), ("urn:oid:1.2.3", "Organization/7")]);
        assert_eq!(l.rewrite_text("urn:uuid:abc-1").as_deref(), Some("Patient/9"));
        assert_eq!(l.rewrite_text("urn:uuid:abc-1,urn:oid:1.2.3").as_deref(), Some("Patient/9,Organization/7"));
        assert_eq!(l.rewrite_text("urn:uuid:other"), None);
        assert_eq!(l.rewrite_query("subject=urn%3Auuid%3Aabc-1&code=x"), "subject=Patient%2F9&code=x");
        assert_eq!(l.rewrite_query("code=a%7Cb"), "code=a%7Cb");
    }

    #[test]
    fn references_are_found_everywhere_including_contained_resources() {
        let v = json!({"resourceType": "Observation", "subject": {"reference": "urn:uuid:1"},
            "contained": [{"resourceType": "Patient", "id": "p", "link": [{"other": {"reference": "urn:uuid:2"}}]}],
            "note": [{"text": "reference"}], "code": {"text": "urn:uuid:1"}});
        let mut found = vec![];
        collect_references(&v, &mut String::new(), &mut found);
        assert_eq!(
            found,
            vec![
                ("/subject/reference".to_owned(), "urn:uuid:1".to_owned()),
                ("/contained/0/link/0/other/reference".to_owned(), "urn:uuid:2".to_owned())
            ]
        );
    }

    #[test]
    fn transaction_errors_name_the_entry_and_keep_their_status() {
        let e = at_entry(FhirError::PreconditionFailed("x".into()), 3);
        assert_eq!(e.status().as_u16(), 412);
        assert_eq!(e.to_string(), "Bundle.entry[3]: x");
        let e = at_entry(FhirError::Invalid(vec![crate::error::Issue::error("required", "missing").at("Observation.status")]), 1);
        assert_eq!(e.issues()[0].expression, vec!["Bundle.entry[1].resource.status".to_owned()]);
    }

    #[test]
    fn conditional_references_need_a_resource_type_and_a_query() {
        assert_eq!(conditional_reference("Patient?identifier=a|b"), Some(("Patient", "identifier=a|b")));
        assert_eq!(conditional_reference("Patient/1"), None);
        assert_eq!(conditional_reference("Nonsense?x=1"), None);
        assert_eq!(conditional_reference("Patient?"), None);
    }
}
