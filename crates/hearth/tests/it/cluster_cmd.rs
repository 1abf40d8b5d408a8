//! `hearth cluster`: three hosts in network namespaces on one machine,
//! each a daemon on a member of one etcd cluster, broken on purpose. A
//! killed host is seen lost by the others and comes back when revived; a
//! partitioned one is lost and comes back when healed; `cluster status`
//! agrees throughout; `cluster down` leaves no netns, link or process.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hearth_client::types::HostState;
use hearth_testkit::{failure, skip, success};
use serde_json::Value;

use crate::cluster_support::Cluster;

fn up(host: &str) -> (String, bool, bool, String) {
    (host.to_owned(), true, true, "connected".to_owned())
}

/// Names of the links in the root netns.
fn links() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link").stdout;
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

fn netns() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().expect("ip netns").stdout)
        .into_owned()
}

/// Whether `pid` is a live process started for the cluster in `dir`.
fn ours_alive(pid: u64, dir: &Path) -> bool {
    let dead = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(true);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !dead && String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
}

fn pids(state: &Value) -> Vec<u64> {
    state["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .flat_map(|h| [h["daemon_pid"].as_u64(), h["etcd_pid"].as_u64()])
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_on_one_machine_loses_and_gets_back_a_killed_and_a_partitioned_host() {
    if !nix::unistd::geteuid().is_root() {
        skip("not root, so no network namespaces");
        return;
    }
    let (cluster, out) = Cluster::start("it", 3);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("is up") && said.contains("hearth cluster env h1"), "{said}");
    let state = cluster.state();
    let mut seen_pids = pids(&state);
    assert_eq!(cluster.processes(), [up("h1"), up("h2"), up("h3")]);
    let ready = [
        ("h1".to_owned(), HostState::Ready),
        ("h2".to_owned(), HostState::Ready),
        ("h3".to_owned(), HostState::Ready),
    ];
    assert_eq!(cluster.hosts("h1").await, ready, "{}", cluster.log("h1"));
    // Run again, it starts nothing.
    let again = success(&cluster.up(state["subnet"].as_str().expect("subnet"), 3));
    assert!(again.contains("is already up"), "{again}");

    // Killed as a machine dies: the others see it lost once its lease lapses.
    let said = success(&cluster.run(&["kill", "h2"]));
    assert!(said.contains("killed host h2"), "{said}");
    assert_eq!(
        cluster.processes(),
        [up("h1"), ("h2".to_owned(), false, false, "connected".to_owned()), up("h3")]
    );
    let lost = cluster.sees("h1", "h2", HostState::Lost, Duration::from_secs(40)).await;
    assert!(lost, "{:?}\n{}", cluster.hosts("h1").await, cluster.log("h1"));

    success(&cluster.run(&["revive", "h2"]));
    assert!(
        cluster.sees("h1", "h2", HostState::Ready, Duration::from_secs(30)).await,
        "{:?}\n{}",
        cluster.hosts("h1").await,
        cluster.log("h2")
    );
    assert_eq!(cluster.processes(), [up("h1"), up("h2"), up("h3")]);
    seen_pids.extend(pids(&cluster.state()));

    // Partitioned: its processes run, but it cannot renew its lease.
    success(&cluster.run(&["partition", "h3"]));
    assert_eq!(
        cluster.processes(),
        [up("h1"), up("h2"), ("h3".to_owned(), true, true, "partitioned".to_owned())]
    );
    let lost = cluster.sees("h1", "h3", HostState::Lost, Duration::from_secs(40)).await;
    assert!(lost, "{:?}\n{}", cluster.hosts("h1").await, cluster.log("h1"));

    success(&cluster.run(&["heal", "h3"]));
    assert_eq!(cluster.processes(), [up("h1"), up("h2"), up("h3")]);
    assert!(
        cluster.sees("h1", "h3", HostState::Ready, Duration::from_secs(60)).await,
        "{:?}\n{}",
        cluster.hosts("h1").await,
        cluster.log("h3")
    );

    // Down: no netns, no link, no process is left.
    let state = cluster.state();
    let names: Vec<String> = std::iter::once(state["bridge"].as_str().expect("bridge").to_owned())
        .chain(
            state["hosts"]
                .as_array()
                .expect("hosts")
                .iter()
                .map(|h| h["veth"].as_str().expect("veth").to_owned()),
        )
        .collect();
    let namespaces: Vec<String> = state["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["netns"].as_str().expect("netns").to_owned())
        .collect();
    assert!(links().iter().any(|l| *l == names[0]), "{:?}", links());
    let said = success(&cluster.run(&["down", &cluster.name]));
    assert!(said.contains("is down"), "{said}");
    let listed = netns();
    assert!(
        namespaces.iter().all(|ns| !listed.lines().any(|l| l.split_whitespace().next() == Some(ns))),
        "{listed}"
    );
    let left: Vec<String> = links().into_iter().filter(|l| names.contains(l)).collect();
    assert!(left.is_empty(), "links left: {left:?}");
    let dir = cluster.dir.path().join("cluster");
    let alive: Vec<u64> = seen_pids.into_iter().filter(|pid| ours_alive(*pid, &dir)).collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    assert!(!dir.exists(), "the cluster's dir is removed");
    let status = failure(&cluster.run(&["status", &cluster.name]));
    assert!(status.contains("there is no cluster"), "{status}");
}
