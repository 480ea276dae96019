//! The one configuration of every subcommand, from command-line flags and the environment.
//!
//! `serve`, `migrate`, `import` and `admin` all flatten [`Config`], so a token printed by
//! `admin token --data-dir D` is signed by the same key that `serve --data-dir D` checks.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Operator tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// Operator subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Print a signed access token (for operators, scripts and tests).
    Token(TokenArgs),
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
    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, env = "IRONFHIR_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest number of entries in a batch or transaction Bundle (413 above it).
    #[arg(long, env = "IRONFHIR_MAX_BUNDLE_ENTRIES", default_value_t = 10_000)]
    pub max_bundle_entries: usize,
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
    /// Directory of the document store (Bulk Data export files); default <data-dir>/documents.
    #[arg(long, env = "IRONFHIR_DOCUMENT_DIR")]
    pub document_dir: Option<PathBuf>,
    /// Hours a finished `$export` job and its files are kept before they are deleted.
    #[arg(long, env = "IRONFHIR_EXPORT_RETENTION_HOURS", default_value_t = 24)]
    pub export_retention_hours: u64,
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
}
