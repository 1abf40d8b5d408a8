//! The networks service through the real daemon, with no machine booting:
//! the `default` network a daemon makes at start, with its NAT carrying a
//! stand-in machine's traffic out and leaving nothing behind; and faults,
//! which live in the store, put back on the host after a daemon restart.
//!
//! The stand-in machine is a network namespace wired to the daemon's bridge
//! by a veth pair, as in the net crate's own tests: to a bridge, to
//! nftables and to routing, a veth end is what a tap is.

// An image to record machines with, pulled from a real registry on
// loopback (a busybox image, built in a second, where Debian's takes
// minutes): the same helpers the image tests use.
use crate::machines_support as support;

use std::process::Command;
use std::time::Duration;

use hearth_client::types::{CreateMachine, NetworkAttachment};
use hearth_testkit::{Daemon, success, wait_until};
use support::{Auth, Registry, TestImage};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// Runs a command and returns its stdout, failing the test if it fails.
fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This daemon's firewall table of `family`, as nft lists it ("" if none).
fn table(daemon: &Daemon, family: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "table", family, &format!("hearth-{}", daemon.net_prefix())])
        .output()
        .expect("run nft: install nftables (`make setup` does)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces and host links a test made by hand, deleted when dropped,
/// even when the test fails.
#[derive(Default)]
struct ByHand {
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl ByHand {
    /// A namespace with loopback up.
    fn netns(&mut self, name: &str) -> String {
        sh(&["ip", "netns", "add", name]);
        self.namespaces.push(name.to_owned());
        sh(&["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]);
        name.to_owned()
    }

    /// A veth pair: `host_end` stays in the host's namespace, the other end
    /// is `eth0` in `ns`, at `address` (`IP/PREFIX`), up.
    fn veth(&mut self, host_end: &str, ns: &str, address: &str) {
        sh(&["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns]);
        self.links.push(host_end.to_owned());
        sh(&["ip", "netns", "exec", ns, "ip", "addr", "add", address, "dev", "eth0"]);
        sh(&["ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up"]);
    }
}

impl Drop for ByHand {
    fn drop(&mut self) {
        for name in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        for link in &self.links {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
    }
}

/// docs/networks.md: "The `default` network is made at start; ... NAT to
/// the outside, unless `--no-nat`". A namespace standing for a machine on the default
/// network reaches an "outside" namespace that has no route back to the
/// network's subnet: its echo replies can only come back because the
/// daemon's NAT rewrote the requests' source to the host's own address.
/// When the daemon goes, so do its bridge and firewall tables.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_network_is_made_at_start_and_its_nat_reaches_the_outside() {
    let daemon = Daemon::start_with_default_network(BIN).await;
    let prefix = daemon.net_prefix().to_owned();
    let client = daemon.client();
    // There as soon as the API answers: a first `machine run` or `lab up`
    // finds it.
    let listed =
        client.networks().await.expect("networks").networks.into_iter().find(|n| n.name == "default");
    let default =
        listed.unwrap_or_else(|| panic!("no default network once the daemon answered\n{}", daemon.log()));
    assert!(default.nat, "{default:?}");
    assert!(default.bridge.starts_with(&format!("{prefix}b-")), "{default:?}");
    let (network, prefix_len) = default.subnet.split_once('/').expect("a subnet");
    assert!(network.starts_with("10.2") && prefix_len == "24", "{default:?}");

    // On the host: the bridge with the gateway's address, and the NAT rule.
    let bridged = wait_until(Duration::from_secs(20), async || {
        let addresses =
            Command::new("ip").args(["-o", "-4", "addr", "show", "dev", &default.bridge]).output();
        addresses.is_ok_and(|a| String::from_utf8_lossy(&a.stdout).contains(&format!("{}/", default.gateway)))
            && table(&daemon, "inet").contains("masquerade")
    })
    .await;
    assert!(bridged, "no bridge or NAT rule for {default:?}:\n{}\n{}", table(&daemon, "inet"), daemon.log());
    let nat = table(&daemon, "inet");
    assert!(
        nat.contains(&format!("ip saddr {} oifname != \"{}\" masquerade", default.subnet, default.bridge)),
        "{nat}"
    );
    assert_eq!(sh(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(), "1", "NAT needs forwarding on");

    // A machine on the default network, and an outside it reaches only
    // through the host: a /30 of TEST-NET-2 of this test's own.
    let mut by_hand = ByHand::default();
    let machine = by_hand.netns(&format!("hearth-test-{prefix}-m"));
    let outside = by_hand.netns(&format!("hearth-test-{prefix}-o"));
    let machine_ip = format!("{}.250", default.gateway.rsplit_once('.').expect("an IPv4 gateway").0);
    by_hand.veth(&format!("{prefix}x-m"), &machine, &format!("{machine_ip}/24"));
    sh(&["ip", "link", "set", &format!("{prefix}x-m"), "master", &default.bridge, "up"]);
    sh(&["ip", "netns", "exec", &machine, "ip", "route", "add", "default", "via", &default.gateway]);
    let base = 4 * (std::process::id() % 60 + 1);
    let (host_side, far_side) = (format!("198.51.100.{}", base + 1), format!("198.51.100.{}", base + 2));
    by_hand.veth(&format!("{prefix}x-o"), &outside, &format!("{far_side}/30"));
    sh(&["ip", "addr", "add", &format!("{host_side}/30"), "dev", &format!("{prefix}x-o")]);
    sh(&["ip", "link", "set", &format!("{prefix}x-o"), "up"]);
    let routes = sh(&["ip", "netns", "exec", &outside, "ip", "-4", "route"]);
    assert!(!routes.contains("default") && !routes.contains(network), "the outside can route back: {routes}");

    let ping = Command::new("ip")
        .args(["netns", "exec", &machine, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", &far_side])
        .output()
        .expect("run ping: install iputils-ping (`make setup` does)");
    let said = String::from_utf8_lossy(&ping.stdout);
    assert!(said.contains("3 received"), "the machine did not reach the outside through NAT:\n{said}\n{nat}");

    // A host service listening on every address is out of the machine's
    // reach, through its gateway's address as through any other.
    let service = std::net::TcpListener::bind("0.0.0.0:0").expect("bind a host service");
    let port = service.local_addr().expect("its address").port();
    let connect = |to: &str| {
        let script = format!("exec 3<>/dev/tcp/{to}/{port}");
        let argv = ["netns", "exec", &machine, "timeout", "2", "bash", "-c", &script];
        Command::new("ip").args(argv).status().expect("run bash in the machine's namespace").success()
    };
    assert!(!connect(&default.gateway), "the machine reached a host service on its gateway's address");
    assert!(!connect(&host_side), "the machine reached a host service on another host address");
    drop(service);

    // The daemon gone, nothing of it is left on the host.
    drop(daemon);
    drop(by_hand);
    let links = sh(&["ip", "-o", "link", "show"]);
    assert!(!links.contains(&format!(": {prefix}b-")), "a bridge outlived its daemon:\n{links}");
    let tables = sh(&["nft", "list", "tables"]);
    assert!(!tables.contains(&format!("hearth-{prefix}")), "a table outlived its daemon:\n{tables}");
}

/// docs/networks.md: "Faults live in the store and come back after a
/// daemon restart". The host's rules for a partition and a loss are deleted while
/// the daemon is down (as a reboot of the host would); the restarted daemon
/// lists the same faults, with the same expiry, and puts their rules back.
#[tokio::test(flavor = "multi_thread")]
async fn faults_come_back_after_a_daemon_restart() {
    let registry = Registry::start(Auth::Anonymous);
    let image = TestImage::build();
    image.push(&registry, "hearth-test:1", &[]);
    let reference = format!("{}/hearth-test:1", registry.host());
    let mut daemon = Daemon::start(BIN).await;
    success(&daemon.cli(&["image", "pull", &reference]));
    success(&daemon.cli(&["network", "create", "keep", "--subnet", "10.243.0.0/24", "--no-nat"]));
    // Machines recorded with their network interfaces, never booted: a
    // fault's rules name their taps all the same.
    for name in ["a", "b"] {
        let create = CreateMachine {
            name: Some(name.to_owned()),
            image: reference.clone(),
            no_start: true,
            networks: vec![NetworkAttachment { network: "keep".into(), ip: None }],
            ..Default::default()
        };
        daemon.client().create_machine(&create).await.expect("create a machine");
    }
    let partition = success(&daemon.cli(&["fault", "partition", "a", "--from", "b", "--for", "600s"]));
    let partition = partition.split_whitespace().next().expect("a fault id").to_owned();
    success(&daemon.cli(&["fault", "loss", "b", "30%"]));
    let faults = daemon.client().faults().await.expect("faults").faults;
    assert_eq!(faults.len(), 2, "{faults:?}");
    let applied = async |daemon: &Daemon| {
        let rules = table(daemon, "bridge");
        rules.contains(&format!("partition {partition}\"")) && rules.contains("loss 30%")
    };
    assert!(
        wait_until(Duration::from_secs(10), async || applied(&daemon).await).await,
        "the faults' rules are not on the host:\n{}",
        table(&daemon, "bridge")
    );

    daemon.kill9();
    for family in ["bridge", "inet"] {
        sh(&["nft", "delete", "table", family, &format!("hearth-{}", daemon.net_prefix())]);
    }
    assert!(!applied(&daemon).await);
    daemon.restart().await;

    let after = daemon.client().faults().await.expect("faults").faults;
    let brief = |faults: &[hearth_client::types::Fault]| -> Vec<(String, String, Option<u64>)> {
        faults.iter().map(|f| (f.id.clone(), f.description.clone(), f.expires_at)).collect()
    };
    assert_eq!(brief(&after), brief(&faults), "the faults changed across the restart");
    assert!(
        wait_until(Duration::from_secs(10), async || applied(&daemon).await).await,
        "the restarted daemon did not put the faults' rules back:\n{}\n{}",
        table(&daemon, "bridge"),
        daemon.log()
    );

    // Healed, they go from the store and the host, and stay gone.
    success(&daemon.cli(&["fault", "heal"]));
    let gone = wait_until(Duration::from_secs(10), async || {
        let rules = table(&daemon, "bridge");
        !rules.contains(&format!("partition {partition}\"")) && !rules.contains("loss 30%")
    })
    .await;
    assert!(gone, "healed faults left rules:\n{}", table(&daemon, "bridge"));
    daemon.restart().await;
    assert!(daemon.client().faults().await.expect("faults").faults.is_empty());
    // The pulled image goes too: the image cache is shared by every test run.
    for name in ["a", "b"] {
        success(&daemon.cli(&["machine", "rm", name]));
    }
    success(&daemon.cli(&["image", "rm", &reference]));
}
