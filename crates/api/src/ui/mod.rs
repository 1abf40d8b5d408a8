//! The dashboard's listener: its pages under `/ui/`, its sign-in at
//! `/ui/login`, and the same `/v1` API as everywhere else, open to a
//! dashboard session (cookie, CSRF token, `Origin`) or a bearer token.
//!
//! A request flows: connection → [`check_host`] → a page route, or else
//! the API router behind `auth::require_session_or_token`.
//!
//! - [`session`]: codes, sessions, and the cookie, CSRF and origin checks.
//! - `assets`: the built dashboard, embedded by `build.rs`.
//! - `pages`: what the daemon says without the dashboard (signed out, a
//!   refused link, not built).

mod assets;
mod pages;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::server::{AppState, Token, auth};

/// The Content-Security-Policy of the dashboard: its own scripts, styles
/// and API, nothing inline, nothing from elsewhere, never in a frame.
const APP_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The dashboard's router, for its own loopback listener at `addr`.
pub fn router(state: AppState, token: Token, addr: SocketAddr) -> Router {
    let origins: Arc<[String]> = session::origins(addr).into();
    let api = crate::server::api(state.clone()).layer(middleware::from_fn_with_state(
        auth::UiAuth::new(token, state.sessions().clone(), origins.clone()),
        auth::require_session_or_token,
    ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(login))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(file))
        .with_state(state)
        .fallback_service(api)
        .layer(middleware::from_fn_with_state(origins, check_host))
}

/// Headers every response of the dashboard's pages carries.
pub(crate) fn common_headers(headers: &mut HeaderMap) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The sign-in link's code must not leave in a Referer.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// Refuses a request for any host name but the listener's own, so that a
/// page on a name that resolves to loopback (DNS rebinding) reaches
/// nothing here.
async fn check_host(State(origins): State<Arc<[String]>>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    if !session::host_allowed(host, &origins) {
        return pages::wrong_host(&origins[0]);
    }
    next.run(request).await
}

#[derive(Debug, serde::Deserialize)]
struct LoginQuery {
    code: Option<String>,
}

/// `GET /ui/login?code=CODE`: a code from `hearth ui` for a session cookie.
async fn login(
    State(state): State<AppState>,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(code) = query.ok().and_then(|Query(q)| q.code) else { return pages::code_refused() };
    match state.sessions().redeem(&code).await {
        Ok(issued) => {
            tracing::info!(session = issued.session.id, "A dashboard session was signed in.");
            pages::signed_in(&session::set_cookie(&issued.secret))
        }
        Err(session::Error::CodeRefused) => pages::code_refused(),
        Err(error) => {
            let message = crate::error::display_chain(&error);
            tracing::error!(error = message, "Cannot make a dashboard session.");
            pages::failed(&message)
        }
    }
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, &headers, "").await
}

async fn file(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> Response {
    // A path that is not UTF-8 names no file and no view.
    let path = path.map_or_else(|_| "\u{fffd}".to_owned(), |Path(path)| path);
    serve(&state, &headers, &path).await
}

/// A file of the dashboard, or its page for any view's address, only to
/// a browser with a session.
async fn serve(state: &AppState, headers: &HeaderMap, path: &str) -> Response {
    if !assets::built() {
        return pages::not_built();
    }
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let Some(secret) = session::session_cookie(cookies) else { return pages::signed_out() };
    match state.sessions().authenticate(secret).await {
        Ok(_) => {}
        Err(session::Error::Store(error)) => {
            return pages::failed(&crate::error::display_chain(&error));
        }
        Err(_) => {
            // A revoked or expired session: say so, and drop the cookie.
            let mut response = pages::signed_out();
            if let Ok(value) = HeaderValue::from_str(&session::clear_cookie()) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            return response;
        }
    }
    // A file's address gets the file; any other, a view's (`/ui/machines`,
    // `/ui/runs/nightly.2`, whose names may hold dots), gets the page.
    let found = assets::find(path)
        .or_else(|| if path.starts_with("assets/") { None } else { assets::find("index.html") });
    let Some(asset) = found else {
        return (StatusCode::NOT_FOUND, "no such file in the dashboard\n").into_response();
    };
    let gzip = asset
        .gzip
        .filter(|_| assets::accepts_gzip(headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok())));
    let mut response = gzip.unwrap_or(asset.body).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(assets::content_type(asset.path)));
    out.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip.is_some() {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let cache =
        if assets::immutable(asset.path) { "private, max-age=31536000, immutable" } else { "no-cache" };
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(APP_CSP));
    common_headers(out);
    response
}
