//! Labs of network namespaces for the link, firewall and shaping tests.
//!
//! A test never touches the host's own network namespace. [`run`] gives it a
//! [`Lab`]; the lab creates namespaces named `hearth-test-<random>-<role>`:
//! one playing the host (it holds the bridges, the nftables ruleset and the
//! qdiscs), and one per machine. A machine is wired to the host by a veth
//! pair whose host end is named like a tap and enslaved to the bridge. Real
//! taps need a VMM on their other side; a veth end is the same thing to a
//! bridge, to nftables' `iifname`/`oifname` and to tc, so it stands in for
//! one. When the test ends, passing or panicking, the lab deletes its
//! namespaces (which deletes every link inside them), and [`run`] then
//! checks that none is left.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;

use hearth_net::link::{self, Netns};

#[allow(unused_imports)] // Only the tests that can be skipped use it.
pub(crate) use hearth_testkit::skip;

/// Runs `test` in a fresh lab, then checks that the lab left no namespace
/// behind.
pub(crate) fn run(test: impl FnOnce(&mut Lab)) {
    let mut lab = Lab::new();
    test(&mut lab);
    let names = lab.namespaces.clone();
    drop(lab);
    let listed = sh(&Netns::Host, &["ip", "netns", "list"]);
    for name in names {
        assert!(
            !listed.lines().any(|l| l.split_whitespace().next() == Some(&name)),
            "namespace {name} leaked"
        );
    }
}

/// Namespaces that exist until the lab is dropped.
pub(crate) struct Lab {
    id: String,
    namespaces: Vec<String>,
}

/// A namespace standing for a machine, wired to a bridge through `tap`.
pub(crate) struct Machine {
    pub(crate) ns: Netns,
    pub(crate) ip: Ipv4Addr,
    pub(crate) tap: String,
}

impl Lab {
    fn new() -> Lab {
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("read a random uuid");
        Lab { id: uuid[..8].to_owned(), namespaces: Vec::new() }
    }

    /// A new namespace with loopback up.
    pub(crate) fn netns(&mut self, role: &str) -> Netns {
        let name = format!("hearth-test-{}-{role}", self.id);
        sh(&Netns::Host, &["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        let ns = Netns::Named(name);
        sh(&ns, &["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A namespace for the host, with the bridge `bridge` at `gateway/24`.
    pub(crate) fn host_with_bridge(&mut self, bridge: &str, gateway: Ipv4Addr) -> Netns {
        let host = self.netns("host");
        link::ensure_bridge(&host, bridge, gateway, 24).expect("create the bridge");
        host
    }

    /// A machine called `role` at `ip/24`, its `eth0` wired by a veth pair
    /// to `bridge` in `host`, the host end named `tap`; `gateway`, if any,
    /// is its default route.
    pub(crate) fn machine(
        &mut self,
        role: &str,
        host: &Netns,
        bridge: &str,
        tap: &str,
        ip: Ipv4Addr,
        gateway: Option<Ipv4Addr>,
    ) -> Machine {
        let ns = self.netns(role);
        let Netns::Named(name) = &ns else { unreachable!("labs make named namespaces") };
        sh(host, &["ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", name]);
        sh(host, &["ip", "link", "set", "dev", tap, "master", bridge, "up"]);
        sh(&ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        sh(&ns, &["ip", "link", "set", "dev", "eth0", "up"]);
        if let Some(gateway) = gateway {
            sh(&ns, &["ip", "route", "add", "default", "via", &gateway.to_string()]);
        }
        Machine { ns, ip, tap: tap.to_owned() }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in &self.namespaces {
            // Ignore failures: a panic here would hide the test's own.
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `f` on a thread of its own inside `ns`; sockets made there stay in
/// `ns` after it returns, and threads and commands it starts run in `ns`
/// too.
pub(crate) fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Netns::Named(name) = ns {
                    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open the namespace");
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("enter the namespace");
                }
                f()
            })
            .join()
            .expect("the thread in the namespace")
    })
}

/// Runs a command in `ns` and returns its stdout; panics with its stderr if
/// it fails.
pub(crate) fn sh(ns: &Netns, argv: &[&str]) -> String {
    let output = command(ns, argv).output().unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        output.status.success(),
        "{argv:?} in {ns:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn command(ns: &Netns, argv: &[&str]) -> Command {
    let mut full: Vec<&str> = Vec::new();
    if let Netns::Named(name) = ns {
        full.extend(["ip", "netns", "exec", name]);
    }
    full.extend(argv);
    let mut command = Command::new(full[0]);
    command.args(&full[1..]);
    command
}

/// What `ping` reported.
#[derive(Debug)]
pub(crate) struct Ping {
    pub(crate) sent: u32,
    pub(crate) received: u32,
    /// The average round trip, if any reply came back.
    pub(crate) avg_rtt_ms: Option<f64>,
    /// The round trips' mean deviation, if any reply came back.
    pub(crate) mdev_ms: Option<f64>,
}

impl Ping {
    pub(crate) fn all_answered(&self) -> bool {
        self.sent > 0 && self.received == self.sent
    }

    pub(crate) fn none_answered(&self) -> bool {
        self.sent > 0 && self.received == 0
    }
}

/// Pings `to` from `from` `count` times, `interval` seconds apart, waiting
/// at most a second for each reply.
pub(crate) fn ping(from: &Netns, to: Ipv4Addr, count: u32, interval: &str) -> Ping {
    let (count, to) = (count.to_string(), to.to_string());
    let output = command(from, &["ping", "-n", "-q", "-c", &count, "-i", interval, "-W", "1", &to])
        .output()
        .expect("run ping (apt-get install iputils-ping)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "3 packets transmitted, 2 received, 33.3333% packet loss, time 401ms"
    let stats = stdout.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| {
        panic!("ping printed no statistics: {stdout} {}", String::from_utf8_lossy(&output.stderr))
    });
    let number_before = |word: &str| -> u32 {
        let words: Vec<&str> = stats.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let at = words.iter().position(|w| *w == word).expect("ping statistics");
        words[at - 1].parse().expect("a count")
    };
    // "rtt min/avg/max/mdev = 0.040/0.051/0.063/0.009 ms"
    let rtt = |at: usize| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
            // "… ms", or "… ms, pipe 2" when several requests were in flight at once
            .and_then(|v| v.split_whitespace().next()?.split('/').nth(at))
            .map(|ms| ms.parse().expect("a round trip in ms"))
    };
    Ping {
        sent: number_before("packets"),
        received: number_before("received"),
        avg_rtt_ms: rtt(1),
        mdev_ms: rtt(3),
    }
}

/// How many ICMP echo requests `ns` has received: proof that a packet
/// arrived even when its reply is dropped on the way back.
pub(crate) fn echo_requests_received(ns: &Netns) -> u64 {
    let snmp = sh(ns, &["cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().expect("Icmp header"), icmp.next().expect("Icmp values"));
    let at = names.split_whitespace().position(|n| n == "InEchos").expect("InEchos");
    values.split_whitespace().nth(at).expect("InEchos value").parse().expect("a count")
}
