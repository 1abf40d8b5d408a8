//! The engine's state, and the steps the daemon drives it with: observe
//! inputs, evaluate, plan, acknowledge, deliver. The policy is in the
//! crate's doc; the tests in `engine/tests.rs` are named after its
//! sentences.
//!
//! Everything the engine knows is in [`State`], which is plain data
//! (serde, JSON) for the daemon to store; every step takes the time as an
//! argument (milliseconds since the Unix epoch) and does no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::alert::{Alert, Observed, Phase};
use crate::pattern::{self, EventInput};
use crate::rules::{Input, Rule, Rules};
use crate::silence::{self, Silence};
use crate::{Labels, fingerprint};

/// How long an expired silence is kept, to be listed, before it is
/// forgotten (Alertmanager's default retention).
pub const SILENCE_RETENTION: u64 = 5 * 24 * 60 * 60 * 1000;

/// Everything the engine knows; the daemon persists it whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Alert instances by fingerprint.
    pub alerts: BTreeMap<String, Alert>,
    /// Groups by key ([`group_key`]).
    pub groups: BTreeMap<String, Group>,
    /// Silences by id.
    pub silences: BTreeMap<String, Silence>,
    /// Per rule, the times of its notifications within its rate limit's
    /// period.
    pub sent: BTreeMap<String, Vec<u64>>,
    /// Notifications acknowledged and not yet delivered, oldest first.
    pub outbox: Vec<Notification>,
    /// How many groups were ever made: each group's id is unique.
    pub groups_made: u64,
}

/// The alerts of one rule for one receiver that share the values of the
/// rule's `group_by` labels, and what the receiver was told of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Unique to this group, including earlier groups of the same key.
    pub id: String,
    pub receiver: String,
    pub rule: String,
    pub group_by: Vec<String>,
    /// The values of the `group_by` labels (those the alerts have).
    pub labels: Labels,
    /// When its first alert fired: `group_wait` counts from here.
    pub created_at: u64,
    /// How many notifications were acknowledged.
    pub seq: u64,
    /// When the last one was planned.
    pub last_sent: Option<u64>,
    /// The fingerprints of the alerts the receiver was told are firing.
    pub notified: BTreeSet<String>,
}

/// A metric sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// Whether a notification or an alert in it is firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

/// One notification to one receiver about one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// `GROUP_ID-SEQ`: the same notification always has the same id, and
    /// no other has it, so receivers can deduplicate on it (the webhook's
    /// `Idempotency-Key`).
    pub id: String,
    pub group_key: String,
    pub group_id: String,
    /// 1 for a group's first notification.
    pub seq: u64,
    pub receiver: String,
    pub rule: String,
    /// When it was planned.
    pub at: u64,
    /// Firing while any alert the receiver knows of still fires.
    pub status: Status,
    pub group_labels: Labels,
    /// The firing alerts, then the resolved ones.
    pub alerts: Vec<NotifiedAlert>,
}

/// An alert as a notification carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifiedAlert {
    pub fingerprint: String,
    pub status: Status,
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at: u64,
    pub ends_at: Option<u64>,
}

/// What [`State::plan`] found due.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub notifications: Vec<Notification>,
    /// The next time evaluating and planning again could give something
    /// new with no new input; `None`: only new input can.
    pub next_wake: Option<u64>,
}

/// A group's key: `RECEIVER/RULE{label="value",...}`.
pub fn group_key(receiver: &str, rule: &str, labels: &Labels) -> String {
    let labels: Vec<String> =
        labels.iter().map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone()))).collect();
    format!("{receiver}/{rule}{{{}}}", labels.join(","))
}

/// The values of the `group_by` labels that `labels` has.
fn group_labels(group_by: &[String], labels: &Labels) -> Labels {
    group_by.iter().filter_map(|name| Some((name.clone(), labels.get(name)?.clone()))).collect()
}

/// Whether `alert` belongs to `group`.
fn member(group: &Group, alert: &Alert) -> bool {
    alert.rule == group.rule && group_labels(&group.group_by, &alert.labels) == group.labels
}

fn has_firing_member(group: &Group, alerts: &BTreeMap<String, Alert>) -> bool {
    alerts.values().any(|a| a.phase == Phase::Firing && member(group, a))
}

/// The labels every alert of `rule` has: its own and `rule`.
fn rule_labels(rule: &Rule) -> Labels {
    let mut labels = rule.labels.clone();
    labels.insert("rule".into(), rule.name.clone());
    labels
}

fn render_summary(alert: &mut Alert, rule: &Rule, extra: serde_json::Value) {
    if let Some(summary) = &rule.summary {
        let text = summary.render(&alert.context(extra));
        alert.annotations.insert("summary".into(), text);
    }
}

fn earliest(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl State {
    /// Feeds a store event seen at `at` to the event rules.
    pub fn observe_event(&mut self, rules: &Rules, event: &EventInput, at: u64) {
        for rule in &rules.rules {
            let Input::Event(input) = &rule.input else { continue };
            // The guard: own events only reach rules that opt in, and
            // never the rule whose notification caused them.
            if !pattern::in_scope(&input.pattern, event)
                || pattern::marked_by(event) == Some(rule.name.as_str())
            {
                continue;
            }
            let mut labels = rule_labels(rule);
            labels.insert("key".into(), event.key.clone());
            let fp = fingerprint(&labels);
            self.catch_up(rule, &fp, at);
            if pattern::matches(&input.pattern, event) {
                let held_until = input.resolve_after.map_or(u64::MAX, |r| at.saturating_add(r));
                let observed = Observed::Event { held_until };
                let alert = self
                    .alerts
                    .entry(fp.clone())
                    .or_insert_with(|| Alert::new(&rule.name, labels, observed.clone()));
                alert.observed = observed;
                let extra = json!({ "key": event.key, "kind": event.kind, "value": event.value });
                render_summary(alert, rule, extra);
            } else if let Some(alert) = self.alerts.get_mut(&fp) {
                // The key no longer matches: what it raised ends now.
                if let Observed::Event { held_until } = &mut alert.observed {
                    *held_until = (*held_until).min(at);
                }
            } else {
                continue;
            }
            self.step_alert(rule, &fp, at);
        }
    }

    /// Feeds a log line of `source` seen at `at` to the log rules.
    pub fn observe_log(&mut self, rules: &Rules, source: &str, line: &str, at: u64) {
        for rule in &rules.rules {
            let Input::Log(input) = &rule.input else { continue };
            if !input.counts(source, line) {
                continue;
            }
            let mut labels = rule_labels(rule);
            labels.insert("source".into(), source.to_owned());
            let fp = fingerprint(&labels);
            self.catch_up(rule, &fp, at);
            let alert = self.alerts.entry(fp.clone()).or_insert_with(|| {
                Alert::new(&rule.name, labels, Observed::Log { window: Default::default() })
            });
            if let Observed::Log { window } = &mut alert.observed {
                window.record(at, input.at_least);
            }
            render_summary(alert, rule, json!({ "source": source, "line": line }));
            self.step_alert(rule, &fp, at);
        }
    }

    /// Feeds a metric sample taken at `at` to the metric rules.
    pub fn observe_sample(&mut self, rules: &Rules, sample: &Sample, at: u64) {
        for rule in &rules.rules {
            let Input::Metric(input) = &rule.input else { continue };
            if sample.name != input.name || !input.labels.iter().all(|(k, v)| sample.labels.get(k) == Some(v))
            {
                continue;
            }
            let mut labels = sample.labels.clone();
            labels.extend(rule_labels(rule));
            let fp = fingerprint(&labels);
            self.catch_up(rule, &fp, at);
            let meets = input.op.holds(sample.value, input.value);
            let before = match self.alerts.get(&fp).map(|a| &a.observed) {
                Some(Observed::Metric { held_until, .. }) => *held_until,
                _ => None,
            };
            let held_until =
                if meets { Some(at.saturating_add(input.stale_after)) } else { before.map(|u| u.min(at)) };
            if !meets && !self.alerts.contains_key(&fp) {
                continue;
            }
            let observed = Observed::Metric { value: sample.value, at, held_until };
            let alert = self
                .alerts
                .entry(fp.clone())
                .or_insert_with(|| Alert::new(&rule.name, labels, observed.clone()));
            alert.observed = observed;
            render_summary(alert, rule, json!({ "metric": sample.name, "value": sample.value }));
            self.step_alert(rule, &fp, at);
        }
    }

    /// Steps an alert to `at` before new input changes what it holds, so
    /// that a gap since the last input (a pending period cut short, a
    /// window that emptied) is seen even if nothing evaluated meanwhile.
    fn catch_up(&mut self, rule: &Rule, fp: &str, at: u64) {
        if self.alerts.contains_key(fp) {
            self.step_alert(rule, fp, at);
        }
    }

    /// Steps one alert to `now` and, if it fires, makes sure each of its
    /// rule's receivers has a group for it.
    fn step_alert(&mut self, rule: &Rule, fp: &str, now: u64) {
        let Some(alert) = self.alerts.get_mut(fp) else { return };
        alert.step(rule, now);
        if alert.phase != Phase::Firing {
            return;
        }
        let labels = group_labels(&rule.group_by, &alert.labels);
        let created_at = alert.starts_at.unwrap_or(now);
        for receiver in &rule.notify {
            let key = group_key(receiver, &rule.name, &labels);
            if !self.groups.contains_key(&key) {
                self.groups_made += 1;
                let id = format!(
                    "{}-{}",
                    fingerprint(&Labels::from([("group".into(), key.clone())])),
                    self.groups_made
                );
                self.groups.insert(
                    key,
                    Group {
                        id,
                        receiver: receiver.clone(),
                        rule: rule.name.clone(),
                        group_by: rule.group_by.clone(),
                        labels: labels.clone(),
                        created_at,
                        seq: 0,
                        last_sent: None,
                        notified: BTreeSet::new(),
                    },
                );
            }
        }
    }

    /// Brings every alert to `now` (pending periods that ended, windows
    /// that emptied, events and samples that grew old) and forgets what no
    /// longer matters: alerts of rules that are gone or changed, groups
    /// whose rule, receiver or grouping changed, alerts and groups that
    /// were inactive or resolved and notified, old silences and rate
    /// windows. Call it before [`State::plan`], and after applying new
    /// rules.
    pub fn evaluate(&mut self, rules: &Rules, now: u64) {
        self.alerts.retain(|_, alert| {
            rules.rule(&alert.rule).is_some_and(|rule| {
                alert.observed.fits(rule) && rule.labels.iter().all(|(k, v)| alert.labels.get(k) == Some(v))
            })
        });
        let fingerprints: Vec<String> = self.alerts.keys().cloned().collect();
        for fp in fingerprints {
            if let Some(rule) = self.alerts.get(&fp).and_then(|a| rules.rule(&a.rule)) {
                self.step_alert(rule, &fp, now);
            }
        }

        self.groups.retain(|_, group| {
            rules.receiver(&group.receiver).is_some()
                && rules.rule(&group.rule).is_some_and(|rule| {
                    rule.notify.contains(&group.receiver) && rule.group_by == group.group_by
                })
        });
        let alerts = &self.alerts;
        for group in self.groups.values_mut() {
            let mut notified = std::mem::take(&mut group.notified);
            notified.retain(|fp| alerts.get(fp).is_some_and(|a| member(group, a)));
            group.notified = notified;
        }
        self.groups.retain(|_, group| !group.notified.is_empty() || has_firing_member(group, alerts));

        let told: BTreeSet<&String> = self.groups.values().flat_map(|g| &g.notified).collect();
        let keep: BTreeSet<String> = self
            .alerts
            .iter()
            .filter(|(fp, alert)| {
                let idle = rules.rule(&alert.rule).is_none_or(|rule| alert.observed.idle(rule, now));
                match alert.phase {
                    Phase::Pending | Phase::Firing => true,
                    Phase::Inactive => !idle,
                    Phase::Resolved => !idle || told.contains(fp),
                }
            })
            .map(|(fp, _)| fp.clone())
            .collect();
        self.alerts.retain(|fp, _| keep.contains(fp));

        self.silences.retain(|_, s| s.ends_at.saturating_add(SILENCE_RETENTION) > now);
        self.sent.retain(|rule, times| {
            let per = rules.rule(rule).and_then(|r| r.rate_limit).map_or(0, |limit| limit.per);
            times.retain(|t| t.saturating_add(per) > now);
            !times.is_empty()
        });
    }

    /// Whether `alert` is muted at `now`: by an active silence, or by an
    /// inhibit rule while a firing source alert has the same `equal`
    /// labels.
    pub fn muted(&self, rules: &Rules, fp: &str, alert: &Alert, now: u64) -> bool {
        self.silences.values().any(|s| s.mutes(&alert.labels, now))
            || rules.inhibits.iter().any(|inhibit| {
                inhibit.is_target(&alert.labels)
                    && self.alerts.iter().any(|(source_fp, source)| {
                        source_fp != fp
                            && source.phase == Phase::Firing
                            && inhibit.inhibits(&source.labels, &alert.labels)
                    })
            })
    }

    /// The notifications due at `now`, by the policy in the crate's doc,
    /// and when to call again. Pure: the same state, rules and time give
    /// the same plan, ids included. Call [`State::evaluate`] first.
    pub fn plan(&self, rules: &Rules, now: u64) -> Plan {
        let mut notifications = Vec::new();
        let mut next_wake = None;
        let mut planned: BTreeMap<&str, usize> = BTreeMap::new();
        for (key, group) in &self.groups {
            let Some(rule) = rules.rule(&group.rule) else { continue };
            let mut firing = Vec::new();
            let mut resolved = Vec::new();
            let mut still_firing = false;
            for (fp, alert) in self.alerts.iter().filter(|(_, a)| member(group, a)) {
                let told = group.notified.contains(fp);
                if alert.phase == Phase::Firing {
                    still_firing |= told;
                    if !self.muted(rules, fp, alert, now) {
                        firing.push((fp, alert));
                    }
                } else if told {
                    resolved.push((fp, alert));
                }
            }
            let news = firing.iter().any(|(fp, _)| !group.notified.contains(*fp)) || !resolved.is_empty();
            let timing = rule.timing;
            let mut due = match group.last_sent {
                None if firing.is_empty() => continue,
                None => group.created_at.saturating_add(timing.group_wait),
                Some(last) if news => last.saturating_add(timing.group_interval),
                Some(last) if !firing.is_empty() => last.saturating_add(timing.repeat_interval),
                Some(_) => continue,
            };
            if let Some(limit) = rule.rate_limit {
                let recent: Vec<u64> = self
                    .sent
                    .get(&rule.name)
                    .map(|times| {
                        times.iter().copied().filter(|t| t.saturating_add(limit.per) > now).collect()
                    })
                    .unwrap_or_default();
                let used = recent.len() + planned.get(rule.name.as_str()).copied().unwrap_or(0);
                if let Some(over) = used.checked_sub(limit.count as usize) {
                    // Waits for the slot that frees first; one planned
                    // now frees a period from now.
                    let frees_at = recent.get(over).copied().unwrap_or(now).saturating_add(limit.per);
                    due = due.max(frees_at);
                }
            }
            if now < due {
                next_wake = earliest(next_wake, due);
                continue;
            }
            *planned.entry(rule.name.as_str()).or_default() += 1;
            let seq = group.seq + 1;
            let notified = |(fp, alert): (&String, &Alert), status| NotifiedAlert {
                fingerprint: fp.clone(),
                status,
                labels: alert.labels.clone(),
                annotations: alert.annotations.clone(),
                starts_at: alert.starts_at.unwrap_or(group.created_at),
                ends_at: match status {
                    Status::Firing => None,
                    Status::Resolved => Some(alert.ends_at.unwrap_or(now)),
                },
            };
            let status = if firing.is_empty() && !still_firing { Status::Resolved } else { Status::Firing };
            if status == Status::Firing {
                // Once acknowledged, the group repeats from now.
                next_wake = earliest(next_wake, now.saturating_add(timing.repeat_interval));
            }
            let alerts = (firing.into_iter().map(|a| notified(a, Status::Firing)))
                .chain(resolved.into_iter().map(|a| notified(a, Status::Resolved)))
                .collect();
            notifications.push(Notification {
                id: format!("{}-{seq}", group.id),
                group_key: key.clone(),
                group_id: group.id.clone(),
                seq,
                receiver: group.receiver.clone(),
                rule: group.rule.clone(),
                at: now,
                status,
                group_labels: group.labels.clone(),
                alerts,
            });
        }

        for alert in self.alerts.values() {
            if let Some(at) = rules.rule(&alert.rule).and_then(|rule| alert.next_change(rule, now)) {
                next_wake = earliest(next_wake, at);
            }
        }
        for s in self.silences.values() {
            for at in [s.starts_at, s.ends_at] {
                if at > now {
                    next_wake = earliest(next_wake, at);
                }
            }
        }
        Plan { notifications, next_wake: next_wake.filter(|at| *at > now) }
    }

    /// Records `notification` as sent: the group's receiver now knows what
    /// it says, and it waits in the outbox until [`State::delivered`].
    /// Persist the state after this and before delivering. Whether it was
    /// taken: one acknowledged already, or no longer current (a restart
    /// re-planned its group), changes nothing.
    pub fn acknowledge(&mut self, notification: &Notification) -> bool {
        let Some(group) = self.groups.get_mut(&notification.group_key) else { return false };
        if group.id != notification.group_id || notification.seq != group.seq + 1 {
            return false;
        }
        group.seq = notification.seq;
        group.last_sent = Some(notification.at);
        for alert in &notification.alerts {
            match alert.status {
                Status::Firing => group.notified.insert(alert.fingerprint.clone()),
                Status::Resolved => group.notified.remove(&alert.fingerprint),
            };
        }
        let done = group.notified.is_empty() && !has_firing_member(group, &self.alerts);
        if done {
            self.groups.remove(&notification.group_key);
        }
        let times = self.sent.entry(notification.rule.clone()).or_default();
        times.push(notification.at);
        let excess = times.len().saturating_sub(10_000);
        times.drain(..excess);
        self.outbox.push(notification.clone());
        true
    }

    /// The notifications acknowledged and not yet delivered, oldest
    /// first: after a restart, deliver these (again) before planning.
    pub fn undelivered(&self) -> &[Notification] {
        &self.outbox
    }

    /// Takes the notification `id` out of the outbox once its receiver
    /// has it. Whether it was there.
    pub fn delivered(&mut self, id: &str) -> bool {
        let before = self.outbox.len();
        self.outbox.retain(|n| n.id != id);
        self.outbox.len() != before
    }

    /// Adds (or replaces) a silence, once it passes its checks.
    pub fn add_silence(&mut self, silence: Silence) -> Result<(), silence::Error> {
        silence.validate()?;
        self.silences.insert(silence.id.clone(), silence);
        Ok(())
    }

    /// Ends a silence at `now`: it stops muting at once. Whether it was
    /// there.
    pub fn expire_silence(&mut self, id: &str, now: u64) -> bool {
        let Some(silence) = self.silences.get_mut(id) else { return false };
        silence.ends_at = silence.ends_at.min(now);
        true
    }
}

#[cfg(test)]
mod tests;
