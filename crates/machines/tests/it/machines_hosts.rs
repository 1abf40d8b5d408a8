//! Machines belong to hosts: two services on one store, as two daemons on
//! one etcd are, each with a host name and a data dir of its own. A record
//! from before hosts is adopted by exactly one of them; each acts on its
//! own machines only; a record removed through the other host has its
//! directory cleared by its own; a lost host's machines are marked lost,
//! and come back when it does. Nothing here needs a VM: the records ask
//! for stopped machines.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use hearth_machines::record::{self, Desired, MachineRecord, Spec, State, Status};
use hearth_machines::vmm::Backend;
use hearth_machines::{Error, Load, Machines, Options, mark_host_lost};
use hearth_store::redb::{Options as StoreOptions, RedbStore};
use hearth_store::{
    Error as StoreError, EventKind, KeyValue, Lease, LeaseId, Op, Range, Revision, Store, Txn, TxnResponse,
    WatchStream,
};
use hearth_testkit::wait_until;
use tokio::sync::watch;

fn record(name: &str, host: Option<&str>, desired: Desired, state: State) -> MachineRecord {
    MachineRecord {
        name: name.into(),
        host: host.map(str::to_owned),
        spec: Spec {
            image: "test".into(),
            image_digest: "sha256:0".into(),
            backend: Backend::QemuTcg,
            cpus: 2,
            memory_mib: 256,
            entrypoint: vec![],
            env: vec![],
            workdir: None,
            user: None,
            restart: Default::default(),
            kernel: None,
            auto_remove: false,
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

async fn write(store: &dyn Store, rec: &MachineRecord) {
    store.put(&record::key(&rec.name), serde_json::to_vec(rec).unwrap(), None).await.unwrap();
}

async fn read(store: &dyn Store, name: &str) -> Option<MachineRecord> {
    let kv = store.get(&record::key(name)).await.unwrap()?;
    Some(serde_json::from_slice(&kv.value).unwrap())
}

fn open_store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(&dir.join("state.redb"), StoreOptions::default()).unwrap())
}

/// A machines service of host `host`, with a data dir of its own under `dir`.
fn service(store: &Arc<dyn Store>, dir: &std::path::Path, host: &str) -> Machines {
    let networks = hearth_net::Networks::new(
        store.clone(),
        hearth_net::service::Options {
            prefix: format!("tmh{host}"),
            enabled: false,
            default_network: false,
            default_nat: false,
            host: host.to_owned(),
            overlay: None,
        },
    );
    let options = Options {
        data_dir: dir.join(host),
        cache_dir: dir.join("cache"),
        agent: None,
        host: host.to_owned(),
    };
    Machines::new(store.clone(), networks, options, hearth_machines::probe::probe_host()).unwrap()
}

/// Runs a service's loop until the returned sender says stop.
fn run(machines: &Machines) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = watch::channel(false);
    (stop, tokio::spawn(machines.clone().run(shutdown)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_before_hosts_is_adopted_by_exactly_one_of_two_services() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let (one, two) = (service(&store, dir.path(), "one"), service(&store, dir.path(), "two"));
    // Half the records are there when the services start, half come after.
    let names: Vec<String> = (0..16).map(|i| format!("old{i}")).collect();
    for name in &names[..8] {
        write(&*store, &record(name, None, Desired::Stopped, State::Created)).await;
    }
    let from = store.revision().await.unwrap() + 1;
    let mut events = store.watch(record::PREFIX, from).await.unwrap();
    let (stop_one, loop_one) = run(&one);
    let (stop_two, loop_two) = run(&two);
    for name in &names[8..] {
        write(&*store, &record(name, None, Desired::Stopped, State::Created)).await;
    }
    let settled = wait_until(Duration::from_secs(20), async || {
        let list = one.list().await.unwrap();
        list.len() == names.len() && list.iter().all(|r| r.host.is_some() && r.status.state == State::Stopped)
    })
    .await;
    let list = one.list().await.unwrap();
    assert!(settled, "every record adopted and stopped: {list:?}");

    // Every write after the first 8 records, in order: a record's host,
    // once set, never changes, and it is set once.
    let mut hosts: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut adoptions = 0;
    let last = store.revision().await.unwrap();
    while let Some(Ok(event)) = events.next().await {
        let name = event.kv.key.trim_start_matches(record::PREFIX).to_owned();
        if event.kind == EventKind::Put {
            let rec: MachineRecord = serde_json::from_slice(&event.kv.value).unwrap();
            let before = hosts.insert(name.clone(), rec.host.clone()).flatten();
            match (before, rec.host) {
                (None, Some(_)) => adoptions += 1,
                (Some(a), Some(b)) => assert_eq!(a, b, "machine {name} changed hosts"),
                (Some(_), None) => panic!("machine {name} lost its host"),
                (None, None) => {}
            }
        }
        if event.kv.mod_revision >= last {
            break;
        }
    }
    assert_eq!(adoptions, names.len(), "each record adopted once");
    let mine = |host: &str| list.iter().filter(|r| r.host.as_deref() == Some(host)).count();
    assert_eq!(mine("one") + mine("two"), names.len());
    for (stop, service) in [(stop_one, loop_one), (stop_two, loop_two)] {
        stop.send(true).unwrap();
        service.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_before_hosts_that_ran_waits_for_the_host_with_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let (one, two) = (service(&store, dir.path(), "one"), service(&store, dir.path(), "two"));
    let ran = |name: &str| MachineRecord {
        status: Status { state: State::Stopped, started_at: Some(1), ..Status::default() },
        ..record(name, None, Desired::Stopped, State::Stopped)
    };
    write(&*store, &ran("ran")).await;
    // Only two has the machine's directory (its disk).
    std::fs::create_dir_all(dir.path().join("two/machines/ran")).unwrap();
    let (stop_one, loop_one) = run(&one);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read(&*store, "ran").await.unwrap().host, None, "one has not its disk, and leaves it");
    let (stop_two, loop_two) = run(&two);
    let adopted =
        wait_until(Duration::from_secs(10), async || read(&*store, "ran").await.unwrap().host.is_some())
            .await;
    assert!(adopted);
    assert_eq!(read(&*store, "ran").await.unwrap().host.as_deref(), Some("two"));
    assert!(dir.path().join("two/machines/ran").is_dir(), "its disk is kept");
    for (stop, service) in [(stop_one, loop_one), (stop_two, loop_two)] {
        stop.send(true).unwrap();
        service.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_acts_on_its_own_machines_and_the_other_refuses_what_needs_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let (one, two) = (service(&store, dir.path(), "one"), service(&store, dir.path(), "two"));
    let (stop_one, loop_one) = run(&one);
    // A machine of two's, which one's service must leave alone: two is
    // not running, so it stays `created`.
    write(&*store, &record("m2", Some("two"), Desired::Stopped, State::Created)).await;
    write(&*store, &record("m1", Some("one"), Desired::Stopped, State::Created)).await;
    let stopped = wait_until(Duration::from_secs(10), async || {
        read(&*store, "m1").await.unwrap().status.state == State::Stopped
    })
    .await;
    assert!(stopped, "one stops its own machine");
    assert_eq!(read(&*store, "m2").await.unwrap().status.state, State::Created, "and not two's");

    // What needs the VM or its files is refused by the host without them.
    let elsewhere = |result: Result<(), Error>| match result {
        Err(Error::Elsewhere { name, host }) => (name, host),
        other => panic!("expected Elsewhere, got {other:?}"),
    };
    assert_eq!(elsewhere(one.agent("m2").await.map(drop)), ("m2".into(), "two".into()));
    assert_eq!(elsewhere(one.get_here("m2").await.map(drop)), ("m2".into(), "two".into()));
    assert_eq!(elsewhere(one.snapshot("m2", "s").await.map(drop)), ("m2".into(), "two".into()));
    assert!(!one.runs_here(&read(&*store, "m2").await.unwrap()));

    // A record of one's, removed through two: one clears its directory.
    let m1_dir = dir.path().join("one/machines/m1");
    std::fs::create_dir_all(&m1_dir).unwrap();
    std::fs::write(m1_dir.join("disk.qcow2"), b"disk").unwrap();
    two.remove("m1", false).await.unwrap();
    assert!(read(&*store, "m1").await.is_none());
    let cleared = wait_until(Duration::from_secs(10), async || !m1_dir.exists()).await;
    assert!(cleared, "one deletes the directory of its machine removed through two");

    // A directory of a machine recorded under another host is cleared too:
    // one never runs what another host runs.
    let m2_dir = dir.path().join("one/machines/m2");
    std::fs::create_dir_all(&m2_dir).unwrap();
    two.stop("m2").await.unwrap();
    let cleared = wait_until(Duration::from_secs(10), async || !m2_dir.exists()).await;
    assert!(cleared, "one deletes its leftovers of a machine two runs");
    stop_one.send(true).unwrap();
    loop_one.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hosts_running_machines_are_marked_lost_and_come_back_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let running = |name: &str, host: &str| MachineRecord {
        status: Status { state: State::Running, pid: Some(4242), ..Status::default() },
        ..record(name, Some(host), Desired::Running, State::Running)
    };
    write(&*store, &running("run1", "one")).await;
    write(&*store, &record("boot1", Some("one"), Desired::Running, State::Starting)).await;
    write(&*store, &record("stop1", Some("one"), Desired::Stopped, State::Stopped)).await;
    write(&*store, &record("fail1", Some("one"), Desired::Stopped, State::Failed)).await;
    write(&*store, &running("run2", "two")).await;
    write(&*store, &running("old", "x")).await;
    let old = read(&*store, "old").await.unwrap();
    write(&*store, &MachineRecord { host: None, ..old }).await;

    let reason = "host one stopped renewing its lease at 12:00:03 UTC";
    assert_eq!(mark_host_lost(&*store, "one", reason).await.unwrap(), 2);
    for name in ["run1", "boot1"] {
        let rec = read(&*store, name).await.unwrap();
        assert_eq!((rec.status.state, rec.status.pid), (State::Lost, None), "{name}");
        let why = rec.status.reason.unwrap();
        assert!(why.starts_with(reason) && why.contains("its disk is on host one"), "{why}");
        assert_eq!(rec.desired, Desired::Running, "what the user asked for stays");
    }
    for (name, state) in [
        ("stop1", State::Stopped),
        ("fail1", State::Failed),
        ("run2", State::Running),
        ("old", State::Running),
    ] {
        assert_eq!(read(&*store, name).await.unwrap().status.state, state, "{name} is left alone");
    }
    assert_eq!(mark_host_lost(&*store, "one", reason).await.unwrap(), 0, "lost ones are not marked again");

    // One is back: a lost machine asked to stop is stopped (it has no VM).
    // (One asked to run would boot, which this test does not.)
    store.delete(&record::key("boot1")).await.unwrap();
    let run1 = read(&*store, "run1").await.unwrap();
    write(&*store, &MachineRecord { desired: Desired::Stopped, ..run1 }).await;
    let one = service(&store, dir.path(), "one");
    let (stop, service) = run(&one);
    let back = wait_until(Duration::from_secs(10), async || {
        let rec = read(&*store, "run1").await.unwrap();
        rec.status.state == State::Stopped && rec.status.reason.is_none()
    })
    .await;
    assert!(back, "{:?}", read(&*store, "run1").await);
    stop.send(true).unwrap();
    service.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_a_host_lost_retries_when_a_record_changes_underneath() {
    let dir = tempfile::tempdir().unwrap();
    let redb = open_store(dir.path());
    let running = MachineRecord {
        status: Status { state: State::Running, pid: Some(7), ..Status::default() },
        ..record("m", Some("one"), Desired::Running, State::Running)
    };
    write(&*redb, &running).await;
    // Before each of the first two compare-and-swaps, another writer
    // (the host itself, say) changes the record: both fail, the third holds.
    let meddling = Meddling { inner: redb.clone(), left: AtomicUsize::new(2) };
    assert_eq!(mark_host_lost(&meddling, "one", "host one is gone").await.unwrap(), 1);
    let rec = read(&*redb, "m").await.unwrap();
    assert_eq!(rec.status.state, State::Lost);
    assert_eq!(rec.spec.cpus, 4, "the other writer's change is kept");
    assert_eq!(meddling.left.load(Ordering::SeqCst), 0);
}

/// A leader makes, starts and removes machines through the store fenced by
/// its term (the services supervisor does, for instance machines). Once
/// another host is elected, each of those is refused and leaves the store
/// as it was: no record, no address claimed, no record deleted, no VM
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_machine_writes_are_refused_and_change_nothing() {
    let registry = crate::support::Registry::start(crate::support::Auth::Anonymous);
    crate::support::TestImage::build().push(&registry, "hearth-test:fenced", &[]);
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let networks = hearth_net::Networks::new(
        store.clone(),
        hearth_net::service::Options {
            prefix: "tmhf".into(),
            // Only records are written here: no bridge, no tap is made.
            enabled: true,
            default_network: false,
            default_nat: false,
            host: "one".into(),
            overlay: None,
        },
    );
    networks.create("lab", Some("10.251.7.0/24".parse().unwrap()), false).await.unwrap();
    let options = Options {
        data_dir: dir.path().join("one"),
        cache_dir: dir.path().join("cache"),
        agent: None,
        host: "one".into(),
    };
    let machines =
        Machines::new(store.clone(), networks.clone(), options, hearth_machines::probe::probe_host())
            .unwrap();
    let image = format!("{}/hearth-test:fenced", registry.host());
    machines.images().pull(&image, None, &mut |_| {}).unwrap();
    let request = |name: &str| hearth_machines::CreateRequest {
        name: name.into(),
        image: image.clone(),
        backend: Some(Backend::QemuTcg),
        cpus: 1,
        memory_mib: 256,
        networks: vec![("lab".into(), None)],
        start: false,
        ..hearth_machines::CreateRequest::default()
    };

    let term = store.put("hosts/leader", b"one".to_vec(), None).await.unwrap();
    let fenced: Arc<dyn Store> = Arc::new(hearth_store::Fenced::new(store.clone(), "hosts/leader", term));
    let leader = machines.writing_through(fenced);
    leader.create(request("a")).await.expect("the leader makes a while its fence holds");
    assert_eq!(networks.members("lab").await.unwrap(), [("a".to_owned(), "10.251.7.2".parse().unwrap())]);

    // Another host is elected; this one does not know yet.
    store.delete("hosts/leader").await.unwrap();
    store.put("hosts/leader", b"two".to_vec(), None).await.unwrap();
    let fenced = |result: Result<_, Error>, what: &str| match result {
        Err(error) => {
            assert!(hearth_store::chain(&error).contains("no longer the leader"), "{what}: {error}")
        }
        Ok(_) => panic!("the deposed leader's {what} was made"),
    };
    fenced(leader.create(request("b")).await.map(|_| ()), "create");
    assert!(read(&*store, "b").await.is_none(), "no record of b");
    assert_eq!(networks.members("lab").await.unwrap().len(), 1, "no address claimed for b");
    fenced(leader.start("a").await.map(|_| ()), "start");
    assert_eq!(read(&*store, "a").await.unwrap().desired, Desired::Stopped);
    fenced(leader.remove("a", true).await, "remove");
    assert!(read(&*store, "a").await.is_some(), "a's record stays");
    assert_eq!(networks.members("lab").await.unwrap().len(), 1, "a's address stays");

    // The service's own handle does it: the refusals were the fence's.
    machines.remove("a", true).await.unwrap();
    assert!(read(&*store, "a").await.is_none());
    assert!(networks.members("lab").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_by_host_sums_the_machines_asked_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let one = service(&store, dir.path(), "one");
    write(&*store, &record("a", Some("one"), Desired::Running, State::Running)).await;
    write(&*store, &record("b", None, Desired::Running, State::Created)).await;
    write(&*store, &record("c", Some("one"), Desired::Stopped, State::Stopped)).await;
    write(&*store, &record("d", Some("two"), Desired::Running, State::Lost)).await;
    let load = one.load_by_host().await.unwrap();
    let expected = [
        ("one".to_owned(), Load { machines: 2, cpus: 4, memory_mib: 512 }),
        ("two".to_owned(), Load { machines: 1, cpus: 2, memory_mib: 256 }),
    ];
    assert_eq!(load, expected.into_iter().collect());
}

/// A store on which, before each of the first `left` transactions,
/// another writer bumps every record the transaction compares (giving
/// it 4 CPUs), so that the compare fails.
struct Meddling {
    inner: Arc<dyn Store>,
    left: AtomicUsize,
}

#[async_trait]
impl Store for Meddling {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        self.inner.range(prefix).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.inner.put(key, value, lease).await
    }

    async fn delete(&self, key: &str) -> Result<(Revision, bool), StoreError> {
        self.inner.delete(key).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        if self.left.load(Ordering::SeqCst) > 0 {
            self.left.fetch_sub(1, Ordering::SeqCst);
            for op in &txn.success {
                let Op::Put { key, .. } = op else { continue };
                let kv = self.inner.get(key).await?.expect("the record is there");
                let mut rec: MachineRecord = serde_json::from_slice(&kv.value).unwrap();
                rec.spec.cpus = 4;
                self.inner.put(key, serde_json::to_vec(&rec).unwrap(), None).await?;
            }
        }
        self.inner.txn(txn).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, from).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        self.inner.lease_grant(ttl).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, StoreError> {
        self.inner.lease_keep_alive(id).await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, StoreError> {
        self.inner.lease_revoke(id).await
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.inner.leases().await
    }
}
