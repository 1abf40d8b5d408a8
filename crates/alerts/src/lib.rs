//! The alert engine: rules over store events, log lines and metric
//! samples that notify receivers (webhook, email, a workflow, or only a
//! record) once per group of alerts, with Prometheus Alertmanager's
//! lifecycle and Grafana's pending and keep-firing periods.
//!
//! The crate is pure: no I/O, no store, no clock. The daemon feeds it what
//! it sees, with the time (milliseconds since the Unix epoch), stores its
//! [`State`] (plain serde data, JSON) and delivers what it plans:
//!
//! 1. [`Rules::parse`] the rules file (`hearth alert apply rules.toml`),
//!    then [`State::evaluate`] once with the new rules.
//! 2. As inputs come: [`State::observe_event`] ([`pattern::EventInput`]),
//!    [`State::observe_log`], [`State::observe_sample`].
//! 3. At each wake: [`State::evaluate`], then [`State::plan`].
//! 4. For each planned notification: [`State::acknowledge`], persist the
//!    state, deliver it (Alertmanager's JSON: [`webhook::Message`]; its
//!    [`Notification::id`] as the idempotency key), then
//!    [`State::delivered`] and persist again. A delivery that fails stays
//!    in the outbox, for the daemon to retry with a back-off.
//! 5. Sleep until [`Plan::next_wake`] or the next input.
//! 6. After a restart: load the state and deliver
//!    [`State::undelivered`] before anything else.
//!
//! Modules: [`rules`] (the file), [`pattern`] (event patterns and the
//! self-trigger guard), [`logs`] (log windows), [`alert`] (an alert's
//! lifecycle), [`engine`] (state, grouping, the notification policy),
//! [`silence`], [`template`] (summaries), [`webhook`] (the payload).
//!
//! # Policy
//!
//! The tests are named after these sentences.
//!
//! **An alert's life.** An alert is a rule and a label set; its
//! fingerprint is a hash of its sorted labels, the same in every process
//! and version. A condition that holds fires at once when the rule has no
//! pending period (`for`); otherwise the alert is pending and fires only
//! once the condition held for the whole period, and an alert that stops
//! holding while pending is never notified. A firing alert resolves once
//! its condition has not held for `keep_firing_for`. An event rule's alert
//! fires at a matching event and resolves `resolve_after` (default 5
//! minutes) after the last one, or at once when a later event for the same
//! key no longer matches (`resolve_after = "never"` waits for that).
//! Times come from what was observed, not from when the engine ran, so a
//! late evaluation gives the same alerts.
//!
//! **Groups.** Alerts are grouped per receiver, per rule, by the values of
//! the rule's `group_by` labels. A new group waits `group_wait` before its
//! first notification, collecting the alerts that fire meanwhile; a group
//! whose alerts all resolved before then sends nothing. Further changes
//! to a group (an alert firing that the receiver was not told of, or one
//! it was told of resolving) are notified at most once every
//! `group_interval`. An unchanged firing group is notified again every
//! `repeat_interval`. When every alert a receiver was told of has
//! resolved, exactly one resolved notification is sent.
//!
//! **Muting.** Silenced alerts are left out: a group whose alerts are all
//! silenced sends nothing, and a resolved notification only covers alerts
//! that were notified firing. An alert that was notified firing and is
//! silenced since is neither repeated nor reported resolved until it
//! resolves, and then its resolution is sent. An expired silence stops
//! muting at once. An alert is inhibited, muted as if silenced, while a
//! firing alert that matches an inhibit rule's source has the same values
//! of its `equal` labels.
//!
//! **Rate limit.** A rule's `rate_limit` caps the notifications of all its
//! groups per period; a notification over the limit waits for a slot and
//! is never dropped.
//!
//! **Crashes.** A notification counts as sent once acknowledged, and is
//! acknowledged (and the state persisted) before it is delivered. A
//! restart between plan and acknowledge plans again, and nothing was sent;
//! a restart after acknowledge delivers the notification again from the
//! outbox under the same id, so receivers can deduplicate it. So only the
//! notification in flight can be sent twice, and no resolved notification
//! is ever lost. Acknowledging a notification twice, or one that is no
//! longer current, changes nothing.
//!
//! **Self-trigger guard.** A notification's effects cannot fire its own
//! rule: keys under `alerts/` (the daemon's alert bookkeeping) and values
//! carrying the `hearth_alert` marker reach no event rule unless it sets
//! `include_alerts = true`, and never the rule the marker names; the
//! daemon's own log source `hearth:alerts` reaches only a log rule that
//! names it exactly. See [`pattern`].
//!
//! **Configuration changes.** Evaluating with new rules forgets the alerts
//! of rules that are gone or whose input kind or labels changed, and the
//! groups whose rule, receiver or `group_by` changed, without a resolved
//! notification (as Alertmanager does on a reload).

use std::collections::BTreeMap;

pub mod alert;
pub mod engine;
pub mod logs;
pub mod pattern;
pub mod rules;
pub mod silence;
pub mod template;
pub mod webhook;

pub use alert::{Alert, Phase};
pub use engine::{Notification, Plan, Sample, State, Status};
pub use pattern::{EventInput, EventKind, Pattern};
pub use rules::Rules;
pub use silence::Silence;

/// Label names to values, sorted.
pub type Labels = BTreeMap<String, String>;

/// The fingerprint of a label set: FNV-1a (64 bits) over the sorted
/// labels, each name and value followed by a 0xff byte (which UTF-8 never
/// holds), as 16 hex digits. Stored state is keyed by it: it must never
/// change.
pub fn fingerprint(labels: &Labels) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (name, value) in labels {
        for part in [name.as_bytes(), value.as_bytes()] {
            for byte in part.iter().chain([&0xffu8]) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(PRIME);
            }
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_fingerprint_is_the_same_in_every_process_and_version() {
        // Golden values: state stored by one version is read by the next.
        assert_eq!(fingerprint(&Labels::new()), "cbf29ce484222325");
        assert_eq!(fingerprint(&labels(&[("rule", "disk"), ("host", "web-1")])), "4f22035edd3a6c2a");
        // The order labels were written in does not matter; the split between
        // name and value does.
        assert_eq!(
            fingerprint(&labels(&[("host", "web-1"), ("rule", "disk")])),
            fingerprint(&labels(&[("rule", "disk"), ("host", "web-1")]))
        );
        assert_ne!(fingerprint(&labels(&[("ab", "c")])), fingerprint(&labels(&[("a", "bc")])));
    }
}
