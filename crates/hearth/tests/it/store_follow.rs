//! Every subsystem follows the store through one `Follower`, which opens a
//! broken watch again after the last change it handed out. Here the daemon
//! runs with `HEARTH_TEST_BREAK_WATCHES=3` (every watch breaks after one to
//! three events), and what each subsystem does on a change still happens:
//! the events stream hands out every change once, in order; networks are
//! made and removed on the host; workflow runs are woken by their records
//! (a start, a timer, a webhook's signal) and finish.

use std::ffi::OsStr;
use std::time::Duration;

use futures::StreamExt;
use hearth_client::types::{Encoding, PutKv};
use hearth_testkit::{Daemon, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

async fn daemon_with_broken_watches() -> Daemon {
    Daemon::start_with_env(BIN, &[("HEARTH_TEST_BREAK_WATCHES", OsStr::new("3"))]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_stream_hands_out_every_change_once_in_order_through_broken_watches() {
    let daemon = daemon_with_broken_watches().await;
    assert!(daemon.log().contains("every store watch breaks"), "the fault is on");
    let client = daemon.client();
    let mut live = Box::pin(client.follow_events(None, Some("kv/")).await.expect("follow"));
    let put = |v: String| PutKv { value: v, encoding: Encoding::Utf8, lease: None, if_mod_revision: None };
    let mut want = Vec::new();
    for i in 0..30 {
        want.push(client.kv_put(&format!("k{i}"), &put(i.to_string())).await.expect("put").revision);
    }
    let mut seen = Vec::new();
    while seen.len() < want.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream stays open")
            .expect("an event");
        seen.push(event.revision);
    }
    assert_eq!(seen, want);
    assert!(daemon.log().contains("The events stream: the store watch broke"), "the stream's watches broke");
}

#[tokio::test(flavor = "multi_thread")]
async fn networks_are_made_and_removed_on_the_host_through_broken_watches() {
    let daemon = daemon_with_broken_watches().await;
    let bridge = format!("{}b-", daemon.net_prefix());
    for name in ["one", "two", "three"] {
        success(&daemon.cli(&["network", "create", name]));
    }
    let made = wait_until(Duration::from_secs(20), async || {
        daemon.host_links().iter().filter(|l| l.starts_with(&bridge)).count() == 3
    })
    .await;
    assert!(made, "three bridges: {:?}", daemon.host_links());
    for name in ["one", "two", "three"] {
        success(&daemon.cli(&["network", "rm", name]));
    }
    let removed = wait_until(Duration::from_secs(20), async || daemon.host_links().is_empty()).await;
    assert!(removed, "no bridge left: {:?}", daemon.host_links());
    // The networks' follower, behind the host's changes, may break later.
    let broke = wait_until(Duration::from_secs(20), async || {
        daemon.log().contains("Networks: the store watch broke")
    })
    .await;
    assert!(broke, "the networks' watches broke");
}

#[tokio::test(flavor = "multi_thread")]
async fn workflow_runs_are_woken_by_their_records_through_broken_watches() {
    let daemon = daemon_with_broken_watches().await;
    success(&daemon.cli(&["workflow", "deploy", "approval", &crate::workflows_cli::approval_example()]));
    // A timer: the run waits for votes for a second, then times out.
    let quick = r#"{"request": "lunch", "approvers": ["ann", "bob", "cid"], "timeout": "1s"}"#;
    let out = success(&daemon.cli(&["workflow", "start", "approval", "--input", quick, "--wait"]));
    assert!(out.contains("\"decision\":\"timed out\""), "{out}");
    // Signals: two of three votes, sent through the CLI.
    let input = r#"{"request": "laptop", "approvers": ["ann", "bob", "cid"], "timeout": "1h"}"#;
    success(&daemon.cli(&["workflow", "start", "approval", "--id", "laptop", "--input", input]));
    for who in ["ann", "bob"] {
        let vote = format!(r#"{{"who": "{who}", "approve": true}}"#);
        success(&daemon.cli(&["workflow", "signal", "laptop", "vote", "--data", &vote]));
    }
    let run = daemon.client().run_result("laptop", 30_000).await.expect("the run's result");
    assert!(run.output.as_deref().is_some_and(|o| o.contains("\"decision\":\"approved\"")), "{run:?}");
    assert!(daemon.log().contains("Workflow runs: the store watch broke"), "the executor's watches broke");
}
