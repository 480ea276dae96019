//! The search index tables: every write path keeps them in step with the resources, concurrent
//! writers of one resource leave exactly the last version's rows, `ironfhir reindex` rebuilds
//! them, and the benchmark's searches seek their indexes on a populated database.

use ironfhir::fhir::types::ResourceType;
use ironfhir::search;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, entry_ids};

/// Index rows of one resource, as `param=value` texts (all tables).
async fn index_rows(app: &TestApp, rt: &str, id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT param || '=' || normalized FROM search_string WHERE resource_type = $1 AND id = $2 \
         UNION ALL SELECT param || '=' || coalesce(system, '') || '|' || code FROM search_token WHERE resource_type = $1 AND id = $2 \
         UNION ALL SELECT param || '=' || target FROM search_reference WHERE resource_type = $1 AND id = $2 \
         UNION ALL SELECT param || '=' || low::text FROM search_date WHERE resource_type = $1 AND id = $2 \
         UNION ALL SELECT param || '=' || value::text FROM search_number WHERE resource_type = $1 AND id = $2 \
         UNION ALL SELECT param || '=' || uri FROM search_uri WHERE resource_type = $1 AND id = $2",
    )
    .bind(rt)
    .bind(id)
    .fetch_all(app.store.pool())
    .await
    .unwrap()
}

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let bundle = app.get_json(query).await;
    let mut ids = entry_ids(&bundle);
    ids.sort();
    ids
}

#[tokio::test]
async fn every_write_path_keeps_the_index_in_step_with_the_resource() {
    let app = TestApp::spawn().await;
    // create (one statement)
    let created = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Alvarez"}], "gender": "female"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    // A sealed name has blind rows only (crypto::blind), never its value in the index tables.
    assert!(!index_rows(&app, "Patient", &id).await.iter().any(|row| row.contains("alvarez")));
    let blind: i64 = sqlx::query_scalar("SELECT count(*) FROM search_blind WHERE resource_type = 'Patient' AND id = $1 AND param = 'family'")
        .bind(&id)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(blind, "alvarez".len() as i64 + 1, "one row per prefix and one for :exact");
    assert_eq!(ids(&app, "Patient?family=alva").await, vec![id.clone()]);

    // update: the old value's rows are gone
    app.put(json!({"resourceType": "Patient", "id": id, "name": [{"family": "Brandt"}], "gender": "female"})).await;
    assert!(ids(&app, "Patient?family=alva").await.is_empty());
    assert_eq!(ids(&app, "Patient?family=bran").await, vec![id.clone()]);

    // update with If-Match (transaction path)
    let r = app
        .req(Method::PUT, &format!("Patient/{id}"))
        .header("If-Match", "W/\"2\"")
        .json(&json!({"resourceType": "Patient", "id": id, "name": [{"family": "Castro"}], "gender": "male"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(ids(&app, "Patient?gender=female").await.is_empty());
    assert_eq!(ids(&app, "Patient?gender=male&family=cas").await, vec![id.clone()]);

    // patch
    let r = app
        .req(Method::PATCH, &format!("Patient/{id}"))
        .header("Content-Type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/name/0/family", "value": "Dubois"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(ids(&app, "Patient?family=cas").await.is_empty());
    assert_eq!(ids(&app, "Patient?family=dub").await, vec![id.clone()]);

    // conditional create (transaction path) and a transaction Bundle's creates (one statement)
    let r = app
        .req(Method::POST, "Organization")
        .header("If-None-Exist", "identifier=urn:org|o-1")
        .json(&json!({"resourceType": "Organization", "identifier": [{"system": "urn:org", "value": "o-1"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
         "resource": {"resourceType": "Encounter", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": {"reference": format!("Patient/{id}")}},
         "request": {"method": "POST", "url": "Encounter"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                      "encounter": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
                      "subject": {"reference": format!("{}/Patient/{id}", app.base)},
                      "valueQuantity": {"value": 72, "system": "http://unitsofmeasure.org", "code": "/min"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let r = app.send_json(Method::POST, "", &bundle).await;
    assert_eq!(r.status(), 200);
    assert_eq!(ids(&app, "Organization?identifier=urn:org|o-1").await.len(), 1);
    assert_eq!(ids(&app, &format!("Encounter?subject=Patient/{id}")).await.len(), 1);
    // An absolute reference to this server is indexed as the local one.
    assert_eq!(ids(&app, &format!("Observation?subject={id}&value-quantity=72||/min")).await.len(), 1);
    assert_eq!(ids(&app, &format!("Observation?encounter.subject={id}")).await.len(), 1, "chain over an urn:uuid rewritten reference");

    // delete: no rows remain, the resource is found by nothing
    let r = app.req(Method::DELETE, &format!("Patient/{id}")).send().await.unwrap();
    assert!(r.status().is_success());
    assert!(index_rows(&app, "Patient", &id).await.is_empty());
    assert!(ids(&app, "Patient?family=dub").await.is_empty());
}

#[tokio::test]
async fn concurrent_updates_of_one_resource_leave_only_the_last_versions_rows() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    app.put(json!({"resourceType": "Patient", "id": "race", "name": [{"family": "Start"}]})).await;
    let mut tasks = vec![];
    for i in 0..12 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"resourceType": "Patient", "id": "race", "name": [{"family": format!("Writer{i}")}]});
            let r = app.send_json(Method::PUT, "Patient/race", &body).await;
            assert!(r.status().is_success(), "{}", r.status());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let current = app.get_json("Patient/race").await;
    let family = current["name"][0]["family"].as_str().unwrap().to_lowercase();
    // Names are blind-indexed: one row per prefix plus one for :exact, of the current version only.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM search_blind WHERE resource_type = 'Patient' AND id = 'race' AND param = 'family'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(rows, family.chars().count() as i64 + 1, "exactly the current version is indexed");
    assert_eq!(ids(&app, &format!("Patient?family={family}")).await, vec!["race".to_owned()]);
}

#[tokio::test]
async fn reindex_rebuilds_wiped_index_tables_from_the_resources() {
    let app = TestApp::spawn().await;
    for i in 0..7 {
        app.put(json!({"resourceType": "Patient", "id": format!("re-{i}"), "name": [{"family": format!("Reindexed{i}")}],
                        "birthDate": "1980-02-0{}".replace("{}", &(i + 1).to_string())}))
            .await;
    }
    app.put(json!({"resourceType": "Patient", "id": "gone", "name": [{"family": "Reindexed-deleted"}]})).await;
    assert!(app.req(Method::DELETE, "Patient/gone").send().await.unwrap().status().is_success());
    for table in ["search_string", "search_token", "search_reference", "search_date", "search_number", "search_uri", "search_blind"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}"))).execute(app.store.pool()).await.unwrap();
    }
    assert!(ids(&app, "Patient?family=reindexed").await.is_empty(), "searches read the index tables");

    // The AuditEvents of the requests so far are in `resource` (projected from the audit chain),
    // and no request comes between here and the count below.
    ironfhir::audit::projection::catch_up(&app.store).await.unwrap();
    let url = app.database_url.clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironfhir"))
        .args(["reindex", "--batch-size", "3", "--data-dir"])
        .arg(std::env::temp_dir().join("ironfhir-reindex-test"))
        .arg("--kek-file")
        .arg(app.data_dir.join("kek.key"))
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Every live resource: the 7 Patients and the AuditEvents of the requests so far.
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM resource WHERE NOT deleted").fetch_one(app.store.pool()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{live} resources re-indexed")), "{live} live: {stdout}");
    assert_eq!(ids(&app, "Patient?family=reindexed").await.len(), 7, "the deleted one stays unfound");
    assert_eq!(ids(&app, "Patient?birthdate=1980-02-05").await, vec!["re-4"]);
    assert_eq!(ids(&app, "Patient?birthdate=1980-02").await.len(), 7, "month precision of the blind date index");
    let state = ironfhir::reindex::state(&app.store).await.unwrap();
    assert!(state.current, "the rebuild recorded the definitions it used and no resume point");
}

#[tokio::test]
async fn a_search_parameter_added_as_a_resource_works_without_code_changes_and_indexes_older_data() {
    let app = TestApp::spawn().await;
    let nick = |id: &str, nickname: &str| {
        json!({"resourceType": "Patient", "id": id, "name": [{"family": "Official"}, {"use": "nickname", "given": [nickname]}]})
    };
    app.put(nick("before", "Bobby")).await;
    let strict = |query: &str| app.req(Method::GET, query).header("Prefer", "handling=strict").send();
    assert_eq!(strict("Patient?nickname=bob").await.unwrap().status(), 400, "unknown before it is defined");

    let mut sp = json!({"resourceType": "SearchParameter", "id": "patient-nickname", "url": "http://example.org/fhir/SearchParameter/patient-nickname",
        "name": "nickname", "status": "active", "description": "A patient's nickname", "code": "nickname", "base": ["Patient"],
        "type": "string", "expression": "Patient.name.where(use='nickname').given"});
    app.put(sp.clone()).await;
    app.put(nick("after", "Bobbie")).await;
    app.put(nick("other", "Alex")).await;
    // The resource written before the definition is indexed by the background rebuild.
    let mut found = vec![];
    for _ in 0..100 {
        found = ids(&app, "Patient?nickname=bob").await;
        if found.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(found, vec!["after", "before"]);
    assert_eq!(ids(&app, "Patient?nickname:exact=Alex").await, vec!["other"]);
    // The CapabilityStatement lists it with the official parameters.
    let metadata = app.get_json("metadata").await;
    let patient = metadata["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap().clone();
    let listed = patient["searchParam"].as_array().unwrap().iter().any(|p| {
        p["name"] == "nickname" && p["definition"] == "http://example.org/fhir/SearchParameter/patient-nickname" && p["type"] == "string"
    });
    assert!(listed, "{}", patient["searchParam"]);
    assert_eq!(ids(&app, "Patient?family=official&nickname=ale").await, vec!["other"]);

    // FHIRPath that has no jsonpath form (`first()`) works too: the index answers.
    app.put(json!({"resourceType": "SearchParameter", "id": "patient-first-name", "url": "http://example.org/fhir/SearchParameter/patient-first-name",
        "name": "first-name", "status": "active", "description": "The first given name", "code": "first-name", "base": ["Patient"],
        "type": "string", "expression": "Patient.name.given.first()"}))
        .await;
    app.put(json!({"resourceType": "Patient", "id": "firsts", "name": [{"given": ["Primo", "Secondo"]}]})).await;
    assert_eq!(ids(&app, "Patient?first-name=prim").await, vec!["firsts"]);
    assert!(ids(&app, "Patient?first-name=second").await.is_empty());

    // Changing the expression changes what matches; retiring the parameter removes it.
    sp["expression"] = json!("Patient.name.family");
    app.put(sp.clone()).await;
    let mut changed = vec![];
    for _ in 0..100 {
        changed = ids(&app, "Patient?nickname=offic").await;
        if changed.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let rows: Vec<String> = sqlx::query_scalar("SELECT id || ':' || normalized FROM search_string WHERE param = 'nickname' ORDER BY 1")
        .fetch_all(app.store.pool())
        .await
        .unwrap();
    let state: Vec<String> = sqlx::query_scalar("SELECT concat_ws(',', definitions_hash, building_hash, resume_type, resume_id) FROM search_index_state")
        .fetch_all(app.store.pool())
        .await
        .unwrap();
    assert_eq!(changed, vec!["after", "before", "other"], "index rows {rows:?}, state {state:?}");
    assert!(ids(&app, "Patient?nickname=bob").await.is_empty());
    sp["status"] = json!("retired");
    app.put(sp).await;
    assert_eq!(strict("Patient?nickname=offic").await.unwrap().status(), 400);
}

/// Fills a database with generated resources and index rows straight in SQL (the shape the
/// benchmark's data has, at 1/10 of its size), then asserts that each benchmark search's plan
/// seeks indexes and scans no table.
#[tokio::test]
async fn the_benchmark_searches_use_index_scans_on_a_populated_database() {
    let app = TestApp::spawn().await;
    let pool = app.store.pool();
    for statement in [
        "INSERT INTO resource (resource_type, id, version_id, last_updated, content) \
           SELECT t, t || '-' || g, 1, now(), jsonb_build_object('resourceType', t, 'id', t || '-' || g) \
           FROM generate_series(1, 20000) g, unnest(ARRAY['Patient', 'Practitioner', 'Encounter', 'MedicationRequest', 'Appointment']) t",
        "INSERT INTO resource (resource_type, id, version_id, last_updated, content) \
           SELECT 'Observation', 'Observation-' || g, 1, now(), jsonb_build_object('resourceType', 'Observation', 'id', 'Observation-' || g) \
           FROM generate_series(1, 100000) g",
        // Names and identifiers of patients are sealed: their rows are blind (keyed hashes).
        "INSERT INTO search_blind SELECT 'Patient', 'Patient-' || g, p, decode(md5('name' || (g % 5000) || h), 'hex') \
           FROM generate_series(1, 20000) g, unnest(ARRAY['name', 'family']) p, generate_series(1, 8) h",
        "INSERT INTO search_blind SELECT 'Patient', 'Patient-' || g, 'identifier', decode(md5('mrn-' || g || h), 'hex') \
           FROM generate_series(1, 20000) g, generate_series(1, 3) h",
        "INSERT INTO search_reference SELECT 'Observation', 'Observation-' || g, p, 'Patient/Patient-' || (g % 20000) \
           FROM generate_series(1, 100000) g, unnest(ARRAY['subject', 'patient']) p",
        "INSERT INTO search_token SELECT 'Observation', 'Observation-' || g, 'code', 'http://loinc.org', 'code-' || (g % 40) FROM generate_series(1, 100000) g",
        "INSERT INTO search_date SELECT 'Observation', 'Observation-' || g, 'date', d, d + interval '1 second' \
           FROM generate_series(1, 100000) g, LATERAL (SELECT timestamptz '2015-01-01' + (g % 3000) * interval '1 day' AS d) x",
        "INSERT INTO search_reference SELECT 'MedicationRequest', 'MedicationRequest-' || g, p, 'Patient/Patient-' || (g % 20000) \
           FROM generate_series(1, 20000) g, unnest(ARRAY['subject', 'patient']) p",
        "INSERT INTO search_reference SELECT 'MedicationRequest', 'MedicationRequest-' || g, 'requester', 'Practitioner/Practitioner-' || (g % 500) \
           FROM generate_series(1, 20000) g",
        "INSERT INTO search_token SELECT 'MedicationRequest', 'MedicationRequest-' || g, 'status', NULL, \
           (ARRAY['active', 'completed', 'stopped'])[1 + g % 3] FROM generate_series(1, 20000) g",
        "INSERT INTO search_reference SELECT 'Appointment', 'Appointment-' || g, p, 'Practitioner/Practitioner-' || (g % 500) \
           FROM generate_series(1, 20000) g, unnest(ARRAY['practitioner', 'actor']) p",
        "INSERT INTO search_date SELECT 'Appointment', 'Appointment-' || g, 'date', d, d + interval '30 minutes' \
           FROM generate_series(1, 20000) g, LATERAL (SELECT timestamptz '2024-01-01' + (g % 700) * interval '1 day' AS d) x",
        "INSERT INTO search_reference SELECT 'Encounter', 'Encounter-' || g, p, 'Patient/Patient-' || (g % 20000) \
           FROM generate_series(1, 20000) g, unnest(ARRAY['subject', 'patient']) p",
        "ANALYZE",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(pool).await.unwrap();
    }
    let searches = [
        ("Patient", "name=name12"),
        ("Patient", "identifier=urn:mrn|mrn-77"),
        ("Observation", "subject=Patient-7&code=http://loinc.org|code-7&date=ge2016-01-01"),
        ("MedicationRequest", "patient=Patient-7&status=active&_include=MedicationRequest:requester"),
        ("Appointment", "practitioner=Practitioner-7&date=ge2024-03-01&date=lt2024-06-01"),
        ("Encounter", "subject:Patient.name=name12"),
    ];
    for (rt, query) in searches {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let request = search::parse_search(&ResourceType::parse(rt).unwrap(), &pairs, true, &app.base).unwrap();
        let plan = search::explain(pool, &request).await.unwrap();
        let mut nodes = vec![];
        collect_nodes(&plan[0]["Plan"], &mut nodes);
        let scans: Vec<&(String, String)> = nodes.iter().filter(|(kind, _)| kind == "Seq Scan").collect();
        assert!(scans.is_empty(), "{rt}?{query} scans {scans:?}: {plan:#}");
        assert!(
            nodes.iter().any(|(kind, index)| kind.contains("Index") && index.starts_with("search_")),
            "{rt}?{query} uses no index of the index tables: {nodes:?}"
        );
    }
}

/// (node type, index name or relation) of every node of a JSON plan.
fn collect_nodes(node: &Value, out: &mut Vec<(String, String)>) {
    let kind = node["Node Type"].as_str().unwrap_or_default().to_owned();
    let on = node["Index Name"].as_str().or(node["Relation Name"].as_str()).unwrap_or_default().to_owned();
    out.push((kind, on));
    for child in node["Plans"].as_array().into_iter().flatten() {
        collect_nodes(child, out);
    }
}
