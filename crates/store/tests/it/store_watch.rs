//! Watches: replay, live delivery, the handoff between them, and history
//! limits.

use crate::support::{self, Backend};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hearth_store::redb::Options;
use hearth_store::{Error, EventKind, KeyValue, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

support::on_both_backends!(
    watch_after_range_sees_every_change_once_in_order,
    watch_before_the_retained_history_is_refused,
    watch_replays_history_then_follows,
    events_carry_the_key_bookkeeping,
    watch_from_zero_or_next_sees_only_new_changes,
    watch_from_the_future_is_refused,
    watch_filters_by_prefix,
);

/// The writes the test made, by the revision each produced.
type Log = BTreeMap<u64, (String, EventKind)>;

/// The reader's view of one round: the revision of its initial range, the
/// revision of its marker write, and what the watch delivered in between.
struct Round {
    from: u64,
    marker: u64,
    seen: Vec<(u64, String, EventKind)>,
}

/// Writers race a reader that, over and over, takes `range(prefix)` at R,
/// starts `watch(prefix, R + 1)`, then folds the events into its snapshot up
/// to the revision of a later range and checks the two agree. Afterwards,
/// every round's events are checked against the log of all writes: each
/// revision under the prefix exactly once, in order, none missing.
///
/// A watch that started at the current revision instead of `from`, or that
/// delivered live events without first replaying the ones in between,
/// misses the writes made between the range and the watch.
///
/// Run twice: with the default in-memory cache the replay comes from memory;
/// with a tiny one it comes from the on-disk log and then switches over.
async fn watch_after_range_sees_every_change_once_in_order(backend: Backend) {
    check_range_then_watch(backend, Options::default()).await;
    if backend == Backend::Redb {
        check_range_then_watch(backend, Options { cache_revisions: 2, ..Options::default() }).await;
    }
}

async fn check_range_then_watch(backend: Backend, options: Options) {
    let test = backend.store_with(options).await;
    let store: Arc<dyn Store> = test.arc();
    let keys = ["w/a", "w/b", "w/c", "w/d", "x/a", "x/b"];
    let log = Arc::new(Mutex::new(Log::new()));
    let stop = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for seed in 0..4 {
        let (store, log, stop) = (Arc::clone(&store), Arc::clone(&log), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            while !stop.load(Ordering::Relaxed) {
                let key = keys[rng.random_range(0..keys.len())];
                if rng.random_bool(0.7) {
                    let value = rng.random::<u32>().to_string().into_bytes();
                    let revision = store.put(key, value, None).await.unwrap();
                    log.lock().unwrap().insert(revision, (key.to_owned(), EventKind::Put));
                } else {
                    let (revision, existed) = store.delete(key).await.unwrap();
                    if existed {
                        log.lock().unwrap().insert(revision, (key.to_owned(), EventKind::Delete));
                    }
                }
            }
        }));
    }

    let mut rng = StdRng::seed_from_u64(99);
    let mut rounds = Vec::new();
    for round in 0..12 {
        let snapshot = store.range("w/").await.unwrap();
        // Let the writers move on before the watch starts, so that the
        // replay has something to replay.
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..10))).await;
        let mut watch = store.watch("w/", snapshot.revision + 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
        let target = store.range("w/").await.unwrap();
        // A write of our own after the target, so we know when to stop.
        let marker_key = format!("w/marker/{round}");
        let marker = store.put(&marker_key, Vec::new(), None).await.unwrap();
        log.lock().unwrap().insert(marker, (marker_key.clone(), EventKind::Put));
        assert!(marker > target.revision);

        let mut state: BTreeMap<String, KeyValue> =
            snapshot.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
                .await
                .expect("the marker arrives")
                .expect("the watch goes on")
                .expect("no watch error");
            let revision = event.revision();
            assert!(revision > snapshot.revision, "round {round}: event {event:?} predates the range");
            if let Some((last, _, _)) = seen.last() {
                // Every write here touches one key, so one event per revision.
                assert!(revision > *last, "round {round}: revision {revision} after {last}");
            }
            seen.push((revision, event.kv.key.clone(), event.kind));
            if revision > marker {
                panic!("round {round}: skipped past the marker at {marker} to {revision}");
            }
            if revision == marker {
                break;
            }
            if revision <= target.revision {
                match event.kind {
                    EventKind::Put => state.insert(event.kv.key.clone(), event.kv),
                    EventKind::Delete => state.remove(&event.kv.key),
                };
            }
        }
        let folded: Vec<_> = state.into_values().collect();
        assert_eq!(folded, target.kvs, "round {round}: snapshot + events != range at {}", target.revision);
        rounds.push(Round { from: snapshot.revision + 1, marker, seen });
    }

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let last = store.revision().await.unwrap();
    let log = log.lock().unwrap();
    // Every revision was produced by exactly one acknowledged write.
    assert_eq!(log.keys().copied().collect::<Vec<_>>(), (test.r(1)..=last).collect::<Vec<_>>());
    let mut replayed = 0;
    for (i, round) in rounds.iter().enumerate() {
        let expected: Vec<_> = log
            .range(round.from..=round.marker)
            .filter(|(_, (key, _))| key.starts_with("w/"))
            .map(|(revision, (key, kind))| (*revision, key.clone(), *kind))
            .collect();
        assert_eq!(round.seen, expected, "round {i}: events versus the log");
        replayed += usize::from(round.seen.len() > 1);
    }
    // The test only proves something if the rounds had changes to replay.
    assert!(replayed >= rounds.len() / 2, "only {replayed} rounds saw writes");
}

async fn watch_replays_history_then_follows(backend: Backend) {
    let store = backend.store().await;
    store.put("a", b"1".to_vec(), None).await.unwrap();
    store.put("b", b"1".to_vec(), None).await.unwrap();
    store.delete("a").await.unwrap();
    store.put("a", b"2".to_vec(), None).await.unwrap();

    let mut watch = store.watch("a", store.r(1)).await.unwrap();
    store.put("a", b"3".to_vec(), None).await.unwrap();
    let events: Vec<_> = support::take(&mut watch, 4).await.iter().map(support::brief).collect();
    assert_eq!(
        events,
        [
            (store.r(1), EventKind::Put, "a".into(), "1".into()),
            (store.r(3), EventKind::Delete, "a".into(), String::new()),
            (store.r(4), EventKind::Put, "a".into(), "2".into()),
            (store.r(5), EventKind::Put, "a".into(), "3".into()),
        ]
    );
    support::assert_quiet(&mut watch).await;
}

async fn events_carry_the_key_bookkeeping(backend: Backend) {
    let store = backend.store().await;
    let mut watch = store.watch("", 0).await.unwrap();
    store.put("k", b"1".to_vec(), None).await.unwrap();
    store.put("k", b"2".to_vec(), None).await.unwrap();
    store.delete("k").await.unwrap();
    let events = support::take(&mut watch, 3).await;
    assert_eq!(events[1].kv, store_kv("k", "2", store.r(1), store.r(2), 2));
    assert_eq!(events[2].kind, EventKind::Delete);
    assert_eq!(events[2].kv, store_kv("k", "", 0, store.r(3), 0));
}

fn store_kv(key: &str, value: &str, create: u64, modified: u64, version: u64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: None,
    }
}

async fn watch_from_zero_or_next_sees_only_new_changes(backend: Backend) {
    let store = backend.store().await;
    store.put("k", b"old".to_vec(), None).await.unwrap();
    let mut from_zero = store.watch("", 0).await.unwrap();
    let mut from_next = store.watch("", store.r(2)).await.unwrap();
    store.put("k", b"new".to_vec(), None).await.unwrap();
    for watch in [&mut from_zero, &mut from_next] {
        let events: Vec<_> = support::take(watch, 1).await.iter().map(support::brief).collect();
        assert_eq!(events, [(store.r(2), EventKind::Put, "k".into(), "new".into())]);
    }
}

async fn watch_from_the_future_is_refused(backend: Backend) {
    let store = backend.store().await;
    store.put("k", b"v".to_vec(), None).await.unwrap();
    let error = store.watch("", store.r(3)).await.err().expect("revision 3 is in the future");
    let (requested, current) = (store.r(3), store.r(1));
    assert!(
        matches!(error, Error::FutureRevision { requested: r, current: c } if (r, c) == (requested, current)),
        "{error}"
    );
}

async fn watch_before_the_retained_history_is_refused(backend: Backend) {
    let store = backend.store_with(Options { history_revisions: 3, ..Options::default() }).await;
    for i in 0..10 {
        store.put("k", vec![i], None).await.unwrap();
    }
    store.compact().await;
    assert_eq!(store.compacted_revision().await.unwrap(), store.r(8));
    let error = store.watch("", store.r(7)).await.err().expect("revision 7 is compacted");
    let (requested, oldest) = (store.r(7), store.r(8));
    assert!(
        matches!(error, Error::Compacted { requested: r, oldest: o } if (r, o) == (requested, oldest)),
        "{error}"
    );

    let mut watch = store.watch("", store.r(8)).await.unwrap();
    let revisions: Vec<_> = support::take(&mut watch, 3).await.iter().map(|e| e.revision()).collect();
    assert_eq!(revisions, [store.r(8), store.r(9), store.r(10)]);
}

/// A watcher that falls behind the in-memory cache reads the on-disk log,
/// and one that falls behind the log gets `Compacted` and ends. Embedded
/// only: etcd's server keeps a lagging watcher's events for it.
#[tokio::test]
async fn lagging_watchers_read_the_log_until_it_is_compacted() {
    let options = Options { history_revisions: 20, cache_revisions: 2, ..Options::default() };
    let (_dir, store) = support::store_with(options);
    let mut slow = store.watch("", 1).await.unwrap();
    let mut slower = store.watch("", 1).await.unwrap();
    for i in 0..10u8 {
        store.put("k", vec![i], None).await.unwrap();
    }
    let revisions: Vec<_> = support::take(&mut slow, 10).await.iter().map(|e| e.revision()).collect();
    assert_eq!(revisions, (1..=10).collect::<Vec<_>>());

    for i in 0..30u8 {
        store.put("k", vec![i], None).await.unwrap();
    }
    let next = tokio::time::timeout(Duration::from_secs(5), slower.next()).await.unwrap();
    let error = next.expect("an item").expect_err("revision 1 is compacted");
    assert!(matches!(error, Error::Compacted { requested: 1, oldest: 21 }), "{error}");
    assert!(slower.next().await.is_none(), "the watch ends after the error");
}

async fn watch_filters_by_prefix(backend: Backend) {
    let store = backend.store().await;
    let mut watch = store.watch("apps/", 0).await.unwrap();
    for key in ["apps/a", "app", "apps", "machines/x", "apps/b/c"] {
        store.put(key, b"v".to_vec(), None).await.unwrap();
    }
    let keys: Vec<_> = support::take(&mut watch, 2).await.into_iter().map(|e| e.kv.key).collect();
    assert_eq!(keys, ["apps/a", "apps/b/c"]);
    support::assert_quiet(&mut watch).await;
}

/// A watcher that is never polled must not hold up writers.
#[tokio::test]
async fn an_idle_watcher_does_not_block_writes() {
    let options = Options { cache_revisions: 4, ..Options::default() };
    let (_dir, store) = support::store_with(options);
    let _idle = store.watch("", 0).await.unwrap();
    let write_all = async {
        for i in 0..50u8 {
            store.put("k", vec![i], None).await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), write_all).await.expect("writes finish");
}
