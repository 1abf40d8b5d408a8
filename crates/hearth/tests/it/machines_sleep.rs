//! Machines that sleep when idle: saved to disk with no VM left, woken by
//! the next connection through their ports (which gets its answer), by
//! hand, by an exec, by a cron or event trigger, by a workflow's call,
//! where they were, across a daemon restart too. That
//! a woken machine is the same one, not booted afresh, is told by a file in
//! `/dev/shm`, which lives in its memory only.

use std::time::Duration;

use hearth_testkit::{Daemon, failure, free_port, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// The machine's main process: busybox's httpd answering `GET /`.
const SERVER: &str = "mkdir -p /www && echo awake > /www/index.html && exec busybox httpd -f -p 8080 -h /www";

/// One `GET /` through the forwarded port: the body, once the whole answer
/// came (the connection is held while the machine wakes).
async fn get(port: u16) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: napper\r\n\r\n").await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(90), stream.read_to_string(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer within 90s"))??;
    Ok(answer.split_once("\r\n\r\n").map(|(_, body)| body.trim().to_owned()).unwrap_or(answer))
}

async fn state(daemon: &Daemon, name: &str) -> String {
    daemon.client().machine(name).await.map(|m| m.state.to_string()).unwrap_or_default()
}

async fn wait_for(daemon: &Daemon, name: &str, wanted: &str, within: Duration) {
    let reached = wait_until(within, async || state(daemon, name).await == wanted).await;
    let now = daemon.client().machine(name).await;
    assert!(reached, "{name} never became {wanted}: {now:?}\n{}", daemon.log());
}

/// What the machine's memory holds, read by an exec (which wakes it).
fn mark(daemon: &Daemon) -> String {
    success(&daemon.cli(&["machine", "exec", "napper", "--", "cat", "/dev/shm/mark"])).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_machine_sleeps_and_wakes_where_it_was_for_a_connection_by_hand_an_exec_a_trigger_and_a_restart()
 {
    let mut daemon = Daemon::start_with_default_network(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let port = free_port().port();

    // Refused at once, with what to give instead.
    let err = failure(&daemon.cli(&["machine", "run", "-d", "--sleep-after", "500ms", &image]));
    assert!(err.contains("sleep_after") && err.contains("at least one"), "{err}");

    let publish = format!("{port}:8080");
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "napper",
        "-p",
        &publish,
        "--sleep-after",
        "3s",
        &image,
        "--",
        "sh",
        "-c",
        SERVER,
    ]));
    let inspect = success(&daemon.cli(&["machine", "inspect", "napper"]));
    assert!(inspect.contains("after 3s without a connection"), "{inspect}");
    let served =
        wait_until(Duration::from_secs(60), async || get(port).await.is_ok_and(|b| b == "awake")).await;
    assert!(served, "the server never answered");
    success(&daemon.cli(&["machine", "exec", "napper", "--", "sh", "-c", "echo kept > /dev/shm/mark"]));

    // Idle for 3 s: asleep, with no VM left.
    wait_for(&daemon, "napper", "sleeping", Duration::from_secs(90)).await;
    assert!(daemon.vm_pids().is_empty(), "a sleeping machine keeps no VM");
    let ls = success(&daemon.cli(&["machine", "ls"]));
    assert!(ls.lines().any(|l| l.starts_with("napper") && l.contains("sleeping")), "{ls}");
    let err = failure(&daemon.cli(&["machine", "rm", "napper"]));
    assert!(err.contains("is sleeping") && err.contains("rm -f"), "{err}");

    // The next connection is held while it wakes, then answered.
    assert_eq!(get(port).await.expect("an answer through the sleeping machine's port"), "awake");
    assert_eq!(state(&daemon, "napper").await, "running");
    assert_eq!(mark(&daemon), "kept", "woken where it was, not booted afresh");

    // By hand.
    let out = success(&daemon.cli(&["machine", "sleep", "napper"]));
    assert!(out.contains("napper is asleep"), "{out}");
    assert!(daemon.vm_pids().is_empty());
    let out = success(&daemon.cli(&["machine", "wake", "napper"]));
    assert!(out.contains("napper is awake"), "{out}");
    assert_eq!(mark(&daemon), "kept");

    // An exec wakes it first.
    success(&daemon.cli(&["machine", "sleep", "napper"]));
    assert_eq!(mark(&daemon), "kept", "the exec woke it");

    // A cron trigger: a schedule with seconds, due a few seconds from now.
    success(&daemon.cli(&["machine", "sleep", "napper"]));
    let second =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 4)
            % 60;
    let schedule = format!("{second} * * * * *");
    let added = success(&daemon.cli(&["machine", "trigger", "add", "napper", "--cron", &schedule]));
    assert!(added.contains("→ wake"), "{added}");
    let id = added.split_whitespace().nth(4).expect("the trigger's id").to_owned();
    wait_for(&daemon, "napper", "running", Duration::from_secs(75)).await;
    assert_eq!(mark(&daemon), "kept", "the cron trigger woke it where it was");
    success(&daemon.cli(&["machine", "trigger", "rm", "napper", &id]));

    // An event trigger: a change under a key prefix.
    success(&daemon.cli(&["machine", "sleep", "napper"]));
    success(&daemon.cli(&["machine", "trigger", "add", "napper", "--event", "kv/napper-wake"]));
    let ls = success(&daemon.cli(&["machine", "trigger", "ls", "napper"]));
    assert!(ls.contains("kv/napper-wake* (put, delete) → wake"), "{ls}");
    success(&daemon.cli(&["kv", "put", "napper-wake", "now"]));
    wait_for(&daemon, "napper", "running", Duration::from_secs(60)).await;
    // A webhook needs no trigger: the CLI has no --webhook, the API says why.
    let err = failure(&daemon.cli(&["machine", "trigger", "add", "napper", "--webhook", "/hook"]));
    assert!(err.contains("--webhook"), "{err}");
    let webhook = hearth_client::types::TriggerBody {
        path: Some("/hook".into()),
        ..hearth_client::types::TriggerBody::new(hearth_client::types::TriggerKind::Webhook)
    };
    let err = daemon.client().add_trigger("machines", "napper", &webhook).await.expect_err("refused");
    assert!(err.to_string().contains("forwarded port"), "{err}");
    let err = failure(&daemon.cli(&["machine", "trigger", "add", "napper", "--event", "machines/"]));
    assert!(err.contains("not allowed"), "{err}");

    // A workflow wakes it by calling it, and it sleeps again afterwards.
    success(&daemon.cli(&["machine", "sleep", "napper"]));
    success(&daemon.cli(&["workflow", "deploy", "approval", &crate::workflows_cli::approval_example()]));
    let input = format!(
        r#"{{"request": "wake", "approvers": ["ann"], "timeout": "1s", "notify": "http://127.0.0.1:{port}/"}}"#
    );
    success(&daemon.cli(&["workflow", "start", "approval", "--id", "nap-call", "--input", &input, "--wait"]));
    let logs = success(&daemon.cli(&["workflow", "logs", "nap-call"]));
    assert!(logs.contains("notified: HTTP"), "the call reached the machine: {logs}");
    wait_for(&daemon, "napper", "sleeping", Duration::from_secs(90)).await;

    // Asleep across a daemon restart, and woken by a connection after it.
    success(&daemon.cli(&["machine", "sleep", "napper"]));
    daemon.restart().await;
    assert_eq!(state(&daemon, "napper").await, "sleeping");
    assert!(daemon.vm_pids().is_empty());
    // Its port is forwarded again once the daemon's networks are up (until
    // then, refused); the first connection accepted wakes it, and is answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match get(port).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                assert!(std::time::Instant::now() < deadline, "its port was not forwarded after the restart");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answer => break answer,
        }
    };
    assert_eq!(answer.expect("an answer after the restart"), "awake");
    assert_eq!(mark(&daemon), "kept");

    // A sleeping machine that is stopped is woken and powered off cleanly.
    success(&daemon.cli(&["machine", "sleep", "napper"]));
    let out = success(&daemon.cli(&["machine", "stop", "napper"]));
    assert!(out.contains("napper is stopped"), "{out}");
    let err = failure(&daemon.cli(&["machine", "sleep", "napper"]));
    assert!(err.contains("is stopped"), "{err}");
    assert!(!daemon.data_dir().join("machines/napper/sleep").exists());

    success(&daemon.cli(&["machine", "rm", "napper"]));
    assert!(daemon.vm_pids().is_empty());
}
