//! The schema's two halves: migrations (applied once each) and SQL function definitions
//! (re-applied when their files change), and the adoption of pre-baseline databases.

use std::time::Duration;

use ironfhir::store::Store;
use sqlx::{Connection, Executor, PgConnection};

use crate::helpers::admin_url;

/// An empty database (not the migrated template) and its URL.
async fn empty_database() -> (String, String) {
    let admin = admin_url();
    let name = format!("ironfhir_schema_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
    (format!("{}/{name}", admin.rsplit_once('/').unwrap().0), name)
}

async fn drop_database(name: &str) {
    let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).await.unwrap();
}

const FUNCTIONS: [&str; 8] = [
    "fhir_text_range",
    "fhir_value_range",
    "fhir_normalize",
    "fhir_number",
    "search_index_replace",
    "audit_append_only",
    "audit_append",
    "audit_project",
];

#[tokio::test]
async fn functions_are_defined_before_the_migrations_and_redefined_when_their_files_change() {
    let (url, name) = empty_database().await;
    let store = Store::connect(&url, 2, Duration::from_secs(60)).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.expect("applying the schema twice is a no-op");
    let mut db = PgConnection::connect(&url).await.unwrap();
    let defined: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_proc WHERE proname = ANY($1)")
        .bind(&FUNCTIONS[..])
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(defined, FUNCTIONS.len() as i64, "one definition of each function");
    let folded: String = sqlx::query_scalar("SELECT fhir_normalize('ÀBç')").fetch_one(&mut db).await.unwrap();
    assert_eq!(folded, "abc");

    // A definition that differs from the files while the record says so is left alone (the
    // record is the cheap check at start-up)...
    db.execute("CREATE OR REPLACE FUNCTION fhir_normalize(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'stale' $$").await.unwrap();
    store.migrate().await.unwrap();
    let folded: String = sqlx::query_scalar("SELECT fhir_normalize('ÀBç')").fetch_one(&mut db).await.unwrap();
    assert_eq!(folded, "stale");
    // ...and a record of other files (an older build's) makes the start-up define them again.
    db.execute("UPDATE schema_functions SET hash = 'an older build'").await.unwrap();
    store.migrate().await.unwrap();
    let folded: String = sqlx::query_scalar("SELECT fhir_normalize('ÀBç')").fetch_one(&mut db).await.unwrap();
    assert_eq!(folded, "abc");
    db.close().await.unwrap();
    store.pool().close().await;
    drop_database(&name).await;
}

/// Rewrites a migrated database's record to look like the pre-baseline chain up to `last`.
async fn pretend_pre_baseline(url: &str, last: i64) {
    let mut db = PgConnection::connect(url).await.unwrap();
    db.execute("DELETE FROM _sqlx_migrations").await.unwrap();
    for version in 1..=last {
        let description = if version == 1 { "resources".to_owned() } else { format!("step {version}") };
        sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES ($1, $2, true, '\\x00', 1)")
            .bind(version)
            .bind(description)
            .execute(&mut db)
            .await
            .unwrap();
    }
    db.close().await.unwrap();
}

/// A database as the pre-baseline chain left it: the baseline's schema (functions, then the
/// first migration alone), recorded as migrations 1..=`last` of that chain.
async fn pre_baseline_database(url: &str, last: i64) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    tx.execute("SET LOCAL check_function_bodies = off").await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/functions");
    for entry in std::fs::read_dir(dir).unwrap() {
        let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let baseline = ironfhir::store::MIGRATOR.iter().next().unwrap().clone();
    sqlx::migrate::Migrator::with_migrations(vec![baseline]).run(&pool).await.unwrap();
    pool.close().await;
    pretend_pre_baseline(url, last).await;
}

#[tokio::test]
async fn a_database_of_the_pre_baseline_chain_is_adopted_when_complete_and_refused_when_not() {
    let (url, name) = empty_database().await;
    pre_baseline_database(&url, 14).await;
    let store = Store::connect(&url, 2, Duration::from_secs(60)).await.unwrap();
    let refused = store.migrate().await.expect_err("a half-migrated pre-baseline database");
    assert!(refused.contains("migration 14 of 18"), "{refused}");

    pretend_pre_baseline(&url, 18).await;
    store.migrate().await.expect("a complete pre-baseline chain is adopted, then migrated on");
    let mut db = PgConnection::connect(&url).await.unwrap();
    let record: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version").fetch_all(&mut db).await.unwrap();
    let expected: Vec<(i64, String)> = ironfhir::store::MIGRATOR.iter().map(|m| (m.version, m.description.to_string())).collect();
    assert_eq!(record, expected);
    assert_eq!(record[0], (1, "baseline".to_owned()));
    store.migrate().await.expect("and from then on it is a baseline database");
    db.close().await.unwrap();
    store.pool().close().await;
    drop_database(&name).await;
}
