//! Requests per second through the ingress, against a native hyper hello
//! server in the same process with the same load generator. Ignored by
//! default (numbers from a debug build mean little); run it with
//!
//! ```text
//! cargo test --release -p hearth-apps --test it -- --ignored --nocapture apps_throughput::
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Client, Harness, guests, upstream};

async fn load(addr: SocketAddr, host: &'static str, connections: usize, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let reply = client.send("GET", host, "/", "").await.unwrap();
                assert_eq!(reply.status, 200);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / elapsed.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it in release mode"]
async fn hello_requests_per_second() {
    let guests = guests();
    let h = Harness::start().await;
    h.apps.deploy("hello", guests.hello.clone(), None, vec![]).await.unwrap();
    let (native, _) = upstream("Hello from hearth!\n").await;
    load(h.addr, "hello.localhost", 16, Duration::from_millis(500)).await;
    let hearth = load(h.addr, "hello.localhost", 16, Duration::from_secs(3)).await;
    if std::env::var_os("HEARTH_BENCH_ONLY_APPS").is_some() {
        eprintln!("hello, 16 connections, 3 s: hearth {hearth:.0} req/s");
        return;
    }
    let hyper = load(native, "native", 16, Duration::from_secs(3)).await;
    eprintln!(
        "hello, 16 connections, 3 s each: hearth {hearth:.0} req/s, native hyper {hyper:.0} req/s, ratio {:.2}",
        hearth / hyper
    );
}
