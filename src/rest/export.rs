//! HTTP side of Bulk Data `$export` (see [`crate::export`]): kick-off, status polling,
//! cancellation and file download, with the status codes and headers the IG prescribes.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, Ctx, http_date, read_body, respond};
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult, Issue, Severity, operation_outcome};
use crate::export::{self, JobState, Level, RETRY_AFTER_SECONDS};

/// Kick-off at any level: 202 with `Content-Location` of the status URL.
pub async fn kick_off(state: &AppState, ctx: &Ctx, principal: &Principal, method: &Method, level: Level, body: Body) -> FhirResult<Response> {
    if !ctx.prefers("respond-async") {
        return Err(FhirError::BadRequest("$export is asynchronous: send the header Prefer: respond-async".into()));
    }
    let mut pairs = ctx.query.clone();
    if *method == Method::POST {
        let bytes = read_body(state, body).await?;
        if !bytes.is_empty() {
            let parameters = super::format::parse_resource_body(&ctx.headers, &bytes)?;
            pairs.extend(export::parameters_to_pairs(&parameters)?);
        }
    }
    let lenient = ctx.prefer("handling").as_deref() == Some("lenient");
    let kick_off = export::parse_kick_off(&state.store, principal, level.clone(), &pairs, lenient, &ctx.base).await?;
    let path = match &level {
        Level::System => "$export".to_owned(),
        Level::Patient => "Patient/$export".to_owned(),
        Level::Group(id) => format!("Group/{id}/$export"),
    };
    let query: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty")).collect();
    let request = if query.is_empty() {
        format!("{}/{path}", ctx.base)
    } else {
        format!("{}/{path}?{}", ctx.base, form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish())
    };
    let id = export::enqueue(&state.store, &state.exports, principal, &kick_off, &request, &ctx.base).await?;
    let mut headers = HeaderMap::new();
    let location = format!("{}/$export-status/{}", ctx.base, id.simple());
    headers.insert(header::CONTENT_LOCATION, HeaderValue::from_str(&location).map_err(|e| FhirError::Internal(e.to_string()))?);
    let outcome = operation_outcome(&[Issue {
        severity: Severity::Information,
        code: "informational",
        diagnostics: format!("export job accepted; poll {location}"),
        expression: vec![],
    }]);
    respond(ctx, StatusCode::ACCEPTED, outcome, headers)
}

/// Status poll: 202 + `X-Progress`/`Retry-After`, 200 + manifest, or 500 + OperationOutcome.
pub async fn status(state: &AppState, ctx: &Ctx, principal: &Principal, id: &str) -> FhirResult<Response> {
    match export::status(&state.store, &state.exports, principal, id).await? {
        JobState::Running { progress } => {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                headers.insert("x-progress", v);
            }
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            Ok((StatusCode::ACCEPTED, headers).into_response())
        }
        JobState::Completed { manifest, expires } => {
            let manifest = export::presign_manifest(&state.exports, id, manifest, ctx.base.strip_suffix("/fhir").unwrap_or(&ctx.base)).await?;
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(header::EXPIRES, http_date(&expires));
            let body = serde_json::to_vec(&manifest).map_err(|e| FhirError::Internal(e.to_string()))?;
            Ok((StatusCode::OK, headers, body).into_response())
        }
        JobState::Failed { error } => {
            let outcome = operation_outcome(&[Issue { severity: Severity::Error, code: "exception", diagnostics: error, expression: vec![] }]);
            respond(ctx, StatusCode::INTERNAL_SERVER_ERROR, outcome, HeaderMap::new())
        }
    }
}

/// `DELETE` on the status URL: 202, and the job with its files is gone.
pub async fn cancel(state: &AppState, ctx: &Ctx, principal: &Principal, id: &str) -> FhirResult<Response> {
    export::cancel(&state.store, &state.exports, principal, id).await?;
    let outcome = operation_outcome(&[Issue {
        severity: Severity::Information,
        code: "informational",
        diagnostics: "export job cancelled".into(),
        expression: vec![],
    }]);
    respond(ctx, StatusCode::ACCEPTED, outcome, HeaderMap::new())
}

/// Streams an output file as `application/fhir+ndjson` (S3: redirects to a pre-signed GET).
pub async fn file(state: &AppState, ctx: &Ctx, principal: &Principal, id: &str, name: &str) -> FhirResult<Response> {
    let origin = ctx.base.strip_suffix("/fhir").unwrap_or(&ctx.base);
    let (file, len) = match export::open_file(&state.store, &state.exports, principal, id, name, origin).await? {
        export::ExportFile::Local(file, len) => (file, len),
        export::ExportFile::Redirect(url) => {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, HeaderValue::from_str(&url).map_err(|e| FhirError::Internal(e.to_string()))?);
            return Ok((StatusCode::TEMPORARY_REDIRECT, headers).into_response());
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
    Ok((StatusCode::OK, headers, body).into_response())
}
