//! An alert instance and its lifecycle: inactive, pending, firing,
//! resolved.
//!
//! An instance is a rule and a label set, named by its [`fingerprint`].
//! What the engine has seen of its input ([`Observed`]) says until when
//! its condition holds; [`Alert::step`] moves it along at a time `now`:
//!
//! - inactive or resolved, and the condition holds: pending, or firing at
//!   once when the rule's `for` is 0;
//! - pending, and the condition held for the whole `for`: firing, from the
//!   moment `for` ended; pending, and it stopped holding first: inactive,
//!   never having been notified;
//! - firing, and the condition has not held for `keep_firing_for`:
//!   resolved, at the moment `keep_firing_for` ended.
//!
//! The times come from what was observed, not from when `step` runs, so a
//! late evaluation (after a restart, say) gives the same answer.
//!
//! [`fingerprint`]: crate::fingerprint

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Labels;
use crate::logs::LogWindow;
use crate::rules::{Input, Rule};

/// Where an alert is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

/// What the engine has seen of an alert's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "lowercase")]
pub enum Observed {
    /// `held_until`: the last matching event plus `resolve_after`
    /// (`u64::MAX` for never), or the time of a later event for the key
    /// that no longer matched.
    Event {
        held_until: u64,
    },
    Log {
        window: LogWindow,
    },
    /// The latest sample; `held_until`: its time plus `stale_after` while
    /// samples meet the comparison, or the time of the first that did not.
    Metric {
        value: f64,
        at: u64,
        held_until: Option<u64>,
    },
}

/// One alert instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub phase: Phase,
    /// Since when the condition holds, while pending or firing.
    pub active_since: Option<u64>,
    /// When the alert last began firing.
    pub starts_at: Option<u64>,
    /// When it last resolved; kept until it fires again.
    pub ends_at: Option<u64>,
    pub observed: Observed,
}

impl Observed {
    /// Until when (exclusive) the condition holds, as far as is known;
    /// `None` if it never held.
    pub fn held_until(&self, rule: &Rule) -> Option<u64> {
        match (self, &rule.input) {
            (Observed::Event { held_until }, _) => Some(*held_until),
            (Observed::Log { window }, Input::Log(log)) => window.held_until(log),
            (Observed::Metric { held_until, .. }, _) => *held_until,
            (Observed::Log { .. }, _) => None,
        }
    }

    /// Whether it still has something to say at `now`: an alert that is
    /// neither pending nor firing is forgotten once idle.
    pub fn idle(&self, rule: &Rule, now: u64) -> bool {
        match (self, &rule.input) {
            (Observed::Log { window }, Input::Log(log)) => window.idle(log, now),
            _ => self.held_until(rule).is_none_or(|until| until <= now),
        }
    }

    /// Whether it is of the kind `rule`'s input gives.
    pub fn fits(&self, rule: &Rule) -> bool {
        matches!(
            (self, &rule.input),
            (Observed::Event { .. }, Input::Event(_))
                | (Observed::Log { .. }, Input::Log(_))
                | (Observed::Metric { .. }, Input::Metric(_))
        )
    }
}

impl Alert {
    pub fn new(rule: &str, labels: Labels, observed: Observed) -> Alert {
        Alert {
            rule: rule.to_owned(),
            labels,
            annotations: Labels::new(),
            phase: Phase::Inactive,
            active_since: None,
            starts_at: None,
            ends_at: None,
            observed,
        }
    }

    /// Whether the condition holds at `now`.
    pub fn holds(&self, rule: &Rule, now: u64) -> bool {
        self.observed.held_until(rule).is_some_and(|until| now < until)
    }

    /// Moves the alert along its lifecycle to `now` (see the module's
    /// doc). Whether its phase changed.
    pub fn step(&mut self, rule: &Rule, now: u64) -> bool {
        let before = self.phase;
        // Each pass moves one edge; an evaluation that comes late can
        // cross several (pending, firing, resolved).
        for _ in 0..4 {
            if !self.step_once(rule, now) {
                break;
            }
        }
        self.phase != before
    }

    fn step_once(&mut self, rule: &Rule, now: u64) -> bool {
        let held_until = self.observed.held_until(rule);
        let holds = held_until.is_some_and(|until| now < until);
        match self.phase {
            Phase::Inactive | Phase::Resolved if holds => {
                self.active_since = Some(now);
                self.phase = Phase::Pending;
                true
            }
            Phase::Pending => {
                let since = self.active_since.unwrap_or(now);
                let fires_at = since.saturating_add(rule.pending_for);
                if now >= fires_at && held_until.is_some_and(|until| until > fires_at) {
                    self.phase = Phase::Firing;
                    self.starts_at = Some(fires_at);
                    self.ends_at = None;
                    true
                } else if !holds {
                    self.phase = if self.ends_at.is_some() { Phase::Resolved } else { Phase::Inactive };
                    self.active_since = None;
                    true
                } else {
                    false
                }
            }
            Phase::Firing if !holds => {
                let stopped = held_until.unwrap_or(now).min(now);
                let ends_at = stopped.saturating_add(rule.keep_firing_for);
                if now >= ends_at {
                    self.phase = Phase::Resolved;
                    self.ends_at = Some(ends_at);
                    self.active_since = None;
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// The next time `step` could change the alert with nothing new
    /// observed, if any.
    pub fn next_change(&self, rule: &Rule, now: u64) -> Option<u64> {
        let held_until = self.observed.held_until(rule).filter(|until| *until != u64::MAX);
        match self.phase {
            Phase::Pending => {
                let fires_at = self.active_since.unwrap_or(now).saturating_add(rule.pending_for);
                held_until.map(|until| if until > fires_at { fires_at } else { until })
            }
            Phase::Firing if self.holds(rule, now) => {
                held_until.map(|u| u.saturating_add(rule.keep_firing_for))
            }
            Phase::Firing => Some(held_until.unwrap_or(now).min(now).saturating_add(rule.keep_firing_for)),
            Phase::Inactive | Phase::Resolved => None,
        }
    }

    /// The alert as a summary template sees it, with what the input adds.
    pub(crate) fn context(&self, extra: Value) -> Value {
        let mut context = json!({ "rule": self.rule, "labels": self.labels });
        if let (Value::Object(context), Value::Object(extra)) = (&mut context, extra) {
            context.extend(extra);
        }
        context
    }
}
