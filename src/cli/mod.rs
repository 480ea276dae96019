//! The command line: one function per `ironfhir` subcommand. Each opens the database the way
//! `serve` does ([`crate::server::open_database`]), calls the domain modules, prints for the
//! operator, and leaves an AuditEvent for every change it makes ([`record`]): import and
//! `--demo` loads, key rotations, client and user registrations, index rebuilds.
//!
//! Domain modules (`import`, `reindex`, `crypto::keys`, `oauth::accounts`, `audit::trail`) hold
//! no command-line code: no argument parsing, printing or progress bars.

mod admin;
mod audit;
mod import;
mod keys;
mod reindex;

use std::time::Duration;

use crate::config::{AdminCommand, AuditCommand, ClientCommand, Command, Config, UserCommand};
use crate::server;

/// Runs one subcommand; `Err` is printed by `main` and exits non-zero.
pub async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(args) => server::serve(args).await,
        Command::Migrate(config) => migrate(config).await,
        Command::Import(args) => import::run(args).await,
        Command::Reindex(args) => reindex::run(args).await,
        Command::Audit { command: AuditCommand::Verify(config) } => audit::verify(config).await,
        Command::Keys { command } => keys::run(command).await,
        Command::Admin { command: AdminCommand::Token(args) } => server::token_authority(&args.config)
            .and_then(|authority| authority.issue(&args.subject, &args.scope, args.ttl))
            .map(|token| println!("{token}")),
        Command::Admin { command: AdminCommand::Client { command: ClientCommand::Add(args) } } => admin::client_add(args).await,
        Command::Admin { command: AdminCommand::User { command: UserCommand::Add(args) } } => admin::user_add(args).await,
    }
}

/// `ironfhir migrate`: the schema of this build, then exit.
async fn migrate(config: Config) -> Result<(), String> {
    let db = server::open_database(&config, 2, Duration::from_secs(600)).await?;
    db.close().await?;
    println!("migrations applied");
    Ok(())
}

/// Appends the AuditEvent of a command's change to the chain (the command's own writer; a
/// running server projects it like any other event).
async fn record(store: &crate::store::Store, event: serde_json::Value) -> Result<(), String> {
    crate::audit::trail::AuditTrail::start(store.clone())
        .record(event)
        .await
        .map_err(|e| format!("cannot record the change in the audit trail: {e}"))
}
