//! Integration tests: the real app on a random port, a fresh PostgreSQL database per test
//! (cloned from a migrated template), real HTTP through reqwest.

mod helpers;

mod audit;
mod auth;
mod billing;
mod bundles;
mod chaining;
mod compartments;
mod cli;
mod conditional;
mod crud;
mod documents;
mod errors;
mod every_parameter;
mod everything;
mod export;
mod formats;
mod history;
mod import;
mod layout;
mod metadata;
mod pharmacy;
mod sealing;
mod scheduling;
mod schema;
mod safety;
mod search;
mod search_index;
mod subscriptions;
mod event_stream;
mod validation;
