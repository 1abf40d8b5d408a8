//! The DNS server, driven over real UDP and TCP sockets on loopback, with
//! `hickory-proto` as the client. Loopback aliases (127.0.0.x) stand in for
//! machines, so that a query can come from "inside" a network.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hearth_net::dns::{self, Zone};
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A client outside every network.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// The machine `me` in network `lab`.
const IN_LAB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The machine `other` in network `prod`.
const IN_PROD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

const WAIT: Duration = Duration::from_secs(3);

fn records() -> Vec<(String, String, Ipv4Addr)> {
    [
        ("me", "lab", IN_LAB),
        ("web", "lab", Ipv4Addr::new(127, 0, 0, 10)),
        ("DB", "Lab", Ipv4Addr::new(127, 0, 0, 11)),
        ("other", "prod", IN_PROD),
        ("web", "prod", Ipv4Addr::new(127, 0, 0, 20)),
    ]
    .into_iter()
    .map(|(machine, network, ip)| (machine.to_owned(), network.to_owned(), ip))
    .collect()
}

/// A server on 127.0.0.1 and a free port, stopped when dropped.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    async fn start(zone: Zone, upstream: Option<Vec<SocketAddr>>) -> Running {
        let server = dns::bind((OUTSIDE, 0).into()).await.expect("bind the DNS server");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(zone, upstream, async move {
            let _ = stopped.await;
        }));
        Running { addr, stop: Some(stop), task: Some(task) }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("not stopped yet").send(());
        let task = self.task.take().expect("not stopped yet");
        tokio::time::timeout(WAIT, task).await.expect("the server stops promptly").expect("the server task");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

fn query(name: &str, record_type: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).expect("a valid name"), record_type));
    message
}

/// Sends `packet` from `from` and returns the raw answer.
async fn exchange(server: SocketAddr, from: Ipv4Addr, transport: Transport, packet: &[u8]) -> Vec<u8> {
    match transport {
        Transport::Udp => {
            let socket = UdpSocket::bind((from, 0)).await.expect("bind the client");
            socket.send_to(packet, server).await.expect("send the query");
            let mut buf = vec![0u8; 65535];
            let (len, peer) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            assert_eq!(peer, server, "the answer comes from the server's address");
            buf.truncate(len);
            buf
        }
        Transport::Tcp => {
            let mut stream = connect_from(from, server).await;
            write_frame(&mut stream, packet).await;
            read_frame(&mut stream).await
        }
    }
}

async fn connect_from(from: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).expect("bind the client");
    socket.connect(server).await.expect("connect to the server")
}

async fn write_frame(stream: &mut TcpStream, packet: &[u8]) {
    let len = u16::try_from(packet.len()).unwrap();
    stream.write_all(&len.to_be_bytes()).await.unwrap();
    stream.write_all(packet).await.unwrap();
}

async fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let len = tokio::time::timeout(WAIT, stream.read_u16()).await.expect("an answer in time").unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// Asks `name`, checks that the answer matches the question, and renders it
/// as one line: the response code, each answer (`A 1.2.3.4`, or its type),
/// and `+SOA` if the authority section has the zone's SOA.
async fn ask(
    server: SocketAddr,
    from: Ipv4Addr,
    transport: Transport,
    name: &str,
    record_type: RecordType,
) -> String {
    let request = query(name, record_type);
    let answer = exchange(server, from, transport, &request.to_vec().unwrap()).await;
    let response = Message::from_vec(&answer).expect("a well-formed answer");
    assert_eq!(response.metadata.id, request.metadata.id);
    assert_eq!(response.queries, request.queries, "the question is echoed");
    render(&response)
}

fn render(response: &Message) -> String {
    let mut line = format!("{:?}", response.metadata.response_code);
    for record in &response.answers {
        match &record.data {
            RData::A(a) => {
                assert_eq!(record.ttl, dns::TTL);
                line += &format!(" A {a}");
            }
            other => line += &format!(" {}", other.record_type()),
        }
    }
    if response.authorities.iter().any(|record| record.record_type() == RecordType::SOA) {
        line += " +SOA";
    }
    line
}

/// Each case: who asks, what, and the rendered answer.
async fn check(server: SocketAddr, transport: Transport, cases: &[(Ipv4Addr, &str, RecordType, &str)]) {
    let mut failures = Vec::new();
    for &(from, name, record_type, expected) in cases {
        let actual = ask(server, from, transport, name, record_type).await;
        if actual != expected {
            failures.push(format!("{from} asks {name} {record_type}: expected {expected:?}, got {actual:?}"));
        }
    }
    assert!(failures.is_empty(), "over {transport:?}:\n{}", failures.join("\n"));
}

const CASES: &[(Ipv4Addr, &str, RecordType, &str)] = &[
    // Full names, from anywhere, in any case.
    (OUTSIDE, "web.lab.hearth.", RecordType::A, "NoError A 127.0.0.10"),
    (OUTSIDE, "web.prod.hearth.", RecordType::A, "NoError A 127.0.0.20"),
    (IN_PROD, "WeB.LaB.HeArTh.", RecordType::A, "NoError A 127.0.0.10"),
    (OUTSIDE, "db.lab.hearth.", RecordType::A, "NoError A 127.0.0.11"),
    (OUTSIDE, "web.lab.hearth.", RecordType::ANY, "NoError A 127.0.0.10"),
    // A machine has no IPv6 address: the name exists, without records (NODATA).
    (OUTSIDE, "web.lab.hearth.", RecordType::AAAA, "NoError +SOA"),
    (IN_LAB, "web.lab.hearth.", RecordType::MX, "NoError +SOA"),
    // Short names resolve in the asker's network.
    (IN_LAB, "web.", RecordType::A, "NoError A 127.0.0.10"),
    (IN_LAB, "WEB.", RecordType::A, "NoError A 127.0.0.10"),
    (IN_PROD, "web.", RecordType::A, "NoError A 127.0.0.20"),
    (IN_LAB, "me.", RecordType::A, "NoError A 127.0.0.2"),
    (IN_LAB, "web.", RecordType::AAAA, "NoError"),
    (IN_PROD, "db.", RecordType::A, "NXDomain"),
    (IN_LAB, "nope.", RecordType::A, "NXDomain"),
    (OUTSIDE, "web.", RecordType::A, "NXDomain"),
    // Unknown names in the domain: NXDOMAIN, with the SOA for negative caching.
    (OUTSIDE, "nope.lab.hearth.", RecordType::A, "NXDomain +SOA"),
    (OUTSIDE, "web.nonet.hearth.", RecordType::A, "NXDomain +SOA"),
    (OUTSIDE, "x.web.lab.hearth.", RecordType::A, "NXDomain +SOA"),
    (OUTSIDE, "nonet.hearth.", RecordType::A, "NXDomain +SOA"),
    // Names that exist only because names exist below them.
    (OUTSIDE, "lab.hearth.", RecordType::A, "NoError +SOA"),
    (OUTSIDE, "hearth.", RecordType::A, "NoError +SOA"),
    (OUTSIDE, "hearth.", RecordType::SOA, "NoError SOA"),
    // Someone else's names, with no upstream.
    (OUTSIDE, "example.com.", RecordType::A, "Refused"),
    (IN_LAB, "web.lab.hearth.example.com.", RecordType::A, "Refused"),
];

#[tokio::test]
async fn dns_answers_over_udp() {
    let zone = Zone::new("hearth");
    zone.set(records());
    let server = Running::start(zone, None).await;
    check(server.addr, Transport::Udp, CASES).await;
    server.stop().await;
}

#[tokio::test]
async fn dns_answers_over_tcp() {
    let zone = Zone::new("hearth");
    zone.set(records());
    let server = Running::start(zone, None).await;
    check(server.addr, Transport::Tcp, CASES).await;
    server.stop().await;
}

#[tokio::test]
async fn dns_answers_several_queries_on_one_tcp_connection() {
    let zone = Zone::new("hearth");
    zone.set(records());
    let server = Running::start(zone, None).await;
    let mut stream = connect_from(IN_LAB, server.addr).await;
    for (name, expected) in [("web.", "NoError A 127.0.0.10"), ("db.lab.hearth.", "NoError A 127.0.0.11")] {
        let request = query(name, RecordType::A);
        write_frame(&mut stream, &request.to_vec().unwrap()).await;
        let response = Message::from_vec(&read_frame(&mut stream).await).unwrap();
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(render(&response), expected, "{name}");
    }
    server.stop().await;
}

#[tokio::test]
async fn dns_zone_updates_take_effect() {
    let zone = Zone::new("hearth");
    let server = Running::start(zone.clone(), None).await;
    let ask_web = || ask(server.addr, IN_LAB, Transport::Udp, "web.", RecordType::A);
    assert_eq!(
        ask(server.addr, OUTSIDE, Transport::Udp, "web.lab.hearth.", RecordType::A).await,
        "NXDomain +SOA"
    );
    assert_eq!(ask_web().await, "NXDomain", "the asker is not in the zone yet");

    zone.set(records());
    assert_eq!(ask_web().await, "NoError A 127.0.0.10");

    // web moves; me leaves, so short names from its address stop resolving.
    zone.set(vec![("web".into(), "lab".into(), Ipv4Addr::new(127, 0, 0, 99))]);
    assert_eq!(
        ask(server.addr, OUTSIDE, Transport::Tcp, "web.lab.hearth.", RecordType::A).await,
        "NoError A 127.0.0.99"
    );
    assert_eq!(ask_web().await, "NXDomain");
    assert_eq!(
        ask(server.addr, OUTSIDE, Transport::Udp, "web.prod.hearth.", RecordType::A).await,
        "NXDomain +SOA"
    );

    zone.set(Vec::new());
    assert_eq!(
        ask(server.addr, OUTSIDE, Transport::Udp, "web.lab.hearth.", RecordType::A).await,
        "NXDomain +SOA"
    );
    server.stop().await;
}

#[tokio::test]
async fn dns_ignores_malformed_packets() {
    let zone = Zone::new("hearth");
    zone.set(records());
    let server = Running::start(zone, None).await;
    let garbage: [&[u8]; 4] =
        [b"", b"\x12\x34", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07trunc", &[0xff; 300]];

    // UDP: no answer to the garbage; the next answer on the socket is the good query's.
    let socket = UdpSocket::bind((OUTSIDE, 0)).await.unwrap();
    for packet in garbage {
        socket.send_to(packet, server.addr).await.unwrap();
    }
    let request = query("web.lab.hearth.", RecordType::A);
    socket.send_to(&request.to_vec().unwrap(), server.addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf)).await.expect("an answer").unwrap();
    let response = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(response.metadata.id, request.metadata.id, "the first answer is to the good query");
    assert_eq!(render(&response), "NoError A 127.0.0.10");

    // A response sent to the server is not answered either (no loops between servers).
    let mut reflected = response.clone();
    reflected.metadata.id = request.metadata.id.wrapping_add(1);
    socket.send_to(&reflected.to_vec().unwrap(), server.addr).await.unwrap();
    socket.send_to(&request.to_vec().unwrap(), server.addr).await.unwrap();
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf)).await.expect("an answer").unwrap();
    assert_eq!(Message::from_vec(&buf[..len]).unwrap().metadata.id, request.metadata.id);

    // TCP: garbage frames are skipped, the connection stays usable.
    let mut stream = connect_from(OUTSIDE, server.addr).await;
    for packet in garbage.into_iter().filter(|packet| !packet.is_empty()) {
        write_frame(&mut stream, packet).await;
    }
    write_frame(&mut stream, &request.to_vec().unwrap()).await;
    let response = Message::from_vec(&read_frame(&mut stream).await).unwrap();
    assert_eq!(response.metadata.id, request.metadata.id);
    assert_eq!(render(&response), "NoError A 127.0.0.10");
    server.stop().await;
}

/// A UDP port on loopback where nothing listens: the kernel answers with
/// ICMP port unreachable, so asking it fails at once.
async fn dead_udp_port() -> SocketAddr {
    let socket = UdpSocket::bind((OUTSIDE, 0)).await.unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test]
async fn dns_relays_other_names_to_the_first_upstream_that_answers() {
    // The upstream is a second server, for another domain.
    let upstream_zone = Zone::new("upstream.test");
    upstream_zone.set(vec![("www".into(), "example".into(), Ipv4Addr::new(127, 0, 0, 9))]);
    let upstream = Running::start(upstream_zone, None).await;

    let zone = Zone::new("hearth");
    zone.set(records());
    let dead = dead_udp_port().await;
    let server = Running::start(zone, Some(vec![dead, upstream.addr])).await;
    check(
        server.addr,
        Transport::Udp,
        &[
            (OUTSIDE, "www.example.upstream.test.", RecordType::A, "NoError A 127.0.0.9"),
            (IN_LAB, "WWW.example.upstream.test.", RecordType::A, "NoError A 127.0.0.9"),
            (OUTSIDE, "nope.example.upstream.test.", RecordType::A, "NXDomain +SOA"),
            // The upstream refuses what is not its own; that answer is relayed too.
            (OUTSIDE, "example.com.", RecordType::A, "Refused"),
            // Our own names are still ours.
            (OUTSIDE, "web.lab.hearth.", RecordType::A, "NoError A 127.0.0.10"),
            (IN_LAB, "web.", RecordType::A, "NoError A 127.0.0.10"),
        ],
    )
    .await;
    check(
        server.addr,
        Transport::Tcp,
        &[(OUTSIDE, "www.example.upstream.test.", RecordType::A, "NoError A 127.0.0.9")],
    )
    .await;
    server.stop().await;
    upstream.stop().await;
}

/// An upstream that answers every query over UDP truncated, and over TCP
/// with `A 127.0.0.77`, as a server does with an answer too big for UDP.
async fn truncating_upstream() -> (SocketAddr, [JoinHandle<()>; 2]) {
    fn respond(query: &[u8], truncated: bool) -> Vec<u8> {
        let request = Message::from_vec(query).unwrap();
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.add_queries(request.queries.iter().cloned());
        response.metadata.truncation = truncated;
        if !truncated {
            let name = request.queries[0].name().clone();
            response.add_answer(Record::from_rdata(name, 5, RData::A(A(Ipv4Addr::new(127, 0, 0, 77)))));
        }
        response.to_vec().unwrap()
    }
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind((OUTSIDE, 0)).await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (len, from) = udp.recv_from(&mut buf).await.unwrap();
            udp.send_to(&respond(&buf[..len], true), from).await.unwrap();
        }
    });
    let tcp_task = tokio::spawn(async move {
        loop {
            let (mut stream, _) = tcp.accept().await.unwrap();
            let query = read_frame(&mut stream).await;
            write_frame(&mut stream, &respond(&query, false)).await;
        }
    });
    (addr, [udp_task, tcp_task])
}

#[tokio::test]
async fn dns_relays_truncated_answers_over_tcp_to_tcp_clients() {
    let (upstream, _tasks) = truncating_upstream().await;
    let server = Running::start(Zone::new("hearth"), Some(vec![upstream])).await;
    // A TCP client gets the whole answer: its retry could not go anywhere else.
    check(server.addr, Transport::Tcp, &[(OUTSIDE, "big.example.", RecordType::A, "NoError A 127.0.0.77")])
        .await;
    // A UDP client gets the truncated answer, to retry over TCP.
    let request = query("big.example.", RecordType::A);
    let answer = exchange(server.addr, OUTSIDE, Transport::Udp, &request.to_vec().unwrap()).await;
    let response = Message::from_vec(&answer).unwrap();
    assert_eq!(response.metadata.id, request.metadata.id);
    assert!(response.metadata.truncation, "the truncated answer is relayed as it is");
    assert!(response.answers.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn dns_answers_servfail_when_no_upstream_answers() {
    let zone = Zone::new("hearth");
    let server = Running::start(zone, Some(vec![dead_udp_port().await])).await;
    check(server.addr, Transport::Udp, &[(OUTSIDE, "example.com.", RecordType::A, "ServFail")]).await;
    server.stop().await;
}

#[tokio::test]
async fn dns_serve_reports_a_port_in_use() {
    let taken = UdpSocket::bind((OUTSIDE, 0)).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let error = dns::serve(addr, Zone::new("hearth"), None, std::future::pending()).await.unwrap_err();
    assert_eq!(error.to_string(), format!("cannot listen for DNS on UDP {addr}"));
}
