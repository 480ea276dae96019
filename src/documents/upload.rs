//! Binary content in the document store: the FHIR side of uploads and downloads.
//!
//! - `POST [base]/Binary/$upload` with a Parameters (`contentType`, `size`, optional `hash` —
//!   the SHA-1, base64, as in Attachment.hash — and `securityContext`) needs create on Binary;
//!   it records a pending object, creates the Binary (no `data`; the [`EXTENSION`] names the
//!   object) and answers the pre-signed PUT (URL, method, headers to send, expiry).
//! - The client PUTs the bytes there, then calls `POST [base]/Binary/<id>/$upload-complete`
//!   (update on Binary): the server looks at the stored object (length, SHA-1), marks the
//!   object stored and records size and hash in the Binary; the answer carries an Attachment
//!   (`url` = `Binary/<id>`) for a DocumentReference.
//! - `GET [base]/Binary/<id>` (or a version) with a non-FHIR Accept ([`raw`]) reads the
//!   Binary as the principal — out of reach is 404 like a missing one — and redirects to a
//!   pre-signed GET; inline `data` is answered as bytes.
//!
//! The `document_object` row binds an object to its Binary: the extension alone (which a
//! client could write) never opens an object.

use base64::Engine;
use serde_json::{Value, json};

use super::objects::{self, Object, State};
use super::{Documents, Presigned};
use crate::auth::{Interaction, Principal};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::store::{Store, StoredResource};

/// The extension of a Binary whose content is a stored object (sub-extensions `key`,
/// `status` pending|stored, `size`, `hash`). Binary is a Resource, not a DomainResource: it
/// has no `extension` of its own, so this one sits in `Binary.meta.extension`.
pub const EXTENSION: &str = "https://ironfhir.dev/fhir/StructureDefinition/stored-document";

/// An upload as asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadRequest {
    pub content_type: String,
    pub size: u64,
    pub sha1: Option<[u8; 20]>,
    pub security_context: Option<Value>,
}

/// Reads the `$upload` Parameters: 400 for anything missing, malformed or over the limit.
pub fn parse_upload(parameters: &Value, max_bytes: u64) -> FhirResult<UploadRequest> {
    let bad = |m: &str| FhirError::BadRequest(format!("$upload: {m}"));
    if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("the body must be a Parameters resource"));
    }
    let mut content_type = None;
    let mut size = None;
    let mut sha1 = None;
    let mut security_context = None;
    for p in parameters.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        match name {
            "contentType" => {
                let v = p.get("valueCode").or_else(|| p.get("valueString")).and_then(Value::as_str).ok_or_else(|| bad("contentType is a valueCode"))?;
                if !is_media_type(v) {
                    return Err(bad("contentType must be a media type such as application/pdf"));
                }
                content_type = Some(v.to_owned());
            }
            "size" => {
                let v = ["valueUnsignedInt", "valueInteger", "valuePositiveInt", "valueInteger64", "valueDecimal"]
                    .iter()
                    .find_map(|k| p.get(*k))
                    .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
                    .ok_or_else(|| bad("size is a non-negative valueUnsignedInt"))?;
                if v > max_bytes {
                    return Err(FhirError::PayloadTooLarge(format!("$upload: size {v} is over this server's limit of {max_bytes} bytes")));
                }
                size = Some(v);
            }
            "hash" => {
                let v = p.get("valueBase64Binary").and_then(Value::as_str).ok_or_else(|| bad("hash is a valueBase64Binary"))?;
                let bytes = base64::engine::general_purpose::STANDARD.decode(v).map_err(|_| bad("hash is not base64"))?;
                sha1 = Some(<[u8; 20]>::try_from(bytes.as_slice()).map_err(|_| bad("hash must be the SHA-1 of the content (20 bytes, base64)"))?);
            }
            "securityContext" => {
                let v = p.get("valueReference").ok_or_else(|| bad("securityContext is a valueReference"))?;
                security_context = Some(v.clone());
            }
            other => return Err(bad(&format!("unknown parameter '{}'", crate::fhir::types::sanitize(other)))),
        }
    }
    Ok(UploadRequest {
        content_type: content_type.ok_or_else(|| bad("contentType is required"))?,
        size: size.ok_or_else(|| bad("size is required"))?,
        sha1,
        security_context,
    })
}

/// `type/subtype` with the token characters of RFC 9110 (no parameters, no spaces).
fn is_media_type(v: &str) -> bool {
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    v.len() <= 255 && v.split_once('/').is_some_and(|(t, s)| token(t) && token(s))
}

pub(crate) fn extension(key: &str, status: &str, size: u64, sha1: Option<&[u8; 20]>) -> Value {
    let mut parts = vec![json!({"url": "key", "valueString": key}), json!({"url": "status", "valueCode": status}), json!({"url": "size", "valueUnsignedInt": size})];
    if let Some(h) = sha1 {
        parts.push(json!({"url": "hash", "valueBase64Binary": base64::engine::general_purpose::STANDARD.encode(h)}));
    }
    json!({"url": EXTENSION, "extension": parts})
}

/// One part (`key`, `status`, `size`, `hash`) of a Binary's stored-document extension.
fn stored_part<'a>(binary: &'a Value, name: &str) -> Option<&'a Value> {
    binary
        .get("meta")?
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(EXTENSION))?
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(name))
}

/// The object key a Binary's extension names, if any.
pub fn object_key(binary: &Value) -> Option<&str> {
    stored_part(binary, "key")?.get("valueString")?.as_str()
}

/// What `$upload` answers.
pub struct Started {
    pub binary: StoredResource,
    pub put: Presigned,
    pub expires: chrono::DateTime<chrono::Utc>,
}

/// `Binary/$upload`: creates the Binary and a pending object, signs the PUT.
pub async fn start(store: &Store, documents: &Documents, principal: &Principal, request: UploadRequest, base: &str, origin: &str) -> FhirResult<Started> {
    let _ = principal.require("Binary", Interaction::Create)?;
    let key = format!("binary/{}", uuid::Uuid::new_v4().simple());
    let mut binary = json!({"resourceType": "Binary", "contentType": request.content_type});
    if let Some(context) = &request.security_context {
        binary["securityContext"] = context.clone();
    }
    binary["meta"] = json!({"extension": [extension(&key, "pending", request.size, request.sha1.as_ref())]});
    let rt = ResourceType::parse("Binary")?;
    let created = crate::interactions::create::create(store, principal, &rt, binary, None, base).await?;
    // Should this fail, the Binary stays without content, exactly like an upload never made
    // (no URL was handed out, so the store holds nothing for it).
    objects::insert_pending(
        store,
        &Object {
            key: key.clone(),
            resource_type: "Binary".into(),
            resource_id: created.stored.id.clone(),
            state: State::Pending,
            content_type: request.content_type.clone(),
            size: request.size,
            sha1: request.sha1,
        },
    )
    .await?;
    let put = documents
        .store
        .presign_put(origin, &key, &request.content_type, request.size, request.sha1.as_ref(), documents.url_ttl)
        .await
        .map_err(|e| FhirError::Internal(format!("cannot sign the upload: {e}")))?;
    let expires = chrono::Utc::now() + chrono::Duration::from_std(documents.url_ttl).unwrap_or_default();
    Ok(Started { binary: created.stored, put, expires })
}

/// The Parameters `$upload` answers with.
pub fn started_parameters(started: &Started) -> FhirResult<Value> {
    let binary = started.binary.content.clone().ok_or_else(|| FhirError::Internal("created Binary without content".into()))?;
    let mut parameter = vec![
        json!({"name": "binary", "resource": binary}),
        json!({"name": "method", "valueCode": started.put.method}),
        json!({"name": "url", "valueUrl": started.put.url}),
        json!({"name": "expires", "valueInstant": crate::interactions::instant(&started.expires)}),
    ];
    for (name, value) in &started.put.headers {
        parameter.push(json!({"name": "header", "valueString": format!("{name}: {value}")}));
    }
    Ok(json!({"resourceType": "Parameters", "parameter": parameter}))
}

/// The pending object a Binary names, checked to be bound to it: 404 when there is none.
async fn bound_object(store: &Store, binary: &StoredResource) -> FhirResult<Object> {
    let none = || FhirError::NotFound(format!("Binary/{} has no stored content", binary.id));
    let key = binary.content.as_ref().and_then(object_key).ok_or_else(none)?;
    let object = objects::get(store, key).await?.ok_or_else(none)?;
    if object.resource_type != binary.resource_type || object.resource_id != binary.id {
        return Err(none());
    }
    Ok(object)
}

/// `Binary/<id>/$upload-complete`: verifies the uploaded object and records it in the Binary.
pub async fn complete(store: &Store, documents: &Documents, principal: &Principal, id: &Id, base: &str) -> FhirResult<StoredResource> {
    let rt = ResourceType::parse("Binary")?;
    let current = crate::interactions::read::read(store, principal, &rt, id, base).await?;
    let _ = principal.require("Binary", Interaction::Update)?;
    let object = bound_object(store, &current).await?;
    let sha1 = match object.state {
        State::Sweeping => return Err(FhirError::Conflict("this upload expired and was deleted; ask for a new one".into())),
        State::Stored => object.sha1.ok_or_else(|| FhirError::Internal("a stored object without its digest".into()))?,
        State::Pending => {
            let info = documents.store.head(&object.key).await.map_err(|e| FhirError::Internal(format!("cannot look at the uploaded document: {e}")))?;
            let info = info.ok_or_else(|| FhirError::Conflict("nothing was uploaded yet: PUT the content to the upload URL first".into()))?;
            let digest = info.sha1.ok_or_else(|| FhirError::Internal("the store gave no digest".into()))?;
            if info.size != object.size || object.sha1.is_some_and(|declared| declared != digest) {
                // Not what was asked for: remove it, so a new upload can be asked for.
                let _ = documents.store.delete(&object.key).await;
                return Err(FhirError::Conflict(format!(
                    "the uploaded document ({} bytes) is not the one declared ({} bytes{}); it was deleted",
                    info.size,
                    object.size,
                    if object.sha1.is_some() { ", with its SHA-1" } else { "" }
                )));
            }
            if !objects::mark_stored(store, &object.key, &digest).await? {
                return Err(FhirError::Conflict("this upload was completed or expired meanwhile".into()));
            }
            digest
        }
    };
    let mut binary = current.content.clone().ok_or_else(|| FhirError::Gone("the Binary was deleted".into()))?;
    let recorded = extension(&object.key, "stored", object.size, Some(&sha1));
    if binary.pointer("/meta/extension").and_then(Value::as_array).is_some_and(|list| list.contains(&recorded)) {
        return Ok(current); // completed before: nothing to record
    }
    if let Some(meta) = binary.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        let list = meta.entry("extension").or_insert_with(|| json!([]));
        if let Some(list) = list.as_array_mut() {
            list.retain(|e| e.get("url").and_then(Value::as_str) != Some(EXTENSION));
            list.push(recorded);
        }
    }
    let if_match = format!("W/\"{}\"", current.version_id);
    let outcome = crate::interactions::update::update(store, principal, &rt, id, binary, Some(&if_match), base).await?;
    Ok(outcome.stored)
}

/// The Attachment a DocumentReference (or any element of type Attachment) records for a
/// completed Binary: `url` = `Binary/<id>`, content type, size, SHA-1.
pub fn attachment(binary: &StoredResource) -> Value {
    let content = binary.content.as_ref();
    let sub = |name: &str| -> Option<Value> { stored_part(content?, name).cloned() };
    let mut a = json!({"url": format!("Binary/{}", binary.id)});
    if let Some(ct) = content.and_then(|c| c.get("contentType")) {
        a["contentType"] = ct.clone();
    }
    if let Some(size) = sub("size").and_then(|e| e.get("valueUnsignedInt").cloned()) {
        a["size"] = size;
    }
    if let Some(hash) = sub("hash").and_then(|e| e.get("valueBase64Binary").cloned()) {
        a["hash"] = hash;
    }
    a
}

/// What a raw read of a Binary answers.
pub enum Raw {
    /// A pre-signed GET of the stored object.
    Redirect(String),
    /// Inline `data`, decoded, with its content type.
    Bytes { content_type: String, bytes: Vec<u8> },
}

/// A Binary's content as the spec's raw read (http.html#binary): read (or vread) as the
/// principal first, so out of reach is 404 and no URL is signed.
pub async fn raw(store: &Store, documents: &Documents, principal: &Principal, id: &Id, version: Option<&str>, base: &str, origin: &str) -> FhirResult<Raw> {
    let rt = ResourceType::parse("Binary")?;
    let stored = match version {
        None => crate::interactions::read::read(store, principal, &rt, id, base).await?,
        Some(v) => crate::interactions::read::vread(store, principal, &rt, id, v, base).await?,
    };
    let content = stored.content.as_ref().ok_or_else(|| FhirError::Gone("the Binary was deleted".into()))?;
    crate::audit::intent::note_concerned("Binary", content, base);
    if object_key(content).is_some() {
        let object = bound_object(store, &stored).await?;
        if object.state != State::Stored {
            return Err(FhirError::Conflict(format!("the upload of Binary/{id} has not been completed")));
        }
        let get = documents
            .store
            .presign_get(origin, &object.key, &object.content_type, documents.url_ttl)
            .await
            .map_err(|e| FhirError::Internal(format!("cannot sign the download: {e}")))?;
        return Ok(Raw::Redirect(get.url));
    }
    let content_type = content.get("contentType").and_then(Value::as_str).unwrap_or("application/octet-stream").to_owned();
    let bytes = match content.get("data").and_then(Value::as_str) {
        Some(data) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| FhirError::Internal(format!("Binary/{id} holds data that is not base64")))?,
        None => vec![],
    };
    Ok(Raw::Bytes { content_type, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: Value) -> Value {
        json!({"resourceType": "Parameters", "parameter": list})
    }

    #[test]
    fn upload_parameters_are_checked_before_anything_is_written() {
        let ok = parse_upload(
            &params(json!([{"name": "contentType", "valueCode": "application/pdf"}, {"name": "size", "valueUnsignedInt": 10}, {"name": "hash", "valueBase64Binary": base64::engine::general_purpose::STANDARD.encode([1u8; 20])}])),
            100,
        )
        .unwrap();
        assert_eq!((ok.content_type.as_str(), ok.size, ok.sha1), ("application/pdf", 10, Some([1; 20])));
        let refused = [
            json!([{"name": "size", "valueUnsignedInt": 10}]),
            json!([{"name": "contentType", "valueCode": "application/pdf"}]),
            json!([{"name": "contentType", "valueCode": "pdf"}, {"name": "size", "valueUnsignedInt": 10}]),
            json!([{"name": "contentType", "valueCode": "text/html\r\nx: y"}, {"name": "size", "valueUnsignedInt": 10}]),
            json!([{"name": "contentType", "valueCode": "application/pdf"}, {"name": "size", "valueInteger": -1}]),
            json!([{"name": "contentType", "valueCode": "application/pdf"}, {"name": "size", "valueUnsignedInt": 10}, {"name": "hash", "valueBase64Binary": "AAAA"}]),
            json!([{"name": "contentType", "valueCode": "application/pdf"}, {"name": "size", "valueUnsignedInt": 10}, {"name": "nonsense", "valueString": "x"}]),
        ];
        for list in refused {
            assert!(matches!(parse_upload(&params(list.clone()), 100), Err(FhirError::BadRequest(_))), "{list}");
        }
        let too_big = parse_upload(&params(json!([{"name": "contentType", "valueCode": "application/pdf"}, {"name": "size", "valueUnsignedInt": 101}])), 100);
        assert!(matches!(too_big, Err(FhirError::PayloadTooLarge(_))));
    }
}
