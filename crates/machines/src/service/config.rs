//! Config delivery: the machine's merged config, pushed into the guest.
//!
//! The daemon gives the service a [`ConfigFeed`] (the config subsystem,
//! which this crate does not know). Each machine then boots with
//! `hearth.config=1` (its agent holds the main process until the first
//! config) and its reload action; the agent keeps the files in
//! `/run/hearth` (see [`hearth_agent::config`]).
//!
//! A machine's config is pushed on the agent connection the service keeps
//! for it (the one `agent()` dials), never a second one:
//!
//! - once per connection, right after the hello and before the machine is
//!   marked running or the client handed to anyone else;
//! - after every bump of [`ConfigFeed::changes`], to every machine whose
//!   agent is connected, all machines at once.
//!
//! Pushes to one machine run one at a time, each fetching the payload when
//! it starts, so the newest config always goes last; a push asked for while
//! another waits is dropped (the waiting one fetches after it was asked),
//! and a payload older than one already delivered is never sent. A push
//! that fails is logged and tried again at the next bump or connection.

use std::sync::Arc;

use async_trait::async_trait;
use hearth_agent::client::{AgentClient, ConfigApplied};
use tokio::sync::Mutex;

use super::{Machines, blocking, lock};
use crate::Error;
use crate::record::{ConfigStatus, now_unix};

/// A machine's merged config, rendered, as the agent writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigPayload {
    /// `/run/hearth/config.json`.
    pub json: Vec<u8>,
    /// `/run/hearth/config.env`, `KEY=VALUE` lines.
    pub env: Vec<u8>,
    /// The config revision this payload was rendered at.
    pub revision: u64,
}

/// Where machines' configs come from: implemented by the daemon's glue
/// over the config subsystem.
#[async_trait]
pub trait ConfigFeed: Send + Sync + 'static {
    /// The config of this machine now (always Some payload; `{}` and an empty env when nothing is set).
    async fn payload(&self, machine: &str) -> Result<ConfigPayload, String>;
    /// Bumped (to the new config revision) after each committed batch of config changes.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

impl Machines {
    /// Makes the service push each machine's config from `feed`, from now
    /// on: machines booted after this get `hearth.config=1` and their
    /// reload action on their command line. Call it before
    /// [`run`](Self::run), inside the Tokio runtime; a second call replaces
    /// the first feed.
    pub fn set_config_feed(&self, feed: Arc<dyn ConfigFeed>) {
        *lock(&self.inner.config_feed) = Some(feed.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "The config feed was set outside the runtime; config changes will not be pushed."
            );
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let mut changes = feed.changes();
            while changes.changed().await.is_ok() {
                let current = lock(&this.inner.config_feed).as_ref().is_some_and(|f| Arc::ptr_eq(f, &feed));
                if !current {
                    return;
                }
                this.push_config_to_all();
            }
        });
    }

    pub(super) fn config_feed(&self) -> Option<Arc<dyn ConfigFeed>> {
        lock(&self.inner.config_feed).clone()
    }

    /// Pushes the config to every machine whose agent is connected, each
    /// in a task of its own.
    fn push_config_to_all(&self) {
        let connected: Vec<String> =
            lock(&self.inner.agents).iter().filter(|(_, c)| !c.is_closed()).map(|(n, _)| n.clone()).collect();
        for name in connected {
            if !lock(&self.inner.config_queued).insert(name.clone()) {
                continue; // a push waits already, and will fetch the newest
            }
            let this = self.clone();
            tokio::spawn(async move {
                let turn = this.config_lock(&name);
                let _turn = turn.lock().await;
                lock(&this.inner.config_queued).remove(&name);
                let Some(client) = this.open_agent(&name) else { return };
                this.push_config(&name, &client).await;
            });
        }
    }

    /// Pushes the config on a connection just made, before anything else
    /// uses it. Without a feed, does nothing.
    pub(super) async fn push_config_on_connect(&self, name: &str, client: &Arc<AgentClient>) {
        if self.config_feed().is_none() {
            return;
        }
        let turn = self.config_lock(name);
        let _turn = turn.lock().await;
        self.push_config(name, client).await;
    }

    fn config_lock(&self, name: &str) -> Arc<Mutex<()>> {
        lock(&self.inner.config_locks).entry(name.to_owned()).or_default().clone()
    }

    /// Fetches the machine's payload and sends it; logs what fails. The
    /// caller holds the machine's config lock.
    async fn push_config(&self, name: &str, client: &Arc<AgentClient>) {
        let Some(feed) = self.config_feed() else { return };
        let payload = match feed.payload(name).await {
            Ok(payload) => payload,
            Err(error) => {
                return tracing::warn!(machine = name, error, "Could not get a machine's config to push.");
            }
        };
        let delivered = lock(&self.inner.config_delivered).get(name).copied();
        if delivered.is_some_and(|revision| payload.revision < revision) {
            return tracing::debug!(
                machine = name,
                revision = payload.revision,
                delivered,
                "Not pushing a config older than the one delivered."
            );
        }
        let client = client.clone();
        let ConfigPayload { json, env, revision } = payload;
        let applied =
            blocking(move || client.apply_config(&json, &env, revision).map_err(Error::Agent)).await;
        match applied {
            Ok(applied) => {
                lock(&self.inner.config_delivered).insert(name.to_owned(), revision);
                if let Err(error) = self.record_config(name, &applied).await {
                    tracing::warn!(machine = name, error = %crate::chain(&error), "Could not record the machine's config.");
                }
            }
            Err(error) => tracing::warn!(
                machine = name,
                revision,
                error = %crate::chain(&error),
                "Could not push the config to a machine; trying again at the next change or connection."
            ),
        }
    }

    /// Writes what the agent did into the record's status, when that
    /// changes it (see [`ConfigStatus`]).
    async fn record_config(&self, name: &str, applied: &ConfigApplied) -> Result<(), Error> {
        let reload_error = applied.reload.as_ref().and_then(|r| r.error.clone());
        if let Some(error) = &reload_error {
            tracing::warn!(
                machine = name,
                revision = applied.revision,
                error,
                "The machine's reload failed."
            );
        }
        let updated = self
            .update(name, |rec| {
                // The same config again (a reconnection): nothing happened.
                if !applied.changed && rec.status.config.is_some() {
                    return false;
                }
                rec.status.config = Some(ConfigStatus {
                    revision: applied.revision,
                    applied_at: now_unix(),
                    reload_error: reload_error.clone(),
                });
                true
            })
            .await?;
        if applied.changed && updated.is_some() {
            tracing::debug!(machine = name, revision = applied.revision, "Pushed a new config to a machine.");
        }
        Ok(())
    }

    /// Forgets what was delivered to a machine that is gone or stopped.
    pub(super) fn forget_config(&self, name: &str) {
        lock(&self.inner.config_delivered).remove(name);
        lock(&self.inner.config_locks).remove(name);
    }
}
