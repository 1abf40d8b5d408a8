//! What only the etcd backend has to show: a cloud's keys kept to their
//! namespace, a user whose token expires, clear errors for an etcd that
//! does not answer or refuses access, and watches and lease keep-alives
//! that survive a restarted etcd and a killed leader.

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

/// `/a` is taken as `/a/`: it does not reach the keys of `/a2/`, which it
/// is a prefix of, and `/a2/` does not see its keys either.
#[tokio::test]
async fn a_namespace_without_its_slash_does_not_reach_a_longer_one() {
    let etcd = Etcd::start().await;
    let a = etcd.store("/a").await;
    assert_eq!(a.namespace(), "/a/");
    let a2 = etcd.store("/a2/").await;
    a.put("k", b"from a".to_vec(), None).await.unwrap();
    a2.put("k", b"from a2".to_vec(), None).await.unwrap();
    a2.put("only-a2", vec![], None).await.unwrap();

    let keys = |range: hearth_store::Range| range.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(keys(a.range("").await.unwrap()), ["k"]);
    assert_eq!(keys(a2.range("").await.unwrap()), ["k", "only-a2"]);
    assert_eq!(a.get("k").await.unwrap().unwrap().value, b"from a");
    let mut watch = a.watch("", 0).await.unwrap();
    a2.put("k", b"a2 again".to_vec(), None).await.unwrap();
    let revision = a.put("k", b"a again".to_vec(), None).await.unwrap();
    let events: Vec<_> = take(&mut watch, 1).await.iter().map(support::brief).collect();
    assert_eq!(events, [(revision, EventKind::Put, "k".into(), "a again".into())]);

    let mut empty = etcd.options("");
    empty.connect_timeout = Duration::from_secs(2);
    let error = EtcdStore::connect(empty).await.expect_err("an empty namespace takes the whole cluster");
    assert!(matches!(error, Error::InvalidKey { .. }), "{error:?}");
}

/// With a user and password, the store asks for a new token when etcd has
/// forgotten the one it had (here after 1 s idle), where a client that
/// does not stops working; and a refused user is an access error, not
/// the request's.
#[tokio::test]
async fn a_store_with_a_user_outlives_its_token() {
    let etcd = Etcd::start_with(&["--auth-token", "simple", "--auth-token-ttl", "1"]).await;
    let url = format!("http://{}", etcd.endpoints()[0]);
    let mut admin = etcd_client::Client::connect([url.clone()], None).await.unwrap();
    admin.user_add("root", "root-password", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("hearth").await.unwrap();
    let permission = etcd_client::Permission::read_write("/hearth/").with_prefix();
    admin.role_grant_permission("hearth", permission).await.unwrap();
    admin.user_add("hearth", "hearth-password", None).await.unwrap();
    admin.user_grant_role("hearth", "hearth").await.unwrap();
    admin.user_add("nobody", "nobody-password", None).await.unwrap();
    admin.auth_enable().await.unwrap();

    let user = |name: &str, password: &str| {
        let mut options = etcd.options("/hearth/");
        options.user = Some((name.to_owned(), password.to_owned()));
        options.connect_timeout = Duration::from_secs(5);
        options
    };
    let store = EtcdStore::connect(user("hearth", "hearth-password")).await.unwrap();
    store.put("k", b"1".to_vec(), None).await.unwrap();
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    let without_refresh = etcd_client::ConnectOptions::new().with_user("hearth", "hearth-password");
    let mut plain = etcd_client::Client::connect([url], Some(without_refresh)).await.unwrap();
    plain.get("/hearth/k", None).await.unwrap();

    // etcd forgets a simple token after its TTL without use.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let error = plain.get("/hearth/k", None).await.expect_err("the token expired");
    assert!(error.to_string().contains("invalid auth token"), "{error}");
    store.put("k", b"2".to_vec(), None).await.expect("a write after the token expired");
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"2");
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.lease_keep_alive(lease.id).await.expect("a renewal after the token expired");

    for (options, what) in [
        (user("hearth", "wrong"), "a wrong password"),
        (user("nobody", "nobody-password"), "a user without a role"),
        (etcd.options("/hearth/"), "no user"),
    ] {
        let error = EtcdStore::connect(options).await.expect_err(what);
        assert!(matches!(error, Error::Denied { .. }), "{what}: {error:?}");
    }
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

    // Keep the lease alive every 0.7 s, through whatever happens: a
    // renewal may fail during the election, but etcd must never say the
    // lease is gone.
    let keeper = {
        let store = store.clone();
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(12);
            while Instant::now() < until {
                if let Err(Error::LeaseNotFound(id)) = store.lease_keep_alive(lease.id).await {
                    panic!("lease {id} expired");
                }
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        })
    };

    for i in 0..10 {
        create(&store, &format!("w/{i:02}"), deadline).await;
    }
    let leader = etcd.leader().await;
    etcd.kill(leader.index);
    for i in 10..30 {
        create(&store, &format!("w/{i:02}"), deadline).await;
    }
    // The writes went on because another member was elected.
    let new_leader = etcd.leader().await;
    assert!(new_leader.term > leader.term, "no election: {leader:?}, then {new_leader:?}");
    assert_ne!(new_leader.id, leader.id);
    // A write the client sends to the dead member fails to connect, so it
    // is sent again, to a live one: none fails.
    for i in 0..20 {
        store.put(&format!("p/{i}"), vec![], None).await.expect("a put with a member down");
    }

    let want: Vec<_> = (0..30).map(|i| format!("w/{i:02}")).collect();
    assert_eq!(created(&mut watch, 30).await, want);
    keeper.await.unwrap();
    assert!(store.get("held").await.unwrap().is_some(), "the lease's key outlived the leader");
    assert!(store.leases().await.unwrap().iter().any(|l| l.id == lease.id));
}
