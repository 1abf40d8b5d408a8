//! The store survives `kill -9` at any moment: every write the API
//! acknowledged is there after a restart, and the revision is consistent with
//! the data and the event history.
//!
//! This fails if commits are not made durable before the answer (e.g. redb's
//! `Durability::None`): the acknowledged tail of each round is then lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_client::types::{Encoding, EventsQuery, PutKv};
use hearth_testkit::Daemon;
use rand::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");
const WRITERS: usize = 8;
const ROUNDS: usize = 4;

fn put(value: String) -> PutKv {
    PutKv { value, encoding: Encoding::Utf8, lease: None, if_mod_revision: None }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_write_survives_kill_9() {
    let mut daemon = Daemon::start(BIN).await;
    // key -> (value, revision) of every acknowledged write, across rounds.
    let mut acked: BTreeMap<String, (String, u64)> = BTreeMap::new();
    // The last acknowledged sequence number written to the one hot key.
    let mut hot_acked: u64 = 0;

    for round in 0..ROUNDS {
        let client = daemon.client();
        let log = Arc::new(Mutex::new(Vec::<(String, String, u64)>::new()));
        let hot = Arc::new(Mutex::new(hot_acked));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let (client, log, hot, stop) = (client.clone(), log.clone(), hot.clone(), stop.clone());
            writers.spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if w == 0 {
                        // One writer also overwrites a single hot key.
                        let seq = *hot.lock().expect("lock") + 1;
                        match client.kv_put("hot", &put(seq.to_string())).await {
                            Ok(_) => *hot.lock().expect("lock") = seq,
                            Err(_) => break,
                        }
                    }
                    let key = format!("r{round}/w{w}/{i}");
                    let value = format!("{round}-{w}-{i}");
                    match client.kv_put(&key, &put(value.clone())).await {
                        Ok(result) => log.lock().expect("lock").push((key, value, result.revision)),
                        // The daemon is gone: whatever was in flight is not acknowledged.
                        Err(_) => break,
                    }
                }
            });
        }
        let delay = rand::rng().random_range(150..600);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        while writers.join_next().await.is_some() {}

        let round_log = std::mem::take(&mut *log.lock().expect("lock"));
        assert!(round_log.len() > 10, "round {round}: only {} writes before the kill", round_log.len());
        for (key, value, revision) in round_log {
            acked.insert(key, (value, revision));
        }
        hot_acked = *hot.lock().expect("lock");

        daemon.restart().await;
        let client = daemon.client();
        let status = client.status().await.expect("status after restart");
        let list = client.kv_list("").await.expect("list after restart");
        let stored: BTreeMap<&str, (&str, u64)> =
            list.entries.iter().map(|e| (e.key.as_str(), (e.value.as_str(), e.mod_revision))).collect();

        // Every acknowledged write is there, at the revision it was acknowledged with.
        for (key, (value, revision)) in &acked {
            assert_eq!(
                stored.get(key.as_str()),
                Some(&(value.as_str(), *revision)),
                "round {round}: acknowledged write {key}={value}@{revision} lost or changed"
            );
        }
        let hot_now: u64 = stored.get("hot").map(|(v, _)| v.parse().expect("number")).unwrap_or(0);
        assert!(hot_now >= hot_acked, "round {round}: hot key went back from {hot_acked} to {hot_now}");

        // The revision is consistent: no key is newer than the store, no two
        // writes share a revision, and the history is complete and in order.
        let max_acked = acked.values().map(|(_, r)| *r).max().unwrap_or(0);
        assert!(status.store.revision >= max_acked, "round {round}: revision went back");
        assert!(list.revision == status.store.revision);
        let mut revisions: Vec<u64> = list.entries.iter().map(|e| e.mod_revision).collect();
        revisions.sort_unstable();
        revisions.dedup();
        assert_eq!(revisions.len(), list.entries.len(), "round {round}: two keys share a revision");
        assert!(revisions.last().copied().unwrap_or(0) <= status.store.revision);
        let mut history_revisions: Vec<u64> = Vec::new();
        loop {
            let since = history_revisions.last().map_or(1, |r| r + 1);
            let page = client
                .events(&EventsQuery { since: Some(since), limit: Some(10_000), ..Default::default() })
                .await
                .expect("history");
            if page.events.is_empty() {
                break;
            }
            history_revisions.extend(page.events.iter().map(|e| e.revision));
        }
        assert_eq!(
            history_revisions,
            (1..=status.store.revision).collect::<Vec<_>>(),
            "round {round}: the event history has a gap or a reorder"
        );
    }
}
