//! Snapshots: a running machine paused to disk (QEMU's device and memory
//! state, written with a `migrate` to a file, or Firecracker's snapshot
//! files, plus a copy of its disk), and machines resumed from one, as often
//! as wanted.
//!
//! A snapshot's files are in `DATA_DIR/snapshots/NAME` on the host that ran
//! the machine, which its record names: it is taken, restored (the
//! restored machine runs on that host too) and removed there only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hearth_store::{Compare, Op, Txn};

use super::{Machines, blocking, disk_file, kill_now, lock};
use crate::Error;
use crate::record::{self, Desired, MachineRecord, SnapshotRecord, Spec, State, Status, now_unix};
use crate::vmm::firecracker::{self, Api};
use crate::vmm::{self, Backend, VmConfig, VmFiles};

impl Machines {
    fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.inner.machines_dir.with_file_name("snapshots").join(name)
    }

    pub async fn snapshots(&self) -> Result<Vec<SnapshotRecord>, Error> {
        let range = self.inner.store.range(record::SNAPSHOT_PREFIX).await?;
        range
            .kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| {
                    Error::Corrupt(kv.key.trim_start_matches(record::SNAPSHOT_PREFIX).to_owned(), e)
                })
            })
            .collect()
    }

    pub async fn snapshot_record(&self, name: &str) -> Result<SnapshotRecord, Error> {
        let kv = self
            .inner
            .store
            .get(&record::snapshot_key(name))
            .await?
            .ok_or_else(|| Error::SnapshotNotFound(name.to_owned()))?;
        serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt(name.to_owned(), e))
    }

    /// The record of a snapshot whose files are on this host;
    /// [`Error::SnapshotElsewhere`] for another host's.
    async fn snapshot_here(&self, name: &str) -> Result<SnapshotRecord, Error> {
        let snap = self.snapshot_record(name).await?;
        match &snap.host {
            Some(host) if *host != self.inner.host_name => {
                Err(Error::SnapshotElsewhere { name: snap.name, host: host.clone() })
            }
            _ => Ok(snap),
        }
    }

    /// Pauses a running machine to disk: its memory and devices, and a copy
    /// of its disk. The machine is stopped afterwards; `restore` resumes the
    /// snapshot where it was, as often as wanted.
    pub async fn snapshot(&self, machine: &str, snapshot: &str) -> Result<SnapshotRecord, Error> {
        record::validate_name(snapshot)
            .map_err(|e| Error::Invalid(e.replace("machine name", "snapshot name")))?;
        let guard = self.machine_lock(machine);
        let _held = guard.lock().await;
        let rec = self.get_here(machine).await?;
        if rec.status.state != State::Running || self.is_busy(machine) {
            return Err(Error::NotRunning { name: machine.to_owned(), state: rec.status.state.as_str() });
        }
        if self.inner.store.get(&record::snapshot_key(snapshot)).await?.is_some() {
            return Err(Error::SnapshotExists(snapshot.to_owned()));
        }
        let files = VmFiles::in_dir(&self.dir(machine));
        let pid = vmm::running_pid(&files, machine)
            .ok_or_else(|| Error::NotRunning { name: machine.to_owned(), state: "gone" })?;
        lock(&self.inner.busy).insert(machine.to_owned());
        let result = self.save_snapshot(&rec, snapshot, &files, pid).await;
        lock(&self.inner.busy).remove(machine);
        let snap = result?;
        self.forget_agent(machine);
        let reason =
            format!("saved to snapshot {snapshot}; resume it with `hearth machine restore {snapshot}`");
        self.update(machine, |r| {
            r.desired = Desired::Stopped;
            r.status.state = State::Stopped;
            r.status.pid = None;
            r.status.phase = None;
            r.status.reason = Some(reason.clone());
            true
        })
        .await?;
        tracing::info!(machine, snapshot, bytes = snap.size_bytes, "Snapshot taken.");
        Ok(snap)
    }

    async fn save_snapshot(
        &self,
        rec: &MachineRecord,
        snapshot: &str,
        files: &VmFiles,
        pid: u32,
    ) -> Result<SnapshotRecord, Error> {
        let dir = self.snapshot_dir(snapshot);
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        if let Err(error) = self.save_vm(rec, files, pid, &partial, true).await {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(error);
        }
        std::fs::rename(&partial, &dir).map_err(|e| Error::io(&dir, e))?;
        let size_bytes = dir_size(&dir);
        let snap = SnapshotRecord {
            name: snapshot.to_owned(),
            machine: rec.name.clone(),
            host: Some(self.inner.host_name.clone()),
            spec: rec.spec.clone(),
            size_bytes,
            created_at: now_unix(),
        };
        let value = serde_json::to_vec(&snap).map_err(|e| Error::Corrupt(snapshot.to_owned(), e))?;
        self.inner.store.put(&record::snapshot_key(snapshot), value, None).await?;
        Ok(snap)
    }

    /// Saves a running VM's memory and devices into `into` (and, with
    /// `copy_disk`, a copy of its disk, taken while the VM is paused), then
    /// ends the VM. A save that fails lets the VM run on.
    pub(super) async fn save_vm(
        &self,
        rec: &MachineRecord,
        files: &VmFiles,
        pid: u32,
        into: &Path,
        copy_disk: bool,
    ) -> Result<(), Error> {
        let control = files.control.clone();
        let backend = rec.spec.backend;
        let disk = self.dir(&rec.name).join(disk_file(backend));
        let (state_path, disk_copy) = (into.join("state"), copy_disk.then(|| into.join(disk_file(backend))));
        let memory = into.join("memory");
        let name = rec.name.clone();
        let machine_dir = self.dir(&rec.name);
        let saved = blocking(move || {
            if backend == Backend::Firecracker {
                let api = Api::new(&control);
                firecracker::save_state(&machine_dir, &name, &api, &state_path, &memory)?;
                // Paused: the disk is quiescent. Firecracker has no quit;
                // the paused process is killed below.
                if let Some(copy) = &disk_copy {
                    firecracker::copy_sparse(&disk, copy)?;
                }
                return Ok(());
            }
            vmm::qemu::save_state(&control, &state_path)?;
            // The VM is paused: its disk is quiescent and can be copied.
            if let Some(copy) = &disk_copy {
                std::fs::copy(&disk, copy).map_err(|e| Error::io(copy, e))?;
            }
            vmm::qemu::quit(&control)?;
            let started = Instant::now();
            while vmm::is_vm_process(pid, &name) && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
        .await;
        if let Err(error) = saved {
            // A failed save leaves the VM paused: let it run again.
            let control = files.control.clone();
            let _ = blocking(move || {
                if backend == Backend::Firecracker {
                    return firecracker::resume(&Api::new(&control).with_timeout(Duration::from_secs(5)))
                        .map_err(Error::from);
                }
                let mut qmp = vmm::qmp::Qmp::connect(&control, Duration::from_secs(5))?;
                qmp.execute("cont", None).map(drop).map_err(Error::from)
            })
            .await;
            return Err(error);
        }
        if vmm::is_vm_process(pid, &rec.name) {
            kill_now(pid, &rec.name).await;
        }
        Ok(())
    }

    /// Creates a machine from a snapshot and resumes it where it was, on
    /// this host, which must be the snapshot's ([`Error::SnapshotElsewhere`]
    /// otherwise): its files are on that host's disk.
    pub async fn restore(&self, snapshot: &str, name: Option<String>) -> Result<MachineRecord, Error> {
        let snap = self.snapshot_here(snapshot).await?;
        let name = name.unwrap_or_else(|| snap.machine.clone());
        record::validate_name(&name).map_err(Error::Invalid)?;
        if let Some(reason) = self.backend_problem(snap.spec.backend) {
            return Err(Error::BackendUnavailable { backend: snap.spec.backend, reason });
        }
        let guard = self.machine_lock(&name);
        let _held = guard.lock().await;
        if self.find(&name).await?.is_some() {
            return Err(Error::AlreadyExists(name));
        }
        // The guest's memory holds its addresses and MACs: it gets the same
        // ones back, which are free only once the original is gone.
        let mut nics = Vec::new();
        for old in &snap.spec.nics {
            match self.inner.networks.allocate(&old.network, &name, Some(old.ip)).await {
                Ok(nic) => nics.push(hearth_net::record::Nic { mac: old.mac.clone(), ..nic }),
                Err(error) => {
                    for nic in &nics {
                        let _ = self.inner.networks.release(nic).await;
                    }
                    return Err(error.into());
                }
            }
        }
        let rec = MachineRecord {
            name: name.clone(),
            host: Some(self.inner.host_name.clone()),
            spec: Spec { auto_remove: false, nics: nics.clone(), ..snap.spec.clone() },
            desired: Desired::Running,
            status: Status {
                state: State::Starting,
                phase: Some(format!("restoring snapshot {snapshot}")),
                ..Status::default()
            },
            created_at: now_unix(),
        };
        let key = record::key(&name);
        let value = serde_json::to_vec(&rec).map_err(|e| Error::Corrupt(name.clone(), e))?;
        let txn = Txn::new().when(Compare::missing(&key)).and_then(Op::Put { key, value, lease: None });
        if !self.inner.store.txn(txn).await?.succeeded {
            for nic in &nics {
                let _ = self.inner.networks.release(nic).await;
            }
            return Err(Error::AlreadyExists(name));
        }
        lock(&self.inner.busy).insert(name.clone());
        let recorded_taps = snap.spec.nics.iter().map(|n| n.tap.clone()).collect();
        let result = self.resume_snapshot(&rec, snapshot, recorded_taps).await;
        lock(&self.inner.busy).remove(&name);
        if let Err(error) = result {
            let reason = crate::chain(&error);
            let _ = self
                .update(&name, |r| {
                    r.desired = Desired::Stopped;
                    r.status.state = State::Failed;
                    r.status.phase = None;
                    r.status.reason = Some(reason.clone());
                    true
                })
                .await;
            return Err(error);
        }
        self.get(&name).await
    }

    /// `recorded_taps`: the taps the snapshot was taken with, which
    /// Firecracker is told to swap for the restored machine's.
    async fn resume_snapshot(
        &self,
        rec: &MachineRecord,
        snapshot: &str,
        recorded_taps: Vec<String>,
    ) -> Result<(), Error> {
        let dir = self.dir(&rec.name);
        let snap_dir = self.snapshot_dir(snapshot);
        let backend = rec.spec.backend;
        // The same file name as when the snapshot was taken: Firecracker's
        // snapshot names its drive relative to the machine directory.
        let disk = dir.join(disk_file(backend));
        {
            let (dir, from) = (dir.clone(), snap_dir.join(disk_file(backend)));
            blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                if backend == Backend::Firecracker {
                    return firecracker::copy_sparse(&from, &disk).map_err(Error::from);
                }
                std::fs::copy(&from, &disk).map_err(|e| Error::io(&disk, e))?;
                Ok(())
            })
            .await?;
        }
        self.resume_vm(rec, &snap_dir, recorded_taps).await
    }

    /// Launches the machine's VM from the memory and devices saved in
    /// `from`, over the disk in its directory, and waits for its agent.
    /// `recorded_taps`: the taps the state was saved with, which
    /// Firecracker is told to swap for the machine's.
    pub(super) async fn resume_vm(
        &self,
        rec: &MachineRecord,
        from: &Path,
        recorded_taps: Vec<String>,
    ) -> Result<(), Error> {
        let name = rec.name.clone();
        let dir = self.dir(&name);
        let (kernel, initrd) = self.payload(&rec.spec).await?;
        let backend = rec.spec.backend;
        let disk = dir.join(disk_file(backend));
        for nic in &rec.spec.nics {
            self.inner.networks.prepare(nic).await?;
        }
        let disk_base = match backend {
            Backend::Firecracker => None,
            Backend::QemuKvm | Backend::QemuTcg => {
                let (images, digest) = (self.inner.images.clone(), rec.spec.image_digest.clone());
                let image = blocking(move || images.get(&digest).map_err(Error::from)).await?;
                Some(image.ok_or_else(|| Error::ImageNotFound(rec.spec.image_digest.clone()))?.rootfs)
            }
        };
        let config = VmConfig {
            name: name.clone(),
            dir: dir.clone(),
            kernel,
            initrd,
            // Only read at boot; a restored guest keeps the one it booted with.
            cmdline: format!(
                "console=ttyS0 quiet panic=-1 hearth.root=/dev/vda hearth.hostname={}",
                rec.name
            ),
            disk: Some(disk),
            disk_base,
            cpus: rec.spec.cpus,
            memory_mib: rec.spec.memory_mib,
            nics: rec.spec.nics.iter().map(|n| (n.tap.clone(), n.mac.clone())).collect(),
        };
        let files = VmFiles::in_dir(&dir);
        let launched = Instant::now();
        let control = files.control.clone();
        let state = from.join("state");
        let memory = from.join("memory");
        let firecracker = self.firecracker_binary();
        blocking(move || {
            if backend == Backend::Firecracker {
                return firecracker::launch_restored(&firecracker, &config, &state, &memory, &recorded_taps)
                    .map_err(Error::from);
            }
            vmm::qemu::launch_incoming(backend, &config)?;
            vmm::qemu::load_state(&control, &state)?;
            Ok(())
        })
        .await?;
        let pid = vmm::running_pid(&files, &name).ok_or_else(|| {
            Error::BootFailed("the VM process exited while its state was loaded".to_owned())
        })?;
        self.await_agent(&name, rec, pid, launched).await
    }

    /// Deletes a snapshot's files and record, on the snapshot's host.
    pub async fn remove_snapshot(&self, name: &str) -> Result<(), Error> {
        self.snapshot_here(name).await?;
        let dir = self.snapshot_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        self.inner.store.delete(&record::snapshot_key(name)).await?;
        Ok(())
    }
}

pub(super) fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
        })
        .unwrap_or(0)
}
