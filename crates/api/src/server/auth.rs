//! Authentication: the bearer token on the TCP listener; a dashboard
//! session or the bearer token on the dashboard's listener. Each request
//! that passes carries its [`Caller`] to the handlers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::ui::session::{self, Sessions};

/// Who made a request, as the handlers see it.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// The Unix socket's user, or a holder of the bearer token: the
    /// daemon's owner.
    Owner,
    /// A browser with a dashboard session.
    Session { session: session::Session, csrf_token: String },
}

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

/// Checks the `Authorization: Bearer TOKEN` header.
fn bearer(token: &Token, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized("this endpoint needs a bearer token and none was sent"));
    };
    let presented = value.to_str().ok().and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    match presented {
        Some(candidate) if token.matches(candidate) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("the bearer token is not valid for this daemon")),
        None => Err(ApiError::unauthorized("the Authorization header is not of the form `Bearer TOKEN`")),
    }
}

/// The API on TCP: the bearer token, and nothing else (not the
/// dashboard's cookie, which a browser would send to any port of the host).
pub(crate) async fn require_token(State(token): State<Token>, mut request: Request, next: Next) -> Response {
    match bearer(&token, request.headers()) {
        Ok(()) => {
            request.extensions_mut().insert(Caller::Owner);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// What the dashboard's listener checks requests against.
#[derive(Debug, Clone)]
pub(crate) struct UiAuth {
    token: Token,
    sessions: Sessions,
    /// The listener's own origins (`http://127.0.0.1:PORT`, `http://localhost:PORT`).
    origins: Arc<[String]>,
}

impl UiAuth {
    pub(crate) fn new(token: Token, sessions: Sessions, origins: Arc<[String]>) -> Self {
        Self { token, sessions, origins }
    }
}

/// The API on the dashboard's listener: the bearer token as on TCP, or a
/// dashboard session's cookie. A session's request is refused if its
/// `Origin` is another site's, or missing on an upgrade (a WebSocket),
/// and, unless it only reads (GET, HEAD), if it lacks the session's
/// `X-CSRF-Token`.
pub(crate) async fn require_session_or_token(
    State(auth): State<UiAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = if request.headers().contains_key(header::AUTHORIZATION) {
        bearer(&auth.token, request.headers()).map(|()| Caller::Owner)
    } else {
        session_caller(&auth, request.method(), request.headers()).await
    };
    match caller {
        Ok(Caller::Owner) => {
            request.extensions_mut().insert(Caller::Owner);
            next.run(request).await
        }
        Ok(Caller::Session { session, csrf_token }) => {
            let ended = auth.sessions.ended(&session);
            request.extensions_mut().insert(Caller::Session { session, csrf_token });
            until(next.run(request).await, ended)
        }
        Err(error) => error.into_response(),
    }
}

/// A streamed response (server-sent events) of a session ends when the
/// session does: revoking a session cuts off its open streams too.
fn until(response: Response, ended: impl Future<Output = ()> + Send + 'static) -> Response {
    use futures::StreamExt as _;
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streamed {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = axum::body::Body::from_stream(body.into_data_stream().take_until(Box::pin(ended)));
    Response::from_parts(parts, body)
}

async fn session_caller(auth: &UiAuth, method: &Method, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let Some(secret) = session::session_cookie(cookies) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this request has no dashboard session and no bearer token",
            "run `hearth ui` and open the link it prints; other clients send `Authorization: Bearer TOKEN` (`hearth token` prints it)",
        ));
    };
    let session = auth.sessions.authenticate(secret).await.map_err(session_error)?;
    // A header that is not text is no origin of ours either.
    let origin = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    // An upgrade (the exec WebSocket) is a session for as long as it lasts,
    // and a browser's WebSocket can carry no CSRF header: only the Origin,
    // which every browser sends on a handshake, says it is the dashboard's.
    if origin.is_none() && headers.contains_key(header::UPGRADE) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_required",
            "a WebSocket upgrade with a dashboard session needs the dashboard's Origin header",
            format!(
                "browsers send it from {}/ui/; other clients use a bearer token (`hearth token` prints it)",
                auth.origins[0]
            ),
        ));
    }
    if !session::origin_allowed(origin, &auth.origins) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            format!(
                "the request came from {}, not from the dashboard's own pages",
                origin.unwrap_or_default()
            ),
            format!(
                "a dashboard session is good only on {}/ui/; other clients use a bearer token",
                auth.origins[0]
            ),
        ));
    }
    if !matches!(*method, Method::GET | Method::HEAD)
        && !session::csrf_matches(secret, headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            format!("a {method} with a dashboard session needs the session's X-CSRF-Token header"),
            "the dashboard sends it (GET /v1/ui/session gives it); reload the dashboard, or use a bearer token from another client",
        ));
    }
    Ok(Caller::Session { session, csrf_token: session::csrf_token(secret) })
}

/// A session refused, as the API answers it.
pub(crate) fn session_error(error: session::Error) -> ApiError {
    use session::Error as E;
    let message = error.to_string();
    match error {
        E::NoSession | E::Unknown | E::Expired | E::CodeRefused => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
            "run `hearth ui` on the daemon's host for a new sign-in link",
        ),
        E::NotFound(_) => ApiError::not_found(message, "list sessions with `hearth ui sessions`"),
        E::Store(store) => ApiError::from(store),
        E::Corrupt { .. } => {
            let chain = crate::error::display_chain(&error);
            tracing::error!(error = chain, "A dashboard session record is corrupt.");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                chain,
                "`hearth ui revoke --all` removes every session record, readable or not; then sign in again with `hearth ui`",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Token, bearer};

    #[test]
    fn token_matches_only_itself() {
        let token = Token::new("abc123");
        assert!(token.matches("abc123"));
        assert!(!token.matches("abc124"));
        assert!(!token.matches("abc12"));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains("abc"));
    }

    #[test]
    fn bearer_needs_the_scheme_and_the_token() {
        let token = Token::new("abc123");
        let headers = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(bearer(&token, &headers("Bearer abc123")).is_ok());
        assert!(bearer(&token, &headers("bearer  abc123 ")).is_ok());
        assert!(bearer(&token, &headers("Bearer abc124")).is_err());
        assert!(bearer(&token, &headers("Basic abc123")).is_err());
        assert!(bearer(&token, &axum::http::HeaderMap::new()).is_err());
    }
}

#[cfg(test)]
mod session_tests {
    use std::sync::Arc;

    use axum::http::{HeaderMap, Method, StatusCode, header};

    use super::{UiAuth, session_caller};
    use crate::server::Token;
    use crate::ui::session::{self, Sessions};

    struct Fixture {
        _dir: tempfile::TempDir,
        auth: UiAuth,
        secret: String,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store =
            hearth_store::redb::RedbStore::open(&dir.path().join("store.redb"), Default::default()).unwrap();
        let sessions = Sessions::new(Arc::new(store));
        let secret = sessions.redeem(&sessions.issue_code()).await.unwrap().secret;
        let origins = session::origins("127.0.0.1:7777".parse().unwrap()).into();
        Fixture { _dir: dir, auth: UiAuth::new(Token::new("t".repeat(64)), sessions, origins), secret }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name.clone(), value.parse().unwrap());
        }
        headers
    }

    fn cookie(secret: &str) -> (header::HeaderName, String) {
        (header::COOKIE, format!("{}={secret}", session::COOKIE))
    }

    async fn check(
        f: &Fixture,
        method: Method,
        pairs: &[(header::HeaderName, &str)],
    ) -> Result<(), (StatusCode, String)> {
        session_caller(&f.auth, &method, &headers(pairs))
            .await
            .map(drop)
            .map_err(|e| (e.status, e.detail.code))
    }

    #[tokio::test]
    async fn a_session_reads_without_a_csrf_token_but_writes_only_with_it() {
        let f = fixture().await;
        let (name, value) = cookie(&f.secret);
        assert_eq!(check(&f, Method::GET, &[(name.clone(), &value)]).await, Ok(()));
        assert_eq!(check(&f, Method::HEAD, &[(name.clone(), &value)]).await, Ok(()));
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(
                check(&f, method.clone(), &[(name.clone(), &value)]).await,
                Err((StatusCode::FORBIDDEN, "csrf".to_owned())),
                "{method}"
            );
        }
        let csrf = session::csrf_token(&f.secret);
        let csrf_name = header::HeaderName::from_static("x-csrf-token");
        assert_eq!(
            check(&f, Method::POST, &[(name.clone(), &value), (csrf_name.clone(), &csrf)]).await,
            Ok(())
        );
        assert_eq!(
            check(&f, Method::POST, &[(name.clone(), &value), (csrf_name, &"0".repeat(64))]).await,
            Err((StatusCode::FORBIDDEN, "csrf".to_owned()))
        );
    }

    #[tokio::test]
    async fn a_session_from_another_origin_is_refused_even_to_read() {
        let f = fixture().await;
        let (name, value) = cookie(&f.secret);
        let csrf = session::csrf_token(&f.secret);
        let csrf_name = header::HeaderName::from_static("x-csrf-token");
        for origin in ["http://evil.example", "null", "http://127.0.0.1:7778"] {
            for method in [Method::GET, Method::POST] {
                let pairs =
                    [(name.clone(), value.as_str()), (header::ORIGIN, origin), (csrf_name.clone(), &csrf)];
                assert_eq!(
                    check(&f, method, &pairs).await,
                    Err((StatusCode::FORBIDDEN, "cross_origin".to_owned())),
                    "{origin}"
                );
            }
        }
        let own =
            [(name.clone(), value.as_str()), (header::ORIGIN, "http://127.0.0.1:7777"), (csrf_name, &csrf)];
        assert_eq!(check(&f, Method::POST, &own).await, Ok(()));
    }

    #[tokio::test]
    async fn a_session_upgrades_only_from_the_dashboards_own_origin() {
        let f = fixture().await;
        let (name, value) = cookie(&f.secret);
        let forbidden = |code: &str| Err((StatusCode::FORBIDDEN, code.to_owned()));
        for (origin, expected) in [
            (None, forbidden("origin_required")),
            (Some("http://evil.example"), forbidden("cross_origin")),
            (Some("http://127.0.0.1:7778"), forbidden("cross_origin")),
            (Some("http://127.0.0.1:7777"), Ok(())),
            (Some("http://localhost:7777"), Ok(())),
        ] {
            let mut pairs = vec![
                (name.clone(), value.as_str()),
                (header::UPGRADE, "websocket"),
                (header::CONNECTION, "upgrade"),
            ];
            pairs.extend(origin.map(|o| (header::ORIGIN, o)));
            assert_eq!(check(&f, Method::GET, &pairs).await, expected, "{origin:?}");
        }
        // A plain read without an Origin (a same-origin GET, from some
        // browsers) is still a read.
        assert_eq!(check(&f, Method::GET, &[(name, &value)]).await, Ok(()));
    }

    #[tokio::test]
    async fn no_cookie_or_a_revoked_session_is_unauthorized() {
        let f = fixture().await;
        let unauthorized = Err((StatusCode::UNAUTHORIZED, "unauthorized".to_owned()));
        assert_eq!(check(&f, Method::GET, &[]).await, unauthorized);
        assert_eq!(check(&f, Method::GET, &[(header::COOKIE, "other=1")]).await, unauthorized);
        let (name, value) = cookie(&"f".repeat(64));
        assert_eq!(check(&f, Method::GET, &[(name, &value)]).await, unauthorized);
        assert_eq!(f.auth.sessions.revoke_all().await.unwrap(), 1);
        let (name, value) = cookie(&f.secret);
        assert_eq!(check(&f, Method::GET, &[(name, &value)]).await, unauthorized);
    }
}
