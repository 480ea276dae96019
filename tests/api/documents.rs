//! Documents: uploads and downloads of Binary content through pre-signed URLs, for the
//! embedded store (URLs signed and served by the server) and for S3 (a real S3-compatible
//! server that verifies SigV4: s3s-fs, started here; `IRONFHIR_TEST_S3_SERVER` names its
//! binary, .ci/run installs it). Every refusal is checked by its status and by what it left:
//! nothing stored, no URL handed out.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use ironfhir::documents::s3::S3Settings;
use ironfhir::documents::signing::UrlSigner;
use ironfhir::documents::{DocumentStore, Documents};
use reqwest::Method;
use serde_json::{Value, json};
use sha1::Digest;

use crate::helpers::{Options, TestApp, expect_outcome};

/// An S3-compatible server for one test (killed when dropped): s3s-fs, which verifies SigV4
/// signatures and expiry (s3rver 3.7.1 checks only the expiry of SigV4 URLs: not enough here).
struct S3Server {
    child: std::process::Child,
    endpoint: String,
    dir: PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const BUCKET: &str = "docs";
const ACCESS_KEY: &str = "ironfhir-test";
const SECRET_KEY: &str = "ironfhir-test-secret";

fn s3_server_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("IRONFHIR_TEST_S3_SERVER") {
        return PathBuf::from(bin);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/ironfhir/s3s-fs/bin/s3s-fs")
}

/// Starts s3s-fs on a free port with the test bucket, and waits until it answers.
async fn start_s3() -> S3Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = s3_server_binary();
    assert!(
        bin.exists(),
        "s3s-fs not found at {} (set IRONFHIR_TEST_S3_SERVER, or run: cargo install s3s-fs@0.14.1 --features binary --locked --root ~/.cache/ironfhir/s3s-fs)",
        bin.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("ironfhir-s3-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join(BUCKET)).unwrap();
    let child = std::process::Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("s3s-fs starts");
    let server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}"), dir };
    for _ in 0..150 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("s3s-fs did not start");
}

fn s3_documents(s3: &S3Server, ttl: Duration, orphan_after: Duration) -> Documents {
    let settings = S3Settings {
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        endpoint: Some(s3.endpoint.clone()),
        force_path_style: true,
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
        server_side_encryption: Some("AES256".into()),
    };
    let spool = std::env::temp_dir().join(format!("ironfhir-test-spool-{}", uuid::Uuid::new_v4().simple()));
    let store = DocumentStore::s3(&settings, spool, UrlSigner::derive(b"test")).unwrap();
    Documents { url_ttl: ttl, orphan_after, ..Documents::new(store) }
}

fn local_documents(ttl: Duration, orphan_after: Duration) -> Documents {
    let dir = std::env::temp_dir().join(format!("ironfhir-test-documents-{}", uuid::Uuid::new_v4().simple()));
    Documents { url_ttl: ttl, orphan_after, ..Documents::new(DocumentStore::local(dir)) }
}

async fn app_with(documents: Documents) -> TestApp {
    TestApp::spawn_with(Options { documents: Some(documents), ..Options::default() }).await
}

/// A client that does not follow redirects (to see them).
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha1_of(bytes: &[u8]) -> [u8; 20] {
    sha1::Sha1::digest(bytes).into()
}

/// An upload as `$upload` answered it.
struct Upload {
    id: String,
    url: String,
    headers: Vec<(String, String)>,
}

fn upload_parameters(content_type: &str, size: usize, sha1: Option<[u8; 20]>) -> Value {
    let mut parameter = vec![json!({"name": "contentType", "valueCode": content_type}), json!({"name": "size", "valueUnsignedInt": size})];
    if let Some(h) = sha1 {
        parameter.push(json!({"name": "hash", "valueBase64Binary": b64(&h)}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

async fn ask_upload(app: &TestApp, content_type: &str, size: usize, sha1: Option<[u8; 20]>) -> Upload {
    let r = app.send_json(Method::POST, "Binary/$upload", &upload_parameters(content_type, size, sha1)).await;
    let status = r.status();
    let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    let params = body["parameter"].as_array().unwrap();
    let find = |name: &str| params.iter().find(|p| p["name"] == name).unwrap().clone();
    let binary = find("binary")["resource"].clone();
    let id = binary["id"].as_str().unwrap().to_owned();
    assert!(location.unwrap().ends_with(&format!("/Binary/{id}/_history/1")));
    assert!(binary.get("data").is_none(), "no bytes in the resource");
    assert_eq!(binary["contentType"], content_type);
    let headers = params
        .iter()
        .filter(|p| p["name"] == "header")
        .map(|p| {
            let (k, v) = p["valueString"].as_str().unwrap().split_once(": ").unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert_eq!(find("method")["valueCode"], "PUT");
    Upload { id, url: find("url")["valueUrl"].as_str().unwrap().to_owned(), headers }
}

/// PUTs `body` to an upload URL with the headers it was signed with (Content-Length is the
/// body's own).
async fn put(url: &str, headers: &[(String, String)], body: Vec<u8>) -> reqwest::Response {
    let mut request = reqwest::Client::new().put(url);
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("content-length") {
            request = request.header(k, v);
        }
    }
    request.body(body).send().await.unwrap()
}

async fn complete(app: &TestApp, id: &str) -> reqwest::Response {
    app.req(Method::POST, &format!("Binary/{id}/$upload-complete")).send().await.unwrap()
}

/// GET Binary/<id> asking for the content: the redirect's Location.
async fn raw_location(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    no_redirects().get(format!("{}/{path}", app.base)).bearer_auth(token).header("accept", "application/pdf").send().await.unwrap()
}

async fn round_trip(app: &TestApp, expect_prefix: &str) {
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let upload = ask_upload(app, "application/pdf", content.len(), Some(sha1_of(&content))).await;
    assert!(upload.url.starts_with(expect_prefix), "{}", upload.url);
    // Not downloadable before it is completed.
    expect_outcome(raw_location(app, &format!("Binary/{}", upload.id), &app.token).await, 409).await;
    let r = put(&upload.url, &upload.headers, content.clone()).await;
    assert!(r.status().is_success(), "PUT: {} {}", r.status(), r.text().await.unwrap());
    let r = complete(app, &upload.id).await;
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    let attachment = done["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "attachment").unwrap()["valueAttachment"].clone();
    assert_eq!(attachment["url"], format!("Binary/{}", upload.id));
    assert_eq!(attachment["size"], content.len());
    assert_eq!(attachment["hash"], b64(&sha1_of(&content)));
    assert_eq!(attachment["contentType"], "application/pdf");
    // A DocumentReference pointing at it.
    let reference = app
        .create(&json!({"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": attachment}]}))
        .await;
    let url = reference["content"][0]["attachment"]["url"].as_str().unwrap().to_owned();
    // Raw read: a redirect to a signed GET, which answers the bytes with their type.
    let r = raw_location(app, &url, &app.token).await;
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(expect_prefix), "{location}");
    let got = reqwest::get(&location).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "application/pdf");
    assert_eq!(got.bytes().await.unwrap().as_ref(), content.as_slice());
    // A FHIR read answers the resource, with no bytes in it.
    let binary = app.get_json(&format!("Binary/{}", upload.id)).await;
    assert!(binary.get("data").is_none());
    assert_eq!(binary["meta"]["versionId"], "2");
    // The read is audited and names the Binary.
    let events = app.get_json(&format!("AuditEvent?entity=Binary/{}", upload.id)).await;
    assert!(events["total"].as_i64().unwrap() >= 3, "upload, completion and reads are audited: {events}");
}

#[tokio::test]
async fn documents_upload_and_download_through_server_signed_urls() {
    let app = app_with(local_documents(Duration::from_secs(300), Duration::from_secs(86_400))).await;
    let origin = app.base.trim_end_matches("/fhir").to_owned();
    round_trip(&app, &format!("{origin}/documents/binary/")).await;
}

#[tokio::test]
async fn documents_upload_and_download_through_s3_presigned_urls() {
    let s3 = start_s3().await;
    let app = app_with(s3_documents(&s3, Duration::from_secs(300), Duration::from_secs(86_400))).await;
    round_trip(&app, &format!("{}/{BUCKET}/binary/", s3.endpoint)).await;
}

/// A query parameter of a URL replaced.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = url.split_once('?').unwrap();
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| { let v = if k == name { value.to_owned() } else { v.into_owned() }; (k.into_owned(), v) })
        .collect();
    assert!(pairs.iter().any(|(k, _)| k == name), "{name} in {url}");
    format!("{base}?{}", form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish())
}

fn param(url: &str, name: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).unwrap().1.into_owned()
}

/// Tampered, expired and misused URLs are refused (403) and store nothing.
async fn tampering(app: &TestApp, signature: &str, expiry: &str) {
    let content = b"%PDF-1.4 tampering".to_vec();
    let a = ask_upload(app, "application/pdf", content.len(), None).await;
    let b = ask_upload(app, "application/pdf", content.len(), None).await;
    let sig = param(&a.url, signature);
    let flipped = format!("{}{}", &sig[..sig.len() - 1], if sig.ends_with('0') { '1' } else { '0' });
    let exp = param(&a.url, expiry);
    let later = (exp.parse::<i64>().unwrap() + 3600).to_string();
    let key_a = format!("binary/{}", a.url.split("/binary/").nth(1).unwrap().split('?').next().unwrap());
    let key_b = format!("binary/{}", b.url.split("/binary/").nth(1).unwrap().split('?').next().unwrap());
    let refused = [
        ("signature changed", with_param(&a.url, signature, &flipped)),
        ("expiry changed", with_param(&a.url, expiry, &later)),
        ("A's URL used for B's key", a.url.replace(&key_a, &key_b)),
    ];
    for (what, url) in refused {
        let r = put(&url, &a.headers, content.clone()).await;
        assert_eq!(r.status(), 403, "{what}: {}", r.text().await.unwrap());
    }
    // Another content type than signed.
    let other_type: Vec<(String, String)> = a.headers.iter().map(|(k, v)| if k.eq_ignore_ascii_case("content-type") { (k.clone(), "text/html".into()) } else { (k.clone(), v.clone()) }).collect();
    assert_eq!(put(&a.url, &other_type, content.clone()).await.status(), 403, "content type changed");
    // Nothing reached either object.
    expect_outcome(complete(app, &a.id).await, 409).await;
    expect_outcome(complete(app, &b.id).await, 409).await;
    // A larger body than signed is refused, and leaves nothing.
    let mut longer = content.clone();
    longer.extend_from_slice(b"more");
    let r = put(&a.url, &a.headers, longer).await;
    assert!(r.status() == 403 || r.status() == 400, "longer body: {}", r.status());
    expect_outcome(complete(app, &a.id).await, 409).await;
    // The genuine URL still works, and is then used up (or refused to change what is stored).
    assert!(put(&a.url, &a.headers, content.clone()).await.status().is_success());
    assert_eq!(complete(app, &a.id).await.status(), 200);
}

#[tokio::test]
async fn documents_tampered_urls_are_refused_by_the_embedded_store() {
    let app = app_with(local_documents(Duration::from_secs(300), Duration::from_secs(86_400))).await;
    tampering(&app, "s", "e").await;
    // A stored document never changes, even through its own still valid URL.
    let content = b"first".to_vec();
    let up = ask_upload(&app, "text/plain", 5, None).await;
    assert!(put(&up.url, &up.headers, content.clone()).await.status().is_success());
    assert_eq!(put(&up.url, &up.headers, b"other".to_vec()).await.status(), 409);
}

#[tokio::test]
async fn documents_tampered_urls_are_refused_by_s3() {
    let s3 = start_s3().await;
    let app = app_with(s3_documents(&s3, Duration::from_secs(300), Duration::from_secs(86_400))).await;
    tampering(&app, "X-Amz-Signature", "X-Amz-Expires").await;
}

async fn expiry(app: &TestApp) {
    let up = ask_upload(app, "text/plain", 4, None).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let r = put(&up.url, &up.headers, b"late".to_vec()).await;
    assert_eq!(r.status(), 403, "expired upload URL");
    expect_outcome(complete(app, &up.id).await, 409).await;
}

#[tokio::test]
async fn documents_expired_urls_are_refused_by_both_stores() {
    let app = app_with(local_documents(Duration::from_secs(1), Duration::from_secs(86_400))).await;
    expiry(&app).await;
    let s3 = start_s3().await;
    let app = app_with(s3_documents(&s3, Duration::from_secs(1), Duration::from_secs(86_400))).await;
    expiry(&app).await;
    // An expired download URL too.
    let up = ask_upload(&app, "text/plain", 2, None).await;
    // (signed for 1 s: upload at once)
    assert!(put(&up.url, &up.headers, b"ok".to_vec()).await.status().is_success());
    assert_eq!(complete(&app, &up.id).await.status(), 200);
    let location = raw_location(&app, &format!("Binary/{}", up.id), &app.token).await.headers()["location"].to_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(reqwest::get(&location).await.unwrap().status(), 403, "expired download URL");
}

#[tokio::test]
async fn documents_out_of_reach_principals_get_404_and_no_url() {
    let app = app_with(local_documents(Duration::from_secs(300), Duration::from_secs(86_400))).await;
    let up = ask_upload(&app, "text/plain", 6, None).await;
    assert!(put(&up.url, &up.headers, b"secret".to_vec()).await.status().is_success());
    assert_eq!(complete(&app, &up.id).await.status(), 200);
    // A principal whose (granular) scope reaches only another Binary: this one does not exist
    // for it, exactly as a Binary that does not exist — and it gets no URL.
    let other = app.create(&json!({"resourceType": "Binary", "contentType": "text/plain", "data": b64(b"other")})).await;
    let token = app.token_with(&format!("system/Binary.rus?_id={}", other["id"].as_str().unwrap()));
    let r = raw_location(&app, &format!("Binary/{}", up.id), &token).await;
    assert!(r.headers().get("location").is_none());
    let out_of_reach = expect_outcome(r, 404).await;
    let missing = expect_outcome(raw_location(&app, "Binary/does-not-exist", &token).await, 404).await;
    assert_eq!(out_of_reach["issue"][0]["code"], missing["issue"][0]["code"]);
    let r = no_redirects().get(format!("{}/Binary/{}/_history/2", app.base, up.id)).bearer_auth(&token).header("accept", "text/plain").send().await.unwrap();
    assert!(r.headers().get("location").is_none());
    expect_outcome(r, 404).await;
    // The Binary it reaches is answered.
    assert_eq!(raw_location(&app, &format!("Binary/{}", other["id"].as_str().unwrap()), &token).await.status(), 200);
    // Nor can it complete that upload (404: it does not exist for it) or start one (no create
    // scope on Binary: 403), and nothing was written for the refused request. A patient's app
    // (no scope on Binary at all) is refused before anything is read.
    let r = app.client.post(format!("{}/Binary/{}/$upload-complete", app.base, up.id)).bearer_auth(&token).send().await.unwrap();
    expect_outcome(r, 404).await;
    let patient = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Reach"}]})).await;
    let patient_token = app.patient_token(patient["id"].as_str().unwrap());
    let r = raw_location(&app, &format!("Binary/{}", up.id), &patient_token).await;
    assert!(r.headers().get("location").is_none());
    expect_outcome(r, 403).await;
    let before = app.count("Binary").await;
    let r = app
        .client
        .post(format!("{}/Binary/$upload", app.base))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(upload_parameters("text/plain", 3, None).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("location").is_none());
    expect_outcome(r, 403).await;
    assert_eq!(app.count("Binary").await, before);
    // Bad parameters: 400 and nothing written.
    let r = app.send_json(Method::POST, "Binary/$upload", &json!({"resourceType": "Parameters", "parameter": [{"name": "contentType", "valueCode": "text/plain"}]})).await;
    expect_outcome(r, 400).await;
    assert_eq!(app.count("Binary").await, before);
}

#[tokio::test]
async fn documents_a_binary_cannot_borrow_another_binarys_object() {
    let app = app_with(local_documents(Duration::from_secs(300), Duration::from_secs(86_400))).await;
    let up = ask_upload(&app, "text/plain", 6, None).await;
    assert!(put(&up.url, &up.headers, b"theirs".to_vec()).await.status().is_success());
    assert_eq!(complete(&app, &up.id).await.status(), 200);
    let original = app.get_json(&format!("Binary/{}", up.id)).await;
    // A Binary written with a copy of the extension that names the other's object.
    let forged = app.create(&json!({"resourceType": "Binary", "contentType": "text/plain", "meta": {"extension": original["meta"]["extension"].clone()}})).await;
    let r = raw_location(&app, &format!("Binary/{}", forged["id"].as_str().unwrap()), &app.token).await;
    assert!(r.headers().get("location").is_none());
    expect_outcome(r, 404).await;
    expect_outcome(complete(&app, forged["id"].as_str().unwrap()).await, 404).await;
}

#[tokio::test]
async fn documents_inline_binary_data_is_answered_as_bytes() {
    let app = app_with(local_documents(Duration::from_secs(300), Duration::from_secs(86_400))).await;
    let binary = app.create(&json!({"resourceType": "Binary", "contentType": "text/plain", "data": b64(b"hello inline")})).await;
    let r = raw_location(&app, &format!("Binary/{}", binary["id"].as_str().unwrap()), &app.token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.headers()["content-security-policy"], "sandbox");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello inline");
    // With a FHIR Accept, the resource.
    let resource = app.get_json(&format!("Binary/{}", binary["id"].as_str().unwrap())).await;
    assert_eq!(resource["data"], b64(b"hello inline"));
}

async fn delete_keeps_history(app: &TestApp) {
    let content = b"kept by history".to_vec();
    let up = ask_upload(app, "text/plain", content.len(), Some(sha1_of(&content))).await;
    assert!(put(&up.url, &up.headers, content.clone()).await.status().is_success());
    assert_eq!(complete(app, &up.id).await.status(), 200);
    let r = app.req(Method::DELETE, &format!("Binary/{}", up.id)).send().await.unwrap();
    assert!(r.status().is_success());
    expect_outcome(raw_location(app, &format!("Binary/{}", up.id), &app.token).await, 410).await;
    // Version 2 (the completed one) still names the object, which is still there.
    let r = raw_location(app, &format!("Binary/{}/_history/2", up.id), &app.token).await;
    assert_eq!(r.status(), 307);
    let got = reqwest::get(r.headers()["location"].to_str().unwrap()).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), content.as_slice());
    // And the sweeper leaves completed objects alone, whatever their age.
    assert_eq!(ironfhir::documents::sweeper::sweep(&app.documents, &app.store).await.unwrap(), 0);
    let r = raw_location(app, &format!("Binary/{}/_history/2", up.id), &app.token).await;
    assert_eq!(reqwest::get(r.headers()["location"].to_str().unwrap()).await.unwrap().status(), 200);
}

#[tokio::test]
async fn documents_deleting_a_binary_keeps_the_object_its_history_names() {
    let app = app_with(local_documents(Duration::from_secs(300), Duration::ZERO)).await;
    delete_keeps_history(&app).await;
    let s3 = start_s3().await;
    let app = app_with(s3_documents(&s3, Duration::from_secs(300), Duration::ZERO)).await;
    delete_keeps_history(&app).await;
}

async fn orphans(app: &TestApp) {
    // Uploaded but never completed, and asked for but never uploaded.
    let uploaded = ask_upload(app, "text/plain", 6, None).await;
    assert!(put(&uploaded.url, &uploaded.headers, b"orphan".to_vec()).await.status().is_success());
    let never = ask_upload(app, "text/plain", 6, None).await;
    let key = format!("binary/{}", uploaded.url.split("/binary/").nth(1).unwrap().split('?').next().unwrap());
    assert!(app.documents.store.head(&key).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(ironfhir::documents::sweeper::sweep(&app.documents, &app.store).await.unwrap(), 2);
    assert!(app.documents.store.head(&key).await.unwrap().is_none(), "the orphaned object is deleted from the store");
    // Their Binaries have no content any more.
    expect_outcome(complete(app, &uploaded.id).await, 404).await;
    expect_outcome(complete(app, &never.id).await, 404).await;
    expect_outcome(raw_location(app, &format!("Binary/{}", uploaded.id), &app.token).await, 404).await;
    assert_eq!(ironfhir::documents::sweeper::sweep(&app.documents, &app.store).await.unwrap(), 0);
}

#[tokio::test]
async fn documents_orphaned_uploads_are_swept_from_both_stores() {
    let app = app_with(local_documents(Duration::from_secs(300), Duration::from_secs(1))).await;
    orphans(&app).await;
    let s3 = start_s3().await;
    let app = app_with(s3_documents(&s3, Duration::from_secs(300), Duration::from_secs(1))).await;
    orphans(&app).await;
}

#[tokio::test]
async fn documents_export_output_goes_to_s3_with_presigned_manifest_urls() {
    let s3 = start_s3().await;
    let documents = Documents { export_urls: ironfhir::documents::ExportUrls::Presigned, ..s3_documents(&s3, Duration::from_secs(300), Duration::from_secs(86_400)) };
    let app = app_with(documents).await;
    app.create(&json!({"resourceType": "Patient", "name": [{"family": "Exported"}]})).await;
    let r = app.req(Method::GET, "$export?_type=Patient").header("prefer", "respond-async").send().await.unwrap();
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"].to_str().unwrap().to_owned();
    let manifest: Value = loop {
        let r = app.client.get(&status_url).bearer_auth(&app.token).send().await.unwrap();
        let status = r.status();
        if status == 200 {
            break r.json().await.unwrap();
        }
        assert_eq!(status, 202, "{}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(manifest["requiresAccessToken"], false);
    let url = manifest["output"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/{BUCKET}/export/", s3.endpoint)), "{url}");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(text.contains("Exported"), "{text}");
    // Tampered: refused by S3.
    assert_eq!(reqwest::get(url.replace("export/", "export/x")).await.unwrap().status(), 403);
}
