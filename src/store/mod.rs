//! PostgreSQL storage: current resources as JSONB plus an append-only history.
//!
//! Interactions call these narrow functions; SQL lives only here (and in `search`). Every write
//! goes through [`Store::with_transaction`], which retries serialization failures, so a
//! resource, its history row and (later) its index, audit and outbox rows commit together.

pub mod embedded;
pub mod import;
pub mod schema;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::error::{FhirError, FhirResult};
use crate::index;

pub use schema::MIGRATOR;

/// A version of a resource as stored: current row or history row.
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub deleted: bool,
    /// The resource JSON with `meta.versionId` / `meta.lastUpdated` set; `None` when deleted.
    pub content: Option<Value>,
    /// HTTP method that produced this version (history rows only).
    pub method: Option<String>,
}

impl StoredResource {
    /// The live version a write just stored: what create, update and Bundle entries answer.
    pub fn written(resource_type: &str, id: &str, version_id: i64, last_updated: DateTime<Utc>, content: Value) -> Self {
        StoredResource {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version_id,
            last_updated,
            deleted: false,
            content: Some(content),
            method: None,
        }
    }
}

/// The database handle shared by all requests.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// A database transaction of the store.
pub type Tx = Transaction<'static, Postgres>;

/// The future a [`Store::with_transaction`] body returns: it owns the transaction for the
/// duration of one attempt and hands it back with its result.
pub type TxFuture<'c, T> = Pin<Box<dyn Future<Output = (Tx, FhirResult<T>)> + Send + 'c>>;

impl Store {
    /// Connects a pool; `statement_timeout` turns runaway queries into errors instead of hangs.
    ///
    /// JIT compilation is off: PostgreSQL compiles a query it expects to be costly with LLVM,
    /// which does not heed cancellation, so a search of many alternatives over many types held
    /// a backend for minutes past the statement timeout (even `pg_terminate_backend` waited).
    /// Our statements are short index lookups that JIT does not speed up.
    pub async fn connect(url: &str, pool_size: u32, statement_timeout: Duration) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        let options = options
            .application_name("ironfhir")
            .options([("statement_timeout", format!("{}", statement_timeout.as_millis())), ("jit", "off".to_owned())]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Store { pool })
    }

    /// Brings the database to this build's schema (functions and migrations, [`schema::apply`]).
    pub async fn migrate(&self) -> Result<(), String> {
        schema::apply(&self.pool).await
    }

    /// The underlying pool, for subsystems that own their SQL (search).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `f` in one transaction, retrying up to three times when PostgreSQL reports a
    /// serialization failure, deadlock or a unique violation from a concurrent insert.
    pub async fn with_transaction<'c, T, F>(&self, mut f: F) -> FhirResult<T>
    where
        T: Send,
        F: FnMut(Tx) -> TxFuture<'c, T> + Send,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tx = self.pool.begin().await?;
            let (tx, result) = f(tx).await;
            let result = match result {
                Ok(value) => tx.commit().await.map(|_| value).map_err(FhirError::from),
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            };
            match result {
                Err(FhirError::Retryable(_)) if attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
                    continue;
                }
                other => return other,
            }
        }
    }

    /// The current row of a resource, deleted or not.
    pub async fn read(&self, resource_type: &str, id: &str) -> FhirResult<Option<StoredResource>> {
        read_current(&self.pool, resource_type, id).await
    }

    /// One version from the history.
    pub async fn vread(&self, resource_type: &str, id: &str, version: i64) -> FhirResult<Option<StoredResource>> {
        read_version(&self.pool, resource_type, id, version).await
    }

    /// History entries, newest first, keyset-paged on the history sequence so that pages
    /// neither repeat nor skip entries while writes continue.
    pub async fn history(&self, q: &HistoryQuery<'_>) -> FhirResult<(Vec<StoredResource>, Option<i64>)> {
        let mut sql = sqlx::QueryBuilder::<Postgres>::new(
            "SELECT seq, resource_type, id, version_id, last_updated, deleted, content, method, sealed, key_id FROM resource_history WHERE true",
        );
        q.push_filters(&mut sql);
        if let Some(before) = q.before_seq {
            sql.push(" AND seq < ").push_bind(before);
        }
        sql.push(" ORDER BY seq DESC LIMIT ").push_bind(q.count as i64 + 1);
        let rows = sql.build().fetch_all(&self.pool).await?;
        let mut out: Vec<StoredResource> = Vec::with_capacity(rows.len());
        let mut next = None;
        for (i, row) in rows.iter().enumerate() {
            if i == q.count {
                next = Some(rows[i - 1].get::<i64, _>("seq"));
                break;
            }
            out.push(history_from_row(row)?);
        }
        Ok((out, next))
    }

    /// Number of history entries matching a history query (for `Bundle.total`).
    pub async fn history_total(&self, q: &HistoryQuery<'_>) -> FhirResult<i64> {
        let mut sql = sqlx::QueryBuilder::<Postgres>::new("SELECT count(*) FROM resource_history WHERE true");
        q.push_filters(&mut sql);
        Ok(sql.build().fetch_one(&self.pool).await?.get::<i64, _>(0))
    }
}

/// Filters of a history request.
#[derive(Debug, Default)]
pub struct HistoryQuery<'a> {
    pub resource_type: Option<&'a str>,
    pub id: Option<&'a str>,
    pub since: Option<DateTime<Utc>>,
    pub at: Option<DateTime<Utc>>,
    pub before_seq: Option<i64>,
    pub count: usize,
}

impl HistoryQuery<'_> {
    /// Appends the type/id/_since/_at conditions shared by the page and the total.
    fn push_filters(&self, sql: &mut sqlx::QueryBuilder<Postgres>) {
        if let Some(rt) = self.resource_type {
            sql.push(" AND resource_type = ").push_bind(rt.to_owned());
        } else {
            // The audit trail writes an AuditEvent for every request: system history would be
            // mostly its own echo. AuditEvents have their own history (AuditEvent/_history).
            sql.push(" AND resource_type <> 'AuditEvent'");
        }
        if let Some(id) = self.id {
            sql.push(" AND id = ").push_bind(id.to_owned());
        }
        if let Some(since) = self.since {
            sql.push(" AND last_updated >= ").push_bind(since);
        }
        if let Some(at) = self.at {
            // http.html#history: `_at` keeps the versions that were current at that instant —
            // written at or before it and not yet replaced by a later version of the same
            // resource written at or before it (older versions are not what was current).
            sql.push(" AND last_updated <= ").push_bind(at);
            sql.push(
                " AND NOT EXISTS (SELECT 1 FROM resource_history later WHERE later.resource_type = resource_history.resource_type \
                 AND later.id = resource_history.id AND later.version_id > resource_history.version_id AND later.last_updated <= ",
            )
            .push_bind(at)
            .push(")");
        }
    }
}

/// The current row of a resource, deleted or not, inside a transaction (it sees the
/// transaction's own writes — a GET entry of a transaction Bundle reads through this).
pub async fn read_in(tx: &mut Tx, resource_type: &str, id: &str) -> FhirResult<Option<StoredResource>> {
    read_current(&mut **tx, resource_type, id).await
}

/// One version from the history, inside a transaction.
pub async fn vread_in(tx: &mut Tx, resource_type: &str, id: &str, version: i64) -> FhirResult<Option<StoredResource>> {
    read_version(&mut **tx, resource_type, id, version).await
}

async fn read_current<'e, E: sqlx::PgExecutor<'e>>(executor: E, resource_type: &str, id: &str) -> FhirResult<Option<StoredResource>> {
    let row = sqlx::query("SELECT version_id, last_updated, deleted, content, sealed, key_id FROM resource WHERE resource_type = $1 AND id = $2")
        .bind(resource_type)
        .bind(id)
        .fetch_optional(executor)
        .await?;
    row.map(|r| current_from_row(resource_type, id, &r)).transpose()
}

async fn read_version<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    resource_type: &str,
    id: &str,
    version: i64,
) -> FhirResult<Option<StoredResource>> {
    let row = sqlx::query(
        "SELECT resource_type, id, version_id, last_updated, deleted, content, method, sealed, key_id FROM resource_history \
         WHERE resource_type = $1 AND id = $2 AND version_id = $3",
    )
    .bind(resource_type)
    .bind(id)
    .bind(version)
    .fetch_optional(executor)
    .await?;
    row.map(|r| history_from_row(&r)).transpose()
}

fn current_from_row(resource_type: &str, id: &str, r: &sqlx::postgres::PgRow) -> FhirResult<StoredResource> {
    let version_id: i64 = r.get("version_id");
    Ok(StoredResource {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version_id,
        last_updated: r.get("last_updated"),
        deleted: r.get("deleted"),
        content: open_row(resource_type, id, version_id, r)?,
        method: None,
    })
}

fn history_from_row(r: &sqlx::postgres::PgRow) -> FhirResult<StoredResource> {
    let resource_type: String = r.get("resource_type");
    let id: String = r.get("id");
    let version_id: i64 = r.get("version_id");
    let content = open_row(&resource_type, &id, version_id, r)?;
    Ok(StoredResource {
        resource_type,
        id,
        version_id,
        last_updated: r.get("last_updated"),
        deleted: r.get("deleted"),
        content,
        method: r.get("method"),
    })
}

/// The complete resource of a row selected with `content`, `sealed` and `key_id` columns: its
/// sealed elements decrypted and put back ([`crate::crypto::open`]).
pub fn open_row(resource_type: &str, id: &str, version_id: i64, r: &sqlx::postgres::PgRow) -> FhirResult<Option<Value>> {
    let sealed: Option<Vec<u8>> = r.get("sealed");
    let key_id: Option<String> = r.get("key_id");
    crate::crypto::open(resource_type, id, version_id, r.get("content"), sealed.as_deref(), key_id.as_deref())
}

/// The current version and deleted flag of a resource, locked until the transaction ends so
/// that concurrent updates of the same resource serialise.
pub async fn lock_current(
    tx: &mut Tx,
    resource_type: &str,
    id: &str,
) -> FhirResult<Option<(i64, bool)>> {
    let row = sqlx::query("SELECT version_id, deleted FROM resource WHERE resource_type = $1 AND id = $2 FOR UPDATE")
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The current content of a resource inside a transaction (after [`lock_current`]).
pub async fn current_content(
    tx: &mut Tx,
    resource_type: &str,
    id: &str,
) -> FhirResult<Option<Value>> {
    let row = sqlx::query("SELECT version_id, content, sealed, key_id FROM resource WHERE resource_type = $1 AND id = $2")
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        Some(r) => open_row(resource_type, id, r.get("version_id"), &r),
        None => Ok(None),
    }
}

/// Serialises conditional operations on the same criteria (two concurrent conditional creates
/// with the same If-None-Exist must not both create).
pub async fn lock_criteria(tx: &mut Tx, key: &str) -> FhirResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Writes a new version: upserts the current row, appends the history row and replaces the
/// resource's search index rows. `content` is `None` for a delete (which leaves no index rows).
/// `base` is the server's FHIR base, against which absolute references become local.
#[allow(clippy::too_many_arguments)]
pub async fn write_version(
    tx: &mut Tx,
    resource_type: &str,
    id: &str,
    version_id: i64,
    last_updated: DateTime<Utc>,
    method: &str,
    content: Option<&Value>,
    base: &str,
) -> FhirResult<()> {
    let deleted = content.is_none();
    let intent = crate::audit::intent::for_write();
    let sealed = content.map(|c| crate::crypto::seal(resource_type, id, version_id, c)).transpose()?;
    let (stored, ciphertext, key_id) = match &sealed {
        Some(s) => (Some(&s.content), s.sealed.as_deref(), s.key_id.as_deref()),
        None => (None, None, None),
    };
    sqlx::query(
        "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content, sealed, key_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (resource_type, id) DO UPDATE SET version_id = EXCLUDED.version_id, last_updated = EXCLUDED.last_updated, \
         deleted = EXCLUDED.deleted, content = EXCLUDED.content, sealed = EXCLUDED.sealed, key_id = EXCLUDED.key_id",
    )
    .bind(resource_type)
    .bind(id)
    .bind(version_id)
    .bind(last_updated)
    .bind(deleted)
    .bind(stored)
    .bind(ciphertext)
    .bind(key_id)
    .execute(&mut **tx)
    .await?;
    let index = index::rows_json(content.map(|c| (resource_type, id, c)), base);
    sqlx::query(
        "WITH history AS (INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, deleted, content, sealed, key_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10)), \
         intent AS (INSERT INTO audit_intent (request_id, resource_type, id, version_id, agent) \
           SELECT $11, $1, $2, $3, $12 WHERE $11::uuid IS NOT NULL) \
         SELECT search_index_replace(ARRAY[$1], ARRAY[$2], $8, false)",
    )
    .bind(resource_type)
    .bind(id)
    .bind(version_id)
    .bind(last_updated)
    .bind(method)
    .bind(deleted)
    .bind(stored)
    .bind(&index)
    .bind(ciphertext)
    .bind(key_id)
    .bind(intent.as_ref().map(|i| i.request_id))
    .bind(intent.as_ref().map(|i| i.agent()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether an active appointment other than `except` (a hold only until it expires) occupies
/// `occupant` (`Slot/ID`, `Practitioner/ID`, `PractitionerRole/ID`): the rows the booking
/// trigger keeps (migrations/0002_scheduling.sql), including this transaction's own writes.
pub async fn occupant_booked(tx: &mut Tx, occupant: &str, except: Option<&str>) -> FhirResult<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM appointment_booking WHERE occupant = $1 AND appointment_id IS DISTINCT FROM $2 \
           AND (hold_expires IS NULL OR hold_expires > now()))",
    )
    .bind(occupant)
    .bind(except)
    .fetch_one(&mut **tx)
    .await?)
}

/// How many MedicationDispenses other than `except`, in one of `statuses`, name `request`
/// (`MedicationRequest/ID`) as their authorizing prescription (the `prescription` index rows,
/// this transaction's writes included).
pub async fn dispenses_against(tx: &mut Tx, request: &str, except: &str, statuses: &[&str]) -> FhirResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(DISTINCT s.id) FROM search_reference s \
           JOIN resource r ON r.resource_type = s.resource_type AND r.id = s.id AND NOT r.deleted \
         WHERE s.resource_type = 'MedicationDispense' AND s.param = 'prescription' AND s.target = $1 AND s.id <> $2 \
           AND r.content ->> 'status' = ANY($3)",
    )
    .bind(request)
    .bind(except)
    .bind(statuses)
    .fetch_one(&mut **tx)
    .await?)
}

/// The active ChargeItemDefinitions (the price tables, `billing`) with a `code` coding among
/// `codes`: the stored content, without sealed elements (prices, codes and contexts are never
/// sealed).
pub async fn charge_item_definitions(tx: &mut Tx, codes: &[String]) -> FhirResult<Vec<Value>> {
    Ok(sqlx::query_scalar(
        "SELECT content FROM resource WHERE resource_type = 'ChargeItemDefinition' AND NOT deleted \
           AND content ->> 'status' = 'active' \
           AND EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(content #> '{code,coding}') = 'array' \
                       THEN content #> '{code,coding}' ELSE '[]' END) c WHERE c ->> 'code' = ANY($1)) \
         ORDER BY last_updated DESC, id LIMIT 100",
    )
    .bind(codes)
    .fetch_all(&mut **tx)
    .await?)
}

/// Whether PractitionerRole `role` treats Patient `patient` (`messaging`): the role's
/// organisation manages the patient, the patient names the role as general practitioner, or
/// the role took part in one of the patient's Appointments (the reference index rows).
pub async fn role_treats(tx: &mut Tx, role: &str, patient: &str) -> FhirResult<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM search_reference ro JOIN search_reference pa \
                  ON pa.resource_type = 'Patient' AND pa.id = $2 AND pa.param = 'organization' AND pa.target = ro.target \
                WHERE ro.resource_type = 'PractitionerRole' AND ro.id = $1 AND ro.param = 'organization') \
             OR EXISTS (SELECT 1 FROM search_reference WHERE resource_type = 'Patient' AND id = $2 AND param = 'general-practitioner' \
                  AND target = 'PractitionerRole/' || $1) \
             OR EXISTS (SELECT 1 FROM search_reference a JOIN search_reference b ON b.resource_type = 'Appointment' AND b.id = a.id \
                  AND b.param = 'actor' AND b.target = 'Patient/' || $2 \
                WHERE a.resource_type = 'Appointment' AND a.param = 'actor' AND a.target = 'PractitionerRole/' || $1)",
    )
    .bind(role)
    .bind(patient)
    .fetch_one(&mut **tx)
    .await?)
}

/// The patient's (`Patient/ID`) active or on-hold MedicationRequests other than `except`, as
/// stored (medication codes are never sealed): what a new prescription is checked against.
pub async fn active_medication_requests(tx: &mut Tx, patient: &str, except: &str) -> FhirResult<Vec<(String, Value)>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT r.id, r.content FROM search_reference s JOIN resource r ON r.resource_type = s.resource_type AND r.id = s.id \
         WHERE s.resource_type = 'MedicationRequest' AND s.param = 'subject' AND s.target = $1 AND s.id <> $2 \
           AND NOT r.deleted AND r.content ->> 'status' IN ('active', 'on-hold') LIMIT 500",
    )
    .bind(patient)
    .bind(except)
    .fetch_all(&mut **tx)
    .await?)
}

/// The patient's (`Patient/ID`) AllergyIntolerances that are active (or say nothing of their
/// clinical status) and not refuted or entered in error.
pub async fn active_allergies(tx: &mut Tx, patient: &str) -> FhirResult<Vec<(String, Value)>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT r.id, r.content FROM search_reference s JOIN resource r ON r.resource_type = s.resource_type AND r.id = s.id \
         WHERE s.resource_type = 'AllergyIntolerance' AND s.param = 'patient' AND s.target = $1 AND NOT r.deleted \
           AND coalesce(r.content #>> '{clinicalStatus,coding,0,code}', 'active') = 'active' \
           AND coalesce(r.content #>> '{verificationStatus,coding,0,code}', '') NOT IN ('refuted', 'entered-in-error') LIMIT 500",
    )
    .bind(patient)
    .fetch_all(&mut **tx)
    .await?)
}

/// Appointments whose hold has expired (still holding their time, or removed from it by a
/// booking that overlapped them), for the hold sweeper (`scheduling::holds`).
pub async fn expired_holds(store: &Store, limit: i64) -> FhirResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT appointment_id FROM appointment_booking WHERE hold_expires <= now() \
         UNION SELECT appointment_id FROM appointment_hold_lapsed LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&store.pool)
    .await?)
}

/// Forgets a lapsed hold once the sweeper has dealt with its Appointment.
pub async fn forget_lapsed_hold(store: &Store, appointment_id: &str) -> FhirResult<()> {
    sqlx::query("DELETE FROM appointment_hold_lapsed WHERE appointment_id = $1").bind(appointment_id).execute(&store.pool).await?;
    Ok(())
}

/// Creates a brand-new resource (server-assigned id, so no conflict is possible).
pub async fn insert_new(
    tx: &mut Tx,
    resource_type: &str,
    id: &str,
    last_updated: DateTime<Utc>,
    content: &Value,
    base: &str,
) -> FhirResult<()> {
    write_version(tx, resource_type, id, 1, last_updated, "POST", Some(content), base).await
}

/// Inserts many new resources (version 1, server-assigned ids) and their history rows in one
/// statement: a transaction Bundle's POST entries cost one round trip instead of two each.
/// `rows` are (type, id, content with `meta` stamped); all share `last_updated`.
pub async fn insert_many_new(tx: &mut Tx, rows: &[(&str, &str, &Value)], last_updated: DateTime<Utc>, base: &str) -> FhirResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let sealed: Vec<crate::crypto::SealedResource> =
        rows.iter().map(|(rt, id, c)| crate::crypto::seal(rt, id, 1, c)).collect::<FhirResult<_>>()?;
    let contents: Vec<String> = sealed.iter().map(|s| s.content.to_string()).collect();
    let ciphertexts: Vec<Option<&[u8]>> = sealed.iter().map(|s| s.sealed.as_deref()).collect();
    let key_ids: Vec<Option<&str>> = sealed.iter().map(|s| s.key_id.as_deref()).collect();
    let intent = crate::audit::intent::for_write();
    let index = index::rows_json(rows.iter().copied(), base);
    sqlx::query(
        "WITH input AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $6::bytea[], $7::text[]) AS t(resource_type, id, content, sealed, key_id)), \
         current AS (INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content, sealed, key_id) \
           SELECT resource_type, id, 1, $4, false, content::jsonb, sealed, key_id FROM input RETURNING resource_type, id, content, sealed, key_id), \
         history AS (INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, deleted, content, sealed, key_id) \
           SELECT resource_type, id, 1, $4, 'POST', false, content, sealed, key_id FROM current RETURNING 1), \
         intent AS (INSERT INTO audit_intent (request_id, resource_type, id, version_id, agent) \
           SELECT $8, resource_type, id, 1, $9 FROM input WHERE $8::uuid IS NOT NULL) \
         SELECT search_index_replace($1, $2, $5, true) FROM (SELECT count(*) FROM history) written",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&contents)
    .bind(last_updated)
    .bind(&index)
    .bind(&ciphertexts)
    .bind(&key_ids)
    .bind(intent.as_ref().map(|i| i.request_id))
    .bind(intent.as_ref().map(|i| i.agent()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates a resource with a fresh server-assigned id in one statement (one round trip, one
/// commit): the current row and its history row are written by the same atomic statement.
pub async fn create_one(store: &Store, resource_type: &str, id: &str, last_updated: DateTime<Utc>, content: &Value, base: &str) -> FhirResult<()> {
    let index = index::rows_json([(resource_type, id, content)], base);
    let sealed = crate::crypto::seal(resource_type, id, 1, content)?;
    let intent = crate::audit::intent::for_write();
    sqlx::query(
        "WITH current AS (INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content, sealed, key_id) \
         VALUES ($1, $2, 1, $3, false, $4, $6, $7) RETURNING 1), \
         history AS (INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, deleted, content, sealed, key_id) \
         SELECT $1, $2, 1, $3, 'POST', false, $4, $6, $7 FROM current RETURNING 1), \
         intent AS (INSERT INTO audit_intent (request_id, resource_type, id, version_id, agent) \
           SELECT $8, $1, $2, 1, $9 WHERE $8::uuid IS NOT NULL) \
         SELECT search_index_replace(ARRAY[$1], ARRAY[$2], $5, true) FROM history",
    )
    .bind(resource_type)
    .bind(id)
    .bind(last_updated)
    .bind(&sealed.content)
    .bind(&index)
    .bind(&sealed.sealed)
    .bind(&sealed.key_id)
    .bind(intent.as_ref().map(|i| i.request_id))
    .bind(intent.as_ref().map(|i| i.agent()))
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Writes the next version of `resource_type/id` (or its first) in one transaction: the current
/// row is locked, so concurrent writers of one resource get consecutive versions, and the
/// version is known before the write (the sealed elements' associated data names it).
/// `content` carries `meta.versionId` "1", corrected here for updates. Returns the version
/// written and whether the resource was created (new, or revived after a delete).
pub async fn upsert_one(
    store: &Store,
    resource_type: &str,
    id: &str,
    last_updated: DateTime<Utc>,
    method: &str,
    content: &Value,
    base: &str,
) -> FhirResult<(i64, bool)> {
    store
        .with_transaction(|mut tx| {
            Box::pin(async move {
                let result = async {
                    let current = lock_current(&mut tx, resource_type, id).await?;
                    let version = current.map_or(1, |(v, _)| v + 1);
                    let mut versioned = content.clone();
                    if let Some(meta) = versioned.get_mut("meta").and_then(Value::as_object_mut) {
                        meta.insert("versionId".into(), Value::String(version.to_string()));
                    }
                    write_version(&mut tx, resource_type, id, version, last_updated, method, Some(&versioned), base).await?;
                    Ok((version, current.is_none_or(|(_, deleted)| deleted)))
                }
                .await;
                (tx, result)
            })
        })
        .await
}
