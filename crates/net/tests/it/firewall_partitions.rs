//! Partitions between machines on one bridge: one way, both ways, and heal.
//!
//! A one-way partition A -> C drops A's packets to C but delivers C's to A.
//! Ping then fails in both directions (A's replies to C are dropped too), so
//! delivery is judged by the receiver's count of echo requests
//! (`Icmp: InEchos`), not by ping's replies.

use crate::support;

use std::net::Ipv4Addr;

use crate::support::{Lab, Machine, echo_requests_received, ping, sh};
use hearth_net::firewall::{self, Desired, Partition};
use hearth_net::link::Netns;

/// A host with one bridge and machines a, b, c on it.
fn three_machines(lab: &mut Lab) -> (Netns, Machine, Machine, Machine) {
    let host = lab.host_with_bridge("hb-p", Ipv4Addr::new(10, 90, 0, 1));
    let a = lab.machine("a", &host, "hb-p", "ht-a", Ipv4Addr::new(10, 90, 0, 10), None);
    let b = lab.machine("b", &host, "hb-p", "ht-b", Ipv4Addr::new(10, 90, 0, 11), None);
    let c = lab.machine("c", &host, "hb-p", "ht-c", Ipv4Addr::new(10, 90, 0, 12), None);
    (host, a, b, c)
}

fn partition(id: &str, from: &Machine, to: &Machine, both_ways: bool) -> Desired {
    let partition = Partition {
        id: id.to_owned(),
        from: vec![from.tap.clone()],
        to: vec![to.tap.clone()],
        from_remote: vec![],
        to_remote: vec![],
        both_ways,
    };
    Desired { partitions: vec![partition], ..Desired::default() }
}

/// Whether two pings from `from` reach `to`, judged at `to`.
fn delivered(from: &Machine, to: &Machine) -> bool {
    let before = echo_requests_received(&to.ns);
    ping(&from.ns, to.ip, 2, "0.1");
    let arrived = echo_requests_received(&to.ns) - before;
    assert!(arrived == 0 || arrived == 2, "{arrived} of 2 pings arrived: a partition is all or nothing");
    arrived == 2
}

#[test]
fn a_one_way_partition_cuts_one_direction_and_heal_restores_it() {
    support::run(|lab| {
        let (host, a, b, c) = three_machines(lab);
        assert!(ping(&a.ns, c.ip, 2, "0.1").all_answered(), "a <-> c before the partition");

        firewall::apply(&host, &partition("f1", &a, &c, false)).expect("partition");
        // Forget what the ping above learnt: c must resolve a's address
        // through the partition, as a machine that boots into one would.
        for m in [&a, &c] {
            sh(&m.ns, &["ip", "neigh", "flush", "all"]);
        }
        assert!(!delivered(&a, &c), "a -> c crossed the partition");
        assert!(delivered(&c, &a), "c -> a should still arrive: the partition is one way");
        // ...but c gets no answer, since the answer travels a -> c.
        assert!(ping(&c.ns, a.ip, 2, "0.1").none_answered());
        // Machines outside the partition are unaffected.
        assert!(ping(&a.ns, b.ip, 2, "0.1").all_answered(), "a <-> b");
        assert!(ping(&b.ns, c.ip, 2, "0.1").all_answered(), "b <-> c");
        let rules = sh(&host, &["nft", "list", "chain", "bridge", "hearth", "forward"]);
        let rule =
            rules.lines().find(|l| l.contains("comment \"partition f1\"")).expect("the partition's rule");
        assert!(!rule.contains("packets 0 "), "its counter did not move: {rule}");
        assert!(!rules.contains("(reverse)"), "{rules}");

        // Heal: the desired state without the partition.
        firewall::apply(&host, &Desired::default()).expect("heal");
        assert!(ping(&a.ns, c.ip, 2, "0.1").all_answered(), "a <-> c after heal");
        assert!(ping(&c.ns, a.ip, 2, "0.1").all_answered(), "c <-> a after heal");
    });
}

#[test]
fn a_both_ways_partition_cuts_both_directions() {
    support::run(|lab| {
        let (host, a, b, c) = three_machines(lab);
        firewall::apply(&host, &partition("f2", &a, &c, true)).expect("partition");
        assert!(!delivered(&a, &c), "a -> c crossed the partition");
        assert!(!delivered(&c, &a), "c -> a crossed the partition");
        assert!(ping(&b.ns, a.ip, 2, "0.1").all_answered(), "b <-> a");
        assert!(ping(&b.ns, c.ip, 2, "0.1").all_answered(), "b <-> c");

        firewall::clear(&host, firewall::TABLE).expect("clear");
        assert!(ping(&a.ns, c.ip, 2, "0.1").all_answered(), "a <-> c after clear");
    });
}
