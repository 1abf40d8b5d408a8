//! The supervisor against a real store: a leader deposed without knowing
//! it writes nothing once another host is elected.

use std::sync::Arc;
use std::time::Duration;

use hearth_store::Store;
use hearth_store::redb::RedbStore;
use tokio::sync::watch;

use crate::check::{CheckKind, CheckSpec};
use crate::{Register, Services, record};

fn services(store: &Arc<dyn Store>, dir: &std::path::Path) -> Services {
    let networks = hearth_net::Networks::new(
        store.clone(),
        hearth_net::Options {
            prefix: "tsv".into(),
            enabled: false,
            default_network: false,
            default_nat: false,
            host: "one".into(),
            overlay: None,
        },
    );
    let options = hearth_machines::Options {
        data_dir: dir.join("data"),
        cache_dir: dir.join("cache"),
        agent: None,
        host: "one".into(),
    };
    let machines = hearth_machines::Machines::new(
        store.clone(),
        networks,
        options,
        hearth_machines::probe::probe_host(),
    )
    .unwrap();
    Services::new(store.clone(), machines)
}

/// An instance on `port` with a TCP check: it starts critical, and only
/// the supervisor's checker makes it passing.
fn register(id: &str, port: u16) -> Register {
    Register {
        id: Some(id.into()),
        address: [127, 0, 0, 1].into(),
        port,
        ttl_s: 3600,
        checks: vec![CheckSpec {
            kind: CheckKind::Tcp,
            interval_ms: 200,
            timeout_ms: 200,
            passes: 1,
            failures: 1,
        }],
        tags: Vec::new(),
        routes: None,
    }
}

/// The status of instance `id` of `api`, as stored.
async fn health(store: &Arc<dyn Store>, id: &str) -> String {
    let Some(kv) = store.get(&record::health_key("api", id)).await.unwrap() else { return "none".into() };
    let value: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    value["status"].as_str().unwrap_or("?").to_owned()
}

async fn until(what: &str, check: impl AsyncFn() -> bool) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_supervisor_writes_nothing_once_another_is_elected() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.path().join("state.redb"), Default::default()).unwrap());
    let services = services(&store, dir.path());
    let term = store.put("hosts/leader", b"one".to_vec(), None).await.unwrap();
    let fenced: Arc<dyn Store> = Arc::new(hearth_store::Fenced::new(store.clone(), "hosts/leader", term));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(services.clone().run_fenced(fenced, stopped));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    services.register("api", register("a", port)).await.unwrap();
    until("the leader's checker passing a", async || health(&store, "a").await == "passing").await;

    // Another host is elected; this one does not know yet: its checker
    // finds b passing and cannot say so.
    store.delete("hosts/leader").await.unwrap();
    store.put("hosts/leader", b"two".to_vec(), None).await.unwrap();
    services.register("api", register("b", port)).await.unwrap();
    assert_eq!(health(&store, "b").await, "critical", "registered critical");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(health(&store, "b").await, "critical", "the deposed leader's checker wrote b's health");

    stop.send(true).unwrap();
    task.await.unwrap();
    // Run unfenced, the same supervisor writes it: the refusal was the fence's.
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(services.clone().run(stopped));
    until("b passing", async || health(&store, "b").await == "passing").await;
    stop.send(true).unwrap();
    task.await.unwrap();
}
