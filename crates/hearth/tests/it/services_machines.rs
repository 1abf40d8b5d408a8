//! Services of machines: kept at their count, checked, taken out of the
//! passing set when their VM dies, replaced without a person, scaled and
//! removed, with every automatic act in the service's history.

use std::time::{Duration, Instant};

use hearth_client::types::{EndpointsQuery, Health};
use hearth_testkit::{Daemon, failure, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// An HTTP server: busybox's httpd, answering `GET /` with `body`.
fn server(body: &str) -> String {
    format!(
        "mkdir -p /www && echo {body} > /www/index.html && echo serving {body} && exec busybox httpd -f -p 8080 -h /www"
    )
}

/// One `GET /` through the ingress for `host`: the status and the body.
async fn get(ingress: &str, host: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(ingress).await?;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).unwrap_or_default();
    Ok((status, body))
}

async fn passing(daemon: &Daemon, service: &str) -> Vec<String> {
    match daemon.client().service_endpoints(service, &EndpointsQuery::default()).await {
        Ok(e) => e.instances.into_iter().map(|i| i.id).collect(),
        Err(_) => vec![],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_of_machines_is_kept_at_count_and_a_dead_vm_is_replaced() {
    let mut daemon = Daemon::start_with_default_network(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let client = daemon.client();

    // A log rule over the service's machines (issue 15, item 5).
    success(&daemon.cli(&[
        "alert",
        "rule",
        "add",
        "web-serving",
        "--log",
        "service:web",
        "--regex",
        "serving v1",
        "--notify",
        "history",
    ]));
    // `create` waits until both instances pass their check.
    let published = hearth_testkit::free_port().port();
    let publish = format!("{published}:8080");
    let out = success(&daemon.cli(&[
        "service",
        "create",
        "web",
        "--image",
        &image,
        "--count",
        "2",
        "--port",
        "8080",
        "--check",
        "http:/,interval=500ms,timeout=400ms,failures=2",
        "--tag",
        "frontend",
        "--on-config-change",
        "cp /run/hearth/config.json /tmp/reloaded",
        "-p",
        &publish,
        "--",
        "sh",
        "-c",
        &server("v1"),
    ]));
    assert!(out.contains("2/2 passing"), "{out}");
    assert_eq!(passing(&daemon, "web").await, ["web-1", "web-2"]);
    let detail = client.service("web").await.expect("web");
    assert!(
        detail.instances.iter().all(|i| i.address.is_some() && i.output.contains("answered 200")),
        "{detail:?}"
    );
    let ls = success(&daemon.cli(&["service", "ls"]));
    assert!(ls.lines().any(|l| l.starts_with("web ") && l.contains("machines") && l.contains("2/2")), "{ls}");
    // The published port on the host's loopback answers from an instance.
    let (status, body) = get(&format!("127.0.0.1:{published}"), "web").await.expect("the published port");
    assert_eq!((status, body.as_str()), (200, "v1"));

    // Every instance's main process, in one stream, each line with its instance.
    let logs = success(&daemon.cli(&["service", "logs", "web"]));
    for instance in ["web-1", "web-2"] {
        assert!(logs.lines().any(|l| l.starts_with(instance) && l.contains("serving v1")), "{logs}");
    }
    // The same lines reached the log rule, as the service's.
    let counted = wait_until(Duration::from_secs(10), async || {
        client.alerts().await.is_ok_and(|list| {
            list.alerts.iter().any(|a| {
                a.rule == "web-serving" && a.labels.get("source").is_some_and(|s| s == "service:web")
            })
        })
    })
    .await;
    assert!(counted, "{}", success(&daemon.cli(&["alert", "ls"])));
    // A change in the service's config scope reaches each machine, which
    // runs the reload the service declares, with no new instance.
    success(&daemon.cli(&["config", "set", "--scope", "service:web", "greeting", "hello-web"]));
    for machine in ["web-1", "web-2"] {
        let reloaded = wait_until(Duration::from_secs(20), async || {
            let out = daemon.cli(&["machine", "exec", machine, "--", "cat", "/tmp/reloaded"]);
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("hello-web")
        })
        .await;
        assert!(reloaded, "{machine} did not reload with the new config\n{}", daemon.log());
    }
    assert_eq!(passing(&daemon, "web").await, ["web-1", "web-2"]);
    // Found by name from inside a machine, through its network's DNS server.
    let addresses: Vec<String> = detail.instances.iter().filter_map(|i| i.address.clone()).collect();
    let found =
        success(&daemon.cli(&["machine", "exec", "web-2", "--", "getent", "ahostsv4", "web.service.hearth"]));
    assert!(addresses.iter().all(|a| found.contains(a.as_str())), "{found} lacks one of {addresses:?}");

    // The VM of web-1 dies: it leaves the passing set, and a new machine
    // takes its place without anyone asking.
    let before = client.service_endpoints("web", &EndpointsQuery::default()).await.expect("endpoints");
    let pid = client.machine("web-1").await.expect("web-1").pid.expect("a running VM has a pid");
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    let q = EndpointsQuery { index: Some(before.index), wait: Some("30s".into()) };
    let after = client.service_endpoints("web", &q).await.expect("blocking query");
    let ids: Vec<&str> = after.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["web-2"], "the dead instance left the passing set: {:#?}", client.service("web").await);
    eprintln!("web-1 left the passing set {} ms after its VM was killed", killed.elapsed().as_millis());
    let back =
        wait_until(Duration::from_secs(120), async || passing(&daemon, "web").await == ["web-1", "web-2"])
            .await;
    assert!(back, "web-1 was not replaced: {:?}", client.service("web").await);
    eprintln!("web-1 was replaced and passing {} ms after its VM was killed", killed.elapsed().as_millis());
    let history = success(&daemon.cli(&["service", "history", "web"]));
    assert!(
        history.lines().any(|l| l.contains("web-1") && l.contains("replaced") && l.contains("failed")),
        "{history}"
    );

    // Scaled down: web-2 and its machine go.
    success(&daemon.cli(&["service", "scale", "web", "1"]));
    let gone = wait_until(Duration::from_secs(30), async || client.machine("web-2").await.is_err()).await;
    assert!(gone, "web-2's machine is still there");
    assert!(wait_until(Duration::from_secs(10), async || passing(&daemon, "web").await == ["web-1"]).await);
    assert!(success(&daemon.cli(&["service", "history", "web"])).contains("scaled to 1"));

    // A restarted daemon adopts the running machine and keeps it passing.
    daemon.restart().await;
    let client = daemon.client();
    assert!(wait_until(Duration::from_secs(20), async || passing(&daemon, "web").await == ["web-1"]).await);
    assert_eq!(client.service("web").await.expect("web").instances.len(), 1);

    // Removed: its machines and records go with it.
    success(&daemon.cli(&["service", "rm", "web"]));
    assert!(client.machine("web-1").await.is_err());
    assert!(wait_until(Duration::from_secs(10), async || daemon.vm_pids().is_empty()).await);
    assert!(client.services().await.expect("ls").services.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_deploy_keeps_the_count_passing_and_a_broken_version_rolls_back() {
    let daemon = Daemon::start_with_default_network(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let client = daemon.client();
    // Generous: a guest under software emulation answers slowly while
    // another boots beside it.
    let check = "http:/,interval=1s,timeout=900ms,failures=3";
    let v1 = server("v1");
    success(&daemon.cli(&[
        "service", "create", "api", "--image", &image, "--count", "2", "--port", "8080", "--check", check,
        "--", "sh", "-c", &v1,
    ]));

    // Watch the passing set through the whole rollout: it never shrinks below the count.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, Vec<String>)>::new()));
    let watcher = {
        let (client, seen) = (daemon.client(), seen.clone());
        tokio::spawn(async move {
            let mut index = 0;
            loop {
                let q = EndpointsQuery { index: Some(index), wait: Some("60s".into()) };
                let Ok(e) = client.service_endpoints("api", &q).await else { return };
                let ids = e.instances.iter().map(|i| i.id.clone()).collect();
                seen.lock().expect("lock").push((e.index, ids));
                index = e.index;
            }
        })
    };

    // Steady load through the ingress for the whole rollout: no request fails.
    let ingress = client.status().await.expect("status").ingress.expect("an ingress");
    assert_eq!(get(&ingress, "api.localhost").await.expect("a request"), (200, "v1".to_string()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (ingress, stop) = (ingress.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match get(&ingress, "api.localhost").await {
                        Ok((200, _)) => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let v2 = server("v2");
    let out = success(&daemon.cli(&["service", "deploy", "api", "--", "sh", "-c", &v2]));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in load {
        let (ok, failed) = task.await.expect("join");
        assert!(ok > 0 && failed.is_empty(), "{ok} answered, failed: {failed:?}");
    }
    assert_eq!(get(&ingress, "api.localhost").await.expect("a request"), (200, "v2".to_string()));
    assert!(out.contains("version 2 on 2/2"), "{out}");
    let detail = client.service("api").await.expect("api");
    assert_eq!(detail.instances.len(), 2, "{detail:?}");
    assert!(
        detail.instances.iter().all(|i| i.version == Some(2) && i.health == Health::Passing),
        "{detail:?}"
    );
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.iter().all(|(_, ids)| ids.len() >= 2),
        "the passing set shrank during the rollout: {seen:?}\n{}",
        success(&daemon.cli(&["service", "history", "api"]))
    );
    watcher.abort();
    let history = success(&daemon.cli(&["service", "history", "api"]));
    assert!(history.contains("deployed") && history.contains("version 2 replaces version 1"), "{history}");

    // A version that never answers: its first instance never passes, and
    // the service goes back to version 2 by itself.
    let err = failure(&daemon.cli(&["service", "deploy", "api", "--", "sh", "-c", "sleep 100000"]));
    assert!(err.contains("rolled back to version 2") && err.contains("did not pass"), "{err}");
    let back = wait_until(Duration::from_secs(60), async || {
        client.service("api").await.is_ok_and(|d| {
            d.instances.len() == 2
                && d.instances.iter().all(|i| i.version == Some(2) && i.health == Health::Passing)
        })
    })
    .await;
    assert!(back, "{:?}", client.service("api").await);
    let inspect = success(&daemon.cli(&["service", "inspect", "api"]));
    assert!(inspect.contains("rolled-back"), "{inspect}");
    success(&daemon.cli(&["service", "rm", "api"]));
    assert!(wait_until(Duration::from_secs(10), async || daemon.vm_pids().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_joins_a_service_by_hand_for_as_long_as_it_exists() {
    let daemon = Daemon::start_with_default_network(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let client = daemon.client();

    // Refused, and nothing made: a service hearth keeps, and a bad spec.
    let kept = hearth_client::types::CreateService {
        name: "kept".into(),
        image: image.clone(),
        count: Some(0),
        port: 80,
        ..Default::default()
    };
    client.create_service(&kept).await.expect("create");
    let err = failure(&daemon.cli(&["machine", "run", "-d", "--name", "x", "--service", "kept:80", &image]));
    assert!(err.contains("service of machines"), "{err}");
    let err = failure(&daemon.cli(&["machine", "run", "-d", "--name", "x", "--service", "nocolon", &image]));
    assert!(err.contains("NAME:PORT"), "{err}");
    assert!(client.machine("x").await.is_err(), "a refused machine was made");

    let solo = server("solo");
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "solo",
        "--service",
        "adhoc:8080",
        &image,
        "--",
        "sh",
        "-c",
        &solo,
    ]));
    assert!(wait_until(Duration::from_secs(60), async || passing(&daemon, "adhoc").await == ["solo"]).await);
    let detail = client.service("adhoc").await.expect("adhoc");
    assert_eq!(detail.service.kind, hearth_client::types::ServiceKind::Registered);
    assert_eq!(detail.instances[0].machine.as_deref(), Some("solo"));
    let err = failure(&daemon.cli(&["service", "deregister", "adhoc", "solo"]));
    assert!(err.contains("hearth machine rm solo"), "{err}");

    // The machine goes: so does the instance, and nothing is remade.
    success(&daemon.cli(&["machine", "rm", "-f", "solo"]));
    let left = wait_until(Duration::from_secs(10), async || {
        client.service("adhoc").await.is_ok_and(|d| d.instances.is_empty())
    })
    .await;
    assert!(left, "{:?}", client.service("adhoc").await);
    assert!(success(&daemon.cli(&["service", "history", "adhoc"])).contains("machine solo is gone"));
    assert!(client.machine("solo").await.is_err(), "hearth remade a machine it does not own");
}
