//! Durability across restarts, crashes, and exclusive access to the file.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hearth_store::redb::{Options, RedbStore};
use hearth_store::{Error, Store};

#[tokio::test]
async fn reopen_keeps_data_revision_and_history() {
    let (dir, store) = support::store();
    store.put("a", b"1".to_vec(), None).await.unwrap();
    store.put("b", b"2".to_vec(), None).await.unwrap();
    store.put("a", b"3".to_vec(), None).await.unwrap();
    store.delete("b").await.unwrap();
    let before = store.range("").await.unwrap();
    store.shutdown().await;
    drop(store);

    let store = RedbStore::open(&support::db_path(&dir), Options::default()).unwrap();
    assert_eq!(store.range("").await.unwrap(), before);
    assert_eq!(store.revision().await.unwrap(), 4);
    // The event log survives too, so a watcher can resume where it was.
    let mut watch = store.watch("", 2).await.unwrap();
    let revisions: Vec<_> = support::take(&mut watch, 3).await.iter().map(|e| e.revision()).collect();
    assert_eq!(revisions, [2, 3, 4]);
    // New writes continue the revision sequence.
    assert_eq!(store.put("c", Vec::new(), None).await.unwrap(), 5);
}

#[tokio::test]
async fn compaction_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let options = Options { history_revisions: 2, ..Options::default() };
    let store = RedbStore::open(&path, options.clone()).unwrap();
    for i in 0..5u8 {
        store.put("k", vec![i], None).await.unwrap();
    }
    drop(store);
    let store = RedbStore::open(&path, options).unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 4);
    assert!(matches!(store.watch("", 3).await, Err(Error::Compacted { requested: 3, oldest: 4 })));
}

/// redb locks the file per open file description, so a second open in the
/// same process is refused like one from another process.
#[tokio::test]
async fn a_second_open_is_locked_until_the_first_is_dropped() {
    let (dir, store) = support::store();
    let path = support::db_path(&dir);
    let error = RedbStore::open(&path, Options::default()).unwrap_err();
    assert!(matches!(&error, Error::Locked { path: p } if *p == path), "{error}");

    // Clones share the one open; only dropping the last releases the file.
    let clone = store.clone();
    drop(store);
    assert!(matches!(RedbStore::open(&path, Options::default()), Err(Error::Locked { .. })));
    clone.put("k", b"v".to_vec(), None).await.unwrap();
    drop(clone);

    let store = RedbStore::open(&path, Options::default()).unwrap();
    assert!(store.get("k").await.unwrap().is_some());
}

#[tokio::test]
async fn a_file_that_is_not_a_store_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(&path, vec![0xA5; 8192]).unwrap();
    let error = RedbStore::open(&path, Options::default()).unwrap_err();
    assert!(matches!(error, Error::Open { .. } | Error::Corrupt(_)), "{error}");
}

const CHILD_ENV: &str = "HEARTH_STORE_CRASH_CHILD_PATH";

/// Not a test on its own: the writer process of
/// [`acknowledged_writes_survive_kill_9`]. It writes as fast as it can from
/// several tasks and prints each acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by acknowledged_writes_survive_kill_9 in a child process"]
async fn crash_child() {
    use std::io::Write;
    use std::sync::Arc;

    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let store = Arc::new(RedbStore::open(path.as_ref(), Options::default()).unwrap());
    let mut tasks = Vec::new();
    for task in 0..4 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("k/{task}/{i}");
                let revision = store.put(&key, key.clone().into_bytes(), None).await.unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "ack {revision} {key}").unwrap();
                out.flush().unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Kills a writing process with SIGKILL mid-stream, then checks that every
/// write it acknowledged is in the file and that the revision is
/// consistent with the writes found.
#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    // The test's name in the `it` binary is its module's path and its own.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "store_reopen::crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split_whitespace();
            if parts.next() == Some("ack") {
                let revision: u64 = parts.next().unwrap().parse().unwrap();
                acks.push((revision, parts.next().unwrap().to_owned()));
            }
        }
        acks
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let acks = reader.join().unwrap();
    assert!(acks.len() > 10, "the child acknowledged only {} writes", acks.len());

    let store = RedbStore::open(&path, Options::default()).unwrap();
    let range = store.range("").await.unwrap();
    let max_ack = acks.iter().map(|(revision, _)| *revision).max().unwrap();
    assert!(range.revision >= max_ack, "revision {} < acknowledged {max_ack}", range.revision);
    // Every write made a new key, so the revision counts the keys exactly.
    assert_eq!(range.kvs.len() as u64, range.revision);
    for (revision, key) in &acks {
        let kv = store.get(key).await.unwrap().unwrap_or_else(|| panic!("lost {key}"));
        assert_eq!(kv.mod_revision, *revision);
    }
}
