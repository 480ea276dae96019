//! Wiring: database (embedded or external), migrations, token authority, router, HTTP or HTTPS.

use std::sync::Arc;
use std::time::Duration;

use tower_http::trace::TraceLayer;

use crate::auth::{TokenAuthority, keys};
use crate::config::{Config, ServeArgs};
use crate::rest::connection::{Guard, MAX_HEADER_FIELDS, MAX_REQUEST_HEAD_BYTES, Timeouts};
use crate::rest::{AppState, router};
use crate::store::Store;
use crate::store::embedded::EmbeddedPostgres;

/// A connected database and, when embedded, the cluster that must be stopped on exit.
pub struct Database {
    pub store: Store,
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Closes the pool and stops the embedded cluster, if any (every command ends with this).
    pub async fn close(self) -> Result<(), String> {
        self.store.pool().close().await;
        if let Some(pg) = self.embedded {
            pg.stop().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Connects to `DATABASE_URL`, or starts the embedded cluster in the data directory, and applies
/// migrations.
pub async fn open_database(config: &Config, pool_size: u32, statement_timeout: Duration) -> Result<Database, String> {
    let (url, embedded) = match &config.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let pg = EmbeddedPostgres::start(&config.data_dir).await.map_err(|e| e.to_string())?;
            (pg.database_url(), Some(pg))
        }
    };
    let store = Store::connect(&url, pool_size, statement_timeout)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    store.migrate().await.map_err(|e| format!("database migration failed: {e}"))?;
    crate::crypto::keys::open(&store, config).await?;
    let sealed = crate::oauth::accounts::seal_plain_totp_secrets(store.pool()).await.map_err(|e| format!("cannot seal the TOTP secrets: {e}"))?;
    if sealed > 0 {
        tracing::info!(sealed, "sealed TOTP secrets stored in the clear by an earlier version");
    }
    crate::reindex::mark_current_if_empty(&store).await.map_err(|e| format!("cannot read the search index state: {e}"))?;
    Ok(Database { store, embedded })
}

/// Loads (or creates) the signing key and builds the token authority.
pub fn token_authority(config: &Config) -> Result<TokenAuthority, String> {
    let pem = keys::load_or_create(config)?;
    TokenAuthority::from_pem(&pem, &config.issuer)
}

/// [`token_authority`] plus the RSA key of RS256 id_tokens (what `serve` needs).
pub fn token_authority_with_id_tokens(config: &Config) -> Result<TokenAuthority, String> {
    Ok(token_authority(config)?.with_id_token_key(keys::load_or_create_rsa(config)?))
}

/// The complete HTTP application (router plus middleware) for a state.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let max_body_bytes = state.max_body_bytes;
    router(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(max_body_bytes, crate::rest::hygiene::drain_unread_body))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
}

/// The span of a request in the logs: method and path only. The query string is left out —
/// search values (names, identifiers, birth dates) are PHI — and so are headers (tokens).
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
}

/// CORS for browser apps (SMART apps call the FHIR API and the token endpoint cross-origin):
/// bearer tokens travel in headers, no credentials (cookies) are allowed cross-origin.
fn cors_layer(origins: &[String]) -> Result<tower_http::cors::CorsLayer, String> {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let allow_origin = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .map(|o| HeaderValue::from_str(o.trim().trim_end_matches('/')).map_err(|_| format!("--cors-origins: {o} is not an origin")))
            .collect::<Result<_, _>>()?;
        AllowOrigin::list(list)
    };
    let expose = ["location", "etag", "content-location", "last-modified", "x-request-id"].map(HeaderName::from_static);
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers(expose)
        .max_age(Duration::from_secs(600)))
}

/// A panic is a bug: answer an OperationOutcome (500) instead of dropping the connection.
fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a request handler panicked");
    crate::rest::error_response(
        &crate::error::FhirError::Internal("handler panicked".into()),
        crate::rest::format::Format::Json,
        false,
    )
}

/// Runs `serve` until SIGINT/SIGTERM, then stops the embedded database.
pub async fn serve(args: ServeArgs) -> Result<(), String> {
    if let Some(path) = &args.role_templates {
        crate::access::roles::install_templates(path)?;
    }
    if let Some(path) = &args.interaction_table {
        crate::workflows::safety::install_table(path)?;
    }
    let tokens = token_authority_with_id_tokens(&args.config)?;
    let db = open_database(&args.config, args.db_pool_size, Duration::from_millis(args.statement_timeout_ms)).await?;
    let mut demo_accounts = vec![];
    if args.demo {
        let written = crate::demo::load(&db.store).await?;
        tracing::info!(written, "demo data loaded");
        if written > 0 && !args.no_audit {
            crate::audit::record_operator_import(&db.store, "serve --demo", written as u64, 0).await?;
        }
        demo_accounts = crate::demo::load_clinic(&db.store, &args.config.issuer).await?;
    }
    let keyring = crate::crypto::keyring().map_err(|e| e.to_string())?;
    keyring.set_sealing(!args.no_seal);
    crate::crypto::keys::spawn_key_poller(db.store.clone(), keyring, crate::crypto::keys::configured_provider(&args.config)?);
    crate::crypto::keys::spawn_reencryption(db.store.clone());
    let tls = args.tls_cert.is_some();
    // Local document URLs are signed with a key derived from the token signing key, which every
    // instance of a deployment shares.
    let documents = args.documents.build(&args.config.data_dir, keys::load_or_create(&args.config)?.as_bytes())?;
    let exports = Arc::new(
        crate::export::ExportService::new(documents.store.clone(), Duration::from_secs(args.export_retention_hours.saturating_mul(3600)))
            .with_urls(documents.export_urls, documents.url_ttl),
    );
    crate::documents::sweeper::spawn(documents.clone(), db.store.clone());
    crate::export::worker::spawn(exports.clone(), db.store.clone());
    crate::search::custom::refresh(&db.store).await.map_err(|e| format!("cannot load the custom SearchParameters: {e}"))?;
    // Absolute references to this server are indexed as local ones when the base is known.
    crate::reindex::spawn_if_stale(db.store.clone(), args.base_url.clone().unwrap_or_default().trim_end_matches('/').to_owned());
    let role_grants: Arc<crate::access::RoleGrants> = Default::default();
    let audit = if args.no_audit { Default::default() } else { crate::audit::trail::AuditTrail::start(db.store.clone()) };
    let base = args.base_url.clone().unwrap_or_default().trim_end_matches('/').to_owned();
    let events = crate::events::start(db.store.clone(), role_grants.clone(), audit.clone(), base, args.events_config()).await?;
    let state = Arc::new(AppState {
        exports,
        store: db.store.clone(),
        tokens,
        base_url: args.base_url.clone(),
        tls,
        listen: Some(args.listen),
        max_body_bytes: args.max_body_bytes,
        max_bundle_entries: args.max_bundle_entries,
        oauth: args.oauth_settings(),
        role_grants,
        events: Some(events),
        audit,
        hold_for: chrono::Duration::seconds(args.hold_seconds as i64),
        documents,
    });
    crate::workflows::scheduling::holds::spawn(db.store.clone(), state.audit.clone(), args.base_url.clone().unwrap_or_default().trim_end_matches('/').to_owned());
    if state.audit.enabled() {
        crate::audit::intent::spawn_recovery(db.store.clone(), state.audit.clone());
    }
    crate::oauth::spawn_revocation_poller(state.clone());
    // Preload the FHIR definitions so the first request does not pay for parsing them.
    let _ = crate::fhir::definitions::definitions();
    let _ = crate::interactions::capabilities::capability_statement();
    let app = app(state).layer(cors_layer(&args.cors_origins)?);
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let timeouts = Timeouts {
        header_read: Duration::from_secs(args.header_read_timeout_secs),
        idle: Duration::from_secs(args.idle_timeout_secs),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key, &args.tls_min_version)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %args.listen, "serving FHIR R4 at {scheme}://{}/fhir", args.listen);
    println!("ironfhir listening on {scheme}://{}/fhir", args.listen);
    print_token_hint(&args);
    if !demo_accounts.is_empty() {
        print_demo_accounts(&demo_accounts, &format!("{scheme}://{}", args.listen));
    }
    let result = listen(app, args.listen, tls, timeouts, handle).await;
    db.close().await?;
    result.map_err(|e| format!("server error: {e}"))
}

/// Serves `app` on `addr` over HTTP, or HTTPS with `tls`, until `handle` shuts it down. Both
/// listeners go through the same connection guard (`rest::connection`: header-read and idle
/// timeouts, OperationOutcomes for the requests hyper refuses itself, lingering close) and the
/// same HTTP/1 limits on the request head.
pub async fn listen(
    app: axum::Router,
    addr: std::net::SocketAddr,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    timeouts: Timeouts,
    handle: axum_server::Handle<std::net::SocketAddr>,
) -> std::io::Result<()> {
    let make_service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        Some(config) => {
            let mut server = axum_server::bind_rustls(addr, config).map(|tls| Guard::new(tls, timeouts));
            server.http_builder().http1().max_buf_size(MAX_REQUEST_HEAD_BYTES).max_headers(MAX_HEADER_FIELDS);
            server.handle(handle).serve(make_service).await
        }
        None => {
            let mut server = axum_server::bind(addr).map(|plain| Guard::new(plain, timeouts));
            server.http_builder().http1().max_buf_size(MAX_REQUEST_HEAD_BYTES).max_headers(MAX_HEADER_FIELDS);
            server.handle(handle).serve(make_service).await
        }
    }
}

/// Tells the operator how to get a token for this server's key.
/// How to sign in as each role of the demo clinic (passwords are new at every start).
fn print_demo_accounts(accounts: &[crate::demo::DemoAccount], origin: &str) {
    println!("demo clinic: sign in at {origin}/auth/authorize with the public SMART client {} (redirect http://localhost:3000/callback, PKCE S256)", crate::demo::DEMO_CLIENT);
    for a in accounts {
        println!("  {:<18} password {:<14} then pick {:<40} {}", a.username, a.password, a.acts_as, a.what);
    }
}

fn print_token_hint(args: &ServeArgs) {
    println!(
        "get an access token with: ironfhir admin token --data-dir {} --scope 'system/*.*'",
        args.config.data_dir.display()
    );
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path, min_version: &str) -> Result<axum_server::tls_rustls::RustlsConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid TLS certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read TLS key {}: {e}", key.display()))?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = if min_version == "1.2" {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    //! The HTTPS listener gets the same connection guard as the plain one (the conformance
    //! suite, test_hostile_http.py, drives the plain listener).

    use std::io::{Read, Write};
    use std::net::SocketAddr;

    use super::*;

    /// A self-signed test certificate for `localhost` / 127.0.0.1 (valid until 2126) and its
    /// key; a test fixture, protecting nothing.
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBlzCCAT6gAwIBAgIUc6pUgUXhOF7RAaLZNfGqOqSEFFYwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNzE3MzMxOFoYDzIxMjYxMTEz
MTczMzE4WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAASkvWjfNA85/6vpwTO0pfgY7rQgMtlykzVTs4OJ0/OFfprZwRgHEE3A
yYvA4kqp/+tb4nrv10xiD5M7QEkfZmKQo2wwajAdBgNVHQ4EFgQUHH247v7Gy64Y
f74koNZ8HPY3drUwHwYDVR0jBBgwFoAUHH247v7Gy64Yf74koNZ8HPY3drUwGgYD
VR0RBBMwEYIJbG9jYWxob3N0hwR/AAABMAwGA1UdEwEB/wQCMAAwCgYIKoZIzj0E
AwIDRwAwRAIgf0YQuDMHSTqXW3jlzsQvDZfk7aW+2sHteAWhJqd6+u4CICG7yXYH
9tmiSYpsXjtlhFdMnhHgxNhnDWqkS8XN8xAK
-----END CERTIFICATE-----
";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTisiDtmYa3TTpzsi
rG/VWpsmh/JDz/yKjzkXlWOWOWuhRANCAASkvWjfNA85/6vpwTO0pfgY7rQgMtly
kzVTs4OJ0/OFfprZwRgHEE3AyYvA4kqp/+tb4nrv10xiD5M7QEkfZmKQ
-----END PRIVATE KEY-----
";

    async fn https_server(timeouts: Timeouts) -> SocketAddr {
        let dir = std::env::temp_dir().join(format!("ironfhir-tls-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), CERT).unwrap();
        std::fs::write(dir.join("key.pem"), KEY).unwrap();
        let config = tls_config(&dir.join("cert.pem"), &dir.join("key.pem"), "1.3").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let app = axum::Router::new().route("/fhir/metadata", axum::routing::get(|| async { "{}" }));
        let handle = axum_server::Handle::new();
        tokio::spawn(listen(app, "127.0.0.1:0".parse().unwrap(), Some(config), timeouts, handle.clone()));
        handle.listening().await.unwrap()
    }

    /// A blocking TLS client connection to the test server (handshake done).
    fn tls_client(addr: SocketAddr) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let socket = std::net::TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        stream
    }

    /// Everything the server sends until it closes (close_notify or end of stream).
    fn read_to_close(stream: &mut impl Read) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return out,
                Err(e) => panic!("read failed after {} bytes: {e}", out.len()),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_https_listener_times_out_slow_heads_and_idle_connections_and_explains_refusals() {
        let timeouts = Timeouts { header_read: Duration::from_secs(1), idle: Duration::from_secs(3) };
        let addr = https_server(timeouts).await;
        tokio::task::spawn_blocking(move || {
            // A request head that never ends: 408 with an OperationOutcome after the header timeout.
            let started = std::time::Instant::now();
            let mut slow = tls_client(addr);
            slow.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n").unwrap();
            slow.flush().unwrap();
            let answer = String::from_utf8_lossy(&read_to_close(&mut slow)).into_owned();
            let waited = started.elapsed();
            assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
            assert!(answer.contains("application/fhir+json") && answer.contains("\"code\":\"timeout\""), "{answer}");
            assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");

            // A connection with no request: closed, without an answer, after the idle timeout
            // (not at the shorter header timeout).
            let started = std::time::Instant::now();
            let mut idle = tls_client(addr);
            let answer = read_to_close(&mut idle);
            let waited = started.elapsed();
            assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
            assert!(waited >= Duration::from_millis(2900) && waited < Duration::from_secs(6), "{waited:?}");

            // hyper's own refusal of a request target over 65,534 bytes carries an OperationOutcome.
            let mut long = tls_client(addr);
            let target = format!("/fhir/metadata?x={}", "a".repeat(70_000));
            long.write_all(format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
            long.flush().unwrap();
            let answer = String::from_utf8_lossy(&read_to_close(&mut long)).into_owned();
            assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");
            assert!(answer.contains("\"resourceType\":\"OperationOutcome\""), "{answer}");

            // An ordinary request is answered and the connection kept.
            let mut ok = tls_client(addr);
            ok.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            ok.flush().unwrap();
            let mut buf = [0u8; 1024];
            let n = ok.read(&mut buf).unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
            assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
        })
        .await
        .unwrap();
    }
}
