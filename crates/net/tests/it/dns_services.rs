//! Services in DNS, followed from the store: the networks service runs on a
//! store in a temp dir (without root, so it touches nothing on the host but
//! the loopback DNS server this test starts on its zone), and answers follow
//! the `services/endpoints/NAME` records as the services crate writes them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hearth_net::{Networks, Options, dns, service::ENDPOINTS};
use hearth_store::Store;
use hearth_store::redb::RedbStore;
use hearth_testkit::wait_until;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(5);

/// Asks `name` over UDP and renders the answer as `CODE` and its records,
/// e.g. `NoError A 10.88.0.5`, or `NXDomain`.
async fn ask(server: SocketAddr, name: &str, record_type: RecordType) -> String {
    let mut request = Message::query();
    request.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    socket.send_to(&request.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf)).await.expect("an answer").unwrap();
    let response = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(response.metadata.id, request.metadata.id);
    let mut line = format!("{:?}", response.metadata.response_code);
    for record in &response.answers {
        assert_eq!(record.ttl, dns::SERVICE_TTL, "service answers are not cached");
        match &record.data {
            RData::A(a) => line += &format!(" A {a}"),
            RData::SRV(srv) => line += &format!(" SRV {} {}", srv.port, srv.target),
            other => line += &format!(" {}", other.record_type()),
        }
    }
    line
}

/// Waits until `name` answers `expected`, and says what it answered last if not.
async fn expect(server: SocketAddr, name: &str, record_type: RecordType, expected: &str) {
    let mut last = String::new();
    let followed = wait_until(WAIT, async || {
        last = ask(server, name, record_type).await;
        last == expected
    })
    .await;
    assert!(followed, "{name} {record_type}: expected {expected:?}, still {last:?}");
}

async fn put(store: &dyn Store, service: &str, value: &str) {
    store.put(&format!("{ENDPOINTS}{service}"), value.as_bytes().to_vec(), None).await.unwrap();
}

#[tokio::test]
async fn dns_follows_services_endpoints_records() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.path().join("state.redb"), Default::default()).unwrap());
    // Written before the service starts: read by its first pass.
    put(
        store.as_ref(),
        "web",
        r#"{"name":"web","instances":[{"id":"web-1","address":"10.88.0.5","port":80}]}"#,
    )
    .await;
    let networks = Networks::new(
        store.clone(),
        Options {
            prefix: "tdns".into(),
            default_nat: false,
            enabled: false,
            default_network: false,
            host: "h1".into(),
            overlay: None,
        },
    );
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(networks.clone().run(stopped));
    let server = dns::bind((Ipv4Addr::LOCALHOST, 0).into()).await.unwrap();
    let addr = server.local_addr();
    let (dns_stop, dns_stopped) = watch::channel(false);
    let dns_task = tokio::spawn(server.run(networks.zone(), None, async move {
        let mut dns_stopped = dns_stopped;
        let _ = dns_stopped.wait_for(|s| *s).await;
    }));

    expect(addr, "web.service.hearth.", RecordType::A, "NoError A 10.88.0.5").await;
    expect(addr, "nosuch.service.hearth.", RecordType::A, "NXDomain").await;

    // A second instance passes; unknown fields are ignored.
    put(
        store.as_ref(),
        "web",
        r#"{"name":"web","instances":[{"id":"web-1","address":"10.88.0.5","port":80},
            {"id":"web-2","address":"10.88.0.6","port":8080,"checks":[]}],"revision":7}"#,
    )
    .await;
    expect(addr, "web.service.hearth.", RecordType::A, "NoError A 10.88.0.5 A 10.88.0.6").await;
    expect(
        addr,
        "_web._tcp.service.hearth.",
        RecordType::SRV,
        "NoError SRV 80 web-1.web.service.hearth. SRV 8080 web-2.web.service.hearth.",
    )
    .await;
    expect(addr, "web-2.web.service.hearth.", RecordType::A, "NoError A 10.88.0.6").await;

    // No instance passes: the service is still there, with no address.
    put(store.as_ref(), "web", r#"{"name":"web","instances":[]}"#).await;
    expect(addr, "web.service.hearth.", RecordType::A, "NoError").await;

    // The service is removed.
    store.delete(&format!("{ENDPOINTS}web")).await.unwrap();
    expect(addr, "web.service.hearth.", RecordType::A, "NXDomain").await;

    // A record that cannot be read spoils only itself.
    put(store.as_ref(), "broken", "{").await;
    put(
        store.as_ref(),
        "db",
        r#"{"name":"db","instances":[{"id":"db-1","address":"10.88.0.7","port":5432}]}"#,
    )
    .await;
    expect(addr, "db.service.hearth.", RecordType::A, "NoError A 10.88.0.7").await;
    expect(addr, "broken.service.hearth.", RecordType::A, "NXDomain").await;

    let _ = stop.send(true);
    let _ = dns_stop.send(true);
    tokio::time::timeout(WAIT, running).await.expect("the networks service stops").unwrap();
    tokio::time::timeout(WAIT, dns_task).await.expect("the DNS server stops").unwrap();
}
