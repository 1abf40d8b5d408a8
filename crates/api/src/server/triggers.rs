//! `/v1/apps/{name}/triggers` and `/v1/workflows/{name}/triggers`: cron
//! schedules, store events and webhooks added by API, beside those a
//! `hearth.toml` declares; `/v1/machines/{name}/triggers`: cron schedules
//! and store events that wake a sleeping machine.

use axum::extract::State;
use axum::http::StatusCode;
use hearth_client::types::{ErrorBody, TriggerBody, TriggerInfo, TriggerList};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};

/// The subsystem's trigger from the wire's: the same fields, checked
/// against what the subsystem's kind takes.
fn spec<T: DeserializeOwned>(body: &TriggerBody, target: &str) -> Result<T, ApiError> {
    let value = serde_json::to_value(body).map_err(|e| ApiError::internal(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request(
            "invalid_trigger",
            format!("this {} trigger of {target} is not valid: {e}", body.kind),
            format!("see `hearth {target} trigger add --help` for the fields each kind takes"),
        )
    })
}

/// The wire's trigger from the subsystem's, without the secret.
fn info<S: Serialize>(id: String, source: &str, created_at: u64, spec: &S) -> Result<TriggerInfo, ApiError> {
    let source = super::wire_word(source, "a trigger's `source`")?;
    let value = serde_json::to_value(spec).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut body: TriggerBody =
        serde_json::from_value(value).map_err(|e| ApiError::internal(e.to_string()))?;
    let signed = body.secret.take().is_some();
    Ok(TriggerInfo { id, source, spec: body, signed, created_at })
}

/// A subsystem's triggers as the wire lists them.
fn listed<S: Serialize>(triggers: &[hearth_triggers::Trigger<S>]) -> Result<TriggerList, ApiError> {
    let triggers = triggers
        .iter()
        .map(|t| info(t.id.clone(), &t.source, t.created_at, &t.spec))
        .collect::<Result<_, _>>()?;
    Ok(TriggerList { triggers })
}

/// Lists an app's triggers: its active version's, then those added.
#[utoipa::path(get, path = "/v1/apps/{name}/triggers", tag = "apps",
    params(("name" = String, Path)), responses((status = 200, body = TriggerList), (status = 404, body = ErrorBody)))]
pub(crate) async fn app_list(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<TriggerList>, ApiError> {
    Ok(axum::Json(listed(&state.apps().triggers(&name).await?)?))
}

/// Adds a trigger to an app: a cron schedule or store event that calls one
/// of its routes, or a webhook (a signature check in front of a route).
#[utoipa::path(post, path = "/v1/apps/{name}/triggers", tag = "apps",
    params(("name" = String, Path)), request_body = TriggerBody,
    responses((status = 201, body = TriggerInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn app_add(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<TriggerBody>,
) -> Result<(StatusCode, axum::Json<TriggerInfo>), ApiError> {
    let spec: hearth_apps::TriggerSpec = spec(&body, "app")?;
    let t = state.apps().add_trigger(&name, spec).await?;
    Ok((StatusCode::CREATED, axum::Json(info(t.id, &t.source, t.created_at, &t.spec)?)))
}

/// Removes a trigger that was added through the API.
#[utoipa::path(delete, path = "/v1/apps/{name}/triggers/{id}", tag = "apps",
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn app_remove(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.apps().remove_trigger(&name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a workflow's triggers: its manifest's, then those added.
#[utoipa::path(get, path = "/v1/workflows/{name}/triggers", tag = "workflows",
    params(("name" = String, Path)), responses((status = 200, body = TriggerList), (status = 404, body = ErrorBody)))]
pub(crate) async fn workflow_list(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<TriggerList>, ApiError> {
    Ok(axum::Json(listed(&state.workflows().triggers(&name).await?)?))
}

/// Adds a trigger to a workflow: a cron schedule or store event that starts
/// runs, or a webhook that starts or signals them.
#[utoipa::path(post, path = "/v1/workflows/{name}/triggers", tag = "workflows",
    params(("name" = String, Path)), request_body = TriggerBody,
    responses((status = 201, body = TriggerInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn workflow_add(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<TriggerBody>,
) -> Result<(StatusCode, axum::Json<TriggerInfo>), ApiError> {
    let spec: hearth_workflows::TriggerSpec = spec(&body, "workflow")?;
    let t = state.workflows().add_trigger(&name, spec).await?;
    Ok((StatusCode::CREATED, axum::Json(info(t.id, &t.source, t.created_at, &t.spec)?)))
}

/// Removes a trigger that was added through the API.
#[utoipa::path(delete, path = "/v1/workflows/{name}/triggers/{id}", tag = "workflows",
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn workflow_remove(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.workflows().remove_trigger(&name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists the triggers that wake a machine.
#[utoipa::path(get, path = "/v1/machines/{name}/triggers", tag = "machines",
    params(("name" = String, Path)), responses((status = 200, body = TriggerList), (status = 404, body = ErrorBody)))]
pub(crate) async fn machine_list(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<TriggerList>, ApiError> {
    Ok(axum::Json(listed(&state.machines().triggers(&name).await?)?))
}

/// Adds a trigger that wakes a sleeping machine: a cron schedule or a store
/// event (a webhook needs none: a request to its port wakes it).
#[utoipa::path(post, path = "/v1/machines/{name}/triggers", tag = "machines",
    params(("name" = String, Path)), request_body = TriggerBody,
    responses((status = 201, body = TriggerInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn machine_add(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<TriggerBody>,
) -> Result<(StatusCode, axum::Json<TriggerInfo>), ApiError> {
    if body.kind == hearth_client::types::TriggerKind::Webhook {
        return Err(ApiError::bad_request(
            "invalid_trigger",
            "a machine has no webhook triggers: a request to its forwarded port wakes it",
            "forward a port (`hearth machine run -p HOST:GUEST`) and send the webhook there, or use --cron or --event",
        ));
    }
    let spec: hearth_machines::service::triggers::TriggerSpec = spec(&body, "machine")?;
    let t = state.machines().add_trigger(&name, spec).await?;
    Ok((StatusCode::CREATED, axum::Json(info(t.id, &t.source, t.created_at, &t.spec)?)))
}

/// Removes a trigger from a machine.
#[utoipa::path(delete, path = "/v1/machines/{name}/triggers/{id}", tag = "machines",
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn machine_remove(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.machines().remove_trigger(&name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
