//! What docs/apps.md promises of an app's cron and event triggers, through
//! the real daemon: a cron firing that comes while the last one's call
//! still runs is skipped and logged; event calls reach the app one at a
//! time, in the store's order, with at most 256 waiting, and the changes
//! beyond that are dropped and logged.
//!
//! The app is the apps crate's test guest `kitchen`, whose `/trace` route
//! writes `begin BODY` and `end BODY` to its log around an optional wait for
//! a key-value key: what a test needs to see calls' order and overlap.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use hearth_client::types::{AppLogLine, Encoding, PutKv};
use hearth_testkit::{Daemon, success, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// The kitchen guest, built once per test binary, with the same command
/// (and into the same target dir) as the apps crate's tests.
pub(crate) fn kitchen() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace");
        let target_dir = root.join("target/apps-guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--quiet",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("crates/apps/tests/guests/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            // Guests are built by rustc, not by the clippy driver `make test`
            // compiles the workspace with: they are not the workspace's code.
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CLIPPY_ARGS")
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the kitchen guest failed (is the wasm32-wasip2 target installed?)"
        );
        target_dir.join("wasm32-wasip2/release/kitchen.wasm")
    })
}

/// Deploys the kitchen guest as `name` with `triggers` in its manifest.
pub(crate) fn deploy(daemon: &Daemon, dir: &Path, name: &str, triggers: &str) {
    let wasm = dir.join("kitchen.wasm");
    std::fs::copy(kitchen(), &wasm).expect("copy the guest");
    let manifest = format!(
        "key_value = [\"default\"]\noutbound = [\"http://127.0.0.1:*\"]\n[config]\ngreeting = \"hi\"\n\
         [limits]\ntimeout_ms = 30000\n\n{triggers}"
    );
    std::fs::write(dir.join("hearth.toml"), manifest).expect("write hearth.toml");
    success(&daemon.cli(&["app", "deploy", name, wasm.to_str().expect("a UTF-8 path")]));
}

async fn log_lines(daemon: &Daemon, app: &str) -> Vec<String> {
    daemon.client().app_logs(app, None).await.expect("app logs").lines.into_iter().map(|l| l.text).collect()
}

/// The firing times (Unix ms) of cron `cron-0` in `lines` that end with
/// `rest`, each with the time its line was logged.
fn cron_slots(lines: &[AppLogLine], rest: &str) -> Vec<(u64, u64)> {
    lines
        .iter()
        .filter_map(|l| Some((l.text.strip_prefix("Cron cron-0 (the firing at ")?, l.time)))
        .filter(|(text, _)| text.ends_with(rest))
        .map(|(text, logged)| (text.split(' ').next().expect("a time").parse().expect("Unix ms"), logged))
        .collect()
}

pub(crate) async fn ingress_port(daemon: &Daemon) -> u16 {
    let status = daemon.client().status().await.expect("status");
    status.ingress.and_then(|a| a.rsplit(':').next()?.parse().ok()).expect("an ingress port")
}

/// docs/apps.md: "A firing that comes while the last one's call still runs
/// ... is skipped and logged". Every second a cron calls a route that takes 2.5 s:
/// the two firings during each call are skipped, and no two calls overlap.
#[tokio::test(flavor = "multi_thread")]
async fn a_cron_firing_is_skipped_while_the_last_call_still_runs() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    deploy(&daemon, dir.path(), "slow", "[[cron]]\nschedule = \"* * * * * *\"\npath = \"/sleep?ms=2500\"\n");
    let called = ": 200.";
    let skipped = " was skipped: the previous firing's call is still running.";
    let mut lines = Vec::new();
    let seen = wait_until(Duration::from_secs(40), async || {
        lines = daemon.client().app_logs("slow", None).await.expect("app logs").lines;
        let (calls, skips) = (cron_slots(&lines, called), cron_slots(&lines, skipped));
        calls.len() >= 3 && skips.iter().filter(|(s, _)| *s < calls[calls.len() - 1].0).count() >= 3
    })
    .await;
    assert!(seen, "not three calls and three skips between them in 40 s:\n{lines:#?}");
    // A call's line is logged when it ends, a skip's when its slot fires:
    // the skips after the last call that ended may belong to one still
    // running, whose end is not logged yet, so only those before it count.
    let calls = cron_slots(&lines, called);
    let last = calls[calls.len() - 1].0;
    let skips: Vec<(u64, u64)> = cron_slots(&lines, skipped).into_iter().filter(|(s, _)| *s < last).collect();
    // A call takes 2.5 s, so the next one starts on the third slot after
    // it at the earliest (the cron looks once a second).
    for pair in calls.windows(2) {
        assert!(pair[1].0 >= pair[0].0 + 3000, "calls at {pair:?} overlapped:\n{lines:#?}");
    }
    // Each skip falls while a call ran: after the last call's slot, before
    // that call ended. (How many slots that is depends on how loaded the
    // host is, not on the rule.)
    for (skip, skipped_at) in &skips {
        let (slot, ended) =
            calls.iter().rev().find(|(c, _)| c < skip).unwrap_or_else(|| panic!("{skip}: {lines:#?}"));
        assert!(
            skipped_at <= ended,
            "the slot {skip} was skipped at {skipped_at}, after the call of slot {slot} ended at {ended}"
        );
    }
    // Nothing was both called and skipped.
    assert!(skips.iter().all(|(s, _)| calls.iter().all(|(c, _)| c != s)), "{calls:?} {skips:?}");
}

/// docs/apps.md: "Event calls reach an app one at a time, in the store's
/// order. Up to 256 wait; more are dropped and logged". The first call holds
/// until the test opens its gate, while 300 changes come: 256 wait behind
/// it, the last 43 are dropped (44 if the first had not been taken from the
/// queue yet), each logged. Then the calls come, one at a time, in the
/// order of the changes' revisions.
#[tokio::test(flavor = "multi_thread")]
async fn event_calls_come_one_at_a_time_in_order_with_at_most_256_waiting() {
    const CHANGES: usize = 300;
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    deploy(
        &daemon,
        dir.path(),
        "events",
        "[[event]]\nprefix = \"kv/seq/\"\nkinds = [\"put\"]\npath = \"/trace?gate=open\"\n",
    );
    let client = daemon.client();
    let mut revisions = Vec::new();
    for i in 0..CHANGES {
        let put =
            PutKv { value: i.to_string(), encoding: Encoding::Utf8, lease: None, if_mod_revision: None };
        revisions.push(client.kv_put(&format!("seq/{i:03}"), &put).await.expect("put").revision);
    }
    assert!(revisions.windows(2).all(|w| w[0] < w[1]));

    // The last change is surely past the queue: once it is dropped, every
    // change has been taken or dropped.
    let last_dropped = format!("the change to kv/seq/{:03} was dropped", CHANGES - 1);
    let mut lines = Vec::new();
    let decided = wait_until(Duration::from_secs(30), async || {
        lines = log_lines(&daemon, "events").await;
        lines.iter().any(|l| l.contains(&last_dropped))
    })
    .await;
    assert!(decided, "the last change was not dropped:\n{lines:#?}");
    let dropped: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            l.split_once("the change to ")?.1.split_once(" was dropped: 256 calls are already waiting")
        })
        .map(|(key, _)| key.to_owned())
        .collect();
    let taken = CHANGES - dropped.len();
    assert!(taken == 256 || taken == 257, "{taken} changes were taken: 256 waiting, and the one running");

    // Open the gate, and let every taken change's call finish.
    let port = ingress_port(&daemon).await;
    let (status, answer) = get(port, "events.localhost", "/kv/set?key=open&value=1");
    assert_eq!(status, 200, "{answer}");
    let finished = wait_until(Duration::from_secs(40), async || {
        lines = log_lines(&daemon, "events").await;
        lines.iter().filter(|l| l.starts_with("end ")).count() >= taken
    })
    .await;
    assert!(finished, "not all {taken} calls finished:\n{lines:#?}");

    // One at a time: each call ends before the next begins.
    let traced: Vec<(&str, Value)> = lines
        .iter()
        .filter_map(|l| {
            let (what, body) = l.split_once(' ')?;
            matches!(what, "begin" | "end").then(|| (what, serde_json::from_str(body).expect("a JSON body")))
        })
        .collect();
    assert_eq!(traced.len(), 2 * taken, "{traced:#?}");
    for (i, pair) in traced.chunks(2).enumerate() {
        assert_eq!((pair[0].0, pair[1].0), ("begin", "end"), "call {i} overlapped another: {traced:#?}");
        assert_eq!(pair[0].1, pair[1].1, "call {i} ended another's: {traced:#?}");
    }
    // In order: the first `taken` changes, by revision, each once; the
    // dropped ones are the rest.
    let keys: Vec<String> = (0..CHANGES).map(|i| format!("kv/seq/{i:03}")).collect();
    let calls: Vec<(String, u64)> = traced
        .iter()
        .step_by(2)
        .map(|(_, body)| {
            (body["key"].as_str().expect("a key").to_owned(), body["revision"].as_u64().expect("a revision"))
        })
        .collect();
    let expected: Vec<(String, u64)> =
        keys.iter().cloned().zip(revisions.iter().copied()).take(taken).collect();
    assert_eq!(calls, expected, "the calls did not come in the store's order");
    assert_eq!(dropped, keys[taken..], "the dropped changes are not the last ones");
    let called_line = lines.iter().filter(|l| l.ends_with("called POST /trace?gate=open: 200.")).count();
    assert_eq!(called_line, taken, "each call is logged once");
}

/// One HTTP/1.0 GET to the ingress: (status, whole response).
pub(crate) fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the ingress");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("an answer");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

/// Issue 17: hosts sharing a store call an app's event trigger once per
/// change, from the leader, not once per host.
#[tokio::test(flavor = "multi_thread")]
async fn hosts_sharing_a_store_call_an_event_trigger_once_per_change() {
    let etcd = hearth_testkit::etcd::Etcd::start();
    let on = |host: &'static str| Daemon::start_on_etcd(BIN, &etcd, host, &[]);
    let (one, two) = (on("one").await, on("two").await);
    let dir = tempfile::tempdir().expect("tempdir");
    deploy(
        &one,
        dir.path(),
        "events",
        "[[event]]\nprefix = \"kv/seq/\"\nkinds = [\"put\"]\npath = \"/trace\"\n",
    );
    // Both hosts serve it (two with the bytes it fetched from the store).
    for host in [&one, &two] {
        let port = ingress_port(host).await;
        let serving = wait_until(Duration::from_secs(20), async || {
            get(port, "events.localhost", "/kv/set?key=ready&value=1").0 == 200
        })
        .await;
        assert!(serving, "{}", host.log());
    }
    let client = one.client();
    for i in 0..5 {
        let put =
            PutKv { value: i.to_string(), encoding: Encoding::Utf8, lease: None, if_mod_revision: None };
        client.kv_put(&format!("seq/{i}"), &put).await.expect("put");
    }
    let begun = async || {
        let mut calls = Vec::new();
        for host in [&one, &two] {
            calls.push(log_lines(host, "events").await.iter().filter(|l| l.starts_with("begin ")).count());
        }
        calls
    };
    let all = wait_until(Duration::from_secs(20), async || begun().await.iter().sum::<usize>() >= 5).await;
    assert!(all, "{:?} calls", begun().await);
    let twice = wait_until(Duration::from_secs(3), async || begun().await.iter().sum::<usize>() > 5).await;
    let calls = begun().await;
    assert!(!twice, "a change called the trigger on both hosts: {calls:?}");
    assert!(calls.contains(&5) && calls.contains(&0), "one host, the leader, made every call: {calls:?}");
}
