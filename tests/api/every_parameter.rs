//! Every search parameter the CapabilityStatement advertises runs without a server error, for
//! every resource type: the SQL built from the official definitions is valid PostgreSQL.

use serde_json::Value;

use crate::helpers::TestApp;

fn sample(param_type: &str) -> &'static str {
    match param_type {
        "string" => "a",
        "token" => "http://example.org|a",
        "reference" => "Patient/1",
        "date" => "ge2020-01",
        "number" => "gt1",
        "quantity" => "gt1|http://unitsofmeasure.org|mg",
        "uri" => "http://example.org/a",
        _ => "a",
    }
}

/// `a$b` from the samples of the composite's component types.
fn composite_sample(rt: &str, url: &str) -> String {
    let defs = ironfhir::fhir::definitions::definitions();
    let sp = defs.search_params(rt).into_iter().find(|s| s.url == url).unwrap();
    sp.component
        .iter()
        .map(|c| {
            let component_url = c["definition"].as_str().unwrap();
            let csp = defs.search_params(rt).into_iter().find(|s| s.url == component_url).unwrap();
            sample(&csp.param_type)
        })
        .collect::<Vec<_>>()
        .join("$")
}

#[tokio::test]
async fn every_advertised_search_parameter_answers_200() {
    let app = TestApp::spawn().await;
    let cs: Value = app.client.get(format!("{}/metadata", app.base)).send().await.unwrap().json().await.unwrap();
    let mut checked = 0;
    let mut failures = vec![];
    for resource in cs["rest"][0]["resource"].as_array().unwrap() {
        let rt = resource["type"].as_str().unwrap();
        let params = resource["searchParam"].as_array().unwrap();
        // A row to evaluate the jsonpath expressions against (PostgreSQL only parses them when
        // there is a row); written directly, as it need not be a valid resource.
        sqlx::query("INSERT INTO resource (resource_type, id, version_id, last_updated, content) VALUES ($1, 'x', 1, now(), $2)")
            .bind(rt)
            .bind(serde_json::json!({"resourceType": rt, "id": "x", "meta": {"tag": [{"code": "a"}]}}))
            .execute(app.store.pool())
            .await
            .unwrap();
        // One request per parameter (ANDed parameters would stop at the first false one), and
        // one with `:missing`.
        for p in params {
            let name = p["name"].as_str().unwrap();
            let value = match p["type"].as_str().unwrap() {
                _ if name == "_lastUpdated" => "gt2020".to_owned(),
                // Blind-indexed (sealed) dates are searched by equality only.
                "date" if ironfhir::crypto::policy::is_protected(rt, name) => "2020-01".to_owned(),
                "composite" => composite_sample(rt, p["definition"].as_str().unwrap()),
                other => sample(other).to_owned(),
            };
            for (key, value) in [(name.to_owned(), value.as_str()), (format!("{name}:missing"), "false")] {
                if name == "_id" || (name == "_lastUpdated" && key.ends_with(":missing")) {
                    continue;
                }
                let url = format!("{rt}?{}", form_urlencoded::Serializer::new(String::new()).append_pair(&key, value).finish());
                let r = app.req(reqwest::Method::GET, &url).header("prefer", "handling=strict").send().await.unwrap();
                if r.status() != 200 {
                    failures.push(format!("{rt}?{key}: {} {}", r.status(), r.text().await.unwrap_or_default()));
                }
                checked += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{} failures, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(checked > 1500, "checked only {checked} parameters");
}
