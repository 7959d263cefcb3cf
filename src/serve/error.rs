//! The one error shape of the operator API: `{"error": {"code", "message"}}` with an HTTP status.
//!
//! Every rejection the API can produce goes through [`ApiError`], including the ones axum would
//! otherwise answer in plain text (unknown route, wrong method, over-long body).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::mailbox::MailboxError;

/// An error answer: status, stable code, and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code (`UNAUTHORIZED`, `RETRY_MISMATCH`, ...).
    pub code: &'static str,
    /// One line for people.
    pub message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `INVALID_REQUEST`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }

    /// 401 `UNAUTHORIZED` (the message never repeats the token).
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// 400 `PAYLOAD_TOO_LARGE` (the ASMTP answer; HTTP's 413 is not used).
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "PAYLOAD_TOO_LARGE",
            format!(
                "the request body is over the {limit}-byte limit: send a smaller envelope (files by url or file_id)"
            ),
        )
    }

    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 500 `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<MailboxError> for ApiError {
    fn from(e: MailboxError) -> ApiError {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            format!("local store: {}", crate::transport::smtp::error_chain(&e)),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, "operator API error: {}", self.message);
        }
        (self.status, Json(self.body())).into_response()
    }
}

/// `Result` of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
