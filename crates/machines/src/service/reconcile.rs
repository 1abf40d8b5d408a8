//! The reconcile loop: at start-up adopts the VMs left running by a previous
//! daemon (and fails the records whose VM is gone), then follows `machines/`
//! in the store and kicks each changed machine towards its desired state,
//! and checks once a second that running machines' processes still live.
//! It acts on this host's machines only (see `hosts`): it adopts records
//! from before hosts, and clears what it holds of machines that are not
//! its own any more.

use std::path::Path;
use std::time::Duration;

use hearth_store::Follower;
use tokio::sync::watch;

use super::boot::console_tail;
use super::hosts::Owner;
use super::{Machines, kill_now, lock};
use crate::Error;
use crate::record::{self, Desired, MachineRecord, State};
use crate::vmm::{self, Backend, VmFiles};

/// How often running machines' processes are checked.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

impl Machines {
    /// Reconciles one machine soon, without waiting for the loop.
    pub(super) fn kick(&self, name: &str) {
        let this = self.own();
        let name = name.to_owned();
        tokio::spawn(async move { this.reconcile(&name).await });
    }

    /// The reconcile loop: adopts or fails machines left from a previous
    /// daemon, then follows the store and the VM processes until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let start_revision = match self.adopt_all().await {
            Ok(rev) => rev,
            Err(error) => {
                tracing::error!(error = %crate::chain(&error), "Could not read machines at start-up.");
                0
            }
        };
        let mut changes =
            Follower::new(self.inner.store.clone(), record::PREFIX, start_revision + 1, "Machines");
        let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
        loop {
            tokio::select! {
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                change = changes.next() => {
                    for key in change.keys() {
                        self.kick(key.trim_start_matches(record::PREFIX));
                    }
                }
                _ = tick.tick() => self.check_liveness().await,
            }
        }
    }

    /// At start-up: this host takes the records from before hosts that it
    /// may; its running VMs whose records say so are adopted; its records
    /// that say running with no VM behind them are marked failed.
    async fn adopt_all(&self) -> Result<u64, Error> {
        let revision = self.inner.store.revision().await?;
        for rec in self.list().await? {
            let rec = match self.owner(&rec) {
                Owner::Here => rec,
                Owner::Elsewhere(_) => continue,
                Owner::Nobody => match self.adopt(&rec.name).await? {
                    Some(rec) if self.owner(&rec) == Owner::Here => rec,
                    Some(rec) if rec.host.is_none() => {
                        tracing::info!(
                            machine = rec.name,
                            "A machine from before hosts ran, but not from this data dir; leaving it for the host that ran it."
                        );
                        continue;
                    }
                    _ => continue,
                },
            };
            let files = VmFiles::in_dir(&self.dir(&rec.name));
            let mut alive = vmm::running_pid(&files, &rec.name);
            let saved = self.sleep_dir(&rec.name);
            if let Some(pid) = alive {
                alive = self.settle_sleeper(&rec, pid, &saved).await?;
            }
            match (rec.status.state, alive) {
                (State::Sleeping, None) => {
                    tracing::info!(machine = rec.name, "A machine sleeps; its next connection wakes it.");
                    self.inner.networks.activity().doze(&rec.name);
                }
                // Caught going to sleep, after its memory was saved (by
                // this life of the machine: saved since it last started).
                (State::Stopping, None) if saved_since(&saved, rec.status.started_at) => {
                    tracing::info!(machine = rec.name, "A machine fell asleep as the daemon stopped.");
                    self.inner.networks.activity().doze(&rec.name);
                    self.set_status(&rec.name, |s| {
                        s.state = State::Sleeping;
                        s.phase = None;
                        s.pid = None;
                    })
                    .await?;
                }
                (State::Running, Some(pid)) => {
                    tracing::info!(machine = rec.name, pid, "Adopted a running machine.");
                    self.record_recovery(&rec.name, format!("adopted its VM (pid {pid}), still running"))
                        .await;
                }
                (State::Starting | State::Stopping, Some(pid)) => {
                    tracing::info!(machine = rec.name, pid, "Adopting a machine caught mid-transition.");
                    let reason = format!("adopted its VM (pid {pid}), caught {}", rec.status.state.as_str());
                    self.record_recovery(&rec.name, reason).await;
                    self.set_status(&rec.name, |s| {
                        s.state = State::Running;
                        s.phase = None;
                        s.pid = Some(pid);
                    })
                    .await?;
                }
                (State::Running | State::Starting | State::Stopping, None) => {
                    tracing::warn!(machine = rec.name, "A machine's VM process is gone.");
                    let reason = format!(
                        "its VM process was gone when the daemon restarted; see `hearth machine logs {}`, then `hearth machine start {}`",
                        rec.name, rec.name
                    );
                    self.set_status(&rec.name, |s| {
                        s.state = State::Failed;
                        s.phase = None;
                        s.pid = None;
                        s.reason = Some(reason.clone());
                    })
                    .await?;
                }
                _ => {}
            }
        }
        // Whatever needs doing now is picked up by reconciling everything.
        for rec in self.list().await? {
            self.kick(&rec.name);
        }
        Ok(revision)
    }

    /// At start-up, a VM alive with a machine's saved sleep state beside it
    /// (the daemon stopped while it woke or went to sleep), or paused: what
    /// QEMU's run state says of it decides. Launched to wake but not yet
    /// resumed, or saved but not yet ended: the VM goes and the machine
    /// sleeps (and wakes again if it is to run). Resumed: it runs, and the
    /// saved memory, which its disk has moved on from, goes. Paused with no
    /// complete save (a save cut short): it sleeps if it is to (the save is
    /// made again), else it runs on. Returns the VM's pid if it is kept.
    /// Firecracker's run state is not asked: a VM alive there is kept
    /// running, as before sleep existed.
    async fn settle_sleeper(
        &self,
        rec: &MachineRecord,
        pid: u32,
        saved: &std::path::Path,
    ) -> Result<Option<u32>, Error> {
        let name = &rec.name;
        let _ = std::fs::remove_dir_all(saved.with_extension("partial"));
        if rec.spec.backend == Backend::Firecracker {
            if saved.exists() {
                let _ = std::fs::remove_dir_all(saved);
            }
            return Ok(Some(pid));
        }
        let control = VmFiles::in_dir(&self.dir(name)).control;
        let state = {
            let control = control.clone();
            tokio::task::spawn_blocking(move || vmm::qemu::run_state(&control))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
        };
        let state = match state {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(machine = name, %error, "Cannot ask a VM its run state; taking it as running.");
                if saved.exists() {
                    let _ = std::fs::remove_dir_all(saved);
                }
                return Ok(Some(pid));
            }
        };
        let complete = saved.is_dir();
        match state.as_str() {
            "running" => {
                if complete {
                    let _ = std::fs::remove_dir_all(saved);
                }
                Ok(Some(pid))
            }
            "inmigrate" | "prelaunch" | "postmigrate" | "finish-migrate" | "paused" if complete => {
                tracing::info!(
                    machine = name,
                    state,
                    "A machine was caught between sleep and waking; it sleeps."
                );
                kill_now(pid, name).await;
                self.set_status(name, |s| {
                    s.state = State::Sleeping;
                    s.phase = None;
                    s.pid = None;
                })
                .await?;
                self.inner.networks.activity().doze(name);
                Ok(None)
            }
            "paused" | "postmigrate" if rec.desired != Desired::Sleeping => {
                tracing::info!(machine = name, "A machine's sleep was cut short; it runs on.");
                let control = control.clone();
                let _ = tokio::task::spawn_blocking(move || vmm::qemu::resume(&control)).await;
                Ok(Some(pid))
            }
            _ => Ok(Some(pid)),
        }
    }

    /// Records, for `hearth alert history`, a machine this daemon took
    /// back from the one before it.
    async fn record_recovery(&self, name: &str, what: String) {
        let reason = format!("{what} when the daemon restarted");
        hearth_store::acts::record(&*self.inner.store, &format!("machine:{name}"), "recovered", reason).await;
    }

    async fn check_liveness(&self) {
        let Ok(records) = self.list().await else { return };
        for rec in records {
            if !matches!(rec.status.state, State::Running)
                || self.owner(&rec) != Owner::Here
                || self.is_busy(&rec.name)
            {
                continue;
            }
            let files = VmFiles::in_dir(&self.dir(&rec.name));
            if vmm::running_pid(&files, &rec.name).is_some() {
                self.rotate_logs(&rec.name, rec.spec.backend, files.clone());
                self.keep_agent_connected(&rec.name);
                self.sleep_if_idle(&rec).await;
                continue;
            }
            self.forget_agent(&rec.name);
            let (state, reason) = exit_reason(&rec.name, &files.console);
            tracing::info!(machine = rec.name, state = state.as_str(), "Machine's VM process ended.");
            let _ = self
                .update(&rec.name, |r| {
                    r.status.state = state;
                    r.status.pid = None;
                    r.status.phase = None;
                    r.status.reason = reason.clone();
                    // It went down by itself: do not boot it again behind the user's back.
                    r.desired = Desired::Stopped;
                    true
                })
                .await;
            self.kick(&rec.name);
        }
    }

    /// Connects to a running machine's agent if no connection is open (a
    /// machine adopted after a daemon restart, a connection that broke), so
    /// that its reports about the main process keep reaching the record.
    fn keep_agent_connected(&self, name: &str) {
        if lock(&self.inner.agents).get(name).is_some_and(|c| !c.is_closed()) {
            return;
        }
        if !lock(&self.inner.connecting).insert(name.to_owned()) {
            return;
        }
        let (this, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            if let Err(error) = this.agent(&name).await {
                tracing::debug!(machine = name, %error, "Could not reach the agent; trying again.");
            }
            lock(&this.inner.connecting).remove(&name);
        });
    }

    /// Keeps a running machine's console and main logs under their bound
    /// (see [`vmm::console`]): the guest writes them as fast as it likes.
    /// QEMU is pointed at each new file, so nothing is lost; Firecracker's
    /// console is its standard output, copied and truncated. In a task of
    /// its own, one per machine at a time: a VMM slow to answer on its
    /// control socket holds up no other machine's liveness check.
    fn rotate_logs(&self, name: &str, backend: Backend, files: VmFiles) {
        if !lock(&self.inner.rotating).insert(name.to_owned()) {
            return;
        }
        let (this, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            let rotated = tokio::task::spawn_blocking(move || {
                let max = vmm::console::MAX_BYTES;
                let mut rotated = Vec::new();
                for (log, chardev) in
                    [(&files.console, vmm::qemu::CONSOLE_CHARDEV), (&files.main_log, vmm::qemu::MAIN_CHARDEV)]
                {
                    let done = match backend {
                        Backend::Firecracker => vmm::console::rotate_if_full(log, max),
                        Backend::QemuKvm | Backend::QemuTcg => {
                            vmm::console::rotate_by_reopen(log, max, |new| {
                                vmm::qemu::reopen_log(&files.control, chardev, new)
                                    .map_err(std::io::Error::other)
                            })
                        }
                    };
                    rotated.push((chardev, done));
                }
                rotated
            })
            .await;
            lock(&this.inner.rotating).remove(&name);
            let results = match rotated {
                Ok(results) => results,
                Err(error) => return tracing::warn!(machine = name, %error, "Could not rotate the logs."),
            };
            for (log, result) in results {
                match result {
                    Ok(true) => tracing::debug!(machine = name, log, "Rotated a log."),
                    Ok(false) => {}
                    Err(error) => tracing::warn!(machine = name, log, %error, "Could not rotate a log."),
                }
            }
        });
    }

    pub(super) fn is_busy(&self, name: &str) -> bool {
        lock(&self.inner.busy).contains(name)
    }

    /// Brings one machine of this host towards its desired state; clears
    /// what this host holds of one that is not its own.
    async fn reconcile(&self, name: &str) {
        let guard = self.machine_lock(name);
        let _held = guard.lock().await;
        let rec = match self.find(name).await {
            Ok(Some((rec, _))) => rec,
            Ok(None) => {
                // Removed through another host, perhaps: a task in flight
                // fails on the missing record, and kicks again after.
                if !self.is_busy(name) {
                    self.clear_leftovers(name, "its record was removed").await;
                }
                return;
            }
            Err(error) => {
                tracing::warn!(machine = name, error = %crate::chain(&error), "Cannot read machine record.");
                return;
            }
        };
        let rec = match self.owner(&rec) {
            Owner::Here => rec,
            Owner::Nobody => match self.adopt(name).await {
                Ok(Some(rec)) if self.owner(&rec) == Owner::Here => rec,
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(machine = name, error = %crate::chain(&error), "Cannot adopt machine.");
                    return;
                }
            },
            Owner::Elsewhere(host) => {
                if !self.is_busy(name) {
                    self.clear_leftovers(name, &format!("it runs on host {host}")).await;
                }
                return;
            }
        };
        if !rec.spec.nics.is_empty() {
            lock(&self.inner.nics).insert(name.to_owned(), rec.spec.nics.clone());
        }
        if self.is_busy(name) {
            return;
        }
        match (rec.desired, rec.status.state) {
            // A lost machine's host is back: the VM is booted again, or,
            // when it outlived the host's absence, taken back as it is.
            (Desired::Running, State::Created | State::Starting | State::Lost) => {
                self.spawn_task(name, Task::Boot)
            }
            (Desired::Stopped, State::Running | State::Starting | State::Stopping | State::Lost) => {
                self.spawn_task(name, Task::Stop)
            }
            (Desired::Sleeping, State::Running) => self.spawn_task(name, Task::Sleep),
            // Stopping a sleeping machine wakes it first, to power it off
            // cleanly (see `sleep`).
            (Desired::Running | Desired::Stopped, State::Sleeping) => self.spawn_task(name, Task::Wake),
            (Desired::Stopped, State::Created) => {
                let _ = self.set_status(name, |s| s.state = State::Stopped).await;
            }
            (_, State::Stopped | State::Failed) if rec.spec.auto_remove => {
                drop(_held);
                if let Err(error) = self.remove(name, true).await {
                    tracing::warn!(machine = name, error = %crate::chain(&error), "Cannot auto-remove machine.");
                }
            }
            _ => {}
        }
    }

    fn spawn_task(&self, name: &str, task: Task) {
        if !lock(&self.inner.busy).insert(name.to_owned()) {
            return;
        }
        let this = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let result = match task {
                Task::Boot => this.boot(&name).await,
                Task::Stop => this.shut_down(&name).await,
                Task::Sleep => this.go_to_sleep(&name).await,
                Task::Wake => this.wake_up(&name).await,
            };
            lock(&this.inner.busy).remove(&name);
            if let Err(error) = result {
                let reason = crate::chain(&error);
                tracing::warn!(machine = name, error = %reason, "Machine task failed.");
                let _ = this
                    .update(&name, |r| {
                        r.status.state = State::Failed;
                        r.status.phase = None;
                        r.status.reason = Some(reason.clone());
                        r.desired = Desired::Stopped;
                        true
                    })
                    .await;
            }
            // The world may have changed while the task ran.
            this.kick(&name);
        });
    }
}

#[derive(Debug, Clone, Copy)]
enum Task {
    Boot,
    Stop,
    Sleep,
    Wake,
}

/// Whether a sleep save is at `saved`, made since the machine last started
/// (`started_at`, Unix seconds): one older would restore memory over a disk
/// that has moved on.
fn saved_since(saved: &Path, started_at: Option<u64>) -> bool {
    let Ok(modified) = std::fs::metadata(saved).and_then(|m| m.modified()) else { return false };
    let modified = modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    modified >= started_at.unwrap_or(0)
}

/// Why a VM process that is gone ended: a clean power-off, or a crash.
fn exit_reason(name: &str, console: &Path) -> (State, Option<String>) {
    let tail = console_tail(console, 3);
    if tail.contains("reboot: Power down") || tail.contains("reboot: Restarting system") {
        (State::Stopped, Some("the guest powered itself off".into()))
    } else {
        (
            State::Failed,
            Some(format!(
                "its VM process ended unexpectedly; the console says: {tail}; see `hearth machine logs {name}`"
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_save_counts_only_if_made_since_the_machine_last_started() {
        let dir = tempfile::tempdir().expect("temp dir");
        let saved = dir.path().join("sleep");
        assert!(!saved_since(&saved, None), "no save, nothing to restore");
        std::fs::create_dir(&saved).expect("mkdir");
        let now = record::now_unix();
        assert!(saved_since(&saved, Some(now - 60)), "saved after it started");
        assert!(saved_since(&saved, None));
        assert!(!saved_since(&saved, Some(now + 60)), "an older save must not come back over a newer disk");
    }
}
