//! A service whose machines sleep when idle: its instance falls asleep
//! with no VM left, stays in the service's endpoints as `sleeping` (not
//! critical, not replaced), and is woken where it was by a request through
//! the ingress and by a connection to the service's published port, each
//! of which gets its answer. That the woken machine is the same one, not a
//! replacement booted afresh, is told by a file in `/dev/shm`, which lives
//! in its memory only.

use std::time::Duration;

use hearth_client::types::{EndpointsQuery, Health};
use hearth_testkit::{Daemon, failure, free_port, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// The machine's main process: busybox's httpd answering `GET /`.
const SERVER: &str = "mkdir -p /www && echo awake > /www/index.html && exec busybox httpd -f -p 8080 -h /www";

/// One `GET /` to `addr` with `host`: the status and the body, once the
/// whole answer came (a request is held while the machine wakes).
async fn get(addr: &str, host: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(90), stream.read_to_string(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer within 90s"))??;
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The instance's health and whether its endpoint says it sleeps.
async fn instance(daemon: &Daemon) -> (Option<Health>, Option<bool>) {
    let client = daemon.client();
    let health = client.service("web").await.ok().and_then(|d| d.instances.first().map(|i| i.health));
    let endpoints = client.service_endpoints("web", &EndpointsQuery::default()).await;
    let sleeping = endpoints.ok().and_then(|e| e.instances.first().map(|i| i.sleeping));
    (health, sleeping)
}

/// The machine's state.
async fn machine(daemon: &Daemon) -> String {
    daemon.client().machine("web-1").await.map(|m| m.state.to_string()).unwrap_or_default()
}

async fn wait_asleep(daemon: &Daemon) {
    let asleep = wait_until(Duration::from_secs(90), async || {
        instance(daemon).await == (Some(Health::Sleeping), Some(true))
            && machine(daemon).await == "sleeping"
            && daemon.vm_pids().is_empty()
    })
    .await;
    let seen = daemon.client().service("web").await;
    assert!(asleep, "the instance never fell asleep: {seen:?}\n{}", daemon.log());
}

fn mark(daemon: &Daemon) -> String {
    success(&daemon.cli(&["machine", "exec", "web-1", "--", "cat", "/dev/shm/mark"])).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_whose_instances_sleep_is_woken_through_the_ingress_and_its_published_port() {
    let daemon = Daemon::start_with_default_network(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let client = daemon.client();
    let ingress = client.status().await.expect("status").ingress.expect("an ingress");
    let published = free_port().port();
    let publish = format!("{published}:8080");

    let create = |extra: &[&str]| {
        let mut args = vec!["service", "create", "web", "--image", &image, "--port", "8080"];
        args.extend_from_slice(extra);
        daemon.cli(&args)
    };
    let err = failure(&create(&["--sleep-after", "soon"]));
    assert!(err.contains("sleep_after") && err.contains("30s, 5m"), "{err}");

    // `create` waits until the instance passes its check (or already sleeps).
    success(&create(&[
        "--check",
        "http:/,interval=1s",
        "-p",
        &publish,
        "--sleep-after",
        "3s",
        "--",
        "sh",
        "-c",
        SERVER,
    ]));
    let inspect = success(&daemon.cli(&["service", "inspect", "web"]));
    assert!(inspect.contains("sleeps:      after 3s idle"), "{inspect}");
    success(&daemon.cli(&["machine", "exec", "web-1", "--", "sh", "-c", "echo kept > /dev/shm/mark"]));

    // Idle for 3 s, checks or not: asleep, with no VM left, still routed to.
    wait_asleep(&daemon).await;
    let inspect = success(&daemon.cli(&["service", "inspect", "web"]));
    assert!(inspect.contains("(0 passing, 1 asleep)") && inspect.contains("sleeping"), "{inspect}");
    let ls = success(&daemon.cli(&["service", "ls"]));
    assert!(ls.lines().any(|l| l.starts_with("web") && l.contains("0/1 (1 asleep)")), "{ls}");

    // A request through the ingress wakes it and gets its answer.
    let answer = get(&ingress, "web.localhost").await.expect("an answer through the ingress");
    assert_eq!(answer, (200, "awake".to_owned()), "{}", daemon.log());
    assert_eq!(machine(&daemon).await, "running");
    assert_eq!(mark(&daemon), "kept", "woken where it was, not replaced");
    let passing = wait_until(Duration::from_secs(30), async || {
        instance(&daemon).await == (Some(Health::Passing), Some(false))
    })
    .await;
    assert!(passing, "awake again, its checks pass: {:?}", instance(&daemon).await);

    // Asleep again, a connection to the published port wakes it.
    wait_asleep(&daemon).await;
    let answer = get(&format!("127.0.0.1:{published}"), "web").await.expect("an answer through the port");
    assert_eq!(answer, (200, "awake".to_owned()), "{}", daemon.log());
    assert_eq!(mark(&daemon), "kept");

    // Nothing was replaced along the way.
    let history = success(&daemon.cli(&["service", "history", "web"]));
    assert!(history.contains("created"), "{history}");
    for act in ["replaced", "restarted", "failed", "removed"] {
        assert!(!history.contains(act), "{act}: {history}");
    }
    success(&daemon.cli(&["service", "rm", "web"]));
}
