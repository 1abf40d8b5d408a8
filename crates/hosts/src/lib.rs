//! Hosts: the daemons that share one store, and the one among them that
//! leads.
//!
//! Every daemon is a host. When it starts it *joins*: it writes its record
//! (`hosts/records/NAME`: addresses, capacity, the backends it can run)
//! and an alive key (`hosts/alive/NAME`) attached to a lease of
//! [`LEASE_TTL`] that it renews every [`RENEW_EVERY`]. A host whose lease
//! expired has no alive key: it is *lost*, whatever it last said about
//! itself. The record stays, so a lost host is still listed, and when the
//! host comes back it joins again under the same name.
//!
//! One host leads. It holds `hosts/leader`, attached to its own lease, made
//! by a compare-and-swap that succeeds only when the key is missing; the
//! key's create revision is the leader's *term*, a fencing token: a write
//! that compares it fails once another host has been elected, so a leader
//! that stalled past its lease and woke up cannot act on stale beliefs
//! (see `hearth_store::fenced`). The others follow the key and campaign
//! when it goes; a leader that stops cleanly resigns by deleting it.
//!
//! The leader is the one that notices lost hosts: it follows the alive
//! keys, and for each host whose key went (and, at the start of every
//! term, each host still without one) it writes `hosts/lost/NAME` and
//! calls the [`Failover`] it was given, with its fenced store.
//!
//! A daemon on the embedded store is alone ([`Hosts::alone`]): nobody
//! else can open that store, so it leads from the start and writes nothing
//! about itself.
//!
//! A restarted daemon takes over the alive key of its last life in the
//! write that joins (the old lease's id is kept in `DATA_DIR/host-lease`),
//! then revokes that lease, so a quick restart is never seen as a loss and
//! a leadership it held goes at once. Two daemons that claim the
//! same name are refused: the second waits one lease for the first to go,
//! then stops with an error.

pub mod place;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hearth_store::{
    Change, Compare, CompareOp, CompareTarget, EventKind, Follower, LeaseId, Op, Revision, Store, Txn,
};
use tokio::sync::watch;

pub use place::{Load, Need, NoHost, place};
pub use record::{Alive, Capacity, HostRecord, HostView, Lost, State};

/// How long a host stays alive without renewing its lease.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a host renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// The file in the data dir that keeps the lease of this host's current
/// life, so that the next life can give it up.
const LEASE_FILE: &str = "host-lease";

/// What can go wrong with hosts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] hearth_store::Error),

    /// Another daemon is alive under this name.
    #[error(
        "another daemon is alive as host {name:?} on this store (its lease {lease} is still renewed): give this one another --host-name, or stop the other"
    )]
    NameTaken { name: String, lease: LeaseId },

    #[error("no host is named {0:?}")]
    NotFound(String),

    /// `forget` of a host that is alive.
    #[error("host {0:?} is alive: only a lost host can be forgotten")]
    Alive(String),

    /// A stored record that cannot be read.
    #[error("the record at {key} is corrupt")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    /// The store did not answer a renewal in time.
    #[error("the store did not answer within {0:?}")]
    Slow(Duration),

    #[error("cannot keep the host's lease id in {path}")]
    LeaseFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A leader's term: its fencing token, the create revision of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub token: Revision,
}

impl Term {
    /// The comparison that holds only while this term lasts.
    pub fn fence(self) -> Compare {
        Compare::new(record::LEADER, CompareOp::Equal, CompareTarget::CreateRevision(self.token))
    }
}

/// What the leader does about a lost host. Called with the leader's fenced
/// store when a host is found lost, and again at the start of every term
/// for each host still lost, so it must be idempotent.
#[async_trait]
pub trait Failover: Send + Sync + 'static {
    async fn host_lost(&self, store: Arc<dyn Store>, host: &str, lost: &Lost) -> Result<(), String>;
}

/// Makes the store a leader writes through, fenced by its term. Given by
/// the daemon (the fenced store lives in `hearth-store`).
pub type Fence = Arc<dyn Fn(Term) -> Arc<dyn Store> + Send + Sync>;

/// The host registry, from this host's side. Cheap to clone.
#[derive(Clone)]
pub struct Hosts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts")
            .field("name", &self.inner.name)
            .field("term", &*self.inner.term.borrow())
            .finish()
    }
}

struct Inner {
    store: Arc<dyn Store>,
    name: String,
    lease_file: PathBuf,
    record: Mutex<HostRecord>,
    lease: Mutex<LeaseId>,
    term: watch::Sender<Option<Term>>,
    /// The store's revision once joined: the leader's key is followed from
    /// there.
    joined: Revision,
    /// The one host of a store no other daemon can open (the embedded
    /// one): it leads from the start and writes nothing about itself.
    alone: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(value).map_err(|source| Error::Corrupt { key: key.to_owned(), source })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("host records serialize")
}

impl Hosts {
    /// Joins the hosts sharing `store` as `record.name` (see the module
    /// documentation). `draining` is kept from the host's last record.
    pub async fn join(store: Arc<dyn Store>, data_dir: &Path, record: HostRecord) -> Result<Hosts, Error> {
        let lease_file = data_dir.join(LEASE_FILE);
        let last_life =
            std::fs::read_to_string(&lease_file).ok().and_then(|t| t.trim().parse::<LeaseId>().ok());
        let name = record.name.clone();
        let (lease, record) = enter(&*store, &lease_file, record, last_life).await?;
        if let Some(last) = last_life {
            give_up(&*store, last).await;
        }
        let joined = store.revision().await?;
        let (term, _) = watch::channel(None);
        tracing::info!(host = %name, lease, "Joined the hosts sharing the store.");
        Ok(Hosts {
            inner: Arc::new(Inner {
                store,
                name,
                lease_file,
                record: Mutex::new(record),
                lease: Mutex::new(lease),
                term,
                joined,
                alone: false,
            }),
        })
    }

    /// The one host of a store that no other daemon can open (the
    /// embedded store holds a lock on its file): it leads from the start,
    /// under a term that fences nothing (nobody else could write), and
    /// keeps its record in memory, so that a single daemon's store and its
    /// history hold only what its users did.
    pub fn alone(store: Arc<dyn Store>, record: HostRecord) -> Hosts {
        let (term, _) = watch::channel(Some(Term { token: 0 }));
        Hosts {
            inner: Arc::new(Inner {
                store,
                name: record.name.clone(),
                lease_file: PathBuf::new(),
                record: Mutex::new(record),
                lease: Mutex::new(0),
                term,
                joined: 0,
                alone: true,
            }),
        }
    }

    /// This host alone, as listed.
    fn alone_view(&self) -> HostView {
        let record = lock(&self.inner.record).clone();
        let state = if record.draining { State::Draining } else { State::Ready };
        HostView { record, state, leader: true, lost: None }
    }

    /// This host's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This host's term while it leads, `None` while it does not.
    pub fn term(&self) -> watch::Receiver<Option<Term>> {
        self.inner.term.subscribe()
    }

    /// Changes this host's record (its backends after the KVM probe, say).
    pub async fn update(&self, change: impl FnOnce(&mut HostRecord)) -> Result<(), Error> {
        let record = {
            let mut record = lock(&self.inner.record);
            let before = record.clone();
            change(&mut record);
            if *record == before || self.inner.alone {
                return Ok(());
            }
            record.clone()
        };
        // Keep `draining` as the store has it: `drain` may come from any host.
        self.rewrite(&self.inner.name, |stored| {
            let next = HostRecord { draining: stored.draining, ..record.clone() };
            std::mem::replace(stored, next) != *stored
        })
        .await?;
        Ok(())
    }

    /// Rewrites a host's record by compare-and-swap, again after a
    /// conflict; `change` says whether it changed anything, and nothing is
    /// written when it did not. Whether it wrote.
    async fn rewrite(
        &self,
        name: &str,
        mut change: impl FnMut(&mut HostRecord) -> bool,
    ) -> Result<bool, Error> {
        let key = record::record_key(name);
        loop {
            let Some(kv) = self.inner.store.get(&key).await? else {
                return Err(Error::NotFound(name.into()));
            };
            let mut record: HostRecord = decode(&key, &kv.value)?;
            if !change(&mut record) {
                return Ok(false);
            }
            let txn = Txn::new().when(Compare::mod_revision(&key, kv.mod_revision)).and_then(Op::Put {
                key: key.clone(),
                value: encode(&record),
                lease: None,
            });
            if self.inner.store.txn(txn).await?.succeeded {
                return Ok(true);
            }
        }
    }

    /// Every host, in name order.
    pub async fn list(&self) -> Result<Vec<HostView>, Error> {
        if self.inner.alone {
            return Ok(vec![self.alone_view()]);
        }
        let txn = Txn::new()
            .and_then(Op::Range { prefix: record::RECORDS.into() })
            .and_then(Op::Range { prefix: record::ALIVE.into() })
            .and_then(Op::Range { prefix: record::LOST.into() })
            .and_then(Op::Get { key: record::LEADER.into() });
        let mut responses = self.inner.store.txn(txn).await?.responses.into_iter();
        let mut range = || match responses.next() {
            Some(hearth_store::OpResponse::Range { kvs }) => kvs,
            Some(hearth_store::OpResponse::Get { kv }) => kv.into_iter().collect(),
            _ => Vec::new(),
        };
        let (records, alive, lost, leader) = (range(), range(), range(), range());
        let names =
            |kvs: &[hearth_store::KeyValue], prefix: &str| -> std::collections::BTreeMap<String, Vec<u8>> {
                kvs.iter()
                    .filter_map(|kv| Some((kv.key.strip_prefix(prefix)?.to_owned(), kv.value.clone())))
                    .collect()
            };
        let alive = names(&alive, record::ALIVE);
        let lost = names(&lost, record::LOST);
        let leader = leader.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let mut hosts = Vec::new();
        for kv in records {
            let record: HostRecord = decode(&kv.key, &kv.value)?;
            let is_alive = alive.contains_key(&record.name);
            let state = match (is_alive, record.draining) {
                (false, _) => State::Lost,
                (true, true) => State::Draining,
                (true, false) => State::Ready,
            };
            let lost = match (is_alive, lost.get(&record.name)) {
                (false, Some(value)) => Some(decode(&record::lost_key(&record.name), value)?),
                _ => None,
            };
            let leader = leader.as_deref() == Some(record.name.as_str()) && is_alive;
            hosts.push(HostView { record, state, leader, lost });
        }
        Ok(hosts)
    }

    /// One host.
    pub async fn get(&self, name: &str) -> Result<HostView, Error> {
        self.list()
            .await?
            .into_iter()
            .find(|h| h.record.name == name)
            .ok_or_else(|| Error::NotFound(name.into()))
    }

    /// Marks a host draining (no new work goes there) or ready again.
    pub async fn set_draining(&self, name: &str, draining: bool) -> Result<HostView, Error> {
        if self.inner.alone {
            if name != self.inner.name {
                return Err(Error::NotFound(name.into()));
            }
            lock(&self.inner.record).draining = draining;
            return Ok(self.alone_view());
        }
        let changed = self
            .rewrite(name, |stored| std::mem::replace(&mut stored.draining, draining) != draining)
            .await?;
        if changed {
            tracing::info!(host = name, draining, "A host's draining changed.");
        }
        self.get(name).await
    }

    /// Removes a lost host's record, for a host that will not come back.
    pub async fn forget(&self, name: &str) -> Result<(), Error> {
        if self.inner.alone {
            return Err(if name == self.inner.name {
                Error::Alive(name.into())
            } else {
                Error::NotFound(name.into())
            });
        }
        let key = record::record_key(name);
        let txn = Txn::new()
            .when(Compare::exists(&key))
            .when(Compare::missing(record::alive_key(name)))
            .and_then(Op::Delete { key })
            .and_then(Op::Delete { key: record::lost_key(name) })
            .or_else(Op::Get { key: record::alive_key(name) });
        let response = self.inner.store.txn(txn).await?;
        if response.succeeded {
            return Ok(());
        }
        match response.responses.first() {
            Some(hearth_store::OpResponse::Get { kv: Some(_) }) => Err(Error::Alive(name.into())),
            _ => Err(Error::NotFound(name.into())),
        }
    }

    /// Keeps this host alive and takes part in the election until
    /// `shutdown` turns true; while it leads, it watches the other hosts
    /// and hands the lost ones to `failover`, through a store fenced by
    /// its term (`fence`). On shutdown it resigns, and leaves its alive key
    /// to its lease: a host that stops for longer than [`LEASE_TTL`] is
    /// lost, as nobody looks after its machines meanwhile.
    pub async fn run(self, fence: Fence, failover: Arc<dyn Failover>, mut shutdown: watch::Receiver<bool>) {
        if self.inner.alone {
            let _ = shutdown.wait_for(|s| *s).await;
            return;
        }
        let store = self.inner.store.clone();
        let mut renew = tokio::time::interval(RENEW_EVERY);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the last renewal that succeeded was sent: the store counts
        // the lease from no earlier than that.
        let mut renewed = Instant::now();
        let mut leader =
            Follower::new(store.clone(), record::LEADER, self.inner.joined + 1, "The leader's key");
        // The leader's watch over the other hosts, and the term it serves.
        let mut watcher: Option<(Term, tokio::task::JoinHandle<()>)> = None;
        self.campaign().await;
        loop {
            let term = *self.inner.term.borrow();
            let stale = match (&watcher, term) {
                (Some((served, task)), Some(now)) => *served != now || task.is_finished(),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if stale && let Some((_, task)) = watcher.take() {
                task.abort();
            }
            if watcher.is_none()
                && let Some(term) = term
            {
                let task = tokio::spawn(self.clone().watch_hosts(fence(term), failover.clone()));
                watcher = Some((term, task));
            }
            tokio::select! {
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                _ = renew.tick() => {
                    let sent = Instant::now();
                    match self.renew().await {
                        Ok(()) => renewed = sent,
                        Err(error) => {
                            tracing::warn!(error = %hearth_store::chain(&error), "Cannot renew this host's lease; retrying.");
                        }
                    }
                    // Well before the store would let the lease expire,
                    // a host that could not renew it leads no more: its
                    // duties stop before another host's can start.
                    if renewed.elapsed() >= LEASE_TTL - RENEW_EVERY {
                        self.step_down("its lease could not be renewed in time");
                    }
                    if self.inner.term.borrow().is_none() {
                        self.campaign().await;
                    }
                }
                _ = leader.next() => {
                    // Events can be stale (a delete of an earlier term's
                    // key arriving after this host won a new one): what
                    // counts is the key as it is now.
                    if self.observe_leader().await == Some(false) {
                        self.campaign().await;
                    }
                }
            }
        }
        if let Some((_, task)) = watcher {
            task.abort();
        }
        self.resign().await;
    }

    /// Renews the lease, giving up after [`RENEW_EVERY`]; joins again
    /// under a new one when it expired.
    async fn renew(&self) -> Result<(), Error> {
        let lease = *lock(&self.inner.lease);
        let answer = tokio::time::timeout(RENEW_EVERY, self.inner.store.lease_keep_alive(lease)).await;
        match answer {
            Err(_) => Err(Error::Slow(RENEW_EVERY)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(hearth_store::Error::LeaseNotFound(_))) => {
                tracing::warn!(
                    host = %self.inner.name,
                    lease,
                    "This host's lease expired (the daemon or the store stalled): it was lost, and joins again."
                );
                self.step_down("its lease expired");
                let record = lock(&self.inner.record).clone();
                // The alive key may still hang on the expired lease for a
                // moment: it is this host's own, taken over at once.
                let (lease, _) =
                    enter(&*self.inner.store, &self.inner.lease_file, record, Some(lease)).await?;
                *lock(&self.inner.lease) = lease;
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Tries to take the leader's key, then looks at who holds it. A
    /// campaign whose answer was lost but which was applied is seen then.
    async fn campaign(&self) {
        let lease = *lock(&self.inner.lease);
        let txn = Txn::new().when(Compare::missing(record::LEADER)).and_then(Op::Put {
            key: record::LEADER.into(),
            value: self.inner.name.as_bytes().to_vec(),
            lease: Some(lease),
        });
        if let Err(error) = self.inner.store.txn(txn).await {
            tracing::warn!(error = %hearth_store::chain(&error), "Cannot campaign for leadership; retrying.");
        }
        self.observe_leader().await;
    }

    /// Reads the leader's key and sets this host's term from it: this host
    /// leads exactly while the key hangs on its own lease, and its term is
    /// the key's create revision. `Some(false)` when there is no key (time
    /// to campaign), `None` when the store did not answer.
    async fn observe_leader(&self) -> Option<bool> {
        match self.inner.store.get(record::LEADER).await {
            Ok(None) => {
                self.step_down("its key is gone");
                Some(false)
            }
            Ok(Some(kv)) => {
                let lease = *lock(&self.inner.lease);
                if kv.lease == Some(lease) {
                    let term = Term { token: kv.create_revision };
                    if *self.inner.term.borrow() != Some(term) {
                        tracing::info!(host = %self.inner.name, term = term.token, "This host leads.");
                        self.inner.term.send_replace(Some(term));
                    }
                } else {
                    self.step_down("another host leads");
                }
                Some(true)
            }
            Err(error) => {
                tracing::warn!(error = %hearth_store::chain(&error), "Cannot read the leader's key; retrying.");
                None
            }
        }
    }

    fn step_down(&self, why: &str) {
        if let Some(term) = self.inner.term.send_replace(None) {
            tracing::warn!(host = %self.inner.name, term = term.token, why, "This host leads no more.");
        }
    }

    /// Deletes the leader's key if this term still holds it.
    async fn resign(&self) {
        let Some(term) = self.inner.term.send_replace(None) else { return };
        let txn = Txn::new().when(term.fence()).and_then(Op::Delete { key: record::LEADER.into() });
        match self.inner.store.txn(txn).await {
            Ok(_) => {
                tracing::info!(host = %self.inner.name, term = term.token, "This host resigned its leadership.")
            }
            Err(error) => {
                tracing::warn!(error = %hearth_store::chain(&error), "Cannot resign; the leader's key goes with the lease.")
            }
        }
    }

    /// The leader's watch over the other hosts: every host found without
    /// an alive key is lost. Runs until aborted, when the term ends.
    async fn watch_hosts(self, store: Arc<dyn Store>, failover: Arc<dyn Failover>) {
        let range = loop {
            match store.range(record::ALIVE).await {
                Ok(range) => break range,
                Err(error) => {
                    tracing::warn!(error = %hearth_store::chain(&error), "Cannot read which hosts are alive; retrying.");
                    tokio::time::sleep(RENEW_EVERY).await;
                }
            }
        };
        // A new term looks again at every host without an alive key: the
        // last leader may have died halfway through its failover.
        let hosts = loop {
            match self.list().await {
                Ok(hosts) => break hosts,
                Err(error) => {
                    tracing::warn!(error = %error, "Cannot list the hosts; retrying.");
                    tokio::time::sleep(RENEW_EVERY).await;
                }
            }
        };
        for host in hosts.into_iter().filter(|h| h.state == State::Lost && h.record.name != self.inner.name) {
            self.lost(&store, &*failover, &host.record.name, host.lost).await;
        }
        let mut alive = Follower::new(store.clone(), record::ALIVE, range.revision + 1, "Hosts alive");
        loop {
            let gone: Vec<String> = match alive.next().await {
                Change::Event(event) if event.kind == EventKind::Delete => {
                    event.kv.key.strip_prefix(record::ALIVE).map(str::to_owned).into_iter().collect()
                }
                Change::Event(_) => Vec::new(),
                Change::Reset(_) => match self.list().await {
                    Ok(hosts) => {
                        hosts.into_iter().filter(|h| h.state == State::Lost).map(|h| h.record.name).collect()
                    }
                    Err(_) => Vec::new(),
                },
            };
            for host in gone {
                if host != self.inner.name {
                    self.lost(&store, &*failover, &host, None).await;
                }
            }
        }
    }

    /// Writes that `host` is lost (unless already written) and hands it to
    /// the failover, both through the fenced store.
    async fn lost(&self, store: &Arc<dyn Store>, failover: &dyn Failover, host: &str, known: Option<Lost>) {
        let alive = record::alive_key(host);
        let lost = match known {
            Some(lost) => lost,
            None => {
                let lost = Lost { at_ms: now_ms(), by: self.inner.name.clone() };
                let key = record::lost_key(host);
                let txn = Txn::new()
                    .when(Compare::missing(&alive))
                    .when(Compare::missing(&key))
                    .and_then(Op::Put { key: key.clone(), value: encode(&lost), lease: None })
                    .or_else(Op::Get { key: alive.clone() })
                    .or_else(Op::Get { key });
                let response = match store.txn(txn).await {
                    Ok(response) => response,
                    Err(error) => {
                        tracing::warn!(host, error = %hearth_store::chain(&error), "Cannot record a lost host.");
                        return;
                    }
                };
                if response.succeeded {
                    tracing::warn!(host, "A host was lost: its lease expired.");
                    lost
                } else {
                    match response.responses.as_slice() {
                        // Back already: nothing to do.
                        [hearth_store::OpResponse::Get { kv: Some(_) }, _] => return,
                        // Recorded already (by this leader or the last).
                        [_, hearth_store::OpResponse::Get { kv: Some(kv) }] => {
                            decode(&kv.key, &kv.value).unwrap_or(lost)
                        }
                        _ => return,
                    }
                }
            }
        };
        // The failover acts on what the host had; a host that came back in
        // the meantime keeps it (its machines service corrects a record
        // marked lost while it still runs the machine).
        if matches!(store.get(&alive).await, Ok(Some(_))) {
            return;
        }
        if let Err(error) = failover.host_lost(store.clone(), host, &lost).await {
            tracing::warn!(host, error, "The failover of a lost host failed; the next term tries again.");
        }
    }
}

/// Revokes the lease of this data dir's last life, once its alive key is
/// this life's: what else hung on it (the leader's key) goes now rather
/// than when it would expire. An expired lease is already gone.
async fn give_up(store: &dyn Store, lease: LeaseId) {
    match store.lease_revoke(lease).await {
        Ok(_) => tracing::info!(lease, "Gave up the lease of this host's last life."),
        Err(hearth_store::Error::LeaseNotFound(_)) => {}
        Err(error) => {
            tracing::warn!(lease, error = %hearth_store::chain(&error), "Cannot give up the lease of this host's last life; it expires on its own.")
        }
    }
}

/// Writes the record and the alive key under a new lease. An alive key
/// on `last_life`'s lease (this data dir's daemon before a restart) is
/// taken over in the same write, so the host is never seen without one;
/// one on any other lease is another daemon under the same name, waited
/// for up to one lease.
async fn enter(
    store: &dyn Store,
    lease_file: &Path,
    mut record: HostRecord,
    last_life: Option<LeaseId>,
) -> Result<(LeaseId, HostRecord), Error> {
    let name = record.name.clone();
    let (record_key, alive_key) = (record::record_key(&name), record::alive_key(&name));
    let deadline = Instant::now() + LEASE_TTL + RENEW_EVERY;
    let lease = store.lease_grant(LEASE_TTL).await?.id;
    std::fs::write(lease_file, format!("{lease}\n"))
        .map_err(|source| Error::LeaseFile { path: lease_file.to_owned(), source })?;
    loop {
        let current = store.get(&record_key).await?;
        if let Some(kv) = &current {
            record.draining = decode::<HostRecord>(&record_key, &kv.value)?.draining;
        }
        let alive_now = store.get(&alive_key).await?;
        let alive_compare = match &alive_now {
            None => Compare::missing(&alive_key),
            Some(kv) if kv.lease.is_some() && kv.lease == last_life => {
                Compare::mod_revision(&alive_key, kv.mod_revision)
            }
            Some(kv) => {
                if Instant::now() >= deadline {
                    let _ = store.lease_revoke(lease).await;
                    return Err(Error::NameTaken { name, lease: kv.lease.unwrap_or_default() });
                }
                tracing::info!(host = %name, "Another daemon is alive under this host's name; waiting for its lease to end.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let alive = Alive { lease, since_ms: now_ms() };
        let txn = Txn::new()
            .when(alive_compare)
            .when(Compare::mod_revision(&record_key, current.map_or(0, |kv| kv.mod_revision)))
            .and_then(Op::Put { key: record_key.clone(), value: encode(&record), lease: None })
            .and_then(Op::Put { key: alive_key.clone(), value: encode(&alive), lease: Some(lease) })
            .and_then(Op::Delete { key: record::lost_key(&name) });
        if store.txn(txn).await?.succeeded {
            return Ok((lease, record));
        }
        // The record or the alive key changed under us: read them again.
    }
}

#[cfg(test)]
mod tests;
