//! State across restarts: apps serve their active version again without a
//! recompile, key-value data survives restarts and redeploys, and a second
//! service on the same store follows the first one's changes and shares
//! the cron firings with it, each once.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{Harness, KITCHEN_MANIFEST, eventually, guests, options};
use hearth_apps::{Apps, Error, append_custom_section};
use hearth_store::Store;
use hearth_store::testing::Breaking;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_active_versions_without_recompiling() {
    let guests = guests();
    let h = Harness::start().await;
    // Each new version serves Winch's code until Cranelift's is in the
    // cache; what a restart loads is Cranelift's.
    h.apps.deploy("hello", guests.hello.clone(), None, vec![]).await.unwrap();
    h.optimized("hello").await;
    h.apps.deploy("hello", guests.kitchen.clone(), Some(KITCHEN_MANIFEST.into()), vec![]).await.unwrap();
    h.optimized("hello").await;
    h.apps.rollback("hello", Some(1)).await.unwrap();
    h.apps
        .deploy("counter", guests.counter.clone(), Some(guests.counter_manifest.clone()), vec![])
        .await
        .unwrap();
    h.optimized("counter").await;
    for _ in 0..3 {
        assert_eq!(h.get("counter.localhost", "/").await.status, 200);
    }
    let dir = h.stop().await;

    let h = Harness::start_in(dir).await;
    let stats = h.apps.stats();
    assert_eq!(stats.compiles, 0, "nothing was recompiled: {stats:?}");
    assert_eq!(stats.cache_loads, 2, "each app's active version came from the cache: {stats:?}");
    let reply = h.get("hello.localhost", "/").await;
    assert_eq!((reply.status, reply.version, reply.body.as_str()), (200, Some(1), "Hello from hearth!\n"));
    let reply = h.get("counter.localhost", "/").await;
    assert_eq!(reply.body, "This page has been visited 4 times.\n");
    assert_eq!(h.apps.get("hello").await.unwrap().serving, Some(1));
    // Redeploying bytes seen before does not compile either.
    let deployed =
        h.apps.deploy("hello", guests.kitchen.clone(), Some(KITCHEN_MANIFEST.into()), vec![]).await.unwrap();
    assert!(!deployed.compiled);
    assert_eq!(h.apps.stats().compiles, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cache_is_rebuilt_from_the_kept_bytes() {
    let guests = guests();
    let h = Harness::start().await;
    h.apps.deploy("hello", guests.hello.clone(), None, vec![]).await.unwrap();
    h.apps.deploy("other", append_custom_section(&guests.hello, "x", b""), None, vec![]).await.unwrap();
    let dir = h.stop().await;
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    // And one app's bytes are gone too: it reports why, the other serves.
    let blobs = dir.path().join("data/apps/blobs");
    let sha = hearth_sha(&append_custom_section(&guests.hello, "x", b""));
    std::fs::remove_file(blobs.join(format!("{sha}.wasm"))).unwrap();

    let h = Harness::start_in(dir).await;
    assert_eq!(h.apps.stats().compiles, 1);
    assert_eq!(h.get("hello.localhost", "/").await.status, 200);
    let reply = h.get("other.localhost", "/").await;
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("deploy the app again"), "{}", reply.body);
    let info = h.apps.get("other").await.unwrap();
    assert_eq!(info.serving, None);
    assert!(info.error.unwrap().contains("is missing"));
}

fn hearth_sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_data_survives_redeploys_restarts_and_removal() {
    let guests = guests();
    let h = Harness::start().await;
    let (counter, manifest) = (&guests.counter, Some(guests.counter_manifest.clone()));
    let visits = async |h: &Harness| h.get("counter.localhost", "/").await.body;
    h.apps.deploy("counter", counter.clone(), manifest.clone(), vec![]).await.unwrap();
    assert_eq!(visits(&h).await, "This page has been visited 1 times.\n");
    assert_eq!(visits(&h).await, "This page has been visited 2 times.\n");
    h.apps
        .deploy("counter", append_custom_section(counter, "v2", b""), manifest.clone(), vec![])
        .await
        .unwrap();
    assert_eq!(visits(&h).await, "This page has been visited 3 times.\n");
    // The data is in the store, where the app's name and store name say.
    let kv = h.store.get("apps/data/counter/default/visits").await.unwrap().unwrap();
    assert_eq!(kv.value, b"3");

    let dir = h.stop().await;
    let h = Harness::start_in(dir).await;
    assert_eq!(visits(&h).await, "This page has been visited 4 times.\n");

    h.apps.remove("counter").await.unwrap();
    h.apps.deploy("counter", counter.clone(), manifest.clone(), vec![]).await.unwrap();
    assert_eq!(visits(&h).await, "This page has been visited 5 times.\n", "removal keeps the data");
    h.apps.delete_data("counter").await.unwrap();
    assert_eq!(visits(&h).await, "This page has been visited 1 times.\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_are_not_lost() {
    let guests = guests();
    let h = Harness::start().await;
    h.apps
        .deploy("counter", guests.counter.clone(), Some(guests.counter_manifest.clone()), vec![])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = h.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = support::Client::connect(addr).await;
            for _ in 0..10 {
                let reply = client.send("GET", "counter.localhost", "/", "").await.unwrap();
                assert_eq!(reply.status, 200, "{reply:?}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(h.get("counter.localhost", "/").await.body, "This page has been visited 41 times.\n");
}

/// A second `Apps` on `store` (A's, maybe wrapped), with an ingress of its
/// own: B shares the store and the kept bytes, but has a cache of its own,
/// as a second daemon on another host would. Stops when the sender drops.
async fn second_service(a: &Harness, store: Arc<dyn Store>) -> (Apps, SocketAddr, watch::Sender<bool>) {
    let mut opts = options(a.dir.path());
    opts.cache_dir = a.dir.path().join("cache-b");
    let config = hearth_config::Config::open(store.clone(), a.dir.path()).unwrap();
    let b = Apps::new(store, config.clone(), opts).unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(config.run(rx.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = listener.local_addr().unwrap();
    tokio::spawn(b.clone().run(rx.clone()));
    tokio::spawn({
        let b = b.clone();
        async move { b.serve_ingress(listener, hearth_listen::Budget::new(1024).ingress(), rx).await }
    });
    b.ready().await;
    (b, b_addr, stop)
}

/// Whether the service at `addr` comes to serve `version` of hello.
async fn serves(addr: SocketAddr, version: Option<u32>) -> bool {
    eventually(Duration::from_secs(30), async || {
        support::request(addr, "GET", "hello.localhost", "/", "").await.version == version
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_service_on_the_same_store_follows_changes() {
    let guests = guests();
    let a = Harness::start().await;
    let (b, b_addr, _stop) = second_service(&a, a.store.clone() as Arc<dyn Store>).await;
    a.apps.deploy("hello", guests.hello.clone(), None, vec![]).await.unwrap();
    assert!(serves(b_addr, Some(1)).await, "B serves what A deployed");
    a.apps.deploy("hello", append_custom_section(&guests.hello, "2", b""), None, vec![]).await.unwrap();
    assert!(serves(b_addr, Some(2)).await, "B follows a redeploy");
    a.apps.rollback("hello", None).await.unwrap();
    assert!(serves(b_addr, Some(1)).await, "B follows a rollback");
    a.apps.remove("hello").await.unwrap();
    assert!(serves(b_addr, None).await, "B follows a removal");
    assert!(matches!(b.get("hello").await, Err(Error::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_service_misses_no_change_made_while_its_watches_were_broken() {
    let guests = guests();
    let a = Harness::start().await;
    let store = Breaking::new(a.store.clone() as Arc<dyn Store>);
    let (_b, b_addr, _stop) = second_service(&a, store.clone() as Arc<dyn Store>).await;
    // B's store is unreachable while A deploys twice.
    store.go_down();
    a.apps.deploy("hello", guests.hello.clone(), None, vec![]).await.unwrap();
    a.apps.deploy("hello", append_custom_section(&guests.hello, "2", b""), None, vec![]).await.unwrap();
    assert!(store.until(Duration::from_secs(10), |s| s.watches_refused() > 0).await);
    store.heal();
    assert!(serves(b_addr, Some(2)).await, "B caught up with both deploys");
    // Then its watches break every few changes.
    store.break_every(2);
    a.apps.rollback("hello", None).await.unwrap();
    assert!(serves(b_addr, Some(1)).await, "B follows a rollback through broken watches");
    a.apps.remove("hello").await.unwrap();
    assert!(serves(b_addr, None).await, "B follows a removal through broken watches");
}

/// docs/apps.md: "Two daemons on one store fire each cron slot once
/// between them". Two daemons cannot open one embedded store (redb locks its file,
/// and the second `hearth serve` on a data dir is refused), so this is the
/// closest true thing: two services in one process on one store, each with
/// its cron loop, as two daemons on a shared store would be. Every second's
/// firing is called once, by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_store_fire_each_cron_slot_once_between_them() {
    let a = Harness::start().await;
    let (b, b_addr, stop) = second_service(&a, a.store.clone() as Arc<dyn Store>).await;

    let manifest =
        format!("{KITCHEN_MANIFEST}\n[[cron]]\nschedule = \"* * * * * *\"\npath = \"/kv/incr?key=fired\"\n");
    a.apps.deploy("kitchen", guests().kitchen.clone(), Some(manifest), vec![]).await.unwrap();
    let b_serves = eventually(Duration::from_secs(30), async || {
        support::request(b_addr, "GET", "kitchen.localhost", "/", "").await.status == 200
    })
    .await;
    assert!(b_serves, "B serves what A deployed, so both can fire its cron");

    // The firings each service called, from its own log.
    let fired = async |apps: &Apps| -> Vec<u64> {
        let (lines, _) = apps.logs("kitchen").await.unwrap();
        lines
            .iter()
            .filter_map(|l| l.text.strip_prefix("Cron cron-0 (the firing at "))
            .filter(|rest| rest.ends_with(": 200."))
            .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let enough =
        eventually(Duration::from_secs(30), async || fired(&a.apps).await.len() + fired(&b).await.len() >= 6)
            .await;
    assert!(enough, "fewer than six firings in 30 s");
    stop.send_replace(true);
    let (by_a, by_b) = (fired(&a.apps).await, fired(&b).await);
    eprintln!("firings called by A: {by_a:?}; by B: {by_b:?}");
    let mut all: Vec<u64> = by_a.iter().chain(&by_b).copied().collect();
    all.sort_unstable();
    let mut distinct = all.clone();
    distinct.dedup();
    assert_eq!(all, distinct, "a firing was called twice: by A {by_a:?}, by B {by_b:?}");
    // And none was left out between the first and the last.
    let (first, last) = (all[0], all[all.len() - 1]);
    let slots: Vec<u64> = (first / 1000..=last / 1000).map(|s| s * 1000).collect();
    assert_eq!(all, slots, "firings were missed: by A {by_a:?}, by B {by_b:?}");
    a.stop().await;
}
