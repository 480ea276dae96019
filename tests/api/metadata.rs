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
