//! The dashboard's sessions (`/v1/ui/...`): sign-in codes, sessions, revoking.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/ui/login-codes`: a sign-in link for the dashboard, good once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginCode {
    /// The code itself (already in `url`).
    pub code: String,
    /// The link to open in a browser: `http://127.0.0.1:PORT/ui/login?code=CODE`.
    pub url: String,
    /// Seconds the code stays valid if unused.
    pub expires_in_secs: u64,
}

/// One dashboard session, as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UiSessionSummary {
    /// The session's id, for `hearth ui revoke ID` (not the cookie's secret).
    pub id: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Unix milliseconds; the session is refused after this.
    pub expires_at_ms: u64,
}

/// `GET /v1/ui/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UiSessionList {
    pub sessions: Vec<UiSessionSummary>,
}

/// `GET /v1/ui/session`: the session the request was made with, and the
/// token the dashboard sends as `X-CSRF-Token` on every request that
/// changes something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UiSession {
    pub id: String,
    pub csrf_token: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Unix milliseconds.
    pub expires_at_ms: u64,
}

/// `DELETE /v1/ui/sessions`: how many sessions were revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UiRevoked {
    pub revoked: usize,
}
