//! The document store: where files the API hands out by link live (Bulk Data export output
//! today; uploaded documents later). Bytes never sit in PostgreSQL.
//!
//! One implementation for now, a local directory (`<data-dir>/documents` by default,
//! `--document-dir`). Keys are relative paths of plain segments (`export/<job>/<file>`);
//! nothing derived from a request reaches the file system without [`DocumentStore::path`]
//! checking it. An S3 implementation will sit behind the same methods.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

/// Files under one root directory.
#[derive(Debug, Clone)]
pub struct DocumentStore {
    root: PathBuf,
}

/// A document being written; [`DocumentWriter::finish`] flushes it to disk.
pub struct DocumentWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
}

impl DocumentStore {
    /// A store rooted at `root` (created on first write).
    pub fn local(root: impl Into<PathBuf>) -> Self {
        DocumentStore { root: root.into() }
    }

    /// The file of a key; `None` for keys that are not plain relative paths (no `..`, no
    /// absolute paths, no empty or hidden segments).
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        let ok = !key.is_empty()
            && key.split('/').all(|seg| {
                !seg.is_empty() && !seg.starts_with('.') && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        ok.then(|| self.root.join(key))
    }

    /// Creates (or truncates) a document for writing.
    pub async fn create(&self, key: &str) -> std::io::Result<DocumentWriter> {
        let path = self.path(key).ok_or_else(|| std::io::Error::other("invalid document key"))?;
        if let Some(dir) = path.parent() {
            create_private_dir(dir).await?;
        }
        let file = tokio::fs::File::create(&path).await?;
        Ok(DocumentWriter { file: tokio::io::BufWriter::with_capacity(1 << 20, file) })
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

    /// Deletes every document under a key prefix (a directory); missing is fine.
    pub async fn delete_prefix(&self, prefix: &str) -> std::io::Result<()> {
        let Some(path) = self.path(prefix) else { return Ok(()) };
        match tokio::fs::remove_dir_all(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl DocumentWriter {
    /// Appends bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await
    }

    /// Flushes and syncs the document, so a completed export survives a crash.
    pub async fn finish(mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        self.file.get_ref().sync_all().await
    }
}

/// Creates a directory (and parents) readable by the server's user only: export files hold PHI.
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
        let store = DocumentStore::local("/srv/docs");
        assert_eq!(store.path("export/abc/Patient-1.ndjson"), Some(PathBuf::from("/srv/docs/export/abc/Patient-1.ndjson")));
        for bad in ["", "../etc/passwd", "/etc/passwd", "export//x", "export/../x", "export/.hidden", "a b", "export/x\0"] {
            assert_eq!(store.path(bad), None, "{bad:?}");
        }
    }
}
