//! The real binary: `serve`, `admin token` and `migrate` share one configuration; HTTPS with
//! rustls (TLS 1.3 by default, 1.2 only when configured); the embedded PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::fresh_database;

const BIN: &str = env!("CARGO_BIN_EXE_ironfhir");

/// A `serve` child process, killed (SIGTERM, so the embedded database stops) on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ironfhir-cli-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) fn start(data_dir: &Path, database_url: Option<&str>, port: u16, extra: &[&str]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--data-dir").arg(data_dir).arg("--listen").arg(format!("127.0.0.1:{port}")).args(extra);
    cmd.env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    Server { child: cmd.spawn().unwrap() }
}

pub(crate) fn admin_token(data_dir: &Path, scope: &str) -> String {
    let out = Command::new(BIN)
        .args(["admin", "token", "--scope", scope, "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "admin token failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub(crate) async fn wait_ready(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match client.get(url).send().await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => format!("status {}", r.status()),
            Err(e) => format!("{e:?}"),
        };
        assert!(Instant::now() < deadline, "server did not become ready at {url}: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_token_printed_by_admin_token_is_accepted_by_serve_with_the_same_data_dir() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url, name) = fresh_database().await;
    let _db = crate::helpers::DatabaseGuard(name);
    let dir = temp_dir("token");
    let token = admin_token(&dir, "system/Patient.rs");
    let port = free_port();
    let _server = start(&dir, Some(&url), port, &[]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/fhir");
    wait_ready(&client, &format!("{base}/metadata")).await;
    let ok = client.get(format!("{base}/Patient")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // The scope in the token is what the server enforces.
    let denied = client.get(format!("{base}/Observation")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    // A token from another data dir (another key) is refused.
    let other = admin_token(&temp_dir("other"), "system/*.*");
    let refused = client.get(format!("{base}/Patient")).bearer_auth(&other).send().await.unwrap();
    assert_eq!(refused.status(), 401);
}

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    (cert, key)
}

fn tls_client(cert: &Path, max: reqwest::tls::Version) -> reqwest::Client {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .max_tls_version(max)
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_uses_tls_1_3_by_default_and_allows_1_2_only_when_configured() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url, name) = fresh_database().await;
    let _db = crate::helpers::DatabaseGuard(name);
    let dir = temp_dir("tls");
    let (cert, key) = self_signed(&dir);
    let tls_args = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];

    let port = free_port();
    let server = start(&dir, Some(&url), port, &tls_args);
    let modern = tls_client(&cert, reqwest::tls::Version::TLS_1_3);
    let metadata = format!("https://localhost:{port}/fhir/metadata");
    wait_ready(&modern, &metadata).await;
    let old = tls_client(&cert, reqwest::tls::Version::TLS_1_2);
    assert!(old.get(&metadata).send().await.is_err(), "a TLS 1.2-only client must be refused by default");
    // Plain HTTP on the HTTPS port is not served.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/fhir/metadata")).await.map(|r| r.status() == 200).unwrap_or(false) == false);
    drop(server);

    let port = free_port();
    let mut args = tls_args.to_vec();
    args.extend(["--tls-min-version", "1.2"]);
    let _server = start(&dir, Some(&url), port, &args);
    let metadata = format!("https://localhost:{port}/fhir/metadata");
    wait_ready(&modern, &metadata).await;
    assert_eq!(old.get(&metadata).send().await.unwrap().status(), 200, "TLS 1.2 allowed when configured");
}

#[tokio::test]
async fn serve_without_database_url_runs_an_embedded_postgresql_and_keeps_data_across_restarts() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = temp_dir("embedded");
    let client = reqwest::Client::new();
    let token = admin_token(&dir, "system/*.*");
    let id;
    {
        let port = free_port();
        let _server = start(&dir, None, port, &[]);
        let base = format!("http://127.0.0.1:{port}/fhir");
        wait_ready(&client, &format!("{base}/metadata")).await;
        let r = client
            .post(format!("{base}/Patient"))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType":"Patient","active":true}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        id = body["id"].as_str().unwrap().to_owned();
    }
    // The embedded cluster was stopped with the server: no postmaster left behind.
    let pid_file = dir.join("postgres/data/postmaster.pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!pid_file.exists(), "the embedded PostgreSQL must stop when the server exits");
    let port = free_port();
    let _server = start(&dir, None, port, &[]);
    let base = format!("http://127.0.0.1:{port}/fhir");
    wait_ready(&client, &format!("{base}/metadata")).await;
    let r = client.get(format!("{base}/Patient/{id}")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200, "data survives a restart");
}

#[tokio::test]
async fn migrate_applies_the_schema_to_an_empty_database_and_exits() {
    use sqlx::{Connection, Executor};
    let admin = crate::helpers::admin_url();
    let name = format!("ironfhir_empty_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let dir = temp_dir("migrate");
    let out = Command::new(BIN).args(["migrate", "--data-dir"]).arg(&dir).env("DATABASE_URL", &url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename IN ('resource', 'resource_history')")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(tables, 2);
    db.close().await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).await.unwrap();
}

#[tokio::test]
async fn serve_with_demo_loads_the_synthetic_data_set_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url, name) = fresh_database().await;
    let _db = crate::helpers::DatabaseGuard(name);
    let dir = temp_dir("demo");
    let token = admin_token(&dir, "system/*.*");
    let client = reqwest::Client::new();
    let mut versions = None;
    for _ in 0..2 {
        let port = free_port();
        let _server = start(&dir, Some(&url), port, &["--demo"]);
        let base = format!("http://127.0.0.1:{port}/fhir");
        wait_ready(&client, &format!("{base}/metadata")).await;
        let bundle: serde_json::Value = client
            .get(format!("{base}/Patient?_summary=count"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(bundle["total"], 14, "the demo set has 13 patients and the demo clinic one, loaded once");
        let count = |path: &'static str| {
            let request = client.get(format!("{base}/{path}")).bearer_auth(&token);
            async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap()["total"].clone() }
        };
        // The demo clinic: a role of every template, its fulfilled visit invoiced, the refill asked.
        assert_eq!(count("PractitionerRole?_id=demo-role-admin,demo-role-prescriber,demo-role-nurse,demo-role-front-desk,demo-role-billing,demo-role-supplier,demo-role-auditor&_summary=count").await, 7);
        assert_eq!(count("Invoice?subject=Patient/demo-patient&_summary=count").await, 1);
        assert_eq!(count("Task?code=refill&status=requested&_summary=count").await, 1);
        let history: serde_json::Value =
            client.get(format!("{base}/_history?_count=1")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        let total = history["total"].as_i64().unwrap();
        assert!(total > 147, "the 147 resources of the set and the clinic's");
        assert_eq!(*versions.get_or_insert(total), total, "a second start with --demo writes no new versions");
    }
}

#[tokio::test]
async fn every_command_line_change_leaves_an_audit_event_and_the_chain_verifies() {
    let (url, name) = fresh_database().await;
    let _db = crate::helpers::DatabaseGuard(name);
    let dir = temp_dir("operator-audit");
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--data-dir").arg(&dir).env("DATABASE_URL", &url);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["admin", "user", "add", "--username", "synthetic-clerk", "--password-stdin", "--fhir-user", "Practitioner/synthetic-1"], Some("a-long-synthetic-passphrase\n"));
    run(&["admin", "client", "add", "--client-id", "synthetic-app", "--public", "--redirect-uri", "http://127.0.0.1:9/cb", "--scope", "openid"], None);
    run(&["keys", "rotate", "--no-wait"], None);
    run(&["reindex"], None);
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    use sqlx::Connection;
    let events: Vec<String> = sqlx::query_scalar("SELECT event_text FROM audit_log ORDER BY seq").fetch_all(&mut db).await.unwrap();
    let find = |command: &str| -> serde_json::Value {
        let text = events.iter().find(|e| e.contains(&format!("\"ironfhir {command} (operator command line)\""))).unwrap_or_else(|| panic!("no event of {command}: {events:?}"));
        serde_json::from_str(text).unwrap()
    };
    let user = find("admin user add");
    assert_eq!(user["type"]["code"], "110113");
    assert_eq!(user["subtype"][0]["code"], "110137");
    assert_eq!(user["outcomeDesc"], "admin user add: account synthetic-clerk registered");
    assert!(!user.to_string().contains("passphrase"), "no secret in the event");
    let client = find("admin client add");
    assert_eq!(client["subtype"][0]["code"], "110129");
    assert_eq!(client["action"], "C");
    let rotation = find("keys rotate");
    assert_eq!(rotation["type"]["code"], "110113");
    assert_eq!(rotation["action"], "U");
    assert!(rotation["outcomeDesc"].as_str().unwrap().starts_with("keys rotate: new data key "), "{rotation}");
    let reindex = find("reindex");
    assert_eq!(reindex["type"]["code"], "110100");
    assert_eq!(reindex["outcome"], "0");
    db.close().await.unwrap();
    let verify = Command::new(BIN).args(["audit", "verify", "--data-dir"]).arg(&dir).env("DATABASE_URL", &url).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(String::from_utf8_lossy(&verify.stdout).contains(&format!("intact: {} records", events.len())), "{}", String::from_utf8_lossy(&verify.stdout));
}
