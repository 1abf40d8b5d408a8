//! The store's data model, shared by every backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in the store's history. Revision 0 is the empty store; the first
/// write produces revision 1.
pub type Revision = u64;

/// Identifies a lease. Never 0.
pub type LeaseId = u64;

/// A key with its value and bookkeeping, as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since the key was created (1 after creation).
    pub version: u64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The result of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub kvs: Vec<KeyValue>,
    /// The revision the read was taken at.
    pub revision: Revision,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key.
///
/// For a `Delete`, `kv.value` is empty, `kv.mod_revision` is the revision of
/// the deletion and `kv.version` is 0, as in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl Event {
    /// The revision at which this change happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A lease: a TTL that keys can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    /// The TTL granted.
    pub ttl: Duration,
    /// Time left before expiry, as of the call that returned this.
    pub remaining: Duration,
}

/// A compare-and-swap transaction: `if compares { success } else { failure }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a comparison that must hold for `success` to run.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    /// Adds an operation to run when every comparison holds.
    pub fn and_then(mut self, op: Op) -> Self {
        self.success.push(op);
        self
    }

    /// Adds an operation to run when any comparison fails.
    pub fn or_else(mut self, op: Op) -> Self {
        self.failure.push(op);
        self
    }
}

/// One comparison in a transaction. A missing key has create and mod
/// revision 0, version 0 and an empty value, so `version == 0` means
/// "does not exist".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    pub fn new(key: impl Into<String>, op: CompareOp, target: CompareTarget) -> Self {
        Self { key: key.into(), op, target }
    }

    /// The key does not exist.
    pub fn missing(key: impl Into<String>) -> Self {
        Self::new(key, CompareOp::Equal, CompareTarget::Version(0))
    }

    /// The key exists: a write conditioned on it is made only while the
    /// record it belongs to is there (so a racing delete leaves nothing).
    pub fn exists(key: impl Into<String>) -> Self {
        Self::new(key, CompareOp::Greater, CompareTarget::Version(0))
    }

    /// The key was last written at exactly `rev` (0: does not exist).
    pub fn mod_revision(key: impl Into<String>, rev: Revision) -> Self {
        Self::new(key, CompareOp::Equal, CompareTarget::ModRevision(rev))
    }

    /// The key was (last) created at exactly `rev` (0: does not exist):
    /// the same key deleted and created again has a higher one, so this
    /// holds only while the very key that was read stands.
    pub fn create_revision(key: impl Into<String>, rev: Revision) -> Self {
        Self::new(key, CompareOp::Equal, CompareTarget::CreateRevision(rev))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a comparison looks at, and the value it compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    ModRevision(Revision),
    CreateRevision(Revision),
    Version(u64),
    Value(Vec<u8>),
}

/// One operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    Delete { key: String },
    DeletePrefix { prefix: String },
    Get { key: String },
    Range { prefix: String },
}

/// The result of one [`Op`], in the same position as the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    /// The key's previous value, if it had one.
    Put { prev: Option<KeyValue> },
    /// How many keys were deleted.
    Delete { deleted: u64 },
    /// The key, if it exists.
    Get { kv: Option<KeyValue> },
    /// The keys under the prefix, in key order.
    Range { kvs: Vec<KeyValue> },
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every comparison held (and so `success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction. Advanced by one if the
    /// branch that ran wrote anything, unchanged otherwise.
    pub revision: Revision,
    pub responses: Vec<OpResponse>,
}
