//! Bridges and taps in throwaway network namespaces (see `support`).

use crate::support;

use std::net::Ipv4Addr;

use crate::support::{Lab, ping, sh};
use hearth_net::link::{self, Error, Netns};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 70, 0, 1);

fn addresses(ns: &Netns, dev: &str) -> String {
    sh(ns, &["ip", "-4", "-o", "addr", "show", "dev", dev])
}

fn link_line(ns: &Netns, dev: &str) -> String {
    sh(ns, &["ip", "-o", "-d", "link", "show", "dev", dev])
}

#[test]
fn two_machines_on_one_bridge_ping_each_other() {
    support::run(|lab: &mut Lab| {
        let host = lab.host_with_bridge("hb-one", GATEWAY);
        let a = lab.machine("a", &host, "hb-one", "ht-a", Ipv4Addr::new(10, 70, 0, 10), None);
        let b = lab.machine("b", &host, "hb-one", "ht-b", Ipv4Addr::new(10, 70, 0, 11), None);

        let there = ping(&a.ns, b.ip, 3, "0.1");
        assert!(there.all_answered(), "a -> b: {there:?}");
        let back = ping(&b.ns, a.ip, 3, "0.1");
        assert!(back.all_answered(), "b -> a: {back:?}");
        // The bridge's own address answers too: it is the machines' gateway.
        assert!(ping(&a.ns, GATEWAY, 1, "0.1").all_answered());
    });
}

#[test]
fn ensure_bridge_twice_changes_nothing_and_a_new_subnet_replaces_the_old() {
    support::run(|lab| {
        let host = lab.netns("host");
        link::ensure_bridge(&host, "hb-x", GATEWAY, 24).expect("first");
        // Not `-d`: its timers tick between the two looks.
        let look = || (sh(&host, &["ip", "-o", "link", "show", "dev", "hb-x"]), addresses(&host, "hb-x"));
        let before = look();
        link::ensure_bridge(&host, "hb-x", GATEWAY, 24).expect("second");
        assert_eq!(look(), before);
        assert!(before.0.contains(",UP"), "not up: {}", before.0);
        assert!(link_line(&host, "hb-x").contains(" bridge "), "not a bridge");

        link::ensure_bridge(&host, "hb-x", Ipv4Addr::new(10, 71, 0, 1), 16).expect("new subnet");
        let now = addresses(&host, "hb-x");
        assert!(now.contains("10.71.0.1/16"), "{now}");
        assert!(!now.contains("10.70.0.1"), "the old address stayed: {now}");
        assert_eq!(link::links_with_prefix(&host, "hb-").expect("list"), ["hb-x"]);
    });
}

#[test]
fn ensure_tap_twice_gives_one_persistent_tap_on_the_bridge() {
    support::run(|lab| {
        let host = lab.host_with_bridge("hb-t", GATEWAY);
        link::ensure_tap(&host, "ht-vm", "hb-t").expect("first");
        link::ensure_tap(&host, "ht-vm", "hb-t").expect("second");
        let line = link_line(&host, "ht-vm");
        assert!(line.contains("master hb-t"), "{line}");
        assert!(line.contains("tun type tap") && line.contains("persist on"), "{line}");
        assert!(line.contains(",UP"), "not up: {line}");
        assert_eq!(link::links_with_prefix(&host, "ht-").expect("list"), ["ht-vm"]);

        // Moving it to another bridge is also just ensuring it.
        link::ensure_bridge(&host, "hb-u", Ipv4Addr::new(10, 72, 0, 1), 24).expect("second bridge");
        link::ensure_tap(&host, "ht-vm", "hb-u").expect("move");
        assert!(link_line(&host, "ht-vm").contains("master hb-u"));
    });
}

#[test]
fn a_link_of_another_kind_is_not_taken_over() {
    support::run(|lab| {
        let host = lab.host_with_bridge("hb-k", GATEWAY);
        sh(&host, &["ip", "link", "add", "ht-veth", "type", "veth", "peer", "name", "other"]);
        let error = link::ensure_tap(&host, "ht-veth", "hb-k").expect_err("a veth is not a tap");
        assert!(matches!(&error, Error::WrongKind { found, .. } if found == "veth"), "{error:?}");
        let error = link::ensure_bridge(&host, "ht-veth", GATEWAY, 24).expect_err("a veth is not a bridge");
        assert!(error.to_string().contains("exists but is a veth link, not a bridge"), "{error}");
    });
}

#[test]
fn delete_link_removes_the_link_and_absent_is_fine() {
    support::run(|lab| {
        let host = lab.host_with_bridge("hb-d", GATEWAY);
        link::ensure_tap(&host, "ht-d1", "hb-d").expect("tap");
        link::ensure_tap(&host, "ht-d2", "hb-d").expect("tap");
        assert_eq!(link::links_with_prefix(&host, "ht-d").expect("list"), ["ht-d1", "ht-d2"]);

        link::delete_link(&host, "ht-d1").expect("delete");
        assert_eq!(link::links_with_prefix(&host, "ht-d").expect("list"), ["ht-d2"]);
        link::delete_link(&host, "ht-d1").expect("deleting it again");
        link::delete_link(&host, "ht-never").expect("deleting what never was");
        link::delete_link(&host, "hb-d").expect("delete the bridge");
        assert_eq!(link::links_with_prefix(&host, "hb-").expect("list"), Vec::<String>::new());
    });
}

#[test]
fn enable_ip_forwarding_turns_it_on_in_that_namespace_only() {
    support::run(|lab| {
        let host = lab.netns("host");
        let other = lab.netns("other");
        let forwarding = |ns| sh(ns, &["cat", "/proc/sys/net/ipv4/ip_forward"]).trim().to_owned();
        // New namespaces may inherit the host's setting: start both from off.
        for ns in [&host, &other] {
            sh(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        }
        assert_eq!(forwarding(&host), "0");
        link::enable_ip_forwarding(&host).expect("enable");
        link::enable_ip_forwarding(&host).expect("enable again");
        assert_eq!(forwarding(&host), "1");
        assert_eq!(forwarding(&other), "0");
    });
}

#[test]
fn errors_name_the_command_and_say_what_to_do() {
    let nowhere = Netns::Named("hearth-test-does-not-exist".to_owned());
    let error = link::ensure_bridge(&nowhere, "hb-e", GATEWAY, 24).expect_err("no such namespace");
    let message = error.to_string();
    assert!(
        message.contains("`ip netns exec hearth-test-does-not-exist ip -d -j link show dev hb-e`"),
        "{message}"
    );
    assert!(message.contains("Cannot open network namespace"), "stderr missing: {message}");
    assert!(error.hint().is_some_and(|h| h.contains("does not exist")), "{error:?}");
    assert_eq!(error.code(), "command_failed");

    let error = link::ensure_tap(&nowhere, "a-name-that-is-too-long", "hb-e").expect_err("too long");
    assert!(matches!(error, Error::InvalidName { .. }), "{error:?}");
    assert!(matches!(link::delete_link(&nowhere, "bad name"), Err(Error::InvalidName { .. })));
    assert!(matches!(link::ensure_bridge(&nowhere, "hb-e", GATEWAY, 33), Err(Error::Invalid { .. })));
}

#[test]
fn a_bridge_without_its_namespace_is_an_error_not_a_panic() {
    support::run(|lab| {
        let host = lab.netns("host");
        let error = link::ensure_tap(&host, "ht-orphan", "hb-missing").expect_err("no bridge");
        assert!(error.to_string().contains("hb-missing"), "{error}");
        // The tap was created before the bridge was found missing; it stays,
        // and ensuring again once the bridge exists finishes the job.
        link::ensure_bridge(&host, "hb-missing", GATEWAY, 24).expect("bridge");
        link::ensure_tap(&host, "ht-orphan", "hb-missing").expect("tap");
    });
}
