//! `/v1/alerts`: the rules in force, the alerts, silences and the alert
//! history (see `hearth_monitor`).

use std::time::Duration;

use axum::extract::State;
use hearth_alerts::rules::Input;
use hearth_alerts::{Phase, Status};
use hearth_client::types::{
    AlertHistory, AlertHistoryAlert, AlertHistoryEntry, AlertHistoryQuery, AlertInfo, AlertList, AlertPhase,
    AlertReceiverInfo, AlertRuleInfo, AlertRules, AlertRulesApplied, AlertStatus, ApplyAlertRules, ErrorBody,
    NewSilence, SetAlertRule, SilenceInfo, SilenceList,
};
use hearth_monitor::{Applied, HistoryQuery};

use super::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};

fn applied(applied: Applied) -> AlertRulesApplied {
    AlertRulesApplied {
        revision: applied.revision,
        added: applied.added,
        removed: applied.removed,
        kept: applied.kept,
    }
}

fn status(status: Status) -> AlertStatus {
    match status {
        Status::Firing => AlertStatus::Firing,
        Status::Resolved => AlertStatus::Resolved,
    }
}

fn silence(silence: &hearth_alerts::Silence, now: u64) -> SilenceInfo {
    SilenceInfo {
        id: silence.id.clone(),
        matchers: silence.matchers.iter().map(ToString::to_string).collect(),
        starts_at: silence.starts_at,
        ends_at: silence.ends_at,
        created_by: silence.created_by.clone(),
        comment: silence.comment.clone(),
        active: silence.active(now),
    }
}

/// The rules in force: the file as applied, the built-in rules, and each
/// rule with the number of its alerts pending or firing.
#[utoipa::path(get, path = "/v1/alerts/rules", tag = "alerts", responses((status = 200, body = AlertRules)))]
pub(crate) async fn rules(State(state): State<AppState>) -> Result<axum::Json<AlertRules>, ApiError> {
    let monitor = state.monitor();
    let (text, rules) = monitor.rules().await;
    let engine = monitor.state().await;
    let mine: std::collections::BTreeSet<String> = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("rule").and_then(|r| r.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect();
    let rules_info = rules
        .rules
        .iter()
        .map(|rule| AlertRuleInfo {
            name: rule.name.clone(),
            input: match rule.input {
                Input::Event(_) => "event",
                Input::Log(_) => "log",
                Input::Metric(_) => "metric",
            }
            .to_owned(),
            notify: rule.notify.clone(),
            builtin: !mine.contains(&rule.name)
                && hearth_monitor::builtin::rule_names().any(|n| n == rule.name),
            active: u32::try_from(
                engine
                    .alerts
                    .values()
                    .filter(|a| a.rule == rule.name && matches!(a.phase, Phase::Pending | Phase::Firing))
                    .count(),
            )
            .unwrap_or(u32::MAX),
        })
        .collect();
    let receivers = rules
        .receivers
        .iter()
        .map(|r| AlertReceiverInfo {
            name: r.name.clone(),
            kind: hearth_monitor::receiver_kind(r).to_owned(),
        })
        .collect();
    Ok(axum::Json(AlertRules {
        text,
        builtin: hearth_monitor::builtin::text(),
        rules: rules_info,
        receivers,
    }))
}

/// Replaces the rules file. A file that does not check is refused (400)
/// with every problem, each after its field's path, and changes nothing.
#[utoipa::path(put, path = "/v1/alerts/rules", tag = "alerts", request_body = ApplyAlertRules,
    responses((status = 200, body = AlertRulesApplied), (status = 400, body = ErrorBody)))]
pub(crate) async fn apply(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ApplyAlertRules>,
) -> Result<axum::Json<AlertRulesApplied>, ApiError> {
    Ok(axum::Json(applied(state.monitor().apply(&body.text).await?)))
}

/// Adds or replaces one rule of the file (a built-in rule of that name is
/// replaced too). The file is written back as TOML, without its comments.
#[utoipa::path(put, path = "/v1/alerts/rules/{name}", tag = "alerts",
    params(("name" = String, Path, description = "The rule's name")), request_body = SetAlertRule,
    responses((status = 200, body = AlertRulesApplied), (status = 400, body = ErrorBody)))]
pub(crate) async fn set_rule(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SetAlertRule>,
) -> Result<axum::Json<AlertRulesApplied>, ApiError> {
    Ok(axum::Json(applied(state.monitor().set_rule(&name, &body.toml).await?)))
}

/// Removes one rule of the file; a built-in rule it replaced is back.
#[utoipa::path(delete, path = "/v1/alerts/rules/{name}", tag = "alerts",
    params(("name" = String, Path, description = "The rule's name")),
    responses((status = 200, body = AlertRulesApplied), (status = 404, body = ErrorBody),
        (status = 409, description = "A built-in rule", body = ErrorBody)))]
pub(crate) async fn remove_rule(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<AlertRulesApplied>, ApiError> {
    Ok(axum::Json(applied(state.monitor().remove_rule(&name).await?)))
}

/// The alerts the engine tracks: pending, firing, and recently resolved.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", responses((status = 200, body = AlertList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<AlertList>, ApiError> {
    let monitor = state.monitor();
    let engine = monitor.state().await;
    let muted = monitor.muted().await;
    let alerts = engine
        .alerts
        .iter()
        .filter(|(_, a)| a.phase != Phase::Inactive)
        .map(|(fp, a)| AlertInfo {
            fingerprint: fp.clone(),
            rule: a.rule.clone(),
            phase: match a.phase {
                Phase::Inactive => AlertPhase::Inactive,
                Phase::Pending => AlertPhase::Pending,
                Phase::Firing => AlertPhase::Firing,
                Phase::Resolved => AlertPhase::Resolved,
            },
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            active_since: a.active_since,
            starts_at: a.starts_at,
            ends_at: a.ends_at,
            muted: muted.contains(fp),
        })
        .collect();
    let undelivered = u32::try_from(engine.undelivered().len()).unwrap_or(u32::MAX);
    Ok(axum::Json(AlertList { alerts, undelivered }))
}

/// The silences, active and ended in the last five days.
#[utoipa::path(get, path = "/v1/alerts/silences", tag = "alerts", responses((status = 200, body = SilenceList)))]
pub(crate) async fn silences(State(state): State<AppState>) -> Result<axum::Json<SilenceList>, ApiError> {
    let engine = state.monitor().state().await;
    let now = hearth_monitor::now_ms();
    let mut silences: Vec<SilenceInfo> = engine.silences.values().map(|s| silence(s, now)).collect();
    silences.sort_by_key(|s| std::cmp::Reverse(s.starts_at));
    Ok(axum::Json(SilenceList { silences }))
}

/// Mutes the alerts that meet every matcher, from now for `duration`.
#[utoipa::path(post, path = "/v1/alerts/silences", tag = "alerts", request_body = NewSilence,
    responses((status = 200, body = SilenceInfo), (status = 400, body = ErrorBody)))]
pub(crate) async fn add_silence(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewSilence>,
) -> Result<axum::Json<SilenceInfo>, ApiError> {
    let duration: Duration = humantime::parse_duration(&body.duration).map_err(|e| {
        ApiError::bad_request(
            "invalid_field",
            format!("duration {:?}: {e}", body.duration),
            "write a duration like 30m, 2h or 1d",
        )
    })?;
    let created_by = body.created_by.as_deref().unwrap_or("cli");
    let made = state.monitor().silence(&body.matchers, duration, created_by, &body.comment).await?;
    Ok(axum::Json(silence(&made, hearth_monitor::now_ms())))
}

/// Ends a silence now.
#[utoipa::path(delete, path = "/v1/alerts/silences/{id}", tag = "alerts",
    params(("id" = String, Path, description = "The silence's id")),
    responses((status = 200, body = SilenceInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn expire_silence(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<SilenceInfo>, ApiError> {
    let ended = state.monitor().expire_silence(&id).await?;
    Ok(axum::Json(silence(&ended, hearth_monitor::now_ms())))
}

/// Notifications handed to their receivers, or given up on, newest
/// first; hearth's own acts (restarts, rollbacks, expired registrations,
/// failed machines) are recorded here by the built-in rules.
#[utoipa::path(get, path = "/v1/alerts/history", tag = "alerts", params(AlertHistoryQuery),
    responses((status = 200, body = AlertHistory), (status = 400, body = ErrorBody)))]
pub(crate) async fn history(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AlertHistoryQuery>,
) -> Result<axum::Json<AlertHistory>, ApiError> {
    let limit = super::history_limit(query.limit)?;
    let entries = state.monitor().history(&HistoryQuery { rule: query.rule, limit }).await?;
    let entries = entries
        .into_iter()
        .map(|e| AlertHistoryEntry {
            at: e.at,
            id: e.id,
            rule: e.rule,
            receiver: e.receiver,
            kind: e.kind,
            status: status(e.status),
            group_labels: e.group_labels,
            alerts: e
                .alerts
                .into_iter()
                .map(|a| AlertHistoryAlert {
                    status: status(a.status),
                    summary: a.annotations.get("summary").cloned(),
                    labels: a.labels,
                    starts_at: a.starts_at,
                    ends_at: a.ends_at,
                })
                .collect(),
            attempts: e.attempts,
            error: e.error,
        })
        .collect();
    Ok(axum::Json(AlertHistory { entries }))
}
