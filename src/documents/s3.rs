//! The S3 document store: any S3-compatible endpoint (AWS, MinIO, Ceph, s3rver …).
//!
//! The AWS SDK is used only to pre-sign requests (SigV4 query signing); it sends nothing
//! itself, so it brings no HTTP client or TLS stack of its own. Clients upload and download
//! through the pre-signed URLs directly (the bytes never pass through this server); the few
//! calls the server makes itself — HEAD at completion, DELETE of orphans and expired exports,
//! the listing of an export's files, uploading an export file — are pre-signed too and sent
//! with the server's `reqwest` client.

use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};
use base64::Engine;
use futures::TryStreamExt;

use super::{ObjectInfo, Presigned};

/// Settings of the S3 store (flags and the usual AWS environment variables).
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// `None` for AWS itself; the URL of any other S3-compatible service.
    pub endpoint: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub force_path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// `x-amz-server-side-encryption` asked for on uploads (`AES256`, `aws:kms`), if any.
    pub server_side_encryption: Option<String>,
}

/// Pre-signs S3 requests and sends the server's own ones.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    sse: Option<aws_sdk_s3::types::ServerSideEncryption>,
    http: reqwest::Client,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("bucket", &self.bucket).finish_non_exhaustive()
    }
}

/// How long the server's own pre-signed requests are valid (they are sent at once).
const OWN_REQUEST_EXPIRY: Duration = Duration::from_secs(300);

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl S3Store {
    /// A store for `settings`; fails on settings the SDK refuses.
    pub fn new(settings: &S3Settings) -> Result<Self, String> {
        let credentials = Credentials::new(
            settings.access_key_id.clone(),
            settings.secret_access_key.clone(),
            settings.session_token.clone(),
            None,
            "ironfhir-configuration",
        );
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.force_path_style)
            // No checksum of the (absent) body in pre-signed URLs: a pre-signed PUT carries
            // the checksum the uploader declared, or none.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let sse = match settings.server_side_encryption.as_deref() {
            None | Some("") | Some("none") => None,
            Some(s) => Some(aws_sdk_s3::types::ServerSideEncryption::from(s)),
        };
        // reqwest is built without a crypto provider of its own: the process's is ring (as in
        // main.rs); installing it again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the S3 HTTP client: {e}"))?;
        Ok(S3Store { client: aws_sdk_s3::Client::from_conf(config.build()), bucket: settings.bucket.clone(), sse, http })
    }

    fn presigning(expires_in: Duration) -> std::io::Result<PresigningConfig> {
        PresigningConfig::expires_in(expires_in).map_err(io)
    }

    /// A pre-signed PUT with the content type, exact length, server-side encryption and (when
    /// given) the SHA-1 checksum as signed headers: S3 refuses an upload that differs.
    pub async fn presign_put(&self, key: &str, content_type: &str, length: u64, sha1: Option<&[u8; 20]>, expires_in: Duration) -> std::io::Result<Presigned> {
        let length = i64::try_from(length).map_err(io)?;
        let mut put = self.client.put_object().bucket(&self.bucket).key(key).content_type(content_type).content_length(length);
        if let Some(sse) = &self.sse {
            put = put.server_side_encryption(sse.clone());
        }
        if let Some(sha1) = sha1 {
            put = put.checksum_sha1(base64::engine::general_purpose::STANDARD.encode(sha1));
        }
        let presigned = put.presigned(Self::presigning(expires_in)?).await.map_err(io)?;
        Ok(to_presigned(&presigned))
    }

    /// A pre-signed GET that answers with `content_type`.
    pub async fn presign_get(&self, key: &str, content_type: &str, expires_in: Duration) -> std::io::Result<Presigned> {
        let get = self.client.get_object().bucket(&self.bucket).key(key).response_content_type(content_type);
        let presigned = get.presigned(Self::presigning(expires_in)?).await.map_err(io)?;
        Ok(to_presigned(&presigned))
    }

    /// Size and (when the service keeps one) SHA-1 of an object; `None` when it is missing.
    pub async fn head(&self, key: &str) -> std::io::Result<Option<ObjectInfo>> {
        let head = self.client.head_object().bucket(&self.bucket).key(key).checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled);
        let presigned = head.presigned(Self::presigning(OWN_REQUEST_EXPIRY)?).await.map_err(io)?;
        let response = self.send(&presigned, reqwest::Method::HEAD).send().await.map_err(io)?;
        match response.status() {
            s if s.is_success() => {
                let size = response
                    .headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| io("S3 HEAD answered without a Content-Length"))?;
                let sha1 = response
                    .headers()
                    .get("x-amz-checksum-sha1")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    .and_then(|v| <[u8; 20]>::try_from(v.as_slice()).ok());
                Ok(Some(ObjectInfo { size, sha1 }))
            }
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => Err(io(format!("S3 HEAD answered {s}"))),
        }
    }

    /// The SHA-1 of an object, read through once (constant memory); `None` when it is missing.
    pub async fn sha1(&self, key: &str) -> std::io::Result<Option<[u8; 20]>> {
        use sha1::Digest;
        let get = self.client.get_object().bucket(&self.bucket).key(key);
        let presigned = get.presigned(Self::presigning(OWN_REQUEST_EXPIRY)?).await.map_err(io)?;
        let response = self.send(&presigned, reqwest::Method::GET).send().await.map_err(io)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(io(format!("S3 GET answered {}", response.status())));
        }
        let mut hasher = sha1::Sha1::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(io)? {
            hasher.update(&chunk);
        }
        Ok(Some(hasher.finalize().into()))
    }

    /// Deletes an object (missing is fine).
    pub async fn delete(&self, key: &str) -> std::io::Result<()> {
        let presigned = self.client.delete_object().bucket(&self.bucket).key(key).presigned(Self::presigning(OWN_REQUEST_EXPIRY)?).await.map_err(io)?;
        let response = self.send(&presigned, reqwest::Method::DELETE).send().await.map_err(io)?;
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(io(format!("S3 DELETE answered {}", response.status())))
        }
    }

    /// Deletes every object under a prefix (`export/<job>/`), a page of listing at a time.
    pub async fn delete_prefix(&self, prefix: &str) -> std::io::Result<()> {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        for _ in 0..1_000 {
            let list = self.client.list_object_versions().bucket(&self.bucket).prefix(&prefix).max_keys(1000);
            let presigned = list.presigned(Self::presigning(OWN_REQUEST_EXPIRY)?).await.map_err(io)?;
            let response = self.send(&presigned, reqwest::Method::GET).send().await.map_err(io)?;
            if !response.status().is_success() {
                return Err(io(format!("S3 listing answered {}", response.status())));
            }
            let body = response.text().await.map_err(io)?;
            let keys = listed_keys(&body, &prefix);
            if keys.is_empty() {
                return Ok(());
            }
            for key in keys {
                self.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// Uploads a local file (an export file spooled on disk) under `key`, streaming it.
    pub async fn upload_file(&self, key: &str, path: &std::path::Path, content_type: &str) -> std::io::Result<()> {
        let file = tokio::fs::File::open(path).await?;
        let length = file.metadata().await?.len();
        let signed = self.presign_put(key, content_type, length, None, OWN_REQUEST_EXPIRY).await?;
        let mut request = self.http.put(&signed.url);
        for (name, value) in &signed.headers {
            request = request.header(name, value);
        }
        let frames = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map_ok(http_body::Frame::data);
        let body = reqwest::Body::wrap(http_body_util::StreamBody::new(frames));
        // The signed headers include Content-Length, so the body is not sent chunked.
        let response = request.body(body).send().await.map_err(io)?;
        if !response.status().is_success() {
            return Err(io(format!("S3 PUT answered {}", response.status())));
        }
        Ok(())
    }

    /// A request for a pre-signed one, with the headers it was signed with.
    fn send(&self, presigned: &PresignedRequest, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, presigned.uri());
        for (name, value) in presigned.headers() {
            request = request.header(name, value);
        }
        request
    }
}

fn to_presigned(presigned: &PresignedRequest) -> Presigned {
    Presigned {
        method: presigned.method().to_owned(),
        url: presigned.uri().to_owned(),
        headers: presigned.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
    }
}

/// The `<Key>` values of a ListObjectVersions answer that lie under `prefix` (our own keys are
/// plain ASCII without XML escapes; anything else is left alone).
fn listed_keys(xml: &str, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = xml
        .split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>").map(|(k, _)| k.to_owned()))
        .filter(|k| k.starts_with(prefix) && super::valid_key(k))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> S3Store {
        S3Store::new(&S3Settings {
            bucket: "docs".into(),
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            force_path_style: true,
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: None,
            server_side_encryption: Some("AES256".into()),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn presigning_needs_no_http_client_and_signs_the_upload_bounds() {
        let signed = store().presign_put("binary/abc", "application/pdf", 42, Some(&[0; 20]), Duration::from_secs(60)).await.unwrap();
        assert_eq!(signed.method, "PUT");
        assert!(signed.url.starts_with("http://127.0.0.1:9/docs/binary/abc?"), "{}", signed.url);
        let signed_headers = signed.url.split("X-Amz-SignedHeaders=").nth(1).unwrap().split('&').next().unwrap().to_owned();
        for h in ["content-length", "content-type", "x-amz-server-side-encryption", "x-amz-checksum-sha1"] {
            assert!(signed_headers.contains(h), "{h} not signed: {signed_headers}");
            assert!(signed.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(h)), "{h} not among the headers to send: {:?}", signed.headers);
        }
        assert!(!signed.url.contains("x-amz-checksum-crc32"), "{}", signed.url);
    }

    #[test]
    fn listed_keys_are_taken_under_the_prefix_only() {
        let xml = "<R><Version><Key>export/a/Patient-1.ndjson</Key></Version><Version><Key>export/b/x</Key></Version><Version><Key>export/a/Patient-1.ndjson</Key></Version></R>";
        assert_eq!(listed_keys(xml, "export/a/"), vec!["export/a/Patient-1.ndjson".to_owned()]);
    }
}
