//! The body every error response has.

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
