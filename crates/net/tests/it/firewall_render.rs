//! `firewall::render`: the script is a readable function of the desired
//! state, and `apply` refuses what it could not quote safely.

use crate::support;

use hearth_net::firewall::{self, Desired, Error, NetworkRules, Overlay, Partition};

fn network(bridge: &str, subnet: &str, nat: bool) -> NetworkRules {
    NetworkRules { bridge: bridge.to_owned(), subnet: subnet.to_owned(), nat }
}

fn partition(id: &str, from: &[&str], to: &[&str], both_ways: bool) -> Partition {
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
    Partition {
        id: id.to_owned(),
        from: names(from),
        to: names(to),
        from_remote: vec![],
        to_remote: vec![],
        both_ways,
    }
}

fn example() -> Desired {
    Desired {
        table: "hearth".to_owned(),
        networks: vec![
            network("hb-default", "10.200.0.0/24", true),
            // Host bits are cleared in the rule.
            network("hb-lab", "10.201.0.9/16", false),
            network("hb-other", "10.202.0.0/24", true),
        ],
        partitions: vec![
            partition("f1a2b3", &["ht-a"], &["ht-c", "ht-d"], false),
            partition("f4c5d6", &["ht-b"], &["ht-e"], true),
            // A partition with nobody on one side has nothing to drop.
            partition("f7e8f9", &[], &["ht-a"], true),
        ],
        losses: vec![],
        overlays: vec![],
        peers: vec![],
    }
}

#[test]
fn the_script_for_networks_and_partitions() {
    let expect = r#"table inet hearth
flush table inet hearth
table inet hearth {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state invalid counter comment "keeps connection tracking's hooks"
		iifname "hb-default" oifname { "hb-lab", "hb-other" } counter drop comment "isolate hb-default"
		iifname "hb-lab" oifname { "hb-default", "hb-other" } counter drop comment "isolate hb-lab"
		iifname "hb-other" oifname { "hb-default", "hb-lab" } counter drop comment "isolate hb-other"
		iifname "hb-default" oifname != "hb-default" accept comment "nat hb-default: out"
		oifname "hb-default" ct state established,related accept comment "nat hb-default: replies"
		iifname "hb-other" oifname != "hb-other" accept comment "nat hb-other: out"
		oifname "hb-other" ct state established,related accept comment "nat hb-other: replies"
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname { "hb-default", "hb-lab", "hb-other" } ct state established,related accept comment "guests: replies to the host"
		iifname { "hb-default", "hb-lab", "hb-other" } icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept comment "guests: address resolution"
		iifname "hb-default" ip daddr 10.200.0.1 meta l4proto { tcp, udp } th dport 53 accept comment "guests on hb-default: DNS"
		iifname "hb-default" ip daddr 10.200.0.1 icmp type echo-request accept comment "guests on hb-default: ping the gateway"
		iifname "hb-lab" ip daddr 10.201.0.1 meta l4proto { tcp, udp } th dport 53 accept comment "guests on hb-lab: DNS"
		iifname "hb-lab" ip daddr 10.201.0.1 icmp type echo-request accept comment "guests on hb-lab: ping the gateway"
		iifname "hb-other" ip daddr 10.202.0.1 meta l4proto { tcp, udp } th dport 53 accept comment "guests on hb-other: DNS"
		iifname "hb-other" ip daddr 10.202.0.1 icmp type echo-request accept comment "guests on hb-other: ping the gateway"
		iifname { "hb-default", "hb-lab", "hb-other" } counter drop comment "guests reach nothing else on the host"
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.200.0.0/24 oifname != "hb-default" masquerade comment "nat hb-default"
		ip saddr 10.202.0.0/24 oifname != "hb-other" masquerade comment "nat hb-other"
	}
}
table bridge hearth
flush table bridge hearth
table bridge hearth {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ether type arp accept comment "address resolution crosses partitions"
		icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept comment "address resolution crosses partitions"
		iifname "ht-a" oifname { "ht-c", "ht-d" } counter drop comment "partition f1a2b3"
		iifname "ht-b" oifname "ht-e" counter drop comment "partition f4c5d6"
		iifname "ht-e" oifname "ht-b" counter drop comment "partition f4c5d6 (reverse)"
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
"#;
    let got = firewall::render(&example());
    assert_eq!(got, expect, "got:\n{got}");
}

#[test]
fn the_script_for_nothing_still_refills_both_tables() {
    let got = firewall::render(&Desired::default());
    assert!(got.starts_with("table inet hearth\nflush table inet hearth\ntable inet hearth {\n"), "{got}");
    assert!(got.contains("table bridge hearth\nflush table bridge hearth\ntable bridge hearth {\n"), "{got}");
    // The same chains as with rules: a chain that went away would take its
    // hook, and with it every packet the delay line holds.
    for chain in ["chain forward {", "chain input {", "chain postrouting {", "chain output {"] {
        assert!(got.contains(chain), "{chain} missing: {got}");
    }
    assert!(!got.contains("drop") && !got.contains("masquerade"), "{got}");
    // Connection tracking stays on with no NAT network left: its hooks
    // going away would drop what the delay line holds.
    assert!(got.contains("ct state invalid counter"), "{got}");
}

#[test]
fn a_daemon_can_name_its_tables() {
    let desired = Desired { table: "hearth-t1".to_owned(), ..example() };
    let got = firewall::render(&desired);
    assert!(got.starts_with("table inet hearth-t1\nflush table inet hearth-t1\n"), "{got}");
    assert!(got.contains("\ntable bridge hearth-t1 {\n"), "{got}");
    assert!(!got.contains("hearth {"), "{got}");
}

#[test]
fn nft_accepts_the_script_and_lists_the_comments() {
    support::run(|lab| {
        let host = lab.netns("host");
        firewall::apply(&host, &example()).expect("apply");
        let listed = support::sh(&host, &["nft", "list", "ruleset"]);
        for comment in ["isolate hb-lab", "nat hb-other", "partition f1a2b3", "partition f4c5d6 (reverse)"] {
            assert!(listed.contains(&format!("comment \"{comment}\"")), "{comment} missing:\n{listed}");
        }
    });
}

#[test]
fn apply_refuses_what_it_cannot_quote() {
    support::run(|lab| {
        // A namespace of its own, in case validation let something through.
        let host = lab.netns("host");
        let refused = |desired: Desired, what: &str| {
            let error = firewall::apply(&host, &desired).expect_err(what);
            assert!(matches!(error, Error::Invalid { .. } | Error::InvalidName { .. }), "{what}: {error:?}");
            assert_eq!(error.code(), "invalid_field");
            error.to_string()
        };
        let with_network = |n| Desired { networks: vec![n], ..Desired::default() };
        let with_partition = |p| Desired { partitions: vec![p], ..Desired::default() };

        refused(with_network(network("hb\"; flush ruleset", "10.0.0.0/24", true)), "quote in a bridge");
        refused(with_network(network("a-bridge-name-too-long", "10.0.0.0/24", true)), "long bridge");
        let message = refused(with_network(network("hb-x", "10.0.0.0", true)), "no prefix");
        assert!(message.contains("not an IPv4 subnet"), "{message}");
        refused(with_network(network("hb-x", "10.0.0.0/33", true)), "prefix too long");
        refused(with_network(network("hb-x", "fd00::/64", true)), "IPv6");
        refused(
            Desired { networks: vec![network("hb-x", "10.0.0.0/24", true); 2], ..Desired::default() },
            "the same bridge twice",
        );
        refused(with_partition(partition("p\" drop", &["ht-a"], &["ht-b"], false)), "quote in an id");
        refused(with_partition(partition("", &["ht-a"], &["ht-b"], false)), "empty id");
        refused(with_partition(partition("p1", &["ht a"], &["ht-b"], false)), "space in a tap");
        let mut remote = partition("p1", &["ht-a"], &[], false);
        remote.to_remote = vec!["02:00:00:00:00:01 } drop".to_owned()];
        let message = refused(with_partition(remote), "a MAC with more than a MAC");
        assert!(message.contains("six hex pairs"), "{message}");
        refused(
            Desired {
                overlays: vec![Overlay { device: "hx-\"lab".into(), gateway: [10, 0, 0, 1].into() }],
                ..Desired::default()
            },
            "quote in a tunnel",
        );
        refused(Desired { table: "1table".to_owned(), ..Desired::default() }, "table starting with a digit");
        refused(Desired { table: "hearth; flush ruleset".to_owned(), ..Desired::default() }, "table");

        assert_eq!(support::sh(&host, &["nft", "list", "ruleset"]), "", "something was applied");
    });
}

/// A network spanning hosts: this host's machine `ht-a`, another host's
/// machines by MAC.
fn spanning() -> Desired {
    let mut across = partition("f5", &["ht-a", "ht-d"], &["ht-c"], true);
    across.to_remote = vec!["02:00:00:00:00:0b".into()];
    across.from_remote = vec!["02:00:00:00:00:0d".into(), "02:00:00:00:00:0e".into()];
    Desired {
        networks: vec![network("hb-lab", "10.250.0.0/24", false), network("hb-db", "10.251.0.0/24", true)],
        partitions: vec![across],
        overlays: vec![Overlay { device: "hx-lab".into(), gateway: [10, 250, 0, 1].into() }],
        peers: vec![[10, 77, 0, 12].into(), [10, 77, 0, 13].into()],
        ..Desired::default()
    }
}

#[test]
fn a_network_spanning_hosts_keeps_its_gateway_home_and_partitions_by_mac() {
    let got = firewall::render(&spanning());
    // Routed to another host, another network's machines are told by
    // their subnet.
    assert!(got.contains("\t\tiifname \"hb-lab\" ip daddr 10.251.0.0/24 counter drop comment \"isolate hb-lab across hosts\"\n"), "{got}");
    assert!(got.contains("\t\tiifname \"hb-db\" ip daddr 10.250.0.0/24 counter drop comment \"isolate hb-db across hosts\"\n"), "{got}");
    assert!(!firewall::render(&example()).contains("across hosts"), "only networks spanning hosts need it");
    // Machines answer other hosts but open nothing to them; from outside,
    // only other hosts reach machines, and only they send tunnels.
    for rule in [
        "\t\tiifname { \"hb-lab\", \"hb-db\" } ip daddr { 10.77.0.12, 10.77.0.13 } ct direction original counter drop comment \"machines do not reach other hosts\"\n",
        "\t\toifname { \"hb-lab\", \"hb-db\" } iifname != { \"hb-lab\", \"hb-db\" } ct state new ip saddr != { 10.77.0.12, 10.77.0.13 } counter drop comment \"only other hosts reach machines from outside\"\n",
        "\t\tudp dport 4789 ip saddr != { 10.77.0.12, 10.77.0.13 } counter drop comment \"tunnels only from other hosts\"\n",
    ] {
        assert!(got.contains(rule), "{rule:?} missing:\n{got}");
    }
    assert!(!firewall::render(&example()).contains("other hosts"), "alone, none of it");
    let bridge = &got[got.find("table bridge hearth {").expect("the bridge table")..];
    let expect = r#"table bridge hearth {
	chain forward {
		type filter hook forward priority filter; policy accept;
		oifname "hx-lab" arp daddr ip 10.250.0.1 counter drop comment "the gateway answers on each host"
		ether type arp accept comment "address resolution crosses partitions"
		icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept comment "address resolution crosses partitions"
		iifname { "ht-a", "ht-d" } oifname "ht-c" counter drop comment "partition f5"
		iifname { "ht-a", "ht-d" } ether daddr 02:00:00:00:00:0b counter drop comment "partition f5"
		ether saddr { 02:00:00:00:00:0d, 02:00:00:00:00:0e } oifname "ht-c" counter drop comment "partition f5"
		iifname "ht-c" oifname { "ht-a", "ht-d" } counter drop comment "partition f5 (reverse)"
		iifname "ht-c" ether daddr { 02:00:00:00:00:0d, 02:00:00:00:00:0e } counter drop comment "partition f5 (reverse)"
		ether saddr 02:00:00:00:00:0b oifname { "ht-a", "ht-d" } counter drop comment "partition f5 (reverse)"
	}
	chain output {
		type filter hook output priority filter; policy accept;
		oifname "hx-lab" counter drop comment "the host's own frames stay on its host"
	}
}
"#;
    assert_eq!(bridge, expect);
}

#[test]
fn nft_accepts_the_rules_of_a_network_spanning_hosts() {
    support::run(|lab| {
        let host = lab.netns("host");
        firewall::apply(&host, &spanning()).expect("apply");
        let listed = support::sh(&host, &["nft", "list", "ruleset"]);
        for comment in [
            "the gateway answers on each host",
            "the host's own frames stay on its host",
            "partition f5 (reverse)",
        ] {
            assert!(listed.contains(&format!("comment \"{comment}\"")), "{comment} missing:\n{listed}");
        }
    });
}

#[test]
fn a_loss_of_all_drops_every_frame_and_nft_accepts_every_share() {
    let loss = |tap: &str, percent: f32| firewall::Loss { tap: tap.to_owned(), percent };
    let desired = Desired {
        losses: vec![loss("ht-a", 100.0), loss("ht-b", 50.0), loss("ht-c", 0.01), loss("ht-d", 0.0)],
        ..Desired::default()
    };
    let got = firewall::render(&desired);
    for rule in [
        "\t\toifname \"ht-a\" counter drop comment \"loss 100%\"\n",
        "\t\toifname \"ht-b\" numgen random mod 10000 < 5000 counter drop comment \"loss 50%\"\n",
        "\t\toifname \"ht-c\" numgen random mod 10000 < 1 counter drop comment \"loss 0.01%\"\n",
    ] {
        assert_eq!(got.matches(rule).count(), 2, "{rule:?} in the forward and output chains:\n{got}");
    }
    assert!(!got.contains("ht-d"), "no loss, no rule:\n{got}");
    support::run(|lab| {
        let host = lab.netns("host");
        firewall::apply(&host, &desired).expect("nft takes every share, 100% included");
    });
}
