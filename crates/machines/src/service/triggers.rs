//! What wakes a sleeping machine besides a connection: a cron schedule or
//! a change in hearth's store, added with `hearth machine trigger add`
//! (`POST /v1/machines/NAME/triggers`), the same triggers apps and
//! workflows have, with `hearth-triggers`' spec checks, ids and cron
//! driver. A firing wakes the machine (nothing for one awake); what the
//! machine then does is its own, until it is idle for its `sleep_after`
//! again. A webhook needs no trigger: a request to the machine's forwarded
//! port wakes it.
//!
//! Stored at `machine-triggers/NAME/ID`, the last cron firing at
//! `machine-cron/NAME/ID`; not under `machines/`, whose keys are machines.
//! Every daemon runs the driver: a slot is claimed in the store once, and a
//! wake written twice wakes once.

use futures::StreamExt;
use hearth_store::{Compare, Op, Txn};
use hearth_triggers::driver::{self, CronJob, CronTarget, Guarantee};
use hearth_triggers::spec::{self, Kind, OwnKeys};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Machines;
use crate::Error;
use crate::record::{self, Desired};

/// The store prefix of machines' added triggers.
pub const PREFIX: &str = "machine-triggers/";
/// The store prefix of their cron triggers' last firings.
pub const CRON_PREFIX: &str = "machine-cron/";

fn trigger_key(machine: &str, id: &str) -> String {
    format!("{PREFIX}{machine}/{id}")
}

/// One trigger of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TriggerSpec {
    Cron(Cron),
    Event(EventTrigger),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cron {
    pub schedule: String,
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    pub prefix: String,
    /// `put`, `delete`; empty: both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
}

impl hearth_triggers::Spec for TriggerSpec {
    fn kind(&self) -> Kind {
        match self {
            TriggerSpec::Cron(_) => Kind::Cron,
            TriggerSpec::Event(_) => Kind::Event,
        }
    }
}

/// What machines' event triggers may not follow: a wake writes there.
const OWN_KEYS: OwnKeys = OwnKeys {
    prefix: record::PREFIX,
    why: "machines cannot be woken by machine records (a wake writes one, which would wake again)",
};

/// A machine's trigger: its id, where it came from, and what it is.
pub type Trigger = hearth_triggers::Trigger<TriggerSpec>;
type Stored = hearth_triggers::Stored<TriggerSpec>;

impl TriggerSpec {
    fn validate(&self) -> Result<(), Error> {
        match self {
            TriggerSpec::Cron(c) => spec::check_schedule(&c.schedule, &c.timezone).map(drop),
            TriggerSpec::Event(e) => spec::check_event(&e.prefix, &e.kinds, OWN_KEYS),
        }
        .map_err(Error::Invalid)
    }
}

impl Machines {
    /// The triggers added to a machine.
    pub async fn triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        self.get(name).await?;
        self.added_triggers(name).await
    }

    async fn added_triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        let range = self.inner.store.range(&format!("{PREFIX}{name}/")).await?;
        range
            .kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice::<Stored>(&kv.value)
                    .map(Trigger::added)
                    .map_err(|e| Error::Corrupt(kv.key.clone(), e))
            })
            .collect()
    }

    /// Adds a trigger that wakes the machine, for as long as it exists.
    pub async fn add_trigger(&self, name: &str, spec: TriggerSpec) -> Result<Trigger, Error> {
        spec.validate()?;
        let stored = Stored::new(spec, hearth_triggers::now_ms());
        let value = serde_json::to_vec(&stored).map_err(|e| Error::Corrupt(name.to_owned(), e))?;
        // Only while the machine exists: a removal racing this leaves no
        // trigger behind it.
        let txn = Txn::new().when(Compare::exists(record::key(name))).and_then(Op::Put {
            key: trigger_key(name, &stored.id),
            value,
            lease: None,
        });
        if !self.writes().txn(txn).await?.succeeded {
            return Err(Error::NotFound(name.to_owned()));
        }
        Ok(Trigger::added(stored))
    }

    /// Removes one of a machine's triggers, with its cron state.
    pub async fn remove_trigger(&self, name: &str, id: &str) -> Result<(), Error> {
        let all = self.triggers(name).await?;
        if !all.iter().any(|t| t.id == id) {
            let ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
            return Err(Error::TriggerNotFound {
                machine: name.to_owned(),
                id: id.to_owned(),
                ids: ids.join(", "),
            });
        }
        let txn = Txn::new()
            .and_then(Op::Delete { key: trigger_key(name, id) })
            .and_then(Op::Delete { key: format!("{CRON_PREFIX}{name}/{id}") });
        self.writes().txn(txn).await?;
        Ok(())
    }

    /// A removed machine's triggers and cron states, as operations of the
    /// removal's transaction.
    pub(crate) fn forget_triggers(name: &str) -> [Op; 2] {
        [
            Op::DeletePrefix { prefix: format!("{PREFIX}{name}/") },
            Op::DeletePrefix { prefix: format!("{CRON_PREFIX}{name}/") },
        ]
    }

    /// Wakes `name` for a trigger if it sleeps; nothing for one awake or
    /// stopped.
    async fn fire(&self, name: &str, why: &str) -> Result<(), Error> {
        let Some((rec, _)) = self.find(name).await? else { return Ok(()) };
        if rec.desired != Desired::Sleeping && rec.status.state != record::State::Sleeping {
            return Ok(());
        }
        tracing::info!(machine = name, trigger = why, "A trigger wakes a machine.");
        self.wake(name).await.map(drop)
    }

    /// Fires machines' cron and event triggers until `shutdown`.
    pub async fn run_triggers(self, shutdown: watch::Receiver<bool>) {
        let events = tokio::spawn(follow_events(self.clone()));
        let store = self.inner.store.clone();
        driver::run(Crons { machines: self }, store, shutdown).await;
        events.abort();
    }
}

struct Crons {
    machines: Machines,
}

impl CronTarget for Crons {
    type Job = String;
    type Error = Error;
    // A wake is idempotent: firing a slot again wakes nothing new.
    const GUARANTEE: Guarantee = Guarantee::Idempotent;

    async fn jobs(&self) -> Result<Vec<CronJob<String>>, Error> {
        let range = self.machines.inner.store.range(PREFIX).await?;
        let mut jobs = Vec::new();
        for kv in &range.kvs {
            let Some((machine, _)) = kv.key[PREFIX.len()..].split_once('/') else { continue };
            let stored: Stored = match serde_json::from_slice(&kv.value) {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::warn!(key = kv.key, %error, "An unreadable machine trigger is skipped.");
                    continue;
                }
            };
            if let TriggerSpec::Cron(cron) = stored.spec {
                jobs.push(CronJob {
                    owner: machine.to_owned(),
                    state_key: format!("{CRON_PREFIX}{machine}/{}", stored.id),
                    source_key: kv.key.clone(),
                    schedule: cron.schedule,
                    timezone: cron.timezone,
                    job: stored.id,
                });
            }
        }
        Ok(jobs)
    }

    async fn fire(&self, job: &CronJob<String>, _due: hearth_triggers::Due) -> Result<(), Error> {
        self.machines.fire(&job.owner, &format!("cron {}", job.job)).await
    }
}

/// Wakes the machines whose event triggers a store change matches.
async fn follow_events(machines: Machines) {
    let changes =
        hearth_triggers::events::follow(machines.inner.store.clone(), "Machine event triggers").await;
    futures::pin_mut!(changes);
    let mut triggers = event_triggers(&machines).await;
    while let Some(event) = changes.next().await {
        let key = &event.kv.key;
        if key.starts_with(PREFIX) {
            triggers = event_triggers(&machines).await;
            continue;
        }
        if key.starts_with(record::PREFIX) || hearth_triggers::private::is_secret_key(key) {
            continue;
        }
        for (machine, id, t) in &triggers {
            if hearth_triggers::events::takes(&t.prefix, &t.kinds, &event)
                && let Err(error) = machines.fire(machine, &format!("event {id}")).await
            {
                tracing::warn!(machine, key, error = %crate::chain(&error), "An event trigger could not wake its machine.");
            }
        }
    }
}

/// Every machine's event triggers: (machine, id, trigger).
async fn event_triggers(machines: &Machines) -> Vec<(String, String, EventTrigger)> {
    let range = match machines.inner.store.range(PREFIX).await {
        Ok(range) => range,
        Err(error) => {
            tracing::warn!(%error, "Cannot read the machines' event triggers.");
            return Vec::new();
        }
    };
    range
        .kvs
        .iter()
        .filter_map(|kv| {
            let (machine, _) = kv.key[PREFIX.len()..].split_once('/')?;
            match serde_json::from_slice::<Stored>(&kv.value).ok()?.spec {
                TriggerSpec::Event(e) => Some((machine.to_owned(), kv.key.rsplit('/').next()?.to_owned(), e)),
                TriggerSpec::Cron(_) => None,
            }
        })
        .collect()
}
