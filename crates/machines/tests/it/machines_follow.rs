//! The machines service follows `machines/` in the store through a
//! `Follower`, so a record written by any writer (another daemon on a shared
//! store, a future host) is acted on, even while the watches underneath
//! break. What it does here needs no VM: a machine whose record asks for
//! `stopped` while it was only `created` is marked stopped, and a stopped
//! machine created with `--rm` is removed.

use std::sync::Arc;
use std::time::Duration;

use hearth_machines::record::{self, Desired, MachineRecord, Spec, State, Status};
use hearth_machines::vmm::Backend;
use hearth_machines::{Machines, Options};
use hearth_store::redb::{Options as StoreOptions, RedbStore};
use hearth_store::testing::Breaking;
use hearth_store::{Op, Store, Txn};
use hearth_testkit::wait_until;

fn record(name: &str, desired: Desired, state: State, auto_remove: bool) -> MachineRecord {
    MachineRecord {
        name: name.into(),
        host: None,
        spec: Spec {
            image: "test".into(),
            image_digest: "sha256:0".into(),
            backend: Backend::QemuTcg,
            cpus: 1,
            memory_mib: 128,
            entrypoint: vec![],
            env: vec![],
            workdir: None,
            user: None,
            restart: Default::default(),
            kernel: None,
            auto_remove,
            nics: vec![],
            ports: vec![],
            disk_mib: None,
            on_config_change: None,
            sleep_after_secs: None,
        },
        desired,
        status: Status { state, ..Status::default() },
        created_at: 0,
    }
}

/// Writes records as another writer would: straight into the store, one
/// transaction each, so that every watch event is a machine of its own.
async fn write(store: &dyn Store, records: &[MachineRecord]) {
    for rec in records {
        let value = serde_json::to_vec(rec).unwrap();
        let put = Op::Put { key: record::key(&rec.name), value, lease: None };
        store.txn(Txn { compares: vec![], success: vec![put], failure: vec![] }).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_by_another_writer_are_acted_on_through_broken_watches() {
    let dir = tempfile::tempdir().unwrap();
    let redb: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.path().join("state.redb"), StoreOptions::default()).unwrap());
    let store = Breaking::new(redb.clone());
    let networks = hearth_net::Networks::new(
        store.clone(),
        hearth_net::service::Options {
            prefix: "tmf".into(),
            enabled: false,
            default_network: false,
            default_nat: false,
            host: "h1".into(),
            overlay: None,
        },
    );
    let options = Options {
        data_dir: dir.path().join("data"),
        cache_dir: dir.path().join("cache"),
        agent: None,
        host: "h1".into(),
    };
    let machines =
        Machines::new(store.clone(), networks, options, hearth_machines::probe::probe_host()).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let service = tokio::spawn(machines.clone().run(shutdown));
    // Every watch breaks after one or two events from here on.
    store.break_every(2);

    // First the store refuses watches while another writer writes.
    store.go_down();
    let early: Vec<_> =
        (0..4).map(|i| record(&format!("early{i}"), Desired::Stopped, State::Created, false)).collect();
    write(&*redb, &early).await;
    assert!(store.until(Duration::from_secs(10), |s| s.watches_refused() > 0).await, "a watch was refused");
    store.heal();
    // Then more, while watches break every few events.
    let late: Vec<_> =
        (0..6).map(|i| record(&format!("late{i}"), Desired::Stopped, State::Created, false)).collect();
    write(&*redb, &late).await;
    let gone: Vec<_> =
        (0..3).map(|i| record(&format!("rm{i}"), Desired::Stopped, State::Stopped, true)).collect();
    write(&*redb, &gone).await;

    let settled = wait_until(Duration::from_secs(20), async || {
        let Ok(list) = machines.list().await else { return false };
        let stopped = list.iter().filter(|r| r.status.state == State::Stopped).count();
        stopped == early.len() + late.len() && !list.iter().any(|r| r.name.starts_with("rm"))
    })
    .await;
    let list = machines.list().await.unwrap();
    assert!(
        settled,
        "every created machine stopped and every --rm machine removed: {:?}",
        list.iter().map(|r| (&r.name, r.status.state)).collect::<Vec<_>>()
    );
    assert!(store.watches_opened() > 3, "the watches broke and were opened again");
    stop.send(true).unwrap();
    service.await.unwrap();
}
