//! The service against a real store and a receiver that records what it
//! is handed. Named after the policy in the crate's doc.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_alerts::rules::Receiver;
use hearth_alerts::{Notification, Status};
use hearth_store::Store;
use hearth_store::redb::RedbStore;
use tokio::sync::watch;

use super::*;

/// Records every delivery; fails the first `failures` with `failure`.
/// With a store, also records the notifications that were not in the
/// saved outbox when they were delivered.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Notification>>,
    failures: Mutex<Vec<Failure>>,
    store: Option<Arc<dyn Store>>,
    unsaved: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Deliver for Recorder {
    async fn deliver(&self, _receiver: &Receiver, notification: &Notification) -> Result<(), Failure> {
        if let Some(store) = &self.store {
            let saved = store.get(keys::STATE).await.unwrap().unwrap();
            let saved: Persisted = serde_json::from_slice(&saved.value).unwrap();
            if !saved.state.undelivered().iter().any(|n| n.id == notification.id) {
                self.unsaved.lock().unwrap().push(notification.id.clone());
            }
        }
        self.seen.lock().unwrap().push(notification.clone());
        match self.failures.lock().unwrap().pop() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

struct Running {
    monitor: Monitor,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }
}

async fn start(store: &Arc<dyn Store>, recorder: &Arc<Recorder>) -> Running {
    let options = Options { external_url: "http://127.0.0.1:7070/alerts".into(), shared: false };
    let monitor = Monitor::open(store.clone(), recorder.clone(), options).await.unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(monitor.clone().run(rx));
    Running { monitor, stop, task }
}

fn store_in(dir: &Path) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(&dir.join("state.redb"), Default::default()).unwrap())
}

const RULES: &str = r#"
[[receiver]]
name = "hook"
webhook = { url = "http://127.0.0.1:9/alerts" }

[[rule]]
name = "machine-failed"
event = { prefix = "machines/", match = { state = "failed" }, resolve_after = "never" }
notify = ["hook"]
group_wait = "0s"
group_interval = "200ms"
"#;

async fn until<F: Fn() -> bool>(what: &str, check: F) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn seen(recorder: &Recorder) -> Vec<(String, Status)> {
    recorder.seen.lock().unwrap().iter().map(|n| (n.id.clone(), n.status)).collect()
}

#[tokio::test]
async fn an_event_that_matches_is_delivered_once_and_its_end_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    running.monitor.apply(RULES).await.unwrap();
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    until("the firing notification", || seen(&recorder).len() == 1).await;
    // The same state again changes nothing.
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    store.put("machines/db", br#"{"state":"running"}"#.to_vec(), None).await.unwrap();
    until("the resolved notification", || seen(&recorder).len() == 2).await;
    running.monitor.deliveries().wait_for(|n| *n >= 2).await.unwrap();
    let seen = seen(&recorder);
    assert_eq!(seen[0].1, Status::Firing);
    assert_eq!(seen[1].1, Status::Resolved);
    let history = running.monitor.history(&HistoryQuery { rule: None, limit: 10 }).await.unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].status, Status::Resolved, "newest first");
    running.stop().await;
}

#[tokio::test]
async fn after_a_restart_the_outbox_is_delivered_again_under_the_same_id_and_nothing_is_planned_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    // A receiver that is down: the notification stays in the outbox.
    let down = Arc::new(Recorder::default());
    *down.failures.lock().unwrap() = vec![Failure::retry("connection refused"); 100];
    let running = start(&store, &down).await;
    running.monitor.apply(RULES).await.unwrap();
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    until("a first attempt", || !seen(&down).is_empty()).await;
    let id = seen(&down)[0].0.clone();
    running.stop().await;

    let up = Arc::new(Recorder::default());
    let running = start(&store, &up).await;
    until("the delivery after the restart", || !seen(&up).is_empty()).await;
    assert_eq!(seen(&up), [(id, Status::Firing)]);
    // Nothing else is due: the group was told.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen(&up).len(), 1);
    assert!(running.monitor.state().await.undelivered().is_empty());
    running.stop().await;
}

#[tokio::test]
async fn events_written_while_the_service_was_down_are_seen_after_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    running.monitor.apply(RULES).await.unwrap();
    running.stop().await;
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    let running = start(&store, &recorder).await;
    until("the notification", || seen(&recorder).len() == 1).await;
    running.stop().await;
}

#[tokio::test]
async fn a_failure_that_would_fail_again_is_given_up_at_once_and_said_in_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    *recorder.failures.lock().unwrap() = vec![Failure::permanent("the receiver answered 404 Not Found")];
    let running = start(&store, &recorder).await;
    running.monitor.apply(RULES).await.unwrap();
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    let mut deliveries = running.monitor.deliveries();
    deliveries.wait_for(|n| *n >= 1).await.unwrap();
    let history = running.monitor.history(&HistoryQuery { rule: None, limit: 10 }).await.unwrap();
    assert_eq!(history[0].error.as_deref(), Some("the receiver answered 404 Not Found"));
    assert!(running.monitor.state().await.undelivered().is_empty());
    assert_eq!(seen(&recorder).len(), 1, "not retried");
    running.stop().await;
}

#[tokio::test]
async fn a_failure_worth_retrying_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    *recorder.failures.lock().unwrap() = vec![Failure::retry("503")];
    let running = start(&store, &recorder).await;
    running.monitor.apply(RULES).await.unwrap();
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    let mut deliveries = running.monitor.deliveries();
    deliveries.wait_for(|n| *n >= 1).await.unwrap();
    assert_eq!(seen(&recorder).len(), 2);
    let history = running.monitor.history(&HistoryQuery { rule: None, limit: 10 }).await.unwrap();
    assert_eq!((history[0].attempts, history[0].error.clone()), (2, None));
    running.stop().await;
}

#[tokio::test]
async fn a_silence_mutes_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    running.monitor.apply(RULES).await.unwrap();
    let silence = running
        .monitor
        .silence(&["rule=machine-failed".into()], Duration::from_secs(3600), "test", "maintenance")
        .await
        .unwrap();
    running.stop().await;
    let running = start(&store, &recorder).await;
    assert!(running.monitor.state().await.silences.contains_key(&silence.id));
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    let mut firing = false;
    for _ in 0..500 {
        let state = running.monitor.state().await;
        if state.alerts.values().any(|a| a.phase == hearth_alerts::Phase::Firing) {
            firing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(firing, "the alert fires");
    // Delivery would have been started by the tick that made it fire.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen(&recorder).is_empty(), "silenced");
    running.monitor.expire_silence(&silence.id).await.unwrap();
    until("the notification once the silence ends", || seen(&recorder).len() == 1).await;
    running.stop().await;
}

#[tokio::test]
async fn a_rules_file_that_does_not_check_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    running.monitor.apply(RULES).await.unwrap();
    let bad = RULES.replace("notify = [\"hook\"]", "notify = [\"pager\"]");
    let error = running.monitor.apply(&bad).await.unwrap_err().to_string();
    assert!(error.contains("unknown receiver \"pager\""), "{error}");
    assert_eq!(running.monitor.rules().await.0, RULES);
    let stored = store.get(keys::RULES).await.unwrap().unwrap();
    assert_eq!(stored.value, RULES.as_bytes());
    running.stop().await;
}

#[tokio::test]
async fn a_log_rule_fires_from_lines_and_a_metric_rule_from_samples() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    let rules = r#"
[[receiver]]
name = "hook"
webhook = { url = "http://127.0.0.1:9/alerts" }

[[rule]]
name = "panics"
log = { source = "app:shop", regex = "panicked", count = "> 2", window = "1m" }
notify = ["hook"]
group_wait = "0s"

[[rule]]
name = "errors"
metric = { name = "app_error_ratio", labels = { app = "shop" }, op = ">", value = 0.5 }
notify = ["hook"]
group_wait = "0s"
"#;
    running.monitor.apply(rules).await.unwrap();
    for _ in 0..3 {
        running.monitor.log("app:shop", "thread main panicked at src/lib.rs");
    }
    running.monitor.log("app:other", "panicked");
    until("the log alert", || seen(&recorder).len() == 1).await;
    assert_eq!(recorder.seen.lock().unwrap()[0].rule, "panics");
    let sample = |value| hearth_alerts::Sample {
        name: "app_error_ratio".into(),
        labels: [("app".to_owned(), "shop".to_owned())].into(),
        value,
    };
    running.monitor.samples(now_ms(), vec![sample(0.1)]);
    running.monitor.samples(now_ms(), vec![sample(0.9)]);
    until("the metric alert", || seen(&recorder).len() == 2).await;
    assert_eq!(recorder.seen.lock().unwrap()[1].rule, "errors");
    running.stop().await;
}

#[tokio::test]
async fn a_built_in_rule_cannot_be_removed_and_one_of_the_same_name_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    let error = running.monitor.remove_rule("hearth-restarted").await.unwrap_err().to_string();
    assert!(error.contains("built-in"), "{error}");
    running
        .monitor
        .set_rule("hearth-restarted", "event = { prefix = \"services/history/\" }\nnotify = []")
        .await
        .unwrap();
    let (text, rules) = running.monitor.rules().await;
    assert!(text.contains("hearth-restarted"));
    assert!(rules.rule("hearth-restarted").unwrap().notify.is_empty());
    running.monitor.remove_rule("hearth-restarted").await.unwrap();
    assert_eq!(running.monitor.rules().await.1.rule("hearth-restarted").unwrap().notify, ["history"]);
    running.stop().await;
}

#[tokio::test]
async fn the_record_receiver_keeps_acts_in_the_history_and_not_their_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    let value = br#"{"at_ms":1,"instance":"web-1","action":"restarted","reason":"its check failed"}"#;
    store.put("services/history/web/000000000000001-0001", value.to_vec(), None).await.unwrap();
    let mut deliveries = running.monitor.deliveries();
    deliveries.wait_for(|n| *n >= 1).await.unwrap();
    let history = running
        .monitor
        .history(&HistoryQuery { rule: Some("hearth-restarted".into()), limit: 10 })
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].kind, "record");
    assert!(seen(&recorder).is_empty(), "a record is not handed to a receiver");
    running.stop().await;
}

#[tokio::test]
async fn a_change_made_by_a_run_a_notification_started_cannot_fire_its_rule() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    let rules = r#"
[[receiver]]
name = "hook"
webhook = { url = "http://127.0.0.1:9/alerts" }

[[rule]]
name = "run-failed"
event = { prefix = "workflows/runs/", match = { status = "failed" } }
notify = ["hook"]
group_wait = "0s"
"#;
    running.monitor.apply(rules).await.unwrap();
    let own = format!("workflows/runs/{}", run_id("run-failed", "abc-1-1"));
    store.put(&own, br#"{"status":"failed"}"#.to_vec(), None).await.unwrap();
    let child = format!("workflows/runs/{}.3", run_id("run-failed", "abc-1-1"));
    store.put(&child, br#"{"status":"failed"}"#.to_vec(), None).await.unwrap();
    store.put("workflows/runs/nightly-1", br#"{"status":"failed"}"#.to_vec(), None).await.unwrap();
    until("the other run's notification", || seen(&recorder).len() == 1).await;
    let state = running.monitor.state().await;
    let keys: Vec<&str> = state.alerts.values().map(|a| a.labels["key"].as_str()).collect();
    assert_eq!(keys, ["workflows/runs/nightly-1"]);
    running.stop().await;
}

#[test]
fn a_key_names_the_rule_whose_run_wrote_it() {
    assert_eq!(caused_by("workflows/journal/alert:disk:ab-1-2.4/000001"), Some("disk"));
    assert_eq!(caused_by("workflows/runs/nightly-1"), None);
    assert_eq!(caused_by("kv/notes/alert:x:y"), None, "only a run's keys");
}

#[tokio::test]
async fn a_notification_due_by_time_alone_is_saved_before_it_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder { store: Some(store.clone()), ..Recorder::default() });
    let running = start(&store, &recorder).await;
    // group_wait outlasts the one-second save of what was observed: the
    // notification becomes due with nothing new observed.
    running.monitor.apply(&RULES.replace("group_wait = \"0s\"", "group_wait = \"1500ms\"")).await.unwrap();
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    until("the notification", || seen(&recorder).len() == 1).await;
    assert!(recorder.unsaved.lock().unwrap().is_empty(), "delivered before it was saved");
    running.stop().await;
}

#[tokio::test]
async fn a_group_s_notifications_reach_its_receiver_in_order_even_across_retries() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    *recorder.failures.lock().unwrap() = vec![Failure::retry("503")];
    let running = start(&store, &recorder).await;
    running.monitor.apply(RULES).await.unwrap();
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    until("the first attempt", || seen(&recorder).len() == 1).await;
    // Resolved while the firing waits for its retry.
    store.put("machines/db", br#"{"state":"running"}"#.to_vec(), None).await.unwrap();
    until("all three deliveries", || seen(&recorder).len() == 3).await;
    let statuses: Vec<Status> = seen(&recorder).into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, [Status::Firing, Status::Firing, Status::Resolved]);
    running.stop().await;
}

#[tokio::test]
async fn the_service_s_own_writes_fire_no_rule_even_one_that_opts_in() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    let rules = RULES.to_owned()
        + r#"
[[rule]]
name = "watch-alerts"
event = { prefix = "alerts/", include_alerts = true }
notify = ["hook"]
group_by = ["key"]
group_wait = "0s"
"#;
    running.monitor.apply(&rules).await.unwrap();
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    // machine-failed's history entry fires watch-alerts once; that
    // notification's own history entry fires nothing, and neither do the
    // saves of the state.
    until("two notifications", || seen(&recorder).len() == 2).await;
    running.monitor.deliveries().wait_for(|n| *n >= 2).await.unwrap();
    store.put("machines/web", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    until("the second machine's two", || seen(&recorder).len() == 4).await;
    running.monitor.deliveries().wait_for(|n| *n >= 4).await.unwrap();
    let rules_seen: Vec<String> = recorder.seen.lock().unwrap().iter().map(|n| n.rule.clone()).collect();
    assert_eq!(rules_seen.iter().filter(|r| *r == "watch-alerts").count(), 2, "{rules_seen:?}");
    running.stop().await;
}

#[tokio::test]
async fn shared_component_bytes_reach_no_rule_even_one_on_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let running = start(&store, &recorder).await;
    let rules = r#"
[[receiver]]
name = "hook"
webhook = { url = "http://127.0.0.1:9/alerts" }

[[rule]]
name = "every-key"
event = { prefix = "", resolve_after = "never" }
notify = ["hook"]
group_by = ["key"]
group_wait = "0s"
"#;
    running.monitor.apply(rules).await.unwrap();
    let sha = "ab".repeat(32);
    for prefix in ["apps/blobs/", "workflows/blobs/"] {
        store.put(&format!("{prefix}{sha}/000000"), vec![0; 1024], None).await.unwrap();
        store.put(&format!("{prefix}{sha}"), br#"{"size":1024,"chunks":1}"#.to_vec(), None).await.unwrap();
    }
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    until("the machine's notification", || !seen(&recorder).is_empty()).await;
    running.monitor.deliveries().wait_for(|n| *n >= 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keys: Vec<String> = recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|n| n.group_labels.get("key").cloned().unwrap_or_default())
        .collect();
    assert_eq!(keys, ["machines/db"]);
    running.stop().await;
}

/// A monitor on a store shared by hosts; its loop runs only when started
/// (the leader's term), as the daemon does.
async fn shared(store: &Arc<dyn Store>, recorder: &Arc<Recorder>) -> Monitor {
    let options = Options { external_url: "http://127.0.0.1:7070/alerts".into(), shared: true };
    Monitor::open(store.clone(), recorder.clone(), options).await.unwrap()
}

fn lead(monitor: &Monitor) -> Running {
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(monitor.clone().run(rx));
    Running { monitor: monitor.clone(), stop, task }
}

async fn until_async<F: AsyncFn() -> bool>(what: &str, check: F) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn one_service_for_the_cloud_only_the_leaders_loop_notifies_and_the_next_leader_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let (to_a, to_b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let (a, b) = (shared(&store, &to_a).await, shared(&store, &to_b).await);
    let term = lead(&a);
    a.apply(RULES).await.unwrap();
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    until("a's notification", || seen(&to_a).len() == 1).await;
    let first = seen(&to_a)[0].0.clone();
    // B follows: it answers from what A saved, and sends nothing.
    until_async("b seeing the alert a saved", async || {
        b.state().await.alerts.values().any(|x| x.phase == hearth_alerts::Phase::Firing)
    })
    .await;
    assert!(seen(&to_b).is_empty(), "only the leader notifies");

    // A's term ends; B leads and goes on from A's state: the alert that
    // fired is not told again, a new one is.
    term.stop().await;
    let term = lead(&b);
    store.put("machines/web", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    until("b's notification", || seen(&to_b).len() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen(&to_a).len(), 1, "a's loop is stopped");
    let told: Vec<String> = seen(&to_b).iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_ne!(told[0], first, "db's firing was told once, by a");
    term.stop().await;
}

#[tokio::test]
async fn one_service_for_the_cloud_a_host_that_does_not_lead_hands_silences_and_rules_to_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let (to_a, to_b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let (a, b) = (shared(&store, &to_a).await, shared(&store, &to_b).await);
    let term = lead(&a);

    // Rules applied through B reach A's loop.
    b.apply(RULES).await.unwrap();
    until_async("a taking b's rules", async || {
        a.rules().await.1.rules.iter().any(|r| r.name == "machine-failed")
    })
    .await;

    // A silence through B mutes A's notifications, and B lists it.
    let silence =
        b.silence(&["rule=machine-failed".into()], Duration::from_secs(3600), "test", "").await.unwrap();
    until_async("a taking b's silence", async || a.state().await.silences.contains_key(&silence.id)).await;
    assert!(b.state().await.silences.contains_key(&silence.id), "b answers from the store");
    assert!(store.range(keys::REQUESTS).await.unwrap().kvs.is_empty(), "the request went once taken");
    store.put("machines/db", br#"{"state":"failed"}"#.to_vec(), None).await.unwrap();
    until_async("the alert muted", async || !a.muted().await.is_empty()).await;
    // B answers from what A saved, at most a second old.
    until_async("b knowing it is muted", async || !b.muted().await.is_empty()).await;
    assert!(seen(&to_a).is_empty(), "silenced");

    // Its end through B too; an unknown silence is refused by B itself.
    let missing = b.expire_silence("nope").await.unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
    b.expire_silence(&silence.id).await.unwrap();
    until("the notification once the silence ends", || seen(&to_a).len() == 1).await;
    assert!(seen(&to_b).is_empty());

    // B takes no inputs while it does not lead: nothing counts as dropped.
    for _ in 0..10_000 {
        b.log("app:web", "error");
    }
    assert_eq!(b.dropped(), 0);
    term.stop().await;
}

#[tokio::test]
async fn one_service_for_the_cloud_a_silence_asked_while_no_host_led_is_taken_by_the_next_leader() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let b = shared(&store, &recorder).await;
    let silence =
        b.silence(&["rule=machine-failed".into()], Duration::from_secs(3600), "test", "").await.unwrap();
    let term = lead(&b);
    until_async("the silence taken", async || b.state().await.silences.contains_key(&silence.id)).await;
    assert!(store.range(keys::REQUESTS).await.unwrap().kvs.is_empty());
    term.stop().await;
}

#[tokio::test]
async fn one_service_for_the_cloud_a_deposed_leader_saves_nothing_over_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Arc::new(Recorder::default());
    let monitor = shared(&store, &recorder).await;
    let term = store.put("hosts/leader", b"a".to_vec(), None).await.unwrap();
    let fenced: Arc<dyn Store> = Arc::new(hearth_store::Fenced::new(store.clone(), "hosts/leader", term));
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(monitor.clone().run_fenced(fenced, rx));
    let saved = || async {
        let Some(kv) = store.get(keys::STATE).await.unwrap() else { return 0 };
        serde_json::from_slice::<Persisted>(&kv.value).unwrap().state.silences.len()
    };
    monitor.silence(&["rule=a".into()], Duration::from_secs(60), "test", "").await.unwrap();
    until_async("the silence saved within its term", async || saved().await == 1).await;

    // Another host is elected: the key is made again, a new term.
    store.delete("hosts/leader").await.unwrap();
    store.put("hosts/leader", b"b".to_vec(), None).await.unwrap();
    let refused = monitor.silence(&["rule=b".into()], Duration::from_secs(60), "test", "").await;
    assert!(
        matches!(refused, Err(Error::Store(hearth_store::Error::Fenced { .. }))),
        "the deposed leader's save: {refused:?}"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(saved().await, 1, "nothing saved over the successor's state, at shutdown either");
}
