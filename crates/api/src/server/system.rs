//! Daemon-wide endpoints: status, the OpenAPI document, metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use hearth_client::types::{
    Backend, ClusterStatus, DnsStatus, ErrorBody, HostInfo, KvmInfo, Status, StoreStatus, ToolInfo, UiStatus,
};

use super::AppState;
use crate::error::ApiError;

/// The daemon's version, data dir, store revision and host capabilities.
#[utoipa::path(get, path = "/v1/status", tag = "system",
    responses((status = 200, body = Status), (status = 500, body = ErrorBody)))]
pub(crate) async fn status(State(state): State<AppState>) -> Result<axum::Json<Status>, ApiError> {
    let store = state.store();
    let revision = store.revision().await?;
    let compacted_revision = store.compacted_revision().await?;
    let info = &state.inner.info;
    let hosts = state.hosts().list().await?;
    let cluster = ClusterStatus {
        host: state.hosts().name().to_owned(),
        leader: hosts.iter().find(|h| h.leader).map(|h| h.record.name.clone()),
        hosts: hosts.len() as u32,
        lost: hosts.iter().filter(|h| h.state == hearth_hosts::State::Lost).count() as u32,
    };
    Ok(axum::Json(Status {
        version: crate::VERSION.to_owned(),
        data_dir: info.data_dir.display().to_string(),
        socket: info.socket.display().to_string(),
        tcp: info.tcp.map(|a| a.to_string()),
        ingress: info.ingress.map(|a| a.to_string()),
        dns: DnsStatus {
            listen: info.dns.as_ref().ok().map(ToString::to_string),
            problem: info.dns.as_ref().err().cloned(),
        },
        ui: UiStatus {
            url: info.ui.as_ref().ok().map(|a| format!("http://{a}/ui/")),
            problem: info.ui.as_ref().err().cloned(),
        },
        uptime_secs: state.inner.started.elapsed().as_secs(),
        store: StoreStatus {
            backend: info.store_backend,
            location: info.store_location.clone(),
            revision,
            compacted_revision,
        },
        host: HostInfo {
            resources: crate::host::resources(&info.data_dir),
            ..host_info(state.machines().host(), super::machines::backend(state.machines().default_backend()))
        },
        cluster: Some(cluster),
    }))
}

/// What the machines subsystem found on this host, as the wire shows it.
fn host_info(report: hearth_machines::probe::HostReport, default_backend: Backend) -> HostInfo {
    let tool =
        |t: hearth_machines::probe::Tool| ToolInfo { path: t.path.display().to_string(), version: t.version };
    HostInfo {
        kvm: KvmInfo {
            present: report.kvm.present,
            accessible: report.kvm.accessible,
            usable: report.kvm.usable,
            detail: report.kvm.detail,
        },
        qemu: report.qemu.map(tool),
        firecracker: report.firecracker.map(tool),
        default_backend,
        resources: None,
    }
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::document_json()).into_response()
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Metrics, in the OpenMetrics text format",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let revision = state.store().revision().await?;
    let text = state
        .inner
        .metrics
        .render(revision, state.inner.started.elapsed())
        .map_err(|_| ApiError::internal("metrics could not be encoded"))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response())
}
