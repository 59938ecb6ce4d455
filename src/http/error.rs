//! How the HTTP layer answers a refusal or a fault: the library's own answer to "whose
//! mistake?" (`error::CallerMistake`) picks 4xx or 5xx, and the message is the one the CLI
//! prints, in the API's terms: each `--flag` read as its query parameter or JSON key
//! (`flags::parameter_terms`). A fault is logged with its whole chain and shown to the client
//! only as "internal error".

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::cmd::{exit, one_line};
use crate::event::Target;
use crate::recovery::ManualRecoveryError;
use crate::store::{AppendError, ReadError};

/// Every way a request can fail; each variant says its status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: a bad parameter or body; the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or one that is not in the tokens file.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid token without the right, a write with no tokens configured, or a
    /// cross-site write.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such job, variant or route.
    #[error("{0}")]
    NotFound(String),
    /// 409: another writer got there first; retry.
    #[error("{0}")]
    Conflict(String),
    /// 415: a write's body is not declared `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503 with `Retry-After`: the database gave no connection within `--db-timeout` or lost
    /// the session, or (readiness) it is not migrated.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a fault; logged, never shown.
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Error {
    /// Classifies by the first cause in the chain that knows, as the CLI's exit code does.
    fn from(error: anyhow::Error) -> Self {
        if let Some(lost) = error
            .chain()
            .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
            .find(|cause| crate::sqlstate::connection_lost(cause))
        {
            return database_unavailable(lost);
        }
        if crate::connect::caused_by_recovery_conflict(&error) {
            return replica_conflict(&error);
        }
        for cause in error.chain() {
            // The limit: the API's way past it, not the CLI's.
            if let Some(AppendError::LimitReached { refusal, target }) = cause.downcast_ref() {
                return Error::BadRequest(format!(
                    "{refusal}; an operator recovers it by hand: {}",
                    recover_request(target)
                ));
            }
            // An id of the other kind is not found as the kind asked either (as record_retry's
            // RL001 says), with the parameter it belongs in.
            let unknown = matches!(
                cause.downcast_ref::<ReadError>(),
                Some(ReadError::UnknownTarget { .. } | ReadError::WrongKind(_))
            ) || matches!(
                cause.downcast_ref::<ManualRecoveryError>(),
                Some(ManualRecoveryError::UnknownTarget { .. } | ManualRecoveryError::WrongKind(_))
            ) || matches!(
                cause.downcast_ref::<AppendError>(),
                Some(AppendError::UnknownTarget(_))
            );
            if unknown {
                return Error::NotFound(one_line(&error));
            }
            if matches!(
                cause.downcast_ref::<AppendError>(),
                Some(AppendError::Conflict(_))
            ) || matches!(
                cause.downcast_ref::<crate::recovery::bulk::BulkError>(),
                Some(crate::recovery::bulk::BulkError::RequestIdReused(_))
            ) {
                return Error::Conflict(one_line(&error));
            }
            if let Some(mistake) = exit::as_caller_mistake(cause) {
                return if mistake.is_caller_mistake() {
                    Error::BadRequest(one_line(&error))
                } else {
                    Error::Internal(error)
                };
            }
        }
        Error::Internal(error)
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        if crate::sqlstate::connection_lost(&error) {
            return database_unavailable(&error);
        }
        if crate::connect::is_recovery_conflict(&error) {
            return replica_conflict(&error);
        }
        Error::Internal(error.into())
    }
}

/// `POST /api/v1/recover` for `target`, as the API's refusal at the limit names it.
fn recover_request(target: &Option<Target>) -> String {
    let body = match target {
        Some(Target::Job { job_id }) => format!(r#" with {{"job_id": "{job_id}", "note": "why"}}"#),
        Some(Target::Variant {
            job_variants_id, ..
        }) => format!(r#" with {{"variant_id": "{job_variants_id}", "note": "why"}}"#),
        None => String::new(),
    };
    format!("POST /api/v1/recover{body}")
}

/// 503: the database gave no connection within `--db-timeout`, or the session was lost.
fn database_unavailable(error: &sqlx::Error) -> Error {
    tracing::warn!(%error, "the database does not answer");
    Error::Unavailable("the database does not answer; try again shortly".into())
}

/// What a client is told when the read replica cancelled its read twice.
const REPLICA_CONFLICT: &str =
    "the read replica cancelled this read to replay the primary's changes; try again shortly";

/// 503: the read replica cancelled the read to go on replaying the primary's changes.
fn replica_conflict(error: &dyn std::fmt::Display) -> Error {
    tracing::warn!(%error, "the read replica cancelled a read");
    Error::Unavailable(REPLICA_CONFLICT.into())
}

/// [`crate::connect::read_retrying`] for a page, whose parts answer [`Error`] already: a read
/// the replica cancelled is read once more, a second cancellation is the 503.
pub async fn page_retrying<T, F, Fut>(read: F) -> Result<T, Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    match read().await {
        Err(Error::Unavailable(message)) if message == REPLICA_CONFLICT => {
            crate::metrics::replica_conflict();
            read().await
        }
        done => done,
    }
}

/// How long a client is asked to wait after a 503 (`Retry-After`, seconds).
pub const RETRY_AFTER_SECONDS: &str = "5";

impl Error {
    /// The status and what the client may read, naming parameters and keys where the CLI's
    /// message named flags; a fault is logged here.
    pub fn status_and_message(self) -> (StatusCode, String) {
        let (status, message) = self.status_and_cli_message();
        (status, super::flags::parameter_terms(&message))
    }

    /// The status and the message as the library wrote it, for the CLI.
    fn status_and_cli_message(self) -> (StatusCode, String) {
        match self {
            Error::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            Error::Unauthorized(message) => (StatusCode::UNAUTHORIZED, message),
            Error::Forbidden(message) => (StatusCode::FORBIDDEN, message),
            Error::NotFound(message) => (StatusCode::NOT_FOUND, message),
            Error::Conflict(message) => (StatusCode::CONFLICT, message),
            Error::UnsupportedMediaType(message) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, message),
            Error::Unavailable(message) => (StatusCode::SERVICE_UNAVAILABLE, message),
            Error::Internal(error) => {
                tracing::error!(error = %one_line(&error), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_string(),
                )
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
