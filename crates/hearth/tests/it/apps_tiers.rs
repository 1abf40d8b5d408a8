//! Apps' two compilers through the real binary: a cold deploy serves
//! Winch's code at once and Cranelift's once it is ready, without a restart
//! and without a failed request across the swap; a redeploy takes the
//! functions it shares with earlier versions from the cache of compiled
//! functions instead of compiling them again. (That a changed function is
//! the only one compiled again, and that Winch's refusals fall back to
//! Cranelift, are unit tests in `hearth-apps`' runtime.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hearth_testkit::{Daemon, success};

use super::apps_cli::{BIN, example, ingress_port};

/// One GET to the ingress: the status, the body and which compiler's code
/// answered (`x-hearth-tier`).
fn get(port: u16, host: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let tier = head.lines().find_map(|l| l.strip_prefix("x-hearth-tier: ")).unwrap_or("(none)").to_owned();
    Ok((status, body.to_owned(), tier))
}

/// `component` as new bytes: with a custom section no other run has, so
/// that its deploy is cold even though test daemons share one cache of
/// compiled components (and of compiled functions).
fn fresh(component: &[u8], dir: &std::path::Path, name: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let path = dir.join(name);
    let bytes = hearth_apps::append_custom_section(component, "test", &hasher.finish().to_le_bytes());
    std::fs::write(&path, bytes).expect("write the component");
    path.display().to_string()
}

/// `app inspect NAME --json`.
fn inspect(daemon: &Daemon, name: &str) -> serde_json::Value {
    serde_json::from_str(&success(&daemon.cli(&["app", "inspect", name, "--json"]))).expect("json")
}

/// Waits until `name` serves Cranelift's code; returns what inspect says.
async fn optimized(daemon: &Daemon, name: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let app = inspect(daemon, name);
        if app["tier"]["tier"] == "optimized" {
            return app;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{name} was not optimized in 120 s: {app}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_deploy_serves_winch_then_cranelift_with_no_failed_request() {
    let daemon = Daemon::start(BIN).await;
    let port = ingress_port(&daemon).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = fresh(&std::fs::read(example("wstd-echo")).expect("wstd-echo"), dir.path(), "echo.wasm");

    let deployed: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["app", "deploy", "echo", &echo, "--json"])))
            .expect("json");
    assert_eq!(
        (&deployed["compiled"], &deployed["tier"]),
        (&true.into(), &"optimizing".into()),
        "{deployed}"
    );

    // Clients ask all along, from Winch's code, through the swap, to
    // Cranelift's: every answer is right, whichever code gives it.
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, counts, failures) = (stop.clone(), counts.clone(), failures.clone());
        clients.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match get(port, "echo.localhost") {
                    Ok((200, body, tier)) if body == "Hello from wstd!\n" && tier == "baseline" => {
                        counts[0].fetch_add(1, Ordering::Relaxed)
                    }
                    Ok((200, body, tier)) if body == "Hello from wstd!\n" && tier == "optimized" => {
                        counts[1].fetch_add(1, Ordering::Relaxed)
                    }
                    other => {
                        failures.lock().unwrap().push(format!("{other:?}"));
                        counts[2].fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let app = optimized(&daemon, "echo").await;
    assert_eq!(app["tier"]["compiler"], "cranelift", "{app}");
    assert!(app["tier"]["function_cache"]["misses"].as_u64().unwrap_or(0) > 0, "{app}");
    // The swap is seen by the clients too, not only by inspect.
    let started = Instant::now();
    while counts[1].load(Ordering::Relaxed) < 20 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client");
    }
    let [baseline, optimized, failed] = [0, 1, 2].map(|i| counts[i].load(Ordering::Relaxed));
    assert_eq!(failed, 0, "requests failed across the swap: {:?}", failures.lock().unwrap());
    assert!(baseline > 0, "no request was answered by Winch's code ({optimized} by Cranelift's)");
    assert!(optimized >= 20, "too few requests answered by Cranelift's code: {optimized}");

    let text = success(&daemon.cli(&["app", "inspect", "echo"]));
    assert!(text.contains("tier        optimized (cranelift)"), "{text}");
    assert!(text.contains(" compiled"), "{text}");
    // However many requests the log has had since, hearth's lines are
    // still in it (the policy itself is `logs.rs`' unit tests').
    let logs = success(&daemon.cli(&["app", "logs", "echo"]));
    assert!(logs.contains("compiled by Winch"), "{logs}");
    assert!(logs.contains("Serving version 1 compiled by Cranelift"), "{logs}");

    // The same bytes again serve Cranelift's code at once, from the cache.
    let again: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["app", "deploy", "echo", &echo, "--json"])))
            .expect("json");
    assert_eq!((&again["compiled"], &again["tier"]), (&false.into(), &"optimized".into()), "{again}");
    assert_eq!(get(port, "echo.localhost").expect("request").2, "optimized");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redeploy_takes_unchanged_functions_from_the_cache() {
    let daemon = Daemon::start(BIN).await;
    let hello = std::fs::read(example("hello")).expect("hello");
    let dir = tempfile::tempdir().expect("tempdir");

    success(&daemon.cli(&["app", "deploy", "hello", &fresh(&hello, dir.path(), "first.wasm")]));
    let app = optimized(&daemon, "hello").await;
    let count = |app: &serde_json::Value, what: &str| {
        app["tier"]["function_cache"][what].as_u64().unwrap_or_else(|| panic!("no {what}: {app}"))
    };
    // Identical functions within one component are compiled once, and test
    // daemons share the cache of compiled functions, so the first compile
    // may have hits of its own.
    let functions = count(&app, "hits") + count(&app, "misses");
    assert!(functions > 0, "{app}");

    // New bytes (another hash, so a cold deploy: Winch, then Cranelift)
    // with the same functions: Cranelift takes them from the cache.
    let deployed =
        success(&daemon.cli(&["app", "deploy", "hello", &fresh(&hello, dir.path(), "second.wasm")]));
    assert!(deployed.contains("compiled by winch"), "{deployed}");
    let app = optimized(&daemon, "hello").await;
    // A few functions are compiled every time (measured: 8 of hello's
    // 411; Cranelift does not cache every function it compiles).
    let (hits, misses) = (count(&app, "hits"), count(&app, "misses"));
    assert_eq!(hits + misses, functions, "{app}");
    assert!(hits > 0 && misses * 20 <= functions, "{app}");
    let text = success(&daemon.cli(&["app", "inspect", "hello"]));
    assert!(text.contains(&format!("functions   {hits} from the cache, {misses} compiled")), "{text}");
}
