//! Hosts sharing one store (issue 17), as two `Apps` in one process, each
//! with a data dir and a cache of its own: what one deploys, the other
//! serves, with the bytes it fetched from the store; what no version uses
//! goes from the store too; and a store that is not shared gets no bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{self, Harness, eventually, guests, options};
use hearth_apps::{Apps, append_custom_section};
use hearth_store::Store;
use tokio::sync::watch;

/// Host `name` on `a`'s store, with its own data dir, cache and ingress,
/// sharing the store. Stops when the sender drops.
async fn host(a: &Harness, name: &str) -> (Apps, SocketAddr, std::path::PathBuf, watch::Sender<bool>) {
    let store = a.store.clone() as Arc<dyn Store>;
    let mut opts = options(a.dir.path());
    opts.data_dir = a.dir.path().join(format!("data-{name}"));
    opts.cache_dir = a.dir.path().join(format!("cache-{name}"));
    opts.shared = true;
    let data_dir = opts.data_dir.clone();
    let config = hearth_config::Config::open(store.clone(), a.dir.path()).unwrap();
    let apps = Apps::new(store, config.clone(), opts).unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(config.run(rx.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(apps.clone().run(rx.clone()));
    tokio::spawn({
        let apps = apps.clone();
        async move { apps.serve_ingress(listener, hearth_listen::Budget::new(1024).ingress(), rx).await }
    });
    apps.ready().await;
    (apps, addr, data_dir, stop)
}

/// Whether the host at `addr` comes to serve `version` of hello.
async fn serves(addr: SocketAddr, version: Option<u32>) -> bool {
    eventually(Duration::from_secs(30), async || {
        support::request(addr, "GET", "hello.localhost", "/", "").await.version == version
    })
    .await
}

async fn shared_keys(store: &dyn Store) -> Vec<String> {
    store.range("apps/blobs/").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_serves_what_another_deployed_with_bytes_from_the_store() {
    let guests = guests();
    let a = Harness::start_with(|o| o.shared = true).await;
    let (b, b_addr, b_data, _stop) = host(&a, "b").await;

    a.apps.deploy("hello", guests.hello.clone(), None, vec![]).await.unwrap();
    let sha = hearth_wasm::sha256_hex(&guests.hello);
    assert_eq!(
        shared_keys(&*a.store).await,
        [format!("apps/blobs/{sha}"), format!("apps/blobs/{sha}/000000")]
    );
    assert!(serves(b_addr, Some(1)).await, "B serves what A deployed");
    assert!(b_data.join(format!("apps/blobs/{sha}.wasm")).is_file(), "B keeps the bytes it fetched");
    assert_eq!(b.stats().compiles, 1, "B compiled the fetched bytes");

    // A component over several chunks, deployed through B this time.
    let big = append_custom_section(&guests.hello, "padding", &vec![7; 2 << 20]);
    let big_sha = hearth_wasm::sha256_hex(&big);
    b.deploy("hello", big.clone(), None, vec![]).await.unwrap();
    assert!(serves(a.addr, Some(2)).await, "A serves what B deployed");
    assert_eq!(shared_keys(&*a.store).await.iter().filter(|k| k.contains(&big_sha)).count(), 4);
    let on_a = std::fs::read(a.dir.path().join(format!("data/apps/blobs/{big_sha}.wasm"))).unwrap();
    assert!(on_a == big, "A fetched the bytes B deployed, whole");

    // A rollback on A to bytes B has had all along; then the removal takes
    // every copy out of the store.
    a.apps.rollback("hello", None).await.unwrap();
    assert!(serves(b_addr, Some(1)).await);
    a.apps.remove("hello").await.unwrap();
    assert!(serves(b_addr, None).await);
    assert_eq!(shared_keys(&*a.store).await, Vec::<String>::new(), "no version uses them");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_not_shared_holds_no_bytes() {
    let h = Harness::start().await;
    h.apps.deploy("hello", guests().hello.clone(), None, vec![]).await.unwrap();
    assert_eq!(h.get("hello.localhost", "/").await.status, 200);
    assert_eq!(shared_keys(&*h.store).await, Vec::<String>::new());
    h.stop().await;
}
