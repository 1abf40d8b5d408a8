//! `/v1/alerts`: rules, alerts, silences and the alert history.
//!
//! Times are milliseconds since the Unix epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

wire_enum! {
    /// Where an alert is in its lifecycle.
    AlertPhase {
        /// Its condition does not hold.
        Inactive = "inactive",
        /// Its condition holds, for less than the rule's `for`.
        Pending = "pending",
        Firing = "firing",
        Resolved = "resolved",
    }
}

wire_enum! {
    /// Whether a notification (or an alert in it) says firing or resolved.
    AlertStatus {
        Firing = "firing",
        Resolved = "resolved",
    }
}

/// `PUT /v1/alerts/rules`: a whole rules file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyAlertRules {
    /// The rules file, TOML: `[[receiver]]`, `[[rule]]`, `[[inhibit]]` tables.
    pub text: String,
}

/// `PUT /v1/alerts/rules/{name}`: one rule of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAlertRule {
    /// The rule's table as TOML, without `[[rule]]` and `name`: `event = { prefix = "machines/" }` and so on.
    pub toml: String,
}

/// What applying rules did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertRulesApplied {
    pub revision: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

/// The rules in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertRules {
    /// The rules file as applied.
    pub text: String,
    /// The built-in rules, laid after it; a rule of the same name replaces one.
    pub builtin: String,
    pub rules: Vec<AlertRuleInfo>,
    pub receivers: Vec<AlertReceiverInfo>,
}

/// One rule in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertRuleInfo {
    pub name: String,
    /// `event`, `log` or `metric`.
    pub input: String,
    pub notify: Vec<String>,
    /// Whether it is a built-in rule that the file does not replace.
    pub builtin: bool,
    /// Its alerts now pending or firing.
    pub active: u32,
}

/// One receiver in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertReceiverInfo {
    pub name: String,
    /// `webhook`, `email`, `workflow` or `record`.
    pub kind: String,
}

/// `GET /v1/alerts`: the alerts the engine tracks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertInfo>,
    /// Notifications acknowledged and not yet delivered.
    pub undelivered: u32,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertInfo {
    pub fingerprint: String,
    pub rule: String,
    pub phase: AlertPhase,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Since when its condition holds, while pending or firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<u64>,
    /// Muted by a silence or an inhibition.
    pub muted: bool,
}

/// `POST /v1/alerts/silences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// Label matchers, all of which an alert meets to be muted: `rule=disk`, `app!=web`, `machine=~"db-.*"`, `severity!~"info|debug"`.
    pub matchers: Vec<String>,
    /// How long, from now: `2h`, `30m`.
    pub duration: String,
    #[serde(default)]
    pub comment: String,
    /// Who asked; `cli` unless said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// A silence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SilenceInfo {
    pub id: String,
    pub matchers: Vec<String>,
    pub starts_at: u64,
    pub ends_at: u64,
    pub created_by: String,
    pub comment: String,
    /// Whether it mutes now.
    pub active: bool,
}

/// The silences, active and recently ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SilenceList {
    pub silences: Vec<SilenceInfo>,
}

/// `GET /v1/alerts/history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertHistoryQuery {
    /// Only this rule's notifications.
    pub rule: Option<String>,
    /// At most this many, newest first (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// Notifications handed to their receivers (or given up on), newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertHistory {
    pub entries: Vec<AlertHistoryEntry>,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertHistoryEntry {
    pub at: u64,
    /// The notification's id: a webhook's `Idempotency-Key`.
    pub id: String,
    pub rule: String,
    pub receiver: String,
    /// `webhook`, `email`, `workflow` or `record`.
    pub kind: String,
    pub status: AlertStatus,
    pub group_labels: BTreeMap<String, String>,
    pub alerts: Vec<AlertHistoryAlert>,
    pub attempts: u32,
    /// Why it was given up on; absent when it was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An alert as a notification carried it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertHistoryAlert {
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub starts_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<u64>,
}
