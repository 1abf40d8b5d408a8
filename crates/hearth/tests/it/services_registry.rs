//! The registry without machines: instances registered under a TTL, their
//! health from heartbeats and from checks the daemon runs, blocking queries
//! that wake only for a real change, and bad input refused.

use std::time::{Duration, Instant};

use hearth_client::types::{CreateService, EndpointsQuery, Health, Heartbeat, RegisterInstance};
use hearth_testkit::{Daemon, failure, success, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn register(id: &str, port: u16, ttl_s: u64, checks: &[&str]) -> RegisterInstance {
    RegisterInstance {
        id: Some(id.into()),
        address: "127.0.0.1".into(),
        port,
        ttl_s,
        checks: checks.iter().map(|c| c.to_string()).collect(),
        tags: vec!["v1".into()],
        routes: None,
    }
}

async fn passing(daemon: &Daemon, service: &str) -> Vec<String> {
    match daemon.client().service_endpoints(service, &EndpointsQuery::default()).await {
        Ok(e) => e.instances.into_iter().map(|i| i.id).collect(),
        Err(_) => vec![],
    }
}

/// A tiny HTTP server on loopback answering `GET /health` with 200 while
/// `healthy` is set, 503 otherwise.
async fn health_server(healthy: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let healthy = healthy.load(std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let status = if healthy { "200 OK" } else { "503 Unavailable" };
                let _ =
                    s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn registered_instances_expire_without_heartbeats_and_queries_wake_only_on_change() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();

    // A registration creates the service; without checks it is passing at once.
    let one = client.register_instance("api", &register("api-a", 9001, 3, &[])).await.expect("register");
    assert_eq!(one.health, Health::Passing);
    assert_eq!(passing(&daemon, "api").await, ["api-a"]);
    let first = client.service_endpoints("api", &EndpointsQuery::default()).await.expect("endpoints");
    assert!(first.index > 0);
    let ls = success(&daemon.cli(&["service", "ls"]));
    assert!(
        ls.lines().any(|l| l.starts_with("api ") && l.contains("registered") && l.contains("1/1")),
        "{ls}"
    );

    // A blocking query from that index does not wake for writes elsewhere,
    // nor for a heartbeat that changes nothing.
    let waiting = {
        let client = daemon.client();
        let index = first.index;
        tokio::spawn(async move {
            let started = Instant::now();
            let q = EndpointsQuery { index: Some(index), wait: Some("20s".into()) };
            let e = client.service_endpoints("api", &q).await.expect("blocking query");
            (e, started.elapsed())
        })
    };
    success(&daemon.cli(&["kv", "put", "unrelated", "x"]));
    client.heartbeat("api", "api-a", &Heartbeat::default()).await.expect("heartbeat");
    client
        .heartbeat("api", "api-a", &Heartbeat { health: Some(Health::Passing), output: None })
        .await
        .expect("hb");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the query woke without a change");
    // A second instance is a change: the query answers with both.
    client.register_instance("api", &register("api-b", 9002, 30, &[])).await.expect("register b");
    let (woken, _) = waiting.await.expect("join");
    assert_eq!(woken.instances.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["api-a", "api-b"]);
    assert!(woken.index > first.index);

    // A heartbeat saying critical takes an instance out; passing brings it back.
    let critical = Heartbeat { health: Some(Health::Critical), output: Some("disk full".into()) };
    client.heartbeat("api", "api-b", &critical).await.expect("critical");
    assert!(wait_until(Duration::from_secs(5), async || passing(&daemon, "api").await == ["api-a"]).await);
    let inspect = success(&daemon.cli(&["service", "inspect", "api"]));
    assert!(
        inspect.contains("api-b") && inspect.contains("critical") && inspect.contains("disk full"),
        "{inspect}"
    );

    // api-a's heartbeats stop: it is gone after its TTL, with no one removing it.
    let gone = wait_until(Duration::from_secs(15), async || {
        client.service("api").await.is_ok_and(|d| d.instances.iter().all(|i| i.id != "api-a"))
    })
    .await;
    assert!(gone, "the expired registration is still listed");
    let err = client.heartbeat("api", "api-a", &Heartbeat::default()).await.expect_err("expired");
    assert!(err.to_string().contains("no instance"), "{err}");

    // Deregistering is at once; the CLI says what to send.
    let out = success(&daemon.cli(&[
        "service",
        "register",
        "api",
        "--address",
        "127.0.0.1",
        "--port",
        "9003",
        "--id",
        "api-c",
    ]));
    assert!(out.contains("hearth service heartbeat api api-c"), "{out}");
    success(&daemon.cli(&["service", "deregister", "api", "api-c"]));
    assert!(client.service("api").await.expect("api").instances.iter().all(|i| i.id != "api-c"));

    success(&daemon.cli(&["service", "rm", "api"]));
    let err = failure(&daemon.cli(&["service", "inspect", "api"]));
    assert!(err.contains("does not exist") && err.contains("hearth service ls"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_checks_registered_instances_and_routes_only_passing_ones() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let port = health_server(healthy.clone()).await;

    let checked = register("web-a", port, 60, &["http:/health,interval=300ms,timeout=300ms,failures=2"]);
    let registered = client.register_instance("web", &checked).await.expect("register");
    assert_eq!(registered.health, Health::Critical, "checked instances start critical");
    assert!(wait_until(Duration::from_secs(10), async || passing(&daemon, "web").await == ["web-a"]).await);

    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(10), async || passing(&daemon, "web").await.is_empty()).await);
    let detail = client.service("web").await.expect("web");
    let instance = &detail.instances[0];
    assert_eq!(instance.health, Health::Critical);
    assert!(instance.output.contains("answered 503"), "{instance:?}");
    let healths: Vec<Health> = instance.changes.iter().map(|c| c.health).collect();
    assert_eq!(healths, [Health::Critical, Health::Passing, Health::Critical]);

    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(10), async || passing(&daemon, "web").await == ["web-a"]).await);

    // A TCP check of a port nobody listens on never passes.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr").port();
    drop(closed);
    client
        .register_instance("web", &register("web-b", dead, 60, &["tcp,interval=300ms,timeout=200ms"]))
        .await
        .expect("register b");
    let refused = wait_until(Duration::from_secs(10), async || {
        let detail = client.service("web").await.expect("web");
        detail.instances.iter().any(|i| i.id == "web-b" && i.output.contains("cannot connect"))
    })
    .await;
    assert!(refused, "{:?}", client.service("web").await);
    assert_eq!(passing(&daemon, "web").await, ["web-a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_service_requests_are_refused_clearly_and_change_nothing() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let client = daemon.client();
    let create = |name: &str, count: u32, checks: &[&str]| CreateService {
        name: name.into(),
        image: image.clone(),
        count: Some(count),
        port: 80,
        checks: checks.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };

    // A service of machines with no instances yet: nobody registers into it.
    client.create_service(&create("db", 0, &["tcp"])).await.expect("create");
    let err = client.register_instance("db", &register("x", 5432, 30, &[])).await.expect_err("refused");
    assert!(err.to_string().contains("service of machines"), "{err}");

    for (request, says) in [
        (create("db", 1, &[]), "already exists"),
        (create("big", 65, &[]), "too many"),
        (create("chk", 1, &["ping"]), "is not a check"),
        (create("chk", 1, &["ttl:5s"]), "registration's TTL"),
        (create("Bad_Name", 1, &[]), "service"),
        (CreateService { image: "nosuch:image".into(), ..create("img", 1, &[]) }, "nosuch:image"),
        (CreateService { network: Some("nowhere".into()), ..create("net", 1, &[]) }, "hearth network create"),
        (CreateService { port: 0, ..create("port", 1, &[]) }, "--port"),
    ] {
        let err = client.create_service(&request).await.expect_err(&request.name);
        assert!(err.to_string().contains(says), "{}: {err}", request.name);
    }
    let names: Vec<String> =
        client.services().await.expect("ls").services.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["db"], "nothing else was made");

    let err = failure(&daemon.cli(&["service", "scale", "nosuch", "2"]));
    assert!(err.contains("does not exist") && err.contains("hearth service ls"), "{err}");
    client.register_instance("reg", &register("r1", 1, 30, &[])).await.expect("register");
    let err = failure(&daemon.cli(&["service", "scale", "reg", "2"]));
    assert!(err.contains("no count to scale"), "{err}");
    let bad = RegisterInstance { address: "not-an-ip".into(), ..register("r2", 1, 30, &[]) };
    let err = client.register_instance("reg", &bad).await.expect_err("bad address");
    assert!(err.to_string().contains("not an IP address"), "{err}");
    let err = client.register_instance("reg", &register("r3", 1, 0, &[])).await.expect_err("ttl 0");
    assert!(err.to_string().contains("TTL"), "{err}");
    let err =
        client.register_instance("reg", &register("r4", 1, 30, &["exec:true"])).await.expect_err("exec");
    assert!(err.to_string().contains("runs in a machine"), "{err}");

    // Apps are services under their own names, which no other takes.
    let hello = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/apps/hello/target/wasm32-wasip2/release/hello.wasm");
    assert!(hello.is_file(), "{} is missing: run `make examples`", hello.display());
    success(&daemon.cli(&["app", "deploy", "hello", &hello.display().to_string()]));
    let listed = client.services().await.expect("ls").services;
    let app = listed.iter().find(|s| s.name == "hello").expect("the app is listed");
    assert_eq!(app.kind, hearth_client::types::ServiceKind::App);
    assert!(app.routes.iter().any(|r| r.contains("hello.localhost")), "{app:?}");
    let err = client.create_service(&create("hello", 1, &[])).await.expect_err("taken by an app");
    assert!(err.to_string().contains("taken by an app"), "{err}");
    let err = client.register_instance("hello", &register("h1", 1, 30, &[])).await.expect_err("taken");
    assert!(err.to_string().contains("taken by an app"), "{err}");
    let err = failure(&daemon.cli(&["app", "deploy", "db", &hello.display().to_string()]));
    assert!(err.contains("taken by a service"), "{err}");

    success(&daemon.cli(&["service", "rm", "db", "reg"]));
    success(&daemon.cli(&["app", "rm", "hello"]));
    assert!(client.services().await.expect("ls").services.is_empty());
}
