//! The ingress in front of services: `NAME.localhost` balanced over the
//! passing instances, a refused connection retried on another instance,
//! failing instances ejected and admitted again, deregistered ones no
//! longer sent anything, and a clear 503 when no instance passes; the
//! routes services declare, matched with apps' by the longest prefix, and
//! a route two owners claim refused; WebSockets through to an instance.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hearth_client::types::RegisterInstance;
use hearth_testkit::{Daemon, failure, success, wait_until};
use http_body_util::BodyExt;
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// A tiny HTTP server on loopback that answers every request with its
/// name and what it was sent (or a 500 while `failing`), and counts them.
pub(crate) struct Backend {
    name: &'static str,
    pub(crate) port: u16,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    pub(crate) async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let mut backend = Backend { name, port, hits: Arc::default(), failing: Arc::default(), task: None };
        backend.serve(listener);
        backend
    }

    fn serve(&mut self, listener: TcpListener) {
        let (name, hits, failing) = (self.name, self.hits.clone(), self.failing.clone());
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (hits, failing) = (hits.clone(), failing.clone());
                tokio::spawn(answer(stream, name, hits, failing));
            }
        }));
    }

    /// Stops listening: connections to its port are refused.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("bind the same port again");
        self.serve(listener);
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub(crate) fn register(&self, id: &str) -> RegisterInstance {
        RegisterInstance {
            id: Some(id.into()),
            address: "127.0.0.1".into(),
            port: self.port,
            ttl_s: 300,
            checks: vec![],
            tags: vec![],
            routes: None,
        }
    }
}

async fn answer(mut stream: TcpStream, name: &str, hits: Arc<AtomicUsize>, failing: Arc<AtomicBool>) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&seen).into_owned();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    let header = |wanted: &str| {
        head.lines()
            .skip(1)
            .find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(wanted)).map(|(_, v)| v.trim())
            })
            .unwrap_or("-")
            .to_owned()
    };
    let body = format!(
        "{name} {request_line} host={} xff={} xfh={} xfp={} x-hop={} upgrade={}\n",
        header("host"),
        header("x-forwarded-for"),
        header("x-forwarded-host"),
        header("x-forwarded-proto"),
        header("x-hop"),
        header("upgrade"),
    );
    let status = if failing.load(Ordering::SeqCst) { "500 Internal Server Error" } else { "200 OK" };
    let response =
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = stream.write_all(response.as_bytes()).await;
}

/// One request through the ingress: (status, body).
async fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the ingress");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close, x-hop\r\nX-Hop: dropped\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// `n` requests to `api.localhost`: who answered each, and any failure.
async fn spread(port: u16, n: usize) -> (Vec<String>, Vec<(u16, String)>) {
    let mut answered = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..n {
        let (status, body) = get(port, "api.localhost", "/").await;
        if status == 200 {
            answered.push(body.split(' ').next().unwrap_or_default().to_owned());
        } else {
            failed.push((status, body));
        }
    }
    (answered, failed)
}

pub(crate) async fn ingress_port(daemon: &Daemon) -> u16 {
    let status = daemon.client().status().await.expect("status");
    status.ingress.and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok())).expect("an ingress port")
}

async fn metrics(daemon: &Daemon) -> String {
    let response = daemon.client().send(Method::GET, "/metrics", None).await.expect("metrics");
    String::from_utf8(response.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf8")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ingress_balances_retries_ejects_and_follows_a_service() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let port = ingress_port(&daemon).await;
    let mut a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    for (backend, id) in [(&a, "api-a"), (&b, "api-b"), (&c, "api-c")] {
        client.register_instance("api", &backend.register(id)).await.expect("register");
    }

    // All three answer, over many requests, with the request as it was sent.
    let all = BTreeSet::from(["a".to_string(), "b".to_string(), "c".to_string()]);
    let balanced = wait_until(Duration::from_secs(10), async || {
        let (answered, failed) = spread(port, 9).await;
        failed.is_empty() && answered.into_iter().collect::<BTreeSet<_>>() == all
    })
    .await;
    assert!(balanced, "not all three instances answer: {:?}", spread(port, 3).await);
    let (status, echo) = get(port, "API.Localhost", "/echo/x?q=1&r=two").await;
    assert_eq!(status, 200, "{echo}");
    for part in [
        "GET /echo/x?q=1&r=two HTTP/1.1",
        "host=API.Localhost ",
        "xff=10.1.2.3, 127.0.0.1 ",
        "xfh=API.Localhost ",
        "xfp=http ",
        "x-hop=-",
    ] {
        assert!(echo.contains(part), "{part:?} missing from {echo}");
    }

    // One stops: its refusals are retried on the others, unseen, and it is
    // ejected: back on its port at once, it gets nothing for a while, then
    // is admitted again.
    a.stop().await;
    let (answered, failed) = spread(port, 30).await;
    assert!(failed.is_empty(), "a refused connection reached a client: {failed:?}");
    assert!(answered.iter().all(|n| n != "a"), "{answered:?}");
    a.restart().await;
    let before = a.hits();
    let (answered, failed) = spread(port, 12).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(a.hits(), before, "an ejected instance got requests: {answered:?}");
    let admitted = wait_until(Duration::from_secs(20), async || {
        let _ = spread(port, 3).await;
        a.hits() > before
    })
    .await;
    assert!(admitted, "the instance was never admitted again");

    // One answers 500: it is ejected after three in a row. A 500 reached
    // the instance, so it is passed on, not retried.
    b.failing.store(true, Ordering::SeqCst);
    let before = b.hits();
    let (_, failed) = spread(port, 24).await;
    assert_eq!(b.hits() - before, 3, "an instance answering 500 got more than three requests");
    assert_eq!(failed.iter().filter(|(s, _)| *s == 500).count(), 3, "{failed:?}");
    b.failing.store(false, Ordering::SeqCst);

    // A deregistered instance gets no more requests.
    client.deregister_instance("api", "api-c").await.expect("deregister");
    let left = wait_until(Duration::from_secs(10), async || {
        let before = c.hits();
        let _ = spread(port, 4).await;
        c.hits() == before
    })
    .await;
    assert!(left, "the deregistered instance still gets requests");
    let before = c.hits();
    let (_, failed) = spread(port, 12).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(c.hits(), before, "the deregistered instance got a request");

    // A service whose only instance never passes: a 503 that says where to look.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr").port();
    drop(closed);
    let never = RegisterInstance {
        id: Some("db-1".into()),
        address: "127.0.0.1".into(),
        port: dead,
        ttl_s: 300,
        checks: vec!["tcp,interval=300ms,timeout=200ms".into()],
        tags: vec![],
        routes: None,
    };
    client.register_instance("db", &never).await.expect("register db");
    let unavailable =
        wait_until(Duration::from_secs(10), async || get(port, "db.localhost", "/").await.0 == 503).await;
    let (status, body) = get(port, "db.localhost", "/").await;
    assert!(unavailable, "{status} {body}");
    assert!(body.contains("no passing instance") && body.contains("hearth service inspect db"), "{body}");
    // A host that is neither an app nor a service is still a 404.
    assert_eq!(get(port, "nobody.localhost", "/").await.0, 404);

    // Removed with its service, the host is unknown again.
    success(&daemon.cli(&["service", "rm", "api"]));
    let unknown =
        wait_until(Duration::from_secs(10), async || get(port, "api.localhost", "/").await.0 == 404).await;
    assert!(unknown, "a removed service is still routed");

    let text = metrics(&daemon).await;
    for series in [
        r#"hearth_ingress_service_requests_total{service="api",outcome="answered"}"#,
        r#"hearth_ingress_service_requests_total{service="api",outcome="server_error"} 3"#,
        r#"hearth_ingress_service_requests_total{service="db",outcome="no_instance"}"#,
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
}

/// Who answered a request through the ingress: a backend's name, the app's
/// greeting, or the status when it was not a 200.
async fn who(port: u16, host: &str, path: &str) -> String {
    match get(port, host, path).await {
        // Chunked: the app's greeting comes after its chunk's size.
        (200, body) if body.contains("Hello from hearth") => "app".into(),
        (200, body) => body.split(' ').next().unwrap_or_default().to_owned(),
        (status, _) => status.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn services_declare_routes_that_share_the_longest_prefix_rule_with_apps() {
    let hello = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/apps/hello/target/wasm32-wasip2/release/hello.wasm");
    assert!(hello.is_file(), "{} is missing: run `make examples`", hello.display());
    let hello = hello.display().to_string();
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let port = ingress_port(&daemon).await;
    let api = Backend::start("api").await;
    let web = Backend::start("web").await;

    // A registration declares its service's routes, by the CLI or the API.
    let api_port = api.port.to_string();
    let cli = ["service", "register", "api", "--address", "127.0.0.1", "--port", &api_port, "--id", "api-1"];
    success(&daemon.cli(&[&cli[..], &["--ttl", "300s", "--route", "shop.test/api"]].concat()));
    let declare = RegisterInstance { routes: Some(vec!["Shop.test/".into()]), ..web.register("web-1") };
    client.register_instance("web", &declare).await.expect("register web");

    // The exact host, then the longest prefix at a segment boundary.
    let routed = wait_until(Duration::from_secs(10), async || {
        who(port, "shop.test", "/api/orders").await == "api" && who(port, "shop.test", "/").await == "web"
    })
    .await;
    assert!(routed, "{} {}", who(port, "shop.test", "/api/orders").await, who(port, "shop.test", "/").await);
    assert_eq!(who(port, "shop.test", "/apix").await, "web");
    assert_eq!(who(port, "www.shop.test", "/api").await, "404");
    assert_eq!(who(port, "api.localhost", "/").await, "api", "NAME.localhost stays implicit");
    let shown = success(&daemon.cli(&["service", "inspect", "api"]));
    assert!(shown.contains("routes:      shop.test/api"), "{shown}");
    let json = success(&daemon.cli(&["service", "inspect", "web", "--json"]));
    assert!(json.contains(r#""routes""#) && json.contains(r#""shop.test""#), "{json}");

    // On one host, a longer app prefix wins over a service's shorter one,
    // and a longer service prefix over an app's.
    success(&daemon.cli(&["app", "deploy", "hello", &hello, "--route", "shop.test/api/v2"]));
    let out = success(&daemon.cli(&[
        "service",
        "deploy",
        "web",
        "--route",
        "shop.test",
        "--route",
        "shop.test/api/v2/admin",
    ]));
    assert!(out.contains("routes are now shop.test shop.test/api/v2/admin"), "{out}");
    let both = wait_until(Duration::from_secs(10), async || {
        who(port, "shop.test", "/api/v2/admin/users").await == "web"
    })
    .await;
    assert!(both, "{}", who(port, "shop.test", "/api/v2/admin/users").await);
    assert_eq!(who(port, "shop.test", "/api/v2/orders").await, "app");
    assert_eq!(who(port, "shop.test", "/api/v1").await, "api");
    assert_eq!(who(port, "shop.test", "/").await, "web");

    // A route held by another service or an app (its own or a declared
    // one) is refused, naming the holder, and nothing changes.
    for (args, holder) in [
        (vec!["service", "deploy", "api", "--route", "shop.test"], "service \"web\""),
        (vec!["service", "deploy", "api", "--route", "shop.test/api/v2"], "app \"hello\""),
        (vec!["service", "deploy", "api", "--route", "hello.localhost"], "app \"hello\""),
        (vec!["service", "deploy", "api", "--route", "web.localhost"], "service \"web\""),
        (vec!["app", "deploy", "other", hello.as_str(), "--route", "shop.test/api"], "service \"api\""),
        (vec!["app", "deploy", "other", hello.as_str(), "--route", "api.localhost"], "service \"api\""),
    ] {
        let err = failure(&daemon.cli(&args));
        assert!(err.contains("already belongs to") && err.contains(holder), "{args:?}: {err}");
        assert!(err.contains("hint:"), "{err}");
    }
    let err = client
        .register_instance(
            "db",
            &RegisterInstance { routes: Some(vec!["shop.test/api".into()]), ..web.register("db-1") },
        )
        .await
        .expect_err("a registration's route taken");
    assert!(err.to_string().contains(r#"belongs to service "api""#), "{err}");
    assert!(client.service("db").await.is_err(), "a refused registration made its service");
    // A registration with no routes still answers as NAME.localhost, which
    // an app may have declared.
    success(&daemon.cli(&["app", "deploy", "taken", hello.as_str(), "--route", "cache.localhost"]));
    let err =
        client.register_instance("cache", &web.register("cache-1")).await.expect_err("its host is an app's");
    assert!(err.to_string().contains(r#"belongs to app "taken""#), "{err}");
    assert!(client.service("cache").await.is_err(), "a refused registration made its service");
    assert!(client.app("other").await.is_err(), "a refused app was deployed");
    assert_eq!(who(port, "shop.test", "/api/v1").await, "api");
    let shown = success(&daemon.cli(&["service", "inspect", "api"]));
    assert!(shown.contains("routes:      shop.test/api\n"), "{shown}");

    // A change of routes takes no new instance, applies at once and is in
    // the service's history.
    success(&daemon.cli(&["service", "deploy", "api", "--no-routes"]));
    let moved =
        wait_until(Duration::from_secs(10), async || who(port, "shop.test", "/api/v1").await == "web").await;
    assert!(moved, "{}", who(port, "shop.test", "/api/v1").await);
    let history = success(&daemon.cli(&["service", "history", "api"]));
    assert!(history.contains("routes") && history.contains("no routes besides its own name"), "{history}");
    assert_eq!(client.service("api").await.expect("api").instances.len(), 1);
}

/// A WebSocket echo server on loopback: it greets each client, echoes what
/// it is sent, and counts the connections whose close handshake ended.
async fn echo_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = closed.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let closed = counted.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                if ws.send(Message::text("hello from the instance")).await.is_err() {
                    return;
                }
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        return;
                    }
                }
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (port, closed)
}

/// A WebSocket handshake through the ingress for `host`.
async fn ws_connect(port: u16, host: &str) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, WsError> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the ingress");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{host}:{port}/chat"), stream).await?;
    Ok(ws)
}

/// The next message within 10 s.
async fn next_message(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10 s")
        .expect("the connection is open")
        .expect("a message")
}

/// The status a refused handshake was answered, and its body.
fn refusal(result: Result<tokio_tungstenite::WebSocketStream<TcpStream>, WsError>) -> (u16, String) {
    match result {
        Err(WsError::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            (response.status().as_u16(), body.into_owned())
        }
        Err(other) => panic!("the handshake failed otherwise: {other}"),
        Ok(_) => panic!("the handshake was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_goes_through_the_ingress_to_an_instance_and_stays_open_while_quiet() {
    // Short listener timeouts, so that a quiet WebSocket outlives them here.
    let daemon = Daemon::start_with_env(
        BIN,
        &[
            ("HEARTH_TEST_IDLE_TIMEOUT_MS", std::ffi::OsStr::new("300")),
            ("HEARTH_TEST_STALL_TIMEOUT_MS", std::ffi::OsStr::new("300")),
        ],
    )
    .await;
    let client = daemon.client();
    let port = ingress_port(&daemon).await;
    let (echo, closed) = echo_server().await;
    let instance = RegisterInstance {
        id: Some("chat-1".into()),
        address: "127.0.0.1".into(),
        port: echo,
        ttl_s: 300,
        checks: vec![],
        tags: vec![],
        routes: None,
    };
    client.register_instance("chat", &instance).await.expect("register chat");

    let mut ws = None;
    let routed = wait_until(Duration::from_secs(10), async || {
        ws = ws_connect(port, "chat.localhost").await.ok();
        ws.is_some()
    })
    .await;
    assert!(routed, "no handshake through the ingress: {:?}", ws_connect(port, "chat.localhost").await.err());
    let mut ws = ws.expect("a WebSocket");

    // Both ways: the instance speaks first, then echoes.
    assert_eq!(next_message(&mut ws).await, Message::text("hello from the instance"));
    ws.send(Message::text("one")).await.expect("send");
    assert_eq!(next_message(&mut ws).await, Message::text("one"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.expect("send");
    assert_eq!(next_message(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));

    // Quiet for several times the listener's idle and stall timeouts (the
    // quiet itself is what is tested): the tunnel is still open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ws.send(Message::text("after a quiet while")).await.expect("send after the quiet");
    assert_eq!(next_message(&mut ws).await, Message::text("after a quiet while"));

    // A clean close: the instance sees the close handshake end, and the
    // tunnel then closes the client's connection.
    ws.close(None).await.expect("close");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            if message.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the WebSocket did not end after its close");
    let mut tcp = ws.into_inner();
    let mut rest = [0u8; 16];
    let eof = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut rest)).await;
    assert!(matches!(eof, Ok(Ok(0))), "the tunnel did not close the client's side: {eof:?}");
    assert!(wait_until(Duration::from_secs(5), async || closed.load(Ordering::SeqCst) == 1).await);

    // An instance that declines the upgrade has its answer passed on, and
    // it was asked: `Upgrade` reached it.
    let plain = Backend::start("plain").await;
    client.register_instance("plain", &plain.register("plain-1")).await.expect("register plain");
    let answered = wait_until(Duration::from_secs(10), async || {
        matches!(ws_connect(port, "plain.localhost").await, Err(WsError::Http(r)) if r.status() == 200)
    })
    .await;
    assert!(answered, "the declined upgrade was not passed on");
    let (status, body) = refusal(ws_connect(port, "plain.localhost").await);
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("plain GET /chat HTTP/1.1") && body.contains("upgrade=websocket"), "{body}");

    // A service with no passing instance answers a handshake with a 503.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed_port.local_addr().expect("addr").port();
    drop(closed_port);
    let never = RegisterInstance {
        id: Some("gone-1".into()),
        port: dead,
        checks: vec!["tcp,interval=300ms,timeout=200ms".into()],
        ..instance
    };
    client.register_instance("gone", &never).await.expect("register gone");
    let unavailable = wait_until(Duration::from_secs(10), async || {
        matches!(ws_connect(port, "gone.localhost").await, Err(WsError::Http(r)) if r.status() == 503)
    })
    .await;
    let (status, body) = refusal(ws_connect(port, "gone.localhost").await);
    assert!(unavailable, "{status} {body}");
    assert!(body.contains("no passing instance") && body.contains("hearth service inspect gone"), "{body}");

    let text = metrics(&daemon).await;
    for series in [
        r#"hearth_ingress_service_requests_total{service="chat",outcome="upgraded"}"#,
        r#"hearth_ingress_service_requests_total{service="plain",outcome="answered"}"#,
        r#"hearth_ingress_service_requests_total{service="gone",outcome="no_instance"}"#,
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
}
