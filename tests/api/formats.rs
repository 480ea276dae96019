//! Formats and representations: JSON and XML both ways chosen by `_format` or `Accept`
//! (http.html#mime-type), 406 when neither can be met, `_pretty`, `_summary` and `_elements`
//! (search.html#summary, #elements) with the SUBSETTED tag, and HEAD.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, entry_ids, expect_outcome};

const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

fn rich_patient() -> Value {
    json!({
        "resourceType": "Patient",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Testperson</div>"},
        "identifier": [{"system": "urn:test", "value": "1"}],
        "name": [{"family": "Testperson", "given": ["Ann"]}],
        "gender": "female",
        "maritalStatus": {"text": "Testmarried"},
        "communication": [{"language": {"text": "Testlanguage"}}]
    })
}

fn is_subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"].as_array().is_some_and(|tags| tags.iter().any(|t| t["system"] == SUBSETTED_SYSTEM && t["code"] == "SUBSETTED"))
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// What a read answers for a `_format` / `Accept` combination.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Json,
    Xml,
    NotAcceptable,
}

#[tokio::test]
async fn the_response_format_follows_format_then_accept_and_is_406_when_unmet() {
    let app = TestApp::spawn().await;
    let created = app.create(&rich_patient()).await;
    let id = created["id"].as_str().unwrap();
    let cases: [(&str, Option<&str>, Answer); 17] = [
        ("", None, Answer::Json),
        ("", Some("*/*"), Answer::Json),
        ("", Some("application/fhir+json"), Answer::Json),
        ("", Some("application/json"), Answer::Json),
        ("", Some("text/html, application/fhir+json;q=0.9, */*;q=0.8"), Answer::Json),
        ("", Some("application/fhir+xml;q=0.5, application/fhir+json"), Answer::Json),
        ("_format=json", None, Answer::Json),
        ("_format=xml", None, Answer::Xml),
        ("_format=application/fhir%2Bxml", None, Answer::Xml),
        ("", Some("application/fhir+xml"), Answer::Xml),
        ("", Some("application/xml"), Answer::Xml),
        // _format overrides Accept (http.html#mime-type).
        ("_format=xml", Some("application/fhir+json"), Answer::Xml),
        ("_format=json", Some("application/fhir+xml"), Answer::Json),
        ("", Some("text/plain"), Answer::NotAcceptable),
        ("", Some("text/html, image/png"), Answer::NotAcceptable),
        ("_format=foo", None, Answer::NotAcceptable),
        ("_format=text/turtle", None, Answer::NotAcceptable),
    ];
    for (query, accept, expected) in cases {
        let mut req = app.req(Method::GET, &format!("Patient/{id}?{query}"));
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        let r = req.send().await.unwrap();
        let case = format!("?{query} Accept: {accept:?}");
        match expected {
            Answer::Json => {
                assert_eq!(r.status(), 200, "{case}");
                assert!(content_type(&r).starts_with("application/fhir+json"), "{case}: {}", content_type(&r));
                let body: Value = r.json().await.unwrap();
                assert_eq!(body, created, "{case}");
            }
            Answer::Xml => {
                assert_eq!(r.status(), 200, "{case}");
                assert!(content_type(&r).starts_with("application/fhir+xml"), "{case}: {}", content_type(&r));
                let body = r.text().await.unwrap();
                assert!(body.starts_with("<?xml"), "{case}: {body}");
                assert!(body.contains("<Patient xmlns=\"http://hl7.org/fhir\">"), "{case}: {body}");
                assert!(body.contains(&format!("<id value=\"{id}\"/>")), "{case}: {body}");
                assert!(body.contains("<family value=\"Testperson\"/>"), "{case}: {body}");
            }
            Answer::NotAcceptable => {
                expect_outcome(r, 406).await;
            }
        }
    }
    // Bundles and the CapabilityStatement in XML too.
    let search = app.get("Patient?_format=xml").await.text().await.unwrap();
    assert!(search.contains("<Bundle xmlns=\"http://hl7.org/fhir\">") && search.contains("<type value=\"searchset\"/>"), "{search}");
    let cs = app.client.get(format!("{}/metadata?_format=xml", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(cs.contains("<CapabilityStatement xmlns=\"http://hl7.org/fhir\">"), "{cs}");
    // A write whose answer cannot be rendered is refused before anything is stored.
    let r = app
        .req(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("accept", "text/plain")
        .body(rich_patient().to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(r, 406).await;
    assert_eq!(app.count("Patient").await, 1);
}

#[tokio::test]
async fn an_xml_body_is_stored_and_reads_back_as_the_same_json() {
    let app = TestApp::spawn().await;
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <identifier><system value="urn:test"/><value value="x-1"/></identifier>
  <active value="true"/>
  <name><family value="Testperson"/><given value="Ann"/><given value="Marie"/></name>
  <gender value="female"/>
  <birthDate value="1980-02-03"/>
  <multipleBirthInteger value="2"/>
</Patient>"#;
    let r = app.req(Method::POST, "Patient").header("content-type", "application/fhir+xml").body(xml).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let id = location.split("/Patient/").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let stored = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(stored["identifier"], json!([{"system": "urn:test", "value": "x-1"}]));
    assert_eq!(stored["active"], json!(true), "XML booleans become JSON booleans");
    assert_eq!(stored["name"], json!([{"family": "Testperson", "given": ["Ann", "Marie"]}]));
    assert_eq!(stored["gender"], "female");
    assert_eq!(stored["birthDate"], "1980-02-03");
    assert_eq!(stored["multipleBirthInteger"], json!(2), "XML integers become JSON numbers");
    // And an XML update of the same resource.
    let update = format!(r#"<Patient xmlns="http://hl7.org/fhir"><id value="{id}"/><active value="false"/></Patient>"#);
    let r = app.req(Method::PUT, &format!("Patient/{id}")).header("content-type", "application/fhir+xml").body(update).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let stored = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(stored["active"], json!(false));
    assert_eq!(stored["meta"]["versionId"], "2");
    assert!(stored.get("name").is_none());
}

#[tokio::test]
async fn pretty_output_has_newlines_and_default_output_is_compact() {
    let app = TestApp::spawn().await;
    let created = app.create(&rich_patient()).await;
    let id = created["id"].as_str().unwrap();
    let compact = app.get(&format!("Patient/{id}")).await.text().await.unwrap();
    assert!(!compact.contains('\n'), "{compact}");
    let pretty = app.get(&format!("Patient/{id}?_pretty=true")).await.text().await.unwrap();
    assert!(pretty.contains("\n  \"id\""), "{pretty}");
    assert_eq!(serde_json::from_str::<Value>(&pretty).unwrap(), created);
    let pretty_xml = app.get(&format!("Patient/{id}?_pretty=true&_format=xml")).await.text().await.unwrap();
    assert!(pretty_xml.contains(">\n"), "{pretty_xml}");
}

#[tokio::test]
async fn summary_true_keeps_only_summary_elements_and_tags_subsetted() {
    let app = TestApp::spawn().await;
    let created = app.create(&rich_patient()).await;
    let id = created["id"].as_str().unwrap();
    let summary = app.get_json(&format!("Patient/{id}?_summary=true")).await;
    assert_eq!(summary["id"], id);
    assert_eq!(summary["identifier"], created["identifier"]);
    assert_eq!(summary["name"], created["name"]);
    assert_eq!(summary["gender"], "female");
    for dropped in ["text", "maritalStatus", "communication"] {
        assert!(summary.get(dropped).is_none(), "{dropped} is not a summary element: {summary}");
    }
    assert!(is_subsetted(&summary), "{summary}");
    // The stored resource is untouched.
    let full = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(full, created);
    assert!(!is_subsetted(&full));
}

#[tokio::test]
async fn summary_text_keeps_the_narrative_and_summary_data_drops_it() {
    let app = TestApp::spawn().await;
    let created = app.create(&rich_patient()).await;
    let id = created["id"].as_str().unwrap();

    let text = app.get_json(&format!("Patient/{id}?_summary=text")).await;
    assert_eq!(text["text"], created["text"]);
    assert_eq!(text["id"], id);
    for dropped in ["name", "gender", "identifier", "maritalStatus"] {
        assert!(text.get(dropped).is_none(), "_summary=text keeps no {dropped}: {text}");
    }
    assert!(is_subsetted(&text));

    let data = app.get_json(&format!("Patient/{id}?_summary=data")).await;
    assert!(data.get("text").is_none(), "{data}");
    for kept in ["name", "gender", "identifier", "maritalStatus", "communication"] {
        assert_eq!(data[kept], created[kept], "_summary=data keeps {kept}");
    }
    assert!(is_subsetted(&data));

    let full = app.get_json(&format!("Patient/{id}?_summary=false")).await;
    assert_eq!(full, created, "_summary=false is the whole resource");
}

#[tokio::test]
async fn elements_keeps_the_named_elements_with_id_and_meta_and_tags_subsetted() {
    let app = TestApp::spawn().await;
    let created = app.create(&rich_patient()).await;
    let id = created["id"].as_str().unwrap();
    let subset = app.get_json(&format!("Patient/{id}?_elements=name")).await;
    assert_eq!(subset["resourceType"], "Patient");
    assert_eq!(subset["id"], id);
    assert_eq!(subset["meta"]["versionId"], "1");
    assert_eq!(subset["name"], created["name"]);
    for dropped in ["gender", "identifier", "maritalStatus", "communication"] {
        assert!(subset.get(dropped).is_none(), "{dropped}: {subset}");
    }
    assert!(is_subsetted(&subset));
    let two = app.get_json(&format!("Patient/{id}?_elements=name,gender")).await;
    assert_eq!(two["gender"], "female");
    assert!(two.get("identifier").is_none());
}

#[tokio::test]
async fn summary_and_elements_apply_to_every_search_entry() {
    let app = TestApp::spawn().await;
    app.create(&rich_patient()).await;
    app.create(&rich_patient()).await;
    let bundle = app.get_json("Patient?_summary=true").await;
    assert_eq!(entry_ids(&bundle).len(), 2);
    for entry in bundle["entry"].as_array().unwrap() {
        let r = &entry["resource"];
        assert!(r.get("maritalStatus").is_none() && r.get("text").is_none() && r["name"].is_array(), "{r}");
        assert!(is_subsetted(r));
    }
    let bundle = app.get_json("Patient?_elements=gender").await;
    for entry in bundle["entry"].as_array().unwrap() {
        let r = &entry["resource"];
        assert!(r.get("name").is_none() && r["gender"] == "female", "{r}");
        assert!(is_subsetted(r));
    }
}

#[tokio::test]
async fn head_on_a_read_returns_the_headers_without_a_body() {
    let app = TestApp::spawn().await;
    let created = app.create(&rich_patient()).await;
    let id = created["id"].as_str().unwrap();
    let r = app.req(Method::HEAD, &format!("Patient/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    assert!(r.headers().contains_key("last-modified"));
    assert!(content_type(&r).starts_with("application/fhir+json"));
    assert!(r.bytes().await.unwrap().is_empty());
    let r = app.req(Method::HEAD, "Patient/does-not-exist").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.bytes().await.unwrap().is_empty());
}
