//! Triggers of apps and workflows: cron, store events, webhooks.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

wire_enum! {
    /// What fires a trigger.
    TriggerKind {
        /// A schedule.
        Cron = "cron",
        /// A change in hearth's store.
        Event = "event",
        /// An HTTP request.
        Webhook = "webhook",
    }
}

wire_enum! {
    /// Where a trigger comes from.
    TriggerSource {
        /// The active version's `hearth.toml`.
        Manifest = "manifest",
        /// Added through the API; removable.
        Api = "api",
    }
}

/// A trigger to add to an app or a workflow (`POST
/// /v1/apps/{name}/triggers`, `POST /v1/workflows/{name}/triggers`). The
/// fields that apply depend on `kind`:
///
/// - `cron`: `schedule` (five fields, or six with seconds first), `timezone`
///   (default UTC); for an app `path` (the route POSTed to, default `/`) and
///   `body`; for a workflow `input`.
/// - `event`: `prefix` (of keys in hearth's store), `kinds` (`put`,
///   `delete`; default both); for an app `path`.
/// - `webhook`: for an app, `path` (deliveries under it are handled once
///   per `Idempotency-Key`) and an optional `secret` (then they must be
///   signed); for a workflow, `path` (the last part of
///   `http://hooks.DOMAIN/WORKFLOW/PATH`), optional `secret` and `signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    pub kind: TriggerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    /// Write-only: never listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

impl TriggerBody {
    /// A trigger of this kind with every other field unset.
    pub fn new(kind: TriggerKind) -> Self {
        TriggerBody {
            kind,
            schedule: None,
            timezone: None,
            path: None,
            body: None,
            input: None,
            prefix: None,
            kinds: None,
            secret: None,
            signal: None,
        }
    }
}

/// A trigger of an app or workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TriggerInfo {
    /// `cron-0`, `event-0`, `webhook-0`… for the manifest's, by kind and
    /// position; `t-HEX` for those added through the API.
    pub id: String,
    pub source: TriggerSource,
    /// What it does; `secret` is left out.
    #[serde(flatten)]
    pub spec: TriggerBody,
    /// Whether requests must be signed (a webhook with a secret).
    pub signed: bool,
    /// Unix milliseconds.
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TriggerList {
    pub triggers: Vec<TriggerInfo>,
}
