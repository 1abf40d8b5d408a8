//! A machine's main process (issue 14, item 1): run by the agent with its
//! environment, directory and user, restarted under its policy, its state in
//! `machine inspect` (surviving a daemon restart), its output in `machine
//! logs` apart from the console.

use std::time::Duration;

use hearth_client::types::Machine;
use hearth_testkit::{Daemon, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");
/// Boot under software emulation, plus the main process's first runs.
const LIMIT: Duration = Duration::from_secs(180);

async fn main_state(daemon: &Daemon, name: &str) -> Option<hearth_client::types::MainProcess> {
    daemon.client().machine(name).await.ok().and_then(|m: Machine| m.main)
}

/// The summaries of `rule`'s entries in the alert history, once it has one.
async fn alert_history(daemon: &Daemon, rule: &str) -> Vec<String> {
    let summaries = || {
        let text = success(&daemon.cli(&["alert", "history", "--rule", rule, "--json"]));
        let history: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        history["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["alerts"][0]["summary"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(10), async || !summaries().is_empty()).await;
    summaries()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_main_process_is_restarted_and_its_output_is_logged_apart_from_the_console() {
    let mut daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let script = "echo hello-from-main; echo oops-from-main >&2; exit 3";
    // A log rule over the machine's output (issue 15, item 5).
    success(&daemon.cli(&[
        "alert",
        "rule",
        "add",
        "crashy-oops",
        "--log",
        "machine:crashy",
        "--regex",
        "oops-from-main",
        "--count",
        "> 1",
        "--window",
        "10m",
        "--notify",
        "history",
    ]));
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "crashy",
        "--memory",
        "256M",
        "--restart",
        "on-failure",
        &image,
        "--",
        "sh",
        "-c",
        script,
    ]));
    let counted =
        wait_until(LIMIT, async || main_state(&daemon, "crashy").await.is_some_and(|m| m.restarts >= 2))
            .await;
    let main = main_state(&daemon, "crashy").await;
    assert!(counted, "the restarts do not count up: {main:?}\n{}", daemon.log());
    let main = main.expect("main");
    assert!(main.state == "running" || main.state == "restarting", "{main:?}");
    assert!(main.pid.is_some() && main.started_at.is_some(), "{main:?}");

    let inspect = success(&daemon.cli(&["machine", "inspect", "crashy"]));
    assert!(inspect.contains("restart     on-failure") && inspect.contains("restarts"), "{inspect}");
    let json: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["machine", "inspect", "--json", "crashy"])))
            .expect("json");
    assert!(json["main"]["restarts"].as_u64() >= Some(2), "{json}");

    // Its output, marked per stream, in its own log and not the console's.
    let main_log = success(&daemon.cli(&["machine", "logs", "--main", "crashy"]));
    let lines: Vec<&str> = main_log.lines().collect();
    assert!(lines.contains(&"out| hello-from-main"), "{main_log}");
    assert!(lines.contains(&"err| oops-from-main"), "{main_log}");
    let console = success(&daemon.cli(&["machine", "logs", "--console", "crashy"]));
    assert!(console.contains("hearth-agent: ready"), "{console}");
    assert!(!console.contains("hello-from-main") && !console.contains("oops-from-main"), "{console}");
    let both = success(&daemon.cli(&["machine", "logs", "crashy"]));
    assert!(both.lines().any(|l| l == "main out| hello-from-main"), "{both}");
    assert!(both.lines().any(|l| l == "console| hearth-agent: ready"), "{both}");

    // The log rule counted the machine's lines, and each restart the
    // agent made is in the alert history (issue 15, item 7).
    let firing = wait_until(Duration::from_secs(10), async || {
        daemon.client().alerts().await.is_ok_and(|list| {
            list.alerts.iter().any(|a| {
                a.rule == "crashy-oops" && matches!(a.phase, hearth_client::types::AlertPhase::Firing)
            })
        })
    })
    .await;
    assert!(firing, "{}", success(&daemon.cli(&["alert", "ls"])));
    let restarted = alert_history(&daemon, "hearth-main-restarted").await;
    assert!(
        restarted.iter().any(|s| s.contains("machine:crashy") && s.contains("exited with code 3")),
        "{restarted:?}"
    );

    // The record is the truth across a daemon restart, and the agent tells
    // the new daemon about the restarts it made meanwhile.
    let before = main.restarts;
    daemon.restart().await;
    let caught_up =
        wait_until(LIMIT, async || main_state(&daemon, "crashy").await.is_some_and(|m| m.restarts > before))
            .await;
    assert!(caught_up, "{:?}\n{}", main_state(&daemon, "crashy").await, daemon.log());
    // The new daemon took the machine back, and says so.
    let recovered = alert_history(&daemon, "hearth-recovered").await;
    assert!(
        recovered.iter().any(|s| s.contains("machine:crashy") && s.contains("adopted its VM")),
        "{recovered:?}"
    );
    // The machine itself runs on whatever its main process does.
    assert_eq!(daemon.client().machine("crashy").await.expect("machine").state, "running");
    success(&daemon.cli(&["machine", "rm", "-f", "crashy"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_main_process_runs_with_its_env_workdir_and_user_and_a_missing_user_is_reported() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&[
        "machine",
        "run",
        "-d",
        "--name",
        "who",
        "--memory",
        "256M",
        "--env",
        "FOO=bar",
        "--workdir",
        "/srv/app",
        "--user",
        "nobody",
        &image,
        "--",
        "sh",
        "-c",
        "id -u; pwd; echo \"$FOO\"; exit 3",
    ]));
    success(&daemon.cli(&[
        "machine", "run", "-d", "--name", "ghost", "--memory", "256M", "--user", "ghost", &image, "--",
        "true",
    ]));

    let ended =
        wait_until(LIMIT, async || main_state(&daemon, "who").await.is_some_and(|m| m.state == "exited"))
            .await;
    let main = main_state(&daemon, "who").await;
    assert!(ended, "{main:?}\n{}", daemon.log());
    let main = main.expect("main");
    assert_eq!((main.exit_code, main.restarts), (Some(3), 0), "--restart no is the default: {main:?}");
    let out = success(&daemon.cli(&["machine", "logs", "--main", "who"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["out| 65534", "out| /srv/app", "out| bar"], "{out}");
    let m = daemon.client().machine("who").await.expect("machine");
    assert_eq!((m.user.as_deref(), m.workdir.as_deref()), (Some("nobody"), Some("/srv/app")), "{m:?}");
    assert!(m.env.contains(&"FOO=bar".to_owned()), "{m:?}");
    assert_eq!(m.state, "running", "a machine outlives its main process");

    let failed = wait_until(LIMIT, async || {
        main_state(&daemon, "ghost").await.is_some_and(|m| m.state == "failed-to-start")
    })
    .await;
    let main = main_state(&daemon, "ghost").await;
    assert!(failed, "{main:?}\n{}", daemon.log());
    let error = main.and_then(|m| m.error).unwrap_or_default();
    assert!(error.contains("\"ghost\" is not in the machine's /etc/passwd"), "{error}");
    let inspect = success(&daemon.cli(&["machine", "inspect", "ghost"]));
    assert!(inspect.contains("failed-to-start") && inspect.contains("main error"), "{inspect}");
    for name in ["who", "ghost"] {
        success(&daemon.cli(&["machine", "rm", "-f", name]));
    }
}

/// Lines `out| 1` to `out| N` of a main log, as numbers.
fn counted(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.strip_prefix("out| ")).filter_map(|n| n.parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_main_log_rotated_while_the_guest_writes_loses_no_line() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    // About 7 MB of numbered lines (`out| N`): past the 4 MiB bound once,
    // most likely while the guest is still writing.
    const LAST: u64 = 600_000;
    let script = format!("seq 1 {LAST}; sleep 3600");
    success(
        &daemon.cli(&[
            "machine", "run", "--name", "chatty", "--memory", "256M", &image, "--", "sh", "-c", &script,
        ]),
    );
    let dir = daemon.data_dir().join("machines/chatty");
    let (log, old) = (dir.join("main.log"), dir.join("main.log.1"));
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let both = || [counted(&read(&old)), counted(&read(&log))].concat();
    let done = wait_until(LIMIT, async || old.exists() && both().last() == Some(&LAST)).await;
    assert!(
        done,
        "no rotation, or the lines never all came: {} in main.log\n{}",
        read(&log).len(),
        daemon.log()
    );

    // Every line once, in order, across the two files: none lost while
    // QEMU moved to the new file.
    let mut all = counted(&read(&old));
    let first_old = all.first().copied();
    all.extend(counted(&read(&log)));
    assert_eq!(first_old, Some(1), "the old file starts at the first line");
    let expected: Vec<u64> = (1..=LAST).collect();
    assert!(
        all == expected,
        "{} lines, first gap after {:?}",
        all.len(),
        all.windows(2).find(|w| w[1] != w[0] + 1)
    );

    // QEMU keeps nothing of the old file open, and holds the new one.
    let pid = daemon.client().machine("chatty").await.expect("machine").pid.expect("pid");
    let open: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(open.iter().any(|p| p.ends_with("machines/chatty/main.log")), "{open:?}");
    assert!(!open.iter().any(|p| p.contains("main.log.1")), "{open:?}");
    success(&daemon.cli(&["machine", "rm", "-f", "chatty"]));
}
