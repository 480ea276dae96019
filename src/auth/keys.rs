//! The server's token-signing key: a P-256 key in PKCS#8 PEM, from configuration or generated
//! into the data directory on first use (readable only by its owner).

use std::fs;
use std::io::Write;
use std::path::Path;

use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};

use crate::config::Config;

/// Loads the configured signing key, or the one in `<data-dir>/signing-key.pem`, creating it
/// (mode 0600) if it does not exist yet.
pub fn load_or_create(config: &Config) -> Result<String, String> {
    if let Some(path) = &config.signing_key {
        return fs::read_to_string(path).map_err(|e| format!("cannot read signing key {}: {e}", path.display()));
    }
    fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", config.data_dir.display()))?;
    let path = config.data_dir.join("signing-key.pem");
    match fs::read_to_string(&path) {
        Ok(pem) => Ok(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(&path),
        Err(e) => Err(format!("cannot read signing key {}: {e}", path.display())),
    }
}

/// A fresh P-256 private key in PKCS#8 PEM.
pub fn generate_pem() -> Result<String, String> {
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    Ok(key.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?.to_string())
}

fn generate(path: &Path) -> Result<String, String> {
    // Another process (serve and admin token started together) may create it first: use theirs.
    write_private(path, &generate_pem()?)
}

/// The SPKI PEM public key of a PKCS#8 PEM private key.
pub fn public_pem(private_pem: &str) -> Result<String, String> {
    let key = SigningKey::from_pkcs8_pem(private_pem).map_err(|e| format!("signing key is not a PKCS#8 P-256 key: {e}"))?;
    key.verifying_key().to_public_key_pem(LineEnding::LF).map_err(|e| e.to_string())
}

/// The P-256 signing key of a PKCS#8 PEM private key.
pub fn signing_key(private_pem: &str) -> Result<SigningKey, String> {
    SigningKey::from_pkcs8_pem(private_pem).map_err(|e| format!("signing key is not a PKCS#8 P-256 key: {e}"))
}

/// The public key as a JWK (`kty` EC, `crv` P-256, `alg` ES256, `use` sig, `kid`).
pub fn public_jwk(key: &SigningKey, kid: &str) -> serde_json::Value {
    let (x, y) = coordinates(key);
    serde_json::json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256", "use": "sig", "kid": kid })
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key: a stable key id.
pub fn thumbprint(key: &SigningKey) -> String {
    use base64::Engine;
    use sha2::Digest;
    let (x, y) = coordinates(key);
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// base64url x and y of the public point.
fn coordinates(key: &SigningKey) -> (String, String) {
    use base64::Engine;
    let point = key.verifying_key().to_encoded_point(false);
    let b64 = |b: Option<&p256::FieldBytes>| b.map(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)).unwrap_or_default();
    (b64(point.x()), b64(point.y()))
}

/// The RSA key (PKCS#1 PEM) that signs OpenID Connect id_tokens with RS256 — the algorithm
/// OpenID Connect and SMART require every provider to support: `<data-dir>/id-token-rsa.pem`,
/// generated (2048 bits, mode 0600) on first use.
pub fn load_or_create_rsa(config: &Config) -> Result<String, String> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", config.data_dir.display()))?;
    let path = config.data_dir.join("id-token-rsa.pem");
    match fs::read_to_string(&path) {
        Ok(pem) => return Ok(pem),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("cannot read {}: {e}", path.display())),
        Err(_) => {}
    }
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| format!("cannot generate the RSA key: {e}"))?;
    let pem = key.to_pkcs1_pem(LineEnding::LF).map_err(|e| e.to_string())?.to_string();
    write_private(&path, &pem)
}

/// Writes a private key file readable only by its owner; if another process wrote it first,
/// theirs is used.
fn write_private(path: &Path, pem: &str) -> Result<String, String> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(pem.as_bytes()).map_err(|e| e.to_string())?;
            Ok(pem.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => fs::read_to_string(path).map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot write {}: {e}", path.display())),
    }
}
