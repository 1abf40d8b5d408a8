//! A store for tests that breaks its watches on demand.
//!
//! This is a fake in the sense of DESIGN.md's ground rules: a watch that
//! breaks (a lost etcd connection, a leader change, a daemon's watch that
//! errs) cannot be produced on purpose with the embedded store, so
//! [`Breaking`] wraps a real store and produces it. Everything else is the
//! real store underneath.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::watch;

use crate::{Error, KeyValue, Lease, LeaseId, Range, Revision, Store, Txn, TxnResponse, WatchStream};

/// A real store whose watches can be broken, and refused, on demand.
pub struct Breaking {
    inner: Arc<dyn Store>,
    /// Bumped by every [`Breaking::break_watches`]; each open watch ends
    /// with an error when it changes.
    generation: watch::Sender<u64>,
    /// While set, opening a watch fails.
    refusing: AtomicBool,
    /// Watches opened so far.
    opened: AtomicU64,
    /// Watches refused so far.
    refused: AtomicU64,
    /// The most events a watch hands out before it breaks by itself (0: no
    /// limit).
    events_per_watch: AtomicUsize,
}

impl std::fmt::Debug for Breaking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaking")
            .field("generation", &*self.generation.borrow())
            .field("refusing", &self.refusing)
            .field("opened", &self.opened)
            .finish()
    }
}

impl Breaking {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Arc<Breaking> {
        Arc::new(Breaking {
            inner,
            generation: watch::Sender::new(0),
            refusing: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            events_per_watch: AtomicUsize::new(0),
        })
    }

    /// Breaks every open watch: each hands out an error and ends.
    pub fn break_watches(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Breaks every open watch and refuses new ones until
    /// [`Breaking::heal`]: a store that is unreachable for a while.
    pub fn go_down(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.break_watches();
    }

    /// Makes every watch opened from now on break by itself after handing
    /// out a few events: 1 for the first, 2 for the next, and so on up to
    /// `events`, then 1 again (0: never). So watches break everywhere, also
    /// between two events of one transaction, and yet a follower that
    /// resumes in the middle of one can get past it.
    pub fn break_every(&self, events: usize) {
        self.events_per_watch.store(events, Ordering::SeqCst);
    }

    /// Accepts watches again.
    pub fn heal(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }

    /// How many watches have been opened, in all.
    pub fn watches_opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    /// How many watches have been refused, in all.
    pub fn watches_refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Waits until `done` holds, for at most `timeout`; true if it did.
    pub async fn until(&self, timeout: Duration, done: impl Fn(&Breaking) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

#[async_trait]
impl Store for Breaking {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        self.inner.get(key).await
    }

    async fn range(&self, prefix: &str) -> Result<Range, Error> {
        self.inner.range(prefix).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, Error> {
        self.inner.put(key, value, lease).await
    }

    async fn delete(&self, key: &str) -> Result<(Revision, bool), Error> {
        self.inner.delete(key).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        self.inner.txn(txn).await
    }

    async fn revision(&self) -> Result<Revision, Error> {
        self.inner.revision().await
    }

    async fn compacted_revision(&self) -> Result<Revision, Error> {
        self.inner.compacted_revision().await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, Error> {
        if self.refusing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Backend("the test store refuses watches".into()));
        }
        let watch = self.inner.watch(prefix, from).await?;
        self.opened.fetch_add(1, Ordering::SeqCst);
        let mut generation = self.generation.subscribe();
        generation.mark_unchanged();
        let broken = async move {
            let _ = generation.changed().await;
        };
        let limit = match self.events_per_watch.load(Ordering::SeqCst) {
            0 => usize::MAX,
            n => (self.opened.load(Ordering::SeqCst) as usize % n) + 1,
        };
        // The inner watch until the generation changes or the limit is
        // reached, then one error.
        let stream = watch.take(limit).take_until(Box::pin(broken)).chain(futures::stream::once(async {
            Err(Error::Backend("the test store broke this watch".into()))
        }));
        Ok(stream.boxed())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, Error> {
        self.inner.lease_grant(ttl).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, Error> {
        self.inner.lease_keep_alive(id).await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, Error> {
        self.inner.lease_revoke(id).await
    }

    async fn leases(&self) -> Result<Vec<Lease>, Error> {
        self.inner.leases().await
    }
}
