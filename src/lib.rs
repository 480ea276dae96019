//! ironfhir — a FHIR R4 server on PostgreSQL JSONB.
//!
//! Reading order:
//! - [`config`]: the one `Config`, from flags and environment.
//! - [`error`]: `FhirError`, rendered once as an OperationOutcome.
//! - [`fhir`]: the official R4 definitions, validation, validated newtypes.
//! - [`crypto`]: PHI sealing (AES-256-GCM envelope encryption), key rotation, blind indexes.
//! - [`store`]: PostgreSQL (embedded or external), migrations, resource + history tables.
//! - [`auth`]: bearer tokens → `Principal` (who is asking, with which scopes).
//! - [`access`]: who reaches what: patient compartments, organisation subtrees, role masks,
//!   Consent that withholds.
//! - [`oauth`]: the SMART on FHIR authorization server (clients, users, login, tokens).
//! - [`search`]: query parameters → SQL over the stored JSON.
//! - [`interactions`]: create/read/update/… as plain async functions over the store; their
//!   `rules` run the [`workflows`] (scheduling, pharmacy, billing, messaging, medication safety)
//!   inside every write.
//! - [`rest`]: the thin axum layer — route, parse, call an interaction, render JSON or XML; the
//!   CDS Hooks service.
//! - [`export`]: Bulk Data `$export` jobs and their background worker; [`documents`]: where
//!   their files live.
//! - [`events`]: the transactional outbox, Subscriptions (rest-hook, websocket, Backport
//!   topics) and the NATS event stream.
//! - [`import`]: bulk loading of Bundles and NDJSON; [`cli`]: the `ironfhir` subcommands.
//! - [`server`]: wiring: start the database, build the router, serve HTTP or HTTPS.

pub mod access;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod documents;
pub mod error;
pub mod events;
pub mod export;
pub mod fhir;
pub mod fhirpath;
pub mod import;
pub mod index;
pub mod interactions;
pub mod oauth;
pub mod reindex;
pub mod rest;
pub mod search;
pub mod server;
pub mod store;
pub mod workflows;
