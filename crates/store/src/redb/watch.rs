//! Watches: an in-memory ring of recent revisions' events in front of the
//! on-disk log, and the stream each watcher pulls from them.
//!
//! The writer thread publishes a batch in two steps: it pushes the batch's
//! revisions into the [`Ring`], then announces the newest one on a
//! `tokio::sync::watch` channel ([`Progress`]). A watcher only keeps a cursor
//! (`next`, the first revision it has not delivered yet): it reads revisions
//! `next..=announced` from the ring, or from the log when the ring has moved
//! past them, delivers them, and waits for the next announcement. Because the
//! cursor is all the state there is, a watcher created while writes race
//! cannot skip, repeat or reorder a revision, and a slow one costs the writer
//! nothing: it simply falls back to the log.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError};

use ::redb::ReadableDatabase;
use futures::StreamExt;
use tokio::sync::watch;

use super::Shared;
use super::schema::{self, LOG, META, Meta};
use crate::{Error, Event, Revision, WatchStream};

/// How many revisions a watcher reads per step, so that one far behind
/// neither holds a read transaction long nor buffers its whole backlog.
const CHUNK_REVISIONS: u64 = 512;

/// What the writer has made visible to watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Progress {
    /// Every revision up to this one is durable and readable from the ring
    /// or the log.
    pub(super) revision: Revision,
    /// The store is shut down; watch streams end.
    pub(super) closed: bool,
}

/// The events of the most recent revisions, contiguous and in order.
#[derive(Debug)]
pub(super) struct Ring {
    revisions: VecDeque<(Revision, Arc<Vec<Event>>)>,
    bytes: usize,
    max_revisions: usize,
    max_bytes: usize,
}

impl Ring {
    pub(super) fn new(max_revisions: usize, max_bytes: usize) -> Ring {
        Ring { revisions: VecDeque::new(), bytes: 0, max_revisions, max_bytes }
    }

    /// Appends the next revision, evicting the oldest ones beyond the bounds.
    /// The newest revision is always kept, however large, so the ring stays
    /// contiguous with what the writer last published.
    pub(super) fn push(&mut self, revision: Revision, events: Arc<Vec<Event>>) {
        if self.revisions.back().is_some_and(|(last, _)| last + 1 != revision) {
            // Revisions skip only if a commit reported as failed did land;
            // its events are in the log, so start afresh rather than serve
            // a ring with a hole in it.
            self.revisions.clear();
            self.bytes = 0;
        }
        self.bytes += weight(&events);
        self.revisions.push_back((revision, events));
        while self.revisions.len() > 1
            && (self.revisions.len() > self.max_revisions || self.bytes > self.max_bytes)
        {
            if let Some((_, dropped)) = self.revisions.pop_front() {
                self.bytes -= weight(&dropped);
            }
        }
    }

    /// The events of revisions `from..=to`, if the ring still holds them all.
    fn get(&self, from: Revision, to: Revision) -> Option<Vec<Arc<Vec<Event>>>> {
        let (first, _) = self.revisions.front()?;
        let (last, _) = self.revisions.back()?;
        if from < *first || to > *last {
            return None;
        }
        let start = usize::try_from(from - first).ok()?;
        let end = usize::try_from(to - first).ok()?;
        Some(self.revisions.range(start..=end).map(|(_, events)| Arc::clone(events)).collect())
    }
}

/// Roughly the memory a revision's events take.
fn weight(events: &[Event]) -> usize {
    events.iter().map(|event| event.kv.key.len() + event.kv.value.len() + 64).sum()
}

/// Builds the stream for a watch whose `from` has been checked already.
pub(super) fn stream(shared: Arc<Shared>, prefix: String, from: Revision) -> WatchStream {
    let progress = shared.progress.clone();
    let watcher = Watcher { shared, prefix, next: from, progress, done: false };
    futures::stream::unfold(watcher, |mut watcher| async move {
        let batch = watcher.next_batch().await?;
        Some((futures::stream::iter(batch), watcher))
    })
    .flatten()
    .boxed()
}

struct Watcher {
    shared: Arc<Shared>,
    prefix: String,
    /// The first revision not yet delivered.
    next: Revision,
    progress: watch::Receiver<Progress>,
    done: bool,
}

impl Watcher {
    /// The next non-empty run of matching events, or `None` at the end.
    async fn next_batch(&mut self) -> Option<Vec<Result<Event, Error>>> {
        loop {
            if self.done {
                return None;
            }
            let published = *self.progress.borrow_and_update();
            if published.closed {
                return None;
            }
            if self.next <= published.revision {
                let to = published.revision.min(self.next + CHUNK_REVISIONS - 1);
                match self.read(self.next, to).await {
                    Ok(revisions) => {
                        self.next = to + 1;
                        let matching: Vec<_> = revisions
                            .iter()
                            .flat_map(|events| events.iter())
                            .filter(|event| event.kv.key.starts_with(&self.prefix))
                            .cloned()
                            .map(Ok)
                            .collect();
                        if !matching.is_empty() {
                            return Some(matching);
                        }
                        // Nothing under our prefix: look at what is left
                        // before waiting.
                        continue;
                    }
                    // The store shut down under us: end as after a shutdown.
                    Err(Error::Closed) => return None,
                    Err(error) => {
                        self.done = true;
                        return Some(vec![Err(error)]);
                    }
                }
            }
            // An announcement made since `borrow_and_update` wakes us at once.
            if self.progress.changed().await.is_err() {
                // The writer thread is gone: the store is closed.
                return None;
            }
        }
    }

    async fn read(&self, from: Revision, to: Revision) -> Result<Vec<Arc<Vec<Event>>>, Error> {
        if let Some(hit) = self.shared.ring.lock().unwrap_or_else(PoisonError::into_inner).get(from, to) {
            return Ok(hit);
        }
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || read_log(&shared, from, to))
            .await
            .map_err(|e| Error::Backend(Box::new(e)))?
    }
}

/// Reads revisions `from..=to` from the on-disk log.
fn read_log(shared: &Shared, from: Revision, to: Revision) -> Result<Vec<Arc<Vec<Event>>>, Error> {
    let db = shared.db()?;
    let txn = db.begin_read().map_err(schema::db)?;
    let meta = Meta::read(&txn.open_table(META).map_err(schema::db)?)?;
    if from <= meta.compacted {
        return Err(Error::Compacted { requested: from, oldest: meta.oldest() });
    }
    let log = txn.open_table(LOG).map_err(schema::db)?;
    let mut out = Vec::new();
    let mut expected = from;
    for row in log.range(from..=to).map_err(schema::db)? {
        let (revision, events) = row.map_err(schema::db)?;
        if revision.value() != expected {
            break;
        }
        out.push(Arc::new(schema::decode(events.value())?));
        expected += 1;
    }
    if expected != to + 1 {
        return Err(schema::corrupt(format!("the event log has no entry for revision {expected}")));
    }
    Ok(out)
}
