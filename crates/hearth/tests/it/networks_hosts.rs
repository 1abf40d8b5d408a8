//! A network spanning hosts, through the binary: on a cluster of two hosts
//! made by `hearth cluster up`, a machine on each, on one network. They
//! reach each other by name, a host reaches the other host's machine, and a
//! partition, a delay and a loss between them break it on purpose and heal.

use std::process::{Command, Output};
use std::time::Duration;

use hearth_testkit::{Daemon, skip, success, wait_until};

use crate::cluster_support::Cluster;
use crate::networks_faults::{average_rtt, received};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// Three pings from `from` (a machine of `host`) to `to`: the summary.
fn ping(cluster: &Cluster, host: &str, from: &str, to: &str) -> String {
    ping_n(cluster, host, from, to, 3)
}

fn ping_n(cluster: &Cluster, host: &str, from: &str, to: &str, count: u32) -> String {
    let count = count.to_string();
    let out = cluster
        .cli(host, &["machine", "exec", from, "--", "ping", "-c", &count, "-i", "0.2", "-W", "2", "-q", to]);
    text(&out)
}

/// Pings until `count` replies came, for up to `deadline` seconds in all
/// (`-w`): after a first reply, `-W` alone waits only twice the round trip
/// seen for the rest, which a late reply can miss. Ping sends on until it
/// has `count` replies, so it may get more than `count`.
fn ping_all(cluster: &Cluster, host: &str, from: &str, to: &str, count: u32, deadline: u32) -> String {
    let (count, deadline) = (count.to_string(), deadline.to_string());
    let out = cluster.cli(
        host,
        &["machine", "exec", from, "--", "ping", "-c", &count, "-i", "0.2", "-w", &deadline, "-q", to],
    );
    text(&out)
}

/// Waits until one ping from a (on h1) to b says `done`: a fault on b is
/// made by b's host, h2, when it sees the fault in the store, a moment
/// after h1 recorded it.
async fn until_a_to_b(cluster: &Cluster, done: impl Fn(&str) -> bool) -> bool {
    wait_until(Duration::from_secs(15), async || done(&ping_n(cluster, "h1", "a", "b", 1))).await
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `host`'s bridge rules, for a failure's message.
fn rules(cluster: &Cluster, host: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &cluster.netns(host), "nft", "list", "table", "bridge", "hearth-h"])
        .output()
        .expect("nft");
    text(&out)
}

/// The id a fault command printed first.
fn fault_id(out: &Output) -> String {
    success(out).split_whitespace().next().expect("a fault id").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn machines_on_two_hosts_talk_by_name_and_break_on_purpose_between_hosts() {
    if !nix::unistd::geteuid().is_root() {
        skip("not root, so no network namespaces");
        return;
    }
    // The test image, in the cache the cluster's hosts share (they have no
    // way out to build one).
    let image = Daemon::start(BIN).await.ensure_debian_image().await;
    let (cluster, _) = Cluster::start("nh", 2);
    let h1 = |args: &[&str]| cluster.cli("h1", args);

    success(&h1(&["network", "create", "lab", "--subnet", "10.245.0.0/24", "--no-nat"]));
    success(&h1(&["machine", "run", "--on", "h1", "--name", "a", "--network", "lab:10.245.0.10", &image]));
    success(&h1(&["machine", "run", "--on", "h2", "--name", "b", "--network", "lab:10.245.0.11", &image]));

    // By name, both ways, each asked through its own host, once h1 has
    // b's record (its name, its tunnel entry).
    assert!(until_a_to_b(&cluster, |p| received(p) == 1).await, "a never reached b\n{}", cluster.log("h1"));
    let there = ping(&cluster, "h1", "a", "b.lab.hearth");
    assert_eq!(received(&there), 3, "a -> b: {there}\n{}", cluster.log("h1"));
    let back = ping(&cluster, "h2", "b", "a");
    assert_eq!(received(&back), 3, "b -> a: {back}");

    // Host h1 itself reaches h2's machine, through its route.
    let host_ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cluster.netns("h1"),
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "-q",
            "10.245.0.11",
        ])
        .output()
        .expect("ping from h1's namespace");
    assert_eq!(received(&text(&host_ping)), 2, "h1 -> b: {}", text(&host_ping));

    // Isolation holds across hosts: a machine opens nothing on another
    // host (its etcd), nor reaches another network's machine there.
    let h2_address = cluster.state()["hosts"][1]["address"].as_str().expect("h2's address").to_owned();
    let etcd = cluster.cli("h1", &["machine", "exec", "a", "--", "nc", "-z", "-w", "2", &h2_address, "2379"]);
    assert!(!etcd.status.success(), "a reached h2's etcd: {}", text(&etcd));
    success(&h1(&["network", "create", "other", "--subnet", "10.246.0.0/24", "--no-nat"]));
    success(&h1(&["machine", "run", "--on", "h2", "--name", "c", "--network", "other:10.246.0.10", &image]));
    let across = ping_n(&cluster, "h1", "a", "10.246.0.10", 2);
    assert_eq!(received(&across), 0, "a reached another network's machine on h2: {across}");
    let neighbour = ping_n(&cluster, "h2", "c", "10.245.0.11", 1);
    assert_eq!(received(&neighbour), 0, "c reached b, on another network of its own host: {neighbour}");
    success(&h1(&["machine", "rm", "--force", "c"]));

    // A partition between hosts, both ways.
    let id = fault_id(&h1(&["fault", "partition", "b", "--from", "a"]));
    let cut = ping(&cluster, "h1", "a", "b");
    assert_eq!(received(&cut), 0, "a -> b crossed the partition: {cut}");
    let cut = ping(&cluster, "h2", "b", "a");
    assert_eq!(received(&cut), 0, "b -> a crossed the partition: {cut}");
    success(&h1(&["fault", "heal", &id]));
    assert!(until_a_to_b(&cluster, |p| received(p) == 1).await, "h2 never healed the partition");
    let healed = ping(&cluster, "h1", "a", "b");
    assert_eq!(received(&healed), 3, "a -> b after heal: {healed}");

    // A delay on b, made by b's host, slows what a sends it.
    let id = fault_id(&h1(&["fault", "delay", "b", "200ms"]));
    assert!(until_a_to_b(&cluster, |p| average_rtt(p) >= 200.0).await, "h2 never delayed b");
    // A delay passes traffic, late (and later still from two guests under
    // software emulation on a loaded host).
    let slow = ping_all(&cluster, "h1", "a", "b", 3, 10);
    assert!(received(&slow) >= 3 && average_rtt(&slow) >= 200.0, "a -> b, delayed: {slow}");
    success(&h1(&["fault", "heal", &id]));
    assert!(until_a_to_b(&cluster, |p| average_rtt(p) < 200.0).await, "h2 never healed b's delay");

    // All of it lost, then healed.
    let id = fault_id(&h1(&["fault", "loss", "b", "100%"]));
    assert!(
        until_a_to_b(&cluster, |p| received(p) == 0).await,
        "h2 never dropped b's traffic: {}\n{}",
        rules(&cluster, "h2"),
        cluster.log("h2")
    );
    let lost = ping(&cluster, "h1", "a", "b");
    assert_eq!(received(&lost), 0, "a -> b through a 100% loss: {lost}");
    success(&h1(&["fault", "heal", &id]));
    assert!(until_a_to_b(&cluster, |p| received(p) == 1).await, "h2 never healed b's loss");
    let healed = ping(&cluster, "h1", "a", "b");
    assert_eq!(received(&healed), 3, "a -> b after heal: {healed}");

    success(&h1(&["machine", "rm", "--force", "a", "b"]));
    success(&h1(&["network", "rm", "other"]));
}
