//! Leases: expiry, keep-alive, revocation, and keys attached to them.

use crate::support::{self, Backend};

use std::time::{Duration, Instant};

use hearth_store::redb::{Options, RedbStore};
use hearth_store::{Error, EventKind, Op, Store, Txn};

const TTL: Duration = Duration::from_secs(1);

support::on_both_backends!(
    expiry_deletes_the_keys_in_one_revision,
    keep_alive_extends_a_lease,
    revoke_deletes_the_keys_now,
    revoking_a_lease_without_keys_does_not_advance_the_revision,
    lease_ids_are_distinct_and_listed,
    unknown_leases_are_refused,
    rewriting_a_key_moves_it_between_leases,
    a_deleted_key_is_not_deleted_again_by_its_lease,
);

async fn expiry_deletes_the_keys_in_one_revision(backend: Backend) {
    let store = backend.store().await;
    let lease = store.lease_grant(TTL).await.unwrap();
    let granted = Instant::now();
    assert_eq!((lease.ttl, lease.remaining), (TTL, TTL));
    store.put("a", b"1".to_vec(), Some(lease.id)).await.unwrap();
    store.put("b", b"1".to_vec(), Some(lease.id)).await.unwrap();
    store.put("c", b"1".to_vec(), None).await.unwrap();
    assert_eq!(store.get("a").await.unwrap().unwrap().lease, Some(lease.id));
    let mut watch = store.watch("", 0).await.unwrap();

    let events: Vec<_> = support::take(&mut watch, 2).await.iter().map(support::brief).collect();
    let took = granted.elapsed();
    assert!(took >= TTL - Duration::from_millis(50), "expired after only {took:?}");
    assert_eq!(
        events,
        [
            (store.r(4), EventKind::Delete, "a".into(), String::new()),
            (store.r(4), EventKind::Delete, "b".into(), String::new()),
        ]
    );
    assert_eq!(store.get("a").await.unwrap(), None);
    assert!(store.get("c").await.unwrap().is_some());
    assert_eq!(store.revision().await.unwrap(), store.r(4));
    assert!(store.leases().await.unwrap().is_empty());
    let error = store.lease_keep_alive(lease.id).await.unwrap_err();
    assert!(matches!(error, Error::LeaseNotFound(id) if id == lease.id), "{error}");
}

async fn keep_alive_extends_a_lease(backend: Backend) {
    let store = backend.store().await;
    let lease = store.lease_grant(TTL).await.unwrap();
    store.put("k", b"v".to_vec(), Some(lease.id)).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let renewed = store.lease_keep_alive(lease.id).await.unwrap();
        assert_eq!(renewed.remaining, TTL);
    }
    // 1.5 s after the grant, well past the first deadline.
    assert!(store.get("k").await.unwrap().is_some());
    let listed = store.leases().await.unwrap();
    assert_eq!(listed.len(), 1);
    // etcd tells the time left in whole seconds, rounded down.
    if backend == Backend::Redb {
        assert!(listed[0].remaining > Duration::from_millis(500), "{listed:?}");
    }
    assert!(listed[0].remaining <= TTL, "{listed:?}");

    // Unrenewed, it goes. When is each backend's business (etcd's lessor
    // looks for expired leases every 500 ms, then deletes their keys
    // through Raft), so the test waits with a generous deadline.
    let deadline = Instant::now() + TTL + Duration::from_secs(10);
    while store.get("k").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the key outlived its lease by 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn revoke_deletes_the_keys_now(backend: Backend) {
    let store = backend.store().await;
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    store.put("a", b"1".to_vec(), Some(lease.id)).await.unwrap();
    store.put("b", b"1".to_vec(), Some(lease.id)).await.unwrap();
    let mut watch = store.watch("", 0).await.unwrap();

    assert_eq!(store.lease_revoke(lease.id).await.unwrap(), store.r(3));
    let events: Vec<_> = support::take(&mut watch, 2).await.iter().map(support::brief).collect();
    assert_eq!(events[0], (store.r(3), EventKind::Delete, "a".into(), String::new()));
    assert_eq!(events[1], (store.r(3), EventKind::Delete, "b".into(), String::new()));
    assert!(store.range("").await.unwrap().kvs.is_empty());

    let error = store.lease_revoke(lease.id).await.unwrap_err();
    assert!(matches!(error, Error::LeaseNotFound(_)), "{error}");
}

async fn revoking_a_lease_without_keys_does_not_advance_the_revision(backend: Backend) {
    let store = backend.store().await;
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    assert_eq!(store.lease_revoke(lease.id).await.unwrap(), store.r(0));
    assert!(store.leases().await.unwrap().is_empty());
}

async fn lease_ids_are_distinct_and_listed(backend: Backend) {
    let store = backend.store().await;
    let a = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    let b = store.lease_grant(Duration::from_secs(120)).await.unwrap();
    assert_ne!(a.id, b.id);
    assert_ne!(a.id, 0);
    let listed: Vec<_> = store.leases().await.unwrap().iter().map(|l| (l.id, l.ttl)).collect();
    assert_eq!(listed, [(a.id, a.ttl), (b.id, b.ttl)]);
    // Granting writes no key, so no revision.
    assert_eq!(store.revision().await.unwrap(), store.r(0));
}

async fn unknown_leases_are_refused(backend: Backend) {
    let store = backend.store().await;
    let error = store.put("k", b"v".to_vec(), Some(7)).await.unwrap_err();
    assert!(matches!(error, Error::LeaseNotFound(7)), "{error}");
    assert_eq!(store.get("k").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), store.r(0));
    assert!(matches!(store.lease_keep_alive(7).await, Err(Error::LeaseNotFound(7))));
    assert!(matches!(store.lease_revoke(7).await, Err(Error::LeaseNotFound(7))));
}

async fn rewriting_a_key_moves_it_between_leases(backend: Backend) {
    let store = backend.store().await;
    let first = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    let second = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    store.put("detached", b"1".to_vec(), Some(first.id)).await.unwrap();
    store.put("detached", b"2".to_vec(), None).await.unwrap();
    store.put("moved", b"1".to_vec(), Some(first.id)).await.unwrap();
    store.put("moved", b"2".to_vec(), Some(second.id)).await.unwrap();
    // A transaction can attach too.
    let attach = Op::Put { key: "txn".into(), value: b"1".to_vec(), lease: Some(first.id) };
    store.txn(Txn::new().and_then(attach)).await.unwrap();

    store.lease_revoke(first.id).await.unwrap();
    let keys: Vec<_> = store.range("").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["detached", "moved"]);
    assert_eq!(store.get("detached").await.unwrap().unwrap().lease, None);

    store.lease_revoke(second.id).await.unwrap();
    let keys: Vec<_> = store.range("").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["detached"]);
}

async fn a_deleted_key_is_not_deleted_again_by_its_lease(backend: Backend) {
    let store = backend.store().await;
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    store.put("k", b"v".to_vec(), Some(lease.id)).await.unwrap();
    store.delete("k").await.unwrap();
    assert_eq!(store.lease_revoke(lease.id).await.unwrap(), store.r(2));
}

/// Embedded only: a reopen from disk.
#[tokio::test]
async fn leases_survive_a_reopen_with_a_fresh_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = RedbStore::open(&path, Options::default()).unwrap();
    let lease = store.lease_grant(TTL).await.unwrap();
    store.put("k", b"v".to_vec(), Some(lease.id)).await.unwrap();
    store.shutdown().await;
    drop(store);

    // Closed for longer than the TTL: the lease must not have expired while
    // nobody could renew it.
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    let store = RedbStore::open(&path, Options::default()).unwrap();
    let listed = store.leases().await.unwrap();
    assert_eq!(listed.iter().map(|l| (l.id, l.ttl)).collect::<Vec<_>>(), [(lease.id, TTL)]);
    assert_eq!(store.get("k").await.unwrap().unwrap().lease, Some(lease.id));
    // A new lease does not reuse the id.
    assert_ne!(store.lease_grant(TTL).await.unwrap().id, lease.id);

    // ...and it still expires when nobody renews it.
    let mut watch = store.watch("", 0).await.unwrap();
    let events = support::take(&mut watch, 1).await;
    assert_eq!((events[0].kind, events[0].kv.key.as_str()), (EventKind::Delete, "k"));
}
