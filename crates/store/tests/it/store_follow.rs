//! `Follower`: every change under a prefix, once, in order, whatever happens
//! to the watches underneath. Tests named as the sentences of its policy.

use crate::support::{self, Backend, TestStore};

use std::sync::Arc;
use std::time::Duration;

use hearth_store::redb::Options;
use hearth_store::testing::Breaking;
use hearth_store::{Change, Follower, Op, Revision, Store, Txn};

support::on_both_backends!(
    every_change_is_handed_out_once_in_order_even_when_a_watch_breaks_inside_a_transaction,
    a_watch_broken_while_following_is_opened_again_after_the_last_change,
    a_store_that_refuses_watches_for_a_while_loses_nothing_written_meanwhile,
    a_follower_dropped_by_select_loses_nothing,
    history_compacted_away_is_re_read_as_a_reset_then_followed_on,
    from_now_hands_out_only_what_is_written_after_it_returns_and_only_under_the_prefix,
);

/// The next change, failing the test if none comes within 5 s.
async fn next(follower: &mut Follower) -> Change {
    tokio::time::timeout(Duration::from_secs(5), follower.next()).await.expect("a change within 5 s")
}

/// `(revision, key)` of the next `n` events, failing on a reset.
async fn events(follower: &mut Follower, n: usize) -> Vec<(Revision, String)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match next(follower).await {
            Change::Event(event) => seen.push((event.revision(), event.kv.key)),
            Change::Reset(range) => panic!("unexpected reset at {}", range.revision),
        }
    }
    seen
}

async fn breaking(backend: Backend) -> (TestStore, Arc<Breaking>) {
    let test = backend.store().await;
    let store = Breaking::new(test.arc());
    (test, store)
}

/// Three puts in one transaction: three events of one revision.
async fn put_three(store: &dyn Store, round: usize) -> Revision {
    let ops =
        (0..3).map(|i| Op::Put { key: format!("app/{round}-{i}"), value: vec![], lease: None }).collect();
    store.txn(Txn { compares: vec![], success: ops, failure: vec![] }).await.unwrap().revision
}

async fn every_change_is_handed_out_once_in_order_even_when_a_watch_breaks_inside_a_transaction(
    backend: Backend,
) {
    let (_test, store) = breaking(backend).await;
    // Every watch breaks after one to four events: often between two events
    // of a transaction.
    store.break_every(4);
    let mut follower = Follower::new(store.clone(), "app/", 1, "test");
    let mut want = Vec::new();
    for round in 0..5 {
        let revision = put_three(&*store, round).await;
        want.extend((0..3).map(|i| (revision, format!("app/{round}-{i}"))));
        store.put("other/x", vec![], None).await.unwrap();
    }
    assert_eq!(events(&mut follower, want.len()).await, want);
    assert!(store.watches_opened() >= 15, "the watches really broke: {} opened", store.watches_opened());
}

async fn a_watch_broken_while_following_is_opened_again_after_the_last_change(backend: Backend) {
    let (_test, store) = breaking(backend).await;
    let mut follower = Follower::from_now(store.clone(), "app/", "test").await.unwrap();
    let first = store.put("app/a", vec![], None).await.unwrap();
    assert_eq!(events(&mut follower, 1).await, [(first, "app/a".to_owned())]);
    let opened = store.watches_opened();
    store.break_watches();
    let second = store.put("app/b", vec![], None).await.unwrap();
    let third = store.put("app/c", vec![], None).await.unwrap();
    assert_eq!(events(&mut follower, 2).await, [(second, "app/b".to_owned()), (third, "app/c".to_owned())]);
    assert!(store.watches_opened() > opened, "the follower opened a new watch");
}

async fn a_store_that_refuses_watches_for_a_while_loses_nothing_written_meanwhile(backend: Backend) {
    let (_test, store) = breaking(backend).await;
    let mut follower = Follower::from_now(store.clone(), "app/", "test").await.unwrap();
    let first = store.put("app/a", vec![], None).await.unwrap();
    assert_eq!(events(&mut follower, 1).await, [(first, "app/a".to_owned())]);
    store.go_down();
    let following = tokio::spawn(async move { events(&mut follower, 2).await });
    let gap: Vec<_> = [
        (store.put("app/b", vec![], None).await.unwrap(), "app/b".to_owned()),
        (store.put("app/c", vec![], None).await.unwrap(), "app/c".to_owned()),
    ]
    .into();
    // The follower has tried, and failed, to watch again before it heals.
    assert!(store.until(Duration::from_secs(5), |s| s.watches_refused() > 0).await);
    store.heal();
    assert_eq!(following.await.unwrap(), gap);
}

async fn history_compacted_away_is_re_read_as_a_reset_then_followed_on(backend: Backend) {
    let test = backend.store_with(Options { history_revisions: 4, ..Options::default() }).await;
    let store: Arc<dyn Store> = test.arc();
    store.put("app/gone", vec![], None).await.unwrap();
    store.delete("app/gone").await.unwrap();
    for i in 0..10 {
        store.put(&format!("app/{i}"), vec![], None).await.unwrap();
    }
    test.compact().await;
    let mut follower = Follower::new(store.clone(), "app/", 1, "test");
    let Change::Reset(range) = next(&mut follower).await else { panic!("expected a reset") };
    assert_eq!(range.kvs.len(), 10, "every key under the prefix, and not the deleted one");
    assert!(range.kvs.iter().all(|kv| kv.key != "app/gone"));
    let later = store.put("app/later", vec![], None).await.unwrap();
    assert_eq!(events(&mut follower, 1).await, [(later, "app/later".to_owned())]);
}

async fn from_now_hands_out_only_what_is_written_after_it_returns_and_only_under_the_prefix(
    backend: Backend,
) {
    let test = backend.store().await;
    let store: Arc<dyn Store> = test.arc();
    store.put("app/before", vec![], None).await.unwrap();
    let mut follower = Follower::from_now(store.clone(), "app/", "test").await.unwrap();
    store.put("apps", vec![], None).await.unwrap();
    store.put("other/x", vec![], None).await.unwrap();
    let after = store.put("app/after", vec![], None).await.unwrap();
    assert_eq!(events(&mut follower, 1).await, [(after, "app/after".to_owned())]);
}

async fn a_follower_dropped_by_select_loses_nothing(backend: Backend) {
    let (_test, store) = breaking(backend).await;
    let mut follower = Follower::from_now(store.clone(), "app/", "test").await.unwrap();
    // Poll it and give up, as a `select!` with a timer would.
    assert!(tokio::time::timeout(Duration::from_millis(50), follower.next()).await.is_err());
    let revision = store.put("app/a", vec![], None).await.unwrap();
    assert_eq!(events(&mut follower, 1).await, [(revision, "app/a".to_owned())]);
}
