//! Compartment search, system-level search with `_type`, and the token `:text`, identifier
//! `:of-type`, reference `:identifier` modifiers and accent-insensitive string search.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::TestApp;

async fn fixture(app: &TestApp) {
    app.put(json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Müller-Lüdenscheidt", "given": ["Zoë"]}],
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                        "system": "urn:example:mrn", "value": "MRN-1"}]}))
    .await;
    app.put(json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Mueller"}],
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]},
                        "system": "urn:example:ssn", "value": "MRN-1"}]}))
    .await;
    for (id, patient, text) in [("o1", "p1", "Heart rate"), ("o2", "p2", "Body temperature"), ("o3", "p1", "Body weight")] {
        app.put(json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "0000-0", "display": format!("{text} display")}], "text": text},
            "subject": {"reference": format!("Patient/{patient}")}}))
        .await;
    }
    app.put(json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1", "identifier": {"system": "urn:example:mrn", "value": "MRN-1"}}}))
    .await;
}

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let r = app.get(query).await;
    assert_eq!(r.status(), 200, "{query}");
    let body: Value = r.json().await.unwrap();
    let mut out: Vec<String> = body["entry"]
        .as_array()
        .map(|l| l.iter().map(|e| format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test]
async fn a_compartment_search_returns_only_that_patients_resources_of_the_type() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    assert_eq!(ids(&app, "Patient/p1/Observation").await, ["Observation/o1", "Observation/o3"]);
    assert_eq!(ids(&app, "Patient/p1/Observation?code:text=heart").await, ["Observation/o1"]);
    assert_eq!(ids(&app, "Patient/p2/Observation").await, ["Observation/o2"]);
    assert_eq!(ids(&app, "Patient/p1/Encounter").await, ["Encounter/e1"]);
    // Organization is not in the Patient compartment.
    assert!(ids(&app, "Patient/p1/Organization").await.is_empty());
    let body: Value = app.get("Patient/p1/Observation").await.json().await.unwrap();
    assert!(body["link"][0]["url"].as_str().unwrap().starts_with(&format!("{}/Patient/p1/Observation?", app.base)));
    assert_eq!(app.get("Patient/p1/NoSuchType").await.status(), 404);
}

#[tokio::test]
async fn system_search_spans_the_listed_types_and_refuses_parameters_they_do_not_share() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    assert_eq!(ids(&app, "?_type=Patient,Encounter").await, ["Encounter/e1", "Patient/p1", "Patient/p2"]);
    assert_eq!(ids(&app, "?_id=o2,p1").await, ["Observation/o2", "Patient/p1"]);
    assert_eq!(ids(&app, "?_type=Observation&code:text=body").await, ["Observation/o2", "Observation/o3"]);
    assert_eq!(app.get("?_type=Patient,Observation&name=x").await.status(), 400, "Observation has no name parameter");
    assert_eq!(app.get("?name=x").await.status(), 400, "not a common parameter");
    let body: Value = app.get("?_type=Patient").await.json().await.unwrap();
    assert_eq!(body["total"], 2);
    let observations_only = app.token_with("system/Observation.rs");
    let r = app.client.get(format!("{}?_type=Patient", app.base)).bearer_auth(&observations_only).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = app.client.get(format!("{}?_id=o1,p1", app.base)).bearer_auth(&observations_only).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["total"], 1, "only the types the token may search");
}

#[tokio::test]
async fn token_text_identifier_of_type_and_reference_identifier_modifiers() {
    let app = TestApp::spawn_sealing_nothing().await;
    fixture(&app).await;
    assert_eq!(ids(&app, "Observation?code:text=BODY").await, ["Observation/o2", "Observation/o3"]);
    assert_eq!(ids(&app, "Observation?code:text=heart rate disp").await, ["Observation/o1"], "Coding.display counts");
    let mr = "http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-1";
    assert_eq!(ids(&app, &format!("Patient?identifier:of-type={}", mr.replace('|', "%7C"))).await, ["Patient/p1"]);
    assert_eq!(ids(&app, "Patient?identifier=MRN-1").await, ["Patient/p1", "Patient/p2"]);
    assert_eq!(app.get("Patient?identifier:of-type=MRN-1").await.status(), 400);
    assert_eq!(ids(&app, "Encounter?subject:identifier=urn:example:mrn%7CMRN-1").await, ["Encounter/e1"]);
    assert!(ids(&app, "Encounter?subject:identifier=urn:example:ssn%7CMRN-1").await.is_empty());
}

#[tokio::test]
async fn string_search_ignores_case_and_accents() {
    let app = TestApp::spawn_sealing_nothing().await;
    fixture(&app).await;
    assert_eq!(ids(&app, "Patient?family=muller").await, ["Patient/p1"]);
    assert_eq!(ids(&app, "Patient?family=MÜLLER").await, ["Patient/p1"]);
    assert_eq!(ids(&app, "Patient?given=zoe").await, ["Patient/p1"]);
    assert_eq!(ids(&app, "Patient?name:contains=ludensch").await, ["Patient/p1"]);
    assert_eq!(ids(&app, "Patient?family=mue").await, ["Patient/p2"]);
    assert!(ids(&app, "Patient?family:exact=muller-ludenscheidt").await.is_empty(), ":exact stays exact");
}

/// Ids in the order the search returned them.
async fn ordered(app: &TestApp, query: &str) -> Vec<String> {
    let r = app.get(query).await;
    assert_eq!(r.status(), 200, "{query}");
    let body: Value = r.json().await.unwrap();
    body["entry"].as_array().map(|l| l.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn sort_orders_by_any_parameter_with_several_keys_and_missing_values_last() {
    let app = TestApp::spawn_sealing_nothing().await;
    for (id, family, birth) in [("a", "Brown", Some("1990-05-01")), ("b", "adams", Some("1985")), ("c", "Ćwik", None), ("d", "Brown", Some("1970-01-01"))] {
        let mut p = json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
        if let Some(b) = birth {
            p["birthDate"] = json!(b);
        }
        app.put(p).await;
    }
    assert_eq!(ordered(&app, "Patient?_sort=family").await, ["b", "a", "d", "c"], "case and accents fold; ties by id");
    assert_eq!(ordered(&app, "Patient?_sort=-family").await, ["c", "a", "d", "b"]);
    assert_eq!(ordered(&app, "Patient?_sort=birthdate").await, ["d", "b", "a", "c"], "no birth date sorts last");
    assert_eq!(ordered(&app, "Patient?_sort=-birthdate").await, ["a", "b", "d", "c"]);
    assert_eq!(ordered(&app, "Patient?_sort=family,-birthdate").await, ["b", "a", "d", "c"]);
    assert_eq!(ordered(&app, "Patient?_sort=family,birthdate").await, ["b", "d", "a", "c"]);
    assert_eq!(ordered(&app, "Patient?_sort=family,birthdate&_count=2&_offset=2").await, ["a", "c"], "paging keeps the order");
    let self_link: Value = app.get("Patient?_sort=family,-birthdate").await.json().await.unwrap();
    assert!(self_link["link"][0]["url"].as_str().unwrap().contains("_sort=family%2C-birthdate"));
    let strict = app.req(Method::GET, "Patient?_sort=nosuchparam").header("prefer", "handling=strict").send().await.unwrap();
    assert_eq!(strict.status(), 400);
}

#[tokio::test]
async fn composite_parameters_match_both_parts_on_the_same_element() {
    let app = TestApp::spawn().await;
    let bp = |id: &str, systolic: f64, diastolic: f64| {
        json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": "Patient/p1"},
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": systolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]})
    };
    app.put(bp("high", 150.0, 95.0)).await;
    app.put(bp("normal", 118.0, 76.0)).await;
    app.put(json!({"resourceType": "Observation", "id": "hr", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 150, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}))
    .await;
    let q = |s: &str| s.replace('|', "%7C").replace('$', "%24");
    assert_eq!(ids(&app, &q("Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140")).await, ["Observation/high"]);
    // The diastolic 95 is > 90 but it is not the systolic component: both parts must hold on
    // the same component.
    assert!(ids(&app, &q("Observation?component-code-value-quantity=http://loinc.org|8480-6$lt100")).await.is_empty());
    assert_eq!(ids(&app, &q("Observation?component-code-value-quantity=8462-4$lt80")).await, ["Observation/normal"]);
    // OR over composite values.
    assert_eq!(
        ids(&app, &q("Observation?component-code-value-quantity=8480-6$gt140,8462-4$lt80")).await,
        ["Observation/high", "Observation/normal"]
    );
    // On the resource itself (code + value), not on components.
    assert_eq!(ids(&app, &q("Observation?code-value-quantity=http://loinc.org|8867-4$ge150")).await, ["Observation/hr"]);
    assert!(ids(&app, &q("Observation?code-value-quantity=8480-6$gt140")).await.is_empty());
    // combo: either the resource or a component.
    assert_eq!(ids(&app, &q("Observation?combo-code-value-quantity=8480-6$gt140")).await, ["Observation/high"]);
    assert_eq!(app.get(&q("Observation?code-value-quantity=8867-4")).await.status(), 400, "both parts are needed");
    let cs: Value = app.get("metadata").await.json().await.unwrap();
    let observation = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Observation").unwrap();
    assert!(observation["searchParam"].as_array().unwrap().iter().any(|p| p["name"] == "code-value-quantity" && p["type"] == "composite"));
}

/// Follows `next` links from `first` and returns every id seen, in order.
async fn walk(app: &TestApp, first: &str, between_pages: impl AsyncFn(usize)) -> Vec<String> {
    let mut seen = vec![];
    let mut url = format!("{}/{first}", app.base);
    for page in 0.. {
        let body: Value = app.client.get(&url).bearer_auth(&app.token).send().await.unwrap().json().await.unwrap();
        seen.extend(body["entry"].as_array().into_iter().flatten().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()));
        let next = body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| l["url"].as_str().unwrap().to_owned());
        match next {
            Some(next) => url = next,
            None => break,
        }
        between_pages(page).await;
        assert!(page < 100, "paging does not end");
    }
    seen
}

#[tokio::test]
async fn paging_neither_repeats_nor_skips_matches_while_resources_are_created_and_deleted() {
    let app = TestApp::spawn_sealing_nothing().await;
    for i in 0..30 {
        app.put(json!({"resourceType": "Patient", "id": format!("m{i:02}"), "gender": "female"})).await;
    }
    // Between pages, resources sorting before and after the position are created and one
    // already seen is deleted: the remaining original matches are each seen exactly once.
    let churn = async |page: usize| {
        app.put(json!({"resourceType": "Patient", "id": format!("a-new-{page}"), "gender": "female"})).await;
        app.put(json!({"resourceType": "Patient", "id": format!("z-new-{page}"), "gender": "female"})).await;
        if page == 0 {
            assert!(app.req(Method::DELETE, "Patient/m00").send().await.unwrap().status().is_success());
        }
    };
    for query in ["Patient?gender=female&_count=7", "Patient?gender=female&_count=7&_sort=-_lastUpdated"] {
        let seen = walk(&app, query, churn).await;
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{query}: no match twice: {seen:?}");
        for i in 1..30 {
            assert!(seen.contains(&format!("m{i:02}")), "{query}: m{i:02} was skipped: {seen:?}");
        }
    }
    // A cursor from another search order is refused rather than misread.
    assert_eq!(app.get("Patient?_sort=family&_cursor=abc").await.status(), 400);
}

#[tokio::test]
async fn text_searches_the_narrative_and_content_searches_every_string() {
    let app = TestApp::spawn_sealing_nothing().await;
    app.put(json!({"resourceType": "Patient", "id": "t1", "name": [{"family": "Narrativeperson"}],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Allergic to <b>penicillin</b>, prefers mornings</p></div>"}}))
    .await;
    app.put(json!({"resourceType": "Patient", "id": "t2", "name": [{"family": "Penicillinson"}]})).await;
    assert_eq!(ids(&app, "Patient?_text=PENICILLIN").await, ["Patient/t1"]);
    assert_eq!(ids(&app, "Patient?_text=allergic%20mornings").await, ["Patient/t1"], "all words, any order");
    assert!(ids(&app, "Patient?_text=allergic%20evenings").await.is_empty());
    assert!(ids(&app, "Patient?_text=xhtml").await.is_empty(), "markup is not text");
    assert_eq!(ids(&app, "Patient?_content=penicillin").await, ["Patient/t1", "Patient/t2"]);
    assert_eq!(ids(&app, "Patient?_content=narrativeperson,nobody").await, ["Patient/t1"]);
    // Accents fold on both sides (the non-ASCII path of fhir_normalize), and element names
    // are not content even though the document's JSON text holds them.
    app.put(json!({"resourceType": "Patient", "id": "t3", "name": [{"family": "Ñúñez-Zoë"}]})).await;
    assert_eq!(ids(&app, "Patient?_content=NUNEZ-zoe").await, ["Patient/t3"]);
    assert!(ids(&app, "Patient?_content=resourcetype").await.is_empty());
    assert!(ids(&app, "Patient?_text=xmlns").await.is_empty());
}
