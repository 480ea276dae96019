//! `TestApp`: spawns ironfhir in-process against a fresh database and talks HTTP to it.

use std::sync::Arc;
use std::time::Duration;

use ironfhir::auth::{TokenAuthority, keys};
use ironfhir::documents::DocumentStore;
use ironfhir::export::ExportService;
use ironfhir::rest::AppState;
use ironfhir::store::Store;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};

/// Where the tests find PostgreSQL (a server they may create databases on).
pub fn admin_url() -> String {
    std::env::var("IRONFHIR_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    format!("{base}/{db}{query}")
}

/// Name of the template database for the current migrations (a new set of migrations gets a
/// new template, so stale templates are never used).
fn template_name() -> String {
    format!("ironfhir_tpl_{}", ironfhir::store::schema::fingerprint())
}

/// The configuration a command-line tool would be given for a test's database and keys.
pub fn config(database_url: &str, data_dir: &std::path::Path) -> ironfhir::config::Config {
    ironfhir::config::Config {
        data_dir: data_dir.to_owned(),
        database_url: Some(database_url.to_owned()),
        signing_key: None,
        issuer: "ironfhir".into(),
        kek_file: None,
        phi_policy: None,
        blind_prefix_length: 32,
    }
}

/// Creates a fresh database cloned from the migrated template and returns its URL.
pub async fn fresh_database() -> (String, String) {
    let admin = admin_url();
    let mut conn = PgConnection::connect(&admin).await.expect("test PostgreSQL reachable (IRONFHIR_TEST_DATABASE_URL)");
    let template = template_name();
    // Serialise template creation across test processes.
    conn.execute("SELECT pg_advisory_lock(727272)").await.unwrap();
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&template)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    if exists.is_none() {
        let building = format!("{template}_building");
        conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {building}"))).await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}"))).await.unwrap();
        let store = Store::connect(&with_db(&admin, &building), 2, Duration::from_secs(60)).await.unwrap();
        store.migrate().await.unwrap();
        store.pool().close().await;
        conn.execute(sqlx::AssertSqlSafe(format!("ALTER DATABASE {building} RENAME TO {template}"))).await.unwrap();
    }
    conn.execute("SELECT pg_advisory_unlock(727272)").await.unwrap();
    let name = format!("ironfhir_test_{}", uuid::Uuid::new_v4().simple());
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {template}"))).await.unwrap();
    (with_db(&admin, &name), name)
}

/// A running server for one test.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub token: String,
    pub tokens: Arc<TokenAuthority>,
    pub store: Store,
    /// The export service (document store) the app uses.
    pub exports: Arc<ExportService>,
    /// The document store and its settings.
    pub documents: ironfhir::documents::Documents,
    /// The test database, for tests that run the binary against it.
    pub database_url: String,
    db_name: String,
    /// The data directory holding the test's key-encryption key (`--data-dir` for the binary).
    pub data_dir: std::path::PathBuf,
}

/// Options for [`TestApp::spawn_with`].
pub struct Options {
    pub max_body_bytes: usize,
    /// Whether the Bulk Data export worker runs (off to test jobs surviving a restart).
    pub export_worker: bool,
    /// How long an `Appointment/$hold` keeps its slot.
    pub hold_seconds: i64,
    /// Whether the event machinery runs (outbox dispatch, Subscriptions, websocket), and
    /// with which settings (off unless a test needs it: every dispatcher polls its database).
    pub events: Option<ironfhir::events::EventsConfig>,
    /// The document store (default: a local directory of the test's own).
    pub documents: Option<ironfhir::documents::Documents>,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_body_bytes: 1024 * 1024, export_worker: true, hold_seconds: 600, events: None, documents: None }
    }
}

impl TestApp {
    /// Spawns the app with default options and a `system/*.*` token.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Options::default()).await
    }

    /// Spawns the app under an operator PHI policy that seals nothing, so that every search
    /// parameter is a plain one: what tests of the search engine's own grammar (`:contains`,
    /// date prefixes, `_sort`, `_text` on Patient) need. Under the default policy those
    /// parameters are blind-indexed and refuse such searches (tests/api/sealing.rs).
    pub async fn spawn_sealing_nothing() -> TestApp {
        ironfhir::crypto::policy::install_policy(Default::default()).unwrap();
        Self::spawn().await
    }

    /// Spawns the app with options.
    pub async fn spawn_with(options: Options) -> TestApp {
        Self::spawn_with_bundle_limit(options, 10_000).await
    }

    /// Spawns the app with options and a limit on the entries of batch/transaction Bundles.
    pub async fn spawn_with_bundle_limit(options: Options, max_bundle_entries: usize) -> TestApp {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Every test process parses the FHIR definitions once (the first request would): do it
        // while the database is being cloned rather than after.
        let definitions = tokio::task::spawn_blocking(|| {
            ironfhir::fhir::definitions::definitions();
        });
        let (url, db_name) = fresh_database().await;
        definitions.await.unwrap();
        let store = Store::connect(&url, 5, Duration::from_secs(10)).await.unwrap();
        // The keys that seal PHI: a key-encryption key generated into a per-test directory.
        let data_dir = std::env::temp_dir().join(format!("ironfhir-test-keys-{db_name}"));
        let keyring = ironfhir::crypto::keys::open(&store, &config(&url, &data_dir)).await.unwrap();
        // As `serve` does: learn data keys that `ironfhir keys rotate` creates.
        let kek = ironfhir::crypto::keys::configured_provider(&config(&url, &data_dir)).unwrap();
        ironfhir::crypto::keys::spawn_key_poller(store.clone(), keyring, kek);
        let pem = keys::generate_pem().unwrap();
        let tokens = TokenAuthority::from_pem(&pem, "ironfhir").unwrap();
        let token = tokens.issue("test-operator", "system/*.*", 600).unwrap();
        let documents = options.documents.unwrap_or_else(|| {
            ironfhir::documents::Documents::new(DocumentStore::local(std::env::temp_dir().join(format!("ironfhir-test-docs-{db_name}"))))
        });
        let exports = Arc::new(ExportService::new(documents.store.clone(), Duration::from_secs(3600)).with_urls(documents.export_urls, documents.url_ttl));
        if options.export_worker {
            ironfhir::export::worker::spawn(exports.clone(), store.clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let role_grants: Arc<ironfhir::access::RoleGrants> = Default::default();
        let audit = ironfhir::audit::trail::AuditTrail::start(store.clone());
        let events = match options.events {
            Some(config) => Some(ironfhir::events::start(store.clone(), role_grants.clone(), audit.clone(), String::new(), config).await.unwrap()),
            None => None,
        };
        let state = Arc::new(AppState {
            exports: exports.clone(),
            store: store.clone(),
            tokens: TokenAuthority::from_pem(&pem, "ironfhir").unwrap(),
            base_url: None,
            tls: false,
            listen: Some(addr),
            max_body_bytes: options.max_body_bytes,
            max_bundle_entries,
            oauth: Default::default(),
            role_grants,
            events,
            audit,
            hold_for: chrono::Duration::seconds(options.hold_seconds),
            documents: documents.clone(),
        });
        let app = ironfhir::server::app(state);
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestApp {
            base: format!("http://{addr}/fhir"),
            client: reqwest::Client::builder().build().unwrap(),
            token,
            tokens: Arc::new(tokens),
            store,
            exports,
            documents,
            database_url: url,
            db_name,
            data_dir,
        }
    }

    /// A token with other scopes, signed by this server.
    pub fn token_with(&self, scope: &str) -> String {
        self.tokens.issue("test-user", scope, 600).unwrap()
    }

    /// A token with the patient template's scopes for `patient` in context, as the sign-in
    /// pages issue to a patient's app.
    pub fn patient_token(&self, patient: &str) -> String {
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = ironfhir::auth::Claims {
            iss: "ironfhir".into(),
            sub: format!("patient-{patient}"),
            aud: ironfhir::auth::FHIR_AUDIENCE.into(),
            exp: now + 600,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: "launch/patient openid fhirUser patient/*.rs patient/Appointment.cu patient/Task.cu patient/Subscription.cud".into(),
            client_id: Some("synthetic-app".into()),
            patient: Some(patient.to_owned()),
            fhir_user: Some(format!("Patient/{patient}")),
            role: None,
            encounter: None,
            grant: None,
        };
        self.tokens.sign(&claims).unwrap()
    }

    /// A request with the default token.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}/{}", self.base, path.trim_start_matches('/'))).bearer_auth(&self.token)
    }

    /// GET with the default token.
    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.unwrap()
    }

    /// Sends a JSON resource with `application/fhir+json`.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Response {
        self.req(method, path)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// PUTs a resource to its `Type/id` (update or update-as-create), asserting success;
    /// returns the stored resource.
    pub async fn put(&self, resource: Value) -> Value {
        self.put_expecting(resource, |s| s.is_success()).await
    }

    /// PUTs a resource that must not exist yet (update-as-create, asserting 201).
    pub async fn put_new(&self, resource: Value) -> Value {
        self.put_expecting(resource, |s| s == reqwest::StatusCode::CREATED).await
    }

    async fn put_expecting(&self, resource: Value, ok: impl Fn(reqwest::StatusCode) -> bool) -> Value {
        let path = format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
        let r = self.send_json(Method::PUT, &path, &resource).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(ok(status), "PUT {path}: {status} {body}");
        body
    }

    /// POSTs a resource and returns the created resource (asserting 201).
    pub async fn create(&self, body: &Value) -> Value {
        let rt = body["resourceType"].as_str().unwrap();
        let r = self.send_json(Method::POST, rt, body).await;
        assert_eq!(r.status(), 201, "create {rt}");
        r.json().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The pool belongs to the test's runtime, which is blocked here: do not touch it;
        // `WITH (FORCE)` ends its connections.
        drop_database(&self.db_name);
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("ironfhir-test-docs-{}", self.db_name)));
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Drops a test database when it goes out of scope (for tests that start the binary
/// themselves rather than a `TestApp`).
pub struct DatabaseGuard(pub String);

impl Drop for DatabaseGuard {
    fn drop(&mut self) {
        drop_database(&self.0);
    }
}

/// Best-effort `DROP DATABASE … WITH (FORCE)` from a separate thread (we may be inside a runtime).
fn drop_database(name: &str) {
    let name = name.to_owned();
    {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                        let _ = conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await;
                    }
                });
            }
        })
        .join()
        .ok();
    }
}

/// The issue codes of an OperationOutcome body.
pub fn issue_codes(outcome: &Value) -> Vec<String> {
    outcome["issue"].as_array().map(|a| a.iter().filter_map(|i| i["code"].as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// Asserts that a response is an OperationOutcome with the given status and returns it.
pub async fn expect_outcome(response: Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "status");
    let ct = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(ct.starts_with("application/fhir+json"), "content-type {ct}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome", "body {body}");
    body
}

impl TestApp {
    /// GETs a path, asserts 200 and returns the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Number of live resources of a type, from a `_summary=count` search.
    pub async fn count(&self, resource_type: &str) -> i64 {
        self.get_json(&format!("{resource_type}?_summary=count")).await["total"].as_i64().expect("total in a count search")
    }

    /// Number of history entries (versions, deletions included) of a type.
    pub async fn history_total(&self, resource_type: &str) -> i64 {
        self.get_json(&format!("{resource_type}/_history")).await["total"].as_i64().expect("total in a history bundle")
    }
}

/// The ids of the resources in a Bundle's entries, in order.
pub fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The URL of a Bundle link relation (`self`, `next` …).
pub fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str().map(str::to_owned)
}
