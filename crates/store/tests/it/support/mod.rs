//! Helpers shared by the store's integration tests.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub(crate) mod etcd;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hearth_store::redb::{Options, RedbStore};
use hearth_store::{Event, EventKind, Revision, Store, WatchStream};
use tempfile::TempDir;

/// The backends the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Redb,
    Etcd,
}

/// A fresh, empty store on one backend, with what keeps it alive: a
/// temporary directory, or an etcd of its own (revisions are global to an
/// etcd, and the tests count them, so no two tests share one).
pub(crate) struct TestStore {
    pub(crate) backend: Backend,
    store: Arc<dyn Store>,
    /// The revision of the empty store: 0 for redb, 1 for a fresh etcd.
    pub(crate) base: Revision,
    /// How many revisions of history the store keeps (`u64::MAX`: all).
    history: u64,
    pub(crate) etcd: Option<hearth_store::etcd::EtcdStore>,
    _dir: Option<TempDir>,
    _server: Option<etcd::Etcd>,
}

impl Deref for TestStore {
    type Target = dyn Store;
    fn deref(&self) -> &dyn Store {
        &*self.store
    }
}

impl Backend {
    /// A fresh store.
    pub(crate) async fn store(self) -> TestStore {
        self.store_with(Options::default()).await
    }

    /// A fresh store; `options` tune the redb backend, and etcd keeps as
    /// much history as `options.history_revisions` says when the test calls
    /// [`TestStore::compact`].
    pub(crate) async fn store_with(self, options: Options) -> TestStore {
        let history = options.history_revisions;
        match self {
            Backend::Redb => {
                let (dir, store) = store_with(options);
                TestStore {
                    backend: self,
                    store: Arc::new(store),
                    base: 0,
                    history,
                    etcd: None,
                    _dir: Some(dir),
                    _server: None,
                }
            }
            Backend::Etcd => {
                let server = etcd::Etcd::start().await;
                // Not the default namespace, so stripping it is tested.
                let store = server.store("/test/ns/").await;
                let base = store.revision().await.expect("read the revision");
                TestStore {
                    backend: self,
                    store: Arc::new(store.clone()),
                    base,
                    history,
                    etcd: Some(store),
                    _dir: None,
                    _server: Some(server),
                }
            }
        }
    }
}

impl TestStore {
    /// The store's `n`th revision since it was empty.
    pub(crate) fn r(&self, n: u64) -> Revision {
        self.base + n
    }

    /// The store as the subsystems hold it.
    pub(crate) fn arc(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Drops history older than the store keeps: redb does it by itself
    /// as it writes; etcd is compacted by its operator, here the test.
    pub(crate) async fn compact(&self) {
        if let Some(etcd) = &self.etcd {
            let current = etcd.revision().await.unwrap();
            let oldest = current.saturating_sub(self.history) + 1;
            etcd.compact(oldest).await.expect("compact etcd");
        }
    }
}

/// Runs each named `async fn(Backend)` on both backends, as
/// `redb::NAME` and `etcd::NAME` (`cargo test -p hearth-store --test it --
/// etcd::` runs only the etcd ones).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::support::Backend::Redb).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::support::Backend::Etcd).await
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

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
