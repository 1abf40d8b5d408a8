//! The registry on the embedded store, several hosts in one process.

use std::sync::Mutex;

use super::*;

fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(hearth_store::redb::RedbStore::open(&dir.path().join("s.redb"), Default::default()).unwrap())
}

fn record(name: &str) -> HostRecord {
    HostRecord {
        name: name.into(),
        addresses: vec![],
        capacity: Capacity { cpus: 2, memory_mib: 4096 },
        backends: vec!["qemu-tcg".into()],
        version: "test".into(),
        joined_at: 0,
        draining: false,
    }
}

/// A host with a data dir of its own.
async fn join(store: &Arc<dyn Store>, name: &str) -> (Hosts, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Hosts::join(store.clone(), dir.path(), record(name)).await.unwrap(), dir)
}

/// The failovers a leader asked for.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

#[async_trait]
impl Failover for Seen {
    async fn host_lost(&self, _store: Arc<dyn Store>, host: &str, _lost: &Lost) -> Result<(), String> {
        lock(&self.0).push(host.to_owned());
        Ok(())
    }
}

fn start(
    hosts: &Hosts,
    store: Arc<dyn Store>,
    seen: Arc<Seen>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    let fence: Fence = Arc::new(move |_term| store.clone());
    (stop, tokio::spawn(hosts.clone().run(fence, seen, stopped)))
}

async fn wait_until(mut condition: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the condition did not hold within 10 s");
}

async fn state(hosts: &Hosts, name: &str) -> State {
    hosts.get(name).await.unwrap().state
}

#[tokio::test]
async fn a_host_that_joined_is_listed_ready() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (one, _d1) = join(&store, "one").await;
    let (_two, _d2) = join(&store, "two").await;
    let hosts = one.list().await.unwrap();
    let names: Vec<_> = hosts.iter().map(|h| (h.record.name.as_str(), h.state)).collect();
    assert_eq!(names, [("one", State::Ready), ("two", State::Ready)]);
    assert!(matches!(one.get("three").await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn a_host_whose_lease_went_is_lost_and_the_leader_hands_it_over_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (one, _d1) = join(&store, "one").await;
    let (two, _d2) = join(&store, "two").await;
    let seen = Arc::new(Seen::default());
    let (_stop, _task) = start(&one, store.clone(), seen.clone());
    wait_until(async || one.term().borrow().is_some()).await;
    let lease = *lock(&two.inner.lease);
    store.lease_revoke(lease).await.unwrap();
    wait_until(async || lock(&seen.0).as_slice() == ["two"]).await;
    let view = one.get("two").await.unwrap();
    assert_eq!(view.state, State::Lost);
    assert_eq!(view.lost.as_ref().map(|l| l.by.as_str()), Some("one"));
    // Coming back clears it.
    let _again = Hosts::join(store.clone(), _d2.path(), record("two")).await.unwrap();
    assert_eq!(state(&one, "two").await, State::Ready);
    assert_eq!(one.get("two").await.unwrap().lost, None);
    assert_eq!(lock(&seen.0).len(), 1);
}

#[tokio::test]
async fn the_first_to_campaign_leads_and_another_takes_over_when_it_resigns() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (one, _d1) = join(&store, "one").await;
    let (two, _d2) = join(&store, "two").await;
    let (stop_one, task_one) = start(&one, store.clone(), Arc::default());
    wait_until(async || one.term().borrow().is_some()).await;
    let (_stop_two, _task_two) = start(&two, store.clone(), Arc::default());
    let first = one.term().borrow().unwrap();
    assert!(one.get("one").await.unwrap().leader);
    assert!(!one.get("two").await.unwrap().leader);
    assert_eq!(*two.term().borrow(), None);
    stop_one.send(true).unwrap();
    task_one.await.unwrap();
    wait_until(async || two.term().borrow().is_some()).await;
    let second = two.term().borrow().unwrap();
    assert!(second.token > first.token, "the new term's token {} follows {}", second.token, first.token);
    assert!(two.get("two").await.unwrap().leader);
    // The old term's fence no longer holds.
    let txn =
        Txn::new().when(first.fence()).and_then(Op::Put { key: "x".into(), value: vec![], lease: None });
    assert!(!store.txn(txn).await.unwrap().succeeded);
    let txn =
        Txn::new().when(second.fence()).and_then(Op::Put { key: "x".into(), value: vec![], lease: None });
    assert!(store.txn(txn).await.unwrap().succeeded);
}

#[tokio::test]
async fn a_leader_whose_key_was_deleted_leads_no_more_until_it_wins_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (one, _d1) = join(&store, "one").await;
    let (_stop, _task) = start(&one, store.clone(), Arc::default());
    wait_until(async || one.term().borrow().is_some()).await;
    let first = one.term().borrow().unwrap();
    store.delete(record::LEADER).await.unwrap();
    // It campaigns again at once and wins a new term.
    wait_until(async || one.term().borrow().is_some_and(|t| t.token > first.token)).await;
}

#[tokio::test]
async fn a_restart_gives_up_the_last_life_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (one, d1) = join(&store, "one").await;
    let old = *lock(&one.inner.lease);
    let started = Instant::now();
    let again = Hosts::join(store.clone(), d1.path(), record("one")).await.unwrap();
    assert!(started.elapsed() < LEASE_TTL / 2, "it did not wait for the old lease");
    assert!(!store.leases().await.unwrap().iter().any(|l| l.id == old), "the old lease was revoked");
    assert_eq!(state(&again, "one").await, State::Ready);
}

#[tokio::test]
async fn a_second_daemon_under_a_live_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (one, _d1) = join(&store, "one").await;
    let (_stop, _task) = start(&one, store.clone(), Arc::default());
    let other = tempfile::tempdir().unwrap();
    let error = Hosts::join(store.clone(), other.path(), record("one")).await.map(|_| ()).unwrap_err();
    assert!(matches!(error, Error::NameTaken { .. }), "{error}");
    assert!(error.to_string().contains("another --host-name"), "{error}");
}

#[tokio::test]
async fn draining_is_kept_across_joins_and_can_be_undone() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (one, d1) = join(&store, "one").await;
    assert_eq!(one.set_draining("one", true).await.unwrap().state, State::Draining);
    let again = Hosts::join(store.clone(), d1.path(), record("one")).await.unwrap();
    assert_eq!(state(&again, "one").await, State::Draining);
    again.update(|r| r.backends.push("qemu-kvm".into())).await.unwrap();
    let view = again.get("one").await.unwrap();
    assert_eq!((view.state, view.record.backends.len()), (State::Draining, 2));
    assert_eq!(again.set_draining("one", false).await.unwrap().state, State::Ready);
    assert!(matches!(again.set_draining("nobody", true).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn only_a_lost_host_can_be_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (one, _d1) = join(&store, "one").await;
    let (two, _d2) = join(&store, "two").await;
    assert!(matches!(one.forget("two").await, Err(Error::Alive(_))));
    let lease = *lock(&two.inner.lease);
    store.lease_revoke(lease).await.unwrap();
    one.forget("two").await.unwrap();
    assert!(matches!(one.get("two").await, Err(Error::NotFound(_))));
    assert!(matches!(one.forget("two").await, Err(Error::NotFound(_))));
}

#[test]
fn a_term_fences_on_the_create_revision_of_the_leaders_key() {
    let fence = Term { token: 42 }.fence();
    assert_eq!(fence, Compare::new(record::LEADER, CompareOp::Equal, CompareTarget::CreateRevision(42)));
}

#[tokio::test]
async fn a_host_whose_lease_expired_joins_again_and_keeps_the_new_term() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (one, _d1) = join(&store, "one").await;
    let (_stop, _task) = start(&one, store.clone(), Arc::default());
    wait_until(async || one.term().borrow().is_some()).await;
    let first = one.term().borrow().unwrap();
    // As if the lease expired while the daemon stalled: its keys go.
    let lease = *lock(&one.inner.lease);
    store.lease_revoke(lease).await.unwrap();
    // It notices at its next renewal, joins again and wins a new term; the
    // delete of the old term's key, seen after that, does not end it.
    wait_until(async || one.term().borrow().is_some_and(|t| t.token > first.token)).await;
    let second = one.term().borrow().unwrap();
    tokio::time::sleep(RENEW_EVERY + Duration::from_millis(500)).await;
    assert_eq!(*one.term().borrow(), Some(second));
    assert_eq!(state(&one, "one").await, State::Ready);
    assert!(one.get("one").await.unwrap().leader);
}

#[tokio::test]
async fn a_host_alone_leads_from_the_start_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let alone = Hosts::alone(store.clone(), record("solo"));
    assert!(alone.term().borrow().is_some());
    let hosts = alone.list().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!((hosts[0].state, hosts[0].leader), (State::Ready, true));
    assert_eq!(alone.set_draining("solo", true).await.unwrap().state, State::Draining);
    alone.update(|r| r.backends.push("qemu-kvm".into())).await.unwrap();
    assert_eq!(alone.get("solo").await.unwrap().record.backends.len(), 2);
    assert!(matches!(alone.set_draining("other", true).await, Err(Error::NotFound(_))));
    assert!(matches!(alone.forget("solo").await, Err(Error::Alive(_))));
    assert_eq!(store.revision().await.unwrap(), 0, "nothing was written");
}
