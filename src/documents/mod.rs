//! The document store: where files the API hands out by link live — uploaded documents
//! (Binary content) and Bulk Data export output. Bytes never sit in PostgreSQL.
//!
//! Two implementations, chosen by configuration ([`DocumentArgs`]):
//! - [`local`]: a directory (the default, so a first start needs nothing else); the server
//!   signs its URLs itself ([`signing`], the semantics of S3 pre-signed URLs) and serves them
//!   at `/documents/...`, streaming.
//! - [`s3`]: any S3-compatible service, through pre-signed URLs; the bytes go between the
//!   client and the service.
//!
//! [`objects`] keeps the uploads (the `document_object` table: key → Binary, state, declared
//! size and digest), [`upload`] is the FHIR side (`Binary/$upload`, `$upload-complete`, raw
//! download), [`sweeper`] deletes uploads that were never completed.

pub mod local;
pub mod objects;
pub mod offload;
pub mod s3;
pub mod signing;
pub mod sweeper;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use local::LocalStore;
use s3::{S3Settings, S3Store};
use signing::{Grant, UrlSigner};

/// A request the client (or the server) sends as it is: method, URL and the headers that were
/// signed with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presigned {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// What the store knows of a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// The SHA-1 when the store recorded or verified one.
    pub sha1: Option<[u8; 20]>,
}

/// Whether `key` is a plain relative path of safe segments (what every store accepts).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|seg| {
            !seg.is_empty() && !seg.starts_with('.') && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

enum Backend {
    Local(LocalStore),
    /// Export files are written to the local spool first and uploaded when complete.
    S3 { s3: S3Store, spool: LocalStore },
}

/// The configured store (cheap to clone).
#[derive(Clone)]
pub struct DocumentStore {
    backend: Arc<Backend>,
    signer: UrlSigner,
}

impl std::fmt::Debug for DocumentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_s3() { "DocumentStore(S3)" } else { "DocumentStore(local)" })
    }
}

/// A document being written (an export file); [`DocumentWriter::finish`] makes it durable.
pub struct DocumentWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    /// For S3: where the spooled file goes when finished.
    upload: Option<(S3Store, String, PathBuf, LocalStore)>,
}

impl DocumentStore {
    /// A local store rooted at `root` whose URLs are signed with a key of its own (tests and
    /// tools that hand out no URLs to other processes).
    pub fn local(root: impl Into<PathBuf>) -> Self {
        let key: [u8; 32] = rand::random();
        Self::local_signed(root, UrlSigner::derive(&key))
    }

    /// A local store rooted at `root` whose URLs `signer` signs.
    pub fn local_signed(root: impl Into<PathBuf>, signer: UrlSigner) -> Self {
        DocumentStore { backend: Arc::new(Backend::Local(LocalStore::new(root))), signer }
    }

    /// An S3 store; `spool` is a local directory for export files on their way up.
    pub fn s3(settings: &S3Settings, spool: impl Into<PathBuf>, signer: UrlSigner) -> Result<Self, String> {
        let s3 = S3Store::new(settings)?;
        Ok(DocumentStore { backend: Arc::new(Backend::S3 { s3, spool: LocalStore::new(spool) }), signer })
    }

    /// Whether documents live in S3 (else in the local directory).
    pub fn is_s3(&self) -> bool {
        matches!(*self.backend, Backend::S3 { .. })
    }

    /// The local store when documents live there (what `/documents/...` serves).
    pub fn local_store(&self) -> Option<&LocalStore> {
        match &*self.backend {
            Backend::Local(local) => Some(local),
            Backend::S3 { .. } => None,
        }
    }

    /// The signer of `/documents/...` URLs.
    pub fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    /// A pre-signed upload of exactly `length` bytes of `content_type` (and SHA-1 `sha1`, when
    /// declared) to `key`, valid for `expires_in`. `origin` is this server's public origin
    /// (`https://host`), where the local store's URLs point.
    pub async fn presign_put(&self, origin: &str, key: &str, content_type: &str, length: u64, sha1: Option<&[u8; 20]>, expires_in: Duration) -> std::io::Result<Presigned> {
        match &*self.backend {
            Backend::S3 { s3, .. } => s3.presign_put(key, content_type, length, sha1, expires_in).await,
            Backend::Local(_) => {
                let grant = Grant {
                    method: "PUT".into(),
                    key: key.to_owned(),
                    expires: expiry(expires_in),
                    content_type: content_type.to_owned(),
                    length: Some(length),
                    sha1: sha1.map(hex::encode),
                };
                let headers = vec![("content-type".to_owned(), content_type.to_owned()), ("content-length".to_owned(), length.to_string())];
                Ok(Presigned { method: "PUT".into(), url: local_url(origin, key, &self.signer.sign(&grant)), headers })
            }
        }
    }

    /// A pre-signed download of `key`, answered as `content_type`, valid for `expires_in`.
    pub async fn presign_get(&self, origin: &str, key: &str, content_type: &str, expires_in: Duration) -> std::io::Result<Presigned> {
        match &*self.backend {
            Backend::S3 { s3, .. } => s3.presign_get(key, content_type, expires_in).await,
            Backend::Local(_) => {
                let grant = Grant { method: "GET".into(), key: key.to_owned(), expires: expiry(expires_in), content_type: content_type.to_owned(), length: None, sha1: None };
                Ok(Presigned { method: "GET".into(), url: local_url(origin, key, &self.signer.sign(&grant)), headers: vec![] })
            }
        }
    }

    /// Size and digest of a stored object; `None` when it is not there. For S3 without a
    /// stored checksum, the digest is computed by reading the object once (streaming).
    pub async fn head(&self, key: &str) -> std::io::Result<Option<ObjectInfo>> {
        match &*self.backend {
            Backend::Local(local) => local.head(key).await,
            Backend::S3 { s3, .. } => {
                let Some(mut info) = s3.head(key).await? else { return Ok(None) };
                if info.sha1.is_none() {
                    info.sha1 = s3.sha1(key).await?;
                }
                Ok(Some(info))
            }
        }
    }

    /// Deletes one object (missing is fine).
    pub async fn delete(&self, key: &str) -> std::io::Result<()> {
        match &*self.backend {
            Backend::Local(local) => local.delete(key).await,
            Backend::S3 { s3, .. } => s3.delete(key).await,
        }
    }

    /// Creates (or truncates) a document for writing.
    pub async fn create(&self, key: &str) -> std::io::Result<DocumentWriter> {
        match &*self.backend {
            Backend::Local(local) => Ok(DocumentWriter { file: local.create(key).await?, upload: None }),
            Backend::S3 { s3, spool } => {
                let path = spool.path(key).ok_or_else(|| std::io::Error::other("invalid document key"))?;
                Ok(DocumentWriter { file: spool.create(key).await?, upload: Some((s3.clone(), key.to_owned(), path, spool.clone())) })
            }
        }
    }

    /// Opens a local document for reading; `None` when it does not exist or lives in S3.
    pub async fn open(&self, key: &str) -> std::io::Result<Option<(tokio::fs::File, u64)>> {
        match &*self.backend {
            Backend::Local(local) => local.open(key).await,
            Backend::S3 { .. } => Ok(None),
        }
    }

    /// Deletes every document under a key prefix; missing is fine.
    pub async fn delete_prefix(&self, prefix: &str) -> std::io::Result<()> {
        match &*self.backend {
            Backend::Local(local) => local.delete_prefix(prefix).await,
            Backend::S3 { s3, spool } => {
                spool.delete_prefix(prefix).await?;
                s3.delete_prefix(prefix).await
            }
        }
    }
}

/// Unix seconds `expires_in` from now.
fn expiry(expires_in: Duration) -> i64 {
    chrono::Utc::now().timestamp().saturating_add(i64::try_from(expires_in.as_secs()).unwrap_or(i64::MAX))
}

fn local_url(origin: &str, key: &str, query: &str) -> String {
    format!("{}{}{key}?{query}", origin.trim_end_matches('/'), signing::PATH_PREFIX)
}

impl DocumentWriter {
    /// Appends bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await
    }

    /// Flushes and syncs the document, so a completed export survives a crash; with S3, uploads
    /// it (streaming from the spool file) and removes the spool file.
    pub async fn finish(mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        self.file.get_ref().sync_all().await?;
        if let Some((s3, key, path, spool)) = self.upload.take() {
            drop(self.file);
            s3.upload_file(&key, &path, "application/fhir+ndjson").await?;
            spool.delete(&key).await?;
        }
        Ok(())
    }
}

/// The document store's settings, shared by `serve` and `import`.
#[derive(Debug, Clone, clap::Args)]
pub struct DocumentArgs {
    /// Directory of the embedded document store (uploads, export files); default
    /// <data-dir>/documents. With S3, export files are spooled here before they are uploaded.
    #[arg(long, env = "IRONFHIR_DOCUMENT_DIR")]
    pub document_dir: Option<PathBuf>,
    /// Keep documents in this S3 bucket instead of the local directory (credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN).
    #[arg(long, env = "IRONFHIR_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Endpoint of an S3-compatible service (default: AWS; also AWS_ENDPOINT_URL_S3 or
    /// AWS_ENDPOINT_URL).
    #[arg(long, env = "IRONFHIR_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Region of the bucket (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, env = "IRONFHIR_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style URLs (endpoint/bucket/key), which most S3-compatible services need.
    #[arg(long, env = "IRONFHIR_S3_FORCE_PATH_STYLE")]
    pub s3_force_path_style: bool,
    /// Server-side encryption asked for on every upload: AES256, aws:kms or none.
    #[arg(long, env = "IRONFHIR_S3_SERVER_SIDE_ENCRYPTION", default_value = "AES256")]
    pub s3_server_side_encryption: String,
    /// Seconds a pre-signed (or server-signed) document URL stays valid.
    #[arg(long, env = "IRONFHIR_DOCUMENT_URL_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub document_url_seconds: u64,
    /// `$export` manifest URLs: `server` (this server's file URLs, requiresAccessToken true) or
    /// `presigned` (pre-signed GETs of the store, requiresAccessToken false).
    #[arg(long, env = "IRONFHIR_EXPORT_URLS", default_value = "server", value_parser = ["server", "presigned"])]
    pub export_urls: String,
    /// Uploads never completed are deleted this long after they were asked for (`24h`, `90m`,
    /// `3600s`, `2d`).
    #[arg(long, env = "IRONFHIR_UPLOAD_ORPHAN_AFTER", default_value = "24h", value_parser = parse_duration)]
    pub upload_orphan_after: Duration,
    /// Largest document an upload may declare, in bytes (FHIR's Attachment.size is an
    /// unsignedInt: at most 2,147,483,647).
    #[arg(long, env = "IRONFHIR_MAX_UPLOAD_BYTES", default_value_t = 2_147_483_647, value_parser = clap::value_parser!(u64).range(0..=2_147_483_647))]
    pub max_upload_bytes: u64,
}

/// `90s`, `15m`, `24h`, `2d` (or plain seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("'{text}' is not a duration like 90s, 15m, 24h or 2d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("'{text}' is not a duration like 90s, 15m, 24h or 2d")),
    };
    Ok(Duration::from_secs(seconds))
}

/// Where manifest URLs of `$export` point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportUrls {
    /// `[base]/$export-file/...`, with the access token.
    Server,
    /// Pre-signed GETs of the store, without it.
    Presigned,
}

/// The document machinery the HTTP layer and the background tasks share.
#[derive(Debug, Clone)]
pub struct Documents {
    pub store: DocumentStore,
    /// Lifetime of the URLs handed out.
    pub url_ttl: Duration,
    pub export_urls: ExportUrls,
    pub orphan_after: Duration,
    pub max_upload_bytes: u64,
}

impl Documents {
    /// Defaults around a store (tests).
    pub fn new(store: DocumentStore) -> Self {
        Documents { store, url_ttl: Duration::from_secs(300), export_urls: ExportUrls::Server, orphan_after: Duration::from_secs(86_400), max_upload_bytes: 2_147_483_647 }
    }
}

impl DocumentArgs {
    /// The configured machinery; `data_dir` holds the default directory, `signing_material`
    /// (the token signing key) the key of local URLs.
    pub fn build(&self, data_dir: &std::path::Path, signing_material: &[u8]) -> Result<Documents, String> {
        let dir = self.document_dir.clone().unwrap_or_else(|| data_dir.join("documents"));
        let signer = UrlSigner::derive(signing_material);
        let store = match &self.s3_bucket {
            None => DocumentStore::local_signed(dir, signer),
            Some(bucket) => {
                let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                let settings = S3Settings {
                    bucket: bucket.clone(),
                    region: self.s3_region.clone().or_else(|| env("AWS_REGION")).or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into()),
                    endpoint: self.s3_endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL_S3")).or_else(|| env("AWS_ENDPOINT_URL")),
                    force_path_style: self.s3_force_path_style,
                    access_key_id: env("AWS_ACCESS_KEY_ID").ok_or("--s3-bucket needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")?,
                    secret_access_key: env("AWS_SECRET_ACCESS_KEY").ok_or("--s3-bucket needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")?,
                    session_token: env("AWS_SESSION_TOKEN"),
                    server_side_encryption: Some(self.s3_server_side_encryption.clone()),
                };
                DocumentStore::s3(&settings, dir.join("spool"), signer)?
            }
        };
        Ok(Documents {
            store,
            url_ttl: Duration::from_secs(self.document_url_seconds),
            export_urls: if self.export_urls == "presigned" { ExportUrls::Presigned } else { ExportUrls::Server },
            orphan_after: self.upload_orphan_after,
            max_upload_bytes: self.max_upload_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("1w").is_err() && parse_duration("h").is_err());
    }
}
