//! Triggers through the real binary, for apps and for workflows: cron
//! calling an app's route (at most once per firing, across `kill -9`),
//! store events calling a route, webhooks that refuse unsigned requests in
//! front of an app's route, and triggers added and removed by CLI beside
//! those of a `hearth.toml`; and each bad input refused with a clear error.
//!
//! The app is `examples/apps/counter` (built by `make examples`): every
//! request it serves counts a visit in its key-value store.

use crate::workflows_support as support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hearth_testkit::{Daemon, failure, success};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// The counter example copied into `dir` with `manifest` beside it.
fn counter_in(dir: &Path, manifest: &str) -> String {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/apps/counter/target/wasm32-wasip2/release/counter.wasm");
    assert!(built.is_file(), "{} is missing: run `make examples`", built.display());
    let path = dir.join("counter.wasm");
    std::fs::copy(&built, &path).unwrap();
    std::fs::write(dir.join("hearth.toml"), format!("key_value = [\"default\"]\n{manifest}")).unwrap();
    path.display().to_string()
}

/// One request to the ingress: (status, body).
fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the ingress");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// The counter's visits so far, counting this request.
fn visits(port: u16) -> u64 {
    let (status, body) = request(port, "GET", "counter.localhost", "/", &[], "");
    assert_eq!(status, 200, "{body}");
    body.split_whitespace()
        .nth(5)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {body:?}"))
}

async fn ingress_port(daemon: &Daemon) -> u16 {
    let status = daemon.client().status().await.expect("status");
    status.ingress.and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok())).expect("an ingress port")
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&success(out)).expect("JSON output")
}

/// The app's log lines, as text.
fn log_lines(daemon: &Daemon, app: &str) -> Vec<String> {
    let logs = daemon.client();
    let rt = tokio::runtime::Handle::current();
    let lines = tokio::task::block_in_place(|| rt.block_on(logs.app_logs(app, None))).expect("logs").lines;
    lines.into_iter().map(|l| l.text).collect()
}

/// The firings (Unix ms) that cron trigger `id` called the app for, from
/// its log.
fn cron_firings(daemon: &Daemon, app: &str, id: &str) -> Vec<u64> {
    let prefix = format!("Cron {id} (the firing at ");
    log_lines(daemon, app)
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|rest| rest.ends_with(": 200."))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// Sleeps until half a second past an even second (a firing of */2).
fn mid_slot() {
    let into = now_ms() % 2000;
    let wait = if into <= 500 { 500 - into } else { 2500 - into };
    std::thread::sleep(Duration::from_millis(wait));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn sign(secret: &str, body: &str) -> String {
    hearth_triggers::signature::sign(secret, body.as_bytes())
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn app_cron_calls_its_route_once_per_firing_across_kill_9() {
    let mut daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = "[[cron]]\nschedule = \"*/2 * * * * *\"\npath = \"/tick\"\n";
    success(&daemon.cli(&["app", "deploy", "counter", &counter_in(dir.path(), manifest)]));
    let listed = success(&daemon.cli(&["app", "trigger", "ls", "counter"]));
    assert!(listed.contains("cron-0") && listed.contains("*/2 * * * * * (UTC) → POST /tick"), "{listed}");
    assert!(listed.contains("manifest"), "{listed}");

    let deployed = now_ms();
    std::thread::sleep(Duration::from_secs(7));
    // Read the log half a second after a firing, so that none falls
    // between reading it and the kill (or, below, the count).
    mid_slot();
    let before = cron_firings(&daemon, "counter", "cron-0");
    let killed = now_ms();
    daemon.kill9();
    std::thread::sleep(Duration::from_secs(5));
    let restarting = now_ms();
    daemon.restart().await;
    let ready = now_ms();
    std::thread::sleep(Duration::from_secs(5));
    let port = ingress_port(&daemon).await;
    mid_slot();
    let after = cron_firings(&daemon, "counter", "cron-0");
    let count = visits(port);
    let end = now_ms();

    // Every firing is on the schedule, and none was called twice, not even
    // across the crash (the log before it and the one after both count).
    let all: Vec<u64> = before.iter().chain(&after).copied().collect();
    assert!(all.iter().all(|t| t % 2000 == 0), "off schedule: {all:?}");
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        all.len(),
        "a firing called the app twice: before {before:?}, after {after:?}"
    );
    // While up, every slot well inside the up periods fired.
    let slots =
        |from: u64, to: u64| (from.div_ceil(2000)..=to / 2000).map(|s| s * 2000).collect::<Vec<u64>>();
    for slot in slots(deployed + 1500, killed - 1500).into_iter().chain(slots(ready + 1500, end - 1500)) {
        assert!(distinct.contains(&slot), "slot {slot} did not fire: {distinct:?}");
    }
    // The slots missed while down collapse into exactly one call: the
    // latest of them, announced with how many it stands for, and none of
    // the others.
    assert!(slots(killed + 1, restarting - 1).len() >= 2, "the test must miss two slots");
    let logged = log_lines(&daemon, "counter");
    let notes: Vec<&String> =
        logged.iter().filter(|l| l.contains("were missed while hearth was down")).collect();
    assert_eq!(notes.len(), 1, "{logged:#?}");
    let note_at = logged.iter().position(|l| l == notes[0]).unwrap();
    let catch_up: u64 = logged[note_at..]
        .iter()
        .find_map(|l| l.strip_prefix("Cron cron-0 (the firing at "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|t| t.parse().ok())
        .expect("the catch-up firing's line");
    let missed = slots(before.iter().max().unwrap() + 1, catch_up - 1);
    assert!(catch_up > killed && !missed.is_empty(), "catch-up {catch_up}, killed {killed}");
    assert!(missed.iter().all(|slot| !distinct.contains(slot)), "a missed slot was called: {distinct:?}");
    assert!(
        notes[0].contains(&format!(": {} firings were missed", missed.len())),
        "{}: {missed:?}",
        notes[0]
    );
    // Each call was a visit, so the key-value count agrees with the logs
    // (plus this GET); nothing else called the app.
    assert_eq!(count, all.len() as u64 + 1, "firings {all:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn app_webhooks_refuse_unsigned_requests_and_triggers_come_and_go_by_cli() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = "[[webhook]]\npath = \"/hooks/github\"\nsecret = \"s3cret\"\n";
    success(&daemon.cli(&["app", "deploy", "counter", &counter_in(dir.path(), manifest)]));
    let port = ingress_port(&daemon).await;

    // Unsigned or wrongly signed: refused by hearth, the app never runs.
    let body = r#"{"action": "opened"}"#;
    let (status, answer) = request(port, "POST", "counter.localhost", "/hooks/github", &[], body);
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("X-Hearth-Signature"), "{answer}");
    let wrong = sign("guess", body);
    let (status, _) = request(
        port,
        "POST",
        "counter.localhost",
        "/hooks/github/push",
        &[("X-Hearth-Signature", &wrong)],
        body,
    );
    assert_eq!(status, 401);
    assert_eq!(visits(port), 1, "a refused webhook reached the app");
    // Signed: the app gets the request, body and all.
    let good = sign("s3cret", body);
    let (status, answer) =
        request(port, "POST", "counter.localhost", "/hooks/github", &[("X-Hearth-Signature", &good)], body);
    assert_eq!((status, answer.as_str()), (200, "This page has been visited 2 times.\n"));
    // Other routes are not guarded.
    assert_eq!(visits(port), 3);
    // The manifest is shown back without its webhook's secret.
    let shown = success(&daemon.cli(&["app", "inspect", "counter", "--json"]));
    assert!(!shown.contains("s3cret") && shown.contains("(hidden)"), "{shown}");
    assert!(log_lines(&daemon, "counter").iter().any(|l| l.contains("refused, the webhook signature")));

    // A webhook added by CLI guards its route at once; removed, it stops.
    let added = json(&daemon.cli(&[
        "app",
        "trigger",
        "add",
        "counter",
        "--webhook",
        "/deploy",
        "--secret",
        "k",
        "--json",
    ]));
    let id = added["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (added["kind"].as_str(), added["source"].as_str(), added["signed"].as_bool()),
        (Some("webhook"), Some("api"), Some(true))
    );
    assert!(added.get("secret").is_none(), "the secret was listed: {added}");
    let (status, _) = request(port, "POST", "counter.localhost", "/deploy", &[], "");
    assert_eq!(status, 401);
    let listed = json(&daemon.cli(&["app", "trigger", "ls", "counter", "--json"]));
    let ids: Vec<&str> =
        listed["triggers"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["webhook-0", id.as_str()]);
    success(&daemon.cli(&["app", "trigger", "rm", "counter", &id]));
    let (status, _) = request(port, "POST", "counter.localhost", "/deploy", &[], "");
    assert_eq!(status, 200);

    // An unsigned webhook still takes each delivery once: a redelivery with
    // the same Idempotency-Key is answered without reaching the app.
    success(&daemon.cli(&["app", "trigger", "add", "counter", "--webhook", "/orders"]));
    let first = visits(port);
    let (status, answer) =
        request(port, "POST", "counter.localhost", "/orders", &[("Idempotency-Key", "d-1")], "{}");
    assert_eq!((status, answer), (200, format!("This page has been visited {} times.\n", first + 1)));
    let (status, answer) =
        request(port, "POST", "counter.localhost", "/orders", &[("Idempotency-Key", "d-1")], "{}");
    assert_eq!(status, 200);
    assert!(answer.contains("handled before: the app answered 200"), "{answer}");
    let (status, _) =
        request(port, "POST", "counter.localhost", "/orders", &[("Idempotency-Key", "d-2")], "{}");
    assert_eq!(status, 200);
    assert_eq!(visits(port), first + 3, "d-1 once, d-2 once, and this GET");
    let orders = json(&daemon.cli(&["app", "trigger", "ls", "counter", "--json"]))["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["path"] == "/orders")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .expect("the /orders webhook");
    success(&daemon.cli(&["app", "trigger", "rm", "counter", &orders]));

    // An exported HEARTH_WEBHOOK_SECRET is for --webhook only: a cron added
    // beside it is taken, and unsigned.
    let out = std::process::Command::new(BIN)
        .args(["app", "trigger", "add", "counter", "--cron", "@yearly", "--json"])
        .env("HEARTH_DATA_DIR", daemon.data_dir())
        .env("HEARTH_WEBHOOK_SECRET", "exported")
        .env_remove("HEARTH_HOST")
        .env_remove("HEARTH_TOKEN")
        .output()
        .unwrap();
    let yearly = json(&out);
    assert_eq!(yearly["signed"], false, "{yearly}");
    success(&daemon.cli(&["app", "trigger", "rm", "counter", yearly["id"].as_str().unwrap()]));
    // Given as a flag to a cron, it is a mistake, and said.
    let err =
        failure(&daemon.cli(&["app", "trigger", "add", "counter", "--cron", "@yearly", "--secret", "s"]));
    assert!(err.contains("--secret is for --webhook only"), "{err}");

    // An added trigger survives a redeploy, and a store event calls the app.
    let added = json(&daemon.cli(&[
        "app",
        "trigger",
        "add",
        "counter",
        "--event",
        "kv/orders/",
        "--kinds",
        "put",
        "--path",
        "/order",
        "--json",
    ]));
    let event_id = added["id"].as_str().unwrap().to_owned();
    success(&daemon.cli(&["app", "deploy", "counter", &counter_in(dir.path(), manifest)]));
    let before = visits(port);
    success(&daemon.cli(&["kv", "put", "orders/42", "one laptop"]));
    success(&daemon.cli(&["kv", "put", "other/1", "ignored"]));
    success(&daemon.cli(&["kv", "rm", "orders/42"]));
    let line = format!("Event {event_id} called POST /order: 200.");
    wait_until("the event trigger's call", Duration::from_secs(20), || {
        log_lines(&daemon, "counter").contains(&line)
    });
    // Deliberately quiet for half a second: a second call, if one were
    // made, would show by then.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(log_lines(&daemon, "counter").iter().filter(|l| **l == line).count(), 1, "one put, one call");
    assert_eq!(visits(port), before + 2, "the event call, then this GET");

    // Bad input: a clear error, and nothing added.
    for (args, needle) in [
        (vec!["--webhook", "/x", "--secret", ""], "empty secret"),
        (vec!["--cron", "* * *"], "has 3 fields"),
        (vec!["--cron", "@daily", "--timezone", "Mars/Olympus"], "unknown time zone"),
        (vec!["--cron", "@daily", "--path", "tick"], "not valid"),
        (vec!["--cron", "@daily", "--input", "{}"], "unknown field `input`"),
        (vec!["--event", "apps/data/"], "not allowed"),
        (vec!["--event", "kv/", "--kinds", "poke"], "not one of"),
        (vec!["--webhook", "/hooks/github", "--secret", "x"], "already has a webhook"),
    ] {
        let mut all = vec!["app", "trigger", "add", "counter"];
        all.extend(args.iter().copied());
        let err = failure(&daemon.cli(&all));
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let err = failure(&daemon.cli(&["app", "trigger", "add", "ghost", "--cron", "@daily"]));
    assert!(err.contains("does not exist"), "{err}");
    let err = failure(&daemon.cli(&["app", "trigger", "rm", "counter", "webhook-0"]));
    assert!(err.contains("hearth.toml"), "{err}");
    let err = failure(&daemon.cli(&["app", "trigger", "rm", "counter", "t-nothing"]));
    assert!(err.contains("no trigger") && err.contains(&event_id), "{err}");
    let listed = json(&daemon.cli(&["app", "trigger", "ls", "counter", "--json"]));
    assert_eq!(listed["triggers"].as_array().unwrap().len(), 2, "{listed}");

    // A bad manifest trigger is refused at deploy time.
    let err = failure(&daemon.cli(&[
        "app",
        "deploy",
        "counter",
        &counter_in(dir.path(), "[[cron]]\nschedule = \"61 * * * *\"\n"),
    ]));
    assert!(err.contains("hearth.toml is not valid"), "{err}");
    // Removing the app removes its triggers.
    success(&daemon.cli(&["app", "rm", "counter"]));
    success(&daemon.cli(&["app", "deploy", "counter", &counter_in(dir.path(), "")]));
    let listed = json(&daemon.cli(&["app", "trigger", "ls", "counter", "--json"]));
    assert_eq!(listed["triggers"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn workflow_triggers_added_by_cli_start_and_refuse_runs() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steps.wasm");
    std::fs::write(&path, &support::guests().steps).unwrap();
    success(&daemon.cli(&["workflow", "deploy", "steps", path.to_str().unwrap()]));
    let port = ingress_port(&daemon).await;
    let runs = |by: &str| -> Vec<Value> {
        json(&daemon.cli(&["workflow", "ls", "--json"]))["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["started_by"] == by)
            .cloned()
            .collect()
    };

    // A cron added by CLI starts runs on its schedule; removed, it stops.
    let added = json(&daemon.cli(&[
        "workflow",
        "trigger",
        "add",
        "steps",
        "--cron",
        "* * * * * *",
        "--input",
        "tick",
        "--json",
    ]));
    let cron_id = added["id"].as_str().unwrap().to_owned();
    wait_until("two cron runs", Duration::from_secs(20), || runs("cron").len() >= 2);
    let ids: Vec<String> = runs("cron").iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert!(ids.iter().all(|id| id.starts_with(&format!("steps-cron-{cron_id}-"))), "{ids:?}");
    success(&daemon.cli(&["workflow", "trigger", "rm", "steps", &cron_id]));
    // A firing already under way when the trigger went may still start
    // its run; then three seconds, three slots, in which none may.
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = runs("cron").len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs("cron").len(), stopped, "a removed cron trigger still fired");

    // A signed webhook added by CLI.
    success(&daemon.cli(&["workflow", "trigger", "add", "steps", "--webhook", "go", "--secret", "k"]));
    let listed = success(&daemon.cli(&["workflow", "trigger", "ls", "steps"]));
    assert!(listed.contains("webhook") && listed.contains("go, signed"), "{listed}");
    let (status, answer) = request(port, "POST", "hooks.localhost", "/steps/go", &[], "tick");
    assert_eq!(status, 401, "{answer}");
    let good = sign("k", "tick");
    let (status, answer) =
        request(port, "POST", "hooks.localhost", "/steps/go", &[("X-Hearth-Signature", &good)], "tick");
    assert_eq!(status, 202, "{answer}");
    assert_eq!(runs("webhook").len(), 1);

    // Bad input.
    let err = failure(&daemon.cli(&["workflow", "trigger", "add", "steps", "--webhook", "go"]));
    assert!(err.contains("two webhooks"), "{err}");
    let err =
        failure(&daemon.cli(&["workflow", "trigger", "add", "steps", "--cron", "@daily", "--path", "/x"]));
    assert!(err.contains("unknown field `path`"), "{err}");
    let err = failure(&daemon.cli(&["workflow", "trigger", "add", "steps", "--event", "workflows/runs/"]));
    assert!(err.contains("not allowed"), "{err}");
    let err = failure(&daemon.cli(&["workflow", "trigger", "add", "steps", "--event", "apps/secrets/"]));
    assert!(err.contains("hold secrets"), "{err}");
    let err = failure(&daemon.cli(&["workflow", "trigger", "add", "nobody", "--cron", "@daily"]));
    assert!(err.contains("does not exist"), "{err}");
}
