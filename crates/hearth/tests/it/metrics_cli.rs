//! Issue 15, item 8: hearth's time series through the binary. An app's
//! requests show as its request rate, its failures as its error ratio,
//! both per route; `hearth metrics` lists and charts them, and an unknown
//! name says which names exist. Services' health, workflows' failed runs
//! and the store are sampled too. (Machines' CPU and memory need a VM:
//! their `/proc` parsing is tested in the daemon's `metrics.rs`.)

use std::ffi::OsStr;
use std::time::Duration;

use hearth_testkit::{Daemon, failure, success, wait_until};
use serde_json::Value;

use super::apps_triggers::{deploy, get, ingress_port};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// Samples every 200 ms, so that a test sees several intervals in a second.
async fn daemon() -> Daemon {
    Daemon::start_with_env(BIN, &[("HEARTH_TEST_METRICS_INTERVAL_MS", OsStr::new("200"))]).await
}

/// The values of every series `hearth metrics query ARGS --json` prints.
fn values(daemon: &Daemon, args: &[&str]) -> Vec<f64> {
    let mut all = vec!["metrics", "query"];
    all.extend_from_slice(args);
    all.push("--json");
    let output = daemon.cli(&all);
    if !output.status.success() {
        // Not sampled yet: the name is unknown until its first sample.
        return Vec::new();
    }
    let result: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    result["series"]
        .as_array()
        .expect("series")
        .iter()
        .flat_map(|s| {
            s["points"].as_array().expect("points").iter().map(|p| p["value"].as_f64().expect("a value"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apps_requests_and_failures_show_as_its_rate_and_error_ratio() {
    let daemon = daemon().await;
    let dir = tempfile::tempdir().expect("tempdir");
    deploy(&daemon, dir.path(), "shop", "");
    let port = ingress_port(&daemon).await;

    // Requests go on until a sample has seen them.
    let mut rates = Vec::new();
    let seen = wait_until(Duration::from_secs(20), async || {
        for _ in 0..5 {
            assert_eq!(get(port, "shop.localhost", "/").0, 200);
        }
        rates = values(&daemon, &["app_request_rate", "--match", "app=shop", "--since", "5m"]);
        rates.iter().any(|r| *r > 0.0)
    })
    .await;
    assert!(seen, "no request rate above zero for shop in 20 s: {rates:?}");
    let ratios = values(&daemon, &["app_error_ratio", "--match", "app=shop"]);
    assert!(!ratios.is_empty() && ratios.iter().all(|r| *r == 0.0), "no failure yet: {ratios:?}");
    let latencies = values(&daemon, &["app_latency_p99_ms", "--match", "app=shop", "--match", "route=/"]);
    assert!(!latencies.is_empty() && latencies.iter().all(|ms| *ms > 0.0), "{latencies:?}");

    // A trapping route answers 500: the error ratio rises.
    let mut ratios = Vec::new();
    let raised = wait_until(Duration::from_secs(20), async || {
        for _ in 0..3 {
            assert_eq!(get(port, "shop.localhost", "/trap").0, 500);
        }
        ratios = values(&daemon, &["app_error_ratio", "--match", "app=shop"]);
        ratios.iter().any(|r| *r > 0.5)
    })
    .await;
    assert!(raised, "the error ratio did not rise above 0.5 in 20 s: {ratios:?}");

    // Another app's series are not shop's.
    assert!(values(&daemon, &["app_request_rate", "--match", "app=blog"]).is_empty());

    // The list, the chart, and an unknown name.
    let list = success(&daemon.cli(&["metrics", "ls"]));
    for name in ["app_request_rate", "app_error_ratio", "store_revision", "store_size_bytes"] {
        assert!(list.contains(name), "{name} is not listed:\n{list}");
    }
    let chart = success(&daemon.cli(&["metrics", "query", "app_request_rate", "--match", "app=shop"]));
    assert!(chart.starts_with("app_request_rate app=shop route=/\n"), "{chart}");
    assert!(chart.contains(" ┤") && chart.contains("last ") && chart.contains(" UTC"), "{chart}");
    let unknown = failure(&daemon.cli(&["metrics", "query", "app_requests"]));
    assert!(
        unknown.contains("no metric named \"app_requests\"") && unknown.contains("app_request_rate"),
        "{unknown}"
    );
    let bad = failure(&daemon.cli(&["metrics", "query", "app_request_rate", "--match", "app"]));
    assert!(bad.contains("LABEL=VALUE"), "{bad}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_is_sampled_from_the_start() {
    let daemon = daemon().await;
    let mut revisions = Vec::new();
    let sampled = wait_until(Duration::from_secs(10), async || {
        revisions = values(&daemon, &["store_revision"]);
        revisions.len() >= 2
    })
    .await;
    assert!(sampled, "the store's revision was not sampled twice in 10 s: {revisions:?}");
    let sizes = values(&daemon, &["store_size_bytes", "--step", "1m"]);
    assert!(!sizes.is_empty() && sizes.iter().all(|s| *s > 0.0), "{sizes:?}");
    let list: Value =
        serde_json::from_str(&success(&daemon.cli(&["metrics", "ls", "--json"]))).expect("JSON");
    assert_eq!(list["interval_ms"], 200);
    assert_eq!(list["retention_ms"], 24 * 3600 * 1000);
}

/// The labels and value of every series of `name` at its newest point.
fn latest(daemon: &Daemon, name: &str) -> Vec<(Value, f64)> {
    let output = daemon.cli(&["metrics", "query", name, "--since", "5m", "--json"]);
    if !output.status.success() {
        return Vec::new();
    }
    let result: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    result["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|s| Some((s["labels"].clone(), s["points"].as_array()?.last()?["value"].as_f64()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_instances_health_and_each_services_passing_count_are_sampled() {
    use hearth_client::types::RegisterInstance;
    let daemon = daemon().await;
    let client = daemon.client();
    let register = |id: &str, port: u16, checks: Vec<String>| RegisterInstance {
        id: Some(id.into()),
        address: "127.0.0.1".into(),
        port,
        ttl_s: 60,
        checks,
        tags: Vec::new(),
        routes: None,
    };
    // One instance without checks, passing at once; one whose TCP check
    // meets a closed port, never passing.
    client.register_instance("api", &register("api-a", 9001, Vec::new())).await.expect("register a");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr").port();
    drop(closed);
    let check = vec!["tcp,interval=300ms,timeout=200ms".to_owned()];
    client.register_instance("api", &register("api-b", dead, check)).await.expect("register b");

    let mut health = Vec::new();
    let sampled = wait_until(Duration::from_secs(15), async || {
        health = latest(&daemon, "service_instance_healthy");
        health.len() == 2
    })
    .await;
    assert!(sampled, "not two instances sampled in 15 s: {health:?}");
    let of = |id: &str| health.iter().find(|(l, _)| l["instance"] == id).map(|(_, v)| *v);
    assert_eq!((of("api-a"), of("api-b")), (Some(1.0), Some(0.0)), "{health:?}");
    assert!(health.iter().all(|(l, _)| l["service"] == "api"), "{health:?}");
    let count = latest(&daemon, "service_healthy_instances");
    assert_eq!(count.len(), 1, "{count:?}");
    assert_eq!((count[0].0["service"].clone(), count[0].1), (Value::from("api"), 1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workflows_failed_runs_are_counted_per_interval() {
    let daemon = daemon().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("steps.wasm");
    std::fs::write(&wasm, &super::workflows_support::guests().steps).expect("write the guest");
    success(&daemon.cli(&["workflow", "deploy", "steps", wasm.to_str().expect("a UTF-8 path")]));
    // Deployed and never failed: sampled as zero.
    let mut failed = Vec::new();
    let zero = wait_until(Duration::from_secs(10), async || {
        failed = values(&daemon, &["workflow_runs_failed", "--match", "workflow=steps"]);
        !failed.is_empty()
    })
    .await;
    assert!(zero && failed.iter().all(|n| *n == 0.0), "{failed:?}");

    for _ in 0..2 {
        failure(&daemon.cli(&["workflow", "start", "steps", "--input", "fail", "--wait"]));
    }
    let counted = wait_until(Duration::from_secs(10), async || {
        failed = values(&daemon, &["workflow_runs_failed", "--match", "workflow=steps"]);
        failed.iter().sum::<f64>() == 2.0
    })
    .await;
    assert!(counted, "two failures are not counted once each: {failed:?}");
}
