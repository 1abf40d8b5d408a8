//! Which host a machine belongs to.
//!
//! A record's `host` names the host that runs the machine and keeps its
//! disk; only that host's service touches the VM. Records from before
//! hosts shared a store have none: a service adopts such a record by
//! writing its own name in with a compare-and-swap on the record's
//! revision, so that of two services that see it at once exactly one
//! wins. It adopts only a record it may run without losing a disk: one
//! whose directory it has (it ran the machine), or one that never ran
//! (there is no disk anywhere yet). The others wait for the host that ran
//! them.
//!
//! What a host holds of a machine that is no longer its own (the record
//! was removed through another host, or names another host) is cleared
//! when its service sees the change: the VM is stopped and the directory,
//! disk included, deleted, so that a machine is never run twice.
//!
//! A host that stopped answering has its machines marked `lost` by
//! [`mark_host_lost`], which the leader calls; when the host's service runs
//! again it boots them or stops them, as their desired state says (see
//! `reconcile`).

use std::collections::BTreeMap;

use hearth_store::{Compare, Op, Store, Txn};

use super::{Machines, kill_now, lock};
use crate::Error;
use crate::record::{self, Desired, MachineRecord, State};
use crate::vmm::{self, VmFiles};

/// What a host is asked to run: the machines whose desired state is
/// running, and their CPUs and memory, summed (as placement weighs it).
pub use hearth_hosts::Load;

/// Whose a record is, seen from this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Owner {
    Here,
    /// From before hosts: not adopted yet.
    Nobody,
    Elsewhere(String),
}

impl Machines {
    /// This daemon's host name.
    pub fn host_name(&self) -> &str {
        &self.inner.host_name
    }

    pub(super) fn owner(&self, rec: &MachineRecord) -> Owner {
        match &rec.host {
            None => Owner::Nobody,
            Some(host) if *host == self.inner.host_name => Owner::Here,
            Some(host) => Owner::Elsewhere(host.clone()),
        }
    }

    /// Whether the machine's VM and disk would be on this host: its record
    /// names this host, or none (a record from before hosts, which this
    /// host's service adopts if it ran it).
    pub fn runs_here(&self, rec: &MachineRecord) -> bool {
        !matches!(self.owner(rec), Owner::Elsewhere(_))
    }

    /// The record of a machine whose VM is on this host, for what needs
    /// the VM or its files; [`Error::Elsewhere`] for another host's.
    pub async fn get_here(&self, name: &str) -> Result<MachineRecord, Error> {
        let rec = self.get(name).await?;
        match self.owner(&rec) {
            Owner::Elsewhere(host) => Err(Error::Elsewhere { name: rec.name, host }),
            Owner::Here | Owner::Nobody => Ok(rec),
        }
    }

    /// Whether this host may adopt a record from before hosts (see the
    /// module documentation).
    fn may_adopt(&self, rec: &MachineRecord) -> bool {
        self.dir(&rec.name).is_dir() || rec.status.started_at.is_none()
    }

    /// Writes this host into a record that names none, if this host may
    /// adopt it, by compare-and-swap on its revision. Returns the record
    /// as it is afterwards, whoever won; `None` if it is gone.
    pub(super) async fn adopt(&self, name: &str) -> Result<Option<MachineRecord>, Error> {
        let mut adopted = false;
        let rec = self
            .update(name, |rec| {
                adopted = rec.host.is_none() && self.may_adopt(rec);
                if adopted {
                    rec.host = Some(self.inner.host_name.clone());
                }
                adopted
            })
            .await?;
        if adopted {
            tracing::info!(
                machine = name,
                host = self.inner.host_name,
                "Adopted a machine from before hosts."
            );
        }
        Ok(rec)
    }

    /// Stops and deletes what this host holds of a machine that is not its
    /// own any more (its record is gone, or names another host): the VM,
    /// the directory with its disk, the cgroup, the taps. The caller holds
    /// the machine's lock.
    pub(super) async fn clear_leftovers(&self, name: &str, why: &str) {
        let nics = lock(&self.inner.nics).remove(name).unwrap_or_default();
        let dir = self.dir(name);
        if !dir.exists() && nics.is_empty() {
            return;
        }
        if let Some(pid) = vmm::running_pid(&VmFiles::in_dir(&dir), name) {
            kill_now(pid, name).await;
        }
        self.forget_agent(name);
        self.forget_config(name);
        self.inner.networks.activity().forget(name);
        lock(&self.inner.dialing).remove(name);
        if dir.exists()
            && let Err(error) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(machine = name, dir = %dir.display(), %error, "Could not delete a machine's directory.");
        }
        vmm::jailer::remove_cgroup(name);
        if let Err(error) = self.inner.networks.unplug(&nics).await {
            tracing::warn!(machine = name, error = %crate::chain(&error), "Could not delete a machine's taps.");
        }
        tracing::info!(machine = name, why, "Stopped and deleted a machine this host no longer runs.");
    }

    /// What each host is asked to run (records from before hosts count
    /// for this one), for placing new machines.
    pub async fn load_by_host(&self) -> Result<BTreeMap<String, Load>, Error> {
        let mut load: BTreeMap<String, Load> = BTreeMap::new();
        for rec in self.list().await? {
            // A sleeping machine needs its memory again when it wakes.
            if rec.desired == Desired::Stopped {
                continue;
            }
            let host = rec.host.unwrap_or_else(|| self.inner.host_name.clone());
            let sum = load.entry(host).or_default();
            sum.machines += 1;
            sum.cpus += rec.spec.cpus;
            sum.memory_mib += u64::from(rec.spec.memory_mib);
        }
        Ok(load)
    }

    /// The host a new machine goes to: [`hearth_hosts::place`] over
    /// `hosts` and what each carries now. The outer error is the store's;
    /// the inner one says, host by host, why none can take it.
    pub async fn place(
        &self,
        hosts: &[hearth_hosts::HostView],
        need: &hearth_hosts::Need,
    ) -> Result<Result<String, hearth_hosts::NoHost>, Error> {
        Ok(hearth_hosts::place(hosts, &self.load_by_host().await?, need))
    }
}

/// Marks every machine of `host` that may have a VM (its state is not
/// stopped, failed, lost or sleeping: a sleeping machine's saved state is
/// on that host's disk, and it wakes there when the host is back) `lost`, with `reason` (why the host is lost,
/// e.g. "host n2 stopped renewing its lease at 12:00:03 UTC") and where
/// its disk is; each by compare-and-swap on the record's revision,
/// retried on conflict. Returns how many it marked.
///
/// Takes the store rather than a [`Machines`]: the leader calls it with a
/// store fenced by its leadership, so that a deposed leader writes nothing.
pub async fn mark_host_lost(store: &dyn Store, host: &str, reason: &str) -> Result<usize, Error> {
    let may_run = |rec: &MachineRecord| {
        rec.host.as_deref() == Some(host)
            && !(rec.status.state.is_down() || matches!(rec.status.state, State::Lost | State::Sleeping))
    };
    let why = format!("{reason}; its disk is on host {host}, so the machine comes back when {host} does");
    let mut marked = 0;
    for kv in store.range(record::PREFIX).await?.kvs {
        let name = kv.key.trim_start_matches(record::PREFIX);
        match serde_json::from_slice::<MachineRecord>(&kv.value) {
            Ok(rec) if may_run(&rec) => {}
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(machine = name, %error, "Skipping an unreadable machine record.");
                continue;
            }
        }
        let mut lost = false;
        update_record(store, name, |rec| {
            lost = may_run(rec);
            if lost {
                rec.status.state = State::Lost;
                rec.status.phase = None;
                rec.status.pid = None;
                rec.status.reason = Some(why.clone());
            }
            lost
        })
        .await?;
        if lost {
            tracing::warn!(machine = name, host, "Marked a machine lost with its host.");
            marked += 1;
        }
    }
    Ok(marked)
}

/// A machine's record and its revision.
pub(super) async fn find_record(
    store: &dyn Store,
    name: &str,
) -> Result<Option<(MachineRecord, u64)>, Error> {
    let Some(kv) = store.get(&record::key(name)).await? else { return Ok(None) };
    let rec: MachineRecord =
        serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt(name.to_owned(), e))?;
    Ok(Some((rec, kv.mod_revision)))
}

/// Applies `change` to the record with compare-and-swap on its revision,
/// retrying on conflict. `change` returns false to leave the record as it
/// is. Returns the record as written (or left); `None` if there is none.
pub(super) async fn update_record(
    store: &dyn Store,
    name: &str,
    mut change: impl FnMut(&mut MachineRecord) -> bool,
) -> Result<Option<MachineRecord>, Error> {
    for _ in 0..16 {
        let Some((mut rec, revision)) = find_record(store, name).await? else { return Ok(None) };
        if !change(&mut rec) {
            return Ok(Some(rec));
        }
        let key = record::key(name);
        let value = serde_json::to_vec(&rec).map_err(|e| Error::Corrupt(name.to_owned(), e))?;
        let txn = Txn::new().when(Compare::mod_revision(&key, revision)).and_then(Op::Put {
            key,
            value,
            lease: None,
        });
        if store.txn(txn).await?.succeeded {
            return Ok(Some(rec));
        }
    }
    Err(Error::Contended(name.to_owned()))
}
