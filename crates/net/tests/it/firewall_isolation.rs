//! Isolation between networks and NAT to the outside, with real traffic in
//! throwaway namespaces (see `support`).

use crate::support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use crate::support::{Lab, Machine, in_netns, ping, sh};
use hearth_net::firewall::{self, Desired, NetworkRules};
use hearth_net::link::{self, Netns};

fn network(bridge: &str, subnet: &str, nat: bool) -> NetworkRules {
    NetworkRules { bridge: bridge.to_owned(), subnet: subnet.to_owned(), nat }
}

fn desired(networks: Vec<NetworkRules>) -> Desired {
    Desired { networks, ..Desired::default() }
}

/// A host with two networks, `hb-1` (10.81.1.0/24: machines a1, a2) and
/// `hb-2` (10.81.2.0/24: machine b), routing between them.
fn two_networks(lab: &mut Lab) -> (Netns, Machine, Machine, Machine) {
    let gw1 = Ipv4Addr::new(10, 81, 1, 1);
    let gw2 = Ipv4Addr::new(10, 81, 2, 1);
    let host = lab.host_with_bridge("hb-1", gw1);
    link::ensure_bridge(&host, "hb-2", gw2, 24).expect("second bridge");
    link::enable_ip_forwarding(&host).expect("forwarding");
    let a1 = lab.machine("a1", &host, "hb-1", "ht-a1", Ipv4Addr::new(10, 81, 1, 10), Some(gw1));
    let a2 = lab.machine("a2", &host, "hb-1", "ht-a2", Ipv4Addr::new(10, 81, 1, 11), Some(gw1));
    let b = lab.machine("b", &host, "hb-2", "ht-b", Ipv4Addr::new(10, 81, 2, 10), Some(gw2));
    (host, a1, a2, b)
}

#[test]
fn two_networks_reach_each_other_until_the_ruleset_isolates_them() {
    support::run(|lab| {
        let (host, a1, a2, b) = two_networks(lab);
        // Without hearth's rules the host routes between them: the rule is
        // what separates them, not the topology.
        assert!(ping(&a1.ns, b.ip, 2, "0.1").all_answered(), "routed before the ruleset");

        let both =
            desired(vec![network("hb-1", "10.81.1.0/24", false), network("hb-2", "10.81.2.0/24", true)]);
        firewall::apply(&host, &both).expect("apply");
        let cut = ping(&a1.ns, b.ip, 2, "0.1");
        assert!(cut.none_answered(), "a1 -> b after isolation: {cut:?}");
        assert!(ping(&b.ns, a1.ip, 2, "0.1").none_answered(), "b -> a1 after isolation");
        // Inside a network nothing changes, even though the host's bridge
        // netfilter shows switched traffic to the inet forward chain.
        assert!(ping(&a1.ns, a2.ip, 2, "0.1").all_answered(), "a1 -> a2 within hb-1");
        let drops = sh(&host, &["nft", "list", "chain", "inet", "hearth", "forward"]);
        assert!(!drops.contains("counter packets 0 bytes 0 drop comment \"isolate hb-1\""), "{drops}");

        // Removing a network from the desired state removes its rules.
        firewall::apply(&host, &desired(vec![network("hb-1", "10.81.1.0/24", false)])).expect("apply");
        assert!(ping(&a1.ns, b.ip, 2, "0.1").all_answered(), "routed again once hb-2 is not hearth's");
    });
}

#[test]
fn nat_lets_a_network_reach_the_outside_through_the_host() {
    support::run(|lab| {
        let gateway = Ipv4Addr::new(10, 82, 0, 1);
        let host = lab.host_with_bridge("hb-n", gateway);
        link::enable_ip_forwarding(&host).expect("forwarding");
        let machine = lab.machine("m", &host, "hb-n", "ht-m", Ipv4Addr::new(10, 82, 0, 10), Some(gateway));
        // "Outside" is one more namespace, behind the host's uplink (a
        // bridge too, for brevity). It has no route to 10.82.0.0/24, like the
        // internet: replies only find their way back if the host masquerades.
        link::ensure_bridge(&host, "up0", Ipv4Addr::new(10, 83, 0, 1), 24).expect("uplink");
        let outside = lab.machine("out", &host, "up0", "up0-out", Ipv4Addr::new(10, 83, 0, 2), None);

        assert!(ping(&machine.ns, outside.ip, 2, "0.1").none_answered(), "answered without NAT");
        firewall::apply(&host, &desired(vec![network("hb-n", "10.82.0.0/24", false)])).expect("apply");
        assert!(ping(&machine.ns, outside.ip, 2, "0.1").none_answered(), "answered with nat: false");

        firewall::apply(&host, &desired(vec![network("hb-n", "10.82.0.0/24", true)])).expect("apply");
        let out = ping(&machine.ns, outside.ip, 3, "0.1");
        assert!(out.all_answered(), "machine -> outside with NAT: {out:?}");
        let nat = sh(&host, &["nft", "list", "chain", "inet", "hearth", "postrouting"]);
        assert!(nat.contains("ip saddr 10.82.0.0/24 oifname != \"hb-n\" masquerade"), "{nat}");
    });
}

#[test]
fn applying_twice_is_a_no_op_and_clear_removes_only_hearths_tables() {
    support::run(|lab| {
        let host = lab.netns("host");
        sh(&host, &["nft", "add", "table", "inet", "someone-else"]);
        let state =
            desired(vec![network("hb-1", "10.84.1.0/24", true), network("hb-2", "10.84.2.0/24", false)]);

        firewall::apply(&host, &state).expect("first");
        let first = sh(&host, &["nft", "list", "ruleset"]);
        firewall::apply(&host, &state).expect("second");
        assert_eq!(sh(&host, &["nft", "list", "ruleset"]), first);
        assert!(first.contains("table inet someone-else"), "{first}");

        firewall::clear(&host, firewall::TABLE).expect("clear");
        firewall::clear(&host, firewall::TABLE).expect("clear again");
        let tables = sh(&host, &["nft", "list", "tables"]);
        assert_eq!(tables.trim(), "table inet someone-else");
    });
}

/// Whether a TCP connection from `ns` to `to` is set up within a second.
fn connects(ns: &Netns, to: SocketAddr) -> bool {
    in_netns(ns, || TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
}

#[test]
fn a_machine_reaches_the_gateways_dns_and_nothing_else_on_the_host() {
    support::run(|lab| {
        let gateway = Ipv4Addr::new(10, 86, 0, 1);
        let host = lab.host_with_bridge("hb-i", gateway);
        let machine = lab.machine("m", &host, "hb-i", "ht-m", Ipv4Addr::new(10, 86, 0, 10), Some(gateway));
        // One more address of the host's own, as an uplink's would be.
        let other = Ipv4Addr::new(10, 87, 0, 1);
        sh(&host, &["ip", "addr", "add", &format!("{other}/32"), "dev", "lo"]);
        // A host service on every address, and the gateway's DNS server.
        let (service, dns_tcp, dns_udp) = in_netns(&host, || {
            let service = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind a service");
            let dns_tcp = TcpListener::bind((gateway, 53)).expect("bind DNS on TCP");
            let dns_udp = UdpSocket::bind((gateway, 53)).expect("bind DNS on UDP");
            (service, dns_tcp, dns_udp)
        });
        let port = service.local_addr().expect("the service's address").port();
        assert!(
            connects(&machine.ns, (gateway, port).into()),
            "the service is reachable without the ruleset"
        );

        firewall::apply(&host, &desired(vec![network("hb-i", "10.86.0.0/24", true)])).expect("apply");
        assert!(
            !connects(&machine.ns, (gateway, port).into()),
            "a host service through the gateway's address"
        );
        assert!(!connects(&machine.ns, (other, port).into()), "a host service through another host address");
        assert!(connects(&machine.ns, (gateway, 53).into()), "DNS over TCP");
        let asked = in_netns(&machine.ns, || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
            socket.send_to(b"query", (gateway, 53)).expect("send")
        });
        dns_udp.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut buf = [0u8; 16];
        let (got, from) = dns_udp.recv_from(&mut buf).expect("the DNS server hears the machine");
        assert_eq!((got, from.ip()), (asked, machine.ip.into()));
        assert!(ping(&machine.ns, gateway, 2, "0.1").all_answered(), "the machine pings its gateway");
        // The host still opens connections to the machine (forwarded ports,
        // exec): the replies come back in.
        let in_machine =
            in_netns(&machine.ns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind"));
        let machine_port = in_machine.local_addr().expect("address").port();
        assert!(connects(&host, (machine.ip, machine_port).into()), "the host reaches the machine");
        let input = sh(&host, &["nft", "list", "chain", "inet", "hearth", "input"]);
        assert!(!input.contains("counter packets 0 bytes 0 drop"), "the drops are counted: {input}");
        drop((service, dns_tcp));
    });
}
