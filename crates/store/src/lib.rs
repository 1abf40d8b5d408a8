//! hearth's state store.
//!
//! The model is etcd's: a flat, ordered key space of UTF-8 keys and byte
//! values; a single global *revision* that every mutating operation advances by
//! one; compare-and-swap transactions on a key's revisions, version or value;
//! watches that replay history from any retained revision and then follow live
//! changes; and leases whose keys vanish when the lease expires.
//!
//! Everything in hearth that needs state goes through the [`Store`] trait, so
//! the embedded backend ([`redb::RedbStore`], a single file on disk) and the
//! multi-host backend ([`etcd::EtcdStore`], a real etcd cluster) are
//! interchangeable.
//!
//! **Invariant:** only this crate assigns revisions. A revision, once
//! acknowledged to a caller, is durable (fsynced) and is never reused.

mod types;

pub mod names;
mod validate;

pub mod acts;
pub mod bench;
pub mod etcd;
pub mod fenced;
pub mod follow;
pub mod redb;
pub mod testing;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use fenced::Fenced;
pub use follow::{Change, Follower};
pub use types::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, Lease, LeaseId, Op, OpResponse, Range,
    Revision, Txn, TxnResponse,
};

/// A stream of change events, in revision order, with no gaps.
///
/// Events that share a revision (the effects of one transaction) arrive
/// together, in the order the transaction applied them.
pub type WatchStream = BoxStream<'static, Result<Event, Error>>;

/// The contract every state backend fulfils.
///
/// All methods are cancel-safe from the caller's point of view: a write whose
/// future is dropped may or may not have been applied, exactly as with a
/// network store, but it is never applied twice or half-applied.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key at the current revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error>;

    /// Reads every key that starts with `prefix` (all keys for `""`), in key
    /// order, together with the revision the read was taken at.
    async fn range(&self, prefix: &str) -> Result<Range, Error>;

    /// Writes `value` at `key`, attached to `lease` if given, and returns the
    /// new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, Error>;

    /// Deletes `key`. Returns the revision after the call and whether the key
    /// existed (a delete of a missing key does not advance the revision).
    async fn delete(&self, key: &str) -> Result<(Revision, bool), Error>;

    /// Runs a compare-and-swap transaction atomically: if every comparison
    /// holds, `success` is applied, otherwise `failure`. All writes of one
    /// transaction share a single new revision.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error>;

    /// The current revision: the revision of the last acknowledged write.
    async fn revision(&self) -> Result<Revision, Error>;

    /// The oldest revision a watch can still start from.
    async fn compacted_revision(&self) -> Result<Revision, Error>;

    /// Watches every key under `prefix`, starting at revision `from`
    /// (inclusive). `from = current + 1` means "only what happens next", and
    /// so does `from = 0`, for callers that have not read a revision.
    /// A `range` at revision R followed by `watch(prefix, R + 1)` observes
    /// every change exactly once, in order.
    ///
    /// Fails with [`Error::Compacted`] if `from` is older than the retained
    /// history.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, Error>;

    /// Grants a lease that expires `ttl` after its last keep-alive.
    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, Error>;

    /// Renews a lease for another full TTL.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, Error>;

    /// Revokes a lease now, deleting every key attached to it in one revision.
    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, Error>;

    /// Lists live leases.
    async fn leases(&self) -> Result<Vec<Lease>, Error>;
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested revision is older than the retained history.
    #[error("revision {requested} has been compacted; the oldest revision still available is {oldest}")]
    Compacted { requested: Revision, oldest: Revision },

    /// The requested revision has not happened yet.
    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision { requested: Revision, current: Revision },

    /// No live lease has this id (it expired, was revoked, or never existed).
    #[error("lease {0} does not exist or has expired")]
    LeaseNotFound(LeaseId),

    /// A lease TTL outside the accepted range.
    #[error("lease TTL {0:?} is out of range (1 s to 30 days)")]
    InvalidTtl(Duration),

    /// A key that the store does not accept.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// A value larger than the store accepts.
    #[error("value for key {key:?} is {size} bytes; the limit is {limit} bytes")]
    ValueTooLarge { key: String, size: usize, limit: usize },

    /// The database file could not be opened.
    #[error("cannot open the store at {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The database file is already opened by another process.
    #[error(
        "the store at {path} is in use by another process (is another `hearth serve` running on this data dir?)"
    )]
    Locked { path: std::path::PathBuf },

    /// The backend failed to read or write.
    #[error("store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// Stored data could not be decoded: the file is corrupt or from an
    /// incompatible version.
    #[error("stored data is corrupt or from an incompatible version")]
    Corrupt(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The store has been shut down.
    #[error("the store is shut down")]
    Closed,

    /// etcd did not answer.
    #[error(
        "cannot reach etcd at {endpoints}; check that it is running and that the address, TLS and credentials options are right"
    )]
    Unavailable {
        endpoints: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// etcd refused a request: `reason` says why and what to change.
    #[error("etcd refused the request: {reason}")]
    Refused { reason: String },

    /// etcd refused hearth's credentials, token or permissions: the
    /// operator's to fix (the user, its password, its role), not the
    /// request's.
    #[error("etcd refused access: {reason}")]
    Denied { reason: String },

    /// A [`Fenced`] store refused a write because its fence no longer
    /// holds: `key` was deleted (its lease expired or was revoked) or
    /// created again by another host, so this daemon is no longer the
    /// leader. Nothing was written.
    #[error(
        "this daemon is no longer the leader (its key {key:?} no longer has create revision {token}), so its write was refused; the new leader takes over"
    )]
    Fenced { key: String, token: Revision },

    /// A transaction given to a [`Fenced`] store writes in its failure
    /// branch, which runs exactly when the fence is broken. A bug in the
    /// caller; nothing was sent to the store.
    #[error(
        "a fenced transaction writes {key:?} in its failure branch, which runs when the fence is broken; only reads may go there"
    )]
    UnfencedWrite { key: String },
}

/// Limits shared by every backend, so that behaviour does not change with the
/// backend. etcd's defaults are the model (1.5 MiB requests).
pub mod limits {
    /// Longest accepted key, in bytes.
    pub const MAX_KEY_LEN: usize = 4096;
    /// Largest accepted value, in bytes.
    pub const MAX_VALUE_LEN: usize = 1536 * 1024;
    /// Shortest lease TTL.
    pub const MIN_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
    /// Longest lease TTL.
    pub const MAX_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
}

/// Deletes all but the last `keep` keys under `prefix` (in key order, so
/// the newest of keys that start with a time), in one transaction: how
/// the bounded logs (alert history, service history, acts) stay bounded.
/// Returns how many went.
pub async fn keep_newest(store: &dyn Store, prefix: &str, keep: usize) -> Result<usize, Error> {
    let range = store.range(prefix).await?;
    let excess = range.kvs.len().saturating_sub(keep);
    if excess > 0 {
        let txn = range.kvs[..excess]
            .iter()
            .fold(Txn::new(), |txn, kv| txn.and_then(Op::Delete { key: kv.key.clone() }));
        store.txn(txn).await?;
    }
    Ok(excess)
}

/// An error and its sources on one line, `error: cause: cause`, for logs
/// and for reasons stored as text; a source whose words the message
/// already holds is not repeated. Every hearth crate logs errors this way.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
