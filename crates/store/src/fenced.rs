//! A store whose writes are made only while this daemon leads.
//!
//! Several hosts share one etcd and elect a leader: the leader holds a key
//! (such as `hosts/leader`) attached to its lease. A leader can be deposed
//! without knowing it: paused, partitioned, its lease expired and another
//! host elected. [`Fenced`] makes sure such a leader can no longer write:
//! every write it makes through the store runs in one transaction with a
//! comparison on the leader's key, the *fence*, and is made only if that
//! comparison holds when the write is applied. The check and the write are
//! atomic, so there is no window between "am I still the leader?" and the
//! write for another host to be elected in.
//!
//! **Why the create revision is the token.** A key's create revision is
//! the revision at which it was (last) created. A new leader's key is
//! created after the old one went, so it always has a higher create
//! revision than any key before it, even when its value, lease or holder
//! name happen to be the same; and a key keeps its create revision
//! through every put, so the leader may rewrite its own key. The key
//! standing with the create revision the leader read is exactly "the
//! leadership I won is still mine". (A value or a lease id could repeat;
//! a mod revision changes with every rewrite.)
//!
//! **What is not fenced, and why.**
//! - Reads (`get`, `range`, `revision`, `compacted_revision`, `watch`,
//!   `leases`) pass through: they change nothing, and a deposed leader
//!   reading a stale world is harmless as long as it cannot act on it.
//! - Lease operations pass through. `lease_grant` and `lease_keep_alive`
//!   change no key. `lease_revoke` deletes the keys attached to the lease,
//!   but etcd cannot revoke inside a transaction, so a revoke cannot be
//!   fenced atomically; a check before it would leave the very window the
//!   fence is there to close. It passes through, and that is safe enough:
//!   a leader revokes only its own leases (its leader key's, to resign),
//!   whose keys a new leader does not hold, and which are gone or going
//!   anyway once the leader is deposed, since that is mostly how it is
//!   deposed: a revoke only deletes now what expiry deletes soon.
//!
//! **Transactions.** A caller's transaction gets the fence as its first
//! comparison, so its success branch runs only while the fence holds. Its
//! failure branch, though, then runs when the fence is broken, so it may
//! only read: a write there is refused with [`Error::UnfencedWrite`]
//! before anything reaches the store (no code in hearth writes in a
//! failure branch today; fencing one would take a nested transaction,
//! which hearth's [`Txn`] does not have). To tell a broken fence from the
//! caller's own comparisons failing, the failure branch also reads the
//! fence key; that read is taken off the response again, so the caller
//! sees the response it asked for. Even a transaction that only reads is
//! fenced: it is a question put to the leader's store, and the answer
//! "you are no longer the leader" is the one that matters.
//!
//! The fence adds one comparison, and one read to the failure branch: a
//! transaction already at etcd's `--max-txn-ops` (128 by default) in
//! either is then refused by etcd.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Compare, Error, KeyValue, Lease, LeaseId, Op, OpResponse, Range, Revision, Store, Txn, TxnResponse,
    WatchStream,
};

/// A store that makes a leader's writes only while its key stands with
/// the create revision it was elected with. See the [module
/// documentation](self).
///
/// Cheap to build, one per election won: callers wrap it in an [`Arc`]
/// to hand it around as an `Arc<dyn Store>`.
pub struct Fenced {
    inner: Arc<dyn Store>,
    fence: Fence,
}

impl std::fmt::Debug for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fenced").field("key", &self.fence.key).field("token", &self.fence.token).finish()
    }
}

impl Fenced {
    /// Wraps `inner`, so that writes are made only while `key` exists
    /// with create revision `token`.
    ///
    /// # Panics
    ///
    /// If `token` is 0: that is the create revision of a missing key, so
    /// the fence would hold exactly when nobody leads.
    pub fn new(inner: Arc<dyn Store>, key: impl Into<String>, token: Revision) -> Fenced {
        assert!(token > 0, "a fencing token is the create revision of an existing key, never 0");
        Fenced { inner, fence: Fence { key: key.into(), token } }
    }

    /// The leader's key.
    pub fn key(&self) -> &str {
        &self.fence.key
    }

    /// The create revision the leader's key must have.
    pub fn token(&self) -> Revision {
        self.fence.token
    }

    /// Applies `op` if the fence holds, and returns its response and the
    /// revision after the call.
    async fn write(&self, op: Op) -> Result<(Revision, OpResponse), Error> {
        let txn = Txn::new().when(self.fence.compare()).and_then(op);
        let response = self.inner.txn(txn).await?;
        if !response.succeeded {
            return Err(self.fence.broken());
        }
        let revision = response.revision;
        match <[OpResponse; 1]>::try_from(response.responses) {
            Ok([only]) => Ok((revision, only)),
            Err(responses) => {
                Err(Error::Corrupt(format!("the store answered one operation with {responses:?}").into()))
            }
        }
    }
}

/// The fence: the leader's key and its create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence {
    key: String,
    token: Revision,
}

impl Fence {
    fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), self.token)
    }

    fn broken(&self) -> Error {
        Error::Fenced { key: self.key.clone(), token: self.token }
    }

    fn holds(&self, kv: Option<&KeyValue>) -> bool {
        kv.is_some_and(|kv| kv.create_revision == self.token)
    }

    /// The caller's transaction with the fence first among its
    /// comparisons and a read of the fence key last in its failure branch,
    /// or the reason it cannot be fenced.
    fn guard(&self, mut txn: Txn) -> Result<Txn, Error> {
        if let Some(write) = txn.failure.iter().find_map(written) {
            return Err(Error::UnfencedWrite { key: write.to_owned() });
        }
        txn.compares.insert(0, self.compare());
        txn.failure.push(Op::Get { key: self.key.clone() });
        Ok(txn)
    }

    /// The response to a transaction made by [`Fence::guard`], as the
    /// caller's own transaction would have had it, or [`Error::Fenced`]
    /// if the fence was broken.
    fn unguard(&self, mut response: TxnResponse) -> Result<TxnResponse, Error> {
        if response.succeeded {
            return Ok(response);
        }
        match response.responses.pop() {
            Some(OpResponse::Get { kv }) if self.holds(kv.as_ref()) => Ok(response),
            Some(OpResponse::Get { .. }) => Err(self.broken()),
            other => {
                Err(Error::Corrupt(format!("the store answered the fence's read with {other:?}").into()))
            }
        }
    }
}

/// The key or prefix `op` writes, if it writes.
fn written(op: &Op) -> Option<&str> {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => Some(key),
        Op::DeletePrefix { prefix } => Some(prefix),
        Op::Get { .. } | Op::Range { .. } => None,
    }
}

#[async_trait]
impl Store for Fenced {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        self.inner.get(key).await
    }

    async fn range(&self, prefix: &str) -> Result<Range, Error> {
        self.inner.range(prefix).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, Error> {
        let (revision, _) = self.write(Op::Put { key: key.to_owned(), value, lease }).await?;
        Ok(revision)
    }

    /// As the inner store's: a delete of a missing key writes nothing, so
    /// the transaction does not advance the revision on either backend.
    async fn delete(&self, key: &str) -> Result<(Revision, bool), Error> {
        match self.write(Op::Delete { key: key.to_owned() }).await? {
            (revision, OpResponse::Delete { deleted }) => Ok((revision, deleted > 0)),
            (_, other) => Err(Error::Corrupt(format!("the store answered a delete with {other:?}").into())),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        let guarded = self.fence.guard(txn)?;
        let response = self.inner.txn(guarded).await?;
        self.fence.unguard(response)
    }

    async fn revision(&self) -> Result<Revision, Error> {
        self.inner.revision().await
    }

    async fn compacted_revision(&self) -> Result<Revision, Error> {
        self.inner.compacted_revision().await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, Error> {
        self.inner.watch(prefix, from).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, Error> {
        self.inner.lease_grant(ttl).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, Error> {
        self.inner.lease_keep_alive(id).await
    }

    /// Not fenced: etcd cannot revoke a lease inside a transaction (see
    /// the module documentation).
    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, Error> {
        self.inner.lease_revoke(id).await
    }

    async fn leases(&self) -> Result<Vec<Lease>, Error> {
        self.inner.leases().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence() -> Fence {
        Fence { key: "hosts/leader".into(), token: 7 }
    }

    fn kv(create_revision: Revision) -> KeyValue {
        KeyValue {
            key: "hosts/leader".into(),
            value: b"a".to_vec(),
            create_revision,
            mod_revision: create_revision + 3,
            version: 2,
            lease: Some(1),
        }
    }

    fn put(key: &str) -> Op {
        Op::Put { key: key.into(), value: b"v".to_vec(), lease: None }
    }

    fn failed(responses: Vec<OpResponse>) -> TxnResponse {
        TxnResponse { succeeded: false, revision: 9, responses }
    }

    #[test]
    fn the_fence_goes_first_among_the_compares_and_its_read_last_in_the_failure_branch() {
        let txn = Txn::new()
            .when(Compare::missing("a"))
            .and_then(put("a"))
            .or_else(Op::Range { prefix: "p/".into() });
        let guarded = fence().guard(txn).unwrap();
        assert_eq!(
            guarded,
            Txn {
                compares: vec![Compare::create_revision("hosts/leader", 7), Compare::missing("a")],
                success: vec![put("a")],
                failure: vec![Op::Range { prefix: "p/".into() }, Op::Get { key: "hosts/leader".into() }],
            }
        );
    }

    #[test]
    fn every_write_in_a_failure_branch_is_refused() {
        for (op, key) in [
            (put("a"), "a"),
            (Op::Delete { key: "b".into() }, "b"),
            (Op::DeletePrefix { prefix: "c/".into() }, "c/"),
        ] {
            let txn = Txn::new().or_else(Op::Get { key: "x".into() }).or_else(op);
            match fence().guard(txn) {
                Err(Error::UnfencedWrite { key: refused }) => assert_eq!(refused, key),
                other => panic!("expected UnfencedWrite for {key:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_success_is_handed_back_as_it_is() {
        let response =
            TxnResponse { succeeded: true, revision: 9, responses: vec![OpResponse::Put { prev: None }] };
        assert_eq!(fence().unguard(response.clone()).unwrap(), response);
    }

    #[test]
    fn a_failure_with_the_fence_standing_loses_only_the_fence_read() {
        let caller = OpResponse::Get { kv: None };
        let response = failed(vec![caller.clone(), OpResponse::Get { kv: Some(kv(7)) }]);
        assert_eq!(fence().unguard(response).unwrap(), failed(vec![caller]));
    }

    #[test]
    fn a_failure_with_the_fence_key_gone_or_created_again_is_fenced() {
        for fence_read in [None, Some(kv(6)), Some(kv(8))] {
            let response = failed(vec![OpResponse::Get { kv: fence_read.clone() }]);
            match fence().unguard(response) {
                Err(Error::Fenced { key, token: 7 }) if key == "hosts/leader" => {}
                other => panic!("expected Fenced for {fence_read:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_failure_without_the_fence_read_is_corrupt() {
        for responses in [vec![], vec![OpResponse::Range { kvs: vec![] }]] {
            assert!(matches!(fence().unguard(failed(responses)), Err(Error::Corrupt(_))));
        }
    }
}
