//! Machines that sleep: a running machine with `sleep_after` set and no
//! connection for that long has its memory and devices saved to its
//! directory (`sleep/`, the same save as a snapshot's, without the copy of
//! the disk, which stays where it is) and its VM stopped; the next
//! connection, `hearth machine wake`, an exec or a trigger resumes it where
//! it was.
//!
//! The policy:
//!
//! - Sleep and waking are desired states, like running and stopped: anyone
//!   writes `desired` (the idle check, the API, a connection held by a
//!   forward, any host), and the machine's host carries it out in its
//!   reconcile loop (`Task::Sleep`, `Task::Wake`).
//! - Idleness is what this host's forwards and DNS saw
//!   ([`hearth_net::activity`]): a machine dozes only with no connection
//!   open, and a connection that comes once it dozes is held, wakes it, and
//!   is passed through once it runs.
//! - A woken machine's saved state is deleted once it runs: from then on
//!   its disk moves on, and the memory no longer matches it.
//! - A save that fails leaves the machine running; a restore that fails
//!   boots the machine afresh from its disk, as a power cut would leave it.
//! - A sleeping machine that is stopped is woken first and then powered
//!   off the usual way, so that its file systems are shut down cleanly.
//! - A sleeping machine survives a daemon restart: it stays asleep, with
//!   its forwards open, until something wakes it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::boot::{boot_deadline, kill_now};
use super::{Inner, Machines};
use crate::Error;
use crate::record::{Desired, MachineRecord, State};
use crate::vmm::{self, VmFiles};

/// How often a caller waiting for a machine to wake reads its record.
const WAKE_POLL: Duration = Duration::from_millis(20);

/// How long a caller waits for a wake beyond the backend's boot deadline.
const WAKE_SLACK: Duration = Duration::from_secs(30);

impl Machines {
    /// Where a sleeping machine's memory and devices are saved.
    pub(super) fn sleep_dir(&self, name: &str) -> PathBuf {
        self.dir(name).join("sleep")
    }

    /// Asks for a running machine to sleep now. Its host saves it and
    /// stops its VM; the next connection through its ports wakes it.
    pub async fn sleep(&self, name: &str) -> Result<MachineRecord, Error> {
        let rec = self.ask_to_sleep(name).await?.ok_or_else(|| Error::NotFound(name.to_owned()))?;
        let asleep = rec.desired == Desired::Sleeping || rec.status.state == State::Sleeping;
        if !asleep {
            return Err(Error::NotRunning { name: name.to_owned(), state: rec.status.state.as_str() });
        }
        self.kick(name);
        Ok(rec)
    }

    /// Writes `desired: sleeping` into the record of a machine that is
    /// running and meant to; the record as it is after.
    async fn ask_to_sleep(&self, name: &str) -> Result<Option<MachineRecord>, Error> {
        self.update(name, |r| {
            let awake = r.desired == Desired::Running && r.status.state == State::Running;
            if awake {
                r.desired = Desired::Sleeping;
            }
            awake
        })
        .await
    }

    /// Asks for a sleeping machine to wake (nothing for a running one).
    pub async fn wake(&self, name: &str) -> Result<MachineRecord, Error> {
        let refused = |rec: &MachineRecord| {
            rec.desired == Desired::Stopped
                || rec.status.state.is_down()
                || matches!(rec.status.state, State::Created | State::Lost)
        };
        let rec = self.get(name).await?;
        if refused(&rec) {
            return Err(Error::NotRunning { name: name.to_owned(), state: rec.status.state.as_str() });
        }
        let rec = self
            .update(name, |r| {
                let asleep = r.desired == Desired::Sleeping && !refused(r);
                if asleep {
                    r.desired = Desired::Running;
                }
                asleep
            })
            .await?
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        if refused(&rec) {
            return Err(Error::NotRunning { name: name.to_owned(), state: rec.status.state.as_str() });
        }
        self.kick(name);
        Ok(rec)
    }

    /// Wakes the machine if it sleeps (or is going to sleep) and returns
    /// its record once it runs. Callers for one machine wait one after the
    /// other: the first waits for the wake, the others find it awake.
    pub async fn wake_and_wait(&self, name: &str) -> Result<MachineRecord, Error> {
        // Awake already (a caller that read an old "sleeping"): one read,
        // no queue.
        let rec = self.get(name).await?;
        if rec.desired == Desired::Running
            && rec.status.state == State::Running
            && !(self.runs_here(&rec) && self.is_busy(name))
        {
            return Ok(rec);
        }
        let turn = super::lock(&self.inner.waking_callers).entry(name.to_owned()).or_default().clone();
        let _turn = turn.lock().await;
        let rec = self.wake(name).await?;
        let limit = boot_deadline(rec.spec.backend) + WAKE_SLACK;
        let deadline = Instant::now() + limit;
        loop {
            let rec = self.get(name).await?;
            let here = self.runs_here(&rec);
            match (rec.desired, rec.status.state) {
                // Not while a task of this host is still at it: a sleep
                // that started sees the desired state changed, and gives up.
                (Desired::Running, State::Running) if !(here && self.is_busy(name)) => {
                    if here {
                        self.inner.networks.activity().woke(name);
                    }
                    return Ok(rec);
                }
                (Desired::Stopped, state) => {
                    return Err(Error::NotRunning { name: name.to_owned(), state: state.as_str() });
                }
                (_, state) if state.is_down() || state == State::Lost => {
                    let why = rec.status.reason.unwrap_or_else(|| format!("it is {}", state.as_str()));
                    return Err(Error::BootFailed(format!("it did not wake: {why}")));
                }
                // Asked to sleep again meanwhile (by hand): wake it again.
                (Desired::Sleeping, _) => {
                    self.wake(name).await?;
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::BootFailed(format!(
                    "it did not wake within {}s; see `hearth machine logs {name}`",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(WAKE_POLL).await;
        }
    }

    /// An agent for a running machine, waking it first if it sleeps: for
    /// exec, copies and ssh, which a person expects to just work.
    pub async fn agent_waking(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<hearth_agent::client::AgentClient>, Error> {
        let rec = self.get_here(name).await?;
        if rec.desired == Desired::Sleeping || rec.status.state == State::Sleeping {
            self.wake_and_wait(name).await?;
        }
        self.agent(name).await
    }

    /// For the liveness tick: asks a running machine of this host that
    /// has been idle for its `sleep_after` to sleep.
    pub(super) async fn sleep_if_idle(&self, rec: &MachineRecord) {
        let Some(after) = rec.spec.sleep_after_secs else { return };
        if rec.desired != Desired::Running || rec.status.state != State::Running {
            return;
        }
        let activity = self.inner.networks.activity();
        if !activity.try_doze(&rec.name, Duration::from_secs(after)) {
            return;
        }
        let asked = self.ask_to_sleep(&rec.name).await;
        match asked {
            Ok(Some(r)) if r.desired == Desired::Sleeping => {
                tracing::info!(
                    machine = rec.name,
                    idle_secs = after,
                    "Machine is idle; putting it to sleep."
                );
                self.kick(&rec.name);
            }
            Ok(_) => activity.woke(&rec.name),
            Err(error) => {
                activity.woke(&rec.name);
                tracing::warn!(machine = rec.name, error = %crate::chain(&error), "Could not ask an idle machine to sleep.");
            }
        }
    }

    /// `Task::Sleep`: saves the machine's memory and devices into its
    /// `sleep/` directory and stops its VM. A save that fails leaves it
    /// running, and says why in its record.
    pub(super) async fn go_to_sleep(&self, name: &str) -> Result<(), Error> {
        let rec = self.get(name).await?;
        let activity = self.inner.networks.activity();
        if rec.desired != Desired::Sleeping || rec.status.state != State::Running {
            activity.woke(name);
            return Ok(());
        }
        // From here a connection is held until the machine is awake again.
        activity.doze(name);
        let files = VmFiles::in_dir(&self.dir(name));
        let Some(pid) = vmm::running_pid(&files, name) else {
            activity.woke(name);
            return Err(Error::NotRunning { name: name.to_owned(), state: "gone" });
        };
        // Only if it is still to sleep: a connection that came before it
        // dozed has woken it (desired running again), and passed.
        let going = self
            .update(name, |r| {
                let still = r.desired == Desired::Sleeping && r.status.state == State::Running;
                if still {
                    r.status.state = State::Stopping;
                    r.status.phase = Some("going to sleep: saving its memory".into());
                }
                still
            })
            .await?
            .is_some_and(|r| r.status.state == State::Stopping);
        if !going {
            activity.woke(name);
            return Ok(());
        }
        let started = Instant::now();
        let dir = self.sleep_dir(name);
        let partial = dir.with_extension("partial");
        let saved = async {
            for old in [&dir, &partial] {
                if old.exists() {
                    std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
                }
            }
            std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
            self.save_vm(&rec, &files, pid, &partial, false).await?;
            std::fs::rename(&partial, &dir).map_err(|e| Error::io(&dir, e))
        }
        .await;
        if let Err(error) = saved {
            let _ = std::fs::remove_dir_all(&partial);
            let alive = vmm::running_pid(&files, name).is_some();
            let reason = format!(
                "it could not go to sleep ({}); {}",
                crate::chain(&error),
                if alive { "it runs on" } else { "its VM is gone" }
            );
            tracing::warn!(machine = name, reason, "Machine did not sleep.");
            activity.woke(name);
            self.update(name, |r| {
                // A stop asked meanwhile stands.
                if r.desired == Desired::Sleeping {
                    r.desired = if alive { Desired::Running } else { Desired::Stopped };
                }
                r.status.state = if alive { State::Running } else { State::Failed };
                r.status.phase = None;
                r.status.reason = Some(reason.clone());
                true
            })
            .await?;
            return Ok(());
        }
        self.forget_agent(name);
        let bytes = super::snapshot::dir_size(&dir);
        let took_ms = started.elapsed().as_millis() as u64;
        let reason = match rec.spec.sleep_after_secs {
            Some(_) if rec.spec.ports.is_empty() => {
                format!("asleep; `hearth machine wake {name}` or an exec wakes it")
            }
            Some(_) => {
                format!("asleep; the next connection to its ports wakes it, or `hearth machine wake {name}`")
            }
            None => format!("put to sleep; `hearth machine wake {name}` wakes it"),
        };
        self.update(name, |r| {
            r.status.state = State::Sleeping;
            r.status.pid = None;
            r.status.phase = None;
            r.status.reason = Some(reason.clone());
            true
        })
        .await?;
        tracing::info!(machine = name, took_ms, bytes, "Machine is asleep.");
        Ok(())
    }

    /// `Task::Wake`: resumes the machine from its `sleep/` directory. A
    /// restore that fails boots it afresh (or, if it is to stop, leaves it
    /// stopped).
    pub(super) async fn wake_up(&self, name: &str) -> Result<(), Error> {
        let rec = self.get(name).await?;
        let dir = self.sleep_dir(name);
        let activity = self.inner.networks.activity();
        activity.doze(name);
        self.set_status(name, |s| {
            s.state = State::Starting;
            s.phase = Some("waking: restoring its memory".into());
            s.reason = None;
        })
        .await?;
        let started = Instant::now();
        let taps = rec.spec.nics.iter().map(|n| n.tap.clone()).collect();
        let resumed = match dir.is_dir() {
            true => self.resume_vm(&rec, &dir, taps).await,
            false => Err(Error::BootFailed(format!("its saved state {} is missing", dir.display()))),
        };
        let _ = std::fs::remove_dir_all(&dir);
        match resumed {
            Ok(()) => {
                activity.woke(name);
                let took_ms = started.elapsed().as_millis() as u64;
                tracing::info!(machine = name, took_ms, "Machine woke.");
                Ok(())
            }
            Err(error) => {
                let files = VmFiles::in_dir(&self.dir(name));
                if let Some(pid) = vmm::running_pid(&files, name) {
                    kill_now(pid, name).await;
                }
                let why = crate::chain(&error);
                hearth_store::acts::record(
                    &*self.inner.store,
                    &format!("machine:{name}"),
                    "wake failed",
                    format!(
                        "its saved memory could not be restored ({why}); booting it afresh from its disk"
                    ),
                )
                .await;
                tracing::warn!(machine = name, error = why, "Could not wake a machine; booting it afresh.");
                activity.woke(name);
                if self.get(name).await?.desired == Desired::Stopped {
                    self.set_status(name, |s| {
                        s.state = State::Stopped;
                        s.phase = None;
                        s.pid = None;
                        s.reason = Some(format!(
                            "stopped while asleep; its saved memory could not be restored ({why})"
                        ));
                    })
                    .await?;
                    return Ok(());
                }
                self.boot(name).await
            }
        }
    }
}

/// What a connection that finds a machine asleep calls (through
/// [`hearth_net::activity::Activity::wake`]). Weak: the networks service,
/// which the machines service holds, holds this.
pub(super) struct Waking(pub(super) Weak<Inner>);

impl hearth_net::activity::Waker for Waking {
    fn wake(&self, machine: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>> {
        let (inner, machine) = (self.0.upgrade(), machine.to_owned());
        Box::pin(async move {
            let Some(inner) = inner else { return Err("the daemon is stopping".to_owned()) };
            let machines = Machines { inner, writes: None };
            machines.wake_and_wait(&machine).await.map(drop).map_err(|e| crate::chain(&e))
        })
    }
}
