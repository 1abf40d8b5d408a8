//! Apps through the real binary: deploy, serve, swap under load with no
//! failed request, roll back, survive `kill -9` without recompiling, keep
//! key-value data, and refuse bad uploads clearly.
//!
//! The components are the examples, built by `make examples`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hearth_testkit::{Daemon, failure, success};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_hearth");

pub(crate) fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/apps")
        .join(name)
        .join("target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run `make examples`", path.display());
    path.display().to_string()
}

/// One HTTP/1.1 request to the ingress: (status, body).
fn get(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // HTTP/1.0: the answer comes whole, not chunked.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

pub(crate) async fn ingress_port(daemon: &Daemon) -> u16 {
    let status = daemon.client().status().await.expect("status");
    status.ingress.and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok())).expect("an ingress port")
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_serve_swap_under_load_roll_back_and_survive_a_crash() {
    let mut daemon = Daemon::start(BIN).await;
    let port = ingress_port(&daemon).await;
    let hello = example("hello");

    let out = success(&daemon.cli(&["app", "deploy", "hello", &hello]));
    assert!(out.contains("deployed hello version 1"), "{out}");
    assert_eq!(get(port, "hello.localhost", "/").expect("request"), (200, "Hello from hearth!\n".to_owned()));
    let (status, body) = get(port, "nobody.localhost", "/").expect("request");
    assert_eq!(status, 404);
    assert!(body.contains("hearth app deploy"), "{body}");

    // Ten swaps while clients keep asking: not one request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match get(port, "hello.localhost", "/") {
                    Ok((200, body)) if body == "Hello from hearth!\n" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for _ in 0..10 {
        success(&daemon.cli(&["app", "deploy", "hello", &hello]));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during swaps");
    assert!(ok.load(Ordering::Relaxed) > 20, "too few requests to mean anything");
    let versions = success(&daemon.cli(&["app", "versions", "hello"]));
    assert!(versions.lines().any(|l| l.starts_with("11 ") && l.contains('*')), "{versions}");

    // Rollback, to the previous version and to a chosen one.
    assert!(success(&daemon.cli(&["app", "rollback", "hello"])).contains("version 10"));
    assert!(success(&daemon.cli(&["app", "rollback", "hello", "--to", "3"])).contains("version 3"));
    let err = failure(&daemon.cli(&["app", "rollback", "hello", "--to", "99"]));
    assert!(err.contains("hint:"), "{err}");

    // kill -9: the app serves again at once after a restart, from the
    // compiled cache (a redeploy of the same bytes compiles nothing), once
    // Cranelift's code, which is what the cache keeps, serves.
    let started = std::time::Instant::now();
    while !success(&daemon.cli(&["app", "inspect", "hello"])).contains("optimized (cranelift)") {
        assert!(started.elapsed() < Duration::from_secs(120), "hello was not optimized in 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill9();
    daemon.restart().await;
    let port = ingress_port(&daemon).await;
    // The ingress answers 503 while the apps load (from the compiled cache).
    let mut status = 0;
    for _ in 0..100 {
        status = get(port, "hello.localhost", "/").expect("request").0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the app did not serve again within 10 s of the restart");
    let json: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["app", "deploy", "hello", &hello, "--json"])))
            .expect("json");
    assert_eq!(json["compiled"], false, "{json}");
    assert!(success(&daemon.cli(&["app", "inspect", "hello"])).contains("version     12"));

    let logs = success(&daemon.cli(&["app", "logs", "hello"]));
    assert!(logs.contains("GET / 200"), "{logs}");
    success(&daemon.cli(&["app", "rm", "hello"]));
    assert_eq!(get(port, "hello.localhost", "/").expect("request").0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_value_data_outlives_redeploys_and_bad_uploads_are_refused() {
    let daemon = Daemon::start(BIN).await;
    let port = ingress_port(&daemon).await;
    let counter = example("counter");

    success(&daemon.cli(&["app", "deploy", "counter", &counter]));
    let first = get(port, "counter.localhost", "/").expect("request");
    let second = get(port, "counter.localhost", "/").expect("request");
    assert_eq!((first.0, second.0), (200, 200));
    assert_ne!(first.1, second.1, "the counter did not count");
    success(&daemon.cli(&["app", "deploy", "counter", &counter]));
    let third = get(port, "counter.localhost", "/").expect("request");
    let n = |body: &str| {
        body.chars().filter(char::is_ascii_digit).collect::<String>().parse::<u64>().unwrap_or(0)
    };
    assert_eq!(
        n(&third.1),
        n(&second.1) + 1,
        "the count did not survive a redeploy: {second:?} then {third:?}"
    );

    // A custom route.
    success(&daemon.cli(&["app", "deploy", "counter", &counter, "--route", "count.example.test/api"]));
    assert_eq!(get(port, "count.example.test", "/api").expect("request").0, 200);

    // Bad uploads.
    let dir = tempfile::tempdir().expect("tempdir");
    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "just text").expect("write");
    let err = failure(&daemon.cli(&["app", "deploy", "x", not_wasm.to_str().expect("utf8")]));
    assert!(err.contains("WebAssembly") && err.contains("hint:"), "{err}");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let err = failure(&daemon.cli(&["app", "deploy", "x", core.to_str().expect("utf8")]));
    assert!(err.contains("core WebAssembly module") && err.contains("wasm32-wasip2"), "{err}");
    // The counter without its manifest uses key-value it did not declare.
    let lonely = dir.path().join("counter.wasm");
    std::fs::copy(&counter, &lonely).expect("copy");
    let err = failure(&daemon.cli(&["app", "deploy", "y", lonely.to_str().expect("utf8")]));
    assert!(err.contains("key") && err.contains("hearth.toml"), "{err}");
    let err = failure(&daemon.cli(&["app", "deploy", "Bad_Name", &counter]));
    assert!(err.contains("not valid"), "{err}");
    assert!(!success(&daemon.cli(&["app", "ls"])).contains("x "), "a refused deploy left an app behind");
}
