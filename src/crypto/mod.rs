//! PHI sealing (ARCHITECTURE.md invariant 4): the elements the PHI policy names are removed from
//! a resource before it reaches PostgreSQL and stored beside it, encrypted with AES-256-GCM.
//!
//! Envelope encryption: rows are encrypted under a data key; data keys are stored in the
//! `data_key` table wrapped by the key-encryption key (KEK) of the configuration, behind the
//! [`keys::KeyProvider`] trait (a KMS can implement it). The associated data of every ciphertext
//! is the resource's type, id and version, so a ciphertext copied onto another row does not
//! decrypt. The key id travels with each row (`resource.key_id`), so rotation
//! (`ironfhir keys rotate`) can move rows to a new data key one batch at a time while the
//! server serves.
//!
//! The keyring is process-wide ([`install`], [`keyring`]): every command opens one database, and
//! the store's free functions (which only see a transaction) seal and open through it.

pub mod blind;
pub mod keys;
pub mod policy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde_json::Value;

use crate::error::{FhirError, FhirResult};

/// The data keys a process holds, the active one, and the blind-index key.
pub struct Keyring {
    ciphers: RwLock<HashMap<String, Arc<Aes256Gcm>>>,
    active: RwLock<String>,
    blind_key: [u8; 32],
    /// Characters of a protected string value whose prefixes get blind rows.
    pub prefix_length: usize,
    seal_writes: AtomicBool,
}

impl Keyring {
    /// A keyring over unwrapped data keys (`id` → key), writing under `active`.
    pub fn new(keys: HashMap<String, [u8; 32]>, active: String, blind_key: [u8; 32], prefix_length: usize) -> Self {
        let ciphers = keys.into_iter().map(|(id, key)| (id, Arc::new(cipher(&key)))).collect();
        Keyring {
            ciphers: RwLock::new(ciphers),
            active: RwLock::new(active),
            blind_key,
            prefix_length: prefix_length.max(1),
            seal_writes: AtomicBool::new(true),
        }
    }

    /// The id of the data key new writes are sealed under.
    pub fn active_key_id(&self) -> String {
        self.active.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Adds a data key (learned from the database) and makes it the active one if `active`.
    pub fn add_key(&self, id: &str, key: &[u8; 32], active: bool) {
        if let Ok(mut c) = self.ciphers.write() {
            c.entry(id.to_owned()).or_insert_with(|| Arc::new(cipher(key)));
        }
        if active && let Ok(mut a) = self.active.write() {
            *a = id.to_owned();
        }
    }

    /// Whether the keyring holds the data key `id`.
    pub fn has_key(&self, id: &str) -> bool {
        self.ciphers.read().is_ok_and(|c| c.contains_key(id))
    }

    fn cipher_of(&self, id: &str) -> Option<Arc<Aes256Gcm>> {
        self.ciphers.read().ok().and_then(|c| c.get(id).cloned())
    }

    /// Benchmarks only: store new writes unsealed (what sealing costs is measured against this).
    pub fn set_sealing(&self, on: bool) {
        self.seal_writes.store(on, Ordering::Relaxed);
    }

    /// The keyed hash behind blind indexes.
    pub fn blind_key(&self) -> &[u8; 32] {
        &self.blind_key
    }
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

static KEYRING: RwLock<Option<Arc<Keyring>>> = RwLock::new(None);

/// Makes `keyring` the process's keyring (every command does this when it opens the database).
pub fn install(keyring: Arc<Keyring>) {
    if let Ok(mut k) = KEYRING.write() {
        *k = Some(keyring);
    }
}

/// The process's keyring; an error before the database was opened.
pub fn keyring() -> FhirResult<Arc<Keyring>> {
    KEYRING
        .read()
        .ok()
        .and_then(|k| k.clone())
        .ok_or_else(|| FhirError::Sealed("no keyring: the database was not opened with its keys".into()))
}

/// A resource as stored: the document without its sealed elements, and those elements
/// encrypted (`None` when the policy seals nothing in it) under `key_id`.
#[derive(Debug, Clone)]
pub struct SealedResource {
    pub content: Value,
    pub sealed: Option<Vec<u8>>,
    pub key_id: Option<String>,
}

/// The associated data binding a ciphertext to its row.
fn aad(resource_type: &str, id: &str, version: i64) -> String {
    format!("ironfhir:v1:{resource_type}/{id}/{version}")
}

/// Seals `content`, version `version` of `resource_type/id`, under the active data key.
pub fn seal(resource_type: &str, id: &str, version: i64, content: &Value) -> FhirResult<SealedResource> {
    Ok(seal_returning_plaintext(&*keyring()?, resource_type, id, version, content)?.0)
}

/// [`seal`], also handing back the sealed elements' plaintext (for the audit chain's MAC).
fn seal_returning_plaintext(
    keyring: &Keyring,
    resource_type: &str,
    id: &str,
    version: i64,
    content: &Value,
) -> FhirResult<(SealedResource, Option<Vec<u8>>)> {
    let mut stripped = content.clone();
    if !keyring.seal_writes.load(Ordering::Relaxed) {
        return Ok((SealedResource { content: stripped, sealed: None, key_id: None }, None));
    }
    let parts = policy::extract(&mut stripped, &policy::plan(resource_type));
    if parts.is_empty() {
        return Ok((SealedResource { content: stripped, sealed: None, key_id: None }, None));
    }
    let plaintext = serde_json::to_vec(&parts).map_err(|e| FhirError::Internal(format!("sealing: {e}")))?;
    let key_id = keyring.active_key_id();
    let sealed = encrypt(keyring, &key_id, &aad(resource_type, id, version), &plaintext)?;
    Ok((SealedResource { content: stripped, sealed: Some(sealed), key_id: Some(key_id) }, Some(plaintext)))
}

/// The complete resource: `content` with the elements in `sealed` decrypted and put back.
/// A ciphertext that does not authenticate (another row's, altered, or another key's) is an
/// error naming the row and key, never a silently incomplete resource.
pub fn open(
    resource_type: &str,
    id: &str,
    version: i64,
    content: Option<Value>,
    sealed: Option<&[u8]>,
    key_id: Option<&str>,
) -> FhirResult<Option<Value>> {
    let Some(sealed) = sealed else { return Ok(content) };
    let Some(mut content) = content else { return Ok(None) };
    let key_id = key_id.unwrap_or("");
    let plaintext = decrypt(&*keyring()?, key_id, &aad(resource_type, id, version), sealed).map_err(|reason| {
        FhirError::Sealed(format!("the sealed elements of {resource_type}/{id} version {version} cannot be opened: {reason}"))
    })?;
    let parts: Vec<(String, Value)> = serde_json::from_slice(&plaintext)
        .map_err(|_| FhirError::Sealed(format!("the sealed elements of {resource_type}/{id} version {version} are malformed")))?;
    policy::restore(&mut content, parts)
        .map_err(|e| FhirError::Sealed(format!("the sealed elements of {resource_type}/{id} version {version} do not fit: {e}")))?;
    Ok(Some(content))
}

/// `nonce || AES-256-GCM(plaintext)` under data key `key_id`.
pub fn encrypt(keyring: &Keyring, key_id: &str, aad: &str, plaintext: &[u8]) -> FhirResult<Vec<u8>> {
    let cipher = keyring.cipher_of(key_id).ok_or_else(|| FhirError::Sealed(format!("data key {key_id} is not loaded")))?;
    let nonce: [u8; 12] = rand::random();
    let mut out = nonce.to_vec();
    let ct = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: aad.as_bytes() })
        .map_err(|_| FhirError::Sealed("encryption failed".into()))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The inverse of [`encrypt`]; the error says why in words without content.
pub fn decrypt(keyring: &Keyring, key_id: &str, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
    let cipher = keyring
        .cipher_of(key_id)
        .ok_or_else(|| format!("it is sealed under data key {key_id:?}, which this server does not hold"))?;
    if sealed.len() < 12 + 16 {
        return Err("the ciphertext is truncated".into());
    }
    let (nonce, ct) = sealed.split_at(12);
    cipher
        .decrypt(&Nonce::from(<[u8; 12]>::try_from(nonce).unwrap_or_default()), Payload { msg: ct, aad: aad.as_bytes() })
        .map_err(|_| format!("authentication failed under data key {key_id} (the ciphertext was altered or belongs to another row)"))
}

/// Re-encrypts a row's sealed elements under the active key (rotation); the content is
/// untouched. Returns the new ciphertext and key id.
pub fn reseal(resource_type: &str, id: &str, version: i64, sealed: &[u8], key_id: &str) -> FhirResult<(Vec<u8>, String)> {
    let keyring = keyring()?;
    let aad = aad(resource_type, id, version);
    let plaintext = decrypt(&keyring, key_id, &aad, sealed).map_err(|reason| {
        FhirError::Sealed(format!("the sealed elements of {resource_type}/{id} version {version} cannot be opened: {reason}"))
    })?;
    let active = keyring.active_key_id();
    Ok((encrypt(&keyring, &active, &aad, &plaintext)?, active))
}

/// [`seal`] plus the keyed MAC of the sealed elements' plaintext that the audit chain covers
/// (HMAC-SHA256 under the blind-index key, so it survives rotation); `None` when nothing is
/// sealed.
pub fn seal_with_mac(resource_type: &str, id: &str, version: i64, content: &Value) -> FhirResult<(SealedResource, Option<Vec<u8>>)> {
    let keyring = keyring()?;
    let (sealed, plaintext) = seal_returning_plaintext(&keyring, resource_type, id, version, content)?;
    Ok((sealed, plaintext.map(|p| mac(&keyring, &p))))
}

fn mac(keyring: &Keyring, plaintext: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let Ok(mut m) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(keyring.blind_key()) else { return vec![] };
    m.update(b"ironfhir:audit-sealed\0");
    m.update(plaintext);
    m.finalize().into_bytes().to_vec()
}

/// Whether a row's sealed elements decrypt and match `expected` (see [`seal_with_mac`]).
pub fn sealed_mac_matches(resource_type: &str, id: &str, version: i64, sealed: &[u8], key_id: &str, expected: &[u8]) -> bool {
    let Ok(keyring) = keyring() else { return false };
    match decrypt(&keyring, key_id, &aad(resource_type, id, version), sealed) {
        Ok(plaintext) => mac(&keyring, &plaintext) == expected,
        Err(_) => false,
    }
}
