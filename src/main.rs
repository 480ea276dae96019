//! The `ironfhir` binary: logging, the allocator and the TLS back-end; the subcommands are in
//! [`ironfhir::cli`].

use std::process::ExitCode;

use clap::Parser;
use ironfhir::config::Cli;

/// mimalloc instead of the system allocator: a JSON-heavy server allocates a lot of small
/// objects, and glibc malloc was ~8% of the CPU of a read-by-id benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // One TLS back-end for every client (HTTPS fetches of clients' JWK Sets).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = ironfhir::cli::run(cli.command).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ironfhir: {message}");
            ExitCode::FAILURE
        }
    }
}
