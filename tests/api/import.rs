//! `ironfhir import`: the real binary loading NDJSON and Bundles into a fresh database —
//! reference rewriting, reporting of invalid lines, idempotent re-runs and resuming after a kill.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};

use crate::helpers::{DatabaseGuard, fresh_database};

const BIN: &str = env!("CARGO_BIN_EXE_ironfhir");

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ironfhir-import-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn import_command(url: &str, data_dir: &Path, args: &[&Path], extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("import").arg("--data-dir").arg(data_dir).args(extra).args(args).env("DATABASE_URL", url);
    cmd
}

/// Runs an import to the end and returns its output.
fn import(url: &str, data_dir: &Path, args: &[&Path], extra: &[&str]) -> Output {
    import_command(url, data_dir, args, extra).stdin(Stdio::null()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One synthetic patient per line, with client ids `prefix-N`.
fn patients_ndjson(prefix: &str, count: usize) -> String {
    (1..=count)
        .map(|i| {
            json!({"resourceType": "Patient", "id": format!("{prefix}-{i}"), "active": true,
                   "name": [{"family": "Testperson", "given": [format!("Synth{i}")]}], "gender": "unknown"})
            .to_string()
                + "\n"
        })
        .collect()
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

async fn scalar(db: &mut PgConnection, sql: &'static str) -> i64 {
    sqlx::query(sql).fetch_one(db).await.unwrap().get::<i64, _>(0)
}

/// (current resources, history rows, highest version).
async fn counts(db: &mut PgConnection) -> (i64, i64, i64) {
    (
        scalar(db, "SELECT count(*) FROM resource").await,
        scalar(db, "SELECT count(*) FROM resource_history").await,
        scalar(db, "SELECT coalesce(max(version_id), 0) FROM resource").await,
    )
}

/// The complete stored resource: its sealed elements opened with the keys `import` created in
/// `data_dir` (the first call opens them).
async fn content(db: &mut PgConnection, rt: &str, id: &str, url: &str, data_dir: &Path) -> Value {
    if ironfhir::crypto::keyring().is_err() {
        let store = ironfhir::store::Store::connect(url, 1, std::time::Duration::from_secs(10)).await.unwrap();
        ironfhir::crypto::keys::open(&store, &crate::helpers::config(url, data_dir)).await.unwrap();
    }
    let row = sqlx::query("SELECT version_id, content, sealed, key_id FROM resource WHERE resource_type = $1 AND id = $2")
        .bind(rt)
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap();
    ironfhir::store::open_row(rt, id, row.get("version_id"), &row).unwrap().unwrap()
}

fn transaction_bundle() -> Value {
    let patient = "urn:uuid:7f3c0a4e-2b1d-4c55-9d1e-0a6f2f8e1b01";
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": patient,
             "resource": {"resourceType": "Patient", "name": [{"family": "Bundleperson"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:7f3c0a4e-2b1d-4c55-9d1e-0a6f2f8e1b02",
             "resource": {"resourceType": "Observation", "id": "ignored", "status": "final",
                          "code": {"text": "synthetic measurement"}, "subject": {"reference": patient}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    })
}

#[tokio::test]
async fn import_loads_ndjson_files_and_a_transaction_bundle_whose_urn_uuid_references_are_rewritten() {
    let (url, name) = fresh_database().await;
    let _guard = DatabaseGuard(name);
    let dir = temp_dir("load");
    std::fs::write(dir.join("patients.ndjson"), patients_ndjson("imp", 30)).unwrap();
    // A resource without an id gets one; a client id is kept.
    std::fs::write(dir.join("orgs.ndjson"), "{\"resourceType\":\"Organization\",\"name\":\"Synthetic Clinic\"}\n\n").unwrap();
    std::fs::write(dir.join("tx.json"), transaction_bundle().to_string()).unwrap();
    let out = import(&url, &dir, &[&dir], &[]);
    assert!(out.status.success(), "stdout {} stderr {}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("patients.ndjson") && stdout.contains("tx.json"), "per-file table: {stdout}");
    let mut db = connect(&url).await;
    assert_eq!(counts(&mut db).await, (33, 33, 1));
    // Loaded into an empty database, the index is current: `serve` will not rebuild it.
    let stale: Option<bool> = sqlx::query_scalar("SELECT definitions_hash IS NULL OR building_hash IS NOT NULL FROM search_index_state")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stale, Some(false));
    // Given names are sealed: imported patients get blind index rows, never the name itself.
    let indexed: i64 = sqlx::query_scalar("SELECT count(*) FROM search_blind WHERE resource_type = 'Patient' AND id = 'imp-7' AND param = 'given'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(indexed, "synth7".len() as i64 + 1, "imported resources are indexed");
    let clear: i64 = sqlx::query_scalar("SELECT count(*) FROM search_string WHERE resource_type = 'Patient' AND normalized LIKE 'synth%'").fetch_one(&mut db).await.unwrap();
    assert_eq!(clear, 0, "no sealed value in the clear index");
    let p = content(&mut db, "Patient", "imp-7", &url, &dir).await;
    assert_eq!(p["meta"]["versionId"], "1");
    assert_eq!(p["name"][0]["given"][0], "Synth7");
    // The Observation of the transaction points at the Patient it created.
    let obs = sqlx::query("SELECT content FROM resource WHERE resource_type = 'Observation'").fetch_one(&mut db).await.unwrap();
    let obs: Value = obs.get(0);
    let reference = obs["subject"]["reference"].as_str().unwrap().to_owned();
    let patient_id = reference.strip_prefix("Patient/").expect("rewritten to Patient/<id>");
    assert_eq!(content(&mut db, "Patient", patient_id, &url, &dir).await["name"][0]["family"], "Bundleperson");
    assert_ne!(obs["id"], "ignored", "POST in a transaction assigns the id");
    let done: i64 = sqlx::query("SELECT count(*) FROM import_progress WHERE completed").fetch_one(&mut db).await.unwrap().get(0);
    assert_eq!(done, 3);
    // The import is in the audit trail: one Import event counting what it wrote.
    let events: Vec<String> = sqlx::query_scalar("SELECT event_text FROM audit_log WHERE event_text LIKE '%\"110107\"%'")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains("resources written, 0 failed"), "{}", events[0]);
}

#[tokio::test]
async fn an_invalid_line_is_reported_with_file_and_line_without_its_content_and_skipped_while_the_rest_is_imported() {
    let (url, name) = fresh_database().await;
    let _guard = DatabaseGuard(name);
    let dir = temp_dir("invalid");
    let file = dir.join("mixed.ndjson");
    let lines = [
        json!({"resourceType": "Patient", "id": "ok-1"}).to_string(),
        json!({"resourceType": "Patient", "id": "bad-1", "birthDate": "secret-not-a-date"}).to_string(),
        "{ this is not json".to_owned(),
        json!({"resourceType": "Patient", "id": "ok-2", "gender": "female"}).to_string(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = import(&url, &dir, &[&file], &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a failed resource makes the exit code non-zero");
    assert!(stderr.contains("mixed.ndjson:2:"), "line 2 reported: {stderr}");
    assert!(stderr.contains("mixed.ndjson:3:"), "line 3 reported: {stderr}");
    assert!(!stderr.contains("mixed.ndjson:1:") && !stderr.contains("mixed.ndjson:4:"), "{stderr}");
    assert!(!stderr.contains("secret-not-a-date") && !text(&out.stdout).contains("secret-not-a-date"), "no content in output");
    let stdout = text(&out.stdout);
    let row = stdout.lines().find(|l| l.contains("mixed.ndjson")).expect("a table row for the file");
    let numbers: Vec<&str> = row.split_whitespace().skip(1).take(2).collect();
    assert_eq!(numbers, ["2", "2"], "resources and errors of the file: {row}");
    let mut db = connect(&url).await;
    assert_eq!(counts(&mut db).await, (2, 2, 1));
    assert_eq!(content(&mut db, "Patient", "ok-2", &url, &dir).await["gender"], "female");
}

#[tokio::test]
async fn running_the_same_import_again_writes_nothing_new() {
    let (url, name) = fresh_database().await;
    let _guard = DatabaseGuard(name);
    let dir = temp_dir("rerun");
    let ndjson = dir.join("patients.ndjson");
    let bundle = dir.join("tx.json");
    std::fs::write(&ndjson, patients_ndjson("again", 25)).unwrap();
    std::fs::write(&bundle, transaction_bundle().to_string()).unwrap();
    let first = import(&url, &dir, &[&ndjson, &bundle], &["--batch-size", "10"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let mut db = connect(&url).await;
    let before = counts(&mut db).await;
    assert_eq!(before, (27, 27, 1));
    let second = import(&url, &dir, &[&ndjson, &bundle], &["--batch-size", "10"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(text(&second.stdout).contains("already imported"), "{}", text(&second.stdout));
    assert_eq!(counts(&mut db).await, before, "no new resources and no new versions");
}

#[tokio::test]
async fn an_import_killed_midway_resumes_after_the_last_committed_batch_without_duplicates() {
    let (url, name) = fresh_database().await;
    let _guard = DatabaseGuard(name);
    let dir = temp_dir("resume");
    let file = dir.join("many.ndjson");
    let total = 20_000;
    std::fs::write(&file, patients_ndjson("many", total)).unwrap();
    let mut child = import_command(&url, &dir, &[&file], &["--batch-size", "50"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut db = connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let started = sqlx::query("SELECT bytes_done FROM import_progress WHERE bytes_done > 0").fetch_optional(&mut db).await.unwrap();
        if started.is_some() {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the import ended before any progress was seen");
        assert!(Instant::now() < deadline, "no import progress recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let row = sqlx::query("SELECT lines_done, completed FROM import_progress").fetch_one(&mut db).await.unwrap();
    let (lines_done, completed): (i64, bool) = (row.get(0), row.get(1));
    assert!(!completed, "the kill interrupted the import");
    // What is committed is exactly what the progress says.
    assert_eq!(counts(&mut db).await, (lines_done, lines_done, 1));
    assert!(lines_done < total as i64);
    let out = import(&url, &dir, &[&file], &["--batch-size", "50"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let row = stdout.lines().find(|l| l.contains("many.ndjson")).expect("a table row for the file");
    assert_eq!(row.split_whitespace().nth(1), Some((total as i64 - lines_done).to_string().as_str()), "only the rest: {row}");
    assert_eq!(counts(&mut db).await, (total as i64, total as i64, 1), "every line once, one version each");
    let distinct = scalar(&mut db, "SELECT count(DISTINCT id) FROM resource_history").await;
    assert_eq!(distinct, total as i64);
}

#[tokio::test]
async fn transaction_bundles_import_all_or_nothing_on_the_fast_path_and_through_full_processing() {
    let (url, name) = fresh_database().await;
    let _guard = DatabaseGuard(name);
    let dir = temp_dir("tx-paths");
    // Plain (POST/PUT only): written in one statement; POSTs are recorded as POST in history.
    let mut plain = transaction_bundle();
    plain["entry"].as_array_mut().unwrap().push(json!({
        "fullUrl": "Organization/org-plain",
        "resource": {"resourceType": "Organization", "id": "org-plain", "name": "Synthetic Clinic"},
        "request": {"method": "PUT", "url": "Organization/org-plain"}}));
    std::fs::write(dir.join("a-plain.json"), plain.to_string()).unwrap();
    // Needs the full machinery: a conditional create and a conditional reference to it.
    let conditional = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b7e1b5c-1111-4c55-9d1e-0a6f2f8e1b01",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:example", "value": "cond-1"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:example|cond-1"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "synthetic"},
                      "subject": {"reference": "urn:uuid:0b7e1b5c-1111-4c55-9d1e-0a6f2f8e1b01"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    std::fs::write(dir.join("b-conditional.json"), conditional.to_string()).unwrap();
    // Plain but with one invalid entry: nothing of it may be written.
    let mut broken = transaction_bundle();
    broken["entry"][1]["resource"]["status"] = json!("not-a-status");
    std::fs::write(dir.join("c-broken.json"), broken.to_string()).unwrap();

    let out = import(&url, &dir, &[&dir], &["--parallel", "1"]);
    assert!(!out.status.success(), "the broken Bundle makes the exit code non-zero");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("c-broken.json") && stderr.contains("Bundle.entry[1]"), "{stderr}");
    let mut db = connect(&url).await;
    // a-plain: Patient + Observation + Organization; b-conditional: Patient + Observation.
    assert_eq!(counts(&mut db).await, (5, 5, 1));
    let methods: Vec<(String, String)> = sqlx::query("SELECT resource_type, method FROM resource_history ORDER BY resource_type, method")
        .fetch_all(&mut db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(methods.contains(&("Organization".into(), "PUT".into())) && methods.contains(&("Patient".into(), "POST".into())), "{methods:?}");
    let obs = sqlx::query("SELECT content FROM resource WHERE resource_type = 'Observation' AND content -> 'code' ->> 'text' = 'synthetic'")
        .fetch_one(&mut db)
        .await
        .unwrap()
        .get::<Value, _>(0);
    let patient_id = obs["subject"]["reference"].as_str().unwrap().strip_prefix("Patient/").unwrap().to_owned();
    assert_eq!(content(&mut db, "Patient", &patient_id, &url, &dir).await["identifier"][0]["value"], "cond-1");
    // Re-running writes nothing again (the broken file is retried and fails again).
    let again = import(&url, &dir, &[&dir], &["--parallel", "1"]);
    assert!(!again.status.success());
    assert_eq!(counts(&mut db).await, (5, 5, 1));
}

#[tokio::test]
async fn a_bundle_whose_conditional_reference_targets_a_later_file_is_imported_in_a_second_pass() {
    // Synthea writes patients' Bundles with `Organization?identifier=…` references and the
    // organisations in hospitalInformation*.json, which sorts after the patients.
    let (url, name) = fresh_database().await;
    let _guard = DatabaseGuard(name);
    let dir = temp_dir("second-pass");
    let patient = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5a1d0c1e-0000-4c55-9d1e-0a6f2f8e1b01",
         "resource": {"resourceType": "Patient", "name": [{"family": "Secondpass"}],
                      "managingOrganization": {"reference": "Organization?identifier=urn:example:org|hosp-1"}},
         "request": {"method": "POST", "url": "Patient"}}]});
    let hospital = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Organization", "identifier": [{"system": "urn:example:org", "value": "hosp-1"}], "name": "Synthetic Hospital"},
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:example:org|hosp-1"}}]});
    std::fs::write(dir.join("Aaron_Patient.json"), patient.to_string()).unwrap();
    std::fs::write(dir.join("hospitalInformation1.json"), hospital.to_string()).unwrap();
    let out = import(&url, &dir, &[&dir], &["--parallel", "1"]);
    assert!(out.status.success(), "stdout {} stderr {}", text(&out.stdout), text(&out.stderr));
    let mut db = connect(&url).await;
    let p = sqlx::query("SELECT content FROM resource WHERE resource_type = 'Patient'").fetch_one(&mut db).await.unwrap().get::<Value, _>(0);
    let org = p["managingOrganization"]["reference"].as_str().unwrap().strip_prefix("Organization/").unwrap().to_owned();
    assert_eq!(content(&mut db, "Organization", &org, &url, &dir).await["name"], "Synthetic Hospital");

    // A reference that nothing satisfies still fails, after the second pass.
    let (url, name) = fresh_database().await;
    let _guard2 = DatabaseGuard(name);
    let lonely = temp_dir("second-pass-fail");
    std::fs::write(lonely.join("p.json"), patient.to_string()).unwrap();
    let out = import(&url, &lonely, &[&lonely], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("conditional reference"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn large_inline_content_is_moved_to_the_document_store_and_small_content_stays_inline() {
    let (url, name) = fresh_database().await;
    let _db = DatabaseGuard(name);
    let dir = temp_dir("offload");
    let documents = dir.join("documents");
    let big: Vec<u8> = (0..3000u32).flat_map(|i| i.to_le_bytes()).collect(); // 12,000 bytes
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    let lines = [
        json!({"resourceType": "Binary", "id": "big-scan", "contentType": "application/pdf", "data": b64(&big)}),
        json!({"resourceType": "Binary", "id": "small-note", "contentType": "text/plain", "data": b64(b"synthetic note")}),
        json!({"resourceType": "DocumentReference", "id": "doc-1", "status": "current",
               "content": [{"attachment": {"contentType": "image/png", "title": "synthetic image", "data": b64(&big)}}]}),
    ];
    let file = dir.join("documents.ndjson");
    std::fs::write(&file, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let out = import(&url, &dir, &[&file], &["--offload-over", "10000", "--document-dir", documents.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut db = connect(&url).await;
    // JSONB holds no document bytes for the large content, and the bytes are in the store.
    let scan = content(&mut db, "Binary", "big-scan", &url, &dir).await;
    assert!(scan.get("data").is_none(), "{scan}");
    let key = scan.pointer("/meta/extension/0/extension/0/valueString").and_then(Value::as_str).unwrap().to_owned();
    assert_eq!(std::fs::read(documents.join(&key)).unwrap(), big);
    let state: String = sqlx::query_scalar("SELECT state FROM document_object WHERE key = $1 AND resource_id = 'big-scan'").bind(&key).fetch_one(&mut db).await.unwrap();
    assert_eq!(state, "stored");
    let small = content(&mut db, "Binary", "small-note", &url, &dir).await;
    assert_eq!(small["data"], b64(b"synthetic note"));
    // The attachment now points at a new Binary holding the bytes, with size and SHA-1.
    let doc = content(&mut db, "DocumentReference", "doc-1", &url, &dir).await;
    let attachment = &doc["content"][0]["attachment"];
    assert!(attachment.get("data").is_none());
    assert_eq!(attachment["size"], 12000);
    assert_eq!(attachment["title"], "synthetic image");
    let sha1 = <sha1::Sha1 as sha1::Digest>::digest(&big);
    assert_eq!(attachment["hash"], b64(&sha1));
    let binary_id = attachment["url"].as_str().unwrap().strip_prefix("Binary/").unwrap().to_owned();
    let holder = content(&mut db, "Binary", &binary_id, &url, &dir).await;
    assert_eq!(holder["contentType"], "image/png");
    let key = holder.pointer("/meta/extension/0/extension/0/valueString").and_then(Value::as_str).unwrap();
    assert_eq!(std::fs::read(documents.join(key)).unwrap(), big);
    let text_of_rows: i64 = scalar(&mut db, "SELECT count(*) FROM resource WHERE content::text LIKE '%AAAA%'").await;
    assert_eq!(text_of_rows, 0, "no base64 of the large content left in JSONB");
    // Keys and Binary ids follow the content: the same import again writes nothing new.
    let before = counts(&mut db).await;
    let again = import(&url, &dir, &[&file], &["--offload-over", "10000", "--document-dir", documents.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(counts(&mut db).await, before);
    assert_eq!(scalar(&mut db, "SELECT count(*) FROM document_object").await, 2);
}
