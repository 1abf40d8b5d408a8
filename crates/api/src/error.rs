//! The one error shape every endpoint returns.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, in a stable machine-readable `code`, a sentence for
/// people, and a hint that says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable identifier, e.g. `invalid_field` or `not_found`.
    pub code: String,
    /// What was wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// An error on its way to becoming a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail { code: code.to_owned(), message: message.into(), hint: hint.into() },
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message, hint)
    }

    pub fn not_found(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message, hint)
    }

    pub fn conflict(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message, hint)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
            "send `Authorization: Bearer TOKEN`; `hearth token` on the daemon's host prints TOKEN, and the CLI takes it as --token or HEARTH_TOKEN",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            message,
            "this is a bug in hearth or a failing disk; the daemon log has details",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            message,
            "the daemon is shutting down; start it again with `hearth serve`",
        )
    }

    pub fn code(&self) -> &str {
        &self.detail.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = (self.status, axum::Json(ErrorBody { error: self.detail })).into_response();
        if unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Store errors mapped onto HTTP, with the hint a person needs.
impl From<hearth_store::Error> for ApiError {
    fn from(error: hearth_store::Error) -> Self {
        use hearth_store::Error as E;
        let message = error.to_string();
        match error {
            E::Compacted { oldest, .. } => Self::new(
                StatusCode::GONE,
                "compacted",
                message,
                format!("start from revision {oldest} or later, after reading the current state"),
            ),
            E::FutureRevision { current, .. } => {
                Self::bad_request("future_revision", message, format!("use a revision up to {}", current + 1))
            }
            E::LeaseNotFound(_) => Self::not_found(message, "grant a new lease with POST /v1/leases"),
            E::InvalidTtl(_) => {
                Self::bad_request("invalid_field", message, "use a TTL between 1 s and 30 days")
            }
            E::InvalidKey { .. } => Self::bad_request(
                "invalid_field",
                message,
                "keys are non-empty UTF-8 strings of at most 4096 bytes",
            ),
            E::ValueTooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                message,
                "store large data in a file and keep its path in the store",
            ),
            E::Closed => Self::unavailable(message),
            E::Open { .. } | E::Locked { .. } | E::Backend(_) | E::Corrupt(_) => {
                tracing::error!(error = %display_chain(&error), "Store operation failed.");
                Self::internal(display_chain(&error))
            }
        }
    }
}

/// `error: cause: cause`, for logs and messages that must carry the chain.
pub fn display_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
