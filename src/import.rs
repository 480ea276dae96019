//! `ironfhir import FILE|DIR…`: loads FHIR data fast, straight into the database.
//!
//! - **transaction / batch Bundles** go through [`bundle::process_recorded`], exactly like
//!   `POST [base]` (urn:uuid references rewritten, a transaction all or nothing), as a system
//!   principal (`system/*.*`).
//! - **NDJSON** (one resource per line) and **collection Bundles** (and a `.json` file holding a
//!   single resource): every resource is checked like an update ([`check_body`]), keeps its id
//!   (one is generated when it has none) and is written with update-as-create semantics (a new id
//!   is version 1, a known one gets the next version), many rows per statement
//!   ([`store::import::write_batch`]) and `--batch-size` resources per database transaction.
//! - **Resumable**: `import_progress` records per file (path, size, mtime) how
//!   far it is imported, in the same transaction as each batch; a re-run continues after the
//!   last committed batch and skips completed files. A Bundle is one unit (a transaction Bundle
//!   records itself inside its own transaction; a batch Bundle, whose entries commit one by one,
//!   is recorded after its last entry, so an interrupted batch Bundle runs again whole).
//! - Invalid resources are reported as `file:line: diagnostics` (never resource content) and
//!   skipped; the exit code is non-zero when any resource failed.
//! - `--parallel` files are imported at once, each by its own task with its own batches.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::auth::Principal;
use crate::config::ImportArgs;
use crate::error::{FhirError, FhirResult, Severity};
use crate::fhir::types::{Id, ResourceType};
use crate::interactions::bundle::{self, EntryOutcome};
use crate::interactions::{check_body, now, stamp};
use crate::store::import::{ImportRow, Progress, progress, record_progress, write_batch};
use crate::store::{Store, Tx};

/// The status of a file left for the second pass.
const DEFERRED: &str = "deferred";

/// Errors reported per file before the rest are only counted.
const MAX_REPORTED_PER_FILE: u64 = 100;

/// An input file: how it is shown, its `import_progress` key, size and format.
#[derive(Debug, Clone)]
pub struct Input {
    path: PathBuf,
    key: String,
    size: u64,
    ndjson: bool,
}

/// Expands directories (their `*.json` and `*.ndjson` files, sorted by name) and keys each file
/// by absolute path, size and modification time.
pub fn inputs(paths: &[PathBuf]) -> Result<Vec<Input>, String> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read directory {}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("json" | "ndjson")))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for path in files {
        let meta = std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let absolute = std::fs::canonicalize(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !seen.insert(absolute.clone()) {
            continue;
        }
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
        let ndjson = matches!(path.extension().and_then(|e| e.to_str()), Some("ndjson" | "jsonl"));
        out.push(Input { key: format!("{}|{}|{mtime}", absolute.display(), meta.len()), size: meta.len(), path, ndjson });
    }
    Ok(out)
}

/// What is shared by the file tasks.
struct Context {
    store: Store,
    /// Where large inline content goes ([`crate::documents::offload`]); `None` keeps it inline.
    documents: Option<(crate::documents::Documents, usize)>,
    principal: Principal,
    base: String,
    batch_size: usize,
    bar: ProgressBar,
    resources: AtomicU64,
    started: Instant,
    /// Set for the second pass: transaction Bundles whose conditional references found nothing
    /// are deferred in the first pass (their targets may be in a later file, as Synthea's
    /// `hospitalInformation*.json` sort after the patients) and fail for good in the second.
    final_pass: std::sync::atomic::AtomicBool,
}

impl Context {
    /// The resource with its large inline content moved to the document store, preceded by the
    /// Binaries that now hold it.
    async fn offload(&self, mut resource: Value) -> FhirResult<Vec<Value>> {
        let Some((documents, threshold)) = &self.documents else { return Ok(vec![resource]) };
        let mut out = crate::documents::offload::offload(&self.store, documents, &mut resource, *threshold).await.map_err(FhirError::BadRequest)?;
        out.push(resource);
        Ok(out)
    }

    /// Counts written resources and consumed bytes on the progress bar.
    fn advance(&self, resources: u64, bytes: u64) {
        let total = self.resources.fetch_add(resources, Ordering::Relaxed) + resources;
        let rate = total as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        self.bar.inc(bytes);
        self.bar.set_message(format!("{total} resources, {rate:.0}/s"));
    }

    /// Prints one problem (file position and diagnostics, never resource content) above the bar.
    fn report(&self, file: &FileReport, at: &str, message: &str) {
        if file.errors <= MAX_REPORTED_PER_FILE {
            self.bar.suspend(|| eprintln!("{}{at}: {message}", file.name));
        }
        if file.errors == MAX_REPORTED_PER_FILE {
            self.bar.suspend(|| eprintln!("{}: further errors are counted but not shown", file.name));
        }
    }
}

/// The outcome of one file, a row of the final table.
#[derive(Debug)]
struct FileReport {
    name: String,
    resources: u64,
    errors: u64,
    status: &'static str,
}

/// Imports `inputs` (from [`inputs`]) and makes the result durable; `Err` (non-zero exit) when a
/// file could not be read or any resource failed.
pub async fn import(store: &Store, args: &ImportArgs, inputs: Vec<Input>, documents: Option<crate::documents::Documents>) -> Result<(), String> {
    let mut result = import_all(store, args, inputs, documents).await;
    if let Err(e) = crate::store::import::flush(store.pool()).await {
        result = Err(format!("cannot make the import durable: {e}"));
    }
    result
}

async fn import_all(store: &Store, args: &ImportArgs, inputs: Vec<Input>, documents: Option<crate::documents::Documents>) -> Result<(), String> {
    let mut starts = Vec::with_capacity(inputs.len());
    for input in &inputs {
        starts.push(progress(store.pool(), &input.key).await.map_err(|e| e.to_string())?);
    }
    let remaining: u64 = inputs
        .iter()
        .zip(&starts)
        .filter(|(_, p)| !p.completed)
        .map(|(i, p)| if i.ndjson { i.size.saturating_sub(p.bytes_done as u64) } else { i.size })
        .sum();
    let bar = ProgressBar::new(remaining);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {msg} (ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let ctx = Arc::new(Context {
        store: store.clone(),
        documents: documents.filter(|_| args.offload_over > 0).map(|d| (d, args.offload_over)),
        principal: Principal::internal("import", "system/*.*"),
        base: args.base_url.trim_end_matches('/').to_owned(),
        batch_size: args.batch_size as usize,
        bar,
        resources: AtomicU64::new(0),
        started: Instant::now(),
        final_pass: std::sync::atomic::AtomicBool::new(false),
    });
    let retry: Vec<(Input, Progress)> = inputs.iter().cloned().zip(starts.iter().copied()).collect();
    let tasks = inputs.into_iter().zip(starts).map(|(input, start)| {
        let ctx = ctx.clone();
        async move {
            let name = input.path.display().to_string();
            match tokio::spawn(import_file(ctx, input, start)).await {
                Ok(report) => report,
                Err(e) => FileReport { name, resources: 0, errors: 1, status: if e.is_panic() { "panicked" } else { "cancelled" } },
            }
        }
    });
    let mut reports: Vec<FileReport> = futures::stream::iter(tasks).buffered(args.parallel as usize).collect().await;
    // Second pass, one file at a time: the deferred Bundles, now that every other file is in.
    ctx.final_pass.store(true, Ordering::Relaxed);
    for (i, (input, start)) in retry.into_iter().enumerate() {
        if reports[i].status == DEFERRED {
            reports[i] = import_file(ctx.clone(), input, start).await;
        }
    }
    ctx.bar.finish_and_clear();
    print_table(&reports, ctx.started.elapsed());
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    let resources: u64 = reports.iter().map(|r| r.resources).sum();
    crate::audit::record_operator_import(store, "import", resources, errors).await?;
    if errors > 0 {
        return Err(format!("{errors} resource(s) or file(s) could not be imported (reported above)"));
    }
    Ok(())
}

fn print_table(reports: &[FileReport], elapsed: Duration) {
    let width = reports.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    println!("{:<width$}  {:>10}  {:>7}  status", "file", "resources", "errors");
    for r in reports {
        println!("{:<width$}  {:>10}  {:>7}  {}", r.name, r.resources, r.errors, r.status);
    }
    let (resources, errors) = reports.iter().fold((0, 0), |(a, b), r| (a + r.resources, b + r.errors));
    println!("{:<width$}  {:>10}  {:>7}", "total", resources, errors);
    let secs = elapsed.as_secs_f64();
    println!("{resources} resources in {secs:.1} s ({:.0} resources/s)", resources as f64 / secs.max(0.001));
}

async fn import_file(ctx: Arc<Context>, input: Input, start: Progress) -> FileReport {
    let mut report = FileReport { name: input.path.display().to_string(), resources: 0, errors: 0, status: "imported" };
    if start.completed {
        report.status = "already imported";
        return report;
    }
    let result = if input.ndjson {
        import_ndjson(&ctx, &input, start, &mut report).await
    } else {
        import_json(&ctx, &input, &mut report).await
    };
    if let Err(message) = result {
        report.errors += 1;
        report.status = "failed";
        ctx.report(&report, "", &message);
    } else if report.errors > 0 {
        report.status = "imported with errors";
    }
    report
}

/// Resources of one database transaction: distinct `(type, id)`, one timestamp.
struct Batch {
    rows: Vec<ImportRow>,
    keys: HashSet<(String, String)>,
    last_updated: DateTime<Utc>,
}

impl Batch {
    fn new() -> Self {
        Batch { rows: Vec::new(), keys: HashSet::new(), last_updated: now() }
    }

    fn contains(&self, row: &ImportRow) -> bool {
        self.keys.contains(&(row.resource_type.clone(), row.id.clone()))
    }

    fn push(&mut self, row: ImportRow) {
        self.keys.insert((row.resource_type.clone(), row.id.clone()));
        self.rows.push(row);
    }
}

/// Checks one resource and stamps it with its id (kept, or generated), version 1 and `time`.
fn prepare(mut resource: Value, time: &DateTime<Utc>, base: &str) -> FhirResult<ImportRow> {
    let rt = match resource.get("resourceType") {
        Some(Value::String(t)) => ResourceType::parse(t).map_err(|e| FhirError::BadRequest(e.to_string()))?,
        _ => return Err(FhirError::BadRequest("not a FHIR resource (no resourceType)".into())),
    };
    if rt.as_str() == "AuditEvent" {
        // Stored beside the hash chain, `audit verify` could not vouch for it (and reports it).
        return Err(FhirError::BadRequest(
            "AuditEvents are not imported beside the audit trail: submit them with POST [base]/AuditEvent, which appends them to the hash chain".into(),
        ));
    }
    let id = match resource.get("id") {
        None => Id::generate(),
        Some(Value::String(s)) => Id::parse(s)?,
        Some(_) => return Err(FhirError::BadRequest("id must be a string".into())),
    };
    check_body(&rt, &resource, None)?;
    stamp(&mut resource, id.as_str(), 1, time);
    let content = serde_json::to_string(&resource).map_err(|e| FhirError::Internal(e.to_string()))?;
    let index = crate::index::rows(rt.as_str(), id.as_str(), &resource, base);
    Ok(ImportRow { resource_type: rt.to_string(), id: id.to_string(), content, method: "PUT", index })
}

/// The diagnostics of an error, without resource content.
fn describe(error: &FhirError) -> String {
    match error {
        FhirError::Invalid(issues) => issues
            .iter()
            .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
            .map(|i| match i.expression.first() {
                Some(at) => format!("{} ({at})", i.diagnostics),
                None => i.diagnostics.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// Writes a batch and the file's progress in one transaction (retried on serialization
/// failures and deadlocks with concurrent files).
async fn commit(ctx: &Context, key: &str, batches: &[&Batch], progress: Progress) -> FhirResult<u64> {
    ctx.store
        .with_transaction(move |mut tx| {
            Box::pin(async move {
                let result = write_all(&mut tx, key, batches, progress).await;
                (tx, result)
            })
        })
        .await
}

async fn write_all(tx: &mut Tx, key: &str, batches: &[&Batch], progress: Progress) -> FhirResult<u64> {
    let mut written = 0;
    for batch in batches {
        written += write_batch(tx, &batch.rows, batch.last_updated).await?;
    }
    record_progress(tx, key, progress).await?;
    Ok(written)
}

async fn import_ndjson(ctx: &Context, input: &Input, start: Progress, report: &mut FileReport) -> Result<(), String> {
    let io = |e: std::io::Error| format!("cannot read the file: {e}");
    let mut file = std::fs::File::open(&input.path).map_err(io)?;
    file.seek(SeekFrom::Start(start.bytes_done as u64)).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut done = Progress { completed: false, ..start };
    let mut reported_bytes = start.bytes_done;
    let mut batch = Batch::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            break;
        }
        let number = done.lines_done + 1;
        let text = line.trim_ascii();
        if !text.is_empty() {
            let resources = match serde_json::from_slice::<Value>(text) {
                Ok(resource) => ctx.offload(resource).await,
                Err(e) => Err(FhirError::BadRequest(format!("not valid JSON: {e}"))),
            };
            let rows = resources.and_then(|resources| resources.into_iter().map(|r| prepare(r, &batch.last_updated, &ctx.base)).collect::<FhirResult<Vec<_>>>());
            match rows {
                Ok(rows) => {
                    for row in rows {
                        if batch.contains(&row) {
                            // The same resource twice: the earlier version commits first (the
                            // row keeps the timestamp it was stamped with).
                            let time = batch.last_updated;
                            flush(ctx, input, &mut batch, done, &mut reported_bytes, report).await?;
                            batch.last_updated = time;
                        }
                        batch.push(row);
                    }
                }
                Err(e) => {
                    report.errors += 1;
                    ctx.report(report, &format!(":{number}"), &describe(&e));
                }
            }
        }
        done.bytes_done += n as i64;
        done.lines_done += 1;
        if batch.rows.len() >= ctx.batch_size {
            flush(ctx, input, &mut batch, done, &mut reported_bytes, report).await?;
        }
    }
    done.completed = true;
    flush(ctx, input, &mut batch, done, &mut reported_bytes, report).await
}

/// Commits the batch with the progress `done` and starts a new batch.
async fn flush(
    ctx: &Context,
    input: &Input,
    batch: &mut Batch,
    done: Progress,
    reported_bytes: &mut i64,
    report: &mut FileReport,
) -> Result<(), String> {
    let written = commit(ctx, &input.key, &[batch], done).await.map_err(|e| format!("database write failed: {}", describe(&e)))?;
    report.resources += written;
    ctx.advance(written, (done.bytes_done - *reported_bytes).max(0) as u64);
    *reported_bytes = done.bytes_done;
    *batch = Batch::new();
    Ok(())
}

/// A `.json` file: a transaction/batch Bundle (through the Bundle processing of the API), a
/// collection Bundle or a single resource (written like NDJSON, as one unit).
async fn import_json(ctx: &Context, input: &Input, report: &mut FileReport) -> Result<(), String> {
    let bytes = tokio::fs::read(&input.path).await.map_err(|e| format!("cannot read the file: {e}"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let whole = Progress { bytes_done: input.size as i64, lines_done: 0, completed: true };
    let is_bundle = value.get("resourceType").and_then(Value::as_str) == Some("Bundle");
    let kind = value.get("type").and_then(Value::as_str).map(str::to_owned);
    if is_bundle && kind.as_deref() == Some("transaction") {
        if let Some(entries) = plain_transaction(&value, &ctx.base) {
            return import_plain_transaction(ctx, input, entries, report).await;
        }
    }
    match kind.as_deref() {
        Some(kind @ ("transaction" | "batch")) if is_bundle => {
            let entries = value.get("entry").and_then(Value::as_array).map_or(0, Vec::len);
            let record = Progress { lines_done: entries as i64, ..whole };
            let transaction = kind == "transaction";
            let result = bundle::process_recorded(
                &ctx.store,
                &ctx.principal,
                value,
                &ctx.base,
                usize::MAX,
                // A PATCH entry of an imported Bundle is bounded like the server's requests.
                crate::config::DEFAULT_MAX_BODY_BYTES,
                transaction.then_some((input.key.as_str(), record)),
            )
            .await;
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(FhirError::PreconditionFailed(m)) if m.contains("conditional reference") && !ctx.final_pass.load(Ordering::Relaxed) => {
                    report.status = DEFERRED;
                    return Ok(());
                }
                Err(e) => {
                    report.errors += 1;
                    ctx.report(report, "", &format!("{kind} Bundle not imported: {}", describe(&e)));
                    ctx.advance(0, input.size);
                    return Ok(());
                }
            };
            for (index, entry) in outcome.entries.iter().enumerate() {
                match entry {
                    Ok(EntryOutcome::Write(_)) | Ok(EntryOutcome::Deleted(_)) => report.resources += 1,
                    Ok(_) => {}
                    Err(e) => {
                        report.errors += 1;
                        ctx.report(report, &format!(": Bundle.entry[{index}]"), &describe(e));
                    }
                }
            }
            if !transaction {
                // A batch commits entry by entry; it is recorded once all entries ran.
                ctx.store
                    .with_transaction(move |mut tx| {
                        Box::pin(async move {
                            let result = record_progress(&mut tx, &input.key, record).await;
                            (tx, result)
                        })
                    })
                    .await
                    .map_err(|e| format!("database write failed: {}", describe(&e)))?;
            }
            ctx.advance(report.resources, input.size);
            Ok(())
        }
        Some("collection") if is_bundle => {
            let Value::Object(mut bundle) = value else { unreachable!("a Bundle is an object") };
            let entries = match bundle.remove("entry") {
                Some(Value::Array(entries)) => entries,
                None => vec![],
                Some(_) => return Err("Bundle.entry must be an array".into()),
            };
            let count = entries.len();
            let resources = entries.into_iter().enumerate().map(|(i, mut entry)| {
                (format!(": Bundle.entry[{i}]"), entry.get_mut("resource").map(Value::take))
            });
            write_unit(ctx, input, resources, Progress { lines_done: count as i64, ..whole }, report).await
        }
        _ if is_bundle => Err("only Bundles of type transaction, batch or collection are imported".into()),
        _ => write_unit(ctx, input, std::iter::once((String::new(), Some(value))), Progress { lines_done: 1, ..whole }, report).await,
    }
}

/// One entry of a transaction Bundle that only creates (POST) and updates by id (PUT).
struct PlainEntry {
    full_url: Option<String>,
    post: bool,
    /// The id of a PUT; a POST gets a new one.
    id: Option<String>,
    resource: Value,
}

/// The entries of a transaction Bundle that needs none of the transaction machinery: every
/// entry is a POST without `ifNoneExist` or a PUT of `Type/id` without preconditions, no
/// resource is written twice, and no reference is conditional (`Type?query`). Such a Bundle is
/// written like NDJSON — ids assigned and `urn:` / fullUrl references rewritten in memory,
/// then one multi-row statement — with exactly the outcome `POST [base]` would have. `None`
/// sends the Bundle through the full transaction processing instead.
fn plain_transaction(bundle: &Value, base: &str) -> Option<Vec<PlainEntry>> {
    let mut out = vec![];
    let mut seen = HashSet::new();
    for entry in bundle.get("entry")?.as_array()? {
        let request = entry.get("request")?.as_object()?;
        if request.keys().any(|k| !matches!(k.as_str(), "method" | "url")) {
            return None; // ifNoneExist, ifMatch, ifNoneMatch, ifModifiedSince
        }
        let url = request.get("url")?.as_str()?;
        let url = crate::fhir::types::local_reference(url, base);
        let resource = entry.get("resource")?;
        let rt = resource.get("resourceType")?.as_str()?;
        let (post, id) = match request.get("method")?.as_str()? {
            "POST" if url == rt => (true, None),
            "PUT" => {
                let (t, id) = url.split_once('/')?;
                let body_id = resource.get("id").and_then(Value::as_str);
                if t != rt || !Id::is_valid(id) || body_id.is_some_and(|b| b != id) || !seen.insert((t.to_owned(), id.to_owned())) {
                    return None; // the full processing reports what is wrong
                }
                (false, Some(id.to_owned()))
            }
            _ => return None,
        };
        if has_conditional_reference(resource) {
            return None;
        }
        let full_url = entry.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
        out.push(PlainEntry { full_url, post, id, resource: resource.clone() });
    }
    Some(out)
}

fn has_conditional_reference(value: &Value) -> bool {
    match value {
        Value::Object(o) => o.iter().any(|(k, v)| match v {
            Value::String(s) if k == "reference" => s.contains('?'),
            other => has_conditional_reference(other),
        }),
        Value::Array(items) => items.iter().any(has_conditional_reference),
        _ => false,
    }
}

/// Replaces every `reference` that names an entry's fullUrl with that entry's `Type/id`.
fn rewrite_references(value: &mut Value, links: &std::collections::HashMap<String, String>) {
    match value {
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                match v {
                    Value::String(s) if k == "reference" => {
                        if let Some(target) = links.get(s.as_str()) {
                            *s = target.clone();
                        }
                    }
                    other => rewrite_references(other, links),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_references(v, links)),
        _ => {}
    }
}

/// Writes a plain transaction Bundle (see [`plain_transaction`]) and its progress in one
/// database transaction; an invalid entry fails the whole Bundle, as a transaction does.
async fn import_plain_transaction(ctx: &Context, input: &Input, mut entries: Vec<PlainEntry>, report: &mut FileReport) -> Result<(), String> {
    let mut links = std::collections::HashMap::new();
    for e in entries.iter_mut() {
        let rt = e.resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
        let id = e.id.get_or_insert_with(|| Id::generate().to_string()).clone();
        if let Some(url) = &e.full_url {
            links.insert(url.clone(), format!("{rt}/{id}"));
        }
    }
    let mut batch = Batch::new();
    for (index, e) in entries.into_iter().enumerate() {
        let mut resource = e.resource;
        rewrite_references(&mut resource, &links);
        if let (Some(obj), Some(id)) = (resource.as_object_mut(), &e.id) {
            // A POST's id is the server's; a PUT's body must carry the URL's id anyway.
            obj.insert("id".into(), Value::String(id.clone()));
        }
        match prepare(resource, &batch.last_updated, &ctx.base) {
            Ok(mut row) => {
                if e.post {
                    row.method = "POST";
                }
                batch.push(row);
            }
            Err(err) => {
                report.errors += 1;
                ctx.report(report, &format!(": Bundle.entry[{index}]"), &format!("transaction Bundle not imported: {}", describe(&err)));
                ctx.advance(0, input.size);
                return Ok(());
            }
        }
    }
    let count = batch.rows.len() as i64;
    let done = Progress { bytes_done: input.size as i64, lines_done: count, completed: true };
    let written = commit(ctx, &input.key, &[&batch], done).await.map_err(|e| format!("database write failed: {}", describe(&e)))?;
    report.resources += written;
    ctx.advance(written, input.size);
    Ok(())
}

/// Writes resources as one unit: all batches and the completed progress in one transaction.
async fn write_unit(
    ctx: &Context,
    input: &Input,
    resources: impl Iterator<Item = (String, Option<Value>)>,
    done: Progress,
    report: &mut FileReport,
) -> Result<(), String> {
    let mut batches = vec![Batch::new()];
    for (at, resource) in resources {
        let time = batches.last().map(|b| b.last_updated).unwrap_or_else(now);
        let rows = match resource {
            Some(resource) => match ctx.offload(resource).await {
                Ok(resources) => resources.into_iter().map(|r| prepare(r, &time, &ctx.base)).collect::<FhirResult<Vec<_>>>(),
                Err(e) => Err(e),
            },
            None => Err(FhirError::BadRequest("the entry has no resource".into())),
        };
        match rows {
            Ok(rows) => {
                for row in rows {
                    let Some(last) = batches.last_mut() else { continue };
                    if last.contains(&row) || last.rows.len() >= ctx.batch_size {
                        let mut next = Batch::new();
                        next.last_updated = time;
                        next.push(row);
                        batches.push(next);
                    } else {
                        last.push(row);
                    }
                }
            }
            Err(e) => {
                report.errors += 1;
                ctx.report(report, &at, &describe(&e));
            }
        }
    }
    let refs: Vec<&Batch> = batches.iter().collect();
    let written = commit(ctx, &input.key, &refs, done).await.map_err(|e| format!("database write failed: {}", describe(&e)))?;
    report.resources += written;
    ctx.advance(written, input.size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_without_an_id_gets_one_and_keeps_a_client_id_otherwise() {
        let time = now();
        let row = prepare(serde_json::json!({"resourceType": "Patient", "id": "p-1"}), &time, "http://x/fhir").unwrap();
        assert_eq!((row.resource_type.as_str(), row.id.as_str()), ("Patient", "p-1"));
        let row = prepare(serde_json::json!({"resourceType": "Patient"}), &time, "http://x/fhir").unwrap();
        assert!(Id::is_valid(&row.id));
        assert!(row.content.contains(&row.id));
    }

    #[test]
    fn audit_events_are_not_imported_beside_the_chain() {
        let event = serde_json::json!({"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2026-01-01T00:00:00Z",
            "agent": [{"requestor": true}], "source": {"observer": {"display": "x"}}});
        let err = prepare(event, &now(), "http://x/fhir").unwrap_err();
        assert!(describe(&err).contains("POST [base]/AuditEvent"), "{}", describe(&err));
    }

    #[test]
    fn an_invalid_resource_is_described_without_its_content() {
        let err = prepare(serde_json::json!({"resourceType": "Patient", "birthDate": "secret-value"}), &now(), "http://x/fhir").unwrap_err();
        let text = describe(&err);
        assert!(!text.is_empty());
        assert!(!text.contains("secret-value"), "{text}");
    }

    #[test]
    fn directories_expand_to_their_json_and_ndjson_files_in_name_order() {
        let dir = std::env::temp_dir().join(format!("ironfhir-import-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["b.ndjson", "a.json", "c.txt"] {
            std::fs::write(dir.join(name), "{}").unwrap();
        }
        let found = inputs(std::slice::from_ref(&dir)).unwrap();
        let names: Vec<_> = found.iter().map(|i| i.path.file_name().unwrap().to_str().unwrap().to_owned()).collect();
        assert_eq!(names, ["a.json", "b.ndjson"]);
        assert!(found[1].ndjson && !found[0].ndjson);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
