//! Round trips (JSON → XML → JSON and XML → JSON → XML → JSON) and the input pre-scan's rules.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{json_to_xml, xml_to_value};

/// The official R4 examples kept for the FHIRPath tests.
fn fixture(name: &str) -> String {
    let path = format!("{}/../../tests/fixtures/fhir-test-cases/r4/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn round_trip(resource: &Value) -> Value {
    let xml = json_to_xml(resource, false).unwrap();
    xml_to_value(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"))
}

#[test]
fn json_round_trips_through_xml() {
    let cases = [
        json!({
            "resourceType": "Patient", "id": "p1",
            "meta": {"versionId": "2", "tag": [{"system": "http://e.org/t", "code": "x"}]},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\" class=\"c\"><p>Jim  <b>Chalmers</b> (&quot;J&quot;) &amp; co</p><br/></div>"},
            "contained": [{"resourceType": "Organization", "id": "org", "name": "Synthetic Org", "active": true}],
            "extension": [{"url": "http://e.org/ext", "valueString": "multi\nline \"quoted\" <tag>"}],
            "active": true,
            "name": [{"use": "official", "family": "Testperson", "_family": {"extension": [{"url": "http://e.org/own", "valueString": "VV"}]},
                      "given": ["A", "B"], "_given": [null, {"id": "g2", "extension": [{"url": "http://e.org/g", "valueCode": "x"}]}]}],
            "gender": "female",
            "birthDate": "1970-01-01", "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-01-01T10:00:00Z"}]},
            "multipleBirthInteger": 2,
            "managingOrganization": {"reference": "#org"}
        }),
        json!({
            "resourceType": "Bundle", "type": "collection",
            "entry": [
                {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "resource": {"resourceType": "Observation", "status": "final",
                    "code": {"text": "heart rate"}, "valueQuantity": {"value": 72.5, "unit": "/min"}}},
                {"resource": {"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">second</div>"},
                    "contained": [{"resourceType": "Practitioner", "id": "pr", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">contained</div>"}}]}},
                {"resource": {"resourceType": "Parameters", "parameter": [{"name": "p", "resource": {"resourceType": "Basic", "code": {"text": "inner"}}}]}}
            ]
        }),
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": "tab\there & there", "expression": ["Patient.name[0]"]}]
        }),
    ];
    for resource in cases {
        assert_eq!(round_trip(&resource), resource);
    }
}

#[test]
fn official_xml_examples_round_trip() {
    for name in ["patient-example.xml", "observation-example.xml", "questionnaire-example.xml", "valueset-example-expansion.xml", "codesystem-example.xml"] {
        let first = xml_to_value(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = round_trip(&first);
        assert_eq!(again, first, "{name}");
    }
}

#[test]
fn the_narrative_is_kept_exactly() {
    // fhirbolt alone dropped the div's attributes and the whitespace between words and tags.
    let first = xml_to_value(&fixture("patient-example.xml")).unwrap();
    let div = first["text"]["div"].as_str().unwrap();
    assert!(div.starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\">"), "{div}");
    assert!(div.contains("Peter James \n              <b>Chalmers</b> (&quot;Jim&quot;)"), "{div}");
    let xml = r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml" class="summary"><p title='say "hi"' xml:lang="en">a <b>b</b></p></div></text></Patient>"#;
    let value = xml_to_value(xml).unwrap();
    assert_eq!(
        value["text"]["div"],
        r#"<div xmlns="http://www.w3.org/1999/xhtml" class="summary"><p title="say &quot;hi&quot;" xml:lang="en">a <b>b</b></p></div>"#
    );
    // Narratives of contained and Bundle resources are placed by their path.
    let xml = r#"<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/>
        <entry><resource><Patient><active value="true"/></Patient></resource></entry>
        <entry><resource><Patient><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"> one </div></text>
            <contained><Organization><id value="a"/></Organization></contained>
            <contained><Organization><id value="b"/><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"> two </div></text></Organization></contained>
        </Patient></resource></entry></Bundle>"#;
    let value = xml_to_value(xml).unwrap();
    assert_eq!(value["entry"][1]["resource"]["text"]["div"], "<div xmlns=\"http://www.w3.org/1999/xhtml\"> one </div>");
    assert_eq!(value["entry"][1]["resource"]["contained"][1]["text"]["div"], "<div xmlns=\"http://www.w3.org/1999/xhtml\"> two </div>");
}

#[test]
fn attributes_fhir_xml_does_not_define_are_refused() {
    let err = xml_to_value(r#"<Patient xmlns="http://hl7.org/fhir"><active value="true" foo="bar"/></Patient>"#).unwrap_err();
    assert!(err.contains("Patient.active") && err.contains("'foo'"), "{err}");
    let err = xml_to_value(r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="x" url="http://e.org"/></name></Patient>"#).unwrap_err();
    assert!(err.contains("Patient.name.family") && err.contains("'url'"), "{err}");
    let err = xml_to_value(r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p xlink:href="x">y</p></div></text></Patient>"#)
        .unwrap_err();
    assert!(err.contains("xlink:href"), "{err}");
    // What FHIR XML does define still parses.
    let ok = xml_to_value(
        r#"<Patient xmlns="http://hl7.org/fhir"><id value="a"/><extension url="http://e.org/e"><valueString id="v" value="s"/></extension><active value="true"/></Patient>"#,
    )
    .unwrap();
    assert_eq!(ok, json!({"resourceType": "Patient", "id": "a", "extension": [{"url": "http://e.org/e", "valueString": "s", "_valueString": {"id": "v"}}], "active": true}));
}

#[test]
fn hostile_documents_are_refused_in_linear_time() {
    // 100,000 attributes took 14 s in fhirbolt's duplicate check.
    let attrs: String = (0..100_000).map(|i| format!(" a{i}=\"x\"")).collect();
    let xml = format!(r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"{attrs}/></Patient>"#);
    let started = Instant::now();
    let err = xml_to_value(&xml).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(err.contains("Patient.active"), "{err}");
    // Nesting beyond the bound is refused; within it fhirbolt's recursion has the stack it needs.
    let nest = |n: usize| {
        let mut inner = String::from(r#"<valueString value="x"/>"#);
        for _ in 0..n {
            inner = format!(r#"<extension url="http://e.org/x">{inner}</extension>"#);
        }
        format!(r#"<Patient xmlns="http://hl7.org/fhir">{inner}</Patient>"#)
    };
    assert!(xml_to_value(&nest(200)).unwrap_err().contains("nested more than 128"));
    assert!(xml_to_value(&nest(60)).is_ok());
    // Namespace declarations in scope are bounded; DTDs and processing instructions refused.
    let decls: String = (0..40).map(|i| format!(" xmlns:p{i}=\"urn:x\"")).collect();
    assert!(xml_to_value(&format!(r#"<Patient xmlns="http://hl7.org/fhir"{decls}/>"#)).unwrap_err().contains("namespace declarations"));
    assert!(xml_to_value(r#"<!DOCTYPE x [<!ENTITY a "b">]><Patient xmlns="http://hl7.org/fhir"/>"#).unwrap_err().contains("document type"));
    assert!(xml_to_value(r#"<Patient xmlns="http://hl7.org/fhir"><?pi x?></Patient>"#).unwrap_err().contains("processing"));
    assert!(xml_to_value(r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"></Patient>"#).unwrap_err().contains("well-formed"));
}
