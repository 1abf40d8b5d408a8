//! Misbehaving apps: a trap answers 500 and the app stays up; an infinite
//! loop is cut off at its CPU budget and does not stall other apps; a memory
//! bomb hits its limit; a slow request times out. Logs say which.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::{Harness, KITCHEN_MANIFEST, guests, log_lines, request};

async fn harness() -> Harness {
    let guests = guests();
    let h = Harness::start().await;
    h.apps.deploy("kitchen", guests.kitchen.clone(), Some(KITCHEN_MANIFEST.into()), vec![]).await.unwrap();
    h.apps.deploy("hello", guests.hello.clone(), None, vec![]).await.unwrap();
    h
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_answers_500_and_the_next_request_is_served() {
    let h = harness().await;
    let reply = h.get("kitchen.localhost", "/trap").await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("hearth app logs kitchen"), "{}", reply.body);
    assert_eq!(h.get("kitchen.localhost", "/").await.status, 200);
    let lines = log_lines(&h.apps, "kitchen").await;
    assert!(
        has(&lines, "Stderr: thread '<unnamed>' panicked") || has(&lines, "Stderr: thread"),
        "{lines:#?}"
    );
    assert!(has(&lines, "the kitchen guest was asked to trap"), "{lines:#?}");
    assert!(has(&lines, "Hearth: GET /trap: the app trapped"), "{lines:#?}");
    assert!(has(&lines, "Request: GET /trap 500"), "{lines:#?}");
    assert!(has(&lines, "Request: GET / 200"), "{lines:#?}");
    assert_eq!(h.apps.stats().failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_cut_off_without_stalling_other_apps() {
    let h = harness().await;
    // A budget wide enough that "while they spin" is seconds long, whatever
    // else the host is doing: four requests of 3 s each on two workers.
    let manifest = KITCHEN_MANIFEST
        .replace("cpu_ms = 300", "cpu_ms = 3000")
        .replace("timeout_ms = 2000", "timeout_ms = 20000");
    h.apps.deploy("kitchen", guests().kitchen.clone(), Some(manifest), vec![]).await.unwrap();
    let addr = h.addr;
    let started = Instant::now();
    let before = h.apps.stats().requests;
    // More spinning requests than there are worker threads.
    let loops: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { request(addr, "GET", "kitchen.localhost", "/loop", "").await }))
        .collect();
    // Measured while all four spin.
    let spinning =
        support::eventually(Duration::from_secs(5), async || h.apps.stats().requests >= before + 4).await;
    assert!(spinning, "the spinning requests never reached the app");
    // Another app answers while they spin, not after they are cut off: a
    // relative check, since how long anything takes on a loaded 2-core
    // host is no measure (the figures are the benchmark's).
    let t = Instant::now();
    assert_eq!(h.get("hello.localhost", "/").await.status, 200);
    let answered = t.elapsed();
    let still_spinning = loops.iter().filter(|l| !l.is_finished()).count();
    assert!(still_spinning > 0, "hello answered only once every spinning request was cut off ({answered:?})");
    for l in loops {
        let reply = l.await.unwrap();
        assert_eq!(reply.status, 500);
        assert!(reply.body.contains("CPU time budget of 3000 ms"), "{}", reply.body);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "4 spinning requests cut off after {elapsed:?}; hello answered in {answered:?} while {still_spinning} spun"
    );
    assert!(elapsed < Duration::from_secs(30), "cut off in time ({elapsed:?})");
    assert_eq!(h.get("kitchen.localhost", "/").await.status, 200);
    let lines = log_lines(&h.apps, "kitchen").await;
    assert!(has(&lines, "GET /loop: stopped after using its CPU time budget of 3000 ms"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_its_limit() {
    let h = harness().await;
    let reply = h.get("kitchen.localhost", "/alloc").await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("ran out of memory (its limit is 32 MiB)"), "{}", reply.body);
    assert_eq!(h.get("kitchen.localhost", "/").await.status, 200);
    assert_eq!(h.get("hello.localhost", "/").await.status, 200);
    let lines = log_lines(&h.apps, "kitchen").await;
    assert!(has(&lines, "over its limit of 32 MiB"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_times_out() {
    let h = harness().await;
    let started = Instant::now();
    let reply = h.get("kitchen.localhost", "/sleep?ms=20000").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(reply.body.contains("did not answer within 2000 ms"), "{}", reply.body);
    assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    let lines = log_lines(&h.apps, "kitchen").await;
    assert!(has(&lines, "stopped after the request timeout of 2000 ms"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_stderr_and_requests_go_to_the_log_and_its_followers() {
    let h = harness().await;
    let (_, mut follow) = h.apps.logs("kitchen").await.unwrap();
    assert_eq!(h.get("kitchen.localhost", "/print?text=hi+there").await.status, 200);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(5), follow.recv()).await.unwrap().unwrap();
        seen.push(format!("{:?}: {}", line.stream, line.text));
    }
    assert_eq!(seen[0], "Stdout: hi there");
    assert_eq!(seen[1], "Stderr: err: hi there");
    assert!(seen[2].starts_with("Request: GET /print?text=hi+there 200 "), "{seen:?}");
    let (kept, _) = h.apps.logs("kitchen").await.unwrap();
    assert!(kept.iter().any(|l| l.text.starts_with("Deployed version 1")), "{kept:?}");
    assert!(kept.iter().all(|l| l.version == 1 && l.time > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_runs_to_its_end_when_its_client_goes_away() {
    use tokio::io::AsyncWriteExt;
    let h = harness().await;
    let before = h.apps.stats().requests;
    let mut stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    stream
        .write_all(b"GET /sleep?ms=300&print=woke HTTP/1.1\r\nHost: kitchen.localhost\r\n\r\n")
        .await
        .unwrap();
    // The client goes away once the instance runs, before it answers.
    let running =
        support::eventually(Duration::from_secs(5), async || h.apps.stats().requests > before).await;
    assert!(running, "the request never reached the app");
    drop(stream);
    let woke = support::eventually(Duration::from_secs(5), async || {
        has(&log_lines(&h.apps, "kitchen").await, "Stdout: woke")
    })
    .await;
    assert!(woke, "{:#?}", log_lines(&h.apps, "kitchen").await);
}
