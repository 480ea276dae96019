//! The one configuration of every subcommand, from command-line flags and the environment.
//!
//! `serve`, `migrate`, `import` and `admin` all flatten [`Config`], so a token printed by
//! `admin token --data-dir D` is signed by the same key that `serve --data-dir D` checks.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The default `--max-body-bytes` (10 MiB); `import` bounds the results of PATCH entries by it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// ironfhir — a FHIR R4 server on PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "ironfhir", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of the one binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the FHIR API (applies migrations first).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(Config),
    /// Load FHIR data fast: transaction/batch/collection Bundles (JSON) and NDJSON files;
    /// resumable after an interruption (progress is kept in the database).
    Import(ImportArgs),
    /// Rebuild the search index tables from the stored resources, online (the server may keep
    /// running); resumes an interrupted rebuild.
    Reindex(ReindexArgs),
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Key management: data key rotation, key-encryption key rotation, status.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Operator tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit trail's hash chain; exits non-zero and names the first bad record
    /// when any record was edited, deleted or reordered.
    Verify(Config),
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Start a new data key for new writes and re-encrypt every older row under it (running
    /// servers keep serving, pick the key up within 2 s and finish the re-encryption in the
    /// background if this is interrupted).
    Rotate(KeysRotateArgs),
    /// Re-wrap every data key under a new key-encryption key (rows are not touched); afterwards
    /// configure the new key.
    RotateKek(RotateKekArgs),
    /// Data keys and how many rows each seals.
    Status(Config),
}

/// Arguments of `keys rotate`.
#[derive(Debug, Args)]
pub struct KeysRotateArgs {
    #[command(flatten)]
    pub config: Config,
    /// Only create the new key; leave the re-encryption to the running servers.
    #[arg(long)]
    pub no_wait: bool,
}

/// Arguments of `keys rotate-kek`.
#[derive(Debug, Args)]
pub struct RotateKekArgs {
    #[command(flatten)]
    pub config: Config,
    /// File with the new key-encryption key (32 bytes, base64).
    #[arg(long)]
    pub new_kek_file: PathBuf,
}

/// Operator subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Print a signed access token (for operators, scripts and tests).
    Token(TokenArgs),
    /// Register OAuth clients (SMART apps and backend services).
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Register user accounts (staff and patients) of the authorization server.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

/// `admin client` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register (or replace) a client; prints what was registered as JSON.
    Add(ClientAddArgs),
}

/// Arguments of `admin client add`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("auth").required(true).args(["public", "secret", "jwks", "jwks_uri"])))]
pub struct ClientAddArgs {
    #[command(flatten)]
    pub config: Config,
    /// The client's id.
    #[arg(long)]
    pub client_id: String,
    /// A redirect URI the client may use (repeatable; exact match).
    #[arg(long = "redirect-uri")]
    pub redirect_uris: Vec<String>,
    /// The most the client may be granted (space-separated SMART scopes).
    #[arg(long)]
    pub scope: String,
    /// A public client (browser or native app): PKCE only, no secret.
    #[arg(long)]
    pub public: bool,
    /// A confidential client authenticating with this secret (client_secret_basic/post).
    #[arg(long)]
    pub secret: Option<String>,
    /// A file with the client's public JWK Set (private_key_jwt, SMART Backend Services).
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// A URL serving the client's public JWK Set (private_key_jwt).
    #[arg(long)]
    pub jwks_uri: Option<String>,
}

/// `admin user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Register (or replace) a user; prints what was registered as JSON.
    Add(UserAddArgs),
}

/// Arguments of `admin user add`.
#[derive(Debug, Args)]
pub struct UserAddArgs {
    #[command(flatten)]
    pub config: Config,
    /// The name the person signs in with.
    #[arg(long)]
    pub username: String,
    /// Read the password from standard input (first line).
    #[arg(long, required = true)]
    pub password_stdin: bool,
    /// The person's FHIR resource: Practitioner/ID (staff) or Patient/ID.
    #[arg(long)]
    pub fhir_user: String,
    /// Enrol a TOTP second factor (the secret and otpauth URI are printed) and require it.
    #[arg(long)]
    pub totp: bool,
}

/// Arguments of `admin token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub config: Config,
    /// Space-separated SMART scopes, e.g. "system/*.*" or "system/Patient.rs system/Observation.r".
    #[arg(long)]
    pub scope: String,
    /// Lifetime of the token in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Subject (`sub` claim) recorded in the token.
    #[arg(long, default_value = "operator")]
    pub subject: String,
}

/// Arguments of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub config: Config,
    /// Files to load (`*.json` Bundles or resources, `*.ndjson` one resource per line); a
    /// directory means every `*.json` and `*.ndjson` file in it, in name order.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub files: Vec<PathBuf>,
    /// Number of files loaded at the same time.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Resources written per database transaction (NDJSON and collection Bundles).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// FHIR base URL that absolute fullUrls and references in transaction Bundles are resolved
    /// against.
    #[arg(long, env = "IRONFHIR_BASE_URL", default_value = "http://localhost:8080/fhir")]
    pub base_url: String,
    /// Inline content (Binary.data, Attachment.data) larger than this many bytes is moved to
    /// the document store; 0 keeps everything inline.
    #[arg(long, default_value_t = crate::documents::offload::DEFAULT_THRESHOLD)]
    pub offload_over: usize,
    #[command(flatten)]
    pub documents: crate::documents::DocumentArgs,
}

/// Arguments of `reindex`.
#[derive(Debug, Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub config: Config,
    /// Resources re-indexed per database transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch_size: i64,
    /// Start over instead of resuming an interrupted rebuild.
    #[arg(long)]
    pub restart: bool,
    /// FHIR base URL of the server: absolute references to it are indexed as local ones.
    #[arg(long, env = "IRONFHIR_BASE_URL", default_value = "http://localhost:8080/fhir")]
    pub base_url: String,
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: Config,
    /// Address and port to listen on.
    #[arg(long, env = "IRONFHIR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with --tls-key serves HTTPS.
    #[arg(long, env = "IRONFHIR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "IRONFHIR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Lowest TLS version accepted: 1.3 (default) or 1.2.
    #[arg(long, env = "IRONFHIR_TLS_MIN_VERSION", default_value = "1.3", value_parser = ["1.2", "1.3"])]
    pub tls_min_version: String,
    /// Public base URL of the FHIR API (used in Location headers and Bundle links); by default
    /// derived from each request's Host header.
    #[arg(long, env = "IRONFHIR_BASE_URL")]
    pub base_url: Option<String>,
    /// Largest request body accepted, in bytes (413 above it); also the largest resource a
    /// JSON Patch may produce.
    #[arg(long, env = "IRONFHIR_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Largest number of entries in a batch or transaction Bundle (413 above it).
    #[arg(long, env = "IRONFHIR_MAX_BUNDLE_ENTRIES", default_value_t = 10_000)]
    pub max_bundle_entries: usize,
    /// Seconds a client may take from the first byte of a request head to its end (a slow
    /// head holds a connection: slowloris); 408 with an OperationOutcome, then the connection
    /// is closed.
    #[arg(long, env = "IRONFHIR_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight (before its first request
    /// and between keep-alive requests) before the server closes it.
    #[arg(long, env = "IRONFHIR_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,
    /// Seconds an `Appointment/$hold` keeps its slot before it expires (the hold sweeper then
    /// cancels the pending Appointment and frees the slot).
    #[arg(long, env = "IRONFHIR_HOLD_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub hold_seconds: u64,
    /// Statement timeout for database queries, in milliseconds.
    #[arg(long, env = "IRONFHIR_STATEMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub statement_timeout_ms: u64,
    /// Load a small synthetic demo data set (organisations, practitioners, patients and their
    /// records) into the database if it is not there yet.
    #[arg(long, env = "IRONFHIR_DEMO")]
    pub demo: bool,
    /// Size of the database connection pool.
    #[arg(long, env = "IRONFHIR_DB_POOL_SIZE", default_value_t = 20)]
    pub db_pool_size: u32,
    /// The document store (uploads, export files): local directory or S3, URL lifetimes.
    #[command(flatten)]
    pub documents: crate::documents::DocumentArgs,
    /// Hours a finished `$export` job and its files are kept before they are deleted.
    #[arg(long, env = "IRONFHIR_EXPORT_RETENTION_HOURS", default_value_t = 24)]
    pub export_retention_hours: u64,
    /// Origins allowed to call the FHIR API and the token endpoint from a browser (CORS),
    /// comma-separated; `*` allows any origin (bearer tokens, no cookies, are what cross).
    #[arg(long, env = "IRONFHIR_CORS_ORIGINS", default_value = "*", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Lifetime of access tokens issued by the authorization server, in seconds.
    #[arg(long, env = "IRONFHIR_ACCESS_TOKEN_TTL", default_value_t = 900)]
    pub access_token_ttl: u64,
    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, env = "IRONFHIR_REFRESH_TOKEN_TTL", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl: u64,
    /// A sign-in session at the authorization server ends after this many idle seconds.
    #[arg(long, env = "IRONFHIR_SESSION_IDLE_TIMEOUT", default_value_t = 1800)]
    pub session_idle_timeout: u64,
    /// Wrong passwords in a row before an account is locked.
    #[arg(long, env = "IRONFHIR_MAX_LOGIN_FAILURES", default_value_t = 5)]
    pub max_login_failures: i32,
    /// Seconds a locked account stays locked.
    #[arg(long, env = "IRONFHIR_LOCKOUT_SECONDS", default_value_t = 900)]
    pub lockout_seconds: u64,
    /// Benchmarks only: record no audit trail (to measure what auditing costs). Never in
    /// production: every access must leave an AuditEvent.
    #[arg(long, hide = true)]
    pub no_audit: bool,
    /// Benchmarks only: store new writes without sealing their PHI elements (to measure what
    /// sealing costs). Never in production.
    #[arg(long, hide = true)]
    pub no_seal: bool,
    /// Role templates of the staff hierarchy (JSON, the format of
    /// fhir-profiles/role-templates.json, which applies without this flag).
    #[arg(long, env = "IRONFHIR_ROLE_TEMPLATES")]
    pub role_templates: Option<PathBuf>,
    /// Drug-drug interaction table (JSON, the shape of fhir-profiles/drug-interactions.json)
    /// used by the prescription check and the CDS Hooks service instead of the shipped one.
    #[arg(long, env = "IRONFHIR_INTERACTION_TABLE")]
    pub interaction_table: Option<PathBuf>,
    /// NATS server to publish every change to (JetStream, `nats://host:4222`); no event
    /// stream without it.
    #[arg(long, env = "IRONFHIR_NATS_URL")]
    pub nats_url: Option<String>,
    /// Subject prefix of the event stream (`<prefix>.<ResourceType>.<interaction>`); the
    /// JetStream stream is named after it in capitals.
    #[arg(long, env = "IRONFHIR_NATS_STREAM", default_value = "ironfhir")]
    pub nats_stream: String,
    /// Failed rest-hook deliveries in a row after which a Subscription is set to `error`.
    #[arg(long, env = "IRONFHIR_SUBSCRIPTION_MAX_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub subscription_max_failures: i32,
    /// Hours notifications are kept after delivery, for `Subscription/$events` catch-up.
    #[arg(long, env = "IRONFHIR_NOTIFICATION_RETENTION_HOURS", default_value_t = 72)]
    pub notification_retention_hours: u64,
}

impl ServeArgs {
    /// The event machinery's settings.
    pub fn events_config(&self) -> crate::events::EventsConfig {
        crate::events::EventsConfig {
            nats_url: self.nats_url.clone(),
            nats_stream: self.nats_stream.clone(),
            max_delivery_failures: self.subscription_max_failures,
            notification_retention: chrono::Duration::hours(self.notification_retention_hours.min(24 * 365 * 10) as i64),
        }
    }

    /// The authorization server's settings.
    pub fn oauth_settings(&self) -> crate::oauth::Settings {
        use std::time::Duration;
        crate::oauth::Settings {
            access_token_ttl: Duration::from_secs(self.access_token_ttl.max(1)),
            refresh_token_ttl: Duration::from_secs(self.refresh_token_ttl.max(1)),
            session_idle_timeout: Duration::from_secs(self.session_idle_timeout.max(1)),
            max_login_failures: self.max_login_failures.max(1),
            lockout: Duration::from_secs(self.lockout_seconds),
        }
    }
}

/// Settings shared by every subcommand: where data lives and which keys sign tokens.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Directory for the embedded database and generated keys.
    #[arg(long, env = "IRONFHIR_DATA_DIR", default_value = "./ironfhir-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL; without it an embedded PostgreSQL runs in <data-dir>/postgres.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// PEM (PKCS#8) P-256 private key that signs access tokens; generated into
    /// <data-dir>/signing-key.pem on first use when not given.
    #[arg(long, env = "IRONFHIR_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// `iss` of the tokens this server signs and accepts.
    #[arg(long, env = "IRONFHIR_ISSUER", default_value = "ironfhir")]
    pub issuer: String,
    /// File holding the key-encryption key (32 bytes, base64) that wraps the data keys sealing
    /// PHI; `IRONFHIR_KEK` (base64) takes precedence. Without either, <data-dir>/kek.key is
    /// used, generated when the database has no keys yet.
    #[arg(long, env = "IRONFHIR_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// PHI policy (JSON, the format of fhir-profiles/phi-policy.json, which applies without
    /// this flag): which elements are sealed.
    #[arg(long, env = "IRONFHIR_PHI_POLICY")]
    pub phi_policy: Option<PathBuf>,
    /// Characters of a protected string value (a name part, a city) whose prefixes are
    /// blind-indexed: prefix searches up to this length are exact.
    #[arg(long, env = "IRONFHIR_BLIND_PREFIX_LENGTH", default_value_t = 32)]
    pub blind_prefix_length: usize,
}
