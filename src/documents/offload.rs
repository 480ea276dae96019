//! `import` moves large inline content into the document store: JSONB holds no document bytes.
//!
//! - A Binary whose `data` decodes to more than the threshold keeps its id; its bytes become a
//!   stored object (bound to it in `document_object`, recorded in the stored-document
//!   extension), exactly as if it had been uploaded.
//! - An Attachment anywhere else (DocumentReference.content.attachment, Media.content,
//!   Communication.payload.contentAttachment …) whose `data` is that large gets a new Binary
//!   holding the object, and points at it: `url` = `Binary/<id>`, with `size` and `hash`
//!   (SHA-1) filled in and `data` removed.
//!
//! Small inline content stays as it is. Keys and the new Binaries' ids derive from the
//! content's SHA-1, so importing the same file again writes nothing new.

use base64::Engine;
use serde_json::{Value, json};
use sha1::Digest;

use super::Documents;
use super::objects::{self, Object, State};
use crate::store::Store;

/// Default threshold: inline content above 1 MiB (decoded) moves to the store.
pub const DEFAULT_THRESHOLD: usize = 1 << 20;

/// Moves `resource`'s large inline content to the store; returns the new Binaries to import
/// with it (before it). `Err` names what could not be stored (no content in the message).
pub async fn offload(store: &Store, documents: &Documents, resource: &mut Value, threshold: usize) -> Result<Vec<Value>, String> {
    if resource.get("resourceType").and_then(Value::as_str) == Some("Binary") {
        if let Some(bytes) = large(resource, threshold)? {
            let id = match resource.get("id").and_then(Value::as_str) {
                Some(id) => id.to_owned(),
                None => {
                    let id = crate::fhir::types::Id::generate().as_str().to_owned();
                    resource["id"] = json!(id);
                    id
                }
            };
            let content_type = resource.get("contentType").and_then(Value::as_str).unwrap_or("application/octet-stream").to_owned();
            let (key, sha1) = put(store, documents, &id, &content_type, &bytes).await?;
            if let Some(o) = resource.as_object_mut() {
                o.remove("data");
                let meta = o.entry("meta").or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    let list = meta.entry("extension").or_insert_with(|| json!([]));
                    if let Some(list) = list.as_array_mut() {
                        list.retain(|e| e.get("url").and_then(Value::as_str) != Some(super::upload::EXTENSION));
                        list.push(super::upload::extension(&key, "stored", bytes.len() as u64, Some(&sha1)));
                    }
                }
            }
        }
        return Ok(vec![]);
    }
    let mut binaries = vec![];
    let mut paths = vec![];
    collect_attachments(resource, String::new(), threshold, &mut paths);
    for path in paths {
        let Some(bytes) = resource.pointer(&path).map(|a| large(a, threshold)).transpose()?.flatten() else { continue };
        let content_type = resource.pointer(&path).and_then(|a| a.get("contentType")).and_then(Value::as_str).unwrap_or("application/octet-stream").to_owned();
        let id = format!("sha1-{}", hex::encode(<[u8; 20]>::from(sha1::Sha1::digest(&bytes))));
        let (key, sha1) = put(store, documents, &id, &content_type, &bytes).await?;
        binaries.push(json!({
            "resourceType": "Binary",
            "id": id,
            "meta": {"extension": [super::upload::extension(&key, "stored", bytes.len() as u64, Some(&sha1))]},
            "contentType": content_type,
        }));
        if let Some(o) = resource.pointer_mut(&path).and_then(Value::as_object_mut) {
            o.remove("data");
            o.insert("url".into(), json!(format!("Binary/{id}")));
            o.insert("size".into(), json!(bytes.len()));
            o.insert("hash".into(), json!(base64::engine::general_purpose::STANDARD.encode(sha1)));
        }
    }
    Ok(binaries)
}

/// The decoded `data` of `value` when it is longer than `threshold`.
fn large(value: &Value, threshold: usize) -> Result<Option<Vec<u8>>, String> {
    let Some(data) = value.get("data").and_then(Value::as_str) else { return Ok(None) };
    // base64 is 4 characters per 3 bytes: skip the decoding of what is surely small.
    if data.len() / 4 * 3 <= threshold {
        return Ok(None);
    }
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(compact).map_err(|_| "inline data is not base64".to_owned())?;
    Ok((bytes.len() > threshold).then_some(bytes))
}

/// JSON pointers of the Attachment-shaped objects (string `data` of more than `threshold`
/// bytes beside only Attachment elements) anywhere in `value`, contained resources included.
fn collect_attachments(value: &Value, at: String, threshold: usize, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let looks_like = map.get("data").is_some_and(|d| d.as_str().is_some_and(|d| d.len() / 4 * 3 > threshold))
                && map.keys().all(|k| matches!(k.as_str(), "id" | "extension" | "contentType" | "language" | "data" | "url" | "size" | "hash" | "title" | "creation" | "_data" | "_contentType"));
            if looks_like {
                out.push(at);
                return;
            }
            for (k, v) in map {
                collect_attachments(v, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), threshold, out);
            }
        }
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| collect_attachments(v, format!("{at}/{i}"), threshold, out)),
        _ => {}
    }
}

/// Writes `bytes` as the object of `Binary/<id>` and records it stored.
async fn put(store: &Store, documents: &Documents, id: &str, content_type: &str, bytes: &[u8]) -> Result<(String, [u8; 20]), String> {
    let sha1: [u8; 20] = sha1::Sha1::digest(bytes).into();
    let key = format!("binary/{id}-{}", hex::encode(sha1));
    if let Some(existing) = objects::get(store, &key).await.map_err(|e| e.to_string())?
        && existing.state == State::Stored
        && existing.resource_id == id
    {
        return Ok((key, sha1)); // imported before
    }
    let mut writer = documents.store.create(&key).await.map_err(|e| format!("cannot write to the document store: {e}"))?;
    writer.write(bytes).await.map_err(|e| format!("cannot write to the document store: {e}"))?;
    writer.finish().await.map_err(|e| format!("cannot write to the document store: {e}"))?;
    let object = Object {
        key: key.clone(),
        resource_type: "Binary".into(),
        resource_id: id.to_owned(),
        state: State::Pending,
        content_type: content_type.to_owned(),
        size: bytes.len() as u64,
        sha1: Some(sha1),
    };
    objects::insert_pending(store, &object).await.map_err(|e| e.to_string())?;
    objects::mark_stored(store, &key, &sha1).await.map_err(|e| e.to_string())?;
    Ok((key, sha1))
}
