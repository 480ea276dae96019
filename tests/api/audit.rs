//! The audit trail: every request leaves exactly one AuditEvent, committed before the answer,
//! with what it did, to what, for which patient and how it ended; AuditEvents cannot be changed
//! through the API nor in the database; `audit::trail::verify` finds the first record that was
//! edited, deleted or reordered.

use ironfhir::audit::trail::verify;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// The complete AuditEvents (sealed elements opened) of the trail's records of `subject`
/// (`agent.altId`), in chain order, as projected into AuditEvent resources. The chain rows hold
/// them without their sealed elements (the query).
async fn events_of(app: &TestApp, subject: &str) -> Vec<Value> {
    ironfhir::audit::projection::catch_up(&app.store).await.unwrap();
    let rows = sqlx::query(
        "SELECT r.id, r.version_id, r.content, r.sealed, r.key_id, l.event_text AS event FROM audit_log l \
           JOIN resource r ON r.resource_type = 'AuditEvent' AND r.id = l.resource_id \
          WHERE r.content -> 'agent' -> 0 ->> 'altId' = $1 ORDER BY l.seq",
    )
    .bind(subject)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    rows.iter()
        .map(|row| {
            use sqlx::Row;
            let trail: String = row.get("event");
            assert!(!trail.contains("\"query\""), "the trail holds no search query in the clear: {trail}");
            let id: String = row.get("id");
            ironfhir::store::open_row("AuditEvent", &id, row.get("version_id"), row).unwrap().unwrap()
        })
        .collect()
}

fn subtype(event: &Value) -> &str {
    event["subtype"][0]["code"].as_str().unwrap_or("")
}

fn entity_refs(event: &Value) -> Vec<String> {
    event["entity"].as_array().into_iter().flatten().filter_map(|e| e["what"]["reference"].as_str().map(str::to_owned)).collect()
}

#[tokio::test]
async fn every_request_leaves_exactly_its_audit_event() {
    let app = TestApp::spawn().await;
    let patient = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Audittest"}]})).await;
    let pid = patient["id"].as_str().unwrap().to_owned();
    let obs = app
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pid}")}}))
        .await;
    let oid = obs["id"].as_str().unwrap().to_owned();

    let token = app.tokens.issue("auditee-1", "system/Patient.rs system/Observation.rs", 600).unwrap();
    let send = |method: Method, path: String| app.client.request(method, format!("{}/{path}", app.base)).bearer_auth(&token).send();
    assert_eq!(send(Method::GET, format!("Observation/{oid}")).await.unwrap().status(), 200);
    assert_eq!(send(Method::GET, format!("Observation?subject=Patient/{pid}")).await.unwrap().status(), 200);
    assert_eq!(send(Method::GET, format!("Patient/{pid}/_history/1")).await.unwrap().status(), 200);
    assert_eq!(send(Method::DELETE, format!("Patient/{pid}")).await.unwrap().status(), 403);

    // Committed before the answers: no waiting needed.
    let events = events_of(&app, "auditee-1").await;
    assert_eq!(events.iter().map(subtype).collect::<Vec<_>>(), ["read", "search-type", "vread", "delete"], "{events:#?}");
    let [read, search, vread, delete] = &events[..] else { unreachable!() };
    assert_eq!(read["action"], "R");
    assert_eq!(read["outcome"], "0");
    assert_eq!(read["type"]["code"], "rest");
    // The resource read and the patient whose compartment it is in.
    assert_eq!(entity_refs(read), [format!("Observation/{oid}"), format!("Patient/{pid}")]);
    // A search names its query and the patient it asked about.
    let query = search["entity"].as_array().unwrap().iter().find_map(|e| e["query"].as_str()).unwrap();
    use base64::Engine;
    let query = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(query).unwrap()).unwrap();
    assert!(query.contains("subject=Patient"), "{query}");
    assert!(entity_refs(search).contains(&format!("Patient/{pid}")));
    // The Patient read, and the same Patient as the patient concerned.
    assert_eq!(entity_refs(vread), [format!("Patient/{pid}"), format!("Patient/{pid}")]);
    // A refused attempt is recorded as such.
    assert_eq!(delete["action"], "D");
    assert_eq!(delete["outcome"], "4");
    assert!(delete["outcomeDesc"].as_str().unwrap().contains("delete"));

    // Searchable through FHIR, and the searchable copy is the chained record.
    let bundle = app.get_json(&format!("AuditEvent?patient=Patient/{pid}&_count=100")).await;
    assert!(bundle["entry"].as_array().unwrap().len() >= 4, "{bundle}");
    assert_eq!(verify(&app.store).await.unwrap(), Ok(app.count("AuditEvent").await));
}

#[tokio::test]
async fn audit_events_cannot_be_changed_or_deleted() {
    let app = TestApp::spawn().await;
    app.get("Patient").await;
    let bundle = app.get_json("AuditEvent?_count=1").await;
    let event = bundle["entry"][0]["resource"].clone();
    let id = event["id"].as_str().unwrap().to_owned();
    let mut edited = event.clone();
    edited["outcome"] = json!("8");
    let r = app.send_json(Method::PUT, &format!("AuditEvent/{id}"), &edited).await;
    expect_outcome(r, 405).await;
    let r = app.req(Method::DELETE, &format!("AuditEvent/{id}")).send().await.unwrap();
    expect_outcome(r, 405).await;
    // Not even with SQL, short of disabling the triggers.
    assert!(sqlx::query("UPDATE audit_log SET hash = '\\x00' WHERE seq = 1").execute(app.store.pool()).await.is_err());
    assert!(sqlx::query("DELETE FROM audit_log WHERE seq = 1").execute(app.store.pool()).await.is_err());
    assert!(sqlx::query("DELETE FROM resource WHERE resource_type = 'AuditEvent'").execute(app.store.pool()).await.is_err());
    assert!(verify(&app.store).await.unwrap().is_ok());
}

#[tokio::test]
async fn a_submitted_audit_event_joins_the_chain_with_its_submitter() {
    let app = TestApp::spawn().await;
    let event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "action": "R", "recorded": "2026-01-01T10:00:00Z", "outcome": "0",
        "agent": [{"who": {"display": "a synthetic EHR"}, "requestor": true}],
        "source": {"observer": {"display": "a synthetic EHR"}},
        "entity": [{"what": {"reference": "Patient/synthetic"}}]
    });
    let r = app.send_json(Method::POST, "AuditEvent", &event).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let id = location.split("/AuditEvent/").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let stored = app.get_json(&format!("AuditEvent/{id}")).await;
    let submitter = stored["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == ironfhir::audit::SUBMITTER_EXTENSION)
        .expect("the submitter is recorded");
    let parts: Vec<(&str, &Value)> = submitter["extension"].as_array().unwrap().iter().map(|e| (e["url"].as_str().unwrap(), e)).collect();
    assert!(parts.iter().any(|(u, e)| *u == "subject" && e["valueString"] == "test-operator"), "{submitter}");
    assert_eq!(stored["agent"][0]["who"]["display"], "a synthetic EHR");
    // In the chain: verify counts it, and a row stored beside the chain is found.
    let chained: (i64,) = sqlx::query_as("SELECT count(*) FROM audit_log WHERE resource_id = $1").bind(&id).fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(chained.0, 1);
    assert_eq!(verify(&app.store).await.unwrap(), Ok(app.count("AuditEvent").await));
    // Neither an update-as-create nor a Bundle writes an AuditEvent beside the chain.
    let r = app.send_json(Method::PUT, "AuditEvent/beside-the-chain", &json!(dict_with_id(&event, "beside-the-chain"))).await;
    expect_outcome(r, 405).await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction",
        "entry": [{"resource": event, "request": {"method": "POST", "url": "AuditEvent"}}]});
    let r = app.send_json(Method::POST, "", &bundle).await;
    assert_eq!(r.status(), 405);
    assert_eq!(app.get("AuditEvent/beside-the-chain").await.status(), 404);
    // A resource stored beside the chain (an older version's way) breaks verify.
    let mut tx = app.store.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content) SELECT resource_type, 'unchained', version_id, last_updated, deleted, content FROM resource WHERE resource_type = 'AuditEvent' AND id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let broken = verify(&app.store).await.unwrap().unwrap_err();
    assert!(broken.reason.contains("AuditEvent/unchained"), "{}", broken.reason);
}

fn dict_with_id(event: &Value, id: &str) -> Value {
    let mut e = event.clone();
    e["id"] = json!(id);
    e
}

/// Runs SQL with the append-only triggers off, as an attacker with superuser rights would.
async fn tamper(app: &TestApp, sql: &str) {
    let mut tx = app.store.pool().begin().await.unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut *tx).await.unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn verify_names_the_first_edited_deleted_or_reordered_record() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        app.get("Patient").await;
    }
    // Records not projected yet verify too; projected ones are compared with their resources.
    assert_eq!(verify(&app.store).await.unwrap(), Ok(5));
    ironfhir::audit::projection::catch_up(&app.store).await.unwrap();
    assert_eq!(verify(&app.store).await.unwrap(), Ok(5));

    // Edited: the hash of record 2 no longer matches its event.
    tamper(&app, "CREATE TABLE saved AS SELECT * FROM audit_log; CREATE TABLE saved_events AS SELECT id, content FROM resource WHERE resource_type = 'AuditEvent'; \
                  UPDATE audit_log SET event_text = replace(event_text, '\"outcome\":\"0\"', '\"outcome\":\"8\"') WHERE seq = 2").await;
    let broken = verify(&app.store).await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 2, "{broken:?}");
    assert!(broken.reason.contains("edited"), "{broken:?}");
    // Even with its hash recomputed and its AuditEvent resource edited alike, the next record no
    // longer follows it.
    tamper(&app, "UPDATE audit_log SET hash = sha256(prev_hash || convert_to(seq::text || event_text, 'UTF8') || coalesce(sealed_mac, ''::bytea)) WHERE seq = 2; \
                  ALTER TABLE resource DISABLE TRIGGER USER; \
                  UPDATE resource r SET content = l.event_text::jsonb FROM audit_log l WHERE r.resource_type = 'AuditEvent' AND r.id = l.resource_id AND l.seq = 2; \
                  ALTER TABLE resource ENABLE TRIGGER USER").await;
    let broken = verify(&app.store).await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 3, "{broken:?}");
    // The searchable AuditEvent alone edited: it no longer matches its record.
    tamper(&app, "DELETE FROM audit_log; INSERT INTO audit_log SELECT * FROM saved; ALTER TABLE resource DISABLE TRIGGER USER; \
                  UPDATE resource r SET content = s.content FROM saved_events s WHERE r.resource_type = 'AuditEvent' AND r.id = s.id; \
                  UPDATE resource SET content = jsonb_set(content, '{outcome}', '\"8\"') WHERE resource_type = 'AuditEvent' AND id = (SELECT resource_id FROM audit_log WHERE seq = 4); \
                  ALTER TABLE resource ENABLE TRIGGER USER").await;
    let broken = verify(&app.store).await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 4, "{broken:?}");
    assert!(broken.reason.contains("differs"), "{broken:?}");
    tamper(&app, "ALTER TABLE resource DISABLE TRIGGER USER; \
                  UPDATE resource r SET content = s.content FROM saved_events s WHERE r.resource_type = 'AuditEvent' AND r.id = s.id; \
                  ALTER TABLE resource ENABLE TRIGGER USER").await;
    assert_eq!(verify(&app.store).await.unwrap(), Ok(5));

    // Deleted: record 3 is missing.
    tamper(&app, "DELETE FROM audit_log WHERE seq = 3").await;
    let broken = verify(&app.store).await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 3, "{broken:?}");
    assert!(broken.reason.contains("missing"), "{broken:?}");
    tamper(&app, "DELETE FROM audit_log; INSERT INTO audit_log SELECT * FROM saved").await;

    // Reordered: records 2 and 4 swap places.
    tamper(&app, "UPDATE audit_log SET seq = -2 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 4; UPDATE audit_log SET seq = 4 WHERE seq = -2").await;
    let broken = verify(&app.store).await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 2, "{broken:?}");
    assert!(broken.reason.contains("does not follow") || broken.reason.contains("edited"), "{broken:?}");
    tamper(&app, "DELETE FROM audit_log; INSERT INTO audit_log SELECT * FROM saved").await;
    assert_eq!(verify(&app.store).await.unwrap(), Ok(5));
}

/// `ironfhir audit verify` against the app's database.
fn verify_cli(app: &TestApp) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("ironfhir-audit-verify-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironfhir"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&dir)
        .arg("--kek-file")
        .arg(app.data_dir.join("kek.key"))
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[tokio::test]
async fn the_audit_verify_command_exits_non_zero_and_names_the_first_bad_record() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        app.get("Patient").await;
    }
    ironfhir::audit::projection::catch_up(&app.store).await.unwrap();
    let ok = verify_cli(&app);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact: 3 records"));
    tamper(&app, "ALTER TABLE resource DISABLE TRIGGER USER; UPDATE resource SET content = jsonb_set(content, '{action}', '\"D\"') WHERE resource_type = 'AuditEvent' AND id = (SELECT resource_id FROM audit_log WHERE seq = 2); ALTER TABLE resource ENABLE TRIGGER USER").await;
    let bad = verify_cli(&app);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("record 2"), "{stderr}");
}

#[tokio::test]
async fn a_write_commits_an_audit_intent_that_its_event_completes_or_recovery_turns_into_an_event() {
    let app = TestApp::spawn().await;
    let created = app.create(&json!({"resourceType": "Patient", "gender": "other"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_intent").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(pending, 0, "the request's AuditEvent completed its intent");
    // Every way of writing marks its request as one whose intents the append deletes (reads
    // are not asked to delete any): update, delete, and a transaction's creates.
    let other = app.create(&json!({"resourceType": "Patient", "gender": "male"})).await;
    let other_id = other["id"].as_str().unwrap();
    let updated = app.send_json(Method::PUT, &format!("Patient/{other_id}"), &json!({"resourceType": "Patient", "id": other_id, "gender": "female"})).await;
    assert_eq!(updated.status(), 200);
    assert!(app.send_json(Method::DELETE, &format!("Patient/{other_id}"), &json!({})).await.status().is_success());
    let two = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c1c8e-0000-4000-8000-0000000000a1", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:6f1c1c8e-0000-4000-8000-0000000000a2", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]});
    assert_eq!(app.send_json(Method::POST, "", &two).await.status(), 200);
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 200);
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_intent").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(pending, 0, "every write's AuditEvent completed its intents");

    // A transaction that fails leaves no intent: the intent shares the write's transaction.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c1c8e-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "x", "gender": "not-a-gender"}, "request": {"method": "PUT", "url": "Patient/x"}}]});
    assert!(app.send_json(Method::POST, "", &bundle).await.status().is_client_error());
    let after_failure: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_intent").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(after_failure, 0);

    // The server stopped between a write's commit and its AuditEvent: the intent is left.
    sqlx::query(
        "INSERT INTO audit_intent (request_id, resource_type, id, version_id, agent, recorded) \
         VALUES (gen_random_uuid(), 'Patient', $1, 1, '{\"requestor\": true, \"altId\": \"crashed-client\"}', now() - interval '5 minutes')",
    )
    .bind(&id)
    .execute(app.store.pool())
    .await
    .unwrap();
    let trail = ironfhir::audit::trail::AuditTrail::start(app.store.clone());
    assert_eq!(ironfhir::audit::intent::recover(&app.store, &trail).await.unwrap(), 1);
    let recovered = events_of(&app, "crashed-client").await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["outcome"], "0");
    assert_eq!(entity_refs(&recovered[0]), [format!("Patient/{id}/_history/1")]);
    assert!(recovered[0]["outcomeDesc"].as_str().unwrap().contains("recovered"));
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_intent").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(pending, 0);
    assert_eq!(ironfhir::audit::intent::recover(&app.store, &trail).await.unwrap(), 0, "recovered once");
    assert!(verify(&app.store).await.unwrap().is_ok());
}

/// Two server instances on one database extend one chain (each takes the chain lock only for
/// its chain rows) and project it once (the projector's lock). Many events from both,
/// concurrently: every one is in the chain exactly once, the chain verifies, and each is a
/// searchable AuditEvent exactly once.
#[tokio::test]
async fn concurrent_appends_of_two_instances_make_one_intact_chain() {
    let app = TestApp::spawn().await;
    let first = ironfhir::audit::trail::AuditTrail::start(app.store.clone());
    let second = ironfhir::audit::trail::AuditTrail::start(app.store.clone());
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(app.store.pool()).await.unwrap();
    let event = |n: usize| {
        json!({"resourceType": "AuditEvent",
               "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
               "recorded": "2026-01-01T00:00:00Z", "outcome": "0",
               "agent": [{"requestor": true, "altId": "two-instances", "who": {"reference": format!("Practitioner/p{}", n % 7)}}],
               "source": {"observer": {"display": "test"}},
               "entity": [{"what": {"reference": format!("Patient/two-instances-{n}")}}]})
    };
    let appends = (0..200).map(|n| {
        let trail = if n % 2 == 0 { first.clone() } else { second.clone() };
        let event = event(n);
        tokio::spawn(async move { trail.record(event).await })
    });
    for append in futures::future::join_all(appends).await {
        append.unwrap().unwrap();
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(after - before, 200);
    let verified = verify(&app.store).await.unwrap().expect("the chain is intact");
    assert_eq!(verified, after);
    let recorded = events_of(&app, "two-instances").await;
    assert_eq!(recorded.len(), 200);
    let mut entities: Vec<String> = recorded.iter().flat_map(entity_refs).collect();
    entities.sort();
    entities.dedup();
    assert_eq!(entities.len(), 200, "each event once");
    // Searchable through the index rows the projection wrote (references and the date).
    let found = app.get_json("AuditEvent?entity=Patient/two-instances-17&date=2026-01-01").await;
    assert_eq!(found["total"], 1, "{found}");
    let by_agent = app.get_json("AuditEvent?agent=Practitioner/p3&_summary=count").await;
    assert_eq!(by_agent["total"], 29, "{by_agent}");
}

/// Appends one event straight to the chain, as another instance's writer would: this server's
/// projector is not woken, so only the catch-up before a read can make it searchable in time.
async fn append_elsewhere(app: &TestApp, entity: &str) {
    let id = uuid::Uuid::now_v7().to_string();
    let event = json!({"resourceType": "AuditEvent", "id": id, "meta": {"versionId": "1", "lastUpdated": "2026-01-02T00:00:00Z"},
                       "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
                       "recorded": "2026-01-02T00:00:00Z", "outcome": "0",
                       "agent": [{"requestor": true, "altId": "other-instance"}], "source": {"observer": {"display": "test"}},
                       "entity": [{"what": {"reference": entity}}]});
    append_text(app, &id, &event.to_string()).await;
}

/// Appends one event's text, whatever it holds, straight to the chain.
async fn append_text(app: &TestApp, id: &str, text: &str) {
    sqlx::query(
        "SELECT audit_append(ARRAY[now()], ARRAY[$1], ARRAY[$2], ARRAY[NULL::bytea], ARRAY[]::uuid[], ARRAY[NULL::bytea], ARRAY[NULL::text])",
    )
    .bind(id)
    .bind(text)
    .execute(app.store.pool())
    .await
    .unwrap();
}

/// Issue 21: one event that PostgreSQL refused to store as a resource stopped the projection,
/// and from then on every request reading AuditEvents answered 500. Such an event (here its
/// text holds a `\u0000` escape, which jsonb refuses) is passed over, stays in the chain, and
/// the events behind it are projected and found.
#[tokio::test]
async fn an_event_the_projection_cannot_store_does_not_block_the_events_behind_it() {
    let app = TestApp::spawn().await;
    app.get("Patient").await;
    let id = uuid::Uuid::now_v7().to_string();
    let unstorable = format!(r#"{{"resourceType":"AuditEvent","id":"{id}","recorded":"2026-01-02T00:00:00Z","outcome":"0","agent":[{{"requestor":true,"altId":"a\u0000b"}}]}}"#);
    append_text(&app, &id, &unstorable).await;
    append_elsewhere(&app, "Patient/behind-the-unstorable-one").await;
    for _ in 0..2 {
        let r = app.get("AuditEvent?entity=Patient/behind-the-unstorable-one").await;
        assert_eq!(r.status(), 200);
        let found: Value = r.json().await.unwrap();
        let appended = found["entry"].as_array().into_iter().flatten().filter(|e| e["resource"]["agent"][0]["altId"] == "other-instance");
        assert_eq!(appended.count(), 1, "{found}");
    }
    assert_eq!(app.get(&format!("AuditEvent/{id}")).await.status(), 404, "the unstorable event is not a resource");
    let later = app.get_json("AuditEvent?_count=1000").await;
    assert!(later["total"].as_u64().unwrap() >= 2, "the events before and after it are projected: {later}");
}

/// AuditEvents are projected from the chain off the request's path; a search, and a Bundle
/// entry reading AuditEvents, first brings the projection up to date, so each sees an event
/// recorded just before it.
#[tokio::test]
async fn searches_and_bundle_entries_see_every_event_recorded_before_them() {
    let app = TestApp::spawn().await;
    app.get("Patient").await;
    for n in 0..3 {
        let entity = format!("Patient/recorded-elsewhere-{n}");
        append_elsewhere(&app, &entity).await;
        let found = app.get_json(&format!("AuditEvent?entity={entity}")).await;
        assert_eq!(found["total"], 1, "search right after the append: {found}");

        let entity = format!("Patient/recorded-elsewhere-bundle-{n}");
        append_elsewhere(&app, &entity).await;
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("AuditEvent?entity={entity}")}}]});
        let r = app.send_json(Method::POST, "", &bundle).await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["entry"][0]["resource"]["total"], 1, "Bundle entry right after the append: {answer}");
    }
    assert!(verify(&app.store).await.unwrap().is_ok());
}

/// Under a light load the background projector makes every event searchable within moments,
/// with no AuditEvent read asking for it (the catch-up is for reads after a heavy load).
#[tokio::test]
async fn the_background_projector_keeps_up_with_a_light_load() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        app.get("Patient").await;
    }
    let (head,): (i64,) = sqlx::query_as("SELECT max(seq) FROM audit_log").fetch_one(app.store.pool()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (projected,): (i64,) = sqlx::query_as("SELECT projected_seq FROM audit_projection").fetch_one(app.store.pool()).await.unwrap();
        if projected >= head {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "10 s after the last request, records {projected}..{head} are still not projected");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
