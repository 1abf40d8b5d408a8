//! Following a prefix of the store: the one way every subsystem learns of
//! changes.
//!
//! A [`Follower`] hands out every change under its prefix, in revision
//! order, each exactly once, for as long as it is polled. A watch that
//! cannot be opened, that fails or that simply ends is opened again from
//! the change after the last one handed out, after a short pause; no
//! change in the gap is lost and none is handed out twice, even when the
//! break fell between two events of one transaction. When the history it
//! needs has been compacted away, the follower re-reads the whole prefix,
//! hands that out as a [`Change::Reset`], says so in the log, and follows
//! on from the revision of that read.
//!
//! Reconcilers start with a `range` at revision R and follow from R + 1;
//! executors that only care about what happens next start with
//! [`Follower::from_now`].
//!
//! [`Follower::next`] is cancel-safe: a `select!` that drops it loses
//! nothing, because the follower's position only moves once a change is
//! handed out.

use crate::chain;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::{Error, Event, Range, Revision, Store, WatchStream};

/// How long a follower waits before it opens a broken watch again; doubled
/// on every further failure in a row, up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a follower hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One change, in revision order.
    Event(Event),
    /// The changes since the follower's position were compacted away: this
    /// is everything under the prefix as of `range.revision`, to be taken as
    /// the whole truth (a key not in it is gone). Events follow from the
    /// next revision.
    Reset(Range),
}

impl Change {
    /// The keys this change touches: one for an event, every key read for a
    /// reset.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Change::Event(event) => vec![event.kv.key.as_str()],
            Change::Reset(range) => range.kvs.iter().map(|kv| kv.key.as_str()).collect(),
        }
    }
}

/// Follows every change under a prefix from a revision on. See the module
/// documentation for the guarantees.
pub struct Follower {
    store: Arc<dyn Store>,
    prefix: String,
    what: &'static str,
    /// Where the next watch opens: the revision of the last change handed
    /// out (or the first wanted, before any).
    resume: Revision,
    /// Events of revision `resume` already handed out: a transaction's
    /// events share a revision, and a watch can break between them.
    handed: usize,
    /// Events of `resume` the open watch has still to pass over.
    skip: usize,
    watch: Option<WatchStream>,
    failures: u32,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("prefix", &self.prefix)
            .field("what", &self.what)
            .field("resume", &self.resume)
            .field("handed", &self.handed)
            .field("watching", &self.watch.is_some())
            .finish()
    }
}

impl Follower {
    /// Follows `prefix` (every key for `""`) from revision `from`, inclusive;
    /// a revision of 0 is taken as 1, the first there is. `what` names the
    /// follower in the log ("Machines", "Event triggers").
    pub fn new(
        store: Arc<dyn Store>,
        prefix: impl Into<String>,
        from: Revision,
        what: &'static str,
    ) -> Follower {
        Follower {
            store,
            prefix: prefix.into(),
            what,
            resume: from.max(1),
            handed: 0,
            skip: 0,
            watch: None,
            failures: 0,
        }
    }

    /// Follows `prefix` from the next change on: everything written after
    /// this call returns is handed out.
    pub async fn from_now(
        store: Arc<dyn Store>,
        prefix: impl Into<String>,
        what: &'static str,
    ) -> Result<Follower, Error> {
        let revision = store.revision().await?;
        Ok(Follower::new(store, prefix, revision + 1, what))
    }

    /// The next change. Never fails and never ends: trouble with the store
    /// is logged and retried.
    pub async fn next(&mut self) -> Change {
        loop {
            let Some(watch) = self.watch.as_mut() else {
                match self.store.watch(&self.prefix, self.resume).await {
                    Ok(watch) => {
                        tracing::debug!(
                            prefix = self.prefix,
                            from = self.resume,
                            "{}: watching the store.",
                            self.what
                        );
                        self.watch = Some(watch);
                        self.skip = self.handed;
                    }
                    Err(Error::Compacted { oldest, .. }) => match self.store.range(&self.prefix).await {
                        Ok(range) => {
                            tracing::warn!(
                                prefix = self.prefix,
                                from = self.resume,
                                oldest,
                                revision = range.revision,
                                "{}: changes were compacted away before they were seen; re-read the prefix.",
                                self.what
                            );
                            self.resume = range.revision + 1;
                            self.handed = 0;
                            self.failures = 0;
                            return Change::Reset(range);
                        }
                        Err(error) => self.pause("cannot re-read the prefix", &error).await,
                    },
                    Err(error) => self.pause("cannot watch the store", &error).await,
                }
                continue;
            };
            match watch.next().await {
                Some(Ok(event)) => {
                    let revision = event.revision();
                    if revision < self.resume {
                        continue;
                    }
                    if revision == self.resume && self.skip > 0 {
                        // Handed out before the watch broke.
                        self.skip -= 1;
                        continue;
                    }
                    if revision == self.resume {
                        self.handed += 1;
                    } else {
                        self.resume = revision;
                        self.handed = 1;
                    }
                    self.skip = 0;
                    self.failures = 0;
                    return Change::Event(event);
                }
                Some(Err(error)) => {
                    self.watch = None;
                    self.pause("the store watch broke", &error).await;
                }
                None => {
                    self.watch = None;
                    self.pause("the store watch ended", &Error::Backend("the watch stream ended".into()))
                        .await;
                }
            }
        }
    }

    async fn pause(&mut self, why: &str, error: &Error) {
        self.failures = self.failures.saturating_add(1);
        let delay = BACKOFF.saturating_mul(1 << (self.failures - 1).min(7)).min(MAX_BACKOFF);
        tracing::warn!(
            prefix = self.prefix,
            from = self.resume,
            error = %chain(error),
            "{}: {why}; following on in {} ms.",
            self.what,
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
    }

    /// The follower as a stream that never ends.
    pub fn into_stream(self) -> impl Stream<Item = Change> + Send {
        futures::stream::unfold(self, |mut follower| async move {
            let change = follower.next().await;
            Some((change, follower))
        })
    }
}
