//! Machines' published ports (`machine run -p 8081:80`), forwarded by the
//! networks service from loopback, when several hosts share the store:
//! each host forwards the ports of its own machines only, since only it
//! has their taps. The service runs as root inside a lab namespace (see
//! `support`), whose loopback and ruleset stand for the host's, on a store
//! in a temp dir; servers on 127.0.0.x stand in for the machines.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hearth_net::{Networks, Options};
use hearth_store::Store;
use hearth_store::redb::RedbStore;
use hearth_testkit::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, in_netns};

const WAIT: Duration = Duration::from_secs(5);

/// A running machine's record, as the machines crate writes it (the
/// fields the networks service reads): on `host`, at `ip`, publishing
/// `port` on the host's loopback to its port 80.
fn record(name: &str, host: Option<&str>, ip: Ipv4Addr, port: u16) -> Vec<u8> {
    serde_json::json!({
        "name": name,
        "host": host,
        "spec": {
            "nics": [{"network": "default", "ip": ip, "mac": "02:00:00:00:00:01", "tap": format!("tfwt-{name}")}],
            "ports": [{"host": port, "guest": 80, "udp": false}],
        },
        "status": {"state": "running"},
    })
    .to_string()
    .into_bytes()
}

/// A machine's service: says `name` to each connection, then closes it.
async fn serve(name: &'static str, ip: Ipv4Addr) {
    let listener = TcpListener::bind((ip, 80)).await.unwrap_or_else(|e| panic!("bind {ip}:80: {e}"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(name.as_bytes()).await;
        }
    });
}

/// What a connection to `port` on loopback is answered, or `None` if it
/// is refused (nothing forwards it).
async fn through(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut answer)).await.expect("an answer").ok()?;
    Some(answer)
}

#[test]
fn a_host_forwards_the_ports_of_its_own_machines_and_not_another_host_s() {
    support::run(|lab| {
        let host = lab.netns("host");
        in_netns(&host, || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(forwards_follow_the_machines_host());
        });
    });
}

async fn forwards_follow_the_machines_host() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.path().join("state.redb"), Default::default()).unwrap());
    let (mine, theirs, before) =
        (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 4));
    serve("mine", mine).await;
    serve("theirs", theirs).await;
    serve("before", before).await;
    store.put("machines/mine", record("mine", Some("one"), mine, 8081), None).await.unwrap();
    store.put("machines/theirs", record("theirs", Some("two"), theirs, 8082), None).await.unwrap();
    // From before hosts shared a store: this host's.
    store.put("machines/before", record("before", None, before, 8083), None).await.unwrap();

    let options = Options {
        prefix: "tfw".into(),
        default_nat: false,
        enabled: true,
        default_network: false,
        host: "one".into(),
        overlay: None,
    };
    let networks = Networks::new(store.clone(), options);
    networks.apply().await;
    assert_eq!(through(8081).await.as_deref(), Some("mine"), "this host's machine");
    assert_eq!(through(8083).await.as_deref(), Some("before"), "a machine from before hosts");
    assert_eq!(through(8082).await, None, "another host's machine");
    assert_eq!(networks.forward_problem("theirs"), None);

    // The machines change hosts (a drain, say): the forwards follow.
    store.put("machines/mine", record("mine", Some("two"), mine, 8081), None).await.unwrap();
    store.put("machines/theirs", record("theirs", Some("one"), theirs, 8082), None).await.unwrap();
    networks.apply().await;
    assert_eq!(through(8082).await.as_deref(), Some("theirs"));
    // A forward stops as its task sees the stop, just after the pass.
    assert!(wait_until(WAIT, async || through(8081).await.is_none()).await, "8081 is no longer forwarded");
    networks.teardown().await;
}
