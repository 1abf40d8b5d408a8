//! Services' published ports, followed from the store: the networks service
//! runs on a store in a temp dir (without root, so it touches nothing on the
//! host but loopback), and `services/endpoints/NAME` records with `ports`
//! get a port on 127.0.0.1 balanced over small servers on 127.0.0.x that
//! stand in for the instances.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hearth_net::{Networks, Options, service::ENDPOINTS};
use hearth_store::Store;
use hearth_store::redb::RedbStore;
use hearth_testkit::{free_port, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(5);

/// An instance: on each connection, says its name on a line, then echoes
/// what it reads until the client closes. Stopped (refusing) when dropped.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(name: &'static str, addr: SocketAddr) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    stream.write_all(format!("{name}\n").as_bytes()).await.unwrap();
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        Server { name, addr, task }
    }

    /// The record's view of this server: an instance whose own `port` is
    /// wrong on purpose, since a published port names the guest port.
    fn instance(&self) -> String {
        format!(r#"{{"id":"{}","address":"{}","port":1}}"#, self.name, self.addr.ip())
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A connection through the published port, and the name of the instance
/// it reached (its greeting), or `None` if it was closed without one.
async fn connect(port: u16) -> Option<(TcpStream, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut byte)).await.expect("an answer or a close") {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => greeting.push(byte[0]),
            _ => return None,
        }
    }
    Some((stream, String::from_utf8(greeting).unwrap()))
}

/// The names of the instances `count` connections in a row reach, each
/// closed before the next (half-closed, then read to its end, so that the
/// balancer is done with it but for a moment).
async fn reached(port: u16, count: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..count {
        let Some((mut stream, name)) = connect(port).await else {
            names.push("closed".to_owned());
            continue;
        };
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await.expect("the echo ends").unwrap();
        names.push(name);
    }
    names
}

async fn publish(store: &dyn Store, host: u16, guest: u16, instances: &[&Server]) {
    let instances: Vec<String> = instances.iter().map(|s| s.instance()).collect();
    let value = format!(
        r#"{{"name":"web","instances":[{}],"ports":[{{"host":{host},"guest":{guest},"udp":false}}]}}"#,
        instances.join(",")
    );
    store.put(&format!("{ENDPOINTS}web"), value.into_bytes(), None).await.unwrap();
}

async fn start_networks(store: Arc<dyn Store>) -> (Networks, watch::Sender<bool>, JoinHandle<()>) {
    let networks = Networks::new(
        store,
        Options {
            prefix: "tpub".into(),
            default_nat: false,
            enabled: false,
            default_network: false,
            host: "h1".into(),
            overlay: None,
        },
    );
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(networks.clone().run(stopped));
    (networks, stop, running)
}

fn open_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(&dir.path().join("state.redb"), Default::default()).unwrap())
}

#[tokio::test]
async fn a_published_port_balances_over_the_instances_and_follows_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    // Three instances on one guest port, each on its own loopback address.
    let a = Server::start("a", (Ipv4Addr::new(127, 0, 0, 2), 0).into()).await;
    let guest = a.addr.port();
    let b = Server::start("b", (Ipv4Addr::new(127, 0, 0, 3), guest).into()).await;
    let c = Server::start("c", (Ipv4Addr::new(127, 0, 0, 4), guest).into()).await;
    let host = free_port().port();
    publish(store.as_ref(), host, guest, &[&a, &b]).await;
    let (_networks, stop, running) = start_networks(store.clone()).await;

    // Open connections are spread: each new one goes to the instance with fewer.
    assert!(wait_until(WAIT, async || connect(host).await.is_some()).await, "port {host} is published");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(host).await.expect("a connection"));
    }
    let mut names: Vec<&str> = held.iter().map(|(_, name)| name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);
    // Bytes go both ways, and a half-close is passed on.
    let (mut stream, _) = held.pop().unwrap();
    stream.write_all(b"hello").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut echoed)).await.expect("the echo ends").unwrap();
    assert_eq!(echoed, b"hello");
    drop(held);

    // A connection counts as open until the balancer is done with it,
    // which is a moment after its client is: the checks that follow depend
    // on those counts, so they are awaited rather than asserted once.
    // Closed one at a time, connections take turns.
    let turns = wait_until(WAIT, async || {
        let mut names = reached(host, 4).await;
        names.sort();
        names == ["a", "a", "b", "b"]
    })
    .await;
    assert!(turns, "connections closed one at a time take turns");

    // While one instance holds a connection, new ones go to the other.
    let fewest = wait_until(WAIT, async || {
        let (busy, name) = connect(host).await.expect("a connection");
        let other = if name == "a" { "b" } else { "a" };
        let names = reached(host, 3).await;
        drop(busy);
        names == [other; 3]
    })
    .await;
    assert!(fewest, "new connections go to the instance with the fewest open");

    // An instance that refuses is passed over, unseen by clients.
    b.stop().await;
    assert_eq!(reached(host, 6).await, ["a"; 6]);

    // The instances change: new connections follow, on the same listener.
    publish(store.as_ref(), host, guest, &[&c]).await;
    assert!(wait_until(WAIT, async || reached(host, 1).await == ["c"]).await, "the port follows the record");
    assert_eq!(reached(host, 3).await, ["c"; 3]);

    // No instance passes: a client's connection is closed at once.
    publish(store.as_ref(), host, guest, &[]).await;
    assert!(wait_until(WAIT, async || reached(host, 1).await == ["closed"]).await, "no instance, no answer");

    // The service is removed: so is its port.
    store.delete(&format!("{ENDPOINTS}web")).await.unwrap();
    let closed =
        wait_until(WAIT, async || TcpStream::connect((Ipv4Addr::LOCALHOST, host)).await.is_err()).await;
    assert!(closed, "port {host} is closed with its service");

    let _ = stop.send(true);
    tokio::time::timeout(WAIT, running).await.expect("the networks service stops").unwrap();
    a.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_published_port_in_use_is_a_problem_until_it_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    let server = Server::start("a", (Ipv4Addr::new(127, 0, 0, 2), 0).into()).await;
    // Another program has the port.
    let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let host = squatter.local_addr().unwrap().port();
    publish(store.as_ref(), host, server.addr.port(), &[&server]).await;
    let (networks, stop, running) = start_networks(store.clone()).await;

    let mut problem = None;
    assert!(
        wait_until(WAIT, async || {
            problem = networks.service_port_problem("web");
            problem.is_some()
        })
        .await,
        "a port in use is reported"
    );
    let problem = problem.unwrap();
    assert!(problem.contains(&format!("TCP port {host} on 127.0.0.1 is in use")), "{problem}");
    assert!(problem.contains("free the port"), "says what to do: {problem}");
    assert_eq!(networks.service_port_problem("nosuch"), None);

    // Freed, the port is taken on a later pass, with no change to the record.
    drop(squatter);
    assert!(
        wait_until(WAIT, async || connect(host).await.is_some_and(|(_, name)| name == "a")).await,
        "port {host} is published once free"
    );
    assert_eq!(networks.service_port_problem("web"), None);

    let _ = stop.send(true);
    tokio::time::timeout(WAIT, running).await.expect("the networks service stops").unwrap();
    server.stop().await;
}
