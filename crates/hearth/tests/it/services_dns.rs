//! The host's DNS listener (`hearth serve --dns`), through the real daemon:
//! its address is read from `hearth status --json`, as a user would, and
//! asked over UDP and TCP with `hickory-proto` as the client.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use hearth_testkit::{Daemon, failure, success, wait_until};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");
const WAIT: Duration = Duration::from_secs(5);

fn status_json(daemon: &Daemon) -> serde_json::Value {
    serde_json::from_str(&success(&daemon.cli(&["status", "--json"]))).expect("status as JSON")
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

/// Asks `name` (type A) and renders the answer's code, its record count and
/// `+SOA` if the authority section has one.
async fn ask(server: SocketAddr, transport: Transport, name: &str) -> String {
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let packet = request.to_vec().unwrap();
    let answer = match transport {
        Transport::Udp => {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.send_to(&packet, server).await.unwrap();
            let mut buf = vec![0u8; 65535];
            let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            buf.truncate(len);
            buf
        }
        Transport::Tcp => {
            let mut stream = TcpStream::connect(server).await.expect("connect over TCP");
            let len = u16::try_from(packet.len()).unwrap();
            stream.write_all(&[&len.to_be_bytes()[..], &packet].concat()).await.unwrap();
            let len =
                tokio::time::timeout(WAIT, stream.read_u16()).await.expect("an answer in time").unwrap();
            let mut buf = vec![0u8; usize::from(len)];
            stream.read_exact(&mut buf).await.unwrap();
            buf
        }
    };
    let response = Message::from_vec(&answer).expect("a well-formed answer");
    assert_eq!(response.metadata.id, request.metadata.id);
    let soa = response.authorities.iter().any(|r| r.record_type() == RecordType::SOA);
    format!(
        "{:?} {}{}",
        response.metadata.response_code,
        response.answers.len(),
        if soa { " +SOA" } else { "" }
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn services_dns_answers_hearth_names_where_status_says_and_refuses_others() {
    let daemon = Daemon::start(BIN).await;
    let status = status_json(&daemon);
    let addr: SocketAddr = status["dns"]["listen"]
        .as_str()
        .unwrap_or_else(|| panic!("status shows a DNS address: {status}"))
        .parse()
        .expect("an address");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert!(status["dns"]["problem"].is_null(), "{status}");
    for transport in [Transport::Udp, Transport::Tcp] {
        assert_eq!(ask(addr, transport, "example.com.").await, "Refused 0", "{transport:?}");
        assert_eq!(ask(addr, transport, "nosuch.service.hearth.").await, "NXDomain 0 +SOA", "{transport:?}");
        assert_eq!(ask(addr, transport, "service.hearth.").await, "NoError 0 +SOA", "{transport:?}");
    }
    let text = success(&daemon.cli(&["status"]));
    assert!(text.contains(&format!("dns         {addr} (udp and tcp)")), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn services_dns_off_says_so_in_status() {
    let daemon = Daemon::start_with_dns(BIN, Some("off")).await;
    let status = status_json(&daemon);
    assert!(status["dns"]["listen"].is_null(), "{status}");
    assert_eq!(status["dns"]["problem"], "switched off with --dns off");
    let text = success(&daemon.cli(&["status"]));
    assert!(text.contains("dns         off: switched off with --dns off"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn services_dns_default_port_taken_starts_the_daemon_without_it() {
    // Held by this test, or by someone else already: taken either way.
    let _held = std::net::UdpSocket::bind("127.0.0.1:8600");
    let daemon = Daemon::start_with_dns(BIN, None).await;
    let status = status_json(&daemon);
    assert!(status["dns"]["listen"].is_null(), "{status}");
    let problem = status["dns"]["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("127.0.0.1:8600") && problem.contains("--dns"), "{status}");
    assert!(daemon.log().contains("DNS listener is off"), "{}", daemon.log());
}

/// Runs `hearth serve` on a fresh data dir with `args`, expecting it to
/// exit before it serves; returns its stderr.
async fn serve_fails(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--net-prefix", "tdns", "--default-network", "false", "--ingress", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hearth serve");
    let exited = wait_until(Duration::from_secs(20), async || child.try_wait().unwrap().is_some()).await;
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("hearth serve {args:?} kept running");
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn services_dns_explicit_address_that_cannot_be_used_is_an_error_at_start() {
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let stderr = serve_fails(&["--dns", &addr]).await;
    assert!(
        stderr.contains(&format!("cannot serve DNS on {addr}")) && stderr.contains("--dns off"),
        "{stderr}"
    );

    let stderr = serve_fails(&["--dns", "0.0.0.0:8600"]).await;
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn services_dns_a_network_cannot_be_named_service() {
    let daemon = Daemon::start(BIN).await;
    let stderr =
        failure(&daemon.cli(&["network", "create", "service", "--subnet", "10.246.0.0/24", "--no-nat"]));
    assert!(stderr.contains("network name \"service\" is reserved"), "{stderr}");
    assert!(stderr.contains("NAME.service.hearth") && stderr.contains("hint:"), "{stderr}");
    let networks = success(&daemon.cli(&["network", "ls"]));
    assert!(!networks.contains("service"), "nothing was made: {networks}");
}

/// The answers to `name` of type `kind`, each as its data in text, sorted.
async fn records(server: SocketAddr, name: &str, kind: RecordType) -> Vec<String> {
    let mut request = Message::query();
    request.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&request.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) =
        tokio::time::timeout(WAIT, socket.recv_from(&mut buf)).await.expect("an answer in time").unwrap();
    let response = Message::from_vec(&buf[..len]).expect("a well-formed answer");
    let mut out: Vec<String> = response.answers.iter().map(|r| r.data.to_string()).collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn services_dns_answers_the_passing_instances_of_a_service_as_they_change() {
    use hearth_client::types::{Health, Heartbeat, RegisterInstance};

    let daemon = Daemon::start(BIN).await;
    let server: SocketAddr =
        status_json(&daemon)["dns"]["listen"].as_str().expect("dns").parse().expect("addr");
    let client = daemon.client();
    for (id, address, port) in [("db-a", "127.0.0.10", 5432), ("db-b", "127.0.0.11", 5433)] {
        let body = RegisterInstance {
            id: Some(id.into()),
            address: address.into(),
            port,
            ttl_s: 60,
            ..Default::default()
        };
        client.register_instance("db", &body).await.expect("register");
    }
    // DNS follows the endpoints record: it answers once it has seen the change.
    let both = wait_until(WAIT, async || {
        records(server, "db.service.hearth.", RecordType::A).await == ["127.0.0.10", "127.0.0.11"]
    })
    .await;
    assert!(both, "{:?}", records(server, "db.service.hearth.", RecordType::A).await);
    let srv = records(server, "_db._tcp.service.hearth.", RecordType::SRV).await;
    assert_eq!(srv, ["1 1 5432 db-a.db.service.hearth.", "1 1 5433 db-b.db.service.hearth."]);
    assert_eq!(records(server, "db-b.db.service.hearth.", RecordType::A).await, ["127.0.0.11"]);

    // Critical instances leave DNS; deregistered ones too.
    let critical = Heartbeat { health: Some(Health::Critical), output: None };
    client.heartbeat("db", "db-a", &critical).await.expect("heartbeat");
    let one = wait_until(WAIT, async || {
        records(server, "db.service.hearth.", RecordType::A).await == ["127.0.0.11"]
    })
    .await;
    assert!(one, "a critical instance is still in DNS");
    client.deregister_instance("db", "db-b").await.expect("deregister");
    let none =
        wait_until(WAIT, async || records(server, "db.service.hearth.", RecordType::A).await.is_empty())
            .await;
    assert!(none, "a deregistered instance is still in DNS");
    assert_eq!(
        ask(server, Transport::Udp, "db.service.hearth.").await,
        "NoError 0 +SOA",
        "known, with none passing"
    );
    success(&daemon.cli(&["service", "rm", "db"]));
    let gone = wait_until(WAIT, async || {
        ask(server, Transport::Udp, "db.service.hearth.").await == "NXDomain 0 +SOA"
    })
    .await;
    assert!(gone, "a removed service still answers");
}
