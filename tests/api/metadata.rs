//! The CapabilityStatement (http.html#capabilities).

use serde_json::Value;

use crate::helpers::TestApp;

#[tokio::test]
async fn metadata_is_open_and_lists_every_resource_type() {
    let app = TestApp::spawn().await;
    let r = app.client.get(format!("{}/metadata", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cs: Value = r.json().await.unwrap();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146);
}

#[tokio::test]
async fn metadata_advertises_json_xml_and_every_interaction_the_server_implements() {
    let app = TestApp::spawn().await;
    let cs: Value = app.client.get(format!("{}/metadata", app.base)).send().await.unwrap().json().await.unwrap();
    let formats: Vec<&str> = cs["format"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(formats.iter().any(|f| f.contains("json")) && formats.iter().any(|f| f.contains("xml")), "{formats:?}");
    let patient = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap();
    let interactions: Vec<&str> = patient["interaction"].as_array().unwrap().iter().filter_map(|i| i["code"].as_str()).collect();
    for code in ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"] {
        assert!(interactions.contains(&code), "Patient lacks {code}");
    }
    let params: Vec<&str> = patient["searchParam"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for name in ["_id", "_lastUpdated", "identifier", "name", "family", "birthdate", "gender"] {
        assert!(params.contains(&name), "Patient search lacks {name}");
    }
    assert_eq!(patient["conditionalDelete"], "single");
    assert_eq!(patient["conditionalCreate"], true);
    assert_eq!(patient["conditionalUpdate"], true);
}

#[tokio::test]
async fn every_resource_type_in_metadata_answers_a_search_with_a_searchset() {
    let app = TestApp::spawn().await;
    let cs: Value = app.client.get(format!("{}/metadata", app.base)).send().await.unwrap().json().await.unwrap();
    let types: Vec<String> =
        cs["rest"][0]["resource"].as_array().unwrap().iter().map(|r| r["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(types.len(), 146);
    let mut failures = vec![];
    for rt in &types {
        let r = app.get(&format!("{rt}?_count=1")).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        // An empty database, but for the AuditEvents of these very requests.
        let empty = rt == "AuditEvent" || body["total"] == 0;
        if status != 200 || body["resourceType"] != "Bundle" || body["type"] != "searchset" || !empty {
            failures.push(format!("{rt}: {status} {body}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
