//! history at instance, type and system level (http.html#history): newest first, deletions as
//! entries without a resource, `_since`, `_count` with `next` links, `total`.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_outcome, link};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}]})
}

/// `(type/id, version)` of every entry of a history bundle, in order.
fn versions(bundle: &Value) -> Vec<(String, i64)> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let etag = e["response"]["etag"].as_str().unwrap();
                    let version = etag.trim_start_matches("W/").trim_matches('"').parse().unwrap();
                    let url = e["fullUrl"].as_str().unwrap();
                    let key = url.rsplitn(3, '/').take(2).collect::<Vec<_>>();
                    (format!("{}/{}", key[1], key[0]), version)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn update(app: &TestApp, mut resource: Value, family: &str) -> Value {
    resource["name"][0]["family"] = json!(family);
    let rt = resource["resourceType"].as_str().unwrap().to_owned();
    let id = resource["id"].as_str().unwrap().to_owned();
    let r = app.send_json(Method::PUT, &format!("{rt}/{id}"), &resource).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn delete(app: &TestApp, path: &str) {
    let r = app.req(Method::DELETE, path).send().await.unwrap();
    assert!(r.status().is_success(), "DELETE {path}: {}", r.status());
}

#[tokio::test]
async fn instance_history_lists_every_version_newest_first_with_deletions_as_entries() {
    let app = TestApp::spawn().await;
    let v1 = app.create(&patient("Testperson")).await;
    let id = v1["id"].as_str().unwrap().to_owned();
    update(&app, v1, "Testperson-Two").await;
    delete(&app, &format!("Patient/{id}")).await;
    let r = app.send_json(Method::PUT, &format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id, "active": true})).await;
    assert_eq!(r.status(), 201);

    let bundle = app.get_json(&format!("Patient/{id}/_history")).await;
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["total"], 4);
    let entries = bundle["entry"].as_array().unwrap();
    let got: Vec<i64> = versions(&bundle).into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, [4, 3, 2, 1], "newest first");
    assert_eq!(entries[0]["resource"]["active"], true);
    // The deletion: an entry with request.method DELETE and no resource.
    assert_eq!(entries[1]["request"]["method"], "DELETE");
    assert_eq!(entries[1]["request"]["url"], format!("Patient/{id}"));
    assert!(entries[1].get("resource").is_none(), "{}", entries[1]);
    assert_eq!(entries[2]["request"]["method"], "PUT");
    assert_eq!(entries[2]["resource"]["name"][0]["family"], "Testperson-Two");
    assert_eq!(entries[3]["request"]["method"], "POST");
    assert_eq!(entries[3]["resource"]["meta"]["versionId"], "1");
    for e in entries {
        assert!(e["response"]["status"].is_string() && e["response"]["lastModified"].is_string(), "{e}");
    }
}

#[tokio::test]
async fn type_and_system_history_cover_their_scope_newest_first() {
    let app = TestApp::spawn().await;
    let p = app.create(&patient("Testperson")).await;
    let o = app.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "Testcode"}})).await;
    update(&app, p.clone(), "Testperson-Two").await;
    delete(&app, &format!("Observation/{}", o["id"].as_str().unwrap())).await;
    let pid = format!("Patient/{}", p["id"].as_str().unwrap());
    let oid = format!("Observation/{}", o["id"].as_str().unwrap());

    let patients = app.get_json("Patient/_history").await;
    assert_eq!(patients["total"], 2);
    assert_eq!(versions(&patients), [(pid.clone(), 2), (pid.clone(), 1)]);

    let system = app.get_json("_history").await;
    assert_eq!(system["type"], "history");
    assert_eq!(system["total"], 4);
    assert_eq!(versions(&system), [(oid.clone(), 2), (pid.clone(), 2), (oid.clone(), 1), (pid, 1)]);
    assert_eq!(system["entry"][0]["request"]["method"], "DELETE");
}

#[tokio::test]
async fn history_of_an_unknown_resource_answers_404() {
    let app = TestApp::spawn().await;
    expect_outcome(app.get("Patient/no-such-id/_history").await, 404).await;
    // A type with no resources has an empty history, not an error.
    let empty = app.get_json("Patient/_history").await;
    assert_eq!(empty["total"], 0);
    assert!(empty.get("entry").is_none_or(|e| e.as_array().unwrap().is_empty()));
}

#[tokio::test]
async fn since_keeps_only_versions_at_or_after_the_instant() {
    let app = TestApp::spawn().await;
    let a = app.create(&patient("Testperson-A")).await;
    let b = app.create(&patient("Testperson-B")).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let b2 = update(&app, b.clone(), "Testperson-B2").await;
    let since = b2["meta"]["lastUpdated"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let a2 = update(&app, a.clone(), "Testperson-A2").await;
    let bid = format!("Patient/{}", b["id"].as_str().unwrap());
    let aid = format!("Patient/{}", a["id"].as_str().unwrap());
    assert!(a2["meta"]["lastUpdated"].as_str().unwrap() > since.as_str());

    let query = form_urlencoded::Serializer::new(String::new()).append_pair("_since", &since).finish();
    let bundle = app.get_json(&format!("Patient/_history?{query}")).await;
    assert_eq!(versions(&bundle), [(aid.clone(), 2), (bid.clone(), 2)]);
    assert_eq!(bundle["total"], 2);
    let instance = app.get_json(&format!("{aid}/_history?{query}")).await;
    assert_eq!(versions(&instance), [(aid, 2)]);
    let system = app.get_json(&format!("_history?{query}")).await;
    assert_eq!(system["total"], 2);
    // The next link keeps _since.
    let paged = app.get_json(&format!("Patient/_history?{query}&_count=1")).await;
    let next = link(&paged, "next").expect("a next link");
    assert!(next.contains("_since="), "{next}");
    let next_page: Value = app.client.get(&next).bearer_auth(&app.token).send().await.unwrap().json().await.unwrap();
    assert_eq!(versions(&next_page), [(bid, 2)]);
    assert!(link(&next_page, "next").is_none());
}

#[tokio::test]
async fn next_links_page_through_every_version_exactly_once_while_writes_go_on() {
    let app = TestApp::spawn().await;
    let mut expected = HashSet::new();
    let mut resources = vec![];
    for i in 0..5 {
        let created = app.create(&patient(&format!("Testperson-{i}"))).await;
        let updated = update(&app, created.clone(), &format!("Testperson-{i}b")).await;
        let id = format!("Patient/{}", created["id"].as_str().unwrap());
        expected.insert((id.clone(), 1));
        expected.insert((id, 2));
        resources.push(updated);
    }
    let first = app.get_json("Patient/_history?_count=3").await;
    assert_eq!(first["total"], 10);
    let mut seen: Vec<(String, i64)> = versions(&first);
    let mut page = first;
    let mut pages = 1;
    while let Some(next) = link(&page, "next") {
        // Writes between pages: new versions of paged resources, a new resource and a deletion.
        let which = pages % resources.len();
        resources[which] = update(&app, resources[which].clone(), &format!("Testperson-page{pages}")).await;
        app.create(&patient("Testperson-late")).await;
        let r = app.client.get(&next).bearer_auth(&app.token).send().await.unwrap();
        assert_eq!(r.status(), 200, "{next}");
        page = r.json().await.unwrap();
        seen.extend(versions(&page));
        pages += 1;
        assert!(pages < 20, "paging does not end");
    }
    assert_eq!(pages, 4, "10 versions in pages of 3");
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no version repeated: {seen:?}");
    assert_eq!(unique, expected, "every version present when paging began, and only those");
    assert!(app.history_total("Patient").await > 10, "the writes did happen");
}

#[tokio::test]
async fn count_limits_a_history_page_and_total_counts_all() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("Testperson")).await;
    let mut current = created.clone();
    for i in 0..4 {
        current = update(&app, current, &format!("Testperson-{i}")).await;
    }
    let id = created["id"].as_str().unwrap();
    let page = app.get_json(&format!("Patient/{id}/_history?_count=2")).await;
    assert_eq!(page["total"], 5);
    assert_eq!(versions(&page).into_iter().map(|(_, v)| v).collect::<Vec<_>>(), [5, 4]);
    assert!(link(&page, "self").is_some());
    assert!(link(&page, "next").is_some());
}

#[tokio::test]
async fn at_keeps_only_the_versions_current_at_that_instant() {
    let app = TestApp::spawn().await;
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(20));
    let a1 = app.create(&patient("Testperson-A")).await;
    let aid = format!("Patient/{}", a1["id"].as_str().unwrap());
    pause().await;
    let a2 = update(&app, a1.clone(), "Testperson-A2").await;
    pause().await;
    let b1 = app.create(&patient("Testperson-B")).await;
    let bid = format!("Patient/{}", b1["id"].as_str().unwrap());
    pause().await;
    // The instant: a is at version 2 (version 1 was superseded), b at version 1.
    let at = b1["meta"]["lastUpdated"].as_str().unwrap().to_owned();
    pause().await;
    update(&app, a2, "Testperson-A3").await;
    delete(&app, &bid).await;

    let query = form_urlencoded::Serializer::new(String::new()).append_pair("_at", &at).finish();
    let bundle = app.get_json(&format!("Patient/_history?{query}")).await;
    let mut got = versions(&bundle);
    got.sort();
    let mut want = vec![(aid.clone(), 2), (bid.clone(), 1)];
    want.sort();
    assert_eq!(got, want, "the version of each resource current at {at}");
    assert_eq!(bundle["total"], 2);
    let instance = app.get_json(&format!("{aid}/_history?{query}")).await;
    assert_eq!(versions(&instance), [(aid, 2)]);
    // Before anything existed: nothing was current.
    let before = app.get_json("Patient/_history?_at=2000-01-01T00:00:00Z").await;
    assert_eq!(before["total"], 0);
}
