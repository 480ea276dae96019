//! The one error type of the FHIR API, rendered once into an OperationOutcome at the HTTP edge.
//!
//! Every layer returns [`FhirError`]; `rest/` turns it into a status code and an
//! OperationOutcome body. Two total matches (status and issue code) keep the mapping in one place.

use axum::http::StatusCode;
use serde_json::{Value, json};

/// Severity of an OperationOutcome issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    /// The FHIR code (`error`, `warning` …).
    pub fn code(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One OperationOutcome issue: what is wrong and, where known, the FHIRPath of the element.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    /// IssueType code (`invalid`, `structure`, `required`, `value`, `code-invalid`, `not-found` …).
    pub code: &'static str,
    /// Human-readable text; never contains resource content (no PHI in error messages).
    pub diagnostics: String,
    /// FHIRPath expressions locating the problem (`Patient.name[0].given[1]`).
    pub expression: Vec<String>,
}

impl Issue {
    /// An error-severity issue.
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Issue { severity: Severity::Error, code, diagnostics: diagnostics.into(), expression: vec![] }
    }

    /// Attach the FHIRPath location.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    /// Renders the issue as OperationOutcome.issue JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"severity": self.severity.code(), "code": self.code, "diagnostics": self.diagnostics});
        if !self.expression.is_empty() {
            v["expression"] = json!(self.expression);
        }
        v
    }
}

/// Builds an OperationOutcome resource from issues.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = if issues.is_empty() {
        vec![json!({"severity": "information", "code": "informational", "diagnostics": "All OK"})]
    } else {
        issues.iter().map(Issue::to_json).collect()
    };
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

/// Everything that can go wrong in a FHIR interaction, each with the HTTP status the spec gives.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// Malformed request: unparseable body, bad parameter, id/type mismatch (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body parsed but is not a valid resource (422 with the validation issues).
    #[error("resource failed validation")]
    Invalid(Vec<Issue>),
    /// No token, or a token that is not valid (401 with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthorized(String),
    /// The token is valid but its scopes do not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown resource type, id, version or path (404).
    #[error("{0}")]
    NotFound(String),
    /// The resource was deleted (410).
    #[error("{0}")]
    Gone(String),
    /// HTTP method not supported on this path (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No acceptable representation (406).
    #[error("{0}")]
    NotAcceptable(String),
    /// Version conflict on update without If-Match, or concurrent writers (409).
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` did not match the current version, or a conditional operation matched several (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// Body larger than the configured limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Content-Type not FHIR JSON/XML (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A concurrent transaction touched the same rows (serialization failure, deadlock, unique
    /// violation); `Store::with_transaction` retries these and only then answers 409.
    #[error("{0}")]
    Retryable(String),
    /// Too many concurrent requests or the database timed out a statement (503 / 500 class,
    /// still an OperationOutcome; only server-side failures land here).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an infrastructure failure; the message is logged, the client sees a generic text.
    #[error("internal error: {0}")]
    Internal(String),
    /// Sealed PHI cannot be opened (missing key, altered or moved ciphertext): 500 with a message
    /// naming the row and key, never content.
    #[error("{0}")]
    Sealed(String),
}

impl FhirError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            FhirError::BadRequest(_) => StatusCode::BAD_REQUEST,
            FhirError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FhirError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            FhirError::Forbidden(_) => StatusCode::FORBIDDEN,
            FhirError::NotFound(_) => StatusCode::NOT_FOUND,
            FhirError::Gone(_) => StatusCode::GONE,
            FhirError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            FhirError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            FhirError::Conflict(_) | FhirError::Retryable(_) => StatusCode::CONFLICT,
            FhirError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            FhirError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            FhirError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            FhirError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            FhirError::Internal(_) | FhirError::Sealed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// IssueType code for this error.
    pub fn issue_code(&self) -> &'static str {
        match self {
            FhirError::BadRequest(_) => "invalid",
            FhirError::Invalid(_) => "invalid",
            FhirError::Unauthorized(_) => "login",
            FhirError::Forbidden(_) => "forbidden",
            FhirError::NotFound(_) => "not-found",
            FhirError::Gone(_) => "deleted",
            FhirError::MethodNotAllowed(_) => "not-supported",
            FhirError::NotAcceptable(_) => "not-supported",
            FhirError::Conflict(_) | FhirError::Retryable(_) => "conflict",
            FhirError::PreconditionFailed(_) => "conflict",
            FhirError::PayloadTooLarge(_) => "too-costly",
            FhirError::UnsupportedMediaType(_) => "not-supported",
            FhirError::Unavailable(_) => "transient",
            FhirError::Internal(_) | FhirError::Sealed(_) => "exception",
        }
    }

    /// The issues of the OperationOutcome that describes this error.
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            FhirError::Invalid(issues) => issues.clone(),
            FhirError::Internal(_) => vec![Issue::error("exception", "internal server error")],
            FhirError::Sealed(message) => vec![Issue::error("exception", message.clone())],
            other => vec![Issue::error(other.issue_code(), other.to_string())],
        }
    }

    /// The OperationOutcome resource for this error.
    pub fn outcome(&self) -> Value {
        operation_outcome(&self.issues())
    }
}

impl From<sqlx::Error> for FhirError {
    /// Database errors mapped in one place; the driver's message never reaches the client.
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                // unique_violation: two writers created the same resource at once.
                // serialization_failure / deadlock_detected: retried by with_transaction.
                Some("23505") | Some("40001") | Some("40P01") => {
                    return FhirError::Retryable("the resource was changed by a concurrent request; retry".into());
                }
                // insufficient_privilege: the audit trail's append-only triggers.
                Some("42501") => {
                    return FhirError::MethodNotAllowed("the audit trail is append-only: AuditEvents cannot be changed or deleted".into());
                }
                // exclusion_violation of the booking table: double booking (migrations/0002).
                Some("23P01") if db.constraint() == Some("appointment_booking_no_overlap") => {
                    return FhirError::Conflict(double_booking_message(db.as_ref()));
                }
                // query_canceled: statement_timeout.
                Some("57014") => return FhirError::Unavailable("the database did not answer in time".into()),
                _ => {}
            }
        }
        if matches!(e, sqlx::Error::PoolTimedOut) {
            return FhirError::Unavailable("the server is busy; retry".into());
        }
        tracing::error!(error = %e, "database error");
        FhirError::Internal("database error".into())
    }
}

/// What a refused double booking says: which practitioner or slot is already taken (an id, no
/// PHI), read from the constraint's detail "Key (occupant, during)=(Slot/1, [...)) conflicts …".
fn double_booking_message(db: &dyn sqlx::error::DatabaseError) -> String {
    let occupant = db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|pg| pg.detail())
        .and_then(|detail| detail.split_once(")=(").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_once(", ").map(|(occupant, _)| occupant.to_owned()));
    match occupant {
        Some(o) => format!("double booking refused: {o} is already booked by an active appointment that overlaps this time"),
        None => "double booking refused: a participant or slot is already booked by an active appointment that overlaps this time".into(),
    }
}

/// Result alias used across the crate.
pub type FhirResult<T> = Result<T, FhirError>;
