//! The shared copies on the embedded store: round trips over several
//! chunks, idempotence, damage found and removed, removal, and the races
//! the manifest and [`Shared::hold`] are there for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use hearth_store::redb::RedbStore;
use hearth_store::{KeyValue, Lease, LeaseId, Range, Revision, Store, TxnResponse, WatchStream};

use super::*;

const PREFIX: &str = "apps/blobs/";

/// A store in a temporary directory that goes with it.
fn store() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("store.redb"), Default::default()).unwrap();
    (dir, store)
}

/// `len` bytes that differ from chunk to chunk, and their hash.
fn component(len: usize) -> (Vec<u8>, String) {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + i / 4099) as u8).collect();
    let sha = crate::sha256_hex(&bytes);
    (bytes, sha)
}

async fn keys(store: &dyn Store) -> Vec<String> {
    store.range(PREFIX).await.unwrap().kvs.into_iter().map(|kv| kv.key).collect()
}

#[tokio::test]
async fn a_component_over_several_chunks_comes_back_whole() {
    let (_dir, store) = store();
    let (bytes, sha) = component(3 * CHUNK + CHUNK / 2);
    share(&store, PREFIX, &sha, &bytes).await.unwrap();
    let expected: Vec<String> = std::iter::once(format!("{PREFIX}{sha}"))
        .chain((0..4).map(|i| format!("{PREFIX}{sha}/00000{i}")))
        .collect();
    assert_eq!(keys(&store).await, expected);
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.get(&expected[0]).await.unwrap().unwrap().value).unwrap();
    assert_eq!(manifest, serde_json::json!({"size": bytes.len(), "chunks": 4, "sha256": sha}));
    let last = store.get(&expected[4]).await.unwrap().unwrap();
    assert_eq!(last.value.len(), CHUNK / 2);
    assert!(fetch(&store, PREFIX, &sha).await.unwrap() == Some(bytes));
}

#[tokio::test]
async fn sharing_again_writes_nothing() {
    let (_dir, store) = store();
    let (bytes, sha) = component(CHUNK + 1);
    share(&store, PREFIX, &sha, &bytes).await.unwrap();
    let revision = store.revision().await.unwrap();
    share(&store, PREFIX, &sha, &bytes).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), revision);
}

#[tokio::test]
async fn what_was_never_shared_is_none() {
    let (_dir, store) = store();
    let (_, sha) = component(10);
    assert!(fetch(&store, PREFIX, &sha).await.unwrap().is_none());
    // Chunks without their manifest (a share cut off) are not a copy.
    store.put(&format!("{PREFIX}{sha}/000000"), vec![1; 10], None).await.unwrap();
    assert!(fetch(&store, PREFIX, &sha).await.unwrap().is_none());
}

#[tokio::test]
async fn names_must_be_hashes() {
    let (_dir, store) = store();
    for name in ["../records/x", "ABC", &"A".repeat(64), ""] {
        assert!(matches!(share(&store, PREFIX, name, b"x").await, Err(Error::BadHash(_))), "{name}");
        assert!(matches!(fetch(&store, PREFIX, name).await, Err(Error::BadHash(_))), "{name}");
        assert!(matches!(unshare(&store, PREFIX, name).await, Err(Error::BadHash(_))), "{name}");
    }
    assert!(keys(&store).await.is_empty());
}

/// Each way a copy can be damaged is found, named, and the copy removed,
/// so that sharing it again (a deploy) mends it.
#[tokio::test]
async fn a_damaged_copy_is_refused_removed_and_shared_anew() {
    let (_dir, store) = store();
    let (bytes, sha) = component(2 * CHUNK + 5);
    let manifest = format!("{PREFIX}{sha}");
    let chunk = |i: usize| format!("{PREFIX}{sha}/{i:06}");
    let cases: [(&str, &str, Option<Vec<u8>>, &str); 5] = [
        ("a flipped byte", "chunk", Some(vec![0; CHUNK]), "another SHA-256"),
        ("a short chunk", "chunk", Some(vec![0; 3]), "bytes where its manifest says"),
        ("a lost chunk", "chunk", None, "a chunk of 3 is missing"),
        ("a bad manifest", "manifest", Some(b"{".to_vec()), "manifest is unreadable"),
        (
            "a manifest with another size",
            "manifest",
            Some(format!(r#"{{"size": 7, "chunks": 3, "sha256": "{sha}"}}"#).into_bytes()),
            "holds 2097157 bytes where its manifest says 7",
        ),
    ];
    for (case, what, value, expected) in cases {
        share(&store, PREFIX, &sha, &bytes).await.unwrap();
        let key = if what == "chunk" { chunk(1) } else { manifest.clone() };
        match value {
            Some(value) => store.put(&key, value, None).await.unwrap(),
            None => store.delete(&key).await.unwrap().0,
        };
        let error = fetch(&store, PREFIX, &sha).await.unwrap_err();
        let Error::Corrupt { reason, .. } = &error else { panic!("{case}: {error}") };
        assert!(reason.contains(expected), "{case}: {reason}");
        assert!(error.to_string().contains("deploy the component again"), "{case}: {error}");
        assert!(keys(&store).await.is_empty(), "{case}: the damaged copy was kept");
        assert!(fetch(&store, PREFIX, &sha).await.unwrap().is_none(), "{case}");
    }
    share(&store, PREFIX, &sha, &bytes).await.unwrap();
    assert!(fetch(&store, PREFIX, &sha).await.unwrap() == Some(bytes));
}

#[tokio::test]
async fn unsharing_removes_every_key_and_only_those() {
    let (_dir, store) = store();
    let (bytes, sha) = component(3 * CHUNK);
    let (other, other_sha) = component(10);
    share(&store, PREFIX, &sha, &bytes).await.unwrap();
    share(&store, PREFIX, &other_sha, &other).await.unwrap();
    assert!(unshare(&store, PREFIX, &sha).await.unwrap());
    assert_eq!(keys(&store).await, [format!("{PREFIX}{other_sha}"), format!("{PREFIX}{other_sha}/000000")]);
    assert!(fetch(&store, PREFIX, &sha).await.unwrap().is_none());
    assert!(!unshare(&store, PREFIX, &sha).await.unwrap(), "nothing left to remove");
    // The chunks of a share cut off half-way go too.
    store.put(&format!("{PREFIX}{sha}/000000"), vec![1], None).await.unwrap();
    unshare(&store, PREFIX, &sha).await.unwrap();
    assert_eq!(keys(&store).await.len(), 2);
}

/// Host B collects garbage from records it read before host A's deploy
/// wrote one naming the component: the record's transaction, held,
/// rewrote the manifest, so B leaves the copy; a copy no record took since
/// B's read goes.
#[tokio::test]
async fn a_copy_named_by_a_record_written_after_the_read_stays() {
    let (_dir, store) = store();
    let (bytes, sha) = component(CHUNK + 1);
    let shared = share(&store, PREFIX, &sha, &bytes).await.unwrap();
    let read_at = store.revision().await.unwrap();
    let record =
        Txn::new().and_then(Op::Put { key: "apps/records/a".into(), value: b"{}".to_vec(), lease: None });
    assert!(store.txn(shared.clone().hold(record.clone())).await.unwrap().succeeded);
    assert!(!unshare_unused(&store, PREFIX, &sha, read_at).await.unwrap());
    assert!(fetch(&store, PREFIX, &sha).await.unwrap().is_some());
    // Read again, after the record: nothing stops it (no record says so).
    let read_at = store.revision().await.unwrap();
    assert!(unshare_unused(&store, PREFIX, &sha, read_at).await.unwrap());
    assert!(keys(&store).await.is_empty());
    // And a record held on a copy that went since is not written.
    assert!(!store.txn(shared.hold(record)).await.unwrap().succeeded);
    assert!(store.get("apps/records/a").await.unwrap().unwrap().value == b"{}");
}

/// A store that removes the copy (as another host's unshare would) right
/// after the first chunk of the first share is put.
struct UnshareMidway {
    inner: RedbStore,
    done: AtomicBool,
    sha: String,
}

#[async_trait]
impl Store for UnshareMidway {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, hearth_store::Error> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<Range, hearth_store::Error> {
        self.inner.range(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, hearth_store::Error> {
        let revision = self.inner.put(key, value, lease).await?;
        if key.ends_with("/000001") && !self.done.swap(true, Ordering::SeqCst) {
            unshare(&self.inner, PREFIX, &self.sha).await.unwrap();
        }
        Ok(revision)
    }
    async fn delete(&self, key: &str) -> Result<(Revision, bool), hearth_store::Error> {
        self.inner.delete(key).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, hearth_store::Error> {
        self.inner.txn(txn).await
    }
    async fn revision(&self) -> Result<Revision, hearth_store::Error> {
        self.inner.revision().await
    }
    async fn compacted_revision(&self) -> Result<Revision, hearth_store::Error> {
        self.inner.compacted_revision().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, hearth_store::Error> {
        self.inner.watch(prefix, from).await
    }
    async fn lease_grant(&self, ttl: std::time::Duration) -> Result<Lease, hearth_store::Error> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, hearth_store::Error> {
        self.inner.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, hearth_store::Error> {
        self.inner.lease_revoke(id).await
    }
    async fn leases(&self) -> Result<Vec<Lease>, hearth_store::Error> {
        self.inner.leases().await
    }
}

/// Without the check on the first chunk, the manifest would be written
/// over chunks 0 and 1 that are gone: a copy that every reader finds
/// corrupt.
#[tokio::test]
async fn a_share_whose_chunks_are_taken_midway_writes_them_again() {
    let (_dir, inner) = store();
    let (bytes, sha) = component(3 * CHUNK);
    let store =
        Arc::new(UnshareMidway { inner: inner.clone(), done: AtomicBool::new(false), sha: sha.clone() });
    share(&*store, PREFIX, &sha, &bytes).await.unwrap();
    assert!(store.done.load(Ordering::SeqCst), "the copy was taken midway");
    assert_eq!(keys(&inner).await.len(), 4);
    assert!(fetch(&inner, PREFIX, &sha).await.unwrap() == Some(bytes));
}
