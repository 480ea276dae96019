//! Key management: the key-encryption key (KEK) behind [`KeyProvider`], the wrapped data keys
//! in the `data_key` table, start-up checks, rotation and the background re-encryption.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;

use super::Keyring;
use crate::config::Config;
use crate::error::FhirResult;
use crate::store::Store;

/// Wraps and unwraps data keys. The configured KEK implements it locally; a KMS can implement
/// it later (wrap/unwrap become calls to the KMS) without touching the rows.
pub trait KeyProvider: Send + Sync {
    /// A stable, non-secret identifier of the KEK (recorded beside each wrapped key).
    fn id(&self) -> String;
    /// Wraps data key `key_id`.
    fn wrap(&self, key_id: &str, key: &[u8; 32]) -> Result<Vec<u8>, String>;
    /// Unwraps data key `key_id`; fails when the KEK is not the one that wrapped it.
    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<[u8; 32], String>;
}

/// A KEK held in memory: AES-256-GCM key wrapping, the key id as associated data.
pub struct LocalKek {
    cipher: Aes256Gcm,
    fingerprint: String,
}

impl LocalKek {
    /// A KEK from its 32 bytes.
    pub fn new(key: [u8; 32]) -> Self {
        use sha2::{Digest, Sha256};
        let fingerprint = hex::encode(&Sha256::digest(key)[..8]);
        LocalKek { cipher: Aes256Gcm::new((&key).into()), fingerprint }
    }

    /// A KEK from base64 text (a file's content or an environment variable).
    pub fn from_base64(text: &str, origin: &str) -> Result<Self, String> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| format!("{origin}: the key-encryption key is not base64"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| format!("{origin}: the key-encryption key must be 32 bytes (base64)"))?;
        Ok(LocalKek::new(key))
    }

    /// A KEK from a file holding its base64 text.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the key-encryption key {}: {e}", path.display()))?;
        LocalKek::from_base64(&text, &path.display().to_string())
    }
}

impl KeyProvider for LocalKek {
    fn id(&self) -> String {
        self.fingerprint.clone()
    }

    fn wrap(&self, key_id: &str, key: &[u8; 32]) -> Result<Vec<u8>, String> {
        let nonce: [u8; 12] = rand::random();
        let ct = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: key, aad: wrap_aad(key_id).as_bytes() })
            .map_err(|_| "wrapping a data key failed".to_owned())?;
        Ok([nonce.as_slice(), &ct].concat())
    }

    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<[u8; 32], String> {
        if wrapped.len() < 12 {
            return Err(format!("data key {key_id} is truncated"));
        }
        let (nonce, ct) = wrapped.split_at(12);
        let key = self
            .cipher
            .decrypt(&Nonce::from(<[u8; 12]>::try_from(nonce).unwrap_or_default()), Payload { msg: ct, aad: wrap_aad(key_id).as_bytes() })
            .map_err(|_| format!("data key {key_id} does not unwrap with key-encryption key {}", self.fingerprint))?;
        key.try_into().map_err(|_| format!("data key {key_id} has the wrong length"))
    }
}

fn wrap_aad(key_id: &str) -> String {
    format!("ironfhir:data-key:{key_id}")
}

/// Where the KEK comes from: `IRONFHIR_KEK` (base64), `--kek-file`, or `<data-dir>/kek.key`,
/// which is generated only when the database holds no data key yet.
fn provider(config: &Config, database_has_keys: bool) -> Result<LocalKek, String> {
    if let Ok(text) = std::env::var("IRONFHIR_KEK")
        && !text.trim().is_empty()
    {
        return LocalKek::from_base64(&text, "IRONFHIR_KEK");
    }
    if let Some(path) = &config.kek_file {
        return LocalKek::from_file(path);
    }
    let path = default_kek_path(config);
    if path.exists() {
        return LocalKek::from_file(&path);
    }
    if database_has_keys {
        return Err(format!(
            "the database holds sealed data but no key-encryption key is configured ({} is missing; set --kek-file or IRONFHIR_KEK)",
            path.display()
        ));
    }
    let key: [u8; 32] = rand::random();
    write_secret(&path, &STANDARD.encode(key))?;
    tracing::info!(path = %path.display(), "generated a key-encryption key");
    Ok(LocalKek::new(key))
}

fn default_kek_path(config: &Config) -> PathBuf {
    config.data_dir.join("kek.key")
}

fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One row of `data_key`.
struct StoredKey {
    id: String,
    purpose: String,
    wrapped: Vec<u8>,
    kek_id: String,
    active: bool,
}

async fn stored_keys(store: &Store) -> FhirResult<Vec<StoredKey>> {
    let rows = sqlx::query("SELECT id, purpose, wrapped, kek_id, active FROM data_key ORDER BY created, id").fetch_all(store.pool()).await?;
    Ok(rows
        .iter()
        .map(|r| StoredKey { id: r.get(0), purpose: r.get(1), wrapped: r.get(2), kek_id: r.get(3), active: r.get(4) })
        .collect())
}

/// Creates an active key of `purpose` unless one exists (concurrent starters: one wins).
async fn ensure_active(store: &Store, provider: &dyn KeyProvider, purpose: &str) -> Result<(), String> {
    let id = format!("{purpose}-{}", uuid::Uuid::new_v4().simple());
    let key: [u8; 32] = rand::random();
    let wrapped = provider.wrap(&id, &key)?;
    sqlx::query(
        "INSERT INTO data_key (id, purpose, wrapped, kek_id, active) SELECT $1, $2, $3, $4, true \
         WHERE NOT EXISTS (SELECT 1 FROM data_key WHERE purpose = $2 AND active) ON CONFLICT DO NOTHING",
    )
    .bind(&id)
    .bind(purpose)
    .bind(&wrapped)
    .bind(provider.id())
    .execute(store.pool())
    .await
    .map_err(|e| format!("cannot create a {purpose} key: {e}"))?;
    Ok(())
}

/// Opens the keys of the database at start-up (every command that opens the database): the
/// KEK from the configuration, every data key unwrapped — a key that cannot be unwrapped stops
/// the process with an error naming it — and an active data key and blind-index key.
pub async fn open(store: &Store, config: &Config) -> Result<Arc<Keyring>, String> {
    if let Some(path) = &config.phi_policy {
        super::policy::install(path)?;
    }
    let existing = stored_keys(store).await.map_err(|e| format!("cannot read the data keys: {e}"))?;
    let provider = provider(config, !existing.is_empty())?;
    let mut created = false;
    for purpose in ["data", "blind"] {
        if !existing.iter().any(|k| k.purpose == purpose && k.active) {
            ensure_active(store, &provider, purpose).await?;
            created = true;
        }
    }
    let stored = if created { stored_keys(store).await.map_err(|e| format!("cannot read the data keys: {e}"))? } else { existing };
    let mut keys = HashMap::new();
    let (mut active, mut blind) = (None, None);
    for k in &stored {
        if k.kek_id != provider.id() {
            return Err(format!(
                "data key {} is wrapped by key-encryption key {}, but the configured key-encryption key is {}: \
                 configure the key it was wrapped with (sealed data cannot be read without it)",
                k.id,
                k.kek_id,
                provider.id()
            ));
        }
        let key = provider.unwrap(&k.id, &k.wrapped)?;
        match k.purpose.as_str() {
            "blind" if k.active => blind = Some(key),
            "blind" => {}
            _ => {
                if k.active {
                    active = Some(k.id.clone());
                }
                keys.insert(k.id.clone(), key);
            }
        }
    }
    let active = active.ok_or("the database has no active data key")?;
    let blind = blind.ok_or("the database has no blind-index key")?;
    let keyring = Arc::new(Keyring::new(keys, active, blind, config.blind_prefix_length));
    super::install(keyring.clone());
    Ok(keyring)
}

/// Learns data keys other instances created (`keys rotate`) every 2 s, so that rows they seal
/// can be read here and new writes move to the newest active key.
pub fn spawn_key_poller(store: Store, keyring: Arc<Keyring>, kek: Arc<dyn KeyProvider>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let Ok(stored) = stored_keys(&store).await else { continue };
            for k in stored.iter().filter(|k| k.purpose == "data") {
                if keyring.has_key(&k.id) && !(k.active && keyring.active_key_id() != k.id) {
                    continue;
                }
                match kek.unwrap(&k.id, &k.wrapped) {
                    Ok(key) => keyring.add_key(&k.id, &key, k.active),
                    Err(e) => tracing::error!(error = %e, "a new data key cannot be unwrapped"),
                }
            }
        }
    });
}

/// The KEK the configuration names (for the poller and the key commands).
pub fn configured_provider(config: &Config) -> Result<Arc<dyn KeyProvider>, String> {
    Ok(Arc::new(provider(config, true)?))
}

/// `keys rotate`: a new active data key (new writes use it at once in this process, within 2 s
/// in running servers); older rows are re-encrypted by [`reencrypt`].
pub async fn rotate(store: &Store, config: &Config) -> Result<String, String> {
    let provider = configured_provider(config)?;
    let id = format!("data-{}", uuid::Uuid::new_v4().simple());
    let key: [u8; 32] = rand::random();
    let wrapped = provider.wrap(&id, &key)?;
    let mut tx = store.pool().begin().await.map_err(|e| e.to_string())?;
    sqlx::query("UPDATE data_key SET active = false WHERE purpose = 'data' AND active").execute(&mut *tx).await.map_err(|e| e.to_string())?;
    sqlx::query("INSERT INTO data_key (id, purpose, wrapped, kek_id, active) VALUES ($1, 'data', $2, $3, true)")
        .bind(&id)
        .bind(&wrapped)
        .bind(provider.id())
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    let keyring = super::keyring().map_err(|e| e.to_string())?;
    keyring.add_key(&id, &key, true);
    Ok(id)
}

/// `keys rotate-kek`: re-wraps every data key under `new` in one transaction; rows are not
/// touched. The configuration must name the new KEK afterwards.
pub async fn rotate_kek(store: &Store, config: &Config, new: &LocalKek) -> Result<usize, String> {
    let old = configured_provider(config)?;
    let stored = stored_keys(store).await.map_err(|e| e.to_string())?;
    let mut tx = store.pool().begin().await.map_err(|e| e.to_string())?;
    for k in &stored {
        let key = old.unwrap(&k.id, &k.wrapped)?;
        sqlx::query("UPDATE data_key SET wrapped = $2, kek_id = $3 WHERE id = $1")
            .bind(&k.id)
            .bind(new.wrap(&k.id, &key)?)
            .bind(new.id())
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(stored.len())
}

/// One data key as `ironfhir keys status` shows it: what it is for, whether new rows are sealed
/// under it, its key-encryption key, and how many rows of each table it still seals.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyStatus {
    pub id: String,
    pub purpose: String,
    pub active: bool,
    pub kek_id: String,
    pub current_rows: i64,
    pub history_rows: i64,
    pub audit_rows: i64,
}

/// Every data key, by purpose and age, with the rows it seals.
pub async fn status(store: &Store) -> FhirResult<Vec<KeyStatus>> {
    Ok(sqlx::query_as(
        "SELECT k.id, k.purpose, k.active, k.kek_id, \
           (SELECT count(*) FROM resource r WHERE r.key_id = k.id) AS current_rows, \
           (SELECT count(*) FROM resource_history h WHERE h.key_id = k.id) AS history_rows, \
           (SELECT count(*) FROM audit_log a WHERE a.key_id = k.id) AS audit_rows \
         FROM data_key k ORDER BY k.purpose, k.created",
    )
    .fetch_all(store.pool())
    .await?)
}

/// Rows (current, history and audit chain) still sealed under a data key other than the
/// active one.
pub async fn rows_behind(store: &Store) -> FhirResult<i64> {
    let old = old_data_keys(store).await?;
    if old.is_empty() {
        return Ok(0);
    }
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM resource WHERE key_id = ANY($1)) + (SELECT count(*) FROM resource_history WHERE key_id = ANY($1)) \
              + (SELECT count(*) FROM audit_log WHERE key_id = ANY($1))",
    )
    .bind(&old)
    .fetch_one(store.pool())
    .await?;
    Ok(row.get::<i64, _>(0))
}

/// The data keys other than the active one: what rows may still be sealed under. Rows are
/// looked up by these ids (`key_id = ANY`, through the partial key_id indexes), never by
/// `key_id <> active`: with a LIMIT the planner reads that as a sequential scan that finds
/// nothing, which on a large database was a full read of every table every few seconds.
async fn old_data_keys(store: &Store) -> FhirResult<Vec<String>> {
    let active = super::keyring()?.active_key_id();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM data_key WHERE purpose = 'data' AND id <> $1")
        .bind(&active)
        .fetch_all(store.pool())
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Re-encrypts up to `batch` rows of `table` under the active key, in one transaction; rows
/// being written are skipped (`SKIP LOCKED`) and caught by the next pass. Returns the number
/// re-encrypted. Resumable by construction: what is left is what still has an old key id.
async fn reencrypt_batch(store: &Store, table: &str, old_keys: &[String], batch: i64) -> FhirResult<usize> {
    let mut tx = store.pool().begin().await?;
    // The audit chain's rows seal their AuditEvent's elements (AuditEvent/<resource_id>/1).
    let row_of = if table == "audit_log" { "'AuditEvent', resource_id, 1::bigint" } else { "resource_type, id, version_id" };
    let select = format!(
        "SELECT ctid::text, {row_of}, sealed, key_id FROM {table} \
         WHERE key_id = ANY($1) LIMIT $2 FOR UPDATE SKIP LOCKED"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(select)).bind(old_keys).bind(batch).fetch_all(&mut *tx).await?;
    let mut ctids = Vec::with_capacity(rows.len());
    let mut sealed = Vec::with_capacity(rows.len());
    let mut key_ids = Vec::with_capacity(rows.len());
    for r in &rows {
        let (ct, key_id) = super::reseal(
            &r.get::<String, _>(1),
            &r.get::<String, _>(2),
            r.get::<i64, _>(3),
            &r.get::<Vec<u8>, _>(4),
            &r.get::<String, _>(5),
        )?;
        ctids.push(r.get::<String, _>(0));
        sealed.push(ct);
        key_ids.push(key_id);
    }
    if !rows.is_empty() {
        let update = format!(
            "UPDATE {table} t SET sealed = u.sealed, key_id = u.key_id \
             FROM UNNEST($1::text[], $2::bytea[], $3::text[]) AS u(ctid, sealed, key_id) WHERE t.ctid = u.ctid::tid"
        );
        sqlx::query(sqlx::AssertSqlSafe(update)).bind(&ctids).bind(&sealed).bind(&key_ids).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

/// Re-encrypts every row under an old data key, batch by batch; `progress` hears the count
/// done so far. Returns the total.
pub async fn reencrypt(store: &Store, batch: i64, mut progress: impl FnMut(u64)) -> FhirResult<u64> {
    let mut done = 0u64;
    loop {
        let old_keys = old_data_keys(store).await?;
        if old_keys.is_empty() {
            return Ok(done);
        }
        let mut pass = 0;
        for table in ["resource", "resource_history", "audit_log"] {
            loop {
                let n = reencrypt_batch(store, table, &old_keys, batch).await?;
                pass += n;
                done += n as u64;
                progress(done);
                if (n as i64) < batch {
                    break;
                }
            }
        }
        if pass == 0 {
            return Ok(done);
        }
    }
}

/// The server's background re-encryption: every 5 s, rows under old keys (after a `keys
/// rotate`, or left by an interrupted one) are moved to the active key.
pub fn spawn_reencryption(store: Store) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            match reencrypt(&store, 500, |_| {}).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "re-encrypted rows under the active data key"),
                Err(e) => tracing::error!(error = %e, "re-encryption failed; retrying"),
            }
        }
    });
}
