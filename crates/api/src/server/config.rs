//! `/v1/config`: layered configuration (see `hearth_config`). Secrets are
//! shown as `"(secret)"` everywhere here; only consumers get them in clear.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hearth_client::types::{
    ConfigChange, ConfigChangeKind, ConfigDiff, ConfigDiffQuery, ConfigEntriesQuery, ConfigEntry,
    ConfigEntryList, ConfigEvent, ConfigEventKind, ConfigHistory, ConfigHistoryEntry, ConfigHistoryQuery,
    ConfigKey, ConfigKeySource, ConfigLayerQuery, ConfigQuery, ConfigSchema, ConfigSchemaList,
    ConfigSchemaQuery, ConfigView, ConfigWatchQuery, ConfigWritten, ErrorBody, ImportConfig, Rekey, Rekeyed,
    RollbackConfig, SetConfig,
};
use hearth_config::{EntryView, HistoryChange, Key, Layer, Scope, ValueChange};
use hearth_store::{Change, Follower};

use super::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};

fn scope(text: Option<&str>) -> Result<Scope, ApiError> {
    Ok(text.filter(|t| !t.is_empty()).unwrap_or("global").parse::<Scope>()?)
}

fn layer(text: Option<&str>) -> Result<Layer, ApiError> {
    Ok(text.filter(|t| !t.is_empty()).unwrap_or("global").parse::<Layer>()?)
}

fn entry(view: EntryView) -> ConfigEntry {
    ConfigEntry {
        layer: view.layer.to_string(),
        key: view.key.to_string(),
        value: view.value,
        secret: view.secret,
        source: view.source,
        revision: view.revision,
    }
}

fn value_change(change: ValueChange) -> ConfigChange {
    ConfigChange {
        kind: ConfigChangeKind::Value,
        layer: Some(change.layer),
        key: change.key,
        before: change.before,
        after: change.after,
        secret: change.secret,
    }
}

/// A scope's merged config under a prefix, with where each key came from,
/// as its consumer gets it: an app's own `hearth.toml` `[config]` shows as
/// the layer it is (`hearth.toml (app NAME)`), and a service's machine
/// (`machine:web-2`) reads `service:web` under its own layer.
#[utoipa::path(get, path = "/v1/config", tag = "config", params(ConfigQuery),
    responses((status = 200, body = ConfigView), (status = 400, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ConfigQuery>,
) -> Result<axum::Json<ConfigView>, ApiError> {
    let scope = scope(query.scope.as_deref())?;
    let prefix = query.prefix.unwrap_or_default();
    hearth_config::key::check_prefix(&prefix)?;
    let resolved = match &scope {
        Scope::App(name) => {
            let base = state.apps().config_base(name).await?;
            state.config().explain(&scope, base.as_ref()).await?
        }
        // A service's machine reads its service's scope under its own.
        Scope::Machine(name) => {
            let mut scopes = Vec::with_capacity(2);
            if let Some(service) = hearth_services::record::service_of_machine(state.store(), name).await {
                scopes.push(Scope::Service(service));
            }
            scopes.push(scope.clone());
            state.config().explain_nested(&scopes).await?
        }
        _ => state.config().explain(&scope, None).await?,
    };
    let keys = resolved
        .leaves
        .iter()
        .filter(|(k, _)| hearth_config::key::covers(&prefix, k.as_str()))
        .map(|(k, leaf)| ConfigKeySource {
            key: k.to_string(),
            value: leaf.value.clone(),
            layer: leaf.layer.clone(),
            source: leaf.source.clone(),
            secret: leaf.secret,
        })
        .collect();
    Ok(axum::Json(ConfigView {
        scope: scope.to_string(),
        revision: resolved.revision,
        value: resolved.at(&prefix),
        prefix,
        keys,
    }))
}

/// The leaves of the layers as they are set.
#[utoipa::path(get, path = "/v1/config/entries", tag = "config", params(ConfigEntriesQuery),
    responses((status = 200, body = ConfigEntryList), (status = 400, body = ErrorBody)))]
pub(crate) async fn entries(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ConfigEntriesQuery>,
) -> Result<axum::Json<ConfigEntryList>, ApiError> {
    let layer = query.layer.as_deref().filter(|l| !l.is_empty()).map(|l| layer(Some(l))).transpose()?;
    let entries = state.config().entries(layer.as_ref(), query.prefix.as_deref().unwrap_or("")).await?;
    Ok(axum::Json(ConfigEntryList { entries: entries.into_iter().map(entry).collect() }))
}

/// Sets a key in a layer. A table sets its leaves and replaces what was
/// under the key in that layer. Refused (422) when it breaks a schema.
#[utoipa::path(put, path = "/v1/config/entries/{key}", tag = "config",
    params(("key" = String, Path, description = "A dotted key"), ConfigLayerQuery),
    request_body = SetConfig,
    responses((status = 200, body = ConfigWritten), (status = 400, body = ErrorBody),
        (status = 422, description = "The change breaks a schema", body = ErrorBody)))]
pub(crate) async fn set(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(query): ApiQuery<ConfigLayerQuery>,
    ApiJson(body): ApiJson<SetConfig>,
) -> Result<axum::Json<ConfigWritten>, ApiError> {
    let layer = layer(query.layer.as_deref())?;
    let key = Key::parse(&key)?;
    let value = match (body.text, body.value) {
        (Some(text), None) if body.secret => serde_json::Value::String(text),
        (Some(text), None) => hearth_config::tree::parse_text(key.as_str(), &text)?,
        (None, Some(value)) => value,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "give exactly one of `text` and `value`",
                "`text` is the value as typed (TOML); `value` is the value as JSON",
            ));
        }
    };
    let revision = state.config().set(&layer, &key, value, body.secret).await?;
    Ok(axum::Json(ConfigWritten { revision }))
}

/// Removes a key (and what is under it) from a layer.
#[utoipa::path(delete, path = "/v1/config/entries/{key}", tag = "config",
    params(("key" = String, Path, description = "A dotted key"), ConfigLayerQuery),
    responses((status = 200, body = ConfigWritten), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(query): ApiQuery<ConfigLayerQuery>,
) -> Result<axum::Json<ConfigWritten>, ApiError> {
    let layer = layer(query.layer.as_deref())?;
    let revision = state.config().remove(&layer, &Key::parse(&key)?).await?;
    Ok(axum::Json(ConfigWritten { revision }))
}

/// Replaces the `files` layer with these files (TOML, or JSON by name),
/// merged in order. Leaves written `age:...` by `hearth config encrypt`
/// are kept as secrets.
#[utoipa::path(put, path = "/v1/config/files", tag = "config", request_body = ImportConfig,
    responses((status = 200, body = ConfigWritten), (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(crate) async fn import(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ImportConfig>,
) -> Result<axum::Json<ConfigWritten>, ApiError> {
    let files: Vec<(String, String)> = body.files.into_iter().map(|f| (f.name, f.text)).collect();
    let revision = state.config().import(&files).await?;
    Ok(axum::Json(ConfigWritten { revision }))
}

/// Committed changes, newest first.
#[utoipa::path(get, path = "/v1/config/history", tag = "config", params(ConfigHistoryQuery),
    responses((status = 200, body = ConfigHistory), (status = 400, body = ErrorBody)))]
pub(crate) async fn history(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ConfigHistoryQuery>,
) -> Result<axum::Json<ConfigHistory>, ApiError> {
    let limit = super::history_limit(query.limit)?;
    let entries = state.config().history(query.prefix.as_deref().unwrap_or(""), limit).await?;
    let entries = entries
        .into_iter()
        .map(|e| ConfigHistoryEntry {
            revision: e.revision,
            at_ms: e.at_ms,
            changes: e
                .changes
                .into_iter()
                .map(|c| match c {
                    HistoryChange::Value(v) => value_change(v),
                    HistoryChange::Schema { prefix, before, after } => ConfigChange {
                        kind: ConfigChangeKind::Schema,
                        layer: None,
                        key: prefix,
                        before,
                        after,
                        secret: false,
                    },
                })
                .collect(),
        })
        .collect();
    Ok(axum::Json(ConfigHistory { entries }))
}

/// What differs between two revisions, leaf by leaf.
#[utoipa::path(get, path = "/v1/config/diff", tag = "config", params(ConfigDiffQuery),
    responses((status = 200, body = ConfigDiff), (status = 400, body = ErrorBody),
        (status = 410, description = "That part of the history is no longer kept", body = ErrorBody)))]
pub(crate) async fn diff(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ConfigDiffQuery>,
) -> Result<axum::Json<ConfigDiff>, ApiError> {
    let (to, changes) = state.config().diff(query.from, query.to).await?;
    Ok(axum::Json(ConfigDiff {
        from: query.from,
        to,
        changes: changes.into_iter().map(value_change).collect(),
    }))
}

/// Sets a key of a layer back to what it was at a revision, as a new change.
#[utoipa::path(post, path = "/v1/config/rollback", tag = "config", request_body = RollbackConfig,
    responses((status = 200, body = ConfigWritten), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RollbackConfig>,
) -> Result<axum::Json<ConfigWritten>, ApiError> {
    let layer = layer(body.layer.as_deref())?;
    let revision = state.config().rollback(&layer, &Key::parse(&body.key)?, body.to).await?;
    Ok(axum::Json(ConfigWritten { revision }))
}

/// The JSON Schemas, by prefix.
#[utoipa::path(get, path = "/v1/config/schemas", tag = "config",
    responses((status = 200, body = ConfigSchemaList)))]
pub(crate) async fn schemas(State(state): State<AppState>) -> Result<axum::Json<ConfigSchemaList>, ApiError> {
    let schemas = state.config().schemas().await?;
    Ok(axum::Json(ConfigSchemaList {
        schemas: schemas.into_iter().map(|(prefix, schema)| ConfigSchema { prefix, schema }).collect(),
    }))
}

/// Sets the JSON Schema of a prefix: refused (422) when what is set now
/// does not match it.
#[utoipa::path(put, path = "/v1/config/schemas", tag = "config", request_body = ConfigSchema,
    responses((status = 200, body = ConfigWritten), (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(crate) async fn set_schema(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ConfigSchema>,
) -> Result<axum::Json<ConfigWritten>, ApiError> {
    let revision = state.config().set_schema(&body.prefix, body.schema).await?;
    Ok(axum::Json(ConfigWritten { revision }))
}

/// Removes the JSON Schema of a prefix.
#[utoipa::path(delete, path = "/v1/config/schemas", tag = "config", params(ConfigSchemaQuery),
    responses((status = 200, body = ConfigWritten), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_schema(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ConfigSchemaQuery>,
) -> Result<axum::Json<ConfigWritten>, ApiError> {
    let revision = state.config().remove_schema(&query.prefix).await?;
    Ok(axum::Json(ConfigWritten { revision }))
}

/// The public key secrets are encrypted to (for `hearth config encrypt`).
#[utoipa::path(get, path = "/v1/config/key", tag = "config", responses((status = 200, body = ConfigKey)))]
pub(crate) async fn key(State(state): State<AppState>) -> axum::Json<ConfigKey> {
    let (recipient, retired) = state.config().recipient();
    axum::Json(ConfigKey { recipient, retired: retired as u64 })
}

/// A new key: every secret is encrypted again to it.
#[utoipa::path(post, path = "/v1/config/rekey", tag = "config", request_body = Rekey,
    responses((status = 200, body = Rekeyed), (status = 400, body = ErrorBody)))]
pub(crate) async fn rekey(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Rekey>,
) -> Result<axum::Json<Rekeyed>, ApiError> {
    let (recipient, count) = state.config().rekey(body.forget).await?;
    Ok(axum::Json(Rekeyed { recipient, reencrypted: count as u64 }))
}

/// Follows config changes as server-sent events: `set` and `removed`
/// (data: a `ConfigEvent`, `id` its revision), and `reset` (data: a
/// `ConfigEntryList` of everything under the prefix) when the history in
/// between was compacted away, after which changes go on. A stream lasts
/// as long as the events stream and ends the same way (`end`).
#[utoipa::path(get, path = "/v1/config/watch", tag = "config", params(ConfigWatchQuery),
    responses((status = 200, description = "An SSE stream", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody),
        (status = 503, description = "Too many event streams are open (`too_many_streams`)", body = ErrorBody)))]
pub(crate) async fn watch(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ApiQuery(query): ApiQuery<ConfigWatchQuery>,
) -> Result<Response, ApiError> {
    let prefix = query.prefix.unwrap_or_default();
    hearth_config::key::check_prefix(&prefix)?;
    let resume = super::events::last_event_id(&headers)?.map(|rev| rev + 1);
    let since = match resume.or(query.since) {
        Some(since) => since.max(1),
        None => state.store().revision().await? + 1,
    };
    let permit = super::events::stream_permit()?;
    let follower = Follower::new(state.shared_store(), hearth_config::key::VALUES, since, "A config watch");
    let deadline = tokio::time::Instant::now() + state.event_stream_lifetime();
    let stream = futures::stream::unfold(
        Some((follower, since.saturating_sub(1), prefix)),
        move |following| async move {
            let (mut follower, mut through, prefix) = following?;
            loop {
                let change = tokio::select! {
                    change = follower.next() => change,
                    () = tokio::time::sleep_until(deadline) => {
                        return Some((super::events::end_event(through), None));
                    }
                };
                match change {
                    Change::Event(event) => {
                        through = event.revision();
                        let Some((layer, key)) = Layer::from_store_key(&event.kv.key) else { continue };
                        if !hearth_config::key::covers(&prefix, key.as_str()) {
                            continue;
                        }
                        let (kind, value, secret) = match event.kind {
                            hearth_store::EventKind::Put => {
                                match serde_json::from_slice::<hearth_config::StoredValue>(&event.kv.value) {
                                    Ok(stored) => {
                                        (ConfigEventKind::Set, Some(stored.shown()), stored.is_secret())
                                    }
                                    Err(_) => continue,
                                }
                            }
                            hearth_store::EventKind::Delete => (ConfigEventKind::Removed, None, false),
                        };
                        let data = ConfigEvent {
                            revision: through,
                            kind,
                            layer: layer.to_string(),
                            key: key.to_string(),
                            value,
                            secret,
                        };
                        let sse = SseEvent::default()
                            .id(through.to_string())
                            .event(kind.as_str())
                            .json_data(&data)
                            .unwrap_or_else(|_| SseEvent::default().event("error"));
                        return Some((sse, Some((follower, through, prefix))));
                    }
                    Change::Reset(range) => {
                        through = range.revision;
                        let mut entries = Vec::new();
                        for kv in range.kvs {
                            let Some((layer, key)) = Layer::from_store_key(&kv.key) else { continue };
                            let Ok(stored) = serde_json::from_slice::<hearth_config::StoredValue>(&kv.value)
                            else {
                                continue;
                            };
                            if hearth_config::key::covers(&prefix, key.as_str()) {
                                entries.push(ConfigEntry {
                                    layer: layer.to_string(),
                                    key: key.to_string(),
                                    value: stored.shown(),
                                    secret: stored.is_secret(),
                                    source: stored.source,
                                    revision: kv.mod_revision,
                                });
                            }
                        }
                        let sse = SseEvent::default()
                            .id(through.to_string())
                            .event("reset")
                            .json_data(ConfigEntryList { entries })
                            .unwrap_or_else(|_| SseEvent::default().event("error"));
                        return Some((sse, Some((follower, through, prefix))));
                    }
                }
            }
        },
    )
    .map(move |event| {
        let _held = &permit;
        Ok::<_, Infallible>(event)
    })
    .take_until(state.shutting_down());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}
