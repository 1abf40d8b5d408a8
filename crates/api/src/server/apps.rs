//! `/v1/apps`: WebAssembly HTTP components, deployed and swapped live.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hearth_client::types::{
    AppDetail, AppList, AppLogLine, AppLogs, AppSource, AppSummary, AppTier, AppVersion, CodeTier, DeployApp,
    DeployResult, DeploySource, ErrorBody, FunctionCache, LogStream, LogsQuery, Rollback, SetSecret,
    SourceQuery,
};

use super::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, component_bytes, deploy_body};

/// The largest deploy request: a component of up to 64 MiB, base64-encoded.
const MAX_DEPLOY_BODY: usize = 90 << 20;

fn version(v: &hearth_apps::Version) -> AppVersion {
    AppVersion {
        number: v.number,
        sha256: v.sha256.clone(),
        size: v.size,
        created_at: v.created_at,
        // Shown without its webhooks' secrets.
        manifest: v.manifest_text.as_deref().map(hearth_triggers::private::redact_secrets),
        source: v.source.as_ref().map(|s| s.lang.as_str().to_owned()),
    }
}

fn summary(info: &hearth_apps::AppInfo) -> AppSummary {
    AppSummary {
        name: info.app.name.clone(),
        active: info.app.active,
        version_count: info.app.versions.len(),
        routes: info.app.routes.iter().map(|r| format!("{}{}", r.host, r.path)).collect(),
        urls: info.urls.clone(),
        serving: info.serving,
        error: info.error.clone(),
        updated_at: info.app.updated_at,
        tier: info.tier.as_ref().map(tier),
    }
}

fn code_tier(state: hearth_apps::TierState) -> CodeTier {
    match state {
        hearth_apps::TierState::Baseline => CodeTier::Baseline,
        hearth_apps::TierState::Optimizing => CodeTier::Optimizing,
        hearth_apps::TierState::Optimized => CodeTier::Optimized,
    }
}

fn tier(t: &hearth_apps::Tiering) -> AppTier {
    AppTier {
        tier: code_tier(t.state),
        compiler: t.compiler.clone(),
        note: t.note.clone(),
        function_cache: t.functions.map(|f| FunctionCache { hits: f.hits, misses: f.misses }),
    }
}

/// Refuses a name a service has: apps and services share `NAME.localhost`.
async fn name_free(state: &AppState, name: &str) -> Result<(), ApiError> {
    if state.services().get(name).await.is_ok() {
        return Err(ApiError::conflict(
            format!("the name {name:?} is taken by a service"),
            "pick another name for the app; `hearth service ls` lists the names in use",
        ));
    }
    Ok(())
}

/// A deploy's `HOST[/PATH]` routes, parsed, and free of services' routes.
async fn routes(state: &AppState, name: &str, given: &[String]) -> Result<Vec<hearth_apps::Route>, ApiError> {
    let routes = given
        .iter()
        .map(|r| hearth_apps::Route::parse(r).map_err(hearth_apps::Error::from))
        .collect::<Result<Vec<_>, _>>()?;
    super::services::routes_free(state, name, &routes).await?;
    Ok(routes)
}

fn deploy_result(deployed: hearth_apps::Deployed) -> DeployResult {
    DeployResult {
        app: deployed.app,
        version: version(&deployed.version),
        compiled: deployed.compiled,
        duration_ms: deployed.duration_ms,
        build_ms: deployed.build_ms,
        urls: deployed.urls,
        tier: Some(code_tier(deployed.tier)),
    }
}

/// Lists apps.
#[utoipa::path(get, path = "/v1/apps", tag = "apps", responses((status = 200, body = AppList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<AppList>, ApiError> {
    let apps = state.apps().list().await?;
    Ok(axum::Json(AppList { apps: apps.iter().map(summary).collect() }))
}

/// Shows one app and its versions.
#[utoipa::path(get, path = "/v1/apps/{name}", tag = "apps",
    params(("name" = String, Path)), responses((status = 200, body = AppDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<AppDetail>, ApiError> {
    let info = state.apps().get(&name).await?;
    Ok(axum::Json(AppDetail {
        summary: summary(&info),
        versions: info.app.versions.iter().map(version).collect(),
    }))
}

/// Deploys a component as the app's next version and swaps it in: requests
/// in flight finish on the old version, new ones go to the new.
#[utoipa::path(put, path = "/v1/apps/{name}", tag = "apps",
    params(("name" = String, Path)), request_body = DeployApp,
    responses((status = 200, body = DeployResult), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn deploy(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<DeployResult>, ApiError> {
    name_free(&state, &name).await?;
    let (request, _held): (DeployApp, _) =
        deploy_body(&headers, body, MAX_DEPLOY_BODY, "components are limited to 64 MiB", state.deploys())
            .await?;
    let component = component_bytes(&request.component_base64)?;
    let routes = routes(&state, &name, &request.routes).await?;
    let deployed = state.apps().deploy(&name, component, request.manifest, routes).await?;
    Ok(axum::Json(deploy_result(deployed)))
}

/// Builds a JavaScript or Python handler into the app's next version and
/// swaps it in. A source that does not build is refused with the build
/// tool's words (file, line, column), and the serving version stays.
#[utoipa::path(put, path = "/v1/apps/{name}/source", tag = "apps",
    params(("name" = String, Path)), request_body = DeploySource,
    responses((status = 200, body = DeployResult), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn deploy_source(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<DeploySource>,
) -> Result<axum::Json<DeployResult>, ApiError> {
    name_free(&state, &name).await?;
    let lang = request.lang.parse::<hearth_apps::source::Lang>().map_err(hearth_apps::Error::Invalid)?;
    let routes = routes(&state, &name, &request.routes).await?;
    let source = hearth_apps::source::Source { lang, text: request.source };
    let deployed = state.apps().deploy_source(&name, source, request.manifest, routes).await?;
    Ok(axum::Json(deploy_result(deployed)))
}

/// The source a version was built from (the serving version's by default).
#[utoipa::path(get, path = "/v1/apps/{name}/source", tag = "apps",
    params(("name" = String, Path), SourceQuery),
    responses((status = 200, body = AppSource), (status = 404, body = ErrorBody)))]
pub(crate) async fn source(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<SourceQuery>,
) -> Result<axum::Json<AppSource>, ApiError> {
    let info = state.apps().get(&name).await?;
    let number = query.version.unwrap_or(info.app.active);
    let version = info.app.version(number).ok_or_else(|| hearth_apps::Error::VersionNotFound {
        name: name.clone(),
        version: number,
        available: info.app.numbers(),
    })?;
    let Some(source) = &version.source else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_source",
            format!("version {number} of app {name:?} was deployed as a component, not from source"),
            "`hearth fn show` shows handlers deployed with `hearth fn deploy`; `hearth app inspect` shows this one",
        ));
    };
    Ok(axum::Json(AppSource {
        app: name,
        version: number,
        lang: source.lang.as_str().to_owned(),
        source: source.text.clone(),
    }))
}

/// Makes an earlier version serve again (the previous one by default).
#[utoipa::path(post, path = "/v1/apps/{name}/rollback", tag = "apps",
    params(("name" = String, Path)), request_body = Rollback,
    responses((status = 200, body = AppVersion), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<axum::Json<AppVersion>, ApiError> {
    let v = state.apps().rollback(&name, body.to).await?;
    Ok(axum::Json(version(&v)))
}

/// Removes an app, its versions and its routes (its key-value data too).
#[utoipa::path(delete, path = "/v1/apps/{name}", tag = "apps",
    params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.apps().remove(&name).await?;
    state.apps().delete_data(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets a secret an app's manifest declares.
#[utoipa::path(put, path = "/v1/apps/{name}/secrets/{secret}", tag = "apps",
    params(("name" = String, Path), ("secret" = String, Path)), request_body = SetSecret,
    responses((status = 204), (status = 400, body = ErrorBody)))]
pub(crate) async fn set_secret(
    State(state): State<AppState>,
    ApiPath((name, secret)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<SetSecret>,
) -> Result<StatusCode, ApiError> {
    state.apps().set_secret(&name, &secret, body.value).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The app's log: its stdout and stderr, its requests, and what hearth did
/// with it. With `follow=true`, a server-sent event stream of `log` events.
#[utoipa::path(get, path = "/v1/apps/{name}/logs", tag = "apps",
    params(("name" = String, Path), LogsQuery),
    responses((status = 200, body = AppLogs), (status = 404, body = ErrorBody)))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let (backlog, follow) = state.apps().logs(&name).await?;
    let lines: Vec<AppLogLine> = backlog.iter().map(log_line).collect();
    let lines = match query.tail {
        Some(n) => lines[lines.len().saturating_sub(n)..].to_vec(),
        None => lines,
    };
    if !query.follow.unwrap_or(false) {
        return Ok(axum::Json(AppLogs { lines }).into_response());
    }
    let backlog = futures::stream::iter(lines);
    let live = tokio_stream::wrappers::BroadcastStream::new(follow)
        .filter_map(|item| async move { item.ok().map(|l| log_line(&l)) });
    let events = backlog
        .chain(live)
        .map(|line| {
            Ok::<_, Infallible>(SseEvent::default().event("log").json_data(&line).unwrap_or_default())
        })
        .take_until(state.shutting_down());
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

fn log_line(l: &hearth_apps::LogLine) -> AppLogLine {
    AppLogLine {
        time: l.time,
        version: l.version,
        stream: match l.stream {
            hearth_apps::LogStream::Stdout => LogStream::Stdout,
            hearth_apps::LogStream::Stderr => LogStream::Stderr,
            hearth_apps::LogStream::Request => LogStream::Request,
            hearth_apps::LogStream::Hearth => LogStream::Hearth,
        },
        text: l.text.clone(),
    }
}
