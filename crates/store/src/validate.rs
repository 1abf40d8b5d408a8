//! Request validation shared by every backend, so that a request a backend
//! refuses is refused the same way by all of them, and before it costs a write.

use std::time::Duration;

use crate::{Compare, Error, Op, Txn, limits};

/// A key must be non-empty and at most [`limits::MAX_KEY_LEN`] bytes.
pub(crate) fn key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidKey { key: String::new(), reason: "the key is empty" });
    }
    prefix(key)
}

/// A prefix may be empty (every key) but not longer than a key can be.
pub(crate) fn prefix(prefix: &str) -> Result<(), Error> {
    if prefix.len() > limits::MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            // Echoing a 4 KiB key back in an error message helps nobody.
            key: truncated(prefix),
            reason: "the key is longer than 4096 bytes",
        });
    }
    Ok(())
}

/// A value must be at most [`limits::MAX_VALUE_LEN`] bytes.
pub(crate) fn value(key: &str, value: &[u8]) -> Result<(), Error> {
    if value.len() > limits::MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge {
            key: key.to_owned(),
            size: value.len(),
            limit: limits::MAX_VALUE_LEN,
        });
    }
    Ok(())
}

/// A lease TTL must lie within [`limits::MIN_LEASE_TTL`] and
/// [`limits::MAX_LEASE_TTL`].
pub(crate) fn ttl(ttl: Duration) -> Result<(), Error> {
    if ttl < limits::MIN_LEASE_TTL || ttl > limits::MAX_LEASE_TTL {
        return Err(Error::InvalidTtl(ttl));
    }
    Ok(())
}

/// Every key, prefix and value a transaction mentions, in either branch:
/// the branch that runs is only known once the comparisons are evaluated,
/// which is too late to refuse the request cheaply.
pub(crate) fn txn(txn: &Txn) -> Result<(), Error> {
    for Compare { key: k, .. } in &txn.compares {
        key(k)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            Op::Put { key: k, value: v, .. } => {
                key(k)?;
                value(k, v)?;
            }
            Op::Delete { key: k } | Op::Get { key: k } => key(k)?,
            Op::DeletePrefix { prefix: p } | Op::Range { prefix: p } => prefix(p)?,
        }
    }
    Ok(())
}

fn truncated(key: &str) -> String {
    const SHOWN: usize = 64;
    let mut end = SHOWN.min(key.len());
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}
