//! The embedded backend: the whole store in one redb file.
//!
//! Three pieces, one module each:
//!
//! - `writer`: one thread owns every mutation. It group-commits whatever is
//!   queued in one fsynced redb transaction, one revision per request, and
//!   also expires leases. Only it assigns revisions.
//! - `watch`: an in-memory ring of recent events in front of the on-disk
//!   event log, and the cursor-based streams watchers pull from.
//! - `schema`: the tables, encodings and error mapping.
//!
//! Reads do not go through the writer: each opens its own redb read
//! transaction, a consistent snapshot that never waits for a write.

mod schema;
mod watch;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::redb::{Database, DatabaseError, Durability, ReadableDatabase};
use async_trait::async_trait;
use tokio::sync::oneshot;

use self::schema::{KV, META, Meta};
use self::watch::{Progress, Ring};
use self::writer::{Request, Writer};
use crate::{
    Error, KeyValue, Lease, LeaseId, Op, Range, Revision, Store, Txn, TxnResponse, WatchStream, validate,
};

/// Tuning for [`RedbStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// How many revisions of events are kept on disk for watches to replay.
    /// A watch can start at most this many revisions in the past; with 0,
    /// watches can only follow what happens after they start. The log holds
    /// whole values, so this also bounds the file's overhead.
    pub history_revisions: u64,
    /// The most writes committed together in one fsync.
    pub max_batch: usize,
    /// How many recent revisions' events are kept in memory, so that live
    /// watchers do not read the disk.
    pub cache_revisions: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { history_revisions: 100_000, max_batch: 256, cache_revisions: 4096 }
    }
}

/// Bounds the in-memory event cache by size as well as revisions, so that a
/// few revisions with large values cannot pin much memory.
const CACHE_BYTES: usize = 64 << 20;

/// The embedded store: a cheap-to-clone handle to one redb file.
///
/// The background writer thread stops, and the file is released, on
/// [`RedbStore::shutdown`] or when the last handle is dropped.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

struct Inner {
    path: PathBuf,
    /// Set by `shutdown`, after which every call fails with `Closed`.
    closing: AtomicBool,
    /// The writer's queue. Dropping the sender is how the writer learns to
    /// stop: it drains what is queued, then exits.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

/// State the writer thread, the handles and the watch streams share. It
/// holds no request sender, so watch streams never keep the writer alive.
#[derive(Debug)]
struct Shared {
    /// `None` once the writer has exited.
    db: RwLock<Option<Arc<Database>>>,
    ring: Mutex<Ring>,
    progress: tokio::sync::watch::Receiver<Progress>,
    /// The live leases and when they expire. The writer inserts and removes
    /// entries when it commits grants and revocations; keep-alives only move
    /// deadlines.
    leases: Mutex<HashMap<LeaseId, LeaseClock>>,
    counters: Counters,
}

/// Counters of the writer's work, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// redb transactions committed (one fsync each).
    pub commits: u64,
    /// Requests and lease expiries those commits handled, whether or not each
    /// changed anything.
    pub writes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct LeaseClock {
    ttl: Duration,
    deadline: Instant,
}

impl Shared {
    fn db(&self) -> Result<Arc<Database>, Error> {
        self.db.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or(Error::Closed)
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file if it does not exist.
    ///
    /// Fails with [`Error::Locked`] if another process (or another handle in
    /// this one) has the file open.
    pub fn open(path: &Path, options: Options) -> Result<RedbStore, Error> {
        let open_error =
            |source: Box<dyn std::error::Error + Send + Sync>| Error::Open { path: path.to_owned(), source };
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(Error::Locked { path: path.to_owned() });
            }
            Err(e) => return Err(open_error(Box::new(e))),
        };
        // A file from an incompatible version is reported as such; any other
        // failure this early is a failure to open.
        let init = || -> Result<(Meta, HashMap<LeaseId, LeaseClock>), Error> {
            let mut txn = db.begin_write().map_err(schema::db)?;
            txn.set_durability(Durability::Immediate).map_err(schema::db)?;
            schema::init(&txn)?;
            txn.commit().map_err(schema::db)?;
            Ok((schema::read_meta(&db)?, writer::load_leases(&db)?))
        };
        let (meta, leases) = init().map_err(|e| match e {
            Error::Corrupt(_) => e,
            other => open_error(Box::new(other)),
        })?;

        let db = Arc::new(db);
        let (progress_tx, progress_rx) =
            tokio::sync::watch::channel(Progress { revision: meta.revision, closed: false });
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::clone(&db))),
            ring: Mutex::new(Ring::new(options.cache_revisions.max(1), CACHE_BYTES)),
            progress: progress_rx,
            leases: Mutex::new(leases),
            counters: Counters::default(),
        });
        let (requests_tx, requests_rx) = mpsc::channel();
        let writer = Writer {
            db,
            shared: Arc::clone(&shared),
            requests: requests_rx,
            progress: progress_tx,
            history_revisions: options.history_revisions,
            max_batch: options.max_batch.max(1),
            expiry_paused_until: None,
        };
        let writer = std::thread::Builder::new()
            .name("hearth-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| open_error(Box::new(e)))?;
        tracing::debug!(path = %path.display(), revision = meta.revision, "Opened the store.");
        Ok(RedbStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                closing: AtomicBool::new(false),
                requests: Mutex::new(Some(requests_tx)),
                writer: Mutex::new(Some(writer)),
                shared,
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Finishes the queued writes, stops the background work and releases
    /// the file. Every later call on any handle fails with [`Error::Closed`],
    /// and watch streams end.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        drop(self.inner.requests.lock().unwrap_or_else(PoisonError::into_inner).take());
        let mut progress = self.inner.shared.progress.clone();
        // An error means the writer is gone already, which is what we wait for.
        let _ = progress.wait_for(|progress| progress.closed).await;
    }

    /// How much the writer has done since the store was opened.
    pub fn stats(&self) -> Stats {
        let counters = &self.inner.shared.counters;
        Stats {
            commits: counters.commits.load(Ordering::Relaxed),
            writes: counters.writes.load(Ordering::Relaxed),
        }
    }

    fn db(&self) -> Result<Arc<Database>, Error> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        self.inner.shared.db()
    }

    /// Hands a request to the writer and waits for its answer.
    async fn call<T>(&self, request: impl FnOnce(writer::Reply<T>) -> Request) -> Result<T, Error> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let (reply, answer) = oneshot::channel();
        {
            let requests = self.inner.requests.lock().unwrap_or_else(PoisonError::into_inner);
            let requests = requests.as_ref().ok_or(Error::Closed)?;
            requests.send(request(reply)).map_err(|_| Error::Closed)?;
        }
        // A dropped reply means the writer died without answering.
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn write(&self, txn: Txn) -> Result<TxnResponse, Error> {
        self.call(|reply| Request::Txn { txn, reply }).await
    }

    fn meta(&self) -> Result<Meta, Error> {
        schema::read_meta(&*self.db()?)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.requests.get_mut().unwrap_or_else(PoisonError::into_inner).take());
        // Wait for the writer so that the file is released when the last
        // handle is gone, not at some later point. It only has the queued
        // writes left to finish, and never waits on a handle.
        if let Some(writer) = self.writer.get_mut().unwrap_or_else(PoisonError::into_inner).take()
            && writer.join().is_err()
        {
            tracing::error!("The store's writer thread panicked.");
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        validate::key(key)?;
        // A point read is a few page lookups: cheaper inline than a hop to
        // the blocking pool.
        let db = self.db()?;
        let txn = db.begin_read().map_err(schema::db)?;
        let table = txn.open_table(KV).map_err(schema::db)?;
        Ok(schema::get_kv(&table, key)?.map(|stored| stored.into_kv(key.to_owned())))
    }

    async fn range(&self, prefix: &str) -> Result<Range, Error> {
        validate::prefix(prefix)?;
        let db = self.db()?;
        let prefix = prefix.to_owned();
        // A range can be arbitrarily large; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(schema::db)?;
            let meta = Meta::read(&txn.open_table(META).map_err(schema::db)?)?;
            let kvs = schema::range_kv(&txn.open_table(KV).map_err(schema::db)?, &prefix)?;
            Ok(Range { kvs, revision: meta.revision })
        })
        .await
        .map_err(|e| Error::Backend(Box::new(e)))?
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, Error> {
        validate::key(key)?;
        validate::value(key, &value)?;
        let txn = Txn::new().and_then(Op::Put { key: key.to_owned(), value, lease });
        Ok(self.write(txn).await?.revision)
    }

    async fn delete(&self, key: &str) -> Result<(Revision, bool), Error> {
        validate::key(key)?;
        let response = self.write(Txn::new().and_then(Op::Delete { key: key.to_owned() })).await?;
        let deleted =
            matches!(response.responses.first(), Some(crate::OpResponse::Delete { deleted }) if *deleted > 0);
        Ok((response.revision, deleted))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        validate::txn(&txn)?;
        self.write(txn).await
    }

    async fn revision(&self) -> Result<Revision, Error> {
        Ok(self.meta()?.revision)
    }

    async fn compacted_revision(&self) -> Result<Revision, Error> {
        Ok(self.meta()?.oldest())
    }

    /// `from = 0` means "only what happens next" (`current + 1`).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, Error> {
        validate::prefix(prefix)?;
        // The revision on disk, not the one announced to watchers: a caller
        // may have read a revision that is committed but not announced yet,
        // and watching from just after it is not a request for the future.
        let meta = self.meta()?;
        let from = if from == 0 { meta.revision + 1 } else { from };
        if from > meta.revision + 1 {
            return Err(Error::FutureRevision { requested: from, current: meta.revision });
        }
        if from < meta.oldest() {
            return Err(Error::Compacted { requested: from, oldest: meta.oldest() });
        }
        Ok(watch::stream(Arc::clone(&self.inner.shared), prefix.to_owned(), from))
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, Error> {
        validate::ttl(ttl)?;
        self.call(|reply| Request::LeaseGrant { ttl, reply }).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, Error> {
        self.db()?;
        let mut leases = self.inner.shared.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let lease = leases.get_mut(&id).ok_or(Error::LeaseNotFound(id))?;
        // A lease past its deadline is as good as gone, even if the writer
        // has not got round to revoking it yet.
        let now = Instant::now();
        if lease.deadline <= now {
            return Err(Error::LeaseNotFound(id));
        }
        lease.deadline = now + lease.ttl;
        Ok(Lease { id, ttl: lease.ttl, remaining: lease.ttl })
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, Error> {
        self.call(|reply| Request::LeaseRevoke { id, reply }).await
    }

    async fn leases(&self) -> Result<Vec<Lease>, Error> {
        self.db()?;
        let now = Instant::now();
        let leases = self.inner.shared.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live: Vec<_> = leases
            .iter()
            .filter(|(_, lease)| lease.deadline > now)
            .map(|(id, lease)| Lease {
                id: *id,
                ttl: lease.ttl,
                remaining: lease.deadline.saturating_duration_since(now),
            })
            .collect();
        live.sort_by_key(|lease| lease.id);
        Ok(live)
    }
}
