//! Type-level search (http.html#search, search.html): every parameter type with its prefixes and
//! modifiers, the result parameters, paging, and POST `_search`.
//!
//! Resources get readable client ids (update-as-create), so each table row names the ids it
//! expects.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, entry_ids, expect_outcome, link};

/// Encodes `a=1&b=x\,y` (written unencoded for readability) as a query string.
fn encode(query: &str) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        s.append_pair(k, v);
    }
    s.finish()
}

/// The sorted ids a search finds (one page of up to 100).
async fn ids(app: &TestApp, rt: &str, query: &str) -> Vec<String> {
    let bundle = app.get_json(&format!("{rt}?{}&_count=100", encode(query))).await;
    assert_eq!(bundle["type"], "searchset");
    let mut ids = entry_ids(&bundle);
    assert_eq!(bundle["total"].as_u64(), Some(ids.len() as u64), "{rt}?{query}: total");
    ids.sort();
    ids
}

async fn check(app: &TestApp, rt: &str, cases: &[(&str, &[&str])]) {
    let mut failures = vec![];
    for (query, expected) in cases {
        let got = ids(app, rt, query).await;
        if got != *expected {
            failures.push(format!("{rt}?{query}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn token_search_matches_system_and_code_as_written() {
    let app = TestApp::spawn().await;
    let ident = |system: Option<&str>, value: &str| match system {
        Some(s) => json!([{"system": s, "value": value}]),
        None => json!([{"value": value}]),
    };
    app.put_new(json!({"resourceType": "Patient", "id": "a", "identifier": ident(Some("urn:sys:a"), "123"), "gender": "female", "active": true})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "b", "identifier": ident(Some("urn:sys:b"), "123"), "gender": "male"})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "c", "identifier": ident(None, "123")})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "d", "identifier": ident(Some("urn:sys:a"), "456"), "gender": "female"})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "e"})).await;
    check(&app, "Patient", &[
        ("identifier=urn:sys:a|123", &["a"]),
        ("identifier=|123", &["c"]),
        ("identifier=urn:sys:a|", &["a", "d"]),
        ("identifier=123", &["a", "b", "c"]),
        ("identifier=urn:sys:a|123,urn:sys:b|123", &["a", "b"]),
        ("identifier=urn:sys:a|999", &[]),
        ("identifier:not=urn:sys:a|123", &["b", "c", "d", "e"]),
        ("gender=female", &["a", "d"]),
        ("gender:not=female", &["b", "c", "e"]),
        ("gender=http://hl7.org/fhir/administrative-gender|male", &["b"]),
        ("active=true", &["a"]),
        ("gender=female&identifier=urn:sys:a|456", &["d"]),
    ]).await;
}

#[tokio::test]
async fn string_search_is_a_case_insensitive_prefix_match_with_exact_and_contains_modifiers() {
    let app = TestApp::spawn_sealing_nothing().await;
    app.put_new(json!({"resourceType": "Patient", "id": "s1", "name": [{"family": "Testperson", "given": ["Ann"]}]})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "s2", "name": [{"family": "Othertest", "given": ["Bob"]}]})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "s3", "name": [{"family": "Testperson,Alpha"}]})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "s4", "name": [{"family": "Beta"}]})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "s5", "name": [{"family": "Per%cent_under"}]})).await;
    check(&app, "Patient", &[
        ("family=testperson", &["s1", "s3"]),
        ("family=TESTP", &["s1", "s3"]),
        ("family=person", &[]),
        ("family:contains=person", &["s1", "s3"]),
        ("family:contains=TEST", &["s1", "s2", "s3"]),
        ("family:exact=Testperson", &["s1"]),
        ("family:exact=testperson", &[]),
        ("family=Testperson,Beta", &["s1", "s3", "s4"]),
        (r"family=Testperson\,Al", &["s3"]),
        (r"family=Testperson\,Beta", &[]),
        ("name=ann", &["s1"]),
        ("name=bob,beta", &["s2", "s4"]),
        ("given=an", &["s1"]),
        // LIKE wildcards in the value are literal characters.
        ("family=Per%", &["s5"]),
        ("family=P_r", &[]),
        ("family:contains=%", &["s5"]),
    ]).await;
}

#[tokio::test]
async fn reference_search_accepts_type_and_id_bare_id_type_modifier_and_absolute_url() {
    let app = TestApp::spawn().await;
    let obs = |id: &str, subject: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "Testcode"}, "subject": {"reference": subject}})
    };
    app.put_new(obs("r1", "Patient/a")).await;
    app.put_new(obs("r2", "Patient/b")).await;
    app.put_new(obs("r3", "Group/a")).await;
    app.put_new(obs("r4", &format!("{}/Patient/c", app.base))).await;
    let own_a = format!("subject={}/Patient/a", app.base);
    let own_c = format!("subject={}/Patient/c", app.base);
    check(&app, "Observation", &[
        ("subject=Patient/a", &["r1"]),
        ("subject=a", &["r1", "r3"]),
        ("subject:Patient=a", &["r1"]),
        ("subject:Group=a", &["r3"]),
        ("subject:Device=a", &[]),
        (&own_a, &["r1"]),
        (&own_c, &["r4"]),
        ("subject=Patient/c", &["r4"]),
        ("patient=a", &["r1"]),
        ("patient=Patient/b", &["r2"]),
        ("subject=Patient/a,Patient/b", &["r1", "r2"]),
    ]).await;
}

#[tokio::test]
async fn reference_search_does_not_match_references_to_other_servers() {
    let app = TestApp::spawn().await;
    let obs = |id: &str, subject: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "Testcode"}, "subject": {"reference": subject}})
    };
    app.put_new(obs("local", "Patient/a")).await;
    app.put_new(obs("remote", "http://other.example/fhir/Patient/a")).await;
    check(&app, "Observation", &[
        ("subject=Patient/a", &["local"]),
        ("subject=a", &["local"]),
        ("subject:Patient=a", &["local"]),
        ("subject=http://other.example/fhir/Patient/a", &["remote"]),
    ]).await;
}

#[tokio::test]
async fn date_search_compares_partial_dates_as_ranges_with_every_prefix() {
    let app = TestApp::spawn_sealing_nothing().await;
    for (id, birth) in [("a", Some("1980-02-03")), ("b", Some("1980-12-31")), ("c", Some("1979-06-15")), ("d", Some("1981-01-01")), ("e", None)] {
        let mut p = json!({"resourceType": "Patient", "id": id});
        if let Some(birth) = birth {
            p["birthDate"] = json!(birth);
        }
        app.put_new(p).await;
    }
    check(&app, "Patient", &[
        ("birthdate=1980", &["a", "b"]),
        ("birthdate=1980-02", &["a"]),
        ("birthdate=1980-02-03", &["a"]),
        ("birthdate=eq1980", &["a", "b"]),
        ("birthdate=ne1980", &["c", "d"]),
        ("birthdate=gt1980-02", &["b", "d"]),
        ("birthdate=ge1980-02", &["a", "b", "d"]),
        ("birthdate=lt1980-02-04", &["a", "c"]),
        ("birthdate=le1980-02-03", &["a", "c"]),
        ("birthdate=lt1980", &["c"]),
        ("birthdate=sa1980", &["d"]),
        ("birthdate=eb1980", &["c"]),
        // The day of `a` reaches past noon: part of it is after the search instant.
        ("birthdate=gt1980-02-03T12:00:00Z", &["a", "b", "d"]),
        ("birthdate=1979,1981", &["c", "d"]),
        ("birthdate=ge1980&birthdate=lt1981", &["a", "b"]),
        ("birthdate:missing=true", &["e"]),
        ("birthdate:missing=false", &["a", "b", "c", "d"]),
    ]).await;
}

#[tokio::test]
async fn observation_date_search_covers_effective_date_time_and_period() {
    let app = TestApp::spawn().await;
    let obs = |id: &str, effective: Value| {
        let mut o = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "Testcode"}});
        if let Value::Object(e) = effective {
            o.as_object_mut().unwrap().extend(e);
        }
        o
    };
    app.put_new(obs("o1", json!({"effectiveDateTime": "2021-03-04T10:00:00Z"}))).await;
    app.put_new(obs("o2", json!({"effectivePeriod": {"start": "2021-05-01", "end": "2021-05-31"}}))).await;
    app.put_new(obs("o3", json!({"effectiveDateTime": "2022-01-01"}))).await;
    app.put_new(obs("o4", json!({}))).await;
    app.put_new(obs("o5", json!({"effectivePeriod": {"start": "2023-01-01"}}))).await;
    check(&app, "Observation", &[
        ("date=2021-03-04", &["o1"]),
        ("date=2021-05", &["o2"]),
        ("date=2021", &["o1", "o2"]),
        // A day cannot contain a month-long period.
        ("date=2021-05-15", &[]),
        ("date=ge2021-05-10", &["o2", "o3", "o5"]),
        ("date=lt2021-04", &["o1"]),
        ("date=sa2021-04", &["o2", "o3", "o5"]),
        ("date=eb2021-05-15", &["o1"]),
        ("date=ne2021", &["o3", "o5"]),
        // An open-ended period goes on for ever.
        ("date=gt2030", &["o5"]),
        ("date:missing=true", &["o4"]),
    ]).await;
}

#[tokio::test]
async fn quantity_and_number_search_use_prefixes_precision_and_units() {
    let app = TestApp::spawn().await;
    let ucum = "http://unitsofmeasure.org";
    let obs = |id: &str, value: f64, system: &str, code: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "Testcode"},
               "valueQuantity": {"value": value, "unit": code, "system": system, "code": code}})
    };
    app.put_new(obs("q1", 3.0, ucum, "mg")).await;
    app.put_new(obs("q2", 7.0, ucum, "mg")).await;
    app.put_new(obs("q3", 7.0, ucum, "g")).await;
    app.put_new(obs("q4", 10.0, "http://example.org/units", "mg")).await;
    check(&app, "Observation", &[
        ("value-quantity=gt5|http://unitsofmeasure.org|mg", &["q2"]),
        ("value-quantity=ge7|http://unitsofmeasure.org|mg", &["q2"]),
        ("value-quantity=gt5||mg", &["q2", "q4"]),
        ("value-quantity=7", &["q2", "q3"]),
        ("value-quantity=7||g", &["q3"]),
        ("value-quantity=lt5", &["q1"]),
        ("value-quantity=le7|http://unitsofmeasure.org|mg", &["q1", "q2"]),
        ("value-quantity=ne7", &["q1", "q4"]),
        // Precision: 7.0 means [6.95, 7.05); 7.05 means [7.045, 7.055).
        ("value-quantity=7.0", &["q2", "q3"]),
        ("value-quantity=7.05", &[]),
        ("value-quantity=3,10", &["q1", "q4"]),
    ]).await;
    let risk = |id: &str, p: f64| {
        json!({"resourceType": "RiskAssessment", "id": id, "status": "final", "subject": {"reference": "Patient/a"},
               "prediction": [{"probabilityDecimal": p}]})
    };
    app.put_new(risk("r1", 0.8)).await;
    app.put_new(risk("r2", 0.2)).await;
    check(&app, "RiskAssessment", &[
        ("probability=gt0.5", &["r1"]),
        ("probability=0.2", &["r2"]),
        ("probability=le0.2", &["r2"]),
        ("probability=ge0.1", &["r1", "r2"]),
    ]).await;
}

#[tokio::test]
async fn uri_search_matches_exactly_below_and_above() {
    let app = TestApp::spawn().await;
    let q = |id: &str, url: &str| json!({"resourceType": "Questionnaire", "id": id, "status": "draft", "url": url});
    app.put_new(q("q1", "http://example.org/fhir/Questionnaire/intake")).await;
    app.put_new(q("q2", "http://example.org/fhir/Questionnaire/intake/v2")).await;
    app.put_new(q("q3", "http://other.example/Questionnaire/intake")).await;
    check(&app, "Questionnaire", &[
        ("url=http://example.org/fhir/Questionnaire/intake", &["q1"]),
        ("url:below=http://example.org/fhir", &["q1", "q2"]),
        ("url:above=http://example.org/fhir/Questionnaire/intake/v2/extra", &["q1", "q2"]),
        ("url=http://example.org/fhir", &[]),
    ]).await;
}

#[tokio::test]
async fn id_and_last_updated_select_by_id_and_time() {
    let app = TestApp::spawn().await;
    let mut stamps = vec![];
    for id in ["a", "b", "c"] {
        let created = app.put_new(json!({"resourceType": "Patient", "id": id})).await;
        stamps.push(created["meta"]["lastUpdated"].as_str().unwrap().to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let gt_a = format!("_lastUpdated=gt{}", stamps[0]);
    let ge_b = format!("_lastUpdated=ge{}", stamps[1]);
    let lt_c = format!("_lastUpdated=lt{}", stamps[2]);
    let eq_b = format!("_lastUpdated={}", stamps[1]);
    check(&app, "Patient", &[
        ("_id=a", &["a"]),
        ("_id=a,c", &["a", "c"]),
        ("_id=zzz", &[]),
        (&gt_a, &["b", "c"]),
        (&ge_b, &["b", "c"]),
        (&lt_c, &["a", "b"]),
        (&eq_b, &["b"]),
        ("_lastUpdated=gt2000-01-01", &["a", "b", "c"]),
        ("_lastUpdated=lt2000-01-01", &[]),
    ]).await;
}

#[tokio::test]
async fn count_and_next_links_page_through_all_results_without_duplicates() {
    let app = TestApp::spawn().await;
    for i in 0..7 {
        app.create(&json!({"resourceType": "Patient", "name": [{"family": format!("Testperson{i}")}]})).await;
    }
    app.create(&json!({"resourceType": "Patient", "name": [{"family": "Other"}]})).await;
    let mut page = app.get_json("Patient?family=testperson&_count=3&_total=accurate").await;
    let mut seen = entry_ids(&page);
    let mut pages = 1;
    assert_eq!(page["total"], 7);
    assert_eq!(seen.len(), 3);
    assert!(link(&page, "self").unwrap().contains("family=testperson"));
    while let Some(next) = link(&page, "next") {
        assert!(next.contains("family=testperson") && next.contains("_count=3"), "{next}");
        page = app.client.get(&next).bearer_auth(&app.token).send().await.unwrap().json().await.unwrap();
        seen.extend(entry_ids(&page));
        pages += 1;
        assert!(pages <= 5, "paging does not end");
    }
    assert_eq!(pages, 3);
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 7, "all results exactly once: {seen:?}");
    assert_eq!(seen.len(), 7);
}

#[tokio::test]
async fn total_is_counted_on_request_given_when_one_page_holds_all_and_summary_count_returns_only_the_total() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        app.create(&json!({"resourceType": "Patient", "active": true})).await;
    }
    let all = app.get_json("Patient?_count=2&_total=accurate").await;
    assert_eq!(all["total"], 3);
    assert_eq!(entry_ids(&all).len(), 2);
    // By default a count is only given when it costs nothing: the first page holds every match.
    let first = app.get_json("Patient?_count=2").await;
    assert!(first.get("total").is_none(), "{first}");
    assert_eq!(app.get_json("Patient?_count=3").await["total"], 3);
    // An estimate is the planner's guess: a number, not a count.
    assert!(app.get_json("Patient?_count=2&_total=estimate").await["total"].is_u64());
    let none = app.get_json("Patient?_total=none").await;
    assert!(none.get("total").is_none(), "{none}");
    assert_eq!(entry_ids(&none).len(), 3);
    let count = app.get_json("Patient?_summary=count&active=true").await;
    assert_eq!(count["total"], 3);
    assert!(count.get("entry").is_none_or(|e| e.as_array().unwrap().is_empty()), "{count}");
}

#[tokio::test]
async fn sort_orders_by_last_updated_and_id() {
    let app = TestApp::spawn().await;
    for id in ["m", "z", "a"] {
        app.put_new(json!({"resourceType": "Patient", "id": id})).await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let order = |bundle: Value| entry_ids(&bundle);
    assert_eq!(order(app.get_json("Patient?_sort=_lastUpdated").await), ["m", "z", "a"]);
    assert_eq!(order(app.get_json("Patient?_sort=-_lastUpdated").await), ["a", "z", "m"]);
    assert_eq!(order(app.get_json("Patient?_sort=_id").await), ["a", "m", "z"]);
    assert_eq!(order(app.get_json("Patient?_sort=-_id").await), ["z", "m", "a"]);
}

#[tokio::test]
async fn post_search_with_a_form_body_equals_get() {
    let app = TestApp::spawn().await;
    for (id, family) in [("a", "Testperson"), ("b", "Testperson-Two"), ("c", "Other")] {
        app.put_new(json!({"resourceType": "Patient", "id": id, "name": [{"family": family}], "gender": "female"})).await;
    }
    let get = app.get_json("Patient?family=testperson&gender=female&_sort=_id").await;
    let r = app
        .req(Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=testperson&gender=female&_sort=_id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let post: Value = r.json().await.unwrap();
    assert_eq!(entry_ids(&post), ["a", "b"]);
    assert_eq!(entry_ids(&post), entry_ids(&get));
    assert_eq!(post["total"], get["total"]);
    // Parameters in the URL and the body combine.
    let r = app
        .req(Method::POST, "Patient/_search?gender=female")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=Other")
        .send()
        .await
        .unwrap();
    let combined: Value = r.json().await.unwrap();
    assert_eq!(entry_ids(&combined), ["c"]);
}

#[tokio::test]
async fn unknown_parameters_are_ignored_and_left_out_of_the_self_link() {
    let app = TestApp::spawn().await;
    app.put_new(json!({"resourceType": "Patient", "id": "a", "gender": "female"})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "b", "gender": "male"})).await;
    let bundle = app.get_json("Patient?no-such-parameter=1&gender=female").await;
    assert_eq!(entry_ids(&bundle), ["a"]);
    let self_link = link(&bundle, "self").unwrap();
    assert!(self_link.contains("gender=female"), "{self_link}");
    assert!(!self_link.contains("no-such-parameter"), "{self_link}");
    let unfiltered = app.get_json("Patient?no-such-parameter=1").await;
    assert_eq!(unfiltered["total"], 2);
}

#[tokio::test]
async fn strict_handling_refuses_unknown_parameters_and_modifiers_with_400() {
    let app = TestApp::spawn().await;
    for query in ["no-such-parameter=1", "gender=female&no-such-parameter=1", "family:fuzzy=x", "_sort=no-such-parameter"] {
        let r = app.req(Method::GET, &format!("Patient?{query}")).header("prefer", "handling=strict").send().await.unwrap();
        expect_outcome(r, 400).await;
    }
    let r = app.req(Method::GET, "Patient?gender=female").header("prefer", "handling=strict").send().await.unwrap();
    assert_eq!(r.status(), 200, "known parameters pass in strict mode");
    let r = app.req(Method::GET, "Patient?no-such-parameter=1").header("prefer", "handling=lenient").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn search_sees_only_the_current_version_of_live_resources() {
    let app = TestApp::spawn().await;
    app.put_new(json!({"resourceType": "Patient", "id": "kept", "gender": "female"})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "gone", "gender": "female"})).await;
    app.put_new(json!({"resourceType": "Patient", "id": "changed", "gender": "female"})).await;
    assert!(app.req(Method::DELETE, "Patient/gone").send().await.unwrap().status().is_success());
    let r = app.send_json(Method::PUT, "Patient/changed", &json!({"resourceType": "Patient", "id": "changed", "gender": "male"})).await;
    assert_eq!(r.status(), 200);
    check(&app, "Patient", &[
        ("gender=female", &["kept"]),
        ("gender=male", &["changed"]),
        ("_id=gone", &[]),
        ("", &["changed", "kept"]),
    ]).await;
    assert_eq!(app.count("Patient").await, 2);
}

/// A search of many alternatives over many types was compiled by PostgreSQL's LLVM JIT, which
/// does not heed cancellation: the backend ran minutes past the statement timeout and even
/// `pg_terminate_backend` waited (so did every `DROP DATABASE` of the cluster). The store's
/// connections have JIT off.
#[tokio::test]
async fn the_store_connections_never_jit_compile() {
    let app = TestApp::spawn().await;
    let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(jit, "off");
}

/// `fhir_text_range` catches errors (a subtransaction), which a parallel worker may not start:
/// a search run in parallel failed with 500. It and its caller run in the leader only.
#[tokio::test]
async fn date_range_functions_are_not_run_by_parallel_workers() {
    let app = TestApp::spawn().await;
    for name in ["fhir_text_range", "fhir_value_range"] {
        let parallel: String = sqlx::query_scalar("SELECT proparallel::text FROM pg_proc WHERE proname = $1")
            .bind(name)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
        assert_eq!(parallel, "r", "{name}");
    }
}

#[tokio::test]
async fn count_zero_answers_the_total_and_no_entries() {
    // search.html#count: _count=0 asks for the number of matches only.
    let app = TestApp::spawn().await;
    for id in ["c0-1", "c0-2"] {
        app.put_new(serde_json::json!({"resourceType": "Patient", "id": id, "gender": "female"})).await;
    }
    app.put_new(serde_json::json!({"resourceType": "Patient", "id": "c0-3", "gender": "male"})).await;
    let bundle = app.get_json("Patient?gender=female&_count=0").await;
    assert_eq!(bundle["total"], 2, "{bundle}");
    assert!(bundle.get("entry").is_none_or(|e| e.as_array().is_some_and(|a| a.is_empty())), "{bundle}");
}
