//! What only the etcd backend has to show: a cloud's keys kept to their
//! namespace, clear errors for an etcd that does not answer, and watches
//! and lease keep-alives that survive a restarted etcd and a killed leader.

use crate::support::etcd::Etcd;
use crate::support::{self, take};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hearth_store::etcd::{EtcdStore, Options};
use hearth_store::{Compare, Error, EventKind, Op, Store, Txn};

#[tokio::test]
async fn namespaces_keep_two_clouds_apart_on_one_etcd() {
    let etcd = Etcd::start().await;
    let a = etcd.store("/a/").await;
    let b = etcd.store("/b/").await;
    a.put("k", b"from a".to_vec(), None).await.unwrap();
    b.put("k", b"from b".to_vec(), None).await.unwrap();
    b.put("only-b", vec![], None).await.unwrap();

    assert_eq!(a.get("k").await.unwrap().unwrap().value, b"from a");
    let keys: Vec<_> = a.range("").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["k"], "a range sees its own namespace, without the prefix");
    let (_, existed) = a.delete("only-b").await.unwrap();
    assert!(!existed, "a delete does not reach into another namespace");

    let mut watch = a.watch("", 0).await.unwrap();
    b.put("k", b"b again".to_vec(), None).await.unwrap();
    let revision = a.put("k", b"a again".to_vec(), None).await.unwrap();
    let events: Vec<_> = take(&mut watch, 1).await.iter().map(support::brief).collect();
    assert_eq!(events, [(revision, EventKind::Put, "k".into(), "a again".into())]);
}

#[tokio::test]
async fn an_etcd_that_does_not_answer_is_a_clear_error() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut options = Options::from_url(&format!("etcd://127.0.0.1:{port}")).unwrap();
    options.connect_timeout = Duration::from_secs(2);
    let error = EtcdStore::connect(options).await.expect_err("nothing listens there");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{port}")) && message.contains("check that it is running"),
        "{message}"
    );
}

#[tokio::test]
async fn etcd_urls_are_checked() {
    let options = Options::from_url("etcd://10.0.0.1:2379,host-b:2379").unwrap();
    assert_eq!(options.endpoints, ["10.0.0.1:2379", "host-b:2379"]);
    assert_eq!(options.namespace, "/hearth/");
    for bad in ["http://h:1", "etcd://", "etcd://h", "etcd://h:port", "etcd://:1", "etcd://h:1/path:2"] {
        let error = Options::from_url(bad).err().unwrap_or_else(|| panic!("{bad} is accepted"));
        assert!(error.to_string().contains("etcd://HOST:PORT"), "{error}");
    }
}

/// Puts `key` unless it exists: a write that can be retried after an
/// error without being applied twice.
async fn create(store: &EtcdStore, key: &str, deadline: Instant) {
    let txn = Txn::new().when(Compare::missing(key)).and_then(Op::Put {
        key: key.into(),
        value: key.as_bytes().to_vec(),
        lease: None,
    });
    loop {
        match store.txn(txn.clone()).await {
            Ok(_) => return,
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot write {key}: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The keys of the next `n` puts on `watch`, each checked to come once
/// and in revision order.
async fn created(watch: &mut hearth_store::WatchStream, n: usize) -> Vec<String> {
    let events = take(watch, n).await;
    let mut revisions = BTreeMap::new();
    for event in &events {
        assert_eq!(event.kind, EventKind::Put);
        assert!(revisions.insert(event.kv.key.clone(), event.revision()).is_none(), "{} twice", event.kv.key);
    }
    assert!(events.windows(2).all(|w| w[0].revision() < w[1].revision()), "out of order: {events:?}");
    events.into_iter().map(|event| event.kv.key).collect()
}

#[tokio::test]
async fn a_watch_survives_a_restart_of_etcd_and_misses_nothing() {
    let mut etcd = Etcd::start().await;
    let store = etcd.store("/hearth/").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut watch = store.watch("w/", 0).await.unwrap();
    create(&store, "w/1", deadline).await;
    assert_eq!(created(&mut watch, 1).await, ["w/1"]);
    create(&store, "w/2", deadline).await;

    etcd.kill(0);
    etcd.restart(0).await;
    for i in 3..=5 {
        create(&store, &format!("w/{i}"), deadline).await;
    }
    // w/2 was written before the crash and not yet read: it comes from the
    // re-opened watch, with what followed, and w/1 does not come again.
    assert_eq!(created(&mut watch, 4).await, ["w/2", "w/3", "w/4", "w/5"]);
    support::assert_quiet(&mut watch).await;
}

/// On a 3-member cluster, the leader is killed while a writer writes, a
/// watcher follows and a lease is kept alive: the writes go on through the
/// other members, the watch hands out each once and in order, and the
/// lease and its key are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_and_a_lease_survive_killing_the_leader() {
    let mut etcd = Etcd::cluster(3).await;
    let store = etcd.store("/hearth/").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let ttl = Duration::from_secs(3);
    let lease = store.lease_grant(ttl).await.unwrap();
    store.put("held", vec![], Some(lease.id)).await.unwrap();
    let mut watch = store.watch("w/", 0).await.unwrap();

    // Keep the lease alive every second, through whatever happens.
    let keeper = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut renewed = 0;
            let mut failed = 0;
            let until = Instant::now() + Duration::from_secs(12);
            while Instant::now() < until {
                match store.lease_keep_alive(lease.id).await {
                    Ok(_) => renewed += 1,
                    Err(Error::LeaseNotFound(id)) => panic!("lease {id} expired"),
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            (renewed, failed)
        })
    };

    for i in 0..10 {
        create(&store, &format!("w/{i:02}"), deadline).await;
    }
    let leader = etcd.leader().await;
    etcd.kill(leader);
    for i in 10..30 {
        create(&store, &format!("w/{i:02}"), deadline).await;
    }
    let new_leader = etcd.leader().await;
    assert_ne!(new_leader, leader);

    let want: Vec<_> = (0..30).map(|i| format!("w/{i:02}")).collect();
    assert_eq!(created(&mut watch, 30).await, want);
    let (renewed, failed) = keeper.await.unwrap();
    assert!(renewed >= 10, "renewed {renewed} times, failed {failed}");
    assert!(store.get("held").await.unwrap().is_some(), "the lease's key outlived the leader");
    assert!(store.leases().await.unwrap().iter().any(|l| l.id == lease.id));
}
