//! `/v1/leases`: TTLs that keys can be attached to.

use std::time::Duration;

use axum::extract::{Path, State};
use hearth_client::types::{ErrorBody, GrantLease, LeaseInfo, LeaseList, WriteResult};

use super::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;

fn info(lease: hearth_store::Lease) -> LeaseInfo {
    LeaseInfo { id: lease.id, ttl_secs: lease.ttl.as_secs(), remaining_secs: lease.remaining.as_secs() }
}

fn lease_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().ok().filter(|id| *id != 0).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_field",
            format!("lease id {raw:?} is not a positive integer"),
            "list leases with GET /v1/leases",
        )
    })
}

/// Grants a lease.
#[utoipa::path(post, path = "/v1/leases", tag = "leases", request_body = GrantLease,
    responses((status = 200, body = LeaseInfo), (status = 400, body = ErrorBody)))]
pub(crate) async fn grant(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<GrantLease>,
) -> Result<axum::Json<LeaseInfo>, ApiError> {
    let lease = state.store().lease_grant(Duration::from_secs(body.ttl_secs)).await?;
    Ok(axum::Json(info(lease)))
}

/// Lists live leases.
#[utoipa::path(get, path = "/v1/leases", tag = "leases", responses((status = 200, body = LeaseList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<LeaseList>, ApiError> {
    let leases = state.store().leases().await?;
    Ok(axum::Json(LeaseList { leases: leases.into_iter().map(info).collect() }))
}

/// Renews a lease for another full TTL.
#[utoipa::path(post, path = "/v1/leases/{id}/keepalive", tag = "leases",
    params(("id" = u64, Path, description = "The lease id")),
    responses((status = 200, body = LeaseInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn keep_alive(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<LeaseInfo>, ApiError> {
    let lease = state.store().lease_keep_alive(lease_id(&id)?).await?;
    Ok(axum::Json(info(lease)))
}

/// Revokes a lease, deleting its keys.
#[utoipa::path(delete, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = u64, Path, description = "The lease id")),
    responses((status = 200, body = WriteResult), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<WriteResult>, ApiError> {
    let revision = state.store().lease_revoke(lease_id(&id)?).await?;
    Ok(axum::Json(WriteResult { revision }))
}
