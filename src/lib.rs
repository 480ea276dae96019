//! ironfhir — a FHIR R4 server on PostgreSQL JSONB.
//!
//! Reading order:
//! - [`config`]: the one `Config`, from flags and environment.
//! - [`error`]: `FhirError`, rendered once as an OperationOutcome.
//! - [`fhir`]: the official R4 definitions, validation, validated newtypes.
//! - [`store`]: PostgreSQL (embedded or external), migrations, resource + history tables.
//! - [`auth`]: bearer tokens → `Principal` (who is asking, with which scopes).
//! - [`interactions`]: create/read/update/… as plain async functions over the store.
//! - [`rest`]: the thin axum layer — parse, call an interaction, render JSON or XML.
//! - [`server`]: wiring: start the database, build the router, serve HTTP or HTTPS.

pub mod error;
pub mod fhir;
