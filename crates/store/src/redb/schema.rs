//! The on-disk layout: table definitions, value encodings, and the mapping
//! of redb's errors onto the store's.

use ::redb::{
    MultimapTableDefinition, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Error, KeyValue, LeaseId, Revision};

/// Key -> postcard-encoded [`StoredKv`].
pub(super) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Bookkeeping that must move atomically with the data; see [`Meta`].
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Revision -> postcard-encoded `Vec<Event>`: the watch history.
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Lease id -> granted TTL in milliseconds. Deadlines are not persisted: a
/// reopened store gives every lease a fresh TTL, as etcd does on a new leader.
pub(super) const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
/// Lease id -> the keys attached to it, so a revocation need not scan.
pub(super) const LEASE_KEYS: MultimapTableDefinition<u64, &str> = MultimapTableDefinition::new("lease_keys");

/// Bumped whenever the layout or an encoding changes incompatibly.
const FORMAT: u64 = 1;

const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease_id";

/// A key's value and bookkeeping as stored; the key is the table key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredKv {
    pub(super) value: Vec<u8>,
    pub(super) create_revision: Revision,
    pub(super) mod_revision: Revision,
    pub(super) version: u64,
    pub(super) lease: Option<LeaseId>,
}

impl StoredKv {
    pub(super) fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// The store's counters. They live in the same redb transaction as the data
/// they describe, so a crash can never separate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meta {
    /// The revision of the last write.
    pub(super) revision: Revision,
    /// The newest revision whose events have been dropped from [`LOG`]
    /// (0: none). Watches can start at `compacted + 1`.
    pub(super) compacted: Revision,
    /// The id the next granted lease gets.
    pub(super) next_lease_id: LeaseId,
}

impl Meta {
    const EMPTY: Meta = Meta { revision: 0, compacted: 0, next_lease_id: 1 };

    /// The oldest revision a watch can still start from.
    pub(super) fn oldest(&self) -> Revision {
        self.compacted + 1
    }

    pub(super) fn read(table: &impl ReadableTable<&'static str, u64>) -> Result<Meta, Error> {
        let get = |name: &'static str| -> Result<u64, Error> {
            match table.get(name).map_err(db)? {
                Some(v) => Ok(v.value()),
                None => Err(corrupt(format!("the meta table has no {name:?} entry"))),
            }
        };
        Ok(Meta {
            revision: get(META_REVISION)?,
            compacted: get(META_COMPACTED)?,
            next_lease_id: get(META_NEXT_LEASE)?,
        })
    }

    pub(super) fn write(&self, table: &mut Table<'_, &'static str, u64>) -> Result<(), Error> {
        table.insert(META_REVISION, self.revision).map_err(db)?;
        table.insert(META_COMPACTED, self.compacted).map_err(db)?;
        table.insert(META_NEXT_LEASE, self.next_lease_id).map_err(db)?;
        Ok(())
    }
}

/// Creates the tables of a new file, or checks the format of an existing
/// one. Runs in the open's own transaction, before any other access.
pub(super) fn init(txn: &WriteTransaction) -> Result<(), Error> {
    txn.open_table(KV).map_err(db)?;
    txn.open_table(LOG).map_err(db)?;
    txn.open_table(LEASES).map_err(db)?;
    txn.open_multimap_table(LEASE_KEYS).map_err(db)?;
    let mut meta = txn.open_table(META).map_err(db)?;
    let format = meta.get(META_FORMAT).map_err(db)?.map(|v| v.value());
    match format {
        Some(FORMAT) => Ok(()),
        Some(other) => {
            Err(corrupt(format!("the file has format version {other}; this build reads version {FORMAT}")))
        }
        None => {
            meta.insert(META_FORMAT, FORMAT).map_err(db)?;
            Meta::EMPTY.write(&mut meta)
        }
    }
}

/// Reads the counters in a fresh read transaction.
pub(super) fn read_meta(db: &::redb::Database) -> Result<Meta, Error> {
    let txn = db.begin_read().map_err(self::db)?;
    let table = txn.open_table(META).map_err(self::db)?;
    Meta::read(&table)
}

pub(super) fn get_kv(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<StoredKv>, Error> {
    match table.get(key).map_err(db)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Every key under `prefix`, in key order.
pub(super) fn range_kv(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<KeyValue>, Error> {
    let mut kvs = Vec::new();
    for entry in table.range::<&str>(prefix..).map_err(db)? {
        let (key, value) = entry.map_err(db)?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        let stored: StoredKv = decode(value.value())?;
        kvs.push(stored.into_kv(key.to_owned()));
    }
    Ok(kvs)
}

/// The keys under `prefix`, in key order, without decoding their values.
pub(super) fn range_keys(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<String>, Error> {
    let mut keys = Vec::new();
    for entry in table.range::<&str>(prefix..).map_err(db)? {
        let (key, _) = entry.map_err(db)?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        keys.push(key.to_owned());
    }
    Ok(keys)
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    // Serialising our own plain structs into a Vec cannot fail in practice;
    // if it ever does, it is the backend failing, not the data being corrupt.
    postcard::to_stdvec(value).map_err(|e| Error::Backend(Box::new(e)))
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt(Box::new(e)))
}

/// Maps a redb error onto the store's: corruption is reported as such, the
/// rest as a backend failure.
pub(super) fn db(error: impl Into<::redb::Error>) -> Error {
    match error.into() {
        e @ ::redb::Error::Corrupted(_) => Error::Corrupt(Box::new(e)),
        e => Error::Backend(Box::new(e)),
    }
}

pub(super) fn corrupt(message: String) -> Error {
    Error::Corrupt(Box::new(Message(message)))
}

/// A plain-text error, for failures that have no error value of their own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Message(pub(super) String);
