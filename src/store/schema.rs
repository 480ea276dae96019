//! The database schema: tables by migration, SQL functions by definition.
//!
//! Tables, indexes and triggers change by migrations (`migrations/NNNN_*.sql`, applied once
//! each, in order). SQL functions do not: each has one definition in `migrations/functions/`,
//! re-applied before the migrations whenever those files change. A chain of migrations that
//! redefined the same function again and again (search_index_replace three times, audit_append
//! four) is what this replaces: the definition a reader finds is the one that runs.
//!
//! Databases created by builds before the baseline (migrations 0001–0018) are adopted when
//! their chain is complete: their schema is the baseline's, so their migration record is
//! rewritten to name the baseline instead.

use sha2::{Digest, Sha256};
use sqlx::{Executor, PgPool};

/// Embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The function definitions, in the order they are applied.
const FUNCTIONS: &[(&str, &str)] = &[
    ("search.sql", include_str!("../../migrations/functions/search.sql")),
    ("audit.sql", include_str!("../../migrations/functions/audit.sql")),
    ("scheduling.sql", include_str!("../../migrations/functions/scheduling.sql")),
    ("consent.sql", include_str!("../../migrations/functions/consent.sql")),
    ("events.sql", include_str!("../../migrations/functions/events.sql")),
];

/// The last version of the chain the baseline replaced, and its first migration's description.
const PRE_BASELINE_LAST: i64 = 18;
const PRE_BASELINE_FIRST_DESCRIPTION: &str = "resources";

/// Serialises function (re)definition between server instances starting at once: two
/// concurrent `CREATE OR REPLACE FUNCTION` of one function fail with "tuple concurrently updated".
const FUNCTIONS_LOCK: i64 = 7_598_258_041_199_617_141;

/// Names the whole schema (every migration's checksum and every function definition): test
/// harnesses key their template databases on it.
pub fn fingerprint() -> String {
    let mut hash = Sha256::new();
    for migration in MIGRATOR.iter() {
        hash.update(migration.version.to_be_bytes());
        hash.update(&*migration.checksum);
    }
    hash.update(functions_hash().as_bytes());
    hex::encode(&hash.finalize()[..12])
}

fn functions_hash() -> String {
    let mut hash = Sha256::new();
    for (name, sql) in FUNCTIONS {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(sql.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// Brings the database to this build's schema: adopts a pre-baseline database, (re)defines the
/// SQL functions when their files changed, then applies pending migrations.
pub async fn apply(pool: &PgPool) -> Result<(), String> {
    adopt_pre_baseline(pool).await?;
    define_functions(pool).await.map_err(|e| format!("cannot define the SQL functions: {e}"))?;
    MIGRATOR.run(pool).await.map_err(|e| e.to_string())
}

/// Functions first, before any migration: triggers and index expressions the migrations create
/// may call them. Bodies are not checked at definition (`check_function_bodies = off`, as
/// pg_dump restores do), so a function may name a table a later migration creates.
async fn define_functions(pool: &PgPool) -> Result<(), sqlx::Error> {
    let wanted = functions_hash();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(FUNCTIONS_LOCK).execute(&mut *tx).await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_functions (singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), hash text NOT NULL)",
    )
    .await?;
    let current: Option<String> = sqlx::query_scalar("SELECT hash FROM schema_functions").fetch_optional(&mut *tx).await?;
    if current.as_deref() == Some(wanted.as_str()) {
        return tx.commit().await;
    }
    tx.execute("SET LOCAL check_function_bodies = off").await?;
    for (_, sql) in FUNCTIONS {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
    }
    sqlx::query("INSERT INTO schema_functions (singleton, hash) VALUES (true, $1) ON CONFLICT (singleton) DO UPDATE SET hash = EXCLUDED.hash")
        .bind(&wanted)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// A database whose migration record is the pre-baseline chain: complete, it is recorded as the
/// baseline (same schema); incomplete, it is refused with what to do, since the steps between
/// its version and the baseline are no longer in this build.
async fn adopt_pre_baseline(pool: &PgPool) -> Result<(), String> {
    let error = |e: sqlx::Error| format!("cannot read the migration record: {e}");
    let has_record: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await.map_err(error)?;
    if !has_record {
        return Ok(());
    }
    let first: Option<String> =
        sqlx::query_scalar("SELECT description FROM _sqlx_migrations WHERE version = 1").fetch_optional(pool).await.map_err(error)?;
    if first.as_deref() != Some(PRE_BASELINE_FIRST_DESCRIPTION) {
        return Ok(());
    }
    let (applied, last): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*) FILTER (WHERE success), max(version) FROM _sqlx_migrations").fetch_one(pool).await.map_err(error)?;
    if applied != PRE_BASELINE_LAST || last != Some(PRE_BASELINE_LAST) {
        return Err(format!(
            "this database was migrated by an earlier build to migration {} of {PRE_BASELINE_LAST}; run that build once (`ironfhir migrate`) to finish its migrations, then this one",
            last.unwrap_or(0)
        ));
    }
    let baseline = MIGRATOR.iter().next().ok_or("this build has no migrations")?;
    let mut tx = pool.begin().await.map_err(error)?;
    let rewrite = async move {
        tx.execute("LOCK TABLE _sqlx_migrations IN EXCLUSIVE MODE").await?;
        tx.execute("DELETE FROM _sqlx_migrations").await?;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) VALUES ($1, $2, now(), true, $3, 0)",
        )
        .bind(baseline.version)
        .bind(&*baseline.description)
        .bind(&*baseline.checksum)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    };
    rewrite.await.map_err(|e| format!("cannot record the baseline migration: {e}"))?;
    tracing::info!("adopted a database migrated by an earlier build: its migrations 1-{PRE_BASELINE_LAST} are recorded as the baseline");
    Ok(())
}
