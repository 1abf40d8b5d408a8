//! The shapes apps and workflows both keep their triggers in: a trigger as
//! listed, one added by API as stored, and a cron trigger's last firing.
//! Each subsystem brings its own `Spec` (what its triggers can do).

use serde::{Deserialize, Serialize};

/// A trigger as listed: where it came from, and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger<S> {
    /// `cron-0`, `event-1`, `webhook-0` for those of a manifest (by kind
    /// and position); `t-HEX` for those added by API ([`new_id`]).
    pub id: String,
    /// `manifest` or `api`.
    pub source: String,
    #[serde(flatten)]
    pub spec: S,
    /// Milliseconds since the Unix epoch; the version's for a manifest's.
    pub created_at: u64,
}

impl<S> Trigger<S> {
    /// A trigger added by API, from its stored form.
    pub fn added(stored: Stored<S>) -> Self {
        Trigger {
            id: stored.id,
            source: crate::spec::FROM_API.into(),
            spec: stored.spec,
            created_at: stored.created_at,
        }
    }
}

/// A trigger added by API, as stored (`apps/triggers/NAME/ID`,
/// `workflows/triggers/NAME/ID`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored<S> {
    pub id: String,
    pub spec: S,
    pub created_at: u64,
}

impl<S> Stored<S> {
    /// A trigger being added now, at `created_at`, under a [`new_id`].
    pub fn new(spec: S, created_at: u64) -> Self {
        Stored { id: new_id(), spec, created_at }
    }
}

/// A new id for a trigger added by API: `t-` and 8 hex digits.
pub fn new_id() -> String {
    format!("t-{:08x}", rand::random::<u32>())
}

/// When a cron trigger last fired (or was set up), as stored, with the
/// schedule it fired on: a changed schedule starts again from now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronState {
    pub schedule: String,
    pub timezone: String,
    /// Milliseconds since the Unix epoch.
    pub last: u64,
}

impl CronState {
    /// The last firing, if the state is for this schedule.
    pub fn last_for(&self, schedule: &str, timezone: &str) -> Option<u64> {
        (self.schedule == schedule && self.timezone == timezone).then_some(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_lists_its_spec_flat_and_ids_are_new() {
        let t = Trigger::added(Stored {
            id: "t-1".into(),
            spec: serde_json::json!({"kind": "cron"}),
            created_at: 5,
        });
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json, serde_json::json!({"id": "t-1", "source": "api", "kind": "cron", "created_at": 5}));
        let (a, b) = (Stored::new((), 9), Stored::new((), 9));
        assert_eq!(a.created_at, 9);
        let (a, b) = (a.id, b.id);
        assert!(a.starts_with("t-") && a.len() == 10 && a != b, "{a} {b}");
        let state = CronState { schedule: "@daily".into(), timezone: "UTC".into(), last: 7 };
        assert_eq!(state.last_for("@daily", "UTC"), Some(7));
        assert_eq!(state.last_for("@hourly", "UTC"), None);
    }
}
