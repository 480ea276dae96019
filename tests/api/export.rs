//! Bulk Data `$export` (Bulk Data IG v2): kick-off, polling, manifest, NDJSON files, the three
//! levels, `_type`/`_since`/`_typeFilter`, who may poll and download, cancellation, jobs that
//! outlive the worker that should have run them, and a round trip through `ironfhir import`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};

use crate::helpers::{DatabaseGuard, Options, TestApp, fresh_database};

/// Two patients with observations, an organisation, a practitioner and a group of patient 1.
async fn fixture(app: &TestApp) {
    app.put(json!({"resourceType": "Organization", "id": "org-1", "name": "Synthetic Clinic"})).await;
    app.put(json!({"resourceType": "Practitioner", "id": "pr-1", "name": [{"family": "Doctor"}]})).await;
    for p in ["p1", "p2"] {
        app.put(json!({"resourceType": "Patient", "id": p, "managingOrganization": {"reference": "Organization/org-1"}})).await;
    }
    for (id, patient, code) in [("o1", "p1", "8867-4"), ("o2", "p1", "8310-5"), ("o3", "p2", "8867-4")] {
        app.put(json!({"resourceType": "Observation", "id": id, "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                   "subject": {"reference": format!("Patient/{patient}")}}),
        )
        .await;
    }
    app.put(json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true,
                    "member": [{"entity": {"reference": "Patient/p1"}}]}))
    .await;
}

fn kick_off_request(app: &TestApp, token: &str, path: &str) -> reqwest::RequestBuilder {
    app.client
        .get(format!("{}/{path}", app.base))
        .bearer_auth(token)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
}

/// Kicks off and returns the status URL (asserting 202 and Content-Location).
async fn kick_off(app: &TestApp, path: &str) -> String {
    let r = kick_off_request(app, &app.token, path).send().await.unwrap();
    assert_eq!(r.status(), 202, "kick-off {path}: {}", r.text().await.unwrap());
    r.headers()["content-location"].to_str().unwrap().to_owned()
}

/// Polls until the job completes and returns the manifest; asserts the in-progress headers.
async fn wait(app: &TestApp, status_url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.client.get(status_url).bearer_auth(&app.token).header("accept", "application/json").send().await.unwrap();
        match r.status().as_u16() {
            200 => {
                assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
                assert!(r.headers().contains_key("expires"));
                return r.json().await.unwrap();
            }
            202 => {
                assert!(r.headers().contains_key("retry-after"), "202 carries Retry-After");
                assert!(r.headers().contains_key("x-progress"), "202 carries X-Progress");
            }
            other => panic!("status poll answered {other}: {}", r.text().await.unwrap()),
        }
        assert!(Instant::now() < deadline, "export did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Downloads every output file: type → resources (sorted by id).
async fn download(app: &TestApp, manifest: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for out in manifest["output"].as_array().unwrap() {
        let r = app.client.get(out["url"].as_str().unwrap()).bearer_auth(&app.token).header("accept", "application/fhir+ndjson").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/fhir+ndjson");
        let text = r.text().await.unwrap();
        let resources: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(resources.len() as u64, out["count"].as_u64().unwrap(), "manifest count of {}", out["url"]);
        for resource in &resources {
            assert_eq!(resource["resourceType"], out["type"], "a file holds one type");
        }
        by_type.entry(out["type"].as_str().unwrap().to_owned()).or_default().extend(resources);
    }
    for list in by_type.values_mut() {
        list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    }
    by_type
}

fn ids(by_type: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, Vec<String>> {
    by_type.iter().map(|(t, list)| (t.clone(), list.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect())).collect()
}

fn expect(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs.iter().map(|(t, ids)| (t.to_string(), ids.iter().map(|s| s.to_string()).collect())).collect()
}

#[tokio::test]
async fn a_system_export_runs_asynchronously_and_its_manifest_lists_ndjson_files_of_every_resource() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let before = chrono::Utc::now();
    let status = kick_off(&app, "$export").await;
    assert!(status.starts_with(&format!("{}/$export-status/", app.base)));
    let manifest = wait(&app, &status).await;
    assert_eq!(manifest["request"], format!("{}/$export", app.base));
    assert_eq!(manifest["requiresAccessToken"], true);
    assert_eq!(manifest["error"], json!([]));
    let tt = chrono::DateTime::parse_from_rfc3339(manifest["transactionTime"].as_str().unwrap()).unwrap();
    assert!(tt >= before - chrono::Duration::seconds(5));
    let exported = download(&app, &manifest).await;
    assert_eq!(
        ids(&exported),
        expect(&[("Group", &["g1"]), ("Observation", &["o1", "o2", "o3"]), ("Organization", &["org-1"]), ("Patient", &["p1", "p2"]), ("Practitioner", &["pr-1"])])
    );
    // The exported resource is the stored one.
    let read: Value = app.get("Observation/o2").await.json().await.unwrap();
    assert_eq!(exported["Observation"][1], read);
}

#[tokio::test]
async fn type_since_and_type_filter_narrow_the_export() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let m = wait(&app, &kick_off(&app, "$export?_type=Patient,Observation&_outputFormat=application%2Ffhir%2Bndjson").await).await;
    assert_eq!(ids(&download(&app, &m).await), expect(&[("Observation", &["o1", "o2", "o3"]), ("Patient", &["p1", "p2"])]));

    let filter = "Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C8867-4";
    let m = wait(&app, &kick_off(&app, &format!("$export?_type=Observation&_typeFilter={filter}")).await).await;
    assert_eq!(ids(&download(&app, &m).await), expect(&[("Observation", &["o1", "o3"])]));

    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.put(json!({"resourceType": "Observation", "id": "o2", "status": "amended",
                     "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                     "subject": {"reference": "Patient/p1"}}))
    .await;
    let m = wait(&app, &kick_off(&app, &format!("$export?_since={}", since.replace('+', "%2B"))).await).await;
    let exported = download(&app, &m).await;
    assert_eq!(ids(&exported), expect(&[("Observation", &["o2"])]));
    assert_eq!(exported["Observation"][0]["status"], "amended");
}

#[tokio::test]
async fn patient_level_exports_the_patient_compartment_and_group_level_only_the_members() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let m = wait(&app, &kick_off(&app, "Patient/$export").await).await;
    assert_eq!(manifest_request_path(&m, &app), "Patient/$export");
    // Group is in the Patient compartment through `member`; Organization and Practitioner
    // are not.
    let all = expect(&[("Group", &["g1"]), ("Observation", &["o1", "o2", "o3"]), ("Patient", &["p1", "p2"])]);
    assert_eq!(ids(&download(&app, &m).await), all);

    let m = wait(&app, &kick_off(&app, "Group/g1/$export").await).await;
    assert_eq!(ids(&download(&app, &m).await), expect(&[("Group", &["g1"]), ("Observation", &["o1", "o2"]), ("Patient", &["p1"])]));

    let r = kick_off_request(&app, &app.token, "Group/nope/$export").send().await.unwrap();
    assert_eq!(r.status(), 404);
}

fn manifest_request_path(m: &Value, app: &TestApp) -> String {
    m["request"].as_str().unwrap().strip_prefix(&format!("{}/", app.base)).unwrap().to_owned()
}

#[tokio::test]
async fn a_post_kick_off_takes_a_parameters_body() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"}]});
    let r = app
        .req(Method::POST, "Patient/$export")
        .header("prefer", "respond-async")
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status = r.headers()["content-location"].to_str().unwrap().to_owned();
    let m = wait(&app, &status).await;
    assert_eq!(ids(&download(&app, &m).await), expect(&[("Patient", &["p1", "p2"])]));
}

#[tokio::test]
async fn bad_kick_offs_are_refused_with_an_operation_outcome() {
    let app = TestApp::spawn().await;
    let without_prefer = app.get("$export").await;
    assert_eq!(without_prefer.status(), 400);
    let outcome: Value = without_prefer.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    for query in ["_outputFormat=text%2Fcsv", "_type=NoSuchType", "_since=yesterday", "_typeFilter=Observation", "_elements=id", "_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal"] {
        let r = kick_off_request(&app, &app.token, &format!("$export?{query}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{query}");
    }
    let lenient = kick_off_request(&app, &app.token, "$export?_elements=id").header("prefer", "handling=lenient").send().await.unwrap();
    assert_eq!(lenient.status(), 202, "unsupported parameters are ignored with handling=lenient");
}

#[tokio::test]
async fn only_system_scopes_may_export_and_only_for_the_types_they_grant() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let anonymous = app.client.get(format!("{}/$export", app.base)).header("prefer", "respond-async").send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    for scope in ["user/*.*", "patient/*.read", "user/*.rs"] {
        let r = kick_off_request(&app, &app.token_with(scope), "$export").send().await.unwrap();
        assert_eq!(r.status(), 403, "{scope}");
    }
    let observations_only = app.token_with("system/Observation.rs");
    let r = kick_off_request(&app, &observations_only, "$export?_type=Patient").send().await.unwrap();
    assert_eq!(r.status(), 403, "a type the scopes do not grant");
    // Without _type, only the granted types are exported.
    let r = kick_off_request(&app, &observations_only, "$export").send().await.unwrap();
    assert_eq!(r.status(), 202);
    let status = r.headers()["content-location"].to_str().unwrap().to_owned();
    let manifest = loop {
        let r = app.client.get(&status).bearer_auth(&observations_only).send().await.unwrap();
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let types: Vec<&str> = manifest["output"].as_array().unwrap().iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Observation"]);
}

#[tokio::test]
async fn another_client_can_neither_poll_nor_download_nor_cancel_an_export() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let status = kick_off(&app, "$export?_type=Patient").await;
    let manifest = wait(&app, &status).await;
    let file = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let other = app.tokens.issue("another-backend-service", "system/*.*", 600).unwrap();
    for (method, url) in [(Method::GET, &status), (Method::GET, &file), (Method::DELETE, &status)] {
        let r = app.client.request(method.clone(), url.as_str()).bearer_auth(&other).send().await.unwrap();
        assert_eq!(r.status(), 403, "{method} {url}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("\"Patient\"") || body.contains("OperationOutcome"), "no exported data in the refusal");
        let r = app.client.request(method.clone(), url.as_str()).send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {url} without a token");
    }
    // The owner still can.
    assert_eq!(app.client.get(&file).bearer_auth(&app.token).send().await.unwrap().status(), 200);
    // A file name that is not in the manifest (or tries to escape) is 404.
    for name in ["Patient-9.ndjson", "..%2F..%2Fetc%2Fpasswd"] {
        let bad = format!("{}/{name}", file.rsplit_once('/').unwrap().0);
        assert_eq!(app.client.get(&bad).bearer_auth(&app.token).send().await.unwrap().status(), 404, "{name}");
    }
}

#[tokio::test]
async fn delete_on_the_status_url_cancels_the_job_and_removes_its_files() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let status = kick_off(&app, "$export").await;
    let manifest = wait(&app, &status).await;
    let file = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let r = app.client.delete(&status).bearer_auth(&app.token).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(app.client.get(&status).bearer_auth(&app.token).send().await.unwrap().status(), 404);
    assert_eq!(app.client.get(&file).bearer_auth(&app.token).send().await.unwrap().status(), 404);
    assert_eq!(app.client.delete(&status).bearer_auth(&app.token).send().await.unwrap().status(), 404);

    // A job cancelled before it ran never produces a manifest.
    let queued = TestApp::spawn_with(Options { export_worker: false, ..Options::default() }).await;
    let status = kick_off(&queued, "$export").await;
    assert_eq!(queued.client.delete(&status).bearer_auth(&queued.token).send().await.unwrap().status(), 202);
    ironfhir::export::worker::spawn(queued.exports.clone(), queued.store.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(queued.client.get(&status).bearer_auth(&queued.token).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn a_job_accepted_while_no_worker_ran_completes_once_a_worker_starts() {
    // The server that accepted the job stopped before running it; the job is in the database
    // and the next server's worker runs it.
    let app = TestApp::spawn_with(Options { export_worker: false, ..Options::default() }).await;
    fixture(&app).await;
    let status = kick_off(&app, "$export?_type=Patient").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = app.client.get(&status).bearer_auth(&app.token).send().await.unwrap();
    assert_eq!(r.status(), 202, "still waiting for a worker");
    // An abandoned in-progress job (its worker died: stale heartbeat) is also picked up again.
    let abandoned = kick_off(&app, "$export?_type=Observation").await;
    let abandoned_id = uuid::Uuid::parse_str(abandoned.rsplit('/').next().unwrap()).unwrap();
    sqlx::query("UPDATE export_job SET status = 'in-progress', heartbeat = now() - interval '10 minutes' WHERE id = $1")
        .bind(abandoned_id)
        .execute(app.store.pool())
        .await
        .unwrap();
    ironfhir::export::worker::spawn(app.exports.clone(), app.store.clone());
    assert_eq!(ids(&download(&app, &wait(&app, &status).await).await), expect(&[("Patient", &["p1", "p2"])]));
    assert_eq!(ids(&download(&app, &wait(&app, &abandoned).await).await), expect(&[("Observation", &["o1", "o2", "o3"])]));
}

#[tokio::test]
async fn the_capability_statement_advertises_export_at_all_three_levels() {
    let app = TestApp::spawn().await;
    let cs: Value = app.get("metadata").await.json().await.unwrap();
    assert_eq!(cs["rest"][0]["operation"][0]["name"], "export");
    for t in ["Patient", "Group"] {
        let resource = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == t).unwrap();
        assert!(resource["operation"].as_array().unwrap().iter().any(|o| o["name"] == "export"), "{t}");
    }
}

/// Strips what a re-import legitimately changes (version and timestamp).
fn without_meta(mut resource: Value) -> Value {
    if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            resource.as_object_mut().unwrap().remove("meta");
        }
    }
    resource
}

#[tokio::test]
async fn an_export_reimported_with_ironfhir_import_into_a_fresh_database_has_the_same_resources() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    // More than a handful, with varied content.
    for i in 0..300 {
        app.put(json!({"resourceType": "Observation", "id": format!("bulk-{i}"), "status": "final",
                         "code": {"text": format!("synthetic measurement {i}")},
                         "subject": {"reference": format!("Patient/p{}", 1 + i % 2)},
                         "valueQuantity": {"value": i as f64 / 10.0, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}))
        .await;
    }
    let manifest = wait(&app, &kick_off(&app, "$export").await).await;
    let dir = std::env::temp_dir().join(format!("ironfhir-export-roundtrip-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for (n, out) in manifest["output"].as_array().unwrap().iter().enumerate() {
        let text = app.client.get(out["url"].as_str().unwrap()).bearer_auth(&app.token).send().await.unwrap().text().await.unwrap();
        std::fs::write(dir.join(format!("{n:02}-{}.ndjson", out["type"].as_str().unwrap())), text).unwrap();
    }
    let (url, name) = fresh_database().await;
    let _guard = DatabaseGuard(name);
    let out = Command::new(env!("CARGO_BIN_EXE_ironfhir"))
        .arg("import")
        .arg("--data-dir")
        .arg(&dir)
        .arg(&dir)
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));

    let source = contents(app.store.pool()).await;
    let mut target_db = PgConnection::connect(&url).await.unwrap();
    let target = contents(&mut target_db).await;
    assert_eq!(source.len(), 308);
    assert_eq!(source.keys().collect::<Vec<_>>(), target.keys().collect::<Vec<_>>(), "same resources");
    for (key, resource) in &source {
        assert_eq!(without_meta(resource.clone()), without_meta(target[key].clone()), "{key:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn contents<'e, E: sqlx::PgExecutor<'e>>(db: E) -> BTreeMap<(String, String), Value> {
    // The audit trail is not part of an export (unless _type names AuditEvent).
    sqlx::query("SELECT resource_type, id, content FROM resource WHERE NOT deleted AND resource_type <> 'AuditEvent'")
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

#[tokio::test]
async fn bulk_endpoints_answer_whatever_accept_a_bulk_client_sends() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    // A kick-off asking for NDJSON (a common client habit) is still accepted.
    let r = app
        .client
        .get(format!("{}/$export?_type=Patient", app.base))
        .bearer_auth(&app.token)
        .header("accept", "application/fhir+ndjson")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status = r.headers()["content-location"].to_str().unwrap().to_owned();
    let manifest = wait(&app, &status).await;
    assert_eq!(manifest["output"][0]["type"], "Patient");
    // Elsewhere an unsatisfiable Accept is still 406.
    let r = app.req(Method::GET, "Patient").header("accept", "application/fhir+ndjson").send().await.unwrap();
    assert_eq!(r.status(), 406);
}
