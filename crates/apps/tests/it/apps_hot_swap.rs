//! Swapping versions under load: no request fails, in-flight requests
//! finish on the version they started on, and rollbacks swap back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::{Client, Harness, KITCHEN_MANIFEST, eventually, guests, request};
use hearth_apps::{Error, append_custom_section};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_swaps_under_load_drop_no_request() {
    let guests = guests();
    let h = Harness::start().await;
    // Three different builds (so some swaps compile and some hit the cache).
    let builds: Vec<Vec<u8>> =
        (0..3u8).map(|i| append_custom_section(&guests.hello, "hearth-test", &[i])).collect();
    h.apps.deploy("swap", builds[0].clone(), None, vec![]).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, addr) = (stop.clone(), h.addr);
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let (mut ok, mut failures, mut last_version) = (0u32, Vec::new(), 0u32);
            while !stop.load(Ordering::Relaxed) {
                match client.send("GET", "swap.localhost", "/", "").await {
                    Ok(reply) if reply.status == 200 && reply.body == "Hello from hearth!\n" => {
                        let version = reply.version.unwrap();
                        assert!(
                            version >= last_version,
                            "went back from version {last_version} to {version}"
                        );
                        last_version = version;
                        ok += 1;
                    }
                    Ok(reply) => failures.push(format!("{} {}", reply.status, reply.body)),
                    Err(e) => {
                        failures.push(e);
                        client = Client::connect(addr).await;
                    }
                }
            }
            (ok, failures, last_version)
        }));
    }

    for swap in 1..=10u32 {
        // Not a wait for anything: the load runs on the version for a while
        // before each swap, so that swaps land among requests in flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let deployed = h.apps.deploy("swap", builds[swap as usize % 3].clone(), None, vec![]).await.unwrap();
        assert_eq!(deployed.version.number, swap + 1);
        // The next request, on any connection, gets the new version.
        assert_eq!(h.get("swap.localhost", "/").await.version, Some(swap + 1));
    }
    // Likewise, some load on the last version before the clients stop.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for client in clients {
        let (ok, failures, last) = client.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        assert_eq!(last, 11, "each client ends on the last version");
        total += ok;
    }
    eprintln!("{total} requests across 10 swaps, none failed");
    assert!(total > 100, "the load ran ({total} requests)");
    assert_eq!(h.apps.stats().failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_their_version() {
    let guests = guests();
    let h = Harness::start().await;
    h.apps.deploy("slow", guests.kitchen.clone(), Some(KITCHEN_MANIFEST.into()), vec![]).await.unwrap();
    let addr = h.addr;
    let in_flight =
        tokio::spawn(async move { request(addr, "GET", "slow.localhost", "/sleep?ms=800", "").await });
    // The request counts once the ingress has handed it to the version it
    // runs on; the deploy must come after that, while it sleeps.
    let routed = eventually(Duration::from_secs(5), async || h.apps.stats().requests == 1).await;
    assert!(routed, "the slow request never reached the app");
    assert!(!in_flight.is_finished(), "the slow request ended before the deploy");
    h.apps.deploy("slow", guests.hello.clone(), None, vec![]).await.unwrap();
    assert_eq!(h.get("slow.localhost", "/").await.body, "Hello from hearth!\n");
    let reply = in_flight.await.unwrap();
    assert_eq!((reply.status, reply.version, reply.body.as_str()), (200, Some(1), "slept 800 ms\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_previous_and_to_a_number() {
    let guests = guests();
    let h = Harness::start().await;
    let name = "roll";
    // Each waits for its code to be optimized, and so cached.
    h.apps.deploy(name, guests.hello.clone(), None, vec![]).await.unwrap();
    h.optimized(name).await;
    h.apps.deploy(name, guests.kitchen.clone(), Some(KITCHEN_MANIFEST.into()), vec![]).await.unwrap();
    h.optimized(name).await;
    h.apps.deploy(name, append_custom_section(&guests.hello, "v3", b""), None, vec![]).await.unwrap();
    h.optimized(name).await;
    let body = async |h: &Harness| {
        let reply = h.get("roll.localhost", "/").await;
        (reply.version.unwrap(), reply.body)
    };
    assert_eq!(body(&h).await, (3, "Hello from hearth!\n".into()));

    let compiles = h.apps.stats().compiles;
    assert_eq!(h.apps.rollback(name, None).await.unwrap().number, 2);
    assert_eq!(body(&h).await, (2, "kitchen ok\n".into()));
    assert_eq!(h.apps.rollback(name, None).await.unwrap().number, 1);
    assert_eq!(body(&h).await.0, 1);
    let err = h.apps.rollback(name, None).await.unwrap_err();
    assert!(matches!(err, Error::NoEarlierVersion(_)), "{err}");
    assert_eq!(h.apps.rollback(name, Some(3)).await.unwrap().number, 3);
    assert_eq!(body(&h).await.0, 3);
    let err = h.apps.rollback(name, Some(9)).await.unwrap_err();
    assert_eq!(err.to_string(), "app \"roll\" has no version 9; its versions are 1, 2, 3");
    assert_eq!(h.apps.stats().compiles, compiles, "rollbacks load compiled code from the cache");

    let (versions, active) = h.apps.versions(name).await.unwrap();
    assert_eq!((versions.len(), active), (3, 3));
    assert_eq!(versions[1].manifest.key_value, ["default", "other"]);
    assert_eq!(versions[0].sha256.len(), 64);
    // Numbering goes on after a rollback.
    h.apps.rollback(name, Some(1)).await.unwrap();
    assert_eq!(h.apps.deploy(name, guests.hello.clone(), None, vec![]).await.unwrap().version.number, 4);
    assert!(matches!(h.apps.rollback("nope", None).await, Err(Error::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_are_pruned_with_their_code() {
    let guests = guests();
    let h = Harness::start_with(|o| o.max_versions = 3).await;
    for i in 0..5u8 {
        h.apps.deploy("many", append_custom_section(&guests.hello, "n", &[i]), None, vec![]).await.unwrap();
        h.optimized("many").await;
    }
    let (versions, active) = h.apps.versions("many").await.unwrap();
    let numbers: Vec<u32> = versions.iter().map(|v| v.number).collect();
    assert_eq!(numbers, [3, 4, 5]);
    assert_eq!(active, 5);
    let count = |dir: &str| std::fs::read_dir(h.dir.path().join(dir)).unwrap().count();
    assert_eq!(count("data/apps/blobs"), 3);
    let engine_dir = std::fs::read_dir(h.dir.path().join("cache/apps/compiled"))
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name().to_string_lossy().starts_with("engine-"))
        .expect("an engine's directory");
    assert_eq!(std::fs::read_dir(engine_dir.path()).unwrap().count(), 3);
}
