//! HTTP side of the document store (see [`crate::documents`]): `Binary/$upload`,
//! `Binary/<id>/$upload-complete`, the raw read of a Binary (a redirect to a pre-signed GET,
//! or inline bytes), and `/documents/<key>?…`, where the embedded store serves the URLs it
//! signs — streaming both ways, so a large upload or download holds no more than a chunk in
//! memory.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::format::Format;
use super::{AppState, Ctx, error_response, read_body, respond, version_headers};
use crate::auth::Principal;
use crate::documents::local::UploadRefused;
use crate::documents::objects::{self, State as ObjectState};
use crate::documents::signing::{PATH_PREFIX, Refusal};
use crate::documents::upload;
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::Id;

/// Whether a request asks for a Binary's content rather than the resource (http.html#binary):
/// a GET of `Binary/<id>` (or a version) without `_format`, whose preferred Accept type is
/// neither a FHIR format nor a wildcard.
pub fn wants_raw(method: &Method, path: &str, format_param: Option<&str>, headers: &HeaderMap) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD) || format_param.is_some() {
        return false;
    }
    let segments: Vec<&str> = path.trim_start_matches("/fhir/").trim_end_matches('/').split('/').collect();
    if !matches!(segments.as_slice(), ["Binary", _] | ["Binary", _, "_history", _]) {
        return false;
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return false };
    let mut best: Option<(f32, &str)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let mime = parts.next().unwrap_or("").trim();
        let q = parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
        if !mime.is_empty() && q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, mime));
        }
    }
    let Some((_, mime)) = best else { return false };
    let mime = mime.to_ascii_lowercase();
    let fhir = ["application/fhir+json", "application/json+fhir", "application/fhir+xml", "application/xml+fhir", "application/json", "application/xml", "text/xml"];
    !(fhir.contains(&mime.as_str()) || mime == "*/*" || mime == "application/*")
}

/// This server's public origin (`https://host`), where `/documents/...` is served: the FHIR
/// base without its `/fhir`.
fn origin(ctx: &Ctx) -> &str {
    ctx.base.strip_suffix("/fhir").unwrap_or(&ctx.base)
}

/// `POST Binary/$upload`: 201, Location of the new Binary, and the upload to make.
pub async fn start_upload(state: &AppState, ctx: &Ctx, principal: &Principal, body: Body) -> FhirResult<Response> {
    let parameters = super::format::parse_resource_body(&ctx.headers, &read_body(state, body).await?)?;
    let request = upload::parse_upload(&parameters, state.documents.max_upload_bytes)?;
    let started = upload::start(&state.store, &state.documents, principal, request, &ctx.base, origin(ctx)).await?;
    let mut headers = version_headers(&started.binary);
    let location = format!("{}/Binary/{}/_history/{}", ctx.base, started.binary.id, started.binary.version_id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    respond(ctx, StatusCode::CREATED, upload::started_parameters(&started)?, headers)
}

/// `POST Binary/<id>/$upload-complete`: the recorded Binary and the Attachment to refer to it.
pub async fn complete_upload(state: &AppState, ctx: &Ctx, principal: &Principal, id: &Id, body: Body) -> FhirResult<Response> {
    let _ = read_body(state, body).await?;
    let binary = upload::complete(&state.store, &state.documents, principal, id, &ctx.base).await?;
    let attachment = upload::attachment(&binary);
    let headers = version_headers(&binary);
    let content = binary.content.ok_or_else(|| FhirError::Internal("completed Binary without content".into()))?;
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "binary", "resource": content},
        {"name": "attachment", "valueAttachment": attachment},
    ]});
    respond(ctx, StatusCode::OK, parameters, headers)
}

/// Raw read of `Binary/<id>` (`version` for a vread): 307 to a pre-signed GET of the stored
/// object, or the inline bytes with the Binary's content type.
pub async fn raw(state: &AppState, ctx: &Ctx, principal: &Principal, id: &Id, version: Option<&str>) -> FhirResult<Response> {
    match upload::raw(&state.store, &state.documents, principal, id, version, &ctx.base, origin(ctx)).await? {
        upload::Raw::Redirect(url) => {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, HeaderValue::from_str(&url).map_err(|e| FhirError::Internal(e.to_string()))?);
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok((StatusCode::TEMPORARY_REDIRECT, headers).into_response())
        }
        upload::Raw::Bytes { content_type, bytes } => {
            let mut headers = content_headers(&content_type);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Ok((StatusCode::OK, headers, bytes).into_response())
        }
    }
}

/// Headers of document content served from this origin: its type, and nothing a browser would
/// run in the API's origin (an uploaded HTML page stays inert).
fn content_headers(content_type: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    headers
}

/// `/documents/<key>?…`: the embedded store's signed URLs (GET, HEAD, PUT). 403 for a URL that
/// is tampered with, expired or used with another method, key, type or length, as S3 answers.
pub async fn serve(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    match serve_signed(&state, &parts, body).await {
        Ok(response) if parts.method == Method::HEAD => (response.status(), response.headers().clone()).into_response(),
        Ok(response) => response,
        Err(e) => error_response(&e, Format::Json, false),
    }
}

async fn serve_signed(state: &AppState, parts: &axum::http::request::Parts, body: Body) -> FhirResult<Response> {
    let local = state.documents.store.local_store().ok_or_else(|| FhirError::NotFound("documents are kept in S3 here".into()))?;
    let key = parts.uri.path().strip_prefix(PATH_PREFIX).unwrap_or("");
    let method = match parts.method {
        Method::GET | Method::HEAD => "GET",
        Method::PUT => "PUT",
        _ => return Err(FhirError::MethodNotAllowed("document URLs take GET, HEAD or PUT".into())),
    };
    let grant = state
        .documents
        .store
        .signer()
        .verify(method, key, parts.uri.query().unwrap_or(""), chrono::Utc::now().timestamp())
        .map_err(|refusal| {
            FhirError::Forbidden(
                match refusal {
                    Refusal::Expired => "this document URL has expired",
                    Refusal::WrongMethod => "this document URL is not for this method",
                    Refusal::BadSignature => "this document URL is not valid (its signature does not match)",
                }
                .into(),
            )
        })?;
    if method == "GET" {
        let (file, len) = local.open(key).await.map_err(|e| FhirError::Internal(format!("cannot read a document: {e}")))?.ok_or_else(|| FhirError::NotFound("no such document".into()))?;
        let mut headers = content_headers(&grant.content_type);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
        return Ok((StatusCode::OK, headers, body).into_response());
    }
    // PUT: the signed headers must be the ones sent.
    let sent_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !sent_type.eq_ignore_ascii_case(&grant.content_type) {
        return Err(FhirError::Forbidden("the Content-Type is not the one this URL was signed for".into()));
    }
    let length = grant.length.ok_or_else(|| FhirError::Forbidden("this document URL is not for uploads".into()))?;
    let sent_length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if sent_length != Some(length) {
        return Err(FhirError::Forbidden(format!("this URL takes exactly {length} bytes, with that Content-Length")));
    }
    let object = objects::get(&state.store, key).await?.ok_or_else(|| FhirError::Forbidden("this upload is no longer expected".into()))?;
    if object.state != ObjectState::Pending {
        return Err(FhirError::Conflict("this document was uploaded already; stored documents never change".into()));
    }
    let sha1 = match &grant.sha1 {
        Some(h) => Some(hex::decode(h).ok().and_then(|h| <[u8; 20]>::try_from(h.as_slice()).ok()).ok_or_else(|| FhirError::Forbidden("malformed digest".into()))?),
        None => None,
    };
    match local.receive(key, length, sha1, body.into_data_stream()).await {
        Ok(info) => {
            let mut headers = HeaderMap::new();
            if let Some(digest) = info.sha1
                && let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", hex::encode(digest)))
            {
                headers.insert(header::ETAG, v);
            }
            Ok((StatusCode::OK, headers).into_response())
        }
        Err(UploadRefused::Exists) => Err(FhirError::Conflict("this document was uploaded already; stored documents never change".into())),
        Err(UploadRefused::Length { expected, received }) => {
            Err(FhirError::BadRequest(format!("the body has {received} bytes or more; this URL takes exactly {expected}")))
        }
        Err(UploadRefused::Digest) => Err(FhirError::BadRequest("the body's SHA-1 is not the one declared (BadDigest)".into())),
        Err(UploadRefused::Io(e)) => Err(FhirError::BadRequest(format!("the upload could not be received: {e}"))),
    }
}
