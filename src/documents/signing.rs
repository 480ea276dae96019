//! Signed URLs of the embedded document store: the same contract as S3 pre-signed URLs, so a
//! client uses both the same way. A URL grants one method on one key until an expiry, with the
//! content type and (for uploads) the exact length and optional SHA-1 bound into the signature;
//! changing any of them, or the signature, makes the URL worthless.
//!
//! `[origin]/documents/<key>?m=PUT&e=<unix expiry>&t=<content type>&l=<length>&h=<sha1 hex>&s=<signature>`
//! where `s` = hex HMAC-SHA256 over `v1\nMETHOD\nkey\nexpiry\ntype\nlength\nsha1`. The key is
//! derived from the token signing key, which every instance of a deployment shares, so a URL
//! one instance signs is honoured by the others.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The path prefix the server serves signed document URLs under (outside `/fhir`).
pub const PATH_PREFIX: &str = "/documents/";

/// Signs and checks document URLs.
#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(..)")
    }
}

/// What a signed URL grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `GET` or `PUT`.
    pub method: String,
    pub key: String,
    /// Unix seconds after which the URL is refused.
    pub expires: i64,
    /// The Content-Type a PUT must send and a GET answers with.
    pub content_type: String,
    /// The exact length a PUT must send (`None` for GET).
    pub length: Option<u64>,
    /// The SHA-1 (hex) the uploaded bytes must have, when the uploader declared one.
    pub sha1: Option<String>,
}

/// Why a URL is refused (all answered 403, as S3 does).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Missing or malformed parameters, or a signature that does not match.
    BadSignature,
    Expired,
    /// The request's method is not the one signed.
    WrongMethod,
}

type HmacSha256 = Hmac<Sha256>;

impl UrlSigner {
    /// A signer whose key is derived from `material` (the token signing key's PEM), labelled
    /// so that it is never the same as any other use of that key.
    pub fn derive(material: &[u8]) -> Self {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(material).unwrap_or_else(|_| unreachable_hmac());
        mac.update(b"ironfhir/document-urls/v1");
        UrlSigner { key: mac.finalize().into_bytes().into() }
    }

    fn mac(&self, grant: &Grant) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable_hmac());
        let length = grant.length.map(|l| l.to_string()).unwrap_or_default();
        let text = format!(
            "v1\n{}\n{}\n{}\n{}\n{}\n{}",
            grant.method,
            grant.key,
            grant.expires,
            grant.content_type,
            length,
            grant.sha1.as_deref().unwrap_or("")
        );
        mac.update(text.as_bytes());
        mac
    }

    /// The query string (without `?`) of a URL granting `grant`.
    pub fn sign(&self, grant: &Grant) -> String {
        let signature = hex::encode(self.mac(grant).finalize().into_bytes());
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("m", &grant.method).append_pair("e", &grant.expires.to_string()).append_pair("t", &grant.content_type);
        if let Some(l) = grant.length {
            query.append_pair("l", &l.to_string());
        }
        if let Some(h) = &grant.sha1 {
            query.append_pair("h", h);
        }
        query.append_pair("s", &signature);
        query.finish()
    }

    /// Checks a request for `key` with `method` and the URL's `query` at time `now`: the grant
    /// when the signature matches, the method is the one signed and the URL has not expired.
    pub fn verify(&self, method: &str, key: &str, query: &str, now: i64) -> Result<Grant, Refusal> {
        let mut m = None;
        let mut e = None;
        let mut t = None;
        let mut l = None;
        let mut h = None;
        let mut s = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match k.as_ref() {
                "m" => &mut m,
                "e" => &mut e,
                "t" => &mut t,
                "l" => &mut l,
                "h" => &mut h,
                "s" => &mut s,
                _ => return Err(Refusal::BadSignature),
            };
            if slot.replace(v.into_owned()).is_some() {
                return Err(Refusal::BadSignature); // a repeated parameter: ambiguous
            }
        }
        let (Some(signed_method), Some(expires), Some(content_type), Some(signature)) = (m, e, t, s) else {
            return Err(Refusal::BadSignature);
        };
        let expires: i64 = expires.parse().map_err(|_| Refusal::BadSignature)?;
        let length = match l {
            Some(l) => Some(l.parse::<u64>().map_err(|_| Refusal::BadSignature)?),
            None => None,
        };
        let grant = Grant { method: signed_method, key: key.to_owned(), expires, content_type, length, sha1: h };
        let signature = hex::decode(signature).map_err(|_| Refusal::BadSignature)?;
        // Constant-time comparison.
        self.mac(&grant).verify_slice(&signature).map_err(|_| Refusal::BadSignature)?;
        if grant.method != method {
            return Err(Refusal::WrongMethod);
        }
        if now > grant.expires {
            return Err(Refusal::Expired);
        }
        Ok(grant)
    }
}

/// HMAC accepts keys of any length; this cannot happen.
fn unreachable_hmac() -> HmacSha256 {
    unreachable!("HMAC-SHA256 takes keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            method: "PUT".into(),
            key: "binary/abc".into(),
            expires: 1_000,
            content_type: "application/pdf".into(),
            length: Some(42),
            sha1: Some("00".repeat(20)),
        }
    }

    #[test]
    fn a_signed_url_verifies_until_it_expires_and_only_for_its_method_and_key() {
        let signer = UrlSigner::derive(b"pem");
        let query = signer.sign(&grant());
        assert_eq!(signer.verify("PUT", "binary/abc", &query, 999), Ok(grant()));
        assert_eq!(signer.verify("PUT", "binary/abc", &query, 1_001), Err(Refusal::Expired));
        assert_eq!(signer.verify("GET", "binary/abc", &query, 999), Err(Refusal::WrongMethod));
        assert_eq!(signer.verify("PUT", "binary/abd", &query, 999), Err(Refusal::BadSignature));
        assert_eq!(UrlSigner::derive(b"other").verify("PUT", "binary/abc", &query, 999), Err(Refusal::BadSignature));
    }

    #[test]
    fn any_changed_parameter_breaks_the_signature() {
        let signer = UrlSigner::derive(b"pem");
        let query = signer.sign(&grant());
        for (from, to) in [("e=1000", "e=9000"), ("l=42", "l=43"), ("t=application%2Fpdf", "t=text%2Fplain"), ("m=PUT", "m=GET"), ("h=00", "h=01")] {
            let tampered = query.replace(from, to);
            assert_ne!(tampered, query, "{from}");
            assert_eq!(signer.verify("PUT", "binary/abc", &tampered, 999).err(), Some(Refusal::BadSignature), "{from} → {to}");
        }
        assert_eq!(signer.verify("PUT", "binary/abc", &format!("{query}&l=1"), 999).err(), Some(Refusal::BadSignature));
        assert_eq!(signer.verify("PUT", "binary/abc", "m=PUT&e=1000&t=x", 999).err(), Some(Refusal::BadSignature));
    }
}
