//! The policy of the crate's doc, a test per sentence, driven the way the
//! daemon drives the engine: observe, evaluate, plan, acknowledge,
//! deliver, and sleep until the plan's next wake.

use serde_json::{Value, json};

use super::*;
use crate::silence::Matcher;

const S: u64 = 1000;
const M: u64 = 60 * S;
const H: u64 = 60 * M;
/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

const RECEIVERS: &str = r#"
[[receiver]]
name = "hook"
webhook = { url = "http://127.0.0.1:9000/" }
[[receiver]]
name = "ops"
record = {}
"#;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The daemon, with a receiver that takes everything.
struct World {
    rules: Rules,
    state: State,
    now: u64,
    sent: Vec<Notification>,
}

impl World {
    fn new(rules: &str) -> World {
        let rules = Rules::parse(&format!("{RECEIVERS}\n{rules}")).unwrap_or_else(|e| panic!("{e}"));
        World { rules, state: State::default(), now: T0, sent: Vec::new() }
    }

    /// One wake: evaluate, plan, then acknowledge and deliver each
    /// notification. The next wake.
    fn tick(&mut self) -> Option<u64> {
        self.state.evaluate(&self.rules, self.now);
        let plan = self.state.plan(&self.rules, self.now);
        for n in plan.notifications {
            assert!(self.state.acknowledge(&n), "{n:?}");
            assert!(self.state.delivered(&n.id));
            self.sent.push(n);
        }
        plan.next_wake
    }

    /// Runs the daemon's loop until `to`, waking only when told to.
    fn until(&mut self, to: u64) {
        while let Some(wake) = self.tick().filter(|wake| *wake <= to) {
            assert!(wake > self.now);
            self.now = wake;
        }
        self.now = to;
        self.tick();
    }

    fn sample(&mut self, pairs: &[(&str, &str)], value: f64) {
        self.sample_of("m", pairs, value);
    }

    fn sample_of(&mut self, metric: &str, pairs: &[(&str, &str)], value: f64) {
        let sample = Sample { name: metric.into(), labels: labels(pairs), value };
        self.state.observe_sample(&self.rules, &sample, self.now);
        self.tick();
    }

    fn put(&mut self, key: &str, value: Value) {
        self.state.observe_event(&self.rules, &EventInput::put(key, value.to_string().as_bytes()), self.now);
        self.tick();
    }

    fn delete(&mut self, key: &str) {
        self.state.observe_event(&self.rules, &EventInput::delete(key), self.now);
        self.tick();
    }

    fn log(&mut self, source: &str, line: &str) {
        self.state.observe_log(&self.rules, source, line, self.now);
        self.tick();
    }

    fn silence(&mut self, id: &str, matchers: &[&str], ends_at: u64) {
        let silence = Silence {
            id: id.into(),
            matchers: matchers.iter().map(|m| Matcher::parse(m).unwrap()).collect(),
            starts_at: self.now,
            ends_at,
            created_by: "test".into(),
            comment: String::new(),
        };
        self.state.add_silence(silence).unwrap();
        self.tick();
    }

    /// The notifications sent since the last call, each as
    /// `SECONDS_AFTER_T0 RECEIVER STATUS +FIRING -RESOLVED`, alerts named
    /// by their `key`, `pod` or `source` label.
    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.sent).iter().map(brief).collect()
    }

    /// The one alert with these labels (among others).
    fn alert(&self, pairs: &[(&str, &str)]) -> &Alert {
        let want = labels(pairs);
        let found: Vec<&Alert> = self
            .state
            .alerts
            .values()
            .filter(|a| want.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            .collect();
        assert_eq!(found.len(), 1, "{pairs:?} in {:?}", self.state.alerts);
        found[0]
    }
}

fn brief(n: &Notification) -> String {
    let mut out = format!(
        "{}s {} {}",
        (n.at - T0) / S,
        n.receiver,
        match n.status {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    );
    let mut names: Vec<(bool, &str)> = n
        .alerts
        .iter()
        .map(|a| {
            let name =
                ["key", "pod", "source"].iter().find_map(|l| a.labels.get(*l)).map_or("", String::as_str);
            (a.status == Status::Resolved, name)
        })
        .collect();
    names.sort();
    for (resolved, name) in names {
        out.push_str(&format!(" {}{name}", if resolved { '-' } else { '+' }));
    }
    out
}

/// A metric rule on `m` with `extra` lines, notifying `hook`.
fn metric_rule(extra: &str) -> String {
    format!(
        r#"
[[rule]]
name = "high"
metric = {{ name = "m", op = ">", value = 0.5 }}
notify = ["hook"]
{extra}
"#
    )
}

// An alert's life.

#[test]
fn a_condition_that_holds_fires_at_once_when_the_rule_has_no_pending_period() {
    let mut w = World::new(&metric_rule(""));
    w.sample(&[("pod", "a")], 1.0);
    let alert = w.alert(&[("pod", "a")]);
    assert_eq!((alert.phase, alert.starts_at), (Phase::Firing, Some(T0)));
    assert_eq!(alert.labels, labels(&[("pod", "a"), ("rule", "high")]));
}

#[test]
fn a_pending_alert_fires_only_once_the_condition_held_for_the_whole_period() {
    let mut w = World::new(&metric_rule("").replace("value = 0.5", "value = 0.5, for = \"1m\""));
    for i in 0..=4 {
        w.now = T0 + i * 15 * S;
        w.sample(&[("pod", "a")], 1.0);
        let want = if i < 4 { Phase::Pending } else { Phase::Firing };
        assert_eq!(w.alert(&[("pod", "a")]).phase, want, "after {i} samples");
    }
    assert_eq!(w.alert(&[("pod", "a")]).starts_at, Some(T0 + M));
}

#[test]
fn an_alert_that_stops_holding_while_pending_is_never_notified() {
    let mut w =
        World::new(&metric_rule("group_wait = \"0s\"").replace("value = 0.5", "value = 0.5, for = \"1m\""));
    w.sample(&[("pod", "a")], 1.0);
    w.now = T0 + 50 * S;
    w.sample(&[("pod", "a")], 0.0);
    // Inactive, and with nothing left to say, forgotten.
    assert!(w.state.alerts.is_empty(), "{:?}", w.state.alerts);
    w.now = T0 + 70 * S;
    w.sample(&[("pod", "a")], 1.0);
    assert_eq!(w.alert(&[("pod", "a")]).phase, Phase::Pending);
    w.until(T0 + 125 * S);
    // Pending again from 70 s, so firing at 130 s, not at 60 or 120.
    assert_eq!(w.take(), Vec::<String>::new());
    w.until(T0 + 10 * M);
    assert_eq!(w.take(), ["130s hook firing +a", "430s hook resolved -a"]);
}

#[test]
fn a_firing_alert_resolves_once_its_condition_has_not_held_for_keep_firing_for() {
    let mut w = World::new(&metric_rule("keep_firing_for = \"2m\""));
    w.sample(&[("pod", "a")], 1.0);
    w.now = T0 + M;
    w.sample(&[("pod", "a")], 0.0);
    w.until(T0 + 3 * M - 1);
    assert_eq!(w.alert(&[("pod", "a")]).phase, Phase::Firing);
    w.until(T0 + 3 * M);
    let alert = w.alert(&[("pod", "a")]);
    assert_eq!((alert.phase, alert.ends_at), (Phase::Resolved, Some(T0 + 3 * M)));
    // Back above the threshold in time: no resolution at all.
    let mut w = World::new(&metric_rule("keep_firing_for = \"2m\""));
    w.sample(&[("pod", "a")], 1.0);
    w.now = T0 + M;
    w.sample(&[("pod", "a")], 0.0);
    w.now = T0 + 2 * M;
    w.sample(&[("pod", "a")], 1.0);
    w.until(T0 + 4 * M);
    assert_eq!(w.alert(&[("pod", "a")]).phase, Phase::Firing);
    assert_eq!(w.alert(&[("pod", "a")]).starts_at, Some(T0));
}

#[test]
fn a_metric_series_with_no_sample_for_stale_after_stops_holding() {
    let mut w = World::new(&metric_rule(""));
    w.sample(&[("pod", "a")], 1.0);
    w.until(T0 + 5 * M - 1);
    assert_eq!(w.alert(&[("pod", "a")]).phase, Phase::Firing);
    w.until(T0 + 5 * M);
    assert_eq!(w.alert(&[("pod", "a")]).ends_at, Some(T0 + 5 * M));
}

const EVENT_RULE: &str = r#"
[[rule]]
name = "failed"
event = { prefix = "machines/", match = { "status.state" = "failed" } }
summary = "machine {{ key }} failed: {{ value.status.reason }}"
notify = ["hook"]
group_wait = "0s"
"#;

#[test]
fn an_event_alert_fires_at_a_matching_event_and_resolves_resolve_after_the_last_one() {
    let mut w = World::new(EVENT_RULE);
    w.put("machines/web", json!({ "status": { "state": "running" } }));
    assert!(w.state.alerts.is_empty());
    w.put("machines/web", json!({ "status": { "state": "failed", "reason": "oom" } }));
    let alert = w.alert(&[("key", "machines/web")]);
    assert_eq!(alert.phase, Phase::Firing);
    assert_eq!(alert.annotations["summary"], "machine machines/web failed: oom");
    w.now = T0 + 3 * M;
    w.put("machines/web", json!({ "status": { "state": "failed", "reason": "oom again" } }));
    w.until(T0 + 8 * M - 1);
    assert_eq!(w.alert(&[("key", "machines/web")]).phase, Phase::Firing);
    w.until(T0 + 8 * M);
    assert_eq!(w.take(), ["0s hook firing +machines/web", "480s hook resolved -machines/web"]);
}

#[test]
fn an_event_alert_resolves_at_once_when_a_later_event_for_its_key_no_longer_matches() {
    let rules =
        EVENT_RULE.replace("prefix = \"machines/\"", "prefix = \"machines/\", resolve_after = \"never\"");
    let mut w = World::new(&(rules + "repeat_interval = \"24h\""));
    for key in ["machines/web", "machines/db"] {
        let event = EventInput::put(key, br#"{ "status": { "state": "failed" } }"#);
        w.state.observe_event(&w.rules, &event, w.now);
    }
    w.until(T0 + 30 * H);
    // Never on its own: only a change for the key ends it.
    assert_eq!(w.alert(&[("key", "machines/web")]).phase, Phase::Firing);
    w.put("machines/web", json!({ "status": { "state": "running" } }));
    assert_eq!(w.alert(&[("key", "machines/web")]).ends_at, Some(T0 + 30 * H));
    w.now += M;
    w.delete("machines/db");
    assert_eq!(w.alert(&[("key", "machines/db")]).phase, Phase::Resolved);
    w.until(T0 + 40 * H);
    assert_eq!(
        w.take(),
        [
            "0s hook firing +machines/db +machines/web",
            "86400s hook firing +machines/db +machines/web",
            "108000s hook firing +machines/db -machines/web",
            "108300s hook resolved -machines/db",
        ]
    );
}

#[test]
fn a_late_evaluation_gives_the_same_alerts() {
    let rules = metric_rule("keep_firing_for = \"40s\"").replace("value = 0.5", "value = 0.5, for = \"30s\"");
    // (seconds, value) of pod a's samples.
    let samples =
        [(0, 1.0), (10, 1.0), (20, 0.0), (25, 1.0), (50, 1.0), (70, 1.0), (80, 0.0), (100, 0.0), (200, 1.0)];
    let mut often = World::new(&rules);
    let mut late = World::new(&rules);
    for (at, value) in samples {
        often.until(T0 + at * S);
        often.sample(&[("pod", "a")], value);
        // Observed, never evaluated until the end.
        let sample = Sample { name: "m".into(), labels: labels(&[("pod", "a")]), value };
        late.state.observe_sample(&late.rules, &sample, T0 + at * S);
    }
    often.until(T0 + 215 * S);
    late.state.evaluate(&late.rules, T0 + 215 * S);
    assert_eq!(late.state.alerts, often.state.alerts);
    // Pending from 25 s, firing from 55 s, stopped holding at 80 s, resolved 40 s later,
    // pending again from 200 s.
    let a = often.alert(&[("pod", "a")]);
    assert_eq!((a.phase, a.starts_at, a.ends_at), (Phase::Pending, Some(T0 + 55 * S), Some(T0 + 120 * S)));
}

#[test]
fn log_lines_fire_per_source_while_enough_match_in_the_window() {
    let mut w = World::new(
        r#"
[[rule]]
name = "errors"
log = { source = "app:*", regex = "ERROR", count = ">= 3", window = "1m" }
summary = "{{ source }}: {{ line }}"
notify = ["hook"]
group_wait = "0s"
"#,
    );
    for i in 0..3 {
        w.now = T0 + i * 10 * S;
        w.log("app:shop", &format!("ERROR {i}"));
        w.log("app:web", "ERROR");
        w.log("app:web", "fine");
        w.log("hearth:alerts", "ERROR delivering");
    }
    // Both sources saw 3 by 20 s; the daemon's own source never counts.
    assert_eq!(w.state.alerts.len(), 2);
    assert_eq!(w.alert(&[("source", "app:shop")]).annotations["summary"], "app:shop: ERROR 2");
    w.until(T0 + 60 * S - 1);
    assert_eq!(w.alert(&[("source", "app:web")]).phase, Phase::Firing);
    w.until(T0 + 10 * M);
    // shop was notified first; web joined, then both left the window at
    // 60 s, before the group's next turn: the receiver only hears of shop.
    assert_eq!(w.take(), ["20s hook firing +app:shop", "320s hook resolved -app:shop"]);
}

// Groups.

#[test]
fn alerts_are_grouped_per_receiver_per_rule_by_the_group_by_labels() {
    let mut w = World::new(
        &metric_rule("group_by = [\"app\"]").replace("notify = [\"hook\"]", "notify = [\"hook\", \"ops\"]"),
    );
    w.sample(&[("app", "shop"), ("pod", "a")], 1.0);
    w.sample(&[("app", "shop"), ("pod", "b")], 1.0);
    w.sample(&[("app", "web"), ("pod", "c")], 1.0);
    w.until(T0 + 30 * S);
    assert_eq!(
        w.take(),
        ["30s hook firing +a +b", "30s hook firing +c", "30s ops firing +a +b", "30s ops firing +c"]
    );
    let keys: Vec<&String> = w.state.groups.keys().collect();
    assert_eq!(
        keys,
        [
            r#"hook/high{app="shop"}"#,
            r#"hook/high{app="web"}"#,
            r#"ops/high{app="shop"}"#,
            r#"ops/high{app="web"}"#
        ]
    );
}

#[test]
fn a_new_group_waits_group_wait_collecting_the_alerts_that_fire_meanwhile() {
    let mut w = World::new(&metric_rule(""));
    w.sample(&[("pod", "a")], 1.0);
    w.now = T0 + 10 * S;
    w.sample(&[("pod", "b")], 1.0);
    w.until(T0 + 30 * S - 1);
    assert_eq!(w.take(), Vec::<String>::new());
    w.until(T0 + 30 * S);
    assert_eq!(w.take(), ["30s hook firing +a +b"]);
}

#[test]
fn a_group_whose_alerts_all_resolved_before_group_wait_sends_nothing() {
    let mut w = World::new(&metric_rule(""));
    w.sample(&[("pod", "a")], 1.0);
    w.now = T0 + 10 * S;
    w.sample(&[("pod", "a")], 0.0);
    w.until(T0 + H);
    assert_eq!(w.take(), Vec::<String>::new());
    assert!(w.state.groups.is_empty() && w.state.alerts.is_empty(), "{:?}", w.state);
}

#[test]
fn further_changes_to_a_group_are_notified_at_most_once_every_group_interval() {
    let mut w = World::new(&metric_rule("").replace("value = 0.5", "value = 0.5, stale_after = \"1d\""));
    w.sample(&[("pod", "a")], 1.0);
    w.sample(&[("pod", "b")], 1.0);
    w.until(T0 + 30 * S);
    w.now = T0 + 40 * S;
    w.sample(&[("pod", "c")], 1.0);
    w.now = T0 + 50 * S;
    w.sample(&[("pod", "a")], 0.0);
    w.until(T0 + 5 * M + 30 * S - 1);
    assert_eq!(w.take(), ["30s hook firing +a +b"]);
    w.until(T0 + 5 * M + 30 * S);
    assert_eq!(w.take(), ["330s hook firing +b +c -a"]);
    // A change right after waits a whole interval again.
    w.now = T0 + 6 * M;
    w.sample(&[("pod", "b")], 0.0);
    w.until(T0 + 15 * M);
    assert_eq!(w.take(), ["630s hook firing +c -b"]);
}

#[test]
fn an_unchanged_firing_group_is_notified_again_every_repeat_interval() {
    let mut w = World::new(
        &metric_rule("repeat_interval = \"1h\"").replace("value = 0.5", "value = 0.5, stale_after = \"1d\""),
    );
    w.sample(&[("pod", "a")], 1.0);
    w.until(T0 + 3 * H);
    assert_eq!(w.take(), ["30s hook firing +a", "3630s hook firing +a", "7230s hook firing +a"]);
}

#[test]
fn exactly_one_resolved_notification_is_sent_when_every_alert_the_receiver_was_told_of_has_resolved() {
    let mut w = World::new(&metric_rule("group_interval = \"1m\""));
    w.sample(&[("pod", "a")], 1.0);
    w.sample(&[("pod", "b")], 1.0);
    w.until(T0 + M);
    w.sample(&[("pod", "a")], 0.0);
    w.until(T0 + 2 * M);
    w.sample(&[("pod", "b")], 0.0);
    w.until(T0 + 24 * H);
    assert_eq!(w.take(), ["30s hook firing +a +b", "90s hook firing +b -a", "150s hook resolved -b"]);
    assert!(w.state.groups.is_empty() && w.state.alerts.is_empty(), "{:?}", w.state);
}

// Muting.

#[test]
fn a_group_whose_alerts_are_all_silenced_sends_nothing() {
    let mut w = World::new(&metric_rule(""));
    w.silence("s1", &["rule=high"], T0 + H);
    w.sample(&[("pod", "a")], 1.0);
    w.sample(&[("pod", "b")], 1.0);
    w.now = T0 + 10 * M;
    w.sample(&[("pod", "a")], 1.0);
    w.sample(&[("pod", "b")], 0.0);
    w.until(T0 + 2 * H);
    assert_eq!(w.take(), Vec::<String>::new());
}

#[test]
fn a_resolved_notification_only_covers_alerts_that_were_notified_firing() {
    let mut w = World::new(&metric_rule("group_interval = \"1m\""));
    w.silence("s1", &["pod=b"], T0 + H);
    w.sample(&[("pod", "a")], 1.0);
    w.sample(&[("pod", "b")], 1.0);
    w.until(T0 + M);
    w.sample(&[("pod", "a")], 0.0);
    w.sample(&[("pod", "b")], 0.0);
    w.until(T0 + 2 * H);
    assert_eq!(w.take(), ["30s hook firing +a", "90s hook resolved -a"]);
}

#[test]
fn an_alert_notified_firing_and_silenced_since_is_not_repeated_but_its_resolution_is_sent() {
    let rules =
        metric_rule("repeat_interval = \"1h\"").replace("value = 0.5", "value = 0.5, stale_after = \"1d\"");
    let mut w = World::new(&rules);
    w.sample(&[("pod", "a")], 1.0);
    w.sample(&[("pod", "b")], 1.0);
    w.until(T0 + M);
    w.silence("s1", &["pod=a"], T0 + 10 * H);
    w.until(T0 + 2 * H + M);
    // The repeats leave a out.
    assert_eq!(w.take(), ["30s hook firing +a +b", "3630s hook firing +b", "7230s hook firing +b"]);
    w.sample(&[("pod", "b")], 0.0);
    w.until(T0 + 3 * H);
    // Still firing, for a's sake.
    assert_eq!(w.take(), ["7530s hook firing -b"]);
    w.sample(&[("pod", "a")], 0.0);
    w.until(T0 + 4 * H);
    assert_eq!(w.take(), ["10800s hook resolved -a"]);
}

#[test]
fn an_expired_silence_stops_muting_at_once() {
    let mut w = World::new(&metric_rule("").replace("value = 0.5", "value = 0.5, stale_after = \"1d\""));
    w.silence("s1", &["pod=a"], T0 + H);
    w.sample(&[("pod", "a")], 1.0);
    w.until(T0 + 10 * M);
    assert_eq!(w.take(), Vec::<String>::new());
    assert!(w.state.expire_silence("s1", w.now));
    w.tick();
    assert_eq!(w.take(), ["600s hook firing +a"]);
    // And one that runs out by itself, at its end.
    let mut w = World::new(&metric_rule("").replace("value = 0.5", "value = 0.5, stale_after = \"1d\""));
    w.silence("s1", &["pod=a"], T0 + 10 * M);
    w.sample(&[("pod", "a")], 1.0);
    w.until(T0 + H);
    assert_eq!(w.take(), ["600s hook firing +a"]);
}

#[test]
fn an_alert_is_inhibited_while_a_firing_source_alert_has_the_same_equal_labels() {
    let rules = r#"
[[rule]]
name = "down"
metric = { name = "up", op = "<", value = 1, stale_after = "1d" }
labels = { severity = "critical" }
notify = ["ops"]
group_wait = "0s"
[[rule]]
name = "slow"
metric = { name = "m", op = ">", value = 0.5, stale_after = "1d" }
labels = { severity = "warning" }
notify = ["hook"]
group_wait = "0s"
group_interval = "1m"
[[inhibit]]
source = { severity = "critical" }
target = { severity = "warning" }
equal = ["machine"]
"#;
    let mut w = World::new(rules);
    w.sample_of("up", &[("machine", "a"), ("pod", "up-a")], 0.0);
    w.sample(&[("machine", "a"), ("pod", "a")], 1.0);
    w.sample(&[("machine", "b"), ("pod", "b")], 1.0);
    w.until(T0 + 5 * M);
    // a's warning is muted while machine a is down; b's is not.
    assert_eq!(w.take(), ["0s ops firing +up-a", "0s hook firing +b"]);
    // Once the source resolves, the target is no longer muted.
    w.sample_of("up", &[("machine", "a"), ("pod", "up-a")], 1.0);
    w.until(T0 + 10 * M);
    assert_eq!(w.take(), ["300s hook firing +a +b", "300s ops resolved -up-a"]);
}

#[test]
fn a_rate_limit_holds_notifications_over_the_limit_and_never_drops_them() {
    let mut w = World::new(
        r#"
[[rule]]
name = "failed"
event = { prefix = "m/", resolve_after = "10m" }
group_by = ["key"]
notify = ["hook"]
group_wait = "0s"
group_interval = "1m"
rate_limit = "2/h"
"#,
    );
    for key in ["m/a", "m/b", "m/c"] {
        w.put(key, json!(1));
    }
    w.until(T0 + 3 * H);
    assert_eq!(
        w.take(),
        [
            "0s hook firing +m/a",
            "0s hook firing +m/b",
            // c fired and resolved while held: its group has nothing to say.
            // a and b's resolutions wait for slots.
            "3600s hook resolved -m/a",
            "3600s hook resolved -m/b",
        ]
    );
}

// Crashes.

fn restart(state: &State) -> State {
    serde_json::from_str(&serde_json::to_string(state).unwrap()).unwrap()
}

#[test]
fn a_restart_between_plan_and_acknowledge_plans_again_and_nothing_was_sent() {
    let mut w = World::new(&metric_rule(""));
    w.sample(&[("pod", "a")], 1.0);
    w.state.evaluate(&w.rules, T0 + 30 * S);
    let planned = w.state.plan(&w.rules, T0 + 30 * S);
    assert_eq!(planned.notifications.len(), 1);
    // Killed here: the state on disk is as before the plan.
    let mut again = restart(&w.state);
    again.evaluate(&w.rules, T0 + 31 * S);
    let replanned = again.plan(&w.rules, T0 + 31 * S);
    assert_eq!(replanned.notifications.len(), 1);
    assert_eq!(replanned.notifications[0].id, planned.notifications[0].id);
    assert!(again.undelivered().is_empty());
}

#[test]
fn a_restart_after_acknowledge_delivers_again_from_the_outbox_under_the_same_id() {
    let mut w = World::new(&metric_rule(""));
    w.sample(&[("pod", "a")], 1.0);
    w.state.evaluate(&w.rules, T0 + 30 * S);
    let n = w.state.plan(&w.rules, T0 + 30 * S).notifications.remove(0);
    assert!(w.state.acknowledge(&n));
    // Persisted, then killed during delivery.
    let mut state = restart(&w.state);
    assert_eq!(state.undelivered(), std::slice::from_ref(&n));
    // Nothing else is planned for the group: the notification counts as sent.
    state.evaluate(&w.rules, T0 + 31 * S);
    assert!(state.plan(&w.rules, T0 + 31 * S).notifications.is_empty());
    assert!(state.delivered(&n.id));
    assert!(state.undelivered().is_empty());
}

#[test]
fn no_resolved_notification_is_lost_when_the_alert_resolves_while_the_daemon_is_down() {
    let mut w = World::new(&metric_rule(""));
    w.sample(&[("pod", "a")], 1.0);
    w.state.evaluate(&w.rules, T0 + 30 * S);
    let n = w.state.plan(&w.rules, T0 + 30 * S).notifications.remove(0);
    assert!(w.state.acknowledge(&n));
    // Killed after acknowledging, down for an hour; the sample goes stale.
    w.state = restart(&w.state);
    w.now = T0 + H;
    let redelivered: Vec<String> = w.state.undelivered().iter().map(brief).collect();
    assert_eq!(redelivered, ["30s hook firing +a"]);
    assert!(w.state.delivered(&n.id));
    w.until(T0 + 2 * H);
    assert_eq!(w.take(), ["3600s hook resolved -a"]);
}

#[test]
fn acknowledging_twice_or_a_notification_no_longer_current_changes_nothing() {
    let mut w = World::new(&metric_rule("group_interval = \"1m\""));
    w.sample(&[("pod", "a")], 1.0);
    w.now = T0 + 30 * S;
    w.state.evaluate(&w.rules, T0 + 30 * S);
    let first = w.state.plan(&w.rules, T0 + 30 * S).notifications.remove(0);
    assert!(w.state.acknowledge(&first));
    let after = w.state.clone();
    assert!(!w.state.acknowledge(&first));
    assert_eq!(w.state, after);
    // A plan made before the first was acknowledged, for the same seq.
    let mut stale = first.clone();
    stale.at += 1;
    assert!(!w.state.acknowledge(&stale));
    // One for a group that has since been replaced by a new one of the same key.
    w.sample(&[("pod", "a")], 0.0);
    w.until(T0 + H);
    w.sample(&[("pod", "a")], 1.0);
    let old = Notification { seq: 1, ..first.clone() };
    let before = w.state.clone();
    assert!(!w.state.acknowledge(&old));
    assert_eq!(w.state, before);
}

/// A tiny deterministic generator for the property test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A receiver that deduplicates on ids and checks what it is told.
#[derive(Default)]
struct Receiver {
    seen: BTreeSet<String>,
    /// Per group key, the alerts it was told are firing.
    known: BTreeMap<String, BTreeSet<String>>,
    episodes: usize,
    resolved: usize,
    duplicates: usize,
}

impl Receiver {
    fn receive(&mut self, n: &Notification) {
        if !self.seen.insert(n.id.clone()) {
            self.duplicates += 1;
            return;
        }
        let known = self.known.entry(n.group_key.clone()).or_default();
        let was_empty = known.is_empty();
        for a in &n.alerts {
            match a.status {
                Status::Firing => {
                    known.insert(a.fingerprint.clone());
                }
                Status::Resolved => {
                    assert!(known.remove(&a.fingerprint), "resolved but never told firing: {n:?}")
                }
            }
        }
        if was_empty && !known.is_empty() {
            self.episodes += 1;
        }
        match n.status {
            Status::Resolved => {
                assert!(!was_empty && known.is_empty(), "{n:?}");
                self.resolved += 1;
            }
            Status::Firing => assert!(!known.is_empty(), "{n:?}"),
        }
    }
}

const PROPERTY_RULE: &str = r#"
[[rule]]
name = "high"
metric = { name = "m", op = ">", value = 0.5, for = "20s", stale_after = "1m" }
keep_firing_for = "30s"
notify = ["hook", "ops"]
group_by = ["app"]
group_wait = "30s"
group_interval = "1m"
repeat_interval = "5m"
rate_limit = "6/h"
"#;

/// One run of random samples, silences and crashes at every point of the
/// plan, acknowledge, deliver sequence; then quiet until all resolves.
fn run(seed: u64) -> Receiver {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut w = World::new(PROPERTY_RULE);
    let mut rx = Receiver::default();
    for _ in 0..300 {
        w.now += rng.below(40 * S) + 1;
        match rng.below(10) {
            0..=5 => {
                let pod = rng.below(4);
                let sample = Sample {
                    name: "m".into(),
                    labels: labels(&[("app", ["shop", "web"][pod as usize % 2]), ("pod", &pod.to_string())]),
                    value: rng.below(2) as f64,
                };
                w.state.observe_sample(&w.rules, &sample, w.now);
            }
            6 => {
                let pod = rng.below(4).to_string();
                let matcher = format!("pod={pod}");
                if w.state.silences.get(&pod).is_some_and(|s| s.active(w.now)) {
                    w.state.expire_silence(&pod, w.now);
                } else {
                    let silence = Silence {
                        id: pod,
                        matchers: vec![Matcher::parse(&matcher).unwrap()],
                        starts_at: w.now,
                        ends_at: w.now + rng.below(10 * M) + 1,
                        created_by: "test".into(),
                        comment: String::new(),
                    };
                    w.state.add_silence(silence).unwrap();
                }
            }
            _ => {}
        }
        w.state.evaluate(&w.rules, w.now);
        let mut disk = serde_json::to_string(&w.state).unwrap();
        let plan = w.state.plan(&w.rules, w.now);
        // 0: killed before acknowledging; 1: after, before delivering;
        // 2: after delivering, before recording it; else: no crash.
        let crash = rng.below(6);
        for n in &plan.notifications {
            if crash == 0 {
                break;
            }
            assert!(w.state.acknowledge(n));
            disk = serde_json::to_string(&w.state).unwrap();
            if crash == 1 {
                break;
            }
            rx.receive(n);
            if crash == 2 {
                break;
            }
            w.state.delivered(&n.id);
            disk = serde_json::to_string(&w.state).unwrap();
        }
        if crash <= 2 {
            w.state = serde_json::from_str(&disk).unwrap();
            for n in w.state.undelivered().to_vec() {
                rx.receive(&n);
                w.state.delivered(&n.id);
            }
        }
    }
    // Quiet: every series goes stale, everything resolves.
    let end = w.now + 2 * 24 * H;
    loop {
        w.state.evaluate(&w.rules, w.now);
        let plan = w.state.plan(&w.rules, w.now);
        for n in &plan.notifications {
            assert!(w.state.acknowledge(n));
            rx.receive(n);
            w.state.delivered(&n.id);
        }
        match plan.next_wake {
            Some(wake) if wake <= end => w.now = wake,
            _ => break,
        }
    }
    assert!(
        rx.known.values().all(BTreeSet::is_empty),
        "seed {seed}: still firing for the receiver: {:?}",
        rx.known
    );
    // What was resolved and notified is forgotten at the next evaluation.
    w.state.evaluate(&w.rules, w.now);
    assert!(
        w.state.alerts.is_empty() && w.state.groups.is_empty() && w.state.outbox.is_empty(),
        "seed {seed}: {:#?}",
        w.state
    );
    rx
}

#[test]
fn across_random_runs_and_restarts_resolved_notifications_match_the_groups_notified_firing() {
    let (mut episodes, mut duplicates) = (0, 0);
    for seed in 1..=60 {
        let rx = run(seed);
        assert_eq!(rx.resolved, rx.episodes, "seed {seed}");
        episodes += rx.episodes;
        duplicates += rx.duplicates;
    }
    // The runs did exercise the policy and the crashes.
    assert!(episodes > 100, "{episodes}");
    assert!(duplicates > 10, "{duplicates}");
}

// The self-trigger guard.

#[test]
fn a_notifications_own_effects_do_not_fire_its_rule() {
    let mut w = World::new(
        r#"
[[rule]]
name = "anything"
event = { prefix = "" }
notify = ["hook"]
[[rule]]
name = "watcher"
event = { prefix = "", include_alerts = true, match = { hearth_alert = { exists = true } } }
notify = ["ops"]
"#,
    );
    // What the daemon writes for the first rule's notification.
    w.put("alerts/history/anything/1", json!({ "status": "firing" }));
    let marked = json!({ "input": 1, "hearth_alert": { "rule": "anything", "notification": "x-1" } });
    w.put("workflows/runs/incident/1", marked);
    let rules: Vec<&str> = w.state.alerts.values().map(|a| a.rule.as_str()).collect();
    // The rule that opted in sees the marked run; the rule it names does not.
    assert_eq!(rules, ["watcher"]);
    // Nor does the opted-in rule see its own marks.
    let own = json!({ "hearth_alert": { "rule": "watcher", "notification": "y-1" } });
    w.put("workflows/runs/incident/2", own);
    assert_eq!(w.state.alerts.len(), 1);
    // Anything else reaches the first rule.
    w.put("apps/shop", json!({}));
    assert_eq!(w.alert(&[("key", "apps/shop")]).rule, "anything");
}

// Configuration changes, and the state as stored.

#[test]
fn new_rules_forget_alerts_and_groups_that_no_longer_exist() {
    let mut w = World::new(&(metric_rule("") + EVENT_RULE));
    w.sample(&[("pod", "a")], 1.0);
    w.put("machines/web", json!({ "status": { "state": "failed" } }));
    w.until(T0 + M);
    assert_eq!(w.state.groups.len(), 2);
    // The metric rule is gone; the event rule now groups by key.
    w.rules = Rules::parse(&format!("{RECEIVERS}\n{EVENT_RULE}\ngroup_by = [\"key\"]")).unwrap();
    w.tick();
    assert_eq!(w.state.alerts.len(), 1);
    let keys: Vec<&String> = w.state.groups.keys().collect();
    assert_eq!(keys, [r#"hook/failed{key="machines/web"}"#]);
}

#[test]
fn the_state_is_json_and_reads_back_equal() {
    let mut w = World::new(&(metric_rule("") + EVENT_RULE));
    w.sample(&[("pod", "a")], 1.0);
    w.put("machines/web", json!({ "status": { "state": "failed" } }));
    w.silence("s1", &["pod=~a|b"], T0 + H);
    w.log("app:shop", "x");
    w.until(T0 + M);
    let json = serde_json::to_value(&w.state).unwrap();
    assert!(json["alerts"].as_object().unwrap().len() == 2);
    let back: State = serde_json::from_value(json).unwrap();
    assert_eq!(back, w.state);
}

#[test]
fn an_event_alert_that_stops_matching_is_told_resolved() {
    let mut w = World::new(
        r#"
[[rule]]
name = "down"
event = { prefix = "probe/down", match = { state = "down" }, resolve_after = "never" }
labels = { severity = "critical", site = "a" }
notify = ["ops"]
group_wait = "0s"
group_interval = "1s"
"#,
    );
    w.put("probe/down", json!({ "state": "down" }));
    assert_eq!(w.take(), ["0s ops firing +probe/down"]);
    w.now += S;
    w.put("probe/down", json!({ "state": "up" }));
    w.until(T0 + M);
    assert_eq!(w.take(), ["1s ops resolved -probe/down"]);
}
