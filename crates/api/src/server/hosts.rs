//! `/v1/hosts`: the daemons sharing the store, their leader, and draining.

use axum::extract::{Path, State};
use hearth_client::types::{ErrorBody, Host, HostList, HostLoad, HostState};

use super::AppState;
use crate::error::ApiError;

/// What every host carries, from the machine records.
type Loads = std::collections::BTreeMap<String, hearth_hosts::Load>;

fn wire(view: hearth_hosts::HostView, loads: &Loads) -> Host {
    let load = loads.get(&view.record.name).copied().unwrap_or_default();
    let record = view.record;
    Host {
        state: match view.state {
            hearth_hosts::State::Ready => HostState::Ready,
            hearth_hosts::State::Draining => HostState::Draining,
            hearth_hosts::State::Lost => HostState::Lost,
        },
        leader: view.leader,
        addresses: record.addresses,
        cpus: record.capacity.cpus,
        memory_mib: record.capacity.memory_mib,
        backends: record.backends,
        version: record.version,
        joined_at: record.joined_at,
        lost_at_ms: view.lost.map(|l| l.at_ms),
        load: HostLoad { machines: load.machines, cpus: load.cpus, memory_mib: load.memory_mib },
        name: record.name,
    }
}

/// Lists the hosts that share the store, in name order.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = HostList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<HostList>, ApiError> {
    let views = state.hosts().list().await?;
    let loads = state.machines().load_by_host().await?;
    let hosts = views.into_iter().map(|view| wire(view, &loads)).collect();
    Ok(axum::Json(HostList { hosts, this: state.hosts().name().to_owned() }))
}

/// A host as the API shows it, with what it carries.
async fn shown(state: &AppState, view: hearth_hosts::HostView) -> Result<axum::Json<Host>, ApiError> {
    Ok(axum::Json(wire(view, &state.machines().load_by_host().await?)))
}

/// One host.
#[utoipa::path(get, path = "/v1/hosts/{name}", tag = "hosts",
    params(("name" = String, Path, description = "The host's name")),
    responses((status = 200, body = Host), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Host>, ApiError> {
    let view = state.hosts().get(&name).await?;
    shown(&state, view).await
}

/// Drains a host: no new machine or service instance is placed there.
#[utoipa::path(post, path = "/v1/hosts/{name}/drain", tag = "hosts",
    params(("name" = String, Path, description = "The host's name")),
    responses((status = 200, body = Host), (status = 404, body = ErrorBody)))]
pub(crate) async fn drain(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Host>, ApiError> {
    let view = state.hosts().set_draining(&name, true).await?;
    shown(&state, view).await
}

/// Ends a host's draining: new work may go there again.
#[utoipa::path(delete, path = "/v1/hosts/{name}/drain", tag = "hosts",
    params(("name" = String, Path, description = "The host's name")),
    responses((status = 200, body = Host), (status = 404, body = ErrorBody)))]
pub(crate) async fn undrain(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Host>, ApiError> {
    let view = state.hosts().set_draining(&name, false).await?;
    shown(&state, view).await
}

/// Forgets a lost host that will not come back.
#[utoipa::path(delete, path = "/v1/hosts/{name}", tag = "hosts",
    params(("name" = String, Path, description = "The host's name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn forget(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    // Every machine recorded on it, stopped ones too: none may be left
    // naming a host that no longer exists.
    let left =
        state.machines().list().await?.iter().filter(|m| m.host.as_deref() == Some(name.as_str())).count();
    if left > 0 {
        return Err(ApiError::conflict(
            format!("host {name:?} still has {left} machines recorded on it"),
            format!(
                "remove them first with `hearth machine rm -f NAME` (`hearth machine ls` shows them under HOST {name})"
            ),
        ));
    }
    state.hosts().forget(&name).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
