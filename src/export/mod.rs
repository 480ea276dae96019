//! Bulk Data Access `$export` (FHIR Bulk Data IG v2): https://hl7.org/fhir/uv/bulkdata/export.html
//!
//! - **Kick-off** (`[base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export`, GET
//!   or POST with a `Parameters` body) needs `Prefer: respond-async` and `system/` read scopes;
//!   it validates the parameters, stores a job row (`export_job`) and answers
//!   202 with `Content-Location: [base]/$export-status/<job>`.
//! - **Status** (`GET` on that URL): 202 with `X-Progress` and `Retry-After` while the job runs,
//!   200 with the manifest when done, 500 with an OperationOutcome when it failed; `DELETE`
//!   cancels (202; the URL is 404 afterwards). Only the principal that asked (client and
//!   subject of its token) may poll, cancel and download.
//! - **Files** (`[base]/$export-file/<job>/<Type>-<n>.ndjson`) come from the
//!   [`DocumentStore`]; the manifest says `requiresAccessToken: true`.
//! - The [`worker`] runs jobs in the background, one at a time, from one consistent snapshot;
//!   jobs survive restarts (see the migration).

pub mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::auth::{Interaction, Principal};
use crate::documents::{DocumentStore, ExportUrls};
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::definitions;
use crate::fhir::types::{Id, ResourceType, sanitize};
use crate::interactions::history::parse_instant;
use crate::store::Store;

/// The NDJSON media types `_outputFormat` accepts (all mean the same output).
const OUTPUT_FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Kick-off parameters this server does not implement: refused (400) unless the client sends
/// `Prefer: handling=lenient`, as the IG asks.
const UNSUPPORTED: [&str; 3] = ["_elements", "patient", "includeAssociatedData"];

/// How long a client should wait between status polls.
pub const RETRY_AFTER_SECONDS: u64 = 2;

/// Shared state of the export machinery: the document store, how long results are kept, and
/// the signal that wakes the worker when a job is queued.
pub struct ExportService {
    pub documents: DocumentStore,
    /// Completed and failed jobs (with their files) are deleted this long after they end.
    pub retention: Duration,
    wake: Notify,
    /// Where manifest URLs point (`--export-urls`) and how long pre-signed ones last.
    urls: ExportUrls,
    url_ttl: Duration,
}

impl ExportService {
    /// A service writing to `documents`, keeping results for `retention`, handing out this
    /// server's file URLs.
    pub fn new(documents: DocumentStore, retention: Duration) -> Self {
        ExportService { documents, retention, wake: Notify::new(), urls: ExportUrls::Server, url_ttl: Duration::from_secs(300) }
    }

    /// The same, with manifest URLs of the given kind valid for `ttl` when pre-signed.
    pub fn with_urls(mut self, urls: ExportUrls, ttl: Duration) -> Self {
        self.urls = urls;
        self.url_ttl = ttl;
        self
    }
}

/// An output file as the file endpoint serves it.
pub enum ExportFile {
    /// A local file, streamed.
    Local(tokio::fs::File, u64),
    /// A pre-signed GET of the object in S3.
    Redirect(String),
}

/// The three kick-off endpoints.
#[derive(Debug, Clone)]
pub enum Level {
    System,
    Patient,
    Group(Id),
}

impl Level {
    fn name(&self) -> &'static str {
        match self {
            Level::System => "system",
            Level::Patient => "patient",
            Level::Group(_) => "group",
        }
    }
}

/// A validated kick-off request.
#[derive(Debug, Clone)]
pub struct KickOff {
    pub level: Level,
    pub types: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub type_filters: Vec<String>,
}

/// What a status poll finds.
#[derive(Debug)]
pub enum JobState {
    /// Accepted or running; the text goes into `X-Progress`.
    Running { progress: String },
    Completed { manifest: Value, expires: DateTime<Utc> },
    Failed { error: String },
}

/// The kick-off parameters of a POST `Parameters` body, as (name, value) pairs like a query.
pub fn parameters_to_pairs(body: &Value) -> FhirResult<Vec<(String, String)>> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(FhirError::BadRequest("the $export POST body must be a Parameters resource".into()));
    }
    let mut pairs = vec![];
    for p in body.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = p.get("name").and_then(Value::as_str) else { continue };
        let value = p.as_object().and_then(|o| {
            o.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                // valueReference (`patient`) and other complex values: kept as JSON so the
                // parameter is at least recognised (and refused as unsupported).
                other => other.to_string(),
            })
        });
        pairs.push((name.to_owned(), value.unwrap_or_default()));
    }
    Ok(pairs)
}

/// Validates a kick-off: parameters (400), scopes (403: `system/` read on every exported type),
/// and for a Group that it exists (404). `lenient` ignores unsupported parameters.
pub async fn parse_kick_off(
    store: &Store,
    principal: &Principal,
    level: Level,
    pairs: &[(String, String)],
    lenient: bool,
    base: &str,
) -> FhirResult<KickOff> {
    if !principal.scopes.iter().any(|s| s.context == crate::auth::ScopeContext::System) {
        return Err(FhirError::Forbidden("$export needs system-level scopes (SMART Backend Services), e.g. system/*.read".into()));
    }
    let mut since = None;
    let mut requested: Option<Vec<String>> = None;
    let mut type_filters = vec![];
    for (name, value) in pairs {
        match name.as_str() {
            "_outputFormat" => {
                if !OUTPUT_FORMATS.contains(&value.as_str()) {
                    return Err(FhirError::BadRequest(format!(
                        "_outputFormat '{}' is not supported; use application/fhir+ndjson",
                        sanitize(value)
                    )));
                }
            }
            "_since" => since = Some(parse_instant(name, value)?),
            "_type" => {
                let list = requested.get_or_insert_with(Vec::new);
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !definitions().is_resource_type(t) {
                        return Err(FhirError::BadRequest(format!("_type: '{}' is not a resource type", sanitize(t))));
                    }
                    if !list.iter().any(|x| x == t) {
                        list.push(t.to_owned());
                    }
                }
            }
            "_typeFilter" => {
                for filter in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    // A filter value is itself `Type?query` (its commas are percent-encoded).
                    parse_type_filter(filter, base)?;
                    type_filters.push(filter.to_owned());
                }
            }
            n if UNSUPPORTED.contains(&n) && !lenient => {
                return Err(FhirError::BadRequest(format!(
                    "the $export parameter {n} is not supported (send Prefer: handling=lenient to ignore it)"
                )));
            }
            _ => {}
        }
    }
    let candidates: Vec<String> = match &level {
        Level::System => definitions().resource_types().to_vec(),
        Level::Patient | Level::Group(_) => compartment_types(),
    };
    let types: Vec<String> = match requested {
        Some(list) => {
            if let Some(denied) = list.iter().find(|t| !principal.allows_system(t, Interaction::Read) || principal.filters(t, Interaction::Read).is_some()) {
                return Err(FhirError::Forbidden(format!("the access token's system scopes do not allow reading {denied}")));
            }
            // Patient/Group level: types outside the Patient compartment have nothing to export.
            list.into_iter().filter(|t| candidates.contains(t)).collect()
        }
        // Types confined by granular scopes are left out (their queries are not export filters),
        // and so is the audit trail (AuditEvent) unless _type names it.
        None => candidates
            .into_iter()
            .filter(|t| t != "AuditEvent" && principal.allows_system(t, Interaction::Read) && principal.filters(t, Interaction::Read).is_none())
            .collect(),
    };
    for filter in &type_filters {
        let (t, _) = filter.split_once('?').unwrap_or((filter, ""));
        if !types.iter().any(|x| x == t) {
            return Err(FhirError::BadRequest(format!("_typeFilter names {}, which this export does not include", sanitize(t))));
        }
    }
    if let Level::Group(id) = &level {
        match store.read("Group", id.as_str()).await? {
            Some(group) if !group.deleted => {}
            Some(_) => return Err(FhirError::Gone(format!("Group/{id} was deleted"))),
            None => return Err(FhirError::NotFound(format!("Group/{id} is not known"))),
        }
        if !principal.allows_system("Group", Interaction::Read) {
            return Err(FhirError::Forbidden("the access token's system scopes do not allow reading Group".into()));
        }
    }
    Ok(KickOff { level, types, since, type_filters })
}

/// Parses one `_typeFilter` value into its type and search criteria (400 when malformed or
/// when it uses a parameter this server cannot search).
pub fn parse_type_filter(filter: &str, base: &str) -> FhirResult<(ResourceType, crate::search::Criteria)> {
    let bad = |why: String| FhirError::BadRequest(format!("_typeFilter: {why}"));
    let (t, query) = filter.split_once('?').ok_or_else(|| bad("expected Type?parameters".into()))?;
    let rt = ResourceType::parse(t).map_err(|_| bad(format!("'{}' is not a resource type", sanitize(t))))?;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if pairs.is_empty() {
        return Err(bad("no search parameters".into()));
    }
    let request = crate::search::parse_search(&rt, &pairs, true, base).map_err(|e| bad(e.to_string()))?;
    Ok((rt, request.criteria))
}

/// The resource types of the Patient CompartmentDefinition (those with a parameter) plus
/// Patient itself.
pub fn compartment_types() -> Vec<String> {
    let mut types: Vec<String> = compartment_params().into_iter().map(|(t, _)| t).collect();
    if !types.iter().any(|t| t == "Patient") {
        types.insert(0, "Patient".into());
    }
    types
}

/// (type, its compartment parameters) from the official Patient CompartmentDefinition.
pub fn compartment_params() -> Vec<(String, Vec<String>)> {
    definitions()
        .compartment_members("Patient")
        .into_iter()
        .filter(|(code, params)| !params.is_empty() || code == "Patient")
        .collect()
}

/// Where a job's files live in the document store (`export/<job>/<Type>-<n>.ndjson`).
pub fn job_prefix(id: Uuid) -> String {
    format!("export/{}", id.simple())
}

/// Stores the job and wakes the worker; returns the job id.
pub async fn enqueue(store: &Store, service: &ExportService, principal: &Principal, kick_off: &KickOff, request: &str, base: &str) -> FhirResult<Uuid> {
    let id = Uuid::new_v4();
    let group = match &kick_off.level {
        Level::Group(g) => Some(g.as_str().to_owned()),
        _ => None,
    };
    sqlx::query(
        "INSERT INTO export_job (id, owner, status, request, base, level, group_id, types, since, type_filters) \
         VALUES ($1, $2, 'accepted', $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(principal.owner_key())
    .bind(request)
    .bind(base)
    .bind(kick_off.level.name())
    .bind(group)
    .bind(&kick_off.types)
    .bind(kick_off.since)
    .bind(&kick_off.type_filters)
    .execute(store.pool())
    .await?;
    service.wake.notify_one();
    Ok(id)
}

/// Finds a job for its owner, with its parsed id: 404 when unknown (or cancelled), 403 for
/// anybody else.
async fn owned_job(store: &Store, principal: &Principal, id: &str) -> FhirResult<(Uuid, sqlx::postgres::PgRow)> {
    let not_found = || FhirError::NotFound("no such export job (it may have been cancelled or expired)".into());
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    let row = sqlx::query("SELECT owner, status, progress, manifest, error, completed_at FROM export_job WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
        .ok_or_else(not_found)?;
    if row.get::<String, _>(0) != principal.owner_key() {
        return Err(FhirError::Forbidden("this export job belongs to another client".into()));
    }
    Ok((id, row))
}

/// The state of a job for a status poll.
pub async fn status(store: &Store, service: &ExportService, principal: &Principal, id: &str) -> FhirResult<JobState> {
    let (_, row) = owned_job(store, principal, id).await?;
    let status: String = row.get(1);
    Ok(match status.as_str() {
        "completed" => {
            let completed: Option<DateTime<Utc>> = row.get(5);
            let expires = completed.unwrap_or_else(Utc::now) + chrono::Duration::from_std(service.retention).unwrap_or_default();
            JobState::Completed { manifest: row.get::<Option<Value>, _>(3).unwrap_or_else(|| json!({})), expires }
        }
        "failed" => JobState::Failed { error: row.get::<Option<String>, _>(4).unwrap_or_else(|| "the export failed".into()) },
        "accepted" => JobState::Running { progress: "accepted, waiting to start".into() },
        _ => JobState::Running { progress: row.get::<Option<String>, _>(2).unwrap_or_else(|| "in progress".into()) },
    })
}

/// Cancels a job (running or finished) and deletes its files; its status URL is 404 afterwards.
pub async fn cancel(store: &Store, service: &ExportService, principal: &Principal, id: &str) -> FhirResult<()> {
    let (uuid, _) = owned_job(store, principal, id).await?;
    sqlx::query("DELETE FROM export_job WHERE id = $1").bind(uuid).execute(store.pool()).await?;
    // A running worker notices the missing row at its next heartbeat and deletes what it wrote.
    service
        .documents
        .delete_prefix(&job_prefix(uuid))
        .await
        .map_err(|e| FhirError::Internal(format!("cannot delete export files: {e}")))?;
    Ok(())
}

/// With `--export-urls presigned`, replaces the manifest's file URLs by pre-signed GETs of the
/// store (signed now, valid for the configured time) and says they need no access token.
/// `origin` is this server's public origin (where the embedded store's URLs point).
pub async fn presign_manifest(service: &ExportService, id: &str, mut manifest: Value, origin: &str) -> FhirResult<Value> {
    if service.urls != ExportUrls::Presigned {
        return Ok(manifest);
    }
    let uuid = Uuid::parse_str(id).map_err(|_| FhirError::NotFound("no such export job".into()))?;
    for list in ["output", "error", "deleted"] {
        let Some(entries) = manifest.get_mut(list).and_then(Value::as_array_mut) else { continue };
        for entry in entries {
            let Some(name) = entry.get("url").and_then(Value::as_str).and_then(|u| u.rsplit('/').next()).map(str::to_owned) else { continue };
            let signed = service
                .documents
                .presign_get(origin, &format!("{}/{name}", job_prefix(uuid)), "application/fhir+ndjson", service.url_ttl)
                .await
                .map_err(|e| FhirError::Internal(format!("cannot sign an export file URL: {e}")))?;
            entry["url"] = json!(signed.url);
        }
    }
    manifest["requiresAccessToken"] = json!(false);
    Ok(manifest)
}

/// Opens an output file of a completed job for its owner (S3: a pre-signed GET of it).
pub async fn open_file(store: &Store, service: &ExportService, principal: &Principal, id: &str, name: &str, origin: &str) -> FhirResult<ExportFile> {
    let (uuid, row) = owned_job(store, principal, id).await?;
    let not_found = || FhirError::NotFound("no such export file".into());
    let manifest: Option<Value> = row.get(3);
    let listed = manifest
        .as_ref()
        .and_then(|m| m.get("output"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("url").and_then(Value::as_str))
        .any(|url| url.rsplit('/').next() == Some(name));
    if !listed {
        return Err(not_found());
    }
    let key = format!("{}/{name}", job_prefix(uuid));
    if service.documents.is_s3() {
        let signed = service
            .documents
            .presign_get(origin, &key, "application/fhir+ndjson", service.url_ttl)
            .await
            .map_err(|e| FhirError::Internal(format!("cannot sign an export file URL: {e}")))?;
        return Ok(ExportFile::Redirect(signed.url));
    }
    let (file, len) = service
        .documents
        .open(&key)
        .await
        .map_err(|e| FhirError::Internal(format!("cannot read export file: {e}")))?
        .ok_or_else(not_found)?;
    Ok(ExportFile::Local(file, len))
}
