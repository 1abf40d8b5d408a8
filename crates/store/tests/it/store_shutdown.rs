//! Shutting down: queued writes finish, later calls fail, watches end.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hearth_store::redb::{Options, RedbStore};
use hearth_store::{Error, Store, Txn};

#[tokio::test]
async fn after_shutdown_every_call_is_closed() {
    let (_dir, store) = support::store();
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    store.put("k", b"v".to_vec(), None).await.unwrap();
    let other_handle = store.clone();
    store.shutdown().await;

    let results: Vec<(&str, Result<(), Error>)> = vec![
        ("get", other_handle.get("k").await.map(drop)),
        ("range", store.range("").await.map(drop)),
        ("put", store.put("k", b"v".to_vec(), None).await.map(drop)),
        ("delete", store.delete("k").await.map(drop)),
        ("txn", store.txn(Txn::new()).await.map(drop)),
        ("revision", store.revision().await.map(drop)),
        ("compacted_revision", store.compacted_revision().await.map(drop)),
        ("watch", store.watch("", 0).await.map(drop)),
        ("lease_grant", store.lease_grant(Duration::from_secs(5)).await.map(drop)),
        ("lease_keep_alive", store.lease_keep_alive(lease.id).await.map(drop)),
        ("lease_revoke", store.lease_revoke(lease.id).await.map(drop)),
        ("leases", store.leases().await.map(drop)),
    ];
    for (call, result) in results {
        assert!(matches!(result, Err(Error::Closed)), "{call}: {result:?}");
    }
    // Shutting down twice is harmless.
    store.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams() {
    let (_dir, store) = support::store();
    store.put("k", b"v".to_vec(), None).await.unwrap();
    let mut live = store.watch("", 0).await.unwrap();
    let mut replaying = store.watch("", 1).await.unwrap();
    let waiting = tokio::spawn(async move { live.next().await.map(|item| item.is_ok()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.shutdown().await;

    let ended = tokio::time::timeout(Duration::from_secs(2), waiting).await;
    assert_eq!(ended.expect("the live watch ends").unwrap(), None);
    let next = tokio::time::timeout(Duration::from_secs(2), replaying.next()).await;
    assert!(next.expect("the replaying watch ends").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_queued_writes() {
    let (dir, store) = support::store();
    let store = Arc::new(store);
    let mut writes = Vec::new();
    for i in 0..50 {
        let store = Arc::clone(&store);
        writes.push(tokio::spawn(async move {
            let key = format!("k/{i}");
            (key.clone(), store.put(&key, Vec::new(), None).await)
        }));
    }
    tokio::task::yield_now().await;
    store.shutdown().await;

    let mut acknowledged = Vec::new();
    for write in writes {
        match write.await.unwrap() {
            (key, Ok(revision)) => acknowledged.push((key, revision)),
            (_, Err(Error::Closed)) => {}
            (key, Err(e)) => panic!("{key}: {e}"),
        }
    }
    drop(store);
    let store = RedbStore::open(&support::db_path(&dir), Options::default()).unwrap();
    for (key, revision) in acknowledged {
        assert_eq!(store.get(&key).await.unwrap().unwrap().mod_revision, revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_commits() {
    let (_dir, store) = support::store();
    let store = Arc::new(store);
    let mut writes = Vec::new();
    for i in 0..64 {
        let store = Arc::clone(&store);
        writes.push(tokio::spawn(async move { store.put(&format!("k/{i}"), Vec::new(), None).await }));
    }
    let mut revisions = Vec::new();
    for write in writes {
        revisions.push(write.await.unwrap().unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=64).collect::<Vec<_>>(), "one revision per write");
    let stats = store.stats();
    assert_eq!(stats.writes, 64);
    assert!(stats.commits * 2 <= stats.writes, "no group commit: {stats:?}");
}
