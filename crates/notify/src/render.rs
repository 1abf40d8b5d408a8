//! A notification as a person reads it: a mail's subject and plain-text
//! body.
//!
//! The subject reads as Alertmanager's default: `[FIRING:2] error-rate
//! (app=shop)` (the status, the number of firing alerts, the rule, the
//! group's labels but `rule`), or `[RESOLVED] error-rate (app=shop)`.

use std::fmt::Write as _;

use hearth_alerts::engine::NotifiedAlert;
use hearth_alerts::webhook::rfc3339;
use hearth_alerts::{Labels, Notification, Status};

/// The subject and body of a mail about `notification`; `external_url`,
/// where hearth's alerts are shown, ends the body unless empty.
pub fn email(notification: &Notification, external_url: &str) -> (String, String) {
    let (firing, resolved): (Vec<&NotifiedAlert>, Vec<&NotifiedAlert>) =
        notification.alerts.iter().partition(|a| a.status == Status::Firing);
    let status = match notification.status {
        Status::Firing => format!("FIRING:{}", firing.len()),
        Status::Resolved => "RESOLVED".to_owned(),
    };
    let group = pairs(notification.group_labels.iter().filter(|(name, _)| *name != "rule"));
    let title =
        if group.is_empty() { notification.rule.clone() } else { format!("{} ({group})", notification.rule) };
    let subject = format!("[{status}] {title}");

    let mut body = String::new();
    let count = |n: usize| if n == 1 { "1 alert".to_owned() } else { format!("{n} alerts") };
    let _ = match (firing.len(), resolved.len()) {
        (f, 0) => writeln!(body, "{} firing for {title}.", count(f)),
        (0, r) => writeln!(body, "{} resolved for {title}.", count(r)),
        (f, r) => writeln!(body, "{} firing and {} resolved for {title}.", count(f), count(r)),
    };
    for (heading, alerts) in [("Firing", &firing), ("Resolved", &resolved)] {
        if alerts.is_empty() {
            continue;
        }
        let _ = writeln!(body, "\n{heading}:");
        for alert in alerts.iter() {
            write_alert(&mut body, alert);
        }
    }
    let _ = writeln!(body, "\nNotification {} to receiver {}.", notification.id, notification.receiver);
    if !external_url.is_empty() {
        let _ = writeln!(body, "Alerts: {external_url}");
    }
    (subject, body)
}

fn write_alert(body: &mut String, alert: &NotifiedAlert) {
    let summary = alert.annotations.get("summary").map_or("(no summary)", String::as_str);
    let _ = writeln!(body, "\n- {}", one_line(summary));
    let _ = writeln!(body, "  labels: {}", pairs(alert.labels.iter()));
    let others: Labels = alert
        .annotations
        .iter()
        .filter(|(k, _)| *k != "summary")
        .map(|(k, v)| (k.clone(), one_line(v)))
        .collect();
    if !others.is_empty() {
        let _ = writeln!(body, "  annotations: {}", pairs(others.iter()));
    }
    let _ = writeln!(body, "  started: {}", rfc3339(alert.starts_at));
    if let Some(ends_at) = alert.ends_at {
        let _ = writeln!(body, "  ended: {}", rfc3339(ends_at));
    }
}

/// `name=value name=value`.
fn pairs<'a>(labels: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    labels.map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(" ")
}

/// `text` with its line breaks as spaces, so that it cannot start lines of
/// its own in the body.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n']).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn notification(status: Status, alerts: Vec<NotifiedAlert>) -> Notification {
        Notification {
            id: "0123456789abcdef-1-2".into(),
            group_key: "ops/error-rate{app=\"shop\"}".into(),
            group_id: "0123456789abcdef-1".into(),
            seq: 2,
            receiver: "ops".into(),
            rule: "error-rate".into(),
            at: 1_767_225_660_000,
            status,
            group_labels: labels(&[("app", "shop"), ("rule", "error-rate")]),
            alerts,
        }
    }

    fn alert(pod: &str, status: Status, ends_at: Option<u64>) -> NotifiedAlert {
        NotifiedAlert {
            fingerprint: format!("{pod:0>16}"),
            status,
            labels: labels(&[("app", "shop"), ("pod", pod), ("rule", "error-rate")]),
            annotations: labels(&[("summary", "error ratio 0.3\nabove 0.2"), ("runbook", "r")]),
            starts_at: 1_767_225_600_000,
            ends_at,
        }
    }

    #[test]
    fn a_firing_mail_counts_its_firing_alerts_and_lists_each() {
        let n = notification(
            Status::Firing,
            vec![
                alert("1", Status::Firing, None),
                alert("2", Status::Firing, None),
                alert("3", Status::Resolved, Some(1_767_225_630_500)),
            ],
        );
        let (subject, body) = email(&n, "http://127.0.0.1:7070/alerts");
        assert_eq!(subject, "[FIRING:2] error-rate (app=shop)");
        assert_eq!(
            body,
            "2 alerts firing and 1 alert resolved for error-rate (app=shop).

Firing:

- error ratio 0.3 above 0.2
  labels: app=shop pod=1 rule=error-rate
  annotations: runbook=r
  started: 2026-01-01T00:00:00.000Z

- error ratio 0.3 above 0.2
  labels: app=shop pod=2 rule=error-rate
  annotations: runbook=r
  started: 2026-01-01T00:00:00.000Z

Resolved:

- error ratio 0.3 above 0.2
  labels: app=shop pod=3 rule=error-rate
  annotations: runbook=r
  started: 2026-01-01T00:00:00.000Z
  ended: 2026-01-01T00:00:30.500Z

Notification 0123456789abcdef-1-2 to receiver ops.
Alerts: http://127.0.0.1:7070/alerts
"
        );
    }

    #[test]
    fn a_resolved_mail_says_resolved_and_a_group_without_labels_is_its_rule() {
        let mut n =
            notification(Status::Resolved, vec![alert("1", Status::Resolved, Some(1_767_225_630_000))]);
        n.group_labels = Labels::new();
        let (subject, body) = email(&n, "");
        assert_eq!(subject, "[RESOLVED] error-rate");
        assert!(body.starts_with("1 alert resolved for error-rate.\n"), "{body}");
        assert!(body.ends_with("to receiver ops.\n"), "{body}");
    }
}
