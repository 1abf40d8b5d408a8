//! Alertmanager's webhook payload (version 4), so that whatever reads
//! Alertmanager's webhooks reads hearth's.

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::Labels;
use crate::engine::{Notification, Status};

/// What Alertmanager writes for "no end yet" (Go's zero time).
pub const NO_TIME: &str = "0001-01-01T00:00:00Z";

/// The JSON body of a webhook notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Message {
    /// Always "4".
    pub version: String,
    pub group_key: String,
    /// Alerts left out to keep the body small; hearth leaves none out.
    pub truncated_alerts: u64,
    pub status: Status,
    pub receiver: String,
    pub group_labels: Labels,
    pub common_labels: Labels,
    pub common_annotations: Labels,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<MessageAlert>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageAlert {
    pub status: Status,
    pub labels: Labels,
    pub annotations: Labels,
    /// RFC 3339, milliseconds, UTC.
    pub starts_at: String,
    /// [`NO_TIME`] while firing.
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// `ms` since the Unix epoch as RFC 3339 (`2026-01-01T00:00:00.000Z`).
pub fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map_or_else(|| NO_TIME.to_owned(), |t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The labels (or annotations) every one of `maps` has, with the same
/// value.
fn common<'a>(mut maps: impl Iterator<Item = &'a Labels>) -> Labels {
    let Some(first) = maps.next() else { return Labels::new() };
    let mut common = first.clone();
    for map in maps {
        common.retain(|k, v| map.get(k) == Some(v));
    }
    common
}

impl Message {
    /// The payload of `notification`; `external_url` is where the
    /// dashboard shows alerts.
    pub fn new(notification: &Notification, external_url: &str) -> Message {
        Message {
            version: "4".into(),
            group_key: notification.group_key.clone(),
            truncated_alerts: 0,
            status: notification.status,
            receiver: notification.receiver.clone(),
            group_labels: notification.group_labels.clone(),
            common_labels: common(notification.alerts.iter().map(|a| &a.labels)),
            common_annotations: common(notification.alerts.iter().map(|a| &a.annotations)),
            external_url: external_url.to_owned(),
            alerts: notification
                .alerts
                .iter()
                .map(|a| MessageAlert {
                    status: a.status,
                    labels: a.labels.clone(),
                    annotations: a.annotations.clone(),
                    starts_at: rfc3339(a.starts_at),
                    ends_at: a.ends_at.map_or_else(|| NO_TIME.to_owned(), rfc3339),
                    generator_url: String::new(),
                    fingerprint: a.fingerprint.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::NotifiedAlert;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_payload_has_alertmanagers_shape() {
        let n = Notification {
            id: "0123456789abcdef-1-2".into(),
            group_key: "hook/error-rate{app=\"shop\"}".into(),
            group_id: "0123456789abcdef-1".into(),
            seq: 2,
            receiver: "hook".into(),
            rule: "error-rate".into(),
            at: 1_767_225_660_000,
            status: Status::Firing,
            group_labels: labels(&[("app", "shop")]),
            alerts: vec![
                NotifiedAlert {
                    fingerprint: "aaaaaaaaaaaaaaaa".into(),
                    status: Status::Firing,
                    labels: labels(&[("app", "shop"), ("rule", "error-rate"), ("pod", "1")]),
                    annotations: labels(&[("summary", "high")]),
                    starts_at: 1_767_225_600_000,
                    ends_at: None,
                },
                NotifiedAlert {
                    fingerprint: "bbbbbbbbbbbbbbbb".into(),
                    status: Status::Resolved,
                    labels: labels(&[("app", "shop"), ("rule", "error-rate"), ("pod", "2")]),
                    annotations: labels(&[("summary", "high")]),
                    starts_at: 1_767_225_000_000,
                    ends_at: Some(1_767_225_630_500),
                },
            ],
        };
        let got = serde_json::to_value(Message::new(&n, "http://127.0.0.1:7070/alerts")).unwrap();
        let want = json!({
            "version": "4",
            "groupKey": "hook/error-rate{app=\"shop\"}",
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "hook",
            "groupLabels": { "app": "shop" },
            "commonLabels": { "app": "shop", "rule": "error-rate" },
            "commonAnnotations": { "summary": "high" },
            "externalURL": "http://127.0.0.1:7070/alerts",
            "alerts": [
                {
                    "status": "firing",
                    "labels": { "app": "shop", "pod": "1", "rule": "error-rate" },
                    "annotations": { "summary": "high" },
                    "startsAt": "2026-01-01T00:00:00.000Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "",
                    "fingerprint": "aaaaaaaaaaaaaaaa",
                },
                {
                    "status": "resolved",
                    "labels": { "app": "shop", "pod": "2", "rule": "error-rate" },
                    "annotations": { "summary": "high" },
                    "startsAt": "2025-12-31T23:50:00.000Z",
                    "endsAt": "2026-01-01T00:00:30.500Z",
                    "generatorURL": "",
                    "fingerprint": "bbbbbbbbbbbbbbbb",
                },
            ],
        });
        assert_eq!(got, want);
        let back: Message = serde_json::from_value(got).unwrap();
        assert_eq!(back.alerts.len(), 2);
    }
}
