//! Following hearth's store for event triggers: every change, in order,
//! from the current revision on, for as long as the daemon runs.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use hearth_store::{Change, Event, EventKind, Follower, Store};

/// Whether an event trigger on `prefix`, for `kinds` (`put`, `delete`;
/// empty: both), takes this change.
pub fn takes(prefix: &str, kinds: &[String], event: &Event) -> bool {
    let kind = kind_name(event.kind);
    event.kv.key.starts_with(prefix) && (kinds.is_empty() || kinds.iter().any(|k| k == kind))
}

/// What an event trigger hands on for a change, as JSON text:
/// `{"kind", "key", "value", "revision"}`.
pub fn payload(event: &Event) -> String {
    serde_json::json!({
        "kind": kind_name(event.kind),
        "key": event.kv.key,
        "value": String::from_utf8_lossy(&event.kv.value),
        "revision": event.revision(),
    })
    .to_string()
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Put => "put",
        EventKind::Delete => "delete",
    }
}

/// Every change in `store` from the time of the call on, in revision order, without end,
/// through the store's one [`Follower`]: a watch that breaks is opened
/// again from the change after the last one seen, so none is missed or seen
/// twice. Changes compacted away before they were seen cannot be taken by a
/// trigger; the follower says so in the log. `what` names the follower in
/// the log. Changes to hearth's own plumbing
/// ([`crate::private::is_internal`]) are left out: no trigger sees them.
pub async fn follow(store: Arc<dyn Store>, what: &'static str) -> impl Stream<Item = Event> + Send {
    let follower = loop {
        match Follower::from_now(store.clone(), "", what).await {
            Ok(follower) => break follower,
            Err(e) => {
                tracing::warn!(error = %e, "{what} cannot read the store's revision; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    follower.into_stream().filter_map(|change| async move {
        match change {
            Change::Event(event) if !crate::private::is_internal(&event.kv.key) => Some(event),
            Change::Event(_) | Change::Reset(_) => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_take_changes_by_prefix_and_kind() {
        let event = |kind, key: &str| Event {
            kind,
            kv: hearth_store::KeyValue {
                key: key.into(),
                value: b"v".to_vec(),
                create_revision: 3,
                mod_revision: 3,
                version: 1,
                lease: None,
            },
        };
        let put = event(EventKind::Put, "machines/n1");
        assert!(takes("machines/", &[], &put));
        assert!(takes("machines/", &["put".into()], &put));
        assert!(!takes("machines/", &["delete".into()], &put));
        assert!(!takes("networks/", &[], &put));
        let json: serde_json::Value = serde_json::from_str(&payload(&put)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "put", "key": "machines/n1", "value": "v", "revision": 3})
        );
    }

    #[tokio::test]
    async fn changes_come_in_order_from_now_on() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            hearth_store::redb::RedbStore::open(&dir.path().join("s.redb"), Default::default()).unwrap(),
        );
        store.put("before", b"0".to_vec(), None).await.unwrap();
        let changes = follow(store.clone(), "test").await;
        futures::pin_mut!(changes);
        let first = tokio::spawn({
            let store = store.clone();
            async move {
                for i in 1..=3 {
                    store.put(&format!("k{i}"), vec![], None).await.unwrap();
                }
            }
        });
        let mut keys = Vec::new();
        for _ in 0..3 {
            let event = tokio::time::timeout(Duration::from_secs(5), changes.next()).await.unwrap().unwrap();
            keys.push(event.kv.key);
        }
        first.await.unwrap();
        assert_eq!(keys, ["k1", "k2", "k3"]);
    }

    #[tokio::test]
    async fn shared_component_bytes_reach_no_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            hearth_store::redb::RedbStore::open(&dir.path().join("s.redb"), Default::default()).unwrap(),
        );
        let changes = follow(store.clone(), "test").await;
        futures::pin_mut!(changes);
        let sha = "ab".repeat(32);
        for prefix in ["apps/blobs/", "workflows/blobs/"] {
            store.put(&format!("{prefix}{sha}/000000"), vec![0; 1024], None).await.unwrap();
            store.put(&format!("{prefix}{sha}"), br#"{"size":1024}"#.to_vec(), None).await.unwrap();
            store.delete(&format!("{prefix}{sha}")).await.unwrap();
        }
        store.put("apps/records/web", b"{}".to_vec(), None).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), changes.next()).await.unwrap().unwrap();
        assert_eq!(next.kv.key, "apps/records/web", "the blobs' changes were skipped");
    }

    #[tokio::test]
    async fn a_change_made_while_the_store_refused_watches_still_reaches_the_triggers() {
        let dir = tempfile::tempdir().unwrap();
        let redb: Arc<dyn Store> = Arc::new(
            hearth_store::redb::RedbStore::open(&dir.path().join("s.redb"), Default::default()).unwrap(),
        );
        let store = hearth_store::testing::Breaking::new(redb);
        let mut changes = Box::pin(follow(store.clone(), "test").await);
        store.put("k0", vec![], None).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), changes.next()).await.unwrap().unwrap();
        assert_eq!(first.kv.key, "k0");
        store.go_down();
        store.put("k1", vec![], None).await.unwrap();
        store.put("k2", vec![], None).await.unwrap();
        let taking = tokio::spawn(async move {
            let mut keys = Vec::new();
            for _ in 0..2 {
                keys.push(changes.next().await.unwrap().kv.key);
            }
            keys
        });
        assert!(store.until(Duration::from_secs(5), |s| s.watches_refused() > 0).await);
        store.heal();
        let keys = tokio::time::timeout(Duration::from_secs(5), taking).await.unwrap().unwrap();
        assert_eq!(keys, ["k1", "k2"]);
    }
}
