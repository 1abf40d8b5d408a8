//! Networks and faults end to end: machines find each other by name, ports
//! are forwarded from loopback, networks are isolated, partitions, loss and
//! delay break traffic on purpose and heal, and nothing is left on the host.
//!
//! Each test daemon uses its own prefix for host interfaces and firewall
//! tables, and these tests use subnets of their own (10.241.x.0/24), so they
//! never touch anything else on the host.

use std::io::Read;
use std::time::Duration;

use hearth_testkit::{Daemon, failure, free_port, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn ping(daemon: &Daemon, from: &str, to: &str, count: u32) -> String {
    let count = count.to_string();
    let out =
        daemon.cli(&["machine", "exec", from, "--", "ping", "-c", &count, "-i", "0.05", "-W", "1", "-q", to]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Pings until `count` replies came, for up to 10 s in all (`-w`). After a
/// first reply, `-W` alone waits only twice the round trip seen for the
/// rest, which a reply made late by a busy machine misses. With `-w`, ping
/// sends on until it has `count` replies, so a late reply makes it send
/// one more, whose reply may come too: at least `count` means traffic
/// flows.
fn ping_all(daemon: &Daemon, from: &str, to: &str, count: u32) -> String {
    let count = count.to_string();
    let out = daemon
        .cli(&["machine", "exec", from, "--", "ping", "-c", &count, "-i", "0.05", "-w", "10", "-q", to]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// How many pings were answered, from ping's summary line.
pub(crate) fn received(summary: &str) -> u32 {
    summary
        .lines()
        .find(|l| l.contains(" received"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The average round trip in ms, from ping's `rtt min/avg/max/mdev` line.
pub(crate) fn average_rtt(summary: &str) -> f64 {
    rtt_field(summary, 1)
}

/// The round trips' mean deviation in ms, from the same line.
fn rtt_deviation(summary: &str) -> f64 {
    rtt_field(summary, 3)
}

fn rtt_field(summary: &str, at: usize) -> f64 {
    summary
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.split('/').nth(at))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread")]
async fn machines_talk_by_name_are_isolated_by_network_and_break_on_purpose() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&["network", "create", "lab", "--subnet", "10.241.0.0/24", "--no-nat"]));
    success(&daemon.cli(&["network", "create", "other", "--subnet", "10.241.1.0/24", "--no-nat"]));
    let port = free_port().port();
    let publish = format!("{port}:7000");
    success(&daemon.cli(&["machine", "run", "--name", "a", "--network", "lab", &image]));
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "b",
        "--network",
        "lab:10.241.0.50",
        "-p",
        &publish,
        &image,
    ]));
    // c's host port is held by another process: c runs all the same, and
    // says why that port is not forwarded until it is free.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let held_port = held.local_addr().expect("held port").port();
    let held_publish = format!("{held_port}:7000");
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "c",
        "--network",
        "other",
        "-p",
        &held_publish,
        &image,
    ]));

    // Addresses: the lowest free one, or the one asked for.
    let b = daemon.client().machine("b").await.expect("b");
    assert_eq!(b.nics[0].ip, "10.241.0.50");
    let a = daemon.client().machine("a").await.expect("a");
    assert_eq!(a.nics[0].ip, "10.241.0.2");
    // Each VMM runs as a user of its own: one broken out cannot signal or
    // trace the other.
    let uid = |pid: Option<u32>| {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.expect("pid"))).expect("status");
        status.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned).expect("Uid")
    };
    assert_ne!(uid(a.pid), uid(b.pid), "two VMMs share a user");
    let net = success(&daemon.cli(&["network", "inspect", "lab"]));
    assert!(net.contains("a.lab.hearth") && net.contains("10.241.0.50"), "{net}");

    // Names: the short name inside the network, the full name anywhere.
    let got = ping_all(&daemon, "a", "b", 3);
    assert!(received(&got) >= 3, "{got}");
    let got = ping_all(&daemon, "b", "a.lab.hearth", 3);
    assert!(received(&got) >= 3, "{got}");
    let hosts = success(&daemon.cli(&["machine", "exec", "a", "--", "getent", "hosts", "b.lab.hearth"]));
    assert!(hosts.starts_with("10.241.0.50"), "{hosts}");

    // Networks are isolated from each other.
    assert_eq!(received(&ping(&daemon, "c", "10.241.0.2", 3)), 0, "network other reached network lab");

    // A port forwarded from the host's loopback.
    success(&daemon.cli(&[
        "machine",
        "exec",
        "b",
        "--",
        "sh",
        "-c",
        "setsid sh -c 'while true; do echo hello-from-b | nc -l -p 7000 -q 1; done' </dev/null >/dev/null 2>&1 &",
    ]));
    let mut answer = String::new();
    for _ in 0..50 {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let _ = stream.read_to_string(&mut answer);
            if !answer.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answer, "hello-from-b\n");

    // The held port: the problem shows, and goes once the port is free.
    let problem = async || daemon.client().machine("c").await.expect("c").ports_problem;
    assert!(
        wait_until(Duration::from_secs(10), async || problem().await.is_some()).await,
        "a forward to a held port showed no problem"
    );
    let shown = problem().await.unwrap_or_default();
    assert!(shown.contains(&format!("port {held_publish}")) && shown.contains("in use"), "{shown}");
    let inspect = success(&daemon.cli(&["machine", "inspect", "c"]));
    assert!(inspect.contains("forwarding") && inspect.contains("free the port"), "{inspect}");
    drop(held);
    assert!(
        wait_until(Duration::from_secs(10), async || problem().await.is_none()).await,
        "the forward did not start once its port was free: {:?}",
        problem().await
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", held_port)).is_ok(),
        "nothing listens on the freed port"
    );

    // A partition cuts a from b, both ways, until healed.
    let out = success(&daemon.cli(&["fault", "partition", "a", "--from", "b"]));
    let id = out.split_whitespace().next().expect("fault id").to_owned();
    assert_eq!(received(&ping(&daemon, "a", "b", 3)), 0, "partition did not cut a from b");
    assert_eq!(received(&ping(&daemon, "b", "a", 3)), 0, "partition did not cut b from a");
    let ls = success(&daemon.cli(&["fault", "ls"]));
    assert!(ls.contains(&id) && ls.contains("partition a"), "{ls}");
    success(&daemon.cli(&["fault", "heal", &id]));
    let got = ping_all(&daemon, "a", "b", 3);
    assert!(received(&got) >= 3, "heal did not restore traffic: {got}");

    // Loss shows as a loss rate (50% each way towards b: replies are lost too).
    success(&daemon.cli(&["fault", "loss", "b", "50%"]));
    let got = received(&ping(&daemon, "a", "b", 60));
    assert!((10..=50).contains(&got), "with 50% loss towards b, {got} of 60 pings came back");
    success(&daemon.cli(&["fault", "heal"]));
    let got = ping_all(&daemon, "a", "b", 5);
    assert!(received(&got) >= 5, "{got}");

    // Delay shows in the round trip: tc netem where the host kernel has it,
    // hearth's NFQUEUE delay line where it has not (as on the build hosts).
    success(&daemon.cli(&["fault", "delay", "b", "100ms"]));
    let rtt = average_rtt(&ping(&daemon, "a", "b", 5));
    assert!((90.0..200.0).contains(&rtt), "a 100 ms delay gave an average round trip of {rtt} ms");
    eprintln!("a 100 ms delay towards b: a's pings average {rtt} ms");
    success(&daemon.cli(&["fault", "heal"]));
    // Jitter spreads the round trips: uniform on ±40 ms deviates by 20 ms on average.
    success(&daemon.cli(&["fault", "delay", "b", "100ms", "--jitter", "40ms"]));
    let summary = ping(&daemon, "a", "b", 20);
    let (rtt, spread) = (average_rtt(&summary), rtt_deviation(&summary));
    assert!((80.0..200.0).contains(&rtt), "100 ms ± 40 ms gave an average round trip of {rtt} ms");
    assert!(spread > 8.0, "100 ms ± 40 ms gave round trips deviating by only {spread} ms: {summary}");
    eprintln!("100 ms ± 40 ms towards b: a's pings average {rtt} ms, deviating by {spread} ms");
    success(&daemon.cli(&["fault", "heal"]));
    let rtt = average_rtt(&ping(&daemon, "a", "b", 5));
    assert!(rtt < 50.0, "the round trip was {rtt} ms after healing the delay");
    // Healing leaves no queue rules behind (the chain is this daemon's own).
    let chain = format!("hearth-{}-delay", daemon.net_prefix());
    let saved = std::process::Command::new("iptables-save")
        .args(["-t", "mangle"])
        .output()
        .expect("run iptables-save: install iptables (`make setup` does)");
    let saved = String::from_utf8_lossy(&saved.stdout);
    assert!(!saved.contains(&chain), "the delay rules outlived their fault: {saved}");
    assert!(success(&daemon.cli(&["fault", "ls"])).lines().count() == 1, "faults left over");

    // A fault that heals itself: it holds while it lasts, and then is gone
    // from the store and from the host's rules.
    success(&daemon.cli(&["fault", "partition", "a", "--from", "b", "--for", "2s"]));
    assert_eq!(received(&ping(&daemon, "a", "b", 2)), 0);
    let healed = wait_until(Duration::from_secs(10), async || {
        success(&daemon.cli(&["fault", "ls"])).lines().count() == 1
    })
    .await;
    assert!(healed, "the partition for 2s was still listed after 10 s");
    // Its rules go in the pass right after the record.
    wait_until(Duration::from_secs(5), async || received(&ping(&daemon, "a", "b", 1)) == 1).await;
    let got = ping_all(&daemon, "a", "b", 3);
    assert!(received(&got) >= 3, "the partition did not heal itself: {got}");

    // Removing a machine removes its faults; removing everything leaves nothing.
    success(&daemon.cli(&["fault", "partition", "a", "--from", "b"]));
    success(&daemon.cli(&["machine", "rm", "-f", "b"]));
    assert!(success(&daemon.cli(&["fault", "ls"])).lines().count() == 1, "b's fault outlived it");
    let err = failure(&daemon.cli(&["network", "rm", "lab"]));
    assert!(err.contains("still has machines: a"), "{err}");
    success(&daemon.cli(&["machine", "rm", "-f", "a", "c"]));
    success(&daemon.cli(&["network", "rm", "lab", "other"]));
    // The networks service removes the bridges on its next pass.
    wait_until(Duration::from_secs(10), async || {
        daemon.host_links().is_empty() && daemon.vm_pids().is_empty()
    })
    .await;
    assert!(daemon.host_links().is_empty(), "left on the host: {:?}", daemon.host_links());
    assert!(daemon.vm_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_network_requests_are_refused_clearly() {
    // Its subnets are outside 10.200-255, where other tests' daemons pick
    // theirs: one of them could take 10.242 in the moment between this
    // test's `network rm` and its `network create` again.
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&["network", "create", "n1", "--subnet", "10.199.0.0/24", "--no-nat"]));

    let err = failure(&daemon.cli(&["network", "create", "n2", "--subnet", "10.199.0.128/25"]));
    assert!(err.contains("overlaps network \"n1\"") && err.contains("hint:"), "{err}");
    let err = failure(&daemon.cli(&["network", "create", "n2", "--subnet", "10.199.1.7/24"]));
    assert!(err.contains("did you mean 10.199.1.0/24"), "{err}");
    let err = failure(&daemon.cli(&["network", "create", "n1"]));
    assert!(err.contains("already exists"), "{err}");
    let err = failure(&daemon.cli(&["network", "create", "Bad_Name"]));
    assert!(err.contains("not valid"), "{err}");

    let no_start = |name: &str, network: &str| {
        daemon.cli(&["machine", "run", "-d", "--name", name, "--network", network, &image])
    };
    let err = failure(&no_start("m1", "n1:10.99.0.5"));
    assert!(err.contains("is not in network \"n1\""), "{err}");
    let err = failure(&no_start("m1", "n1:10.199.0.1"));
    assert!(err.contains("is not in network"), "the gateway's address is not a machine's: {err}");
    let err = failure(&no_start("m1", "nosuch"));
    assert!(err.contains("network \"nosuch\" does not exist") && err.contains("hearth network ls"), "{err}");
    success(&no_start("m1", "n1:10.199.0.9"));
    let err = failure(&no_start("m2", "n1:10.199.0.9"));
    assert!(err.contains("taken by machine \"m1\""), "{err}");
    let err = failure(&daemon.cli(&["machine", "run", "-d", "--name", "m3", "-p", "not-a-port", &image]));
    assert!(err.contains("not a port mapping"), "{err}");

    let err = failure(&daemon.cli(&["fault", "delay", "ghost", "100ms"]));
    assert!(err.contains("\"ghost\" does not exist") && err.contains("hint:"), "{err}");
    let err = failure(&daemon.cli(&["fault", "loss", "m1", "150%"]));
    assert!(err.contains("not between 0% and 100%"), "{err}");
    let err = failure(&daemon.cli(&["fault", "partition", "m1", "--from", "m1"]));
    assert!(err.contains("both sides"), "{err}");
    let err = failure(&daemon.cli(&["fault", "heal", "f000000"]));
    assert!(err.contains("does not exist"), "{err}");

    success(&daemon.cli(&["machine", "rm", "-f", "m1"]));
    success(&daemon.cli(&["network", "rm", "n1"]));
    // Regression: a network can be made again at once with the same subnet,
    // although its old bridge's route may not be gone yet.
    success(&daemon.cli(&["network", "create", "n1", "--subnet", "10.199.0.0/24", "--no-nat"]));
    success(&daemon.cli(&["network", "rm", "n1"]));
}
