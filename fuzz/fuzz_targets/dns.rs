//! The DNS server's answer to a packet from a machine
//! (`hearth_net::dns`), from a zone with a few machines and services, with
//! and without upstreams (never asked: relayed names are answered SERVFAIL).
//!
//! Input: one byte choosing the client and whether there are upstreams,
//! then the packet.
//! Checks: an answer parses back as a DNS response with the query's id and
//! fits a TCP frame; a packet that does not parse gets no answer.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use hearth_net::dns::{ServiceInstance, Zone, fuzzing};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

static ZONE: LazyLock<Zone> = LazyLock::new(|| {
    let zone = Zone::new("hearth");
    zone.set(vec![
        ("web".into(), "default".into(), Ipv4Addr::new(10, 0, 0, 2)),
        ("db".into(), "default".into(), Ipv4Addr::new(10, 0, 0, 3)),
        ("Node-1".into(), "Lab".into(), Ipv4Addr::new(10, 1, 0, 2)),
    ]);
    let instance = |id: &str, address: &str, port| ServiceInstance {
        id: id.into(),
        address: address.parse().expect("an address"),
        port,
    };
    zone.set_services(vec![
        ("api".into(), vec![instance("api-1", "10.0.0.2", 80), instance("API-2", "fd00::2", 8080)]),
        ("idle".into(), Vec::new()),
    ]);
    zone
});

const CLIENTS: [SocketAddr; 4] = [
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), 5353),
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), 40000),
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 168, 7, 7)), 53),
    SocketAddr::new(std::net::IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0002)), 53),
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, packet)) = data.split_first() else { return };
    let client = CLIENTS[usize::from(choice & 3)];
    let relay = choice & 4 != 0;
    let Some(answer) = fuzzing::answer(&ZONE, packet, client, relay) else { return };

    let request = Message::from_vec(packet).expect("only a packet that parses is answered");
    let response = Message::from_vec(&answer)
        .unwrap_or_else(|e| panic!("the answer does not parse ({e}): {answer:02x?}"));
    assert_eq!(response.metadata.id, request.metadata.id, "the answer has another id");
    assert_eq!(response.metadata.message_type, MessageType::Response);
    assert!(answer.len() <= usize::from(u16::MAX), "the answer does not fit a TCP frame");
});
