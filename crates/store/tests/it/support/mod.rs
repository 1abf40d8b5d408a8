//! Helpers shared by the store's integration tests.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use hearth_store::redb::{Options, RedbStore};
use hearth_store::{Event, EventKind, WatchStream};
use tempfile::TempDir;

/// A store in a fresh temporary directory. Keep the directory alive for as
/// long as the store.
pub(crate) fn store() -> (TempDir, RedbStore) {
    store_with(Options::default())
}

pub(crate) fn store_with(options: Options) -> (TempDir, RedbStore) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = RedbStore::open(&dir.path().join("state.redb"), options).expect("open the store");
    (dir, store)
}

/// The database file inside a directory made by [`store`].
pub(crate) fn db_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("state.redb")
}

/// Takes exactly `n` events, failing the test if they do not come quickly.
pub(crate) async fn take(stream: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(event))) => events.push(event),
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", events.len()),
            Ok(None) => panic!("watch ended after {} of {n} events", events.len()),
            Err(_) => panic!("timed out after {} of {n} events", events.len()),
        }
    }
    events
}

/// Asserts that nothing arrives on `stream` for a little while.
pub(crate) async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
        panic!("expected no event, got {item:?}");
    }
}

/// An event as `(revision, kind, key, value)`, for compact assertions.
pub(crate) fn brief(event: &Event) -> (u64, EventKind, String, String) {
    (
        event.revision(),
        event.kind,
        event.kv.key.clone(),
        String::from_utf8_lossy(&event.kv.value).into_owned(),
    )
}
