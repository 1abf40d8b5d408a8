//! `/v1/events?follow=true`: a live stream of every change.

use std::time::Duration;

use futures::StreamExt;
use hearth_client::types::{Encoding, EventKind, EventsQuery, PutKv};
use hearth_store::Store;
use hearth_testkit::Daemon;
use hearth_testkit::etcd::Etcd;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn put(value: &str) -> PutKv {
    PutKv { value: value.into(), encoding: Encoding::Utf8, lease: None, if_mod_revision: None }
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_streams_changes_live_and_resumes_from_a_revision() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    // The daemon writes keys of its own (the workflow executor's lease):
    // revisions are compared with those the writes returned.
    let before = client.kv_put("before", &put("0")).await.expect("put").revision;

    // Only what happens next.
    let mut live = Box::pin(client.follow_events(None, Some("kv/")).await.expect("follow"));
    let mut written = Vec::new();
    for i in 1..=20 {
        written.push(client.kv_put(&format!("k{i}"), &put(&i.to_string())).await.expect("put").revision);
    }
    written.push(client.kv_delete("k3").await.expect("delete").revision);
    let mut seen = Vec::new();
    while seen.len() < 21 {
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("event within 10 s")
            .expect("stream open")
            .expect("event");
        seen.push(event);
    }
    let revisions: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, written);
    assert_eq!(seen[0].key, "kv/k1");
    assert_eq!(seen[20].kind, EventKind::Delete);
    assert_eq!(seen[20].value, None);

    // Resume from an old revision: replayed from history, then live.
    let mut replay = Box::pin(client.follow_events(Some(1), Some("kv/")).await.expect("follow"));
    let first = replay.next().await.expect("open").expect("event");
    assert_eq!((first.revision, first.key.as_str()), (before, "kv/before"));

    // Prefix filter on the server.
    let mut filtered = Box::pin(client.follow_events(Some(1), Some("kv/k2")).await.expect("follow"));
    let mut keys = Vec::new();
    for _ in 0..2 {
        keys.push(filtered.next().await.expect("open").expect("event").key);
    }
    assert_eq!(keys, vec!["kv/k2", "kv/k20"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_expiry_shows_up_as_a_delete_event() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let lease = client.lease_grant(1).await.expect("grant");
    let mut body = put("short-lived");
    body.lease = Some(lease.id);
    client.kv_put("session", &body).await.expect("put");
    let mut events = Box::pin(client.follow_events(Some(1), Some("kv/")).await.expect("follow"));
    let put_event = events.next().await.expect("open").expect("event");
    assert_eq!(put_event.kind, EventKind::Put);
    let delete = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the lease expires within 10 s")
        .expect("open")
        .expect("event");
    assert_eq!((delete.kind, delete.key.as_str()), (EventKind::Delete, "kv/session"));
    assert!(client.kv_get("session").await.is_err());
    let leases = client.leases().await.expect("leases").leases;
    assert!(leases.iter().all(|l| l.id != lease.id), "the lease is gone: {leases:?}");
}

/// Issue 13, item 4: a list never waits for a write, whatever its `since`
/// and prefix, and `since=0` is the oldest revision still retained.
#[tokio::test(flavor = "multi_thread")]
async fn a_list_never_waits_for_a_write_and_since_zero_is_the_oldest_revision() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let first = client.kv_put("a", &put("1")).await.expect("put").revision;
    client.kv_put("b", &put("2")).await.expect("put");
    let list = |since: Option<u64>, prefix: Option<&str>| hearth_client::types::EventsQuery {
        follow: None,
        since,
        prefix: prefix.map(str::to_owned),
        limit: None,
    };
    let within = Duration::from_secs(5);
    let nothing = tokio::time::timeout(within, client.events(&list(Some(0), Some("nothing/"))))
        .await
        .expect("a list under a prefix nothing was written to answers at once")
        .expect("list");
    assert!(nothing.events.is_empty());
    let all = tokio::time::timeout(within, client.events(&list(Some(0), Some("kv/"))))
        .await
        .expect("since=0 answers at once")
        .expect("list");
    let keys: Vec<&str> = all.events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["kv/a", "kv/b"]);
    assert_eq!(all.events[0].revision, first);
    // Following from 0 replays from the oldest revision too.
    let mut replay = Box::pin(client.follow_events(Some(0), Some("kv/")).await.expect("follow"));
    let event =
        tokio::time::timeout(within, replay.next()).await.expect("an event").expect("open").expect("event");
    assert_eq!(event.key, "kv/a");
}

/// Event streams of this daemon last half a second.
async fn short_lived_streams() -> Daemon {
    Daemon::start_with_env(BIN, &[("HEARTH_TEST_EVENT_STREAM_LIFETIME_MS", std::ffi::OsStr::new("500"))])
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_at_its_lifetime_saying_where_to_resume() {
    let daemon = short_lived_streams().await;
    let client = daemon.client();
    let written = client.kv_put("before", &put("0")).await.expect("put").revision;
    let response = client.send(hyper::Method::GET, "/v1/events?follow=true&prefix=kv/&since=1", None).await;
    let body = response.expect("follow").into_body();
    let body = tokio::time::timeout(Duration::from_secs(10), http_body_util::BodyExt::collect(body))
        .await
        .expect("the stream ends within 10 s of its half-second lifetime")
        .expect("a clean end")
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\"key\":\"kv/before\""), "{body}");
    // The last event: no data, and the revision it is complete through.
    let end = body.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(end.contains("event: end"), "the stream did not end with an `end` event: {body}");
    assert!(end.lines().any(|l| l == format!("id: {written}")), "{end}");
    assert!(!end.contains("data:"), "{end}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_reconnects_past_a_streams_lifetime_and_misses_nothing() {
    let daemon = short_lived_streams().await;
    let client = daemon.client();
    let mut live = Box::pin(client.follow_events(None, Some("kv/")).await.expect("follow"));
    // Writes spread over six lifetimes, so that some land while a stream
    // is ending and its successor is being opened.
    let writer = tokio::spawn({
        let client = client.clone();
        async move {
            let mut written = Vec::new();
            for i in 0..30 {
                written
                    .push(client.kv_put(&format!("k{i}"), &put(&i.to_string())).await.expect("put").revision);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            written
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 30 {
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on past its lifetime")
            .expect("event");
        seen.push(event.revision);
    }
    let written = writer.await.expect("writer");
    assert_eq!(seen, written, "every change once, in order, across the reconnects");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_follow_in_the_cli_goes_on_past_a_streams_lifetime() {
    use std::io::BufRead as _;
    let daemon = short_lived_streams().await;
    let client = daemon.client();
    let mut cli = std::process::Command::new(BIN)
        .args(["events", "-f", "--json", "--prefix", "kv/", "--since", "1"])
        .env("HEARTH_DATA_DIR", daemon.data_dir())
        .env_remove("HEARTH_HOST")
        .env_remove("HEARTH_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run hearth events -f");
    let stdout = cli.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut written = Vec::new();
    for i in 0..10 {
        written.push(client.kv_put(&format!("c{i}"), &put("v")).await.expect("put").revision);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.recv())
            .await
            .expect("a line within 10 s")
            .unwrap_or_else(|| panic!("`hearth events -f` stopped after {seen:?}"));
        let event: hearth_client::types::ChangeEvent = serde_json::from_str(&line).expect("a JSON event");
        seen.push(event.revision);
    }
    let _ = cli.kill();
    let _ = cli.wait();
    assert_eq!(seen, written, "every change once, across two seconds of half-second streams");
}

/// The component bytes hosts share through the store (`apps/blobs/` and
/// `workflows/blobs/`: a manifest, and a megabyte a chunk, at each deploy)
/// are no events: neither the list nor the stream shows them, whatever
/// the prefix asked for.
#[tokio::test(flavor = "multi_thread")]
async fn shared_component_bytes_are_not_events() {
    let etcd = Etcd::start();
    let daemon = Daemon::start_with_env(BIN, &[("HEARTH_STORE", std::ffi::OsStr::new(&etcd.url()))]).await;
    let client = daemon.client();
    let mut everything = Box::pin(client.follow_events(None, None).await.expect("follow"));
    let mut blobs = Box::pin(client.follow_events(None, Some("apps/blobs/")).await.expect("follow"));
    // Written as another host's deploy writes them: to the shared store.
    let options = hearth_store::etcd::Options::from_url(&etcd.url()).expect("the etcd URL");
    let store = hearth_store::etcd::EtcdStore::connect(options).await.expect("connect to etcd");
    let sha = "ab".repeat(32);
    for prefix in ["apps/blobs/", "workflows/blobs/"] {
        store.put(&format!("{prefix}{sha}/000000"), vec![0xff; 4096], None).await.expect("a chunk");
        store.put(&format!("{prefix}{sha}"), br#"{"size":4096}"#.to_vec(), None).await.expect("a manifest");
    }
    let after = client.kv_put("after", &put("1")).await.expect("put").revision;
    let is_blob = |key: &str| key.starts_with("apps/blobs/") || key.starts_with("workflows/blobs/");

    // The stream of every key goes from before the blobs to after them
    // without one (the daemon writes keys of its own meanwhile).
    let mut streamed = Vec::new();
    while !streamed.contains(&"kv/after".to_owned()) {
        let event = tokio::time::timeout(Duration::from_secs(10), everything.next())
            .await
            .expect("event within 10 s")
            .expect("stream open")
            .expect("event");
        streamed.push(event.key);
    }
    assert!(!streamed.iter().any(|k| is_blob(k)), "{streamed:?}");
    // A stream of the blobs' own prefix gets nothing.
    let nothing = tokio::time::timeout(Duration::from_secs(1), blobs.next()).await;
    assert!(nothing.is_err(), "the stream of apps/blobs/ got {nothing:?}");

    // The list, of every key and of the blobs' prefix.
    let list = |prefix: Option<&str>| EventsQuery {
        follow: None,
        since: Some(0),
        prefix: prefix.map(str::to_owned),
        limit: Some(10_000),
    };
    let all = client.events(&list(None)).await.expect("list");
    let keys: Vec<&str> = all.events.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"kv/after") && all.revision >= after, "{keys:?}");
    assert!(!keys.iter().any(|k| is_blob(k)), "{keys:?}");
    let listed = client.events(&list(Some("workflows/blobs/"))).await.expect("list");
    assert!(listed.events.is_empty(), "{:?}", listed.events);
    // They are still there, for the hosts that fetch them.
    assert_eq!(store.range("apps/blobs/").await.expect("range").kvs.len(), 2);
}
