//! The background runner of `$export` jobs.
//!
//! One job at a time per server, so an export never takes more than one database connection
//! (plus a heartbeat now and then) away from interactive requests. A job is claimed with
//! `FOR UPDATE SKIP LOCKED`, so several replicas share the queue; a claimed job's heartbeat is
//! renewed every few seconds, and a job whose heartbeat is older than [`LEASE`] (its server
//! died) is claimed again and run from the start. All types of a job are read from one
//! `REPEATABLE READ` snapshot, whose start is the manifest's `transactionTime`; rows stream
//! from PostgreSQL as JSON text straight into NDJSON files, without being parsed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use super::{ExportService, compartment_params, job_prefix, parse_type_filter};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::ResourceType;
use crate::interactions::instant;
use crate::search::{self, Clause, ClauseKind, Criteria};
use crate::store::Store;

/// A job whose heartbeat is older than this is considered abandoned and runs again.
pub const LEASE: Duration = Duration::from_secs(30);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// Resources per output file; larger types are split into `<Type>-2.ndjson`, … .
pub const FILE_MAX_RESOURCES: u64 = 250_000;
/// How often an idle worker looks for jobs it was not woken for (other replicas, leases).
const IDLE_POLL: Duration = Duration::from_secs(5);

/// A claimed job.
#[derive(Debug)]
struct Job {
    id: Uuid,
    request: String,
    base: String,
    level: String,
    group_id: Option<String>,
    types: Vec<String>,
    since: Option<DateTime<Utc>>,
    type_filters: Vec<String>,
}

/// Starts the worker on the current runtime; it runs until the runtime ends.
pub fn spawn(service: Arc<ExportService>, store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_cleanup: Option<Instant> = None;
        loop {
            match claim(&store).await {
                Ok(Some(job)) => {
                    run(&service, &store, job).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "export worker cannot read the job queue"),
            }
            if last_cleanup.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                if let Err(e) = delete_expired(&service, &store).await {
                    tracing::warn!(error = %e, "export worker cannot delete expired jobs");
                }
                last_cleanup = Some(Instant::now());
            }
            tokio::select! {
                _ = service.wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    })
}

/// Takes the oldest runnable job: accepted, or in progress with an expired lease.
async fn claim(store: &Store) -> FhirResult<Option<Job>> {
    let row = sqlx::query(
        "UPDATE export_job SET status = 'in-progress', heartbeat = now(), progress = 'starting' \
         WHERE id = (SELECT id FROM export_job \
                     WHERE status = 'accepted' OR (status = 'in-progress' AND heartbeat < now() - make_interval(secs => $1)) \
                     ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1) \
         RETURNING id, request, base, level, group_id, types, since, type_filters",
    )
    .bind(LEASE.as_secs_f64())
    .fetch_optional(store.pool())
    .await?;
    Ok(row.map(|r| Job {
        id: r.get(0),
        request: r.get(1),
        base: r.get(2),
        level: r.get(3),
        group_id: r.get(4),
        types: r.get(5),
        since: r.get(6),
        type_filters: r.get(7),
    }))
}

/// Deletes jobs (and files) that ended longer than the retention time ago.
async fn delete_expired(service: &ExportService, store: &Store) -> FhirResult<()> {
    let rows = sqlx::query(
        "DELETE FROM export_job WHERE status IN ('completed', 'failed') AND completed_at < now() - make_interval(secs => $1) RETURNING id",
    )
    .bind(service.retention.as_secs_f64())
    .fetch_all(store.pool())
    .await?;
    for row in rows {
        let id: Uuid = row.get(0);
        let _ = service.documents.delete_prefix(&job_prefix(id)).await;
    }
    Ok(())
}

/// Runs a job to its end and records the outcome (or cleans up after a cancellation).
async fn run(service: &ExportService, store: &Store, job: Job) {
    let prefix = job_prefix(job.id);
    let _ = service.documents.delete_prefix(&prefix).await; // leftovers of an earlier attempt
    let heartbeat = Heartbeat::start(store.clone(), job.id);
    let started = Instant::now();
    let result = export(service, store, &job, &heartbeat).await;
    heartbeat.stop();
    let recorded = match result {
        Ok(Some((manifest, resources))) => {
            tracing::info!(job = %job.id, resources, seconds = started.elapsed().as_secs_f64(), "export completed");
            sqlx::query(
                "UPDATE export_job SET status = 'completed', manifest = $2, progress = NULL, completed_at = now() \
                 WHERE id = $1 AND status = 'in-progress'",
            )
            .bind(job.id)
            .bind(manifest)
            .execute(store.pool())
            .await
        }
        Ok(None) => {
            tracing::info!(job = %job.id, "export cancelled");
            let _ = service.documents.delete_prefix(&prefix).await;
            return;
        }
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "export failed");
            let _ = service.documents.delete_prefix(&prefix).await;
            sqlx::query("UPDATE export_job SET status = 'failed', error = $2, progress = NULL, completed_at = now() WHERE id = $1")
                .bind(job.id)
                .bind(e.to_string())
                .execute(store.pool())
                .await
        }
    };
    match recorded {
        // Cancelled while finishing: the row is gone, so are the files.
        Ok(done) if done.rows_affected() == 0 => {
            let _ = service.documents.delete_prefix(&prefix).await;
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(job = %job.id, error = %e, "cannot record the end of an export job"),
    }
}

/// Renews a job's lease in the background and notices when it was cancelled (row deleted).
struct Heartbeat {
    cancelled: Arc<AtomicBool>,
    exported: Arc<AtomicU64>,
    current: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    fn start(store: Store, id: Uuid) -> Self {
        let cancelled = Arc::new(AtomicBool::new(false));
        let exported = Arc::new(AtomicU64::new(0));
        let current = Arc::new(std::sync::Mutex::new(String::new()));
        let (c, e, cur) = (cancelled.clone(), exported.clone(), current.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                let what = cur.lock().map(|s| s.clone()).unwrap_or_default();
                let progress = format!("in progress: {} resources exported{what}", e.load(Ordering::Relaxed));
                let beat = sqlx::query("UPDATE export_job SET heartbeat = now(), progress = $2 WHERE id = $1 AND status = 'in-progress'")
                    .bind(id)
                    .bind(progress)
                    .execute(store.pool())
                    .await;
                match beat {
                    Ok(done) if done.rows_affected() == 0 => {
                        c.store(true, Ordering::Relaxed);
                        return;
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(job = %id, error = %err, "export heartbeat failed"),
                }
            }
        });
        Heartbeat { cancelled, exported, current, task }
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn set_current(&self, text: String) {
        if let Ok(mut c) = self.current.lock() {
            *c = text;
        }
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Exports every type of the job; `Ok(None)` when the job was cancelled meanwhile.
async fn export(service: &ExportService, store: &Store, job: &Job, heartbeat: &Heartbeat) -> FhirResult<Option<(Value, u64)>> {
    let mut tx = store.pool().begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    // An export of millions of rows legitimately outlasts the interactive statement timeout.
    sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await?;
    let transaction_time: DateTime<Utc> = sqlx::query("SELECT now()").fetch_one(&mut *tx).await?.get(0);

    let members = match (job.level.as_str(), &job.group_id) {
        ("group", Some(group)) => Some(group_members(&mut tx, group, &job.base).await?),
        _ => None,
    };
    let compartment = compartment_params();
    let mut filters: Vec<(ResourceType, Criteria)> = vec![];
    for f in &job.type_filters {
        filters.push(parse_type_filter(f, &job.base)?);
    }

    let mut output = vec![];
    let mut total = 0u64;
    for (n, t) in job.types.iter().enumerate() {
        let rt = ResourceType::parse(t)?;
        heartbeat.set_current(format!(" ({t}, type {} of {})", n + 1, job.types.len()));
        let any_of = if job.level == "system" {
            vec![]
        } else {
            let params = compartment.iter().find(|(c, _)| c == t).map(|(_, p)| p.as_slice()).unwrap_or(&[]);
            membership(&rt, params, members.as_deref(), &job.base)?
        };
        let type_filters: Vec<Criteria> = filters.iter().filter(|(ft, _)| ft == &rt).map(|(_, c)| c.clone()).collect();
        let mut query = search::export_query(&rt, job.since, &any_of, &type_filters);
        let mut rows = query.build().persistent(false).fetch(&mut *tx);
        let mut file: Option<(String, crate::documents::DocumentWriter, u64)> = None;
        let mut part = 0;
        while let Some(row) = rows.try_next().await? {
            // Unsealed rows stream PostgreSQL's jsonb text as is; sealed ones are opened.
            let opened;
            let text: &str = match row.try_get::<Option<&str>, _>("text")? {
                Some(text) => text,
                None => {
                    let id: String = row.try_get("id")?;
                    let content = crate::store::open_row(t, &id, row.try_get("version_id")?, &row)?;
                    opened = content.map(|c| c.to_string()).unwrap_or_default();
                    &opened
                }
            };
            if file.is_none() {
                part += 1;
                let name = format!("{t}-{part}.ndjson");
                let writer = service.documents.create(&format!("{}/{name}", job_prefix(job.id))).await.map_err(io_error)?;
                file = Some((name, writer, 0));
            }
            if let Some((_, writer, count)) = file.as_mut() {
                writer.write(text.as_bytes()).await.map_err(io_error)?;
                writer.write(b"\n").await.map_err(io_error)?;
                *count += 1;
                total += 1;
                if *count % 1024 == 0 {
                    heartbeat.exported.store(total, Ordering::Relaxed);
                    if heartbeat.cancelled() {
                        return Ok(None);
                    }
                }
                if *count >= FILE_MAX_RESOURCES {
                    if let Some((name, writer, count)) = file.take() {
                        writer.finish().await.map_err(io_error)?;
                        output.push(output_entry(job, t, &name, count));
                    }
                }
            }
        }
        if let Some((name, writer, count)) = file.take() {
            writer.finish().await.map_err(io_error)?;
            output.push(output_entry(job, t, &name, count));
        }
        heartbeat.exported.store(total, Ordering::Relaxed);
        if heartbeat.cancelled() {
            return Ok(None);
        }
    }
    tx.commit().await?;
    let manifest = json!({
        "transactionTime": instant(&transaction_time),
        "request": job.request,
        "requiresAccessToken": true,
        "output": output,
        "error": [],
    });
    Ok(Some((manifest, total)))
}

fn io_error(e: std::io::Error) -> FhirError {
    FhirError::Internal(format!("cannot write export file: {e}"))
}

fn output_entry(job: &Job, resource_type: &str, name: &str, count: u64) -> Value {
    json!({
        "type": resource_type,
        "url": format!("{}/$export-file/{}/{name}", job.base, job.id.simple()),
        "count": count,
    })
}

/// The ids of the Patients a Group's active members reference (local references only).
async fn group_members(tx: &mut crate::store::Tx, group: &str, base: &str) -> FhirResult<Vec<String>> {
    let content = crate::store::current_content(tx, "Group", group)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("Group/{group} no longer exists")))?;
    let mut ids: Vec<String> = content
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter_map(|m| m.get("entity")?.get("reference")?.as_str())
        .filter_map(|r| {
            let local = crate::fhir::types::local_reference(r, base);
            local.strip_prefix("Patient/").filter(|id| crate::fhir::types::Id::is_valid(id)).map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Criteria (ORed) for "in the compartment of one of `patients`" (`None`: of any patient) for
/// a type with the given compartment parameters. A type without parameters matches nothing
/// except Patient itself.
fn membership(rt: &ResourceType, params: &[String], patients: Option<&[String]>, base: &str) -> FhirResult<Vec<Criteria>> {
    let mut parts = vec![];
    if rt.as_str() == "Patient" {
        // The patients themselves (all of them at Patient level).
        let ids = match patients {
            Some(ids) => ids.to_vec(),
            None => return Ok(vec![Criteria { resource_type: rt.clone(), clauses: vec![] }]),
        };
        parts.push(Criteria { resource_type: rt.clone(), clauses: vec![Clause { name: "_id".into(), kind: ClauseKind::Id(ids), negate: false }] });
    }
    for param in params {
        let Some(paths) = search::reference_paths(rt, param, base) else {
            tracing::debug!(resource_type = %rt, param, "compartment parameter not supported by the search engine");
            continue;
        };
        let kind = match patients {
            Some(ids) => ClauseKind::Reference {
                paths,
                values: ids.iter().flat_map(|id| [format!("Patient/{id}"), format!("{base}/Patient/{id}")]).collect(),
            },
            None => ClauseKind::ReferencePrefix { paths, prefixes: vec!["Patient/".into(), format!("{base}/Patient/")] },
        };
        parts.push(Criteria { resource_type: rt.clone(), clauses: vec![Clause { name: param.clone(), kind, negate: false }] });
    }
    if parts.is_empty() {
        // Nothing ties this type to a patient: match nothing.
        parts.push(Criteria {
            resource_type: rt.clone(),
            clauses: vec![Clause { name: "_id".into(), kind: ClauseKind::Id(vec![]), negate: false }],
        });
    }
    Ok(parts)
}
