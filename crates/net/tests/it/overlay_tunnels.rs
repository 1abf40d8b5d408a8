//! A network spanning two hosts through `overlay::sync`'s VXLAN tunnels:
//! machines on different hosts reach each other whole-frame, each reaches
//! its own host's gateway, a partition between hosts holds, and the
//! tunnels' forwarding entries follow what they are given.
//!
//! Two namespaces play hosts, joined by a veth pair (the underlay, with
//! jumbo frames); each has the network's bridge with the same gateway
//! address and one machine.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::support::{Lab, Machine, echo_requests_received, ping, sh};
use hearth_net::firewall::{self, Desired, Overlay, Partition};
use hearth_net::link::{self, Netns};
use hearth_net::overlay::{self, Tunnel};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 94, 0, 1);
const UNDERLAY: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 93, 0, 1), Ipv4Addr::new(10, 93, 0, 2)];

struct Host {
    ns: Netns,
    address: Ipv4Addr,
    machine: Machine,
    mac: String,
}

/// Hosts `one` and `two` with machines a (10.94.0.10) and b (10.94.0.11).
fn two_hosts(lab: &mut Lab) -> [Host; 2] {
    let one = lab.netns("one");
    let two = lab.netns("two");
    let Netns::Named(two_name) = &two else { unreachable!("labs make named namespaces") };
    sh(
        &one,
        &["ip", "link", "add", "u0", "mtu", "9000", "type", "veth", "peer", "name", "u0", "netns", two_name],
    );
    for (ns, address) in [(&one, UNDERLAY[0]), (&two, UNDERLAY[1])] {
        sh(ns, &["ip", "addr", "add", &format!("{address}/24"), "dev", "u0"]);
        sh(ns, &["ip", "link", "set", "dev", "u0", "mtu", "9000", "up"]);
        link::ensure_bridge(ns, "hb-lab", GATEWAY, 24).expect("the bridge");
    }
    let a = lab.machine("a", &one, "hb-lab", "ht-a", Ipv4Addr::new(10, 94, 0, 10), Some(GATEWAY));
    let b = lab.machine("b", &two, "hb-lab", "ht-b", Ipv4Addr::new(10, 94, 0, 11), Some(GATEWAY));
    let mac = |m: &Machine| sh(&m.ns, &["cat", "/sys/class/net/eth0/address"]).trim().to_owned();
    let (mac_a, mac_b) = (mac(&a), mac(&b));
    [
        Host { ns: one, address: UNDERLAY[0], machine: a, mac: mac_a },
        Host { ns: two, address: UNDERLAY[1], machine: b, mac: mac_b },
    ]
}

/// `host`'s tunnel to `other`, knowing `other`'s machine.
fn tunnel(other: &Host) -> Tunnel {
    Tunnel {
        network: "lab".into(),
        device: "hx-lab".into(),
        bridge: "hb-lab".into(),
        vni: overlay::vni("lab"),
        gateway: GATEWAY,
        flood: BTreeSet::from([other.address]),
        machines: BTreeMap::from([(other.mac.clone(), other.address)]),
        routes: BTreeMap::from([(other.machine.ip, other.address)]),
    }
}

/// A host's rules: its bridge, its tunnel, the other host as its peer.
fn rules(other: &Host, partitions: Vec<Partition>) -> Desired {
    Desired {
        table: "hearth".into(),
        networks: vec![firewall::NetworkRules {
            bridge: "hb-lab".into(),
            subnet: "10.94.0.0/24".into(),
            nat: false,
        }],
        overlays: vec![Overlay { device: "hx-lab".into(), gateway: GATEWAY }],
        peers: vec![other.address],
        partitions,
        ..Desired::default()
    }
}

/// The tunnel's own forwarding entries, as `MAC ADDRESS` lines.
fn entries(ns: &Netns) -> Vec<String> {
    let out = sh(ns, &["bridge", "-j", "fdb", "show", "dev", "hx-lab"]);
    let list: Vec<serde_json::Value> =
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    let mut lines: Vec<String> = list
        .iter()
        .filter_map(|e| Some(format!("{} {}", e["mac"].as_str()?, e.get("dst")?.as_str()?)))
        .collect();
    lines.sort();
    lines
}

fn connect(hosts: &[Host; 2]) {
    for (host, other) in [(&hosts[0], &hosts[1]), (&hosts[1], &hosts[0])] {
        firewall::apply(&host.ns, &rules(other, vec![])).expect("the firewall");
        overlay::sync(&host.ns, "h", host.address, &[tunnel(other)]).result().expect("the tunnel");
    }
}

#[test]
fn machines_on_two_hosts_reach_each_other_through_the_tunnel() {
    support::run(|lab| {
        let hosts = two_hosts(lab);
        let [one, two] = &hosts;
        assert!(ping(&one.machine.ns, two.machine.ip, 1, "0.1").none_answered(), "no tunnel yet");
        connect(&hosts);
        assert!(ping(&one.machine.ns, two.machine.ip, 3, "0.1").all_answered(), "a <-> b");
        assert!(ping(&two.machine.ns, one.machine.ip, 3, "0.1").all_answered(), "b <-> a");
        // A whole 1,500-byte frame crosses, unfragmented.
        sh(
            &one.machine.ns,
            &["ping", "-n", "-q", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", "10.94.0.11"],
        );

        // Syncing again changes nothing.
        let before = entries(&one.ns);
        assert_eq!(
            before,
            [format!("00:00:00:00:00:00 {}", two.address), format!("{} {}", two.mac, two.address)]
        );
        overlay::sync(&one.ns, "h", one.address, &[tunnel(two)]).result().expect("sync again");
        assert_eq!(entries(&one.ns), before);
    });
}

#[test]
fn each_machine_talks_to_its_own_hosts_gateway() {
    support::run(|lab| {
        let hosts = two_hosts(lab);
        connect(&hosts);
        for host in &hosts {
            sh(&host.machine.ns, &["ip", "neigh", "flush", "all"]);
            assert!(ping(&host.machine.ns, GATEWAY, 2, "0.1").all_answered(), "the gateway");
            let bridge_mac = sh(&host.ns, &["cat", "/sys/class/net/hb-lab/address"]).trim().to_owned();
            let neigh = sh(&host.machine.ns, &["ip", "neigh", "show", &GATEWAY.to_string()]);
            assert!(neigh.contains(&bridge_mac), "the gateway resolved to another host's bridge: {neigh}");
        }
        // The rules that keep it home counted something: the other host's
        // machine asked for the gateway too.
        let listed = sh(&hosts[0].ns, &["nft", "list", "chain", "bridge", "hearth", "forward"]);
        let rule = listed.lines().find(|l| l.contains("the gateway answers on each host")).expect("the rule");
        assert!(!rule.contains("packets 0 "), "{rule}");
    });
}

#[test]
fn a_host_reaches_another_hosts_machine_through_its_route() {
    support::run(|lab| {
        let hosts = two_hosts(lab);
        let [one, two] = &hosts;
        assert!(ping(&one.ns, two.machine.ip, 1, "0.1").none_answered(), "no route yet");
        connect(&hosts);
        sh(&two.ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let routes = sh(&one.ns, &["ip", "route", "show", "proto", overlay::ROUTE_PROTO]);
        assert_eq!(routes.trim(), format!("{} via {} dev u0", two.machine.ip, two.address));
        assert!(ping(&one.ns, two.machine.ip, 2, "0.1").all_answered(), "host one -> b");
        // Its own machine is still on its bridge.
        assert!(ping(&one.ns, one.machine.ip, 1, "0.1").all_answered(), "host one -> a");
        // A machine reaches no other host, though its host routes there.
        sh(&one.ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        assert!(ping(&one.machine.ns, two.address, 2, "0.1").none_answered(), "a reached host two");
        let listed = sh(&one.ns, &["nft", "list", "chain", "inet", "hearth", "forward"]);
        let rule =
            listed.lines().find(|l| l.contains("machines do not reach other hosts")).expect("the rule");
        assert!(!rule.contains("packets 0 "), "{rule}");

        // A host whose address is not on a link is said so, and the rest
        // is in place.
        let mut far = tunnel(two);
        far.routes.insert(Ipv4Addr::new(10, 94, 0, 12), Ipv4Addr::new(192, 0, 2, 7));
        let synced = overlay::sync(&one.ns, "h", one.address, &[far]);
        let error = synced.result().expect_err("an unreachable host");
        assert!(
            error.to_string().contains("cannot route to the machines of 192.0.2.7")
                && error.to_string().contains("not on a link of this host"),
            "{error}"
        );
        assert_eq!(synced.reached, BTreeSet::from([two.address]), "the host it does reach");
        assert!(ping(&one.ns, two.machine.ip, 1, "0.1").all_answered(), "host one -> b still");

        overlay::clear_routes(&one.ns).expect("clear");
        assert_eq!(sh(&one.ns, &["ip", "route", "show", "proto", overlay::ROUTE_PROTO]), "");
    });
}

#[test]
fn a_partition_between_hosts_holds_one_way_and_heals() {
    support::run(|lab| {
        let hosts = two_hosts(lab);
        connect(&hosts);
        let [one, two] = &hosts;
        let delivered = |from: &Host, to: &Host| {
            let before = echo_requests_received(&to.machine.ns);
            ping(&from.machine.ns, to.machine.ip, 2, "0.1");
            echo_requests_received(&to.machine.ns) - before == 2
        };
        assert!(delivered(one, two));
        // a -> b, one way: host one knows a by its tap and b by its MAC,
        // host two the other way round.
        let cut = |from: Vec<String>, from_remote: Vec<String>, to: Vec<String>, to_remote: Vec<String>| {
            Partition { id: "f1".into(), from, to, from_remote, to_remote, both_ways: false }
        };
        firewall::apply(
            &one.ns,
            &rules(two, vec![cut(vec!["ht-a".into()], vec![], vec![], vec![two.mac.clone()])]),
        )
        .expect("partition on one");
        firewall::apply(
            &two.ns,
            &rules(one, vec![cut(vec![], vec![one.mac.clone()], vec!["ht-b".into()], vec![])]),
        )
        .expect("partition on two");
        assert!(!delivered(one, two), "a -> b crossed the partition");
        assert!(delivered(two, one), "b -> a should arrive: the partition is one way");

        connect(&hosts);
        assert!(delivered(one, two), "a -> b after heal");
    });
}

#[test]
fn entries_follow_the_plan_and_a_tunnel_no_longer_planned_goes() {
    support::run(|lab| {
        let hosts = two_hosts(lab);
        connect(&hosts);
        let [one, two] = &hosts;
        // b moved to a third host at 10.93.0.3.
        let mut moved = tunnel(two);
        let third = Ipv4Addr::new(10, 93, 0, 3);
        moved.flood.insert(third);
        moved.machines.insert(two.mac.clone(), third);
        overlay::sync(&one.ns, "h", one.address, &[moved]).result().expect("sync");
        assert_eq!(
            entries(&one.ns),
            [
                format!("00:00:00:00:00:00 {}", two.address),
                format!("00:00:00:00:00:00 {third}"),
                format!("{} {third}", two.mac),
            ]
        );
        // A changed identifier makes the device again.
        let mut renumbered = tunnel(two);
        renumbered.vni += 1;
        overlay::sync(&one.ns, "h", one.address, &[renumbered]).result().expect("renumber");
        let details = sh(&one.ns, &["ip", "-d", "link", "show", "dev", "hx-lab"]);
        assert!(details.contains(&format!("vxlan id {} ", overlay::vni("lab") + 1)), "{details}");

        // A link of another kind under a like name is not the overlay's.
        sh(&one.ns, &["ip", "link", "add", "hx-mine", "type", "bridge"]);
        overlay::sync(&one.ns, "h", one.address, &[]).result().expect("no tunnels");
        assert_eq!(link::links_with_prefix(&one.ns, "hx-").unwrap(), ["hx-mine"]);
        overlay::clear(&one.ns, "h").expect("clear");
        assert_eq!(link::links_with_prefix(&one.ns, "hx-").unwrap(), ["hx-mine"]);
    });
}
