//! The `ironfhir` binary: `serve`, `migrate`, `import`, `reindex`, `admin token`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ironfhir::config::{AdminCommand, AuditCommand, Cli, ClientCommand, Command, UserCommand};
use ironfhir::server;

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
    let result = match cli.command {
        Command::Serve(args) => server::serve(args).await,
        Command::Migrate(config) => migrate(config).await,
        Command::Import(args) => ironfhir::import::run(args).await,
        Command::Reindex(args) => ironfhir::reindex::run(args).await,
        Command::Audit { command: AuditCommand::Verify(config) } => ironfhir::audit::trail::verify_command(config).await,
        Command::Keys { command } => ironfhir::crypto::cli::run(command).await,
        Command::Admin { command: AdminCommand::Token(args) } => server::token_authority(&args.config)
            .and_then(|authority| authority.issue(&args.subject, &args.scope, args.ttl))
            .map(|token| println!("{token}")),
        Command::Admin { command: AdminCommand::Client { command: ClientCommand::Add(args) } } => ironfhir::oauth::admin::client_add(args).await,
        Command::Admin { command: AdminCommand::User { command: UserCommand::Add(args) } } => ironfhir::oauth::admin::user_add(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ironfhir: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: ironfhir::config::Config) -> Result<(), String> {
    let db = server::open_database(&config, 2, Duration::from_secs(600)).await?;
    db.close().await?;
    println!("migrations applied");
    Ok(())
}
