//! Hosts sharing one store: two daemons on a real etcd list each other,
//! one leads, a killed one is lost (never self-reported) and the other
//! takes the lead; a drained host says so; a daemon on the embedded store
//! is the one host, and leads.

use std::time::Duration;

use hearth_client::types::{HostList, HostState};
use hearth_testkit::etcd::Etcd;
use hearth_testkit::{Daemon, failure, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

async fn host(etcd: &Etcd, name: &str) -> Daemon {
    Daemon::start_on_etcd(BIN, etcd, name, &[]).await
}

fn hosts(daemon: &Daemon) -> HostList {
    serde_json::from_str(&success(&daemon.cli(&["host", "ls", "--json"]))).expect("host ls --json parses")
}

fn states(list: &HostList) -> Vec<(String, HostState, bool)> {
    list.hosts.iter().map(|h| (h.name.clone(), h.state, h.leader)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_on_one_etcd_list_each_other_and_one_leads() {
    let etcd = Etcd::start();
    let one = host(&etcd, "one").await;
    assert!(wait_until(Duration::from_secs(10), async || hosts(&one).hosts.iter().any(|h| h.leader)).await);
    let two = host(&etcd, "two").await;
    let list = hosts(&two);
    assert_eq!(list.this, "two");
    assert_eq!(
        states(&list),
        [("one".to_owned(), HostState::Ready, true), ("two".to_owned(), HostState::Ready, false)]
    );
    let two_host = list.hosts.iter().find(|h| h.name == "two").unwrap();
    assert!(two_host.cpus >= 1 && two_host.memory_mib > 0, "{two_host:?}");
    assert!(two_host.backends.iter().any(|b| b == "qemu-tcg"), "{two_host:?}");
    assert!(two_host.addresses.iter().any(|a| a.starts_with("ingress=127.0.0.1:")), "{two_host:?}");

    let table = success(&two.cli(&["host", "ls"]));
    assert!(table.contains("two (this host)"), "{table}");
    let status = success(&two.cli(&["status"]));
    assert!(status.contains("cluster     host two, led by one, 2 hosts"), "{status}");
    let inspect = success(&one.cli(&["host", "inspect", "two"]));
    assert!(inspect.contains("state       ready") && inspect.contains("leader      no"), "{inspect}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_host_is_lost_and_the_other_takes_the_lead_then_it_comes_back() {
    let etcd = Etcd::start();
    let mut one = host(&etcd, "one").await;
    assert!(wait_until(Duration::from_secs(10), async || hosts(&one).hosts.iter().any(|h| h.leader)).await);
    let two = host(&etcd, "two").await;
    one.kill9();
    // The lease is 10 s: lost within it and a renewal, never before anyone saw it go.
    let lost = wait_until(Duration::from_secs(30), async || {
        states(&hosts(&two))
            == [("one".to_owned(), HostState::Lost, false), ("two".to_owned(), HostState::Ready, true)]
    })
    .await;
    assert!(lost, "{:?}\n{}", hosts(&two), two.log());
    let list = hosts(&two);
    assert!(list.hosts[0].lost_at_ms.is_some(), "the leader recorded when: {list:?}");
    let table = success(&two.cli(&["host", "ls"]));
    assert!(table.contains("lost since "), "{table}");
    let status = success(&two.cli(&["status"]));
    assert!(status.contains("host two, the leader, 1 of 2 hosts lost"), "{status}");

    one.restart().await;
    let back = wait_until(Duration::from_secs(10), async || {
        states(&hosts(&one))
            == [("one".to_owned(), HostState::Ready, false), ("two".to_owned(), HostState::Ready, true)]
    })
    .await;
    assert!(back, "{:?}", hosts(&one));
    assert_eq!(hosts(&one).hosts[0].lost_at_ms, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quick_restart_is_never_seen_as_a_loss() {
    let etcd = Etcd::start();
    let mut one = host(&etcd, "one").await;
    let two = host(&etcd, "two").await;
    one.restart().await;
    // The new life gave up the old one's lease: no window where one is lost.
    let list = hosts(&two);
    assert_eq!(
        list.hosts.iter().find(|h| h.name == "one").map(|h| h.state),
        Some(HostState::Ready),
        "{list:?}"
    );
    assert!(!two.log().contains("A host was lost"), "{}", two.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_host_says_so_and_an_alive_one_cannot_be_forgotten() {
    let etcd = Etcd::start();
    let one = host(&etcd, "one").await;
    let _two = host(&etcd, "two").await;
    let said = success(&one.cli(&["host", "drain", "two"]));
    assert!(said.contains("host two is draining"), "{said}");
    assert_eq!(hosts(&one).hosts[1].state, HostState::Draining);
    let said = success(&one.cli(&["host", "undrain", "two"]));
    assert!(said.contains("host two takes new work again (ready)"), "{said}");
    let error = failure(&one.cli(&["host", "drain", "nobody"]));
    assert!(error.contains("no host is named \"nobody\"") && error.contains("hearth host ls"), "{error}");
    let error = failure(&one.cli(&["host", "forget", "two"]));
    assert!(error.contains("is alive") && error.contains("stop its daemon first"), "{error}");
}

#[tokio::test]
async fn a_daemon_on_the_embedded_store_is_the_one_host_and_leads() {
    let daemon = Daemon::start(BIN).await;
    assert!(
        wait_until(Duration::from_secs(10), async || hosts(&daemon).hosts.iter().any(|h| h.leader)).await
    );
    let list = hosts(&daemon);
    assert_eq!(list.hosts.len(), 1, "{list:?}");
    assert_eq!((list.hosts[0].name.as_str(), list.hosts[0].state), (list.this.as_str(), HostState::Ready));
    let status = success(&daemon.cli(&["status"]));
    assert!(status.contains("the leader, the only host"), "{status}");
}
