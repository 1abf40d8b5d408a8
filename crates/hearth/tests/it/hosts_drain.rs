//! `hearth host drain` moves a host's service instances away: on a cluster
//! of two hosts made by `hearth cluster up`, a service of two machines on a
//! network, one instance on each host; draining h2 makes a replacement on
//! h1 first and takes h2's instance away only once it passes, so the
//! service never has fewer than two passing instances meanwhile.

use std::time::Duration;

use hearth_testkit::{Daemon, skip, success, wait_until};
use serde_json::Value;

use crate::cluster_support::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// `web`'s machines as (host, state), sorted; `None` when the call failed.
fn web(cluster: &Cluster) -> Option<Vec<(String, String)>> {
    let out = cluster.cli("h1", &["machine", "ls", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut web: Vec<(String, String)> = list["machines"]
        .as_array()?
        .iter()
        .filter(|m| m["name"].as_str().is_some_and(|n| n.starts_with("web-")))
        .map(|m| (m["host"].as_str().unwrap_or("").to_owned(), m["state"].as_str().unwrap_or("").to_owned()))
        .collect();
    web.sort();
    Some(web)
}

/// How many of `web`'s instances pass; `None` when the call failed.
fn passing(cluster: &Cluster) -> Option<u64> {
    let out = cluster.cli("h1", &["service", "ls", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).ok()?;
    list["services"].as_array()?.iter().find(|s| s["name"] == "web")?["passing"].as_u64()
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_a_host_moves_its_instances_without_the_service_running_short() {
    if !nix::unistd::geteuid().is_root() {
        skip("not root, so no network namespaces");
        return;
    }
    let image = Daemon::start(BIN).await.ensure_debian_image().await;
    let (cluster, _) = Cluster::start("dr", 2);
    let h1 = |args: &[&str]| cluster.cli("h1", args);
    success(&h1(&["network", "create", "lab", "--subnet", "10.247.0.0/24", "--no-nat"]));
    success(&h1(&[
        "service",
        "create",
        "web",
        "--image",
        &image,
        "--count",
        "2",
        "--memory",
        "256",
        "--port",
        "8080",
        "--network",
        "lab",
        "--detach",
    ]));
    let running = |host: &str| (host.to_owned(), "running".to_owned());
    let spread = wait_until(Duration::from_secs(120), async || {
        web(&cluster) == Some(vec![running("h1"), running("h2")]) && passing(&cluster) == Some(2)
    })
    .await;
    assert!(spread, "{:?} {:?}\n{}", web(&cluster), passing(&cluster), cluster.log("h1"));

    success(&h1(&["host", "drain", "h2"]));
    let mut fewest = u64::MAX;
    let moved = wait_until(Duration::from_secs(120), async || {
        if let Some(now) = passing(&cluster) {
            fewest = fewest.min(now);
        }
        web(&cluster) == Some(vec![running("h1"), running("h1")]) && passing(&cluster) == Some(2)
    })
    .await;
    let inspect = success(&h1(&["service", "inspect", "web"]));
    assert!(moved, "{:?}\n{inspect}\n{}", web(&cluster), cluster.log("h1"));
    assert!(fewest >= 2, "only {fewest} instances passed at one time while h2 drained:\n{inspect}");
    let history = success(&h1(&["service", "history", "web"]));
    assert!(history.contains("its host is draining"), "{history}");

    success(&h1(&["service", "rm", "web"]));
}
