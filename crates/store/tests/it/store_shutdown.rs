//! Shutting down: queued writes finish, later calls fail, watches end.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    // Most likely parked in `next` by now, the case this is about; a watch
    // that has not started waiting must end all the same, so this sleep
    // cannot make the test pass wrongly, only test the other case.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.shutdown().await;

    let ended = tokio::time::timeout(Duration::from_secs(2), waiting).await;
    assert_eq!(ended.expect("the live watch ends").unwrap(), None);
    let next = tokio::time::timeout(Duration::from_secs(2), replaying.next()).await;
    assert!(next.expect("the replaying watch ends").is_none());
}

/// Writers keep writing while the store shuts down: every write it
/// acknowledged is in the file after reopening, and no write it refused
/// (`Closed`) is. The writers are still writing when shutdown starts (each
/// ends on `Closed`), and some writes were acknowledged, so neither half of
/// the check can hold vacuously.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_queued_writes() {
    const WRITERS: usize = 8;
    let (dir, store) = support::store();
    let store = Arc::new(store);
    let acknowledged_so_far = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, counter) = (Arc::clone(&store), Arc::clone(&acknowledged_so_far));
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                let key = format!("k/{w}/{i:06}");
                match store.put(&key, Vec::new(), None).await {
                    Ok(revision) => {
                        acknowledged.push((key, revision));
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(Error::Closed) => return (acknowledged, key),
                    Err(e) => panic!("{key}: {e}"),
                }
            }
            unreachable!("the writes go on until the store is closed")
        }));
    }
    // Shut down in the middle of the load, once it is well under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acknowledged_so_far.load(Ordering::SeqCst) < 100 {
        assert!(tokio::time::Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    store.shutdown().await;

    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for writer in writers {
        let (acked, closed) = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("every writer ends once the store is closed")
            .unwrap();
        acknowledged.extend(acked);
        refused.push(closed);
    }
    assert!(acknowledged.len() >= 100, "only {} writes were acknowledged", acknowledged.len());
    assert_eq!(refused.len(), WRITERS, "each writer was still writing when the store closed");
    drop(store);

    let store = RedbStore::open(&support::db_path(&dir), Options::default()).unwrap();
    for (key, revision) in &acknowledged {
        let kv = store.get(key).await.unwrap().unwrap_or_else(|| panic!("acknowledged {key} was lost"));
        assert_eq!(kv.mod_revision, *revision, "{key}");
    }
    for key in &refused {
        assert!(store.get(key).await.unwrap().is_none(), "{key} was refused as Closed but written");
    }
    let stored = store.range("k/").await.unwrap().kvs.len();
    assert_eq!(stored, acknowledged.len(), "the file holds writes that were never acknowledged");
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
