//! The single writer thread: group commit, revision assignment, the event
//! log and lease expiry.
//!
//! Every mutation is a [`Request`] on one channel. The thread takes whatever
//! is queued (up to `max_batch`), applies each request as its own revision
//! inside one redb write transaction, commits it with an fsync, and only then
//! publishes the events and answers the callers. Under load that is many
//! writes per fsync; a lone writer pays one fsync per write, as it must.

use crate::chain;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use ::redb::{Database, Durability, MultimapTable, ReadableTable, Table, WriteTransaction};
use tokio::sync::{oneshot, watch};

use super::schema::{self, KV, LEASE_KEYS, LEASES, LOG, META, Message, Meta, StoredKv};
use super::watch::Progress;
use super::{LeaseClock, Shared};
use crate::{
    Compare, CompareOp, CompareTarget, Error, Event, EventKind, KeyValue, Lease, LeaseId, Op, OpResponse,
    Revision, Txn, TxnResponse,
};

/// How many failing units a batch is retried without.
const MAX_RETRIES: usize = 3;

/// How long to leave lease expiry alone after it failed, so that a broken
/// disk does not turn the writer into a busy loop.
const EXPIRY_BACKOFF: Duration = Duration::from_secs(1);

pub(super) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A mutation, with the channel its answer goes back on.
#[derive(Debug)]
pub(super) enum Request {
    /// Puts and deletes travel as one-op transactions.
    Txn {
        txn: Txn,
        reply: Reply<TxnResponse>,
    },
    LeaseGrant {
        ttl: Duration,
        reply: Reply<Lease>,
    },
    LeaseRevoke {
        id: LeaseId,
        reply: Reply<Revision>,
    },
}

/// One unit of a batch: a caller's request, or an expiry the writer found due.
#[derive(Debug)]
enum Work {
    Request(Request),
    Expire(LeaseId),
}

/// The outcome of one unit, held until the batch is durable.
#[derive(Debug)]
enum Answer {
    Txn(Result<TxnResponse, Error>),
    Lease(Result<Lease, Error>),
    Revision(Result<Revision, Error>),
    /// An expiry (nobody to answer) or one that a keep-alive overtook.
    Nothing,
}

/// A batch that could not be committed. `culprit` is the unit that failed,
/// if one did; without it, the commit itself failed.
#[derive(Debug)]
struct Failure {
    culprit: Option<usize>,
    error: Error,
}

/// What a committed batch changes outside redb.
#[derive(Debug, Default)]
struct Effects {
    answers: Vec<Answer>,
    revisions: Vec<(Revision, Arc<Vec<Event>>)>,
    granted: Vec<(LeaseId, Duration)>,
    removed: Vec<LeaseId>,
    revision: Revision,
}

#[derive(Debug)]
pub(super) struct Writer {
    pub(super) db: Arc<Database>,
    pub(super) shared: Arc<Shared>,
    pub(super) requests: mpsc::Receiver<Request>,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) history_revisions: u64,
    pub(super) max_batch: usize,
    pub(super) expiry_paused_until: Option<Instant>,
}

impl Writer {
    /// Runs until every request handle is gone, then releases the database.
    pub(super) fn run(mut self) {
        loop {
            let first = match self.next_expiry() {
                Some(wait) => self.requests.recv_timeout(wait),
                None => self.requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let mut batch = Vec::new();
            match first {
                Ok(request) => batch.push(Work::Request(request)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < self.max_batch {
                match self.requests.try_recv() {
                    Ok(request) => batch.push(Work::Request(request)),
                    Err(_) => break,
                }
            }
            batch.extend(self.due_leases().into_iter().map(Work::Expire));
            if !batch.is_empty() {
                self.commit(batch);
            }
        }
        self.close();
    }

    /// How long until the earliest lease deadline, if any lease is live.
    fn next_expiry(&self) -> Option<Duration> {
        let leases = self.shared.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = leases.values().map(|lease| lease.deadline).min()?;
        let earliest = self.expiry_paused_until.map_or(earliest, |until| earliest.max(until));
        Some(earliest.saturating_duration_since(Instant::now()))
    }

    fn due_leases(&self) -> Vec<LeaseId> {
        let now = Instant::now();
        if self.expiry_paused_until.is_some_and(|until| now < until) {
            return Vec::new();
        }
        let leases = self.shared.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due: Vec<_> =
            leases.iter().filter(|(_, lease)| lease.deadline <= now).map(|(id, _)| *id).collect();
        due.sort_unstable();
        due
    }

    /// Commits `batch`, retrying without any unit that fails on its own so
    /// that one bad request cannot fail its neighbours, then publishes and
    /// answers.
    fn commit(&mut self, mut batch: Vec<Work>) {
        let mut retries = 0;
        loop {
            match self.try_commit(&batch) {
                Ok(effects) => {
                    self.publish(batch, effects);
                    return;
                }
                // More than a few culprits means the backend is failing, not
                // the requests: stop retrying and fail the rest together.
                Err(Failure { culprit: Some(index), error }) if retries < MAX_RETRIES => {
                    tracing::warn!(error = %chain(&error), "A write failed; retrying the rest of its batch.");
                    retries += 1;
                    let work = batch.remove(index);
                    self.fail(work, error);
                    if batch.is_empty() {
                        return;
                    }
                }
                Err(Failure { error, .. }) => {
                    let message = chain(&error);
                    tracing::error!(error = %message, writes = batch.len(), "A write batch failed.");
                    for work in batch {
                        self.fail(work, Error::Backend(Box::new(Message(message.clone()))));
                    }
                    return;
                }
            }
        }
    }

    fn try_commit(&self, batch: &[Work]) -> Result<Effects, Failure> {
        let whole = |error| Failure { culprit: None, error };
        let mut txn = self.db.begin_write().map_err(|e| whole(schema::db(e)))?;
        txn.set_durability(Durability::Immediate).map_err(|e| whole(schema::db(e)))?;
        let effects = self.apply_all(&txn, batch)?;
        txn.commit().map_err(|e| whole(schema::db(e)))?;
        Ok(effects)
    }

    fn apply_all(&self, txn: &WriteTransaction, batch: &[Work]) -> Result<Effects, Failure> {
        let whole = |error| Failure { culprit: None, error };
        let mut tables = Tables::open(txn).map_err(whole)?;
        let mut meta = Meta::read(&tables.meta).map_err(whole)?;
        let mut effects = Effects::default();
        for (index, work) in batch.iter().enumerate() {
            let answer = tables
                .apply(&mut meta, work, &mut effects, &self.shared)
                .map_err(|error| Failure { culprit: Some(index), error })?;
            effects.answers.push(answer);
        }
        tables.compact(&mut meta, self.history_revisions).map_err(whole)?;
        meta.write(&mut tables.meta).map_err(whole)?;
        effects.revision = meta.revision;
        Ok(effects)
    }

    /// Makes a durable batch visible: lease clocks, then watch events, then
    /// the callers' answers, so that a caller who has its answer can already
    /// watch or keep alive what it wrote.
    fn publish(&self, batch: Vec<Work>, effects: Effects) {
        let Effects { answers, revisions, granted, removed, revision } = effects;
        let counters = &self.shared.counters;
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        {
            let now = Instant::now();
            let mut leases = self.shared.leases.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, ttl) in granted {
                leases.insert(id, LeaseClock { ttl, deadline: now + ttl });
            }
            for id in removed {
                leases.remove(&id);
            }
        }
        if !revisions.is_empty() {
            let mut ring = self.shared.ring.lock().unwrap_or_else(PoisonError::into_inner);
            for (revision, events) in revisions {
                ring.push(revision, events);
            }
        }
        self.progress.send_if_modified(|progress| {
            let advanced = progress.revision != revision;
            progress.revision = revision;
            advanced
        });
        for (work, answer) in batch.into_iter().zip(answers) {
            answer_work(work, answer);
        }
    }

    fn fail(&mut self, work: Work, error: Error) {
        match work {
            Work::Request(request) => request.fail(error),
            Work::Expire(id) => {
                tracing::error!(lease = id, error = %chain(&error), "Failed to expire a lease.");
                self.expiry_paused_until = Some(Instant::now() + EXPIRY_BACKOFF);
            }
        }
    }

    /// Releases the database before announcing the close, so that once
    /// `shutdown` returns the file can be opened again.
    fn close(self) {
        let Writer { db, shared, progress, .. } = self;
        *shared.db.write().unwrap_or_else(PoisonError::into_inner) = None;
        drop(db);
        progress.send_modify(|progress| progress.closed = true);
    }
}

fn answer_work(work: Work, answer: Answer) {
    // Callers that gave up on their write have dropped the receiver; their
    // write still happened (or not) exactly once, which is all we promise.
    let Work::Request(request) = work else { return };
    match (request, answer) {
        (Request::Txn { reply, .. }, Answer::Txn(result)) => {
            let _ = reply.send(result);
        }
        (Request::LeaseGrant { reply, .. }, Answer::Lease(result)) => {
            let _ = reply.send(result);
        }
        (Request::LeaseRevoke { reply, .. }, Answer::Revision(result)) => {
            let _ = reply.send(result);
        }
        (request, answer) => {
            // `Tables::apply` answers each kind of unit with its own kind of
            // answer; reaching this is a bug, reported rather than panicked on.
            let message = format!("internal error: {request:?} got the answer {answer:?}");
            request.fail(Error::Backend(Box::new(Message(message))));
        }
    }
}

impl Request {
    fn fail(self, error: Error) {
        match self {
            Request::Txn { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Request::LeaseGrant { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Request::LeaseRevoke { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// The tables of one write transaction.
struct Tables<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    log: Table<'t, u64, &'static [u8]>,
    leases: Table<'t, u64, u64>,
    lease_keys: MultimapTable<'t, u64, &'static str>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, Error> {
        Ok(Tables {
            kv: txn.open_table(KV).map_err(schema::db)?,
            meta: txn.open_table(META).map_err(schema::db)?,
            log: txn.open_table(LOG).map_err(schema::db)?,
            leases: txn.open_table(LEASES).map_err(schema::db)?,
            lease_keys: txn.open_multimap_table(LEASE_KEYS).map_err(schema::db)?,
        })
    }

    /// Applies one unit. An `Err` means the unit may have written part of
    /// its changes, so the whole transaction must be thrown away; a refusal
    /// that leaves nothing behind (a lease that does not exist) is an `Ok`
    /// answer carrying the error.
    fn apply(
        &mut self,
        meta: &mut Meta,
        work: &Work,
        effects: &mut Effects,
        shared: &Shared,
    ) -> Result<Answer, Error> {
        match work {
            Work::Request(Request::Txn { txn, .. }) => Ok(Answer::Txn(self.apply_txn(meta, txn, effects)?)),
            Work::Request(Request::LeaseGrant { ttl, .. }) => {
                let id = meta.next_lease_id;
                meta.next_lease_id += 1;
                let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                self.leases.insert(id, millis).map_err(schema::db)?;
                effects.granted.push((id, *ttl));
                Ok(Answer::Lease(Ok(Lease { id, ttl: *ttl, remaining: *ttl })))
            }
            Work::Request(Request::LeaseRevoke { id, .. }) => {
                if self.leases.get(id).map_err(schema::db)?.is_none() {
                    return Ok(Answer::Revision(Err(Error::LeaseNotFound(*id))));
                }
                self.revoke(meta, *id, effects)?;
                Ok(Answer::Revision(Ok(meta.revision)))
            }
            Work::Expire(id) => {
                // A keep-alive may have landed since the lease was found due,
                // and a revoke earlier in this batch may have removed it.
                let still_due = {
                    let leases = shared.leases.lock().unwrap_or_else(PoisonError::into_inner);
                    leases.get(id).is_some_and(|lease| lease.deadline <= Instant::now())
                };
                if still_due && self.leases.get(id).map_err(schema::db)?.is_some() {
                    tracing::debug!(lease = id, "Lease expired.");
                    self.revoke(meta, *id, effects)?;
                }
                Ok(Answer::Nothing)
            }
        }
    }

    fn apply_txn(
        &mut self,
        meta: &mut Meta,
        txn: &Txn,
        effects: &mut Effects,
    ) -> Result<Result<TxnResponse, Error>, Error> {
        let mut succeeded = true;
        for compare in &txn.compares {
            let current = schema::get_kv(&self.kv, &compare.key)?;
            if !holds(current.as_ref(), compare) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &txn.success } else { &txn.failure };
        // Refuse before writing anything, so a refused request leaves no
        // trace in the batch it shares with others.
        for op in ops {
            if let Op::Put { lease: Some(id), .. } = op
                && self.leases.get(id).map_err(schema::db)?.is_none()
            {
                return Ok(Err(Error::LeaseNotFound(*id)));
            }
        }
        let revision = meta.revision + 1;
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.apply_op(revision, op, &mut events)?);
        }
        self.record(meta, revision, events, effects)?;
        Ok(Ok(TxnResponse { succeeded, revision: meta.revision, responses }))
    }

    fn apply_op(
        &mut self,
        revision: Revision,
        op: &Op,
        events: &mut Vec<Event>,
    ) -> Result<OpResponse, Error> {
        Ok(match op {
            Op::Put { key, value, lease } => {
                let prev = self.put(revision, key, value, *lease, events)?;
                OpResponse::Put { prev }
            }
            Op::Delete { key } => {
                let deleted = self.delete(revision, key, events)?;
                OpResponse::Delete { deleted: u64::from(deleted) }
            }
            Op::DeletePrefix { prefix } => {
                let mut deleted = 0;
                for key in schema::range_keys(&self.kv, prefix)? {
                    deleted += u64::from(self.delete(revision, &key, events)?);
                }
                OpResponse::Delete { deleted }
            }
            Op::Get { key } => OpResponse::Get {
                kv: schema::get_kv(&self.kv, key)?.map(|stored| stored.into_kv(key.clone())),
            },
            Op::Range { prefix } => OpResponse::Range { kvs: schema::range_kv(&self.kv, prefix)? },
        })
    }

    fn put(
        &mut self,
        revision: Revision,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
        events: &mut Vec<Event>,
    ) -> Result<Option<KeyValue>, Error> {
        let prev = schema::get_kv(&self.kv, key)?;
        let (create_revision, version) = match &prev {
            Some(prev) => (prev.create_revision, prev.version + 1),
            None => (revision, 1),
        };
        let prev_lease = prev.as_ref().and_then(|prev| prev.lease);
        if prev_lease != lease {
            if let Some(old) = prev_lease {
                self.lease_keys.remove(old, key).map_err(schema::db)?;
            }
            if let Some(new) = lease {
                self.lease_keys.insert(new, key).map_err(schema::db)?;
            }
        }
        let stored =
            StoredKv { value: value.to_vec(), create_revision, mod_revision: revision, version, lease };
        self.kv.insert(key, schema::encode(&stored)?.as_slice()).map_err(schema::db)?;
        events.push(Event { kind: EventKind::Put, kv: stored.into_kv(key.to_owned()) });
        Ok(prev.map(|prev| prev.into_kv(key.to_owned())))
    }

    /// Deletes `key` if it exists; returns whether it did.
    fn delete(&mut self, revision: Revision, key: &str, events: &mut Vec<Event>) -> Result<bool, Error> {
        let prev: StoredKv = match self.kv.remove(key).map_err(schema::db)? {
            Some(bytes) => schema::decode(bytes.value())?,
            None => return Ok(false),
        };
        if let Some(lease) = prev.lease {
            self.lease_keys.remove(lease, key).map_err(schema::db)?;
        }
        events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_owned(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
                lease: None,
            },
        });
        Ok(true)
    }

    /// Removes a lease and deletes its keys, all in one revision.
    fn revoke(&mut self, meta: &mut Meta, id: LeaseId, effects: &mut Effects) -> Result<(), Error> {
        self.leases.remove(id).map_err(schema::db)?;
        let mut keys = Vec::new();
        for key in self.lease_keys.remove_all(id).map_err(schema::db)? {
            keys.push(key.map_err(schema::db)?.value().to_owned());
        }
        let revision = meta.revision + 1;
        let mut events = Vec::new();
        for key in keys {
            // The index is kept in step with the keys, but a key is only
            // the lease's to delete if it still says so itself.
            let attached = schema::get_kv(&self.kv, &key)?.is_some_and(|kv| kv.lease == Some(id));
            if attached {
                self.delete(revision, &key, &mut events)?;
            }
        }
        self.record(meta, revision, events, effects)?;
        effects.removed.push(id);
        Ok(())
    }

    /// Makes `revision` current and logs its events, if anything changed:
    /// a write that changes nothing does not advance the revision.
    fn record(
        &mut self,
        meta: &mut Meta,
        revision: Revision,
        events: Vec<Event>,
        effects: &mut Effects,
    ) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        self.log.insert(revision, schema::encode(&events)?.as_slice()).map_err(schema::db)?;
        meta.revision = revision;
        effects.revisions.push((revision, Arc::new(events)));
        Ok(())
    }

    /// Drops log rows older than the retained history.
    fn compact(&mut self, meta: &mut Meta, history_revisions: u64) -> Result<(), Error> {
        let keep_from = meta.revision.saturating_sub(history_revisions) + 1;
        if keep_from <= meta.oldest() {
            return Ok(());
        }
        for revision in meta.oldest()..keep_from {
            self.log.remove(revision).map_err(schema::db)?;
        }
        meta.compacted = keep_from - 1;
        Ok(())
    }
}

/// Whether `compare` holds for a key in state `kv` (`None`: missing, which
/// compares as revisions and version 0 and an empty value).
fn holds(kv: Option<&StoredKv>, compare: &Compare) -> bool {
    use std::cmp::Ordering;

    let ordering = match &compare.target {
        CompareTarget::ModRevision(rev) => kv.map_or(0, |kv| kv.mod_revision).cmp(rev),
        CompareTarget::CreateRevision(rev) => kv.map_or(0, |kv| kv.create_revision).cmp(rev),
        CompareTarget::Version(version) => kv.map_or(0, |kv| kv.version).cmp(version),
        CompareTarget::Value(value) => kv.map_or(&[][..], |kv| kv.value.as_slice()).cmp(value.as_slice()),
    };
    match compare.op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::NotEqual => ordering != Ordering::Equal,
        CompareOp::Less => ordering == Ordering::Less,
        CompareOp::Greater => ordering == Ordering::Greater,
    }
}

/// Loads the persisted leases with a fresh deadline each: deadlines are not
/// persisted, and a restart should not expire a lease its holder could not
/// renew while the store was down.
pub(super) fn load_leases(db: &Database) -> Result<HashMap<LeaseId, LeaseClock>, Error> {
    use ::redb::ReadableDatabase;

    let txn = db.begin_read().map_err(schema::db)?;
    let table = txn.open_table(LEASES).map_err(schema::db)?;
    let now = Instant::now();
    let mut leases = HashMap::new();
    for row in table.iter().map_err(schema::db)? {
        let (id, millis) = row.map_err(schema::db)?;
        let ttl = Duration::from_millis(millis.value());
        leases.insert(id.value(), LeaseClock { ttl, deadline: now + ttl });
    }
    Ok(leases)
}
