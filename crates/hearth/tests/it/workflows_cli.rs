//! Workflows through the real binary: a run that sleeps, waits for a
//! signal, calls an activity and completes; fifty of them with the daemon
//! killed with `kill -9` at random points; cron across a restart; webhooks
//! with and without a good signature; event triggers; a run moved to code
//! that does not match its history; the runs of a host killed on a shared
//! etcd, completed by the other host.
//!
//! The guests are `crates/workflows/tests/guests`, built by the support module.

use crate::workflows_support as support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use hearth_testkit::{Daemon, failure, success, wait_until};
use rand::Rng;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// Writes the `steps` guest (and a manifest, if any) into `dir`.
fn steps_in(dir: &Path, manifest: Option<&str>) -> String {
    let path = dir.join("steps.wasm");
    std::fs::write(&path, &support::guests().steps).unwrap();
    if let Some(manifest) = manifest {
        std::fs::write(dir.join("hearth.toml"), manifest).unwrap();
    }
    path.display().to_string()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&success(out)).expect("JSON output")
}

pub(crate) fn runs(daemon: &Daemon) -> Vec<Value> {
    json(&daemon.cli(&["workflow", "ls", "--json"]))["runs"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn run(daemon: &Daemon, id: &str) -> Value {
    json(&daemon.cli(&["workflow", "show", id, "--json"]))
}

/// Polls until every run in `ids` satisfies `check` (or the deadline).
fn until_all(daemon: &Daemon, ids: &[String], what: &str, limit: Duration, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let all = runs(daemon);
        let pending: Vec<&Value> =
            all.iter().filter(|r| ids.iter().any(|id| r["id"] == id.as_str()) && !check(r)).collect();
        let seen = all.iter().filter(|r| ids.iter().any(|id| r["id"] == id.as_str())).count();
        if pending.is_empty() && seen == ids.len() {
            return;
        }
        assert!(Instant::now() < deadline, "not every run became {what}: {pending:#?}\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every run of `ids` (the `steps` guest with `full:URL`) completed with
/// its output, every step recorded once; and each side effect applied once:
/// one idempotency key per run, and no request without one.
fn each_completed_once(daemon: &Daemon, ids: &[String], effects: &support::Effects) {
    for id in ids {
        let shown = run(daemon, id);
        assert_eq!(shown["output"], format!("done:{id}:200"), "{shown:#}");
        let journal = shown["journal"].as_array().unwrap();
        let seqs: Vec<u64> = journal.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4], "{id}: every step recorded once");
    }
    let expected: BTreeSet<String> = ids.iter().map(|id| format!("{id}/3")).collect();
    assert_eq!(effects.keys().into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(effects.applied(), ids.len());
    assert_eq!(effects.without_key(), 0);
}

fn waiting_for_go(r: &Value) -> bool {
    r["status"] == "waiting" && r["waiting_for"].as_str().is_some_and(|w| w.starts_with("signal \"go\""))
}

async fn ingress_port(daemon: &Daemon) -> u16 {
    let status = daemon.client().status().await.expect("status");
    status.ingress.and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok())).expect("an ingress port")
}

/// One POST to the ingress: (status, body).
fn post(port: u16, host: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the ingress");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("POST {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let inner = Sha256::new().chain_update(block.map(|b| b ^ 0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(block.map(|b| b ^ 0x5c)).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_sleeps_waits_for_a_signal_calls_an_activity_and_completes() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let (effects, url) = support::Effects::start();
    let out = success(&daemon.cli(&["workflow", "deploy", "steps", &steps_in(dir.path(), None)]));
    assert!(out.contains("deployed workflow steps version 1"), "{out}");

    let id = success(&daemon.cli(&[
        "workflow",
        "start",
        "steps",
        "--input",
        &format!("full:{url}"),
        "--id",
        "first",
    ]));
    assert_eq!(id.trim(), "first");
    until_all(&daemon, &["first".into()], "waiting for go", Duration::from_secs(30), waiting_for_go);
    let table = success(&daemon.cli(&["workflow", "ls"]));
    assert!(
        table.contains("first") && table.contains("waiting") && table.contains("signal \"go\""),
        "{table}"
    );
    // Starting again with the same id starts nothing.
    let again = daemon.cli(&["workflow", "start", "steps", "--input", "other", "--id", "first"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already existed"), "{again:?}");

    success(&daemon.cli(&["workflow", "signal", "first", "go", "--data", "yes"]));
    until_all(&daemon, &["first".into()], "completed", Duration::from_secs(30), |r| {
        r["status"] == "completed"
    });
    let shown = run(&daemon, "first");
    assert_eq!(shown["output"], "done:yes:200");
    assert_eq!(shown["journal"].as_array().unwrap().len(), 5);
    let history = success(&daemon.cli(&["workflow", "show", "first"]));
    for needle in ["sleep(300ms)", "wait-signal(\"go\"", "http-call(POST", "signal \"yes\"", "HTTP 200"] {
        assert!(history.contains(needle), "{needle} missing from\n{history}");
    }
    let logs = success(&daemon.cli(&["workflow", "logs", "first"]));
    assert_eq!(logs.matches("starting first").count(), 1, "{logs}");
    assert_eq!(effects.keys(), vec!["first/3".to_owned()]);

    // `start --wait` prints the output; a failing run exits 1 with a hint.
    let out = success(&daemon.cli(&["workflow", "start", "steps", "--input", "sleep:200", "--wait"]));
    assert_eq!(out.trim(), "slept");
    let out = failure(&daemon.cli(&["workflow", "start", "steps", "--input", "fail", "--wait"]));
    assert!(out.contains("the test asked for a failure") && out.contains("workflow show"), "{out}");

    // A cancelled run stops waiting and takes no more signals.
    success(&daemon.cli(&["workflow", "start", "steps", "--input", "timeout:600000", "--id", "doomed"]));
    until_all(&daemon, &["doomed".into()], "waiting for go", Duration::from_secs(30), waiting_for_go);
    assert!(success(&daemon.cli(&["workflow", "cancel", "doomed"])).contains("cancelled doomed"));
    let shown = run(&daemon, "doomed");
    assert_eq!((shown["status"].as_str(), shown["waiting_for"].as_str()), (Some("cancelled"), None));
    let out = failure(&daemon.cli(&["workflow", "signal", "doomed", "go"]));
    assert!(out.contains("already ended (cancelled)"), "{out}");
    let listed = json(&daemon.cli(&["workflow", "ls", "--status", "cancelled", "--json"]));
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1));

    // Bad input, each with a clear error.
    let out = failure(&daemon.cli(&["workflow", "signal", "first", "go"]));
    assert!(out.contains("already ended"), "{out}");
    let out = failure(&daemon.cli(&["workflow", "start", "nope"]));
    assert!(out.contains("does not exist"), "{out}");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let out = failure(&daemon.cli(&["workflow", "deploy", "junk", junk.to_str().unwrap()]));
    assert!(out.contains("not a WebAssembly component") && out.contains("wasm32-wasip2"), "{out}");
    let out = failure(&daemon.cli(&["workflow", "ls", "--status", "sleepy"]));
    assert!(out.contains("unknown status"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_moved_to_code_that_does_not_match_its_history_fails_clearly() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    success(&daemon.cli(&["workflow", "deploy", "steps", &steps_in(dir.path(), None)]));
    success(&daemon.cli(&[
        "workflow",
        "start",
        "steps",
        "--input",
        "full:http://127.0.0.1:9",
        "--id",
        "moved",
    ]));
    until_all(&daemon, &["moved".into()], "waiting for go", Duration::from_secs(30), waiting_for_go);
    let drifted = dir.path().join("drifted.wasm");
    std::fs::write(&drifted, &support::guests().drifted).unwrap();
    success(&daemon.cli(&["workflow", "deploy", "steps", drifted.to_str().unwrap()]));
    // Redeploying leaves the run on its version...
    assert_eq!(run(&daemon, "moved")["version"], 1);
    // ...until it is moved on purpose; its next replay catches the change.
    success(&daemon.cli(&["workflow", "migrate", "moved", "--to", "2"]));
    success(&daemon.cli(&["workflow", "signal", "moved", "go"]));
    until_all(&daemon, &["moved".into()], "failed", Duration::from_secs(30), |r| r["status"] == "failed");
    let error = run(&daemon, "moved")["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("not deterministic") && error.contains("step 0") && error.contains("now()"),
        "{error}"
    );
    let out = failure(&daemon.cli(&["workflow", "migrate", "moved", "--to", "9"]));
    assert!(out.contains("already ended"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_runs_complete_exactly_once_through_kill_9_at_random_points() {
    let mut daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let (effects, url) = support::Effects::start();
    success(&daemon.cli(&["workflow", "deploy", "steps", &steps_in(dir.path(), None)]));
    let ids: Vec<String> = (0..50).map(|i| format!("crash-{i}")).collect();
    let client = daemon.client();
    for id in &ids {
        let body = hearth_client::types::StartRun { input: format!("full:{url}"), id: Some(id.clone()) };
        client.start_run("steps", &body).await.expect("start");
    }
    let mut rng = rand::rng();
    // Crash while runs start, sleep and go to wait.
    std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
    daemon.kill9();
    daemon.restart().await;
    until_all(&daemon, &ids, "waiting for go", Duration::from_secs(120), waiting_for_go);
    // Signal them ten at a time, crashing each time while the woken runs
    // replay, call their activity and record it.
    for chunk in ids.chunks(10) {
        let client = daemon.client();
        for id in chunk {
            let body = hearth_client::types::SendSignal { name: "go".into(), data: id.clone() };
            client.signal_run(id, &body).await.expect("signal");
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..80)));
        daemon.kill9();
        daemon.restart().await;
    }
    until_all(&daemon, &ids, "completed", Duration::from_secs(120), |r| r["status"] == "completed");
    each_completed_once(&daemon, &ids, &effects);
    eprintln!(
        "activity requests: {} for 50 effects (repeats were answered from the first)",
        effects.requests()
    );
    // Each restart that picked runs up says so in the alert history.
    let text = success(&daemon.cli(&["alert", "history", "--rule", "hearth-recovered", "--json"]));
    let history: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let recoveries = history["entries"].as_array().map_or(0, |entries| {
        entries
            .iter()
            .filter(|e| {
                e["alerts"][0]["summary"].as_str().is_some_and(|s| s.contains("workflows: picked up"))
            })
            .count()
    });
    assert!(recoveries >= 1, "{history:#}");
}

/// Issue 17, failover: hosts on one etcd. Twenty runs are signalled while
/// only host one executes, and it is killed with `kill -9` while every run
/// is in the middle of its activity, holding its claim; the activity's
/// requests are held unapplied until then. Host two, started meanwhile,
/// takes each run over when one's claims lapse, goes on from its journal,
/// and completes it: every step recorded once, every effect applied once.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_hosts_runs_are_taken_over_and_complete_exactly_once() {
    let etcd = hearth_testkit::etcd::Etcd::start();
    let on = |host: &'static str| Daemon::start_on_etcd(BIN, &etcd, host, &[]);
    let mut one = on("one").await;
    let dir = tempfile::tempdir().unwrap();
    let (effects, url) = support::Effects::start();
    success(&one.cli(&["workflow", "deploy", "steps", &steps_in(dir.path(), None)]));
    let ids: Vec<String> = (0..20).map(|i| format!("moved-{i}")).collect();
    let client = one.client();
    for id in &ids {
        let body = hearth_client::types::StartRun { input: format!("full:{url}"), id: Some(id.clone()) };
        client.start_run("steps", &body).await.expect("start");
    }
    until_all(&one, &ids, "waiting for go", Duration::from_secs(120), waiting_for_go);
    effects.hold();
    for id in &ids {
        let body = hearth_client::types::SendSignal { name: "go".into(), data: id.clone() };
        client.signal_run(id, &body).await.expect("signal");
    }
    let in_flight = wait_until(Duration::from_secs(60), async || effects.requests() == ids.len()).await;
    assert!(in_flight, "{} of 20 activities called on one\n{}", effects.requests(), one.log());
    let two = on("two").await;
    one.kill9();
    effects.release();
    until_all(&two, &ids, "completed", Duration::from_secs(120), |r| r["status"] == "completed");
    // Each effect applied once, though each activity was called twice: by
    // one, whose answers were lost with it, and by two.
    each_completed_once(&two, &ids, &effects);
    assert!(effects.requests() >= 40, "{} requests: two called every activity again", effects.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_fires_on_schedule_and_catches_up_once_after_downtime() {
    let mut daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = "[[cron]]\nschedule = \"*/2 * * * * *\"\ninput = \"tick\"\n";
    let out = success(&daemon.cli(&["workflow", "deploy", "steps", &steps_in(dir.path(), Some(manifest))]));
    assert!(out.contains("cron     */2 * * * * * (UTC)"), "{out}");
    let now_ms =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let deployed = now_ms();
    std::thread::sleep(Duration::from_secs(7));
    let killed = now_ms();
    daemon.kill9();
    std::thread::sleep(Duration::from_secs(5));
    let restarting = now_ms();
    daemon.restart().await;
    let ready = now_ms();
    std::thread::sleep(Duration::from_secs(7));
    let end = now_ms();

    let fired: Vec<u64> = runs(&daemon)
        .iter()
        .filter(|r| r["started_by"] == "cron")
        .map(|r| r["id"].as_str().unwrap().rsplit('-').next().unwrap().parse().unwrap())
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    assert!(fired.iter().all(|t| t % 2000 == 0), "off schedule: {fired:?}");
    // While up, every slot well inside the up periods fired.
    let slots =
        |from: u64, to: u64| (from.div_ceil(2000)..=to / 2000).map(|s| s * 2000).collect::<Vec<u64>>();
    for slot in slots(deployed + 1500, killed - 1500).into_iter().chain(slots(ready + 1500, end - 1500)) {
        assert!(fired.contains(&slot), "slot {slot} did not fire: {fired:?}");
    }
    // The slots missed while down (two or more) fired once, not each: at
    // most the catch-up run lies strictly inside the down time, and it did
    // fire by the time the daemon answered.
    assert!(slots(killed + 1, restarting - 1).len() >= 2, "the test must miss two slots");
    let inside: Vec<&u64> = fired.iter().filter(|t| **t > killed && **t < restarting).collect();
    assert!(inside.len() <= 1, "down from {killed} to {restarting}: {fired:?}");
    let caught_up = fired.iter().filter(|t| **t > killed && **t <= ready).count();
    assert!(caught_up >= 1, "nothing fired for the down time {killed}..{ready}: {fired:?}");
    until_all(
        &daemon,
        &fired.iter().map(|t| format!("steps-cron-0-{t}")).collect::<Vec<_>>(),
        "completed",
        Duration::from_secs(30),
        |r| r["status"] == "completed" && r["output"] == "tick",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_start_and_signal_runs_and_events_start_runs() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let (_effects, url) = support::Effects::start();
    let manifest = "[[webhook]]\npath = \"start\"\nsecret = \"s3cret\"\n\n[[webhook]]\npath = \"go\"\nsignal = \"go\"\n\n[[event]]\nprefix = \"kv/orders/\"\nkinds = [\"put\"]\n";
    let out = success(&daemon.cli(&["workflow", "deploy", "steps", &steps_in(dir.path(), Some(manifest))]));
    assert!(out.contains("webhook  POST http://hooks.localhost:") && out.contains("/steps/start"), "{out}");
    let port = ingress_port(&daemon).await;
    let body = format!("full:{url}");

    let (status, answer) =
        post(port, "hooks.localhost", "/steps/start", &[("X-Hearth-Signature", "sha256=00")], &body);
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("X-Hearth-Signature"), "{answer}");
    let (status, _) = post(port, "hooks.localhost", "/steps/start", &[], &body);
    assert_eq!(status, 401);
    assert!(runs(&daemon).is_empty(), "a refused webhook started a run");

    let signature = format!("sha256={}", hmac_hex(b"s3cret", body.as_bytes()));
    let headers = [("X-Hearth-Signature", signature.as_str()), ("Idempotency-Key", "delivery-1")];
    let (status, answer) = post(port, "hooks.localhost", "/steps/start", &headers, &body);
    assert_eq!(status, 202, "{answer}");
    let id = serde_json::from_str::<Value>(&answer).unwrap()["run"].as_str().unwrap().to_owned();
    // A redelivery starts nothing new.
    let (status, again) = post(port, "hooks.localhost", "/steps/start", &headers, &body);
    assert_eq!(status, 202);
    assert!(again.contains(&id) && again.contains("\"created\":false"), "{again}");

    until_all(&daemon, std::slice::from_ref(&id), "waiting for go", Duration::from_secs(30), waiting_for_go);
    let (status, answer) = post(port, "hooks.localhost", &format!("/steps/go?run={id}"), &[], "from the web");
    assert_eq!(status, 202, "{answer}");
    until_all(&daemon, std::slice::from_ref(&id), "completed", Duration::from_secs(30), |r| {
        r["output"] == "done:from the web:200"
    });
    let (status, answer) = post(port, "hooks.localhost", "/steps/nope", &[], "");
    assert_eq!(status, 404);
    assert!(answer.contains("\\\"go\\\"") || answer.contains("go"), "{answer}");

    // An event trigger: a put under kv/orders/ starts a run with the event.
    success(&daemon.cli(&["kv", "put", "orders/42", "echo"]));
    success(&daemon.cli(&["kv", "put", "other/1", "x"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let by_event: Vec<Value> = runs(&daemon).into_iter().filter(|r| r["started_by"] == "event").collect();
        if let Some(r) = by_event.first() {
            assert_eq!(by_event.len(), 1, "{by_event:#?}");
            let input: Value = serde_json::from_str(r["input"].as_str().unwrap()).unwrap();
            assert_eq!((input["kind"].as_str(), input["key"].as_str()), (Some("put"), Some("kv/orders/42")));
            break;
        }
        assert!(Instant::now() < deadline, "no run started for the event");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The example from `examples/workflows/approval`, built by `make examples`.
pub(crate) fn approval_example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/workflows/approval/target/wasm32-wasip2/release/approval.wasm");
    assert!(path.is_file(), "{} is missing: run `make examples`", path.display());
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_approval_example_decides_on_two_of_three_or_times_out() {
    let daemon = Daemon::start(BIN).await;
    let (notified, url) = support::Effects::start();
    let out = success(&daemon.cli(&["workflow", "deploy", "approval", &approval_example()]));
    assert!(out.contains("/approval/vote"), "its hearth.toml declares the vote webhook: {out}");
    let input = format!(
        r#"{{"request": "a new laptop", "approvers": ["ann", "bob", "cid"], "timeout": "7d", "notify": "{url}/decided"}}"#
    );
    success(&daemon.cli(&["workflow", "start", "approval", "--id", "laptop", "--input", &input]));
    // Ann approves, then again (ignored), and Eve, who is no approver (ignored).
    for who in ["ann", "ann", "eve"] {
        let vote = format!(r#"{{"who": "{who}", "approve": true}}"#);
        success(&daemon.cli(&["workflow", "signal", "laptop", "vote", "--data", &vote]));
    }
    let port = ingress_port(&daemon).await;
    let (status, answer) =
        post(port, "hooks.localhost", "/approval/vote?run=laptop", &[], r#"{"who": "bob", "approve": true}"#);
    assert_eq!(status, 202, "{answer}");
    until_all(&daemon, &["laptop".into()], "completed", Duration::from_secs(30), |r| {
        r["status"] == "completed"
    });
    let output: Value = serde_json::from_str(run(&daemon, "laptop")["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["decision"], "approved");
    assert_eq!(output["approved_by"], serde_json::json!(["ann", "bob"]));
    let keys = notified.keys();
    assert!(
        keys.len() == 1 && keys[0].starts_with("laptop/"),
        "one notification, keyed by its step: {keys:?}"
    );
    let logs = success(&daemon.cli(&["workflow", "logs", "laptop"]));
    assert!(logs.contains("ignoring a vote from ann") && logs.contains("ignoring a vote from eve"), "{logs}");

    let quick = r#"{"request": "lunch", "approvers": ["ann", "bob", "cid"], "timeout": "1s"}"#;
    let out = success(&daemon.cli(&["workflow", "start", "approval", "--input", quick, "--wait"]));
    assert!(out.contains("\"decision\":\"timed out\""), "{out}");
}
