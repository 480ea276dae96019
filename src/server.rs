//! Wiring: database (embedded or external), migrations, token authority, router, HTTP or HTTPS.

use std::sync::Arc;
use std::time::Duration;

use tower_http::trace::TraceLayer;

use crate::auth::{TokenAuthority, keys};
use crate::config::{Config, ServeArgs};
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
    router(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
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
    let tokens = token_authority_with_id_tokens(&args.config)?;
    let db = open_database(&args.config, args.db_pool_size, Duration::from_millis(args.statement_timeout_ms)).await?;
    if args.demo {
        let written = crate::demo::load(&db.store).await?;
        tracing::info!(written, "demo data loaded");
        if written > 0 && !args.no_audit {
            crate::audit::record_operator_import(&db.store, "serve --demo", written as u64, 0).await?;
        }
    }
    let keyring = crate::crypto::keyring().map_err(|e| e.to_string())?;
    keyring.set_sealing(!args.no_seal);
    crate::crypto::keys::spawn_key_poller(db.store.clone(), keyring, crate::crypto::keys::configured_provider(&args.config)?);
    crate::crypto::keys::spawn_reencryption(db.store.clone());
    let tls = args.tls_cert.is_some();
    let documents = args.document_dir.clone().unwrap_or_else(|| args.config.data_dir.join("documents"));
    let exports = Arc::new(crate::export::ExportService::new(
        crate::documents::DocumentStore::local(documents),
        Duration::from_secs(args.export_retention_hours.saturating_mul(3600)),
    ));
    crate::export::worker::spawn(exports.clone(), db.store.clone());
    crate::search::custom::refresh(&db.store).await.map_err(|e| format!("cannot load the custom SearchParameters: {e}"))?;
    // Absolute references to this server are indexed as local ones when the base is known.
    crate::reindex::spawn_if_stale(db.store.clone(), args.base_url.clone().unwrap_or_default().trim_end_matches('/').to_owned());
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
        role_grants: Default::default(),
        audit: if args.no_audit { Default::default() } else { crate::audit::trail::AuditTrail::start(db.store.clone()) },
    });
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
    let result = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let config = tls_config(cert, key, &args.tls_min_version)?;
            tracing::info!(listen = %args.listen, "serving FHIR R4 over HTTPS at https://{}/fhir", args.listen);
            println!("ironfhir listening on https://{}/fhir", args.listen);
            print_token_hint(&args);
            axum_server::bind_rustls(args.listen, config).handle(handle).serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await
        }
        _ => {
            tracing::info!(listen = %args.listen, "serving FHIR R4 over HTTP at http://{}/fhir", args.listen);
            println!("ironfhir listening on http://{}/fhir", args.listen);
            print_token_hint(&args);
            axum_server::bind(args.listen).handle(handle).serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await
        }
    };
    db.close().await?;
    result.map_err(|e| format!("server error: {e}"))
}

/// Tells the operator how to get a token for this server's key.
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
