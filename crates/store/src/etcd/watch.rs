//! Watches that outlive the connection they started on.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{EtcdStore, event_from, rev};
use crate::{Error, Event, Revision, WatchStream, chain};

/// The first pause before a broken watch is opened again; doubled on each
/// failure in a row, up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

struct Watch {
    store: EtcdStore,
    /// The namespaced prefix.
    key: Vec<u8>,
    /// Where the watch opens again: the revision after the last one handed
    /// out (etcd sends a revision's events in one response).
    next: Revision,
    stream: Option<etcd_client::WatchStream>,
    buffer: VecDeque<Event>,
    /// When the current run of failures began.
    broken_since: Option<Instant>,
    failures: u32,
    done: bool,
}

/// Every change under the namespaced `key` prefix from revision `from` on.
pub(super) fn stream(store: EtcdStore, key: Vec<u8>, from: Revision) -> WatchStream {
    let watch = Watch {
        store,
        key,
        next: from,
        stream: None,
        buffer: VecDeque::new(),
        broken_since: None,
        failures: 0,
        done: false,
    };
    futures::stream::unfold(watch, |mut watch| async move {
        let item = watch.next().await?;
        Some((item, watch))
    })
    .boxed()
}

impl Watch {
    async fn next(&mut self) -> Option<Result<Event, Error>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                let options =
                    etcd_client::WatchOptions::new().with_prefix().with_start_revision(self.next as i64);
                let mut client = self.store.inner.client.watch_client().max_decoding_message_size(usize::MAX);
                match client.watch(self.key.clone(), Some(options)).await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(e) => {
                        let error = self.store.error(e);
                        if let Some(error) = self.broke(error).await {
                            return Some(Err(error));
                        }
                    }
                }
                continue;
            };
            let error = match stream.message().await {
                Ok(Some(response)) if response.canceled() => {
                    self.stream = None;
                    let compacted = rev(response.compact_revision());
                    if compacted > 0 {
                        self.store.note_compacted(compacted);
                        self.done = true;
                        return Some(Err(Error::Compacted { requested: self.next, oldest: compacted }));
                    }
                    // Cancelled for another reason: the member lost its
                    // leader, or is shutting down.
                    Error::Backend(format!("etcd cancelled the watch: {}", response.cancel_reason()).into())
                }
                Ok(Some(response)) => {
                    self.broken_since = None;
                    self.failures = 0;
                    for event in response.events() {
                        match event_from(&self.store, event) {
                            Ok(event) => self.buffer.push_back(event),
                            Err(error) => {
                                self.done = true;
                                return Some(Err(error));
                            }
                        }
                    }
                    if let Some(last) = self.buffer.back() {
                        self.next = last.revision() + 1;
                    }
                    continue;
                }
                Ok(None) => {
                    self.stream = None;
                    Error::Backend("etcd ended the watch stream".into())
                }
                Err(e) => {
                    self.stream = None;
                    self.store.error(e)
                }
            };
            if let Some(error) = self.broke(error).await {
                return Some(Err(error));
            }
        }
    }

    /// Waits before the watch opens again, or gives up (and returns the
    /// error to hand out) once it has been broken for too long.
    async fn broke(&mut self, error: Error) -> Option<Error> {
        let since = *self.broken_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.store.inner.reconnect_for {
            self.done = true;
            return Some(error);
        }
        self.failures = self.failures.saturating_add(1);
        let delay = BACKOFF.saturating_mul(1 << (self.failures - 1).min(5)).min(MAX_BACKOFF);
        tracing::warn!(
            endpoints = self.store.inner.endpoints,
            from = self.next,
            error = %chain(&error),
            "The etcd watch broke; opening it again in {} ms.",
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
        None
    }
}
