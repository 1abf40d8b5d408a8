//! The alerting service: the daemon side of [`hearth_alerts`].
//!
//! One [`Monitor`] per daemon follows every change in the store (from the
//! revision it last saw, so a restart misses none), reads the lines apps
//! and workflows log and the metric samples the daemon takes, feeds them to
//! the alert engine, and delivers what the engine plans to each receiver:
//! a webhook, a mail, a workflow run, or only the alert history.
//!
//! Data flow:
//!
//! ```text
//! store events ─┐
//! log lines ────┼─> State::observe_* ─> evaluate ─> plan ─> acknowledge ─> persist ─> deliver ─> delivered ─> persist + history
//! samples ──────┘                                                   (alerts/state)   (Deliver)              (alerts/history/)
//! ```
//!
//! # Where it keeps things
//!
//! Everything is under `alerts/`, which no event rule sees unless it asks
//! (the engine's self-trigger guard):
//!
//! - `alerts/rules`: the person's rules file as applied. The built-in
//!   rules ([`builtin`]) are laid after it, each replaced by a rule of the
//!   same name.
//! - `alerts/state`: the engine's [`hearth_alerts::State`] (alerts, groups,
//!   silences, rate windows, the outbox) and the store revision it has
//!   seen, as JSON. Written at once when a notification is acknowledged
//!   and when one is delivered, otherwise at most once a second.
//! - `alerts/history/AT-ID`: one entry per notification handed to its
//!   receiver (or given up on), newest last, the most recent
//!   [`HISTORY_KEPT`] kept: `hearth alert history`.
//!
//! # Policy
//!
//! **Nothing is sent twice or lost across a restart.** A notification is
//! acknowledged and the state persisted before it is delivered; after a
//! restart, the outbox is delivered again under the same id before
//! anything new. Only a notification in flight at a crash can reach its
//! receiver twice, with the same id (the webhook's `Idempotency-Key`, the
//! mail's `Message-ID`, the workflow run's id).
//!
//! **A delivery that fails is retried.** A failure worth retrying (the
//! receiver is down, answered 5xx or 429) is tried again with a back-off
//! ([`hearth_notify::backoff`]) for up to [`GIVE_UP_AFTER`]; then, or at once
//! for a failure that would fail again (a 4xx, a refused address), the
//! notification leaves the outbox and the history says why.
//!
//! **A rule's own notification cannot fire it again.** Besides the
//! engine's guard (keys under `alerts/`, values marked `hearth_alert`), a
//! change under a workflow run a notification started (its id is
//! [`run_id`]) is marked as that rule's before the rules see it.
//!
//! **One service for the cloud.** When several hosts share the store
//! ([`Options::shared`]), the loop runs only on the leader, started with
//! each of its terms: a notification is planned and sent once, not once per
//! host. A new leader starts from the state and rules the last one saved
//! (the outbox included). A host that does not lead answers from the store
//! (rules, alerts, silences: as the leader saved them, within a second),
//! writes a rules file to the store for the leader to take, and hands a
//! silence or its end to the leader as `alerts/requests/ID`. Log lines and
//! samples count only on the leader: a log rule sees the leader's sources.
//!
//! **The record receiver keeps acts, not their end.** A `record`
//! receiver's firing notifications are written to the history; its
//! resolved ones are not (a restart that happened does not "resolve").

use std::time::Duration;

pub mod builtin;
pub mod deliver;
mod service;
#[cfg(test)]
mod tests;

pub use deliver::{Deliver, Failure};
pub use service::{Applied, HistoryEntry, HistoryQuery, Monitor, Options, Persisted, receiver_kind};

/// How many history entries are kept.
pub const HISTORY_KEPT: usize = 1000;

/// How long a notification that keeps failing is retried.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60 * 60);

/// Store keys.
pub mod keys {
    pub const RULES: &str = "alerts/rules";
    pub const STATE: &str = "alerts/state";
    pub const HISTORY: &str = "alerts/history/";
    /// Silences asked through a host that does not lead, for the leader.
    pub const REQUESTS: &str = "alerts/requests/";
}

/// What went wrong, for the API to show.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rules file does not parse or check.
    #[error("{0}")]
    Rules(#[from] hearth_alerts::rules::Error),
    /// A silence is malformed.
    #[error("{0}")]
    Silence(String),
    /// A named thing does not exist.
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    /// A built-in rule cannot be removed, only replaced.
    #[error("{0}")]
    Builtin(String),
    #[error("the alert store: {0}")]
    Store(#[from] hearth_store::Error),
    /// What is stored cannot be read.
    #[error("{key} in the store cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The id of the workflow run a notification starts:
/// `alert:RULE:NOTIFICATION`. One run per notification however often it is
/// delivered; and every key the run (or a child of it) writes holds the
/// id as a segment, which is how its events are known to be the rule's own
/// ([`caused_by`]).
pub fn run_id(rule: &str, notification: &str) -> String {
    format!("alert:{rule}:{notification}")
}

/// The rule whose notification caused a change at `key`: a key with a
/// segment that is a run id made by [`run_id`] (`workflows/runs/alert:disk:...`).
pub fn caused_by(key: &str) -> Option<&str> {
    if !key.starts_with("workflows/") {
        return None;
    }
    key.split('/').find_map(|segment| segment.strip_prefix("alert:")?.split(':').next())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
