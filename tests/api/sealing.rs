//! PHI sealing (src/crypto): what the database holds, what every read path returns, blind-index
//! search on protected parameters, tampering, key rotation under load and lost keys.

use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, entry_ids};

const BIN: &str = env!("CARGO_BIN_EXE_ironfhir");

/// A synthetic patient whose every sealed element carries a marker string.
fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "gender": "female",
        "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">Narrative{family}</div>")},
        "identifier": [{"system": "urn:example:mrn", "value": format!("MRN{family}")}],
        "name": [{"family": family, "given": ["Zoë", format!("Given{family}")]}],
        "telecom": [{"system": "phone", "value": format!("555{family}")}, {"system": "email", "value": format!("{family}@example.org")}],
        "address": [{"line": [format!("Street{family}")], "city": format!("City{family}"), "postalCode": "99999"}],
        "birthDate": "1961-07-23",
        "contact": [{"name": {"family": format!("Contact{family}")}}]})
}

/// Every text column of every table the FHIR data lives in, as one string.
async fn database_text(app: &TestApp) -> String {
    let mut text = String::new();
    for table in ["resource", "resource_history", "search_string", "search_token", "search_reference", "search_date", "search_uri", "search_blind", "audit_log"] {
        let rows: Vec<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {table} t")))
            .fetch_all(app.store.pool())
            .await
            .unwrap();
        for (row,) in rows {
            text.push_str(&row.unwrap_or_default());
            text.push('\n');
        }
    }
    text
}

fn without_meta(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("meta");
    v
}

#[tokio::test]
async fn sealed_elements_never_reach_the_tables_and_every_read_path_returns_them() {
    let app = TestApp::spawn().await;
    let sent = patient("sealed-1", "Quexwold");
    app.put(sent.clone()).await;
    let obs = app
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": "Patient/sealed-1"}, "note": [{"text": "NoteQuexwold"}]}))
        .await;
    // Searched by name: the query must not leave the name in the audit trail either.
    assert_eq!(entry_ids(&app.get_json("Patient?family=quexw").await), ["sealed-1"]);

    let stored = database_text(&app).await;
    for secret in ["Quexwold", "quexwold", "1961-07-23", "Zoë", "555Quexwold", "StreetQuexwold", "NarrativeQuexwold", "NoteQuexwold"] {
        assert!(!stored.contains(secret), "{secret} is stored in the clear");
    }
    assert!(stored.contains("urn:example:mrn"), "unsealed elements stay searchable JSON");

    // read, vread, history, search (with _include), batch GET: the complete resource.
    assert_eq!(without_meta(app.get_json("Patient/sealed-1").await), sent);
    assert_eq!(without_meta(app.get_json("Patient/sealed-1/_history/1").await), sent);
    let history = app.get_json("Patient/sealed-1/_history").await;
    assert_eq!(without_meta(history["entry"][0]["resource"].clone()), sent);
    let bundle = app.get_json("Observation?subject=Patient/sealed-1&_include=Observation:subject").await;
    let included: Vec<&Value> = bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    assert!(included.iter().any(|r| r["note"][0]["text"] == "NoteQuexwold"));
    assert!(included.iter().any(|r| r["name"][0]["family"] == "Quexwold" && r["birthDate"] == "1961-07-23"));
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Patient/sealed-1"}}]});
    let answer: Value = app.send_json(Method::POST, "", &batch).await.json().await.unwrap();
    assert_eq!(without_meta(answer["entry"][0]["resource"].clone()), sent);
    assert_eq!(app.get_json(&format!("Observation/{}", obs["id"].as_str().unwrap())).await["note"][0]["text"], "NoteQuexwold");

    // An update and a patch seal the new version too.
    let r = app
        .req(Method::PATCH, "Patient/sealed-1")
        .header("Content-Type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/name/0/family", "value": "Patchedname"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.get_json("Patient/sealed-1").await["address"][0]["city"], "CityQuexwold");
    assert!(!database_text(&app).await.contains("Patchedname"));
    assert_eq!(app.get_json("Patient/sealed-1/_history/1").await["name"][0]["family"], "Quexwold");
}

#[tokio::test]
async fn protected_parameters_search_through_blind_indexes_by_equality_only() {
    let app = TestApp::spawn().await;
    app.put(patient("b1", "Müller")).await;
    app.put(patient("b2", "Mullins")).await;
    let found = |q: &'static str| {
        let app = &app;
        async move { entry_ids(&app.get_json(q).await) }
    };
    let mut both = found("Patient?family=MUL").await;
    both.sort();
    assert_eq!(both, ["b1", "b2"], "prefix, case-insensitive");
    assert_eq!(found("Patient?family=muller").await, ["b1"], "accent-insensitive");
    assert_eq!(found("Patient?name=mullin").await, ["b2"]);
    assert_eq!(found("Patient?given=zoe").await.len(), 2);
    assert_eq!(found("Patient?family:exact=Müller").await, ["b1"]);
    assert!(found("Patient?family:exact=muller").await.is_empty(), ":exact stays exact");
    assert_eq!(found("Patient?identifier=urn:example:mrn|MRNMullins").await, ["b2"]);
    assert_eq!(found("Patient?identifier=MRNMüller").await, ["b1"]);
    assert_eq!(found("Patient?identifier=urn:example:mrn|").await.len(), 2);
    assert_eq!(found("Patient?telecom=555Mullins").await, ["b2"]);
    assert_eq!(found("Patient?email=Müller@example.org").await, ["b1"]);
    assert_eq!(found("Patient?address-city=citymulli").await, ["b2"]);
    assert_eq!(found("Patient?birthdate=1961-07-23").await.len(), 2);
    assert_eq!(found("Patient?birthdate=1961-07").await.len(), 2, "month precision");
    assert_eq!(found("Patient?birthdate=eq1961").await.len(), 2, "year precision");
    assert!(found("Patient?birthdate=1961-07-24").await.is_empty());
    assert_eq!(found("Patient?family=mul&birthdate=1961&gender=female&_count=1").await.len(), 1);
    // Chains reach protected parameters of the target.
    app.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/b2"}})).await;
    assert_eq!(entry_ids(&app.get_json("Observation?subject:Patient.family=mullins").await).len(), 1);
    // What a blind index cannot answer is refused, never answered wrongly.
    for refused in ["Patient?family:contains=ller", "Patient?birthdate=ge1960", "Patient?birthdate=1961-07-23T10:00:00Z", "Patient?identifier:of-type=a|b|c", "Patient?address:contains=x"] {
        let r = app.get(refused).await;
        assert_eq!(r.status(), 400, "{refused}");
        let body: Value = r.json().await.unwrap();
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("blind index"), "{body}");
    }
    let strict = app.req(Method::GET, "Patient?_sort=family").header("prefer", "handling=strict").send().await.unwrap();
    assert_eq!(strict.status(), 400, "blind values have no order");
}

#[tokio::test]
async fn a_ciphertext_copied_onto_another_row_fails_with_a_clear_error() {
    let app = TestApp::spawn().await;
    app.put(patient("victim", "Ostrander")).await;
    app.put(patient("donor", "Pellworth")).await;
    sqlx::query(
        "UPDATE resource SET sealed = d.sealed, key_id = d.key_id FROM resource d \
         WHERE resource.resource_type = 'Patient' AND resource.id = 'victim' AND d.resource_type = 'Patient' AND d.id = 'donor'",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    let r = app.get("Patient/victim").await;
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert!(body.contains("Patient/victim version 1 cannot be opened") && body.contains("authentication failed"), "{body}");
    assert!(!body.contains("Pellworth") && !body.contains("Ostrander"), "{body}");
    // The donor still reads; so does the victim's own history row, which was not touched.
    assert_eq!(app.get_json("Patient/donor").await["name"][0]["family"], "Pellworth");
    assert_eq!(app.get_json("Patient/victim/_history/1").await["name"][0]["family"], "Ostrander");
}

fn keys_command(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(&app.data_dir)
        .env("DATABASE_URL", &app.database_url)
        .env_remove("IRONFHIR_KEK")
        .output()
        .unwrap()
}

#[tokio::test]
async fn rotation_under_load_moves_every_row_to_the_new_key_and_nothing_fails() {
    let app = TestApp::spawn().await;
    for i in 0..40 {
        app.put(patient(&format!("rot-{i}"), &format!("Rotname{i}"))).await;
    }
    let before: String = sqlx::query_scalar("SELECT id FROM data_key WHERE purpose = 'data' AND active").fetch_one(app.store.pool()).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = vec![];
    for w in 0..3 {
        let (client, base, token, stop) = (app.client.clone(), app.base.clone(), app.token.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = (n * 7 + w) % 40;
                let r = client.get(format!("{base}/Patient/rot-{i}")).bearer_auth(&token).send().await.unwrap();
                assert_eq!(r.status(), 200, "read during rotation");
                let mut p: Value = r.json().await.unwrap();
                assert_eq!(p["name"][0]["family"], format!("Rotname{i}"));
                p["gender"] = json!(if n % 2 == 0 { "male" } else { "female" });
                let r = client.put(format!("{base}/Patient/rot-{i}")).bearer_auth(&token).json(&p).send().await.unwrap();
                assert!(r.status().is_success(), "update during rotation: {}", r.status());
                let r = client.get(format!("{base}/Patient?family=rotname{i}")).bearer_auth(&token).send().await.unwrap();
                assert_eq!(r.status(), 200, "search during rotation");
                n += 1;
            }
            n
        }));
    }
    let out = tokio::task::spawn_blocking({
        let (url, dir) = (app.database_url.clone(), app.data_dir.clone());
        move || Command::new(BIN).args(["keys", "rotate", "--data-dir"]).arg(dir).env("DATABASE_URL", url).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Keep the load on a little after the rotation finished, then stop.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut requests = 0;
    for w in workers {
        requests += w.await.expect("a request failed during rotation");
    }
    assert!(requests > 10, "the workload ran ({requests} rounds)");
    let after: String = sqlx::query_scalar("SELECT id FROM data_key WHERE purpose = 'data' AND active").fetch_one(app.store.pool()).await.unwrap();
    assert_ne!(before, after);
    // Every sealed row, current, history and audit chain (the workload's searches seal their
    // queries), including the workload's writes, is under the new key: the server learned it
    // before the re-encryption began.
    ironfhir::audit::projection::catch_up(&app.store).await.unwrap();
    let behind: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM resource WHERE sealed IS NOT NULL AND key_id <> $1) \
              + (SELECT count(*) FROM resource_history WHERE sealed IS NOT NULL AND key_id <> $1) \
              + (SELECT count(*) FROM audit_log WHERE sealed IS NOT NULL AND key_id <> $1)",
    )
    .bind(&after)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(behind, 0, "rows left under an old key");
    assert_eq!(app.get_json("Patient/rot-3/_history/1").await["name"][0]["family"], "Rotname3");
}

#[tokio::test]
async fn a_missing_or_wrong_key_encryption_key_is_an_explicit_startup_error() {
    let app = TestApp::spawn().await;
    app.put(patient("k1", "Keyholder")).await;
    let out = keys_command(&app, &["status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("active"));

    // Another data directory: no KEK there, and the database has keys.
    let empty = std::env::temp_dir().join(format!("ironfhir-no-kek-{}", uuid::Uuid::new_v4().simple()));
    let out = Command::new(BIN).args(["keys", "status", "--data-dir"]).arg(&empty).env("DATABASE_URL", &app.database_url).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key-encryption key is configured"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!empty.join("kek.key").exists(), "no new key is generated over sealed data");

    // Rotating the KEK re-wraps the data keys; the old KEK is then refused by name.
    let new_kek = app.data_dir.join("new-kek.key");
    std::fs::write(&new_kek, base64_key(7)).unwrap();
    let out = keys_command(&app, &["rotate-kek", "--new-kek-file", new_kek.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = keys_command(&app, &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is wrapped by key-encryption key"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = keys_command(&app, &["status", "--kek-file", new_kek.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The rows were not touched, and this process's keys (unwrapped before) still read them.
    assert_eq!(app.get_json("Patient/k1").await["name"][0]["family"], "Keyholder");
}

fn base64_key(byte: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

#[tokio::test]
async fn a_custom_search_parameter_over_a_sealed_element_is_blind_indexed_too() {
    let app = TestApp::spawn().await;
    let r = app
        .send_json(Method::POST, "SearchParameter", &json!({"resourceType": "SearchParameter", "url": "http://example.org/sp/street-line",
            "name": "street-line", "status": "active", "description": "street line", "code": "street-line", "base": ["Patient"],
            "type": "string", "expression": "Patient.address.line"}))
        .await;
    assert_eq!(r.status(), 201);
    app.put(patient("cs-1", "Strandberg")).await;
    assert!(!database_text(&app).await.contains("streetstrandberg"), "no clear index row for the custom parameter");
    assert_eq!(entry_ids(&app.get_json("Patient?street-line=streetstrand").await), ["cs-1"]);
    assert_eq!(app.get("Patient?street-line:contains=strand").await.status(), 400);
}
