//! Bearer-token authentication for the TCP listener.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The daemon's API token.
#[derive(Clone)]
pub struct Token(std::sync::Arc<str>);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().into())
    }

    /// Compares in time independent of where the first difference is, so the
    /// token cannot be guessed byte by byte from response times.
    fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

pub(crate) async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION);
    let Some(value) = header else {
        return ApiError::unauthorized("this endpoint needs a bearer token and none was sent")
            .into_response();
    };
    let presented = value.to_str().ok().and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    match presented {
        Some(candidate) if token.matches(candidate) => next.run(request).await,
        Some(_) => ApiError::unauthorized("the bearer token is not valid for this daemon").into_response(),
        None => ApiError::unauthorized("the Authorization header is not of the form `Bearer TOKEN`")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn token_matches_only_itself() {
        let token = Token::new("abc123");
        assert!(token.matches("abc123"));
        assert!(!token.matches("abc124"));
        assert!(!token.matches("abc12"));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains("abc"));
    }
}
