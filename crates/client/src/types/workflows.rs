//! Durable workflows: deploys, runs, signals, journals and logs.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

wire_enum! {
    /// Where a workflow run is in its life.
    RunStatus {
        Running = "running",
        Waiting = "waiting",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

wire_enum! {
    /// What started a workflow run.
    StartedBy {
        Cli = "cli",
        Api = "api",
        Webhook = "webhook",
        Cron = "cron",
        Event = "event",
        /// Another run, as its child.
        Child = "child",
        /// An alert's notification (a workflow receiver).
        Alert = "alert",
    }
}

wire_enum! {
    /// Where a line of a run's log came from.
    RunLogSource {
        /// The durable `log` call.
        Log = "log",
        /// Standard output and standard error.
        Output = "output",
    }
}

/// The largest workflow component a deploy takes, in bytes (before base64).
pub const MAX_WORKFLOW_COMPONENT: usize = 32 << 20;

/// `PUT /v1/workflows/{name}`: a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployWorkflow {
    /// The component (`wasm32-wasip2`, the `hearth:workflow/workflow` world), base64.
    pub component_base64: String,
    /// The `hearth.toml` beside it, if any: its webhook, cron and event triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowVersion {
    pub number: u32,
    pub sha256: String,
    pub size: u64,
    /// Unix milliseconds.
    pub created_at: u64,
    pub manifest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowDeployed {
    pub workflow: String,
    pub version: WorkflowVersion,
    /// False when the compiled component came from the cache.
    pub compiled: bool,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowSummary {
    pub name: String,
    /// The version new runs start on.
    pub active: u32,
    pub versions: Vec<WorkflowVersion>,
    /// Webhook URLs, one per declared webhook.
    pub webhooks: Vec<String>,
    /// `SCHEDULE (TIMEZONE)`, one per cron trigger.
    pub crons: Vec<String>,
    /// Store key prefixes that start runs.
    pub events: Vec<String>,
    /// Unix milliseconds.
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummary>,
}

/// `POST /v1/workflows/{name}/runs`: start a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The run's input (JSON is usual); empty by default.
    #[serde(default)]
    pub input: String,
    /// Starting twice with one id starts one run; default: a new id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub workflow: String,
    /// The version it runs on.
    pub version: u32,
    pub status: RunStatus,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    /// What it waits for, in words, while `waiting`.
    pub waiting_for: Option<String>,
    /// When the wait ends (a timer, or a timeout), Unix milliseconds.
    pub deadline: Option<u64>,
    pub started_by: StartedBy,
    pub parent: Option<String>,
    /// Times an instance ran it.
    pub executions: u32,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    pub finished_at: Option<u64>,
}

/// `POST /v1/workflows/{name}/runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunStarted {
    #[serde(flatten)]
    pub run: RunSummary,
    /// False when a run with that id already existed.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunSummary>,
}

/// One step of a run's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JournalStep {
    pub seq: u32,
    /// When it was recorded, Unix milliseconds.
    pub at: u64,
    /// The call, in words: `sleep(5m)`, `http-call(POST http://...)`.
    pub call: String,
    /// Its result, in words.
    pub outcome: String,
    /// The entry as stored.
    #[schema(value_type = Object)]
    pub entry: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PendingSignal {
    pub name: String,
    pub data: String,
    /// Unix milliseconds.
    pub sent_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunSummary,
    pub journal: Vec<JournalStep>,
    /// Signals sent that no step has taken yet.
    pub pending_signals: Vec<PendingSignal>,
}

/// `GET /v1/runs` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Only runs with this status.
    pub status: Option<String>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
}

/// `POST /v1/runs/{id}/signals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendSignal {
    pub name: String,
    #[serde(default)]
    pub data: String,
}

/// `POST /v1/runs/{id}/migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRun {
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunLogLine {
    /// Unix milliseconds.
    pub time: u64,
    pub source: RunLogSource,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunLogs {
    pub lines: Vec<RunLogLine>,
}

/// `GET /v1/runs/{id}/result`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ResultQuery {
    /// How long to wait for the run to end, in milliseconds (at most 60000;
    /// default 30000). The answer is the run as it is then.
    pub timeout_ms: Option<u64>,
}
