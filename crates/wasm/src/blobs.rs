//! Component bytes shared through the store, so that every host on one
//! store can run what any of them was sent.
//!
//! Apps and workflows keep uploaded components in their data dir, by
//! content hash. When several hosts share one store, the host a deploy
//! reaches also [`share`]s the bytes there; a host that must run a version
//! it has no bytes for (it serves an app deployed elsewhere, it took over
//! a workflow run) [`fetch`]es them, which checks them, and keeps them in
//! its own data dir from then on.
//!
//! Under a subsystem's prefix (`apps/blobs/`, `workflows/blobs/`):
//!
//! ```text
//! PREFIX/SHA256           the manifest: {"size", "chunks", "sha256"}, JSON
//! PREFIX/SHA256/000000    the first CHUNK bytes
//! PREFIX/SHA256/000001    the next CHUNK bytes; the last chunk holds the rest
//! ```
//!
//! **Why chunks.** A value may be at most 1.5 MiB
//! ([`hearth_store::limits::MAX_VALUE_LEN`]) and so may a whole etcd
//! request, while a component may be tens of MiB. Each chunk is one put of
//! [`CHUNK`] (1 MiB), which leaves room for the key and the framing; a
//! reader gets them one at a time, so no answer grows past a chunk either
//! (etcd's client refuses messages over 4 MiB).
//!
//! **Why the manifest last.** The chunks of a component cannot be written
//! in one transaction (it would be over the limit), so the manifest is the
//! commit: it is written only after every chunk, and only if the first
//! chunk is still the one this writer put (a removal between would have
//! taken it, since chunks go only all at once), so a reader that finds the
//! manifest finds every chunk. A share cut off half-way leaves chunks
//! without a manifest, which read as absent and which the next share
//! overwrites or [`unshare`] deletes. The manifest and the chunks are
//! deleted in one transaction.
//!
//! **What [`fetch`] guarantees.** It returns bytes only when their length
//! is the manifest's and their SHA-256 is the one asked for, so a host runs
//! byte for byte what was deployed, whatever happened to the copy in the
//! store. A copy that fails can never be right (its name is its hash): it
//! is deleted, and the error says to deploy again, which shares it anew.

use hearth_store::{Compare, CompareOp, CompareTarget, KeyValue, Op, Revision, Store, Txn};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The size of a chunk: under the store's value limit with room to spare.
pub const CHUNK: usize = 1 << 20;

/// How many times [`share`] writes again when its chunks were taken from
/// under it (by a concurrent [`unshare`]) before it gives up.
const ATTEMPTS: usize = 3;

/// What can go wrong with a shared component.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shared copies are named by a SHA-256 in lowercase hex; anything else
    /// could name keys outside them.
    #[error("{0:?} is not a SHA-256 in lowercase hex, so it cannot name a shared component")]
    BadHash(String),

    /// The copy in the store is not the component its name says.
    #[error(
        "the copy of component {sha256} shared in the store is corrupt ({reason}), so it was removed: deploy the component again to share it anew"
    )]
    Corrupt { sha256: String, reason: String },

    /// Every attempt to write the copy had it taken from under it.
    #[error("the copy of component {0} in the store was removed each time it was written; deploy again")]
    Contended(String),

    /// The store could not be read or written.
    #[error("cannot reach the shared copy of a component in the store")]
    Store(#[from] hearth_store::Error),
}

/// What the manifest key holds.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    size: u64,
    chunks: u32,
    sha256: String,
}

/// A shared copy as [`share`] left it. A record that names the component
/// is written with [`Shared::hold`], so that the copy cannot go between
/// the share and the record (see [`unshare_unused`]).
#[derive(Debug, Clone)]
pub struct Shared {
    key: String,
    manifest: Vec<u8>,
    revision: Revision,
}

impl Shared {
    /// `txn` (the one that writes a record naming the component), made to
    /// hold only if the shared copy is still the one [`share`] saw, and to
    /// write its manifest again. A record written so names a copy that is
    /// in the store; and an [`unshare_unused`] that read the records before
    /// this one finds the manifest newer than its read and leaves it.
    pub fn hold(self, txn: Txn) -> Txn {
        txn.when(Compare::mod_revision(&self.key, self.revision)).and_then(Op::Put {
            key: self.key,
            value: self.manifest,
            lease: None,
        })
    }
}

/// Writes `bytes` (whose SHA-256 is `sha256`) under `PREFIX/SHA256`: the
/// chunks, then the manifest. Writes nothing when the manifest is there
/// already.
pub async fn share(store: &dyn Store, prefix: &str, sha256: &str, bytes: &[u8]) -> Result<Shared, Error> {
    check_hash(sha256)?;
    let key = manifest_key(prefix, sha256);
    debug_assert_eq!(crate::sha256_hex(bytes), sha256, "the bytes are not the ones named");
    let manifest = Manifest {
        size: bytes.len() as u64,
        chunks: bytes.len().div_ceil(CHUNK) as u32,
        sha256: sha256.to_owned(),
    };
    let manifest = serde_json::to_vec(&manifest).expect("a manifest serialises");
    for _ in 0..ATTEMPTS {
        if let Some(kv) = store.get(&key).await? {
            return Ok(Shared { key, manifest: kv.value, revision: kv.mod_revision });
        }
        let mut first = None;
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            let chunk_key = chunk_key(prefix, sha256, i);
            let revision = store.put(&chunk_key, chunk.to_vec(), None).await?;
            first.get_or_insert((chunk_key, revision));
        }
        // Chunks go only all at once, so the first one still at the
        // revision it was put means that every one is there.
        let mut txn = Txn::new().when(Compare::missing(&key));
        if let Some((chunk_key, revision)) = first {
            txn = txn.when(Compare::mod_revision(chunk_key, revision));
        }
        let txn = txn.and_then(Op::Put { key: key.clone(), value: manifest.clone(), lease: None });
        let written = store.txn(txn).await?;
        if written.succeeded {
            return Ok(Shared { key, manifest, revision: written.revision });
        }
        // Another host shared it meanwhile (the next get finds it), or an
        // unshare took the chunks (they are written again).
    }
    Err(Error::Contended(sha256.to_owned()))
}

/// The bytes shared under `PREFIX/SHA256`, checked against their length
/// and hash, or `None` when none are shared. A copy that fails the check
/// is deleted and reported as [`Error::Corrupt`].
pub async fn fetch(store: &dyn Store, prefix: &str, sha256: &str) -> Result<Option<Vec<u8>>, Error> {
    check_hash(sha256)?;
    let key = manifest_key(prefix, sha256);
    for _ in 0..ATTEMPTS {
        let Some(found) = store.get(&key).await? else { return Ok(None) };
        let manifest: Manifest = match serde_json::from_slice(&found.value) {
            Ok(manifest) => manifest,
            Err(e) => {
                return Err(corrupt(
                    store,
                    prefix,
                    sha256,
                    &found,
                    format!("its manifest is unreadable: {e}"),
                )
                .await);
            }
        };
        let mut bytes = Vec::with_capacity(manifest.size.min(64 << 20) as usize);
        let mut hasher = sha2::Sha256::new();
        let mut whole = true;
        for i in 0..manifest.chunks as usize {
            match store.get(&chunk_key(prefix, sha256, i)).await? {
                Some(chunk) => {
                    hasher.update(&chunk.value);
                    bytes.extend_from_slice(&chunk.value);
                }
                None => {
                    whole = false;
                    break;
                }
            }
        }
        if !whole {
            // Removed while it was read, or shared again since: read again.
            // The same manifest still there with a chunk gone is damage.
            match store.get(&key).await? {
                None => return Ok(None),
                Some(now) if now.mod_revision != found.mod_revision => continue,
                Some(_) => {
                    let reason = format!("a chunk of {} is missing", manifest.chunks);
                    return Err(corrupt(store, prefix, sha256, &found, reason).await);
                }
            }
        }
        let reason = if bytes.len() as u64 != manifest.size {
            format!("it holds {} bytes where its manifest says {}", bytes.len(), manifest.size)
        } else if crate::hex(&hasher.finalize()) != sha256 {
            "its bytes have another SHA-256".to_owned()
        } else {
            return Ok(Some(bytes));
        };
        return Err(corrupt(store, prefix, sha256, &found, reason).await);
    }
    Err(Error::Contended(sha256.to_owned()))
}

/// Deletes the copy shared under `PREFIX/SHA256`, manifest and chunks in
/// one transaction (a reader never finds a manifest whose chunks are
/// gone), chunks left by a share cut off half-way included. Returns
/// whether there was a manifest.
pub async fn unshare(store: &dyn Store, prefix: &str, sha256: &str) -> Result<bool, Error> {
    check_hash(sha256)?;
    let response = store.txn(delete(prefix, sha256)).await?;
    Ok(
        matches!(response.responses.first(), Some(hearth_store::OpResponse::Delete { deleted }) if *deleted > 0),
    )
}

/// [`unshare`], unless the manifest was written after `read_at`: the
/// revision at which the caller read the records and found none naming
/// the component. A record written since, with [`Shared::hold`], wrote the
/// manifest again in its own transaction, so the copy it names stays.
/// Returns whether the copy went.
pub async fn unshare_unused(
    store: &dyn Store,
    prefix: &str,
    sha256: &str,
    read_at: Revision,
) -> Result<bool, Error> {
    check_hash(sha256)?;
    let key = manifest_key(prefix, sha256);
    let unchanged = Compare::new(key, CompareOp::Less, CompareTarget::ModRevision(read_at + 1));
    let response = store.txn(delete(prefix, sha256).when(unchanged)).await?;
    Ok(response.succeeded
        && matches!(response.responses.first(), Some(hearth_store::OpResponse::Delete { deleted }) if *deleted > 0))
}

/// Deletes a copy found corrupt, if it is still the one `found` read (not
/// one shared anew since), and returns the error that says so.
async fn corrupt(store: &dyn Store, prefix: &str, sha256: &str, found: &KeyValue, reason: String) -> Error {
    tracing::warn!(key = %found.key, reason = %reason, "A shared component is corrupt; deleting it.");
    let txn = delete(prefix, sha256).when(Compare::mod_revision(&found.key, found.mod_revision));
    if let Err(e) = store.txn(txn).await {
        tracing::warn!(key = %found.key, error = %hearth_store::chain(&e), "Cannot delete a corrupt shared component.");
    }
    Error::Corrupt { sha256: sha256.to_owned(), reason }
}

/// The manifest, then every chunk, in one transaction.
fn delete(prefix: &str, sha256: &str) -> Txn {
    Txn::new()
        .and_then(Op::Delete { key: manifest_key(prefix, sha256) })
        .and_then(Op::DeletePrefix { prefix: format!("{prefix}{sha256}/") })
}

fn manifest_key(prefix: &str, sha256: &str) -> String {
    format!("{prefix}{sha256}")
}

fn chunk_key(prefix: &str, sha256: &str, index: usize) -> String {
    format!("{prefix}{sha256}/{index:06}")
}

fn check_hash(sha256: &str) -> Result<(), Error> {
    let hex = sha256.len() == 64 && sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if hex { Ok(()) } else { Err(Error::BadHash(sha256.to_owned())) }
}

#[cfg(test)]
mod tests;
