//! `/v1/networks` and `/v1/faults`: private networks, and breaking them on purpose.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use hearth_client::types::{
    self as wire, CreateFault, CreateNetwork, ErrorBody, Fault, FaultList, Healed, Network, NetworkList,
    NetworkMember,
};
use hearth_net::record::{FaultKind, FaultRecord, NetworkRecord};

use super::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;

async fn describe(state: &AppState, n: NetworkRecord) -> Result<Network, ApiError> {
    let machines = state.networks().members(&n.name).await?;
    Ok(Network {
        gateway: n.subnet.gateway().to_string(),
        subnet: n.subnet.to_string(),
        name: n.name,
        bridge: n.bridge,
        nat: n.nat,
        machines: machines
            .into_iter()
            .map(|(machine, ip)| NetworkMember { machine, ip: ip.to_string() })
            .collect(),
        created_at: n.created_at,
    })
}

/// Lists networks.
#[utoipa::path(get, path = "/v1/networks", tag = "networks", responses((status = 200, body = NetworkList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<NetworkList>, ApiError> {
    let mut networks = Vec::new();
    for n in state.networks().list().await? {
        networks.push(describe(&state, n).await?);
    }
    Ok(axum::Json(NetworkList { networks }))
}

/// Shows one network and its machines.
#[utoipa::path(get, path = "/v1/networks/{name}", tag = "networks",
    params(("name" = String, Path)), responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Network>, ApiError> {
    let n = state.networks().get(&name).await?;
    Ok(axum::Json(describe(&state, n).await?))
}

/// Creates a network: a bridge with address management, DNS and optional NAT.
#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = CreateNetwork,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateNetwork>,
) -> Result<(StatusCode, axum::Json<Network>), ApiError> {
    let subnet = body.subnet.as_deref().map(str::parse).transpose().map_err(|e: String| {
        ApiError::bad_request("invalid_field", format!("field `subnet`: {e}"), "e.g. 10.250.0.0/24")
    })?;
    let n = state.networks().create(&body.name, subnet, body.nat.unwrap_or(true)).await?;
    Ok((StatusCode::CREATED, axum::Json(describe(&state, n).await?)))
}

/// Removes a network no machine uses.
#[utoipa::path(delete, path = "/v1/networks/{name}", tag = "networks",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "Machines use it", body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.networks().remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A fault's record as the wire shows it.
fn fault(f: FaultRecord) -> Fault {
    let description = f.kind.describe();
    let (kind, partition, delay, loss) = match f.kind {
        FaultKind::Partition { machines, from, both_ways } => {
            (wire::FaultKind::Partition, Some(wire::PartitionFault { machines, from, both_ways }), None, None)
        }
        FaultKind::Delay { machine, delay, jitter } => (
            wire::FaultKind::Delay,
            None,
            Some(wire::DelayFault {
                machine,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                jitter_ms: u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX),
            }),
            None,
        ),
        FaultKind::Loss { machine, percent } => {
            (wire::FaultKind::Loss, None, None, Some(wire::LossFault { machine, percent }))
        }
    };
    Fault {
        id: f.id,
        kind,
        description,
        partition,
        delay,
        loss,
        expires_at: f.expires_at,
        created_at: f.created_at,
    }
}

/// Lists active faults.
#[utoipa::path(get, path = "/v1/faults", tag = "faults", responses((status = 200, body = FaultList)))]
pub(crate) async fn faults(State(state): State<AppState>) -> Result<axum::Json<FaultList>, ApiError> {
    let faults = state.networks().faults().await?;
    Ok(axum::Json(FaultList { faults: faults.into_iter().map(fault).collect() }))
}

/// Injects a fault: a partition, a delay or packet loss.
#[utoipa::path(post, path = "/v1/faults", tag = "faults", request_body = CreateFault,
    responses((status = 201, body = Fault), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn create_fault(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateFault>,
) -> Result<(StatusCode, axum::Json<Fault>), ApiError> {
    let kind = match (body.partition, body.delay, body.loss) {
        (Some(p), None, None) => {
            FaultKind::Partition { machines: p.machines, from: p.from, both_ways: p.both_ways }
        }
        (None, Some(d), None) => FaultKind::Delay {
            machine: d.machine,
            delay: Duration::from_millis(d.delay_ms),
            jitter: Duration::from_millis(d.jitter_ms),
        },
        (None, None, Some(l)) => FaultKind::Loss { machine: l.machine, percent: l.percent },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "give exactly one of `partition`, `delay` and `loss`",
                "one fault per request; `hearth fault ls` shows what is active",
            ));
        }
    };
    let created = state.networks().add_fault(kind, body.for_secs.map(Duration::from_secs)).await?;
    Ok((StatusCode::CREATED, axum::Json(fault(created))))
}

/// Heals one fault.
#[utoipa::path(delete, path = "/v1/faults/{id}", tag = "faults",
    params(("id" = String, Path)), responses((status = 200, body = Healed), (status = 404, body = ErrorBody)))]
pub(crate) async fn heal(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Healed>, ApiError> {
    Ok(axum::Json(Healed { healed: state.networks().heal(Some(&id)).await? }))
}

/// Heals every fault.
#[utoipa::path(delete, path = "/v1/faults", tag = "faults", responses((status = 200, body = Healed)))]
pub(crate) async fn heal_all(State(state): State<AppState>) -> Result<axum::Json<Healed>, ApiError> {
    Ok(axum::Json(Healed { healed: state.networks().heal(None).await? }))
}
