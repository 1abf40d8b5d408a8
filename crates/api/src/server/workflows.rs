//! `/v1/workflows` and `/v1/runs`: durable workflows, their runs, signals.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hearth_client::types::{
    DeployWorkflow, ErrorBody, JournalStep, MigrateRun, PendingSignal, ResultQuery, RunDetail, RunList,
    RunLogLine, RunLogs, RunStarted, RunStatus, RunSummary, RunsQuery, SendSignal, StartRun,
    WorkflowDeployed, WorkflowList, WorkflowSummary, WorkflowVersion,
};

use super::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, component_bytes, deploy_body};

/// The largest deploy request: a component of up to 32 MiB, base64-encoded.
const MAX_DEPLOY_BODY: usize = 45 << 20;

fn version(v: &hearth_workflows::Version) -> WorkflowVersion {
    WorkflowVersion {
        number: v.number,
        sha256: v.sha256.clone(),
        size: v.size,
        created_at: v.created_at,
        // Shown without its webhooks' secrets.
        manifest: v.manifest.as_deref().map(hearth_triggers::private::redact_secrets),
    }
}

fn summary(state: &AppState, def: &hearth_workflows::Definition) -> WorkflowSummary {
    let base = match state.ingress() {
        Some(addr) => format!("http://hooks.localhost:{}", addr.port()),
        None => "http://hooks.localhost".into(),
    };
    let t = &def.triggers;
    WorkflowSummary {
        name: def.name.clone(),
        active: def.active,
        versions: def.versions.iter().map(version).collect(),
        webhooks: t.webhooks.iter().map(|w| format!("{base}/{}/{}", def.name, w.path)).collect(),
        crons: t.crons.iter().map(|c| format!("{} ({})", c.schedule, c.timezone)).collect(),
        events: t.events.iter().map(|e| e.prefix.clone()).collect(),
        updated_at: def.updated_at,
    }
}

pub(crate) fn run_summary(run: &hearth_workflows::Run) -> Result<RunSummary, ApiError> {
    Ok(RunSummary {
        id: run.id.clone(),
        workflow: run.workflow.clone(),
        version: run.version,
        status: match run.status {
            hearth_workflows::Status::Running => RunStatus::Running,
            hearth_workflows::Status::Waiting => RunStatus::Waiting,
            hearth_workflows::Status::Completed => RunStatus::Completed,
            hearth_workflows::Status::Failed => RunStatus::Failed,
            hearth_workflows::Status::Cancelled => RunStatus::Cancelled,
        },
        input: run.input.clone(),
        output: run.output.clone(),
        error: run.error.clone(),
        waiting_for: run.wait.as_ref().map(|w| w.to_string()),
        deadline: run.wait.as_ref().and_then(|w| w.deadline),
        started_by: super::wire_word(&run.started_by, "a run's `started_by`")?,
        parent: run.parent.clone(),
        executions: run.executions,
        created_at: run.created_at,
        updated_at: run.updated_at,
        finished_at: run.finished_at,
    })
}

/// Lists deployed workflows.
#[utoipa::path(get, path = "/v1/workflows", tag = "workflows", responses((status = 200, body = WorkflowList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<WorkflowList>, ApiError> {
    let defs = state.workflows().definitions().await?;
    Ok(axum::Json(WorkflowList { workflows: defs.iter().map(|d| summary(&state, d)).collect() }))
}

/// Shows one workflow, its versions and triggers.
#[utoipa::path(get, path = "/v1/workflows/{name}", tag = "workflows",
    params(("name" = String, Path)), responses((status = 200, body = WorkflowSummary), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<WorkflowSummary>, ApiError> {
    let def = state.workflows().definition(&name).await?;
    Ok(axum::Json(summary(&state, &def)))
}

/// Deploys a workflow component as the version new runs start on. Runs
/// already started stay on the version they started on.
#[utoipa::path(put, path = "/v1/workflows/{name}", tag = "workflows",
    params(("name" = String, Path)), request_body = DeployWorkflow,
    responses((status = 200, body = WorkflowDeployed), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn deploy(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<WorkflowDeployed>, ApiError> {
    let what = "workflow components are limited to 32 MiB";
    let (request, _held): (DeployWorkflow, _) =
        deploy_body(&headers, body, MAX_DEPLOY_BODY, what, state.deploys()).await?;
    let component = component_bytes(&request.component_base64)?;
    let deployed = state.workflows().deploy(&name, component, request.manifest).await?;
    Ok(axum::Json(WorkflowDeployed {
        workflow: deployed.workflow,
        version: version(&deployed.version),
        compiled: deployed.compiled,
        duration_ms: deployed.duration_ms,
    }))
}

/// Removes a workflow: no new runs start; runs under way go on.
#[utoipa::path(delete, path = "/v1/workflows/{name}", tag = "workflows",
    params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.workflows().remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a run (idempotent by id).
#[utoipa::path(post, path = "/v1/workflows/{name}/runs", tag = "workflows",
    params(("name" = String, Path)), request_body = StartRun,
    responses((status = 200, body = RunStarted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn start(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<StartRun>,
) -> Result<axum::Json<RunStarted>, ApiError> {
    let request = hearth_workflows::StartRequest {
        workflow: name,
        input: body.input,
        id: body.id,
        started_by: "api".into(),
        parent: None,
    };
    let started = state.workflows().start(request).await?;
    Ok(axum::Json(RunStarted { run: run_summary(&started.run)?, created: started.created }))
}

/// Lists runs, newest first.
#[utoipa::path(get, path = "/v1/runs", tag = "workflows", params(RunsQuery),
    responses((status = 200, body = RunList), (status = 400, body = ErrorBody)))]
pub(crate) async fn runs(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> Result<axum::Json<RunList>, ApiError> {
    let status = query.status.as_deref().map(hearth_workflows::Status::parse).transpose()?;
    let runs = state.workflows().runs(status, query.workflow.as_deref()).await?;
    Ok(axum::Json(RunList { runs: runs.iter().map(run_summary).collect::<Result<_, _>>()? }))
}

/// Shows a run with its journal: its history, step by step.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "workflows",
    params(("id" = String, Path)), responses((status = 200, body = RunDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<RunDetail>, ApiError> {
    let detail = state.workflows().show(&id).await?;
    Ok(axum::Json(RunDetail {
        run: run_summary(&detail.run)?,
        journal: detail
            .journal
            .iter()
            .map(|e| JournalStep {
                seq: e.seq,
                at: e.at,
                call: e.call.to_string(),
                outcome: e.outcome.to_string(),
                entry: serde_json::to_value(e).unwrap_or_default(),
            })
            .collect(),
        pending_signals: detail
            .pending_signals
            .into_iter()
            .map(|s| PendingSignal { name: s.name, data: s.data, sent_at: s.sent_at })
            .collect(),
    }))
}

/// Sends a signal; the run takes it at its next wait for that name.
#[utoipa::path(post, path = "/v1/runs/{id}/signals", tag = "workflows",
    params(("id" = String, Path)), request_body = SendSignal,
    responses((status = 202), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn signal(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SendSignal>,
) -> Result<StatusCode, ApiError> {
    state.workflows().signal(&id, &body.name, body.data).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Cancels a run that has not ended.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "workflows",
    params(("id" = String, Path)), responses((status = 200, body = RunSummary), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<RunSummary>, ApiError> {
    let run = state.workflows().cancel(&id).await?;
    Ok(axum::Json(run_summary(&run)?))
}

/// Moves a run to another version of its workflow; its next replay checks
/// the new code against the journal.
#[utoipa::path(post, path = "/v1/runs/{id}/migrate", tag = "workflows",
    params(("id" = String, Path)), request_body = MigrateRun,
    responses((status = 200, body = RunSummary), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn migrate(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<MigrateRun>,
) -> Result<axum::Json<RunSummary>, ApiError> {
    let run = state.workflows().migrate(&id, body.version).await?;
    Ok(axum::Json(run_summary(&run)?))
}

/// What a run logged and printed.
#[utoipa::path(get, path = "/v1/runs/{id}/logs", tag = "workflows",
    params(("id" = String, Path)), responses((status = 200, body = RunLogs), (status = 404, body = ErrorBody)))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<RunLogs>, ApiError> {
    let lines = state.workflows().logs(&id).await?;
    Ok(axum::Json(RunLogs {
        lines: lines
            .into_iter()
            .map(|l| {
                let source = super::wire_word(&l.source, "a run log line's `source`")?;
                Ok(RunLogLine { time: l.time, source, text: l.text })
            })
            .collect::<Result<_, ApiError>>()?,
    }))
}

/// Waits for a run to end (up to `timeout_ms`) and returns it: its output
/// or error, or its current state if it has not ended by then.
#[utoipa::path(get, path = "/v1/runs/{id}/result", tag = "workflows",
    params(("id" = String, Path), ResultQuery), responses((status = 200, body = RunSummary), (status = 404, body = ErrorBody)))]
pub(crate) async fn result(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ResultQuery>,
) -> Result<axum::Json<RunSummary>, ApiError> {
    let timeout = std::time::Duration::from_millis(query.timeout_ms.unwrap_or(30_000).min(60_000));
    let run = state.workflows().wait(&id, timeout).await?;
    Ok(axum::Json(run_summary(&run)?))
}
