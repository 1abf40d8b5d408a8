//! Snapshots: a machine paused to disk resumes where it was, so a process
//! counting inside the guest keeps counting after the restore.

use std::time::Duration;

use hearth_testkit::{Daemon, failure, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn count(daemon: &Daemon, machine: &str) -> u64 {
    try_count(daemon, machine).unwrap_or_else(|| {
        let out = daemon.cli(&["machine", "exec", machine, "--", "cat", "/tmp/count"]);
        panic!("{machine} has no count in /tmp/count: {out:?}")
    })
}

/// The count, if the counter has written one yet.
fn try_count(daemon: &Daemon, machine: &str) -> Option<u64> {
    let out = daemon.cli(&["machine", "exec", machine, "--", "cat", "/tmp/count"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_snapshot_keeps_counting_where_it_left_off() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&["machine", "run", "--name", "counter", &image]));
    // A counter in its own session, so it outlives the exec that started it.
    // Each count is renamed into place, so a reader never sees the file
    // between the shell's truncate and its write.
    success(&daemon.cli(&[
        "machine",
        "exec",
        "counter",
        "--",
        "sh",
        "-c",
        "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done' </dev/null >/dev/null 2>&1 &",
    ]));
    let started =
        wait_until(Duration::from_secs(10), async || try_count(&daemon, "counter").is_some_and(|n| n > 0))
            .await;
    assert!(started, "the counter never counted");
    let before = count(&daemon, "counter");

    let out = success(&daemon.cli(&["machine", "snapshot", "counter", "snap"]));
    assert!(out.contains("saved counter to snapshot snap"), "{out}");
    let stopped = daemon.client().machine("counter").await.expect("machine");
    assert_eq!(stopped.state, "stopped");
    assert!(
        stopped.reason.as_deref().is_some_and(|r| r.contains("hearth machine restore snap")),
        "{stopped:?}"
    );
    assert!(daemon.vm_pids().is_empty(), "the snapshotted VM is gone");
    let list = success(&daemon.cli(&["snapshot", "ls"]));
    assert!(list.lines().nth(1).is_some_and(|l| l.starts_with("snap ") && l.contains("counter")), "{list}");

    // Taken names and unknown snapshots are refused.
    let err = failure(&daemon.cli(&["machine", "restore", "snap"]));
    assert!(err.contains("already exists"), "{err}");
    let err = failure(&daemon.cli(&["machine", "restore", "nosuch"]));
    assert!(err.contains("does not exist") && err.contains("hearth snapshot ls"), "{err}");
    let err = failure(&daemon.cli(&["machine", "snapshot", "counter", "again"]));
    assert!(err.contains("is stopped"), "{err}");

    // Restored twice, from the same snapshot: both continue from the same point.
    for name in ["copy1", "copy2"] {
        let out = success(&daemon.cli(&["machine", "restore", "snap", "--name", name]));
        assert!(out.contains(&format!("{name} is running")), "{out}");
        let first = count(&daemon, name);
        assert!(first >= before, "{name} went back in time: {first} < {before}");
        let counting =
            wait_until(Duration::from_secs(10), async || try_count(&daemon, name).is_some_and(|n| n > first))
                .await;
        assert!(counting, "{name} stopped counting at {first}");
    }

    for name in ["copy1", "copy2", "counter"] {
        success(&daemon.cli(&["machine", "rm", "-f", name]));
    }
    success(&daemon.cli(&["snapshot", "rm", "snap"]));
    assert!(success(&daemon.cli(&["snapshot", "ls"])).lines().count() == 1);
    assert!(!daemon.data_dir().join("snapshots/snap").exists());
    assert!(daemon.vm_pids().is_empty());
}
