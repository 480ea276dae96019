//! The embedded document store: a local directory (`<data-dir>/documents` by default,
//! `--document-dir`). Keys are relative paths of plain segments (`binary/<id>`,
//! `export/<job>/<file>`); nothing derived from a request reaches the file system without
//! [`LocalStore::path`] checking it. Names starting with a dot are never keys, so the store
//! keeps its own files beside the documents under such names: `.<name>.part-<uuid>` while an
//! upload streams in, `.<name>.sha1` with the SHA-1 computed while it did.
//!
//! Uploads and downloads go through URLs the server signs ([`super::signing`]) and serves
//! itself (`rest::documents`), streaming in both directions: an upload is hashed and counted
//! chunk by chunk on its way to disk and never held in memory.

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use sha1::Digest;
use tokio::io::AsyncWriteExt;

use super::ObjectInfo;

/// Files under one root directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

/// Why an upload was refused; the caller answers with the status of each.
#[derive(Debug)]
pub enum UploadRefused {
    /// The object exists: stored objects never change (409).
    Exists,
    /// The body was longer or shorter than the signed length (400).
    Length { expected: u64, received: u64 },
    /// The body's SHA-1 is not the signed one (400, S3's BadDigest).
    Digest,
    /// Reading the body failed (the client went away) or the disk did.
    Io(std::io::Error),
}

impl From<std::io::Error> for UploadRefused {
    fn from(e: std::io::Error) -> Self {
        UploadRefused::Io(e)
    }
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    /// The file of a key; `None` for keys that are not plain relative paths (no `..`, no
    /// absolute paths, no empty or hidden segments).
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        super::valid_key(key).then(|| self.root.join(key))
    }

    /// The store's own file beside a document: `.<name>.<suffix>`.
    fn companion(path: &Path, suffix: &str) -> Option<PathBuf> {
        let name = path.file_name()?.to_str()?;
        Some(path.with_file_name(format!(".{name}.{suffix}")))
    }

    /// Creates (or truncates) a document for writing (export files).
    pub async fn create(&self, key: &str) -> std::io::Result<tokio::io::BufWriter<tokio::fs::File>> {
        let path = self.path(key).ok_or_else(|| std::io::Error::other("invalid document key"))?;
        if let Some(dir) = path.parent() {
            create_private_dir(dir).await?;
        }
        let file = tokio::fs::File::create(&path).await?;
        Ok(tokio::io::BufWriter::with_capacity(1 << 20, file))
    }

    /// Opens a document for reading; `None` when it does not exist.
    pub async fn open(&self, key: &str) -> std::io::Result<Option<(tokio::fs::File, u64)>> {
        let Some(path) = self.path(key) else { return Ok(None) };
        match tokio::fs::File::open(&path).await {
            Ok(file) => {
                let len = file.metadata().await?.len();
                Ok(Some((file, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Receives an upload: streams `body` to a temporary file, counting and hashing it, and
    /// makes it the document only when it has exactly `length` bytes (and the SHA-1 `sha1`, if
    /// given) and the key is still free. Nothing is left behind when it is refused.
    pub async fn receive<S, E>(&self, key: &str, length: u64, sha1: Option<[u8; 20]>, body: S) -> Result<ObjectInfo, UploadRefused>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.path(key).ok_or_else(|| std::io::Error::other("invalid document key"))?;
        if tokio::fs::try_exists(&path).await? {
            return Err(UploadRefused::Exists);
        }
        if let Some(dir) = path.parent() {
            create_private_dir(dir).await?;
        }
        let part = Self::companion(&path, &format!("part-{}", uuid::Uuid::new_v4().simple())).ok_or_else(|| std::io::Error::other("invalid document key"))?;
        let result = Self::write_part(&part, length, body).await;
        let outcome = match result {
            Ok(digest) if sha1.is_some_and(|want| want != digest) => Err(UploadRefused::Digest),
            // A hard link fails when the name is taken: of two uploads racing for one key, one wins.
            Ok(digest) => match tokio::fs::hard_link(&part, &path).await {
                Ok(()) => Ok(digest),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(UploadRefused::Exists),
                Err(e) => Err(UploadRefused::Io(e)),
            },
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&part).await;
        let digest = outcome?;
        if let Some(sidecar) = Self::companion(&path, "sha1") {
            tokio::fs::write(&sidecar, hex::encode(digest)).await?;
        }
        Ok(ObjectInfo { size: length, sha1: Some(digest) })
    }

    async fn write_part<S, E>(part: &Path, length: u64, mut body: S) -> Result<[u8; 20], UploadRefused>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = tokio::io::BufWriter::with_capacity(256 * 1024, options.open(part).await?);
        let mut hasher = sha1::Sha1::new();
        let mut received: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
            received += chunk.len() as u64;
            if received > length {
                return Err(UploadRefused::Length { expected: length, received });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        if received != length {
            return Err(UploadRefused::Length { expected: length, received });
        }
        file.flush().await?;
        file.get_ref().sync_all().await?;
        Ok(hasher.finalize().into())
    }

    /// Size and SHA-1 of a document (the SHA-1 recorded when it was uploaded, else computed
    /// now, reading it once); `None` when it is missing.
    pub async fn head(&self, key: &str) -> std::io::Result<Option<ObjectInfo>> {
        let Some(path) = self.path(key) else { return Ok(None) };
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let recorded = match Self::companion(&path, "sha1") {
            Some(sidecar) => tokio::fs::read_to_string(&sidecar).await.ok().and_then(|h| hex::decode(h.trim()).ok()).and_then(|h| <[u8; 20]>::try_from(h.as_slice()).ok()),
            None => None,
        };
        let sha1 = match recorded {
            Some(h) => h,
            None => {
                let Some((file, _)) = self.open(key).await? else { return Ok(None) };
                let mut hasher = sha1::Sha1::new();
                let mut stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
                while let Some(chunk) = stream.next().await {
                    hasher.update(&chunk?);
                }
                hasher.finalize().into()
            }
        };
        Ok(Some(ObjectInfo { size, sha1: Some(sha1) }))
    }

    /// Deletes a document and the store's files beside it; missing is fine.
    pub async fn delete(&self, key: &str) -> std::io::Result<()> {
        let Some(path) = self.path(key) else { return Ok(()) };
        if let Some(sidecar) = Self::companion(&path, "sha1") {
            ignore_missing(tokio::fs::remove_file(&sidecar).await)?;
        }
        ignore_missing(tokio::fs::remove_file(&path).await)
    }

    /// Deletes every document under a key prefix (a directory); missing is fine.
    pub async fn delete_prefix(&self, prefix: &str) -> std::io::Result<()> {
        let Some(path) = self.path(prefix) else { return Ok(()) };
        ignore_missing(tokio::fs::remove_dir_all(&path).await)
    }
}

fn ignore_missing(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates a directory (and parents) readable by the server's user only: documents hold PHI.
async fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_the_root_are_refused() {
        let store = LocalStore::new("/srv/docs");
        assert_eq!(store.path("export/abc/Patient-1.ndjson"), Some(PathBuf::from("/srv/docs/export/abc/Patient-1.ndjson")));
        for bad in ["", "../etc/passwd", "/etc/passwd", "export//x", "export/../x", "export/.hidden", "a b", "export/x\0"] {
            assert_eq!(store.path(bad), None, "{bad:?}");
        }
    }

    fn body(chunks: &[&'static [u8]]) -> impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(chunks.iter().map(|c| Ok(bytes::Bytes::from_static(c))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn an_upload_is_kept_only_with_its_exact_length_and_digest_and_never_replaced() {
        let dir = std::env::temp_dir().join(format!("ironfhir-local-store-{}", uuid::Uuid::new_v4().simple()));
        let store = LocalStore::new(&dir);
        let too_long = store.receive("binary/a", 5, None, body(&[b"abc", b"def"])).await;
        assert!(matches!(too_long, Err(UploadRefused::Length { expected: 5, received: 6 })), "{too_long:?}");
        let too_short = store.receive("binary/a", 7, None, body(&[b"abc", b"def"])).await;
        assert!(matches!(too_short, Err(UploadRefused::Length { expected: 7, received: 6 })), "{too_short:?}");
        let wrong_digest = store.receive("binary/a", 6, Some([0; 20]), body(&[b"abc", b"def"])).await;
        assert!(matches!(wrong_digest, Err(UploadRefused::Digest)), "{wrong_digest:?}");
        assert!(store.head("binary/a").await.unwrap().is_none(), "nothing kept from refused uploads");
        let digest: [u8; 20] = sha1::Sha1::digest(b"abcdef").into();
        let stored = store.receive("binary/a", 6, Some(digest), body(&[b"abc", b"def"])).await.unwrap();
        assert_eq!(stored.sha1, Some(digest));
        assert!(matches!(store.receive("binary/a", 6, None, body(&[b"xyzxyz"])).await, Err(UploadRefused::Exists)));
        let head = store.head("binary/a").await.unwrap().unwrap();
        assert_eq!((head.size, head.sha1), (6, Some(digest)));
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("binary")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 2, "the document and its digest only: {leftovers:?}");
        store.delete("binary/a").await.unwrap();
        assert!(store.head("binary/a").await.unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
