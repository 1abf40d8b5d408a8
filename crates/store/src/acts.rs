//! Acts: what hearth did by itself, for a person to read later.
//!
//! A subsystem that acts on its own, where no record of its own shows it
//! (a machine adopted after a daemon restart, workflow runs picked up),
//! writes an [`Act`] at `acts/AT-SEQ`. The alerting service's built-in
//! rules turn each into an entry of `hearth alert history`, where a person
//! can silence them or route them elsewhere. The newest [`KEEP`] are kept.
//!
//! Recording is best effort: an act that cannot be written is logged and
//! dropped, and never stops the act itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Store;

/// Where acts are stored.
pub const PREFIX: &str = "acts/";

/// How many acts are kept; older ones are deleted.
pub const KEEP: usize = 1000;

/// Acts written between two prunes.
const PRUNE_EVERY: u64 = 100;

/// One thing hearth did by itself, at `acts/AT-SEQ`, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What it concerns: `machine:NAME`, `workflows`, ...
    pub subject: String,
    /// A verb: `recovered`, ...
    pub action: String,
    /// Why, or what it amounted to, as a sentence.
    pub reason: String,
}

/// Acts written by this process: it makes keys of one millisecond unique
/// and paces the pruning.
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// The key an act written at `at_ms` as this process's `seq`th gets: in
/// time order, as the store lists keys.
fn key(at_ms: u64, seq: u64) -> String {
    format!("{PREFIX}{at_ms:015}-{:06}", seq % 1_000_000)
}

/// Records that hearth did `action` to `subject`, because of `reason`.
pub async fn record(store: &dyn Store, subject: &str, action: &str, reason: impl Into<String>) {
    let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let act = Act { at_ms, subject: subject.to_owned(), action: action.to_owned(), reason: reason.into() };
    let seq = WRITTEN.fetch_add(1, Ordering::Relaxed);
    let value = match serde_json::to_vec(&act) {
        Ok(value) => value,
        Err(error) => {
            tracing::warn!(%error, "Cannot encode an act; it is not recorded.");
            return;
        }
    };
    if let Err(error) = store.put(&key(at_ms, seq), value, None).await {
        tracing::warn!(subject, action, error = %crate::chain(&error), "Cannot record an act.");
        return;
    }
    if seq.is_multiple_of(PRUNE_EVERY)
        && let Err(error) = crate::keep_newest(store, PREFIX, KEEP).await
    {
        tracing::warn!(error = %crate::chain(&error), "Cannot prune the acts.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redb::RedbStore;

    async fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb"), Default::default()).expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn an_act_is_stored_as_json_under_acts() {
        let (_dir, store) = store().await;
        record(&store, "machine:web", "recovered", "adopted its VM").await;
        let range = store.range(PREFIX).await.expect("range");
        assert_eq!(range.kvs.len(), 1);
        let json: serde_json::Value = serde_json::from_slice(&range.kvs[0].value).expect("json");
        assert_eq!(json["subject"], "machine:web");
        assert_eq!(json["action"], "recovered");
        assert_eq!(json["reason"], "adopted its VM");
    }

    #[tokio::test]
    async fn acts_are_listed_in_the_order_they_were_written() {
        let (_dir, store) = store().await;
        for i in 0..5 {
            record(&store, &format!("machine:m{i}"), "recovered", "r").await;
        }
        let range = store.range(PREFIX).await.expect("range");
        let subjects: Vec<String> = range
            .kvs
            .iter()
            .map(|kv| serde_json::from_slice::<Act>(&kv.value).expect("an act").subject)
            .collect();
        assert_eq!(subjects, ["machine:m0", "machine:m1", "machine:m2", "machine:m3", "machine:m4"]);
    }

    #[tokio::test]
    async fn only_the_newest_are_kept() {
        let (_dir, store) = store().await;
        for i in 0..KEEP + 10 {
            store.put(&key(1, i as u64), b"{}".to_vec(), None).await.expect("put");
        }
        assert_eq!(crate::keep_newest(&store, PREFIX, KEEP).await.expect("prune"), 10);
        let range = store.range(PREFIX).await.expect("range");
        assert_eq!(range.kvs.len(), KEEP);
        assert_eq!(range.kvs[0].key, key(1, 10));
    }
}
