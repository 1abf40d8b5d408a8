//! `/v1/ui/...`: the dashboard's sign-in codes and sessions.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_client::types::{ErrorBody, LoginCode, UiRevoked, UiSession, UiSessionList, UiSessionSummary};

use super::AppState;
use super::auth::{Caller, session_error};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::ui::session::{self, CODE_TTL};

fn summary(session: session::Session) -> UiSessionSummary {
    UiSessionSummary {
        id: session.id,
        created_at_ms: session.created_at_ms,
        expires_at_ms: session.expires_at_ms,
    }
}

/// A one-time sign-in link for the dashboard, valid for 60 s. Only the
/// daemon's owner (the Unix socket, or the bearer token) may ask: a
/// dashboard session cannot make more sessions.
#[utoipa::path(post, path = "/v1/ui/login-codes", tag = "ui",
    responses((status = 201, body = LoginCode),
        (status = 403, description = "Asked with a dashboard session (`session_cannot_sign_in`)", body = ErrorBody),
        (status = 409, description = "The dashboard is off (`ui_off`)", body = ErrorBody)))]
pub(crate) async fn login_code(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<(StatusCode, axum::Json<LoginCode>), ApiError> {
    if let Caller::Session { .. } = caller {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "session_cannot_sign_in",
            "a dashboard session cannot make sign-in links",
            "run `hearth ui` on the daemon's host",
        ));
    }
    let addr = state.inner.info.ui.as_ref().map_err(|problem| {
        ApiError::conflict(
            format!("the dashboard is off: {problem}"),
            "start the daemon without `--ui off`, or with a free loopback address: `hearth serve --ui 127.0.0.1:PORT`",
        )
    })?;
    let code = state.sessions().issue_code();
    let url = format!("http://{addr}/ui/login?code={code}");
    Ok((StatusCode::CREATED, axum::Json(LoginCode { code, url, expires_in_secs: CODE_TTL.as_secs() })))
}

fn no_session() -> ApiError {
    ApiError::not_found(
        "this request was not made with a dashboard session",
        "only the dashboard's own requests have one; list sessions with GET /v1/ui/sessions",
    )
}

/// The session this request was made with, and its CSRF token, which
/// every request of the session that changes something must carry as
/// `X-CSRF-Token`.
#[utoipa::path(get, path = "/v1/ui/session", tag = "ui",
    responses((status = 200, body = UiSession),
        (status = 404, description = "Not asked with a dashboard session", body = ErrorBody)))]
pub(crate) async fn session(Extension(caller): Extension<Caller>) -> Result<axum::Json<UiSession>, ApiError> {
    match caller {
        Caller::Session { session, csrf_token } => Ok(axum::Json(UiSession {
            id: session.id,
            csrf_token,
            created_at_ms: session.created_at_ms,
            expires_at_ms: session.expires_at_ms,
        })),
        Caller::Owner => Err(no_session()),
    }
}

/// Signs this dashboard session out: revokes it and clears its cookie.
#[utoipa::path(delete, path = "/v1/ui/session", tag = "ui",
    responses((status = 204),
        (status = 404, description = "Not asked with a dashboard session", body = ErrorBody)))]
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let Caller::Session { session, .. } = caller else { return Err(no_session()) };
    state.sessions().revoke(&session.id).await.map_err(session_error)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&session::clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// The dashboard's sessions that have not expired, oldest first.
#[utoipa::path(get, path = "/v1/ui/sessions", tag = "ui",
    responses((status = 200, body = UiSessionList), (status = 500, body = ErrorBody)))]
pub(crate) async fn sessions(State(state): State<AppState>) -> Result<axum::Json<UiSessionList>, ApiError> {
    let sessions = state.sessions().list().await.map_err(session_error)?;
    Ok(axum::Json(UiSessionList { sessions: sessions.into_iter().map(summary).collect() }))
}

/// Revokes every dashboard session: each browser must sign in again.
#[utoipa::path(delete, path = "/v1/ui/sessions", tag = "ui",
    responses((status = 200, body = UiRevoked), (status = 500, body = ErrorBody)))]
pub(crate) async fn revoke_all(State(state): State<AppState>) -> Result<axum::Json<UiRevoked>, ApiError> {
    let revoked = state.sessions().revoke_all().await.map_err(session_error)?;
    Ok(axum::Json(UiRevoked { revoked }))
}

/// Revokes one dashboard session: its next request is refused.
#[utoipa::path(delete, path = "/v1/ui/sessions/{id}", tag = "ui",
    params(("id" = String, Path, description = "The session's id, as `GET /v1/ui/sessions` lists it")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.sessions().revoke(&id).await.map_err(session_error)?;
    Ok(StatusCode::NO_CONTENT)
}
