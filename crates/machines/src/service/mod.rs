//! The machines service: turns machine records into running VMs and back.
//!
//! The API writes a record's spec and desired state; [`Machines::run`] is the
//! reconcile loop that watches `machines/` in the store, starts and stops VM
//! processes to match, and writes what it observed into the record's status.
//! Every state change is therefore also an event on `/v1/events`, which is
//! how the CLI shows boot progress.
//!
//! VM processes are detached: they outlive the daemon. On start the loop
//! adopts the ones still running and marks the others failed, with the reason.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use hearth_agent::client::{AgentClient, HelloInfo};
use hearth_store::{Compare, Follower, Op, Store, Txn};
use nix::sys::signal::Signal;
use tokio::sync::{Mutex, watch};

use crate::image::ImageStore;
use crate::kernel::{self, Kernel};
use crate::probe::{self, HostReport};
use crate::record::{self, Desired, MachineRecord, Spec, State, Status, now_unix};
use crate::vmm::{self, Backend, VmConfig, VmFiles};
use crate::{Error, guest};

mod snapshot;

/// Time a guest gets from launch to its agent's first answer.
fn boot_deadline(backend: Backend) -> Duration {
    match backend {
        Backend::QemuTcg => Duration::from_secs(120),
        Backend::QemuKvm | Backend::Firecracker => Duration::from_secs(30),
    }
}

/// Time a guest gets to power off after it was asked to.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// How often running machines' processes are checked.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);
/// Smallest memory a Debian guest boots in.
pub const MIN_MEMORY_MIB: u32 = 128;
/// Largest root disk: 16 TiB, what ext4 with 4 KiB blocks and no 64-bit
/// block numbers can address. Disks are sparse, so only what the guest
/// writes takes room on the host.
pub const MAX_DISK_MIB: u64 = 16 << 20;
const MIB: u64 = 1 << 20;

/// Where the service keeps things.
#[derive(Debug, Clone)]
pub struct Options {
    /// Per-machine directories go in `DATA_DIR/machines`.
    pub data_dir: PathBuf,
    /// Kernels, initramfs and images: shareable between daemons.
    pub cache_dir: PathBuf,
    /// The static guest agent; found next to the hearth binary if `None`.
    pub agent: Option<PathBuf>,
}

/// What `create` needs.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub image: String,
    pub backend: Option<Backend>,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Overrides the image's entrypoint.
    pub command: Option<Vec<String>>,
    pub kernel: Option<PathBuf>,
    pub auto_remove: bool,
    /// Leave it created, not started.
    pub start: bool,
    /// Networks to join, each with an address or none for the next free one.
    /// Empty: the default network.
    pub networks: Vec<(String, Option<std::net::Ipv4Addr>)>,
    /// No network at all.
    pub no_network: bool,
    /// Ports forwarded from the host's loopback.
    pub ports: Vec<hearth_net::service::PortSpec>,
    /// The root disk's size in MiB, at least the image's; `None`: the image's.
    pub disk_mib: Option<u64>,
}

/// A cheap-to-clone handle to the machines service.
#[derive(Clone)]
pub struct Machines {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    networks: hearth_net::Networks,
    machines_dir: PathBuf,
    cache_dir: PathBuf,
    images: Arc<ImageStore>,
    agent: Option<PathBuf>,
    host: StdMutex<HostReport>,
    /// Serialises every operation on one machine.
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Machines with a boot or stop task in flight.
    busy: StdMutex<HashSet<String>>,
    agents: StdMutex<HashMap<String, Arc<AgentClient>>>,
    /// The boot payload, prepared once (kernel download and initramfs
    /// assembly happen one at a time, under this lock).
    payload: Mutex<Option<Payload>>,
}

impl std::fmt::Debug for Machines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machines").field("dir", &self.inner.machines_dir).finish_non_exhaustive()
    }
}

impl Machines {
    pub fn new(
        store: Arc<dyn Store>,
        networks: hearth_net::Networks,
        options: Options,
        host: HostReport,
    ) -> Result<Self, Error> {
        let machines_dir = options.data_dir.join("machines");
        std::fs::create_dir_all(&machines_dir).map_err(|e| Error::io(&machines_dir, e))?;
        let images = Arc::new(ImageStore::open(&options.cache_dir.join("images"))?);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                networks,
                machines_dir,
                cache_dir: options.cache_dir,
                images,
                agent: options.agent,
                host: StdMutex::new(host),
                locks: StdMutex::default(),
                busy: StdMutex::default(),
                agents: StdMutex::default(),
                payload: Mutex::new(None),
            }),
        })
    }

    pub fn images(&self) -> Arc<ImageStore> {
        self.inner.images.clone()
    }

    /// The host report, including the KVM boot probe once it has run.
    pub fn host(&self) -> HostReport {
        lock(&self.inner.host).clone()
    }

    /// The backend a machine gets unless one is forced: Firecracker where it
    /// can run (KVM proven, the binary on PATH), else QEMU with KVM, else
    /// QEMU in software emulation.
    pub fn default_backend(&self) -> Backend {
        let host = self.host();
        if probe::firecracker_problem(&host).is_none() {
            Backend::Firecracker
        } else if host.kvm.usable == Some(true) && host.qemu.is_some() {
            Backend::QemuKvm
        } else {
            Backend::QemuTcg
        }
    }

    /// Why `backend` cannot run here, if it cannot.
    pub fn backend_problem(&self, backend: Backend) -> Option<String> {
        let host = self.host();
        match backend {
            Backend::QemuTcg | Backend::QemuKvm if host.qemu.is_none() => Some(
                "qemu-system-x86_64 is not installed: install the qemu-system-x86 package (`make setup` does)".into(),
            ),
            Backend::QemuTcg => None,
            Backend::QemuKvm => match host.kvm.usable {
                Some(true) => None,
                Some(false) => Some(format!("KVM is not usable: {}", host.kvm.detail)),
                None => Some(format!("KVM has not been proven to work yet: {}", host.kvm.detail)),
            },
            Backend::Firecracker => probe::firecracker_problem(&host),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.inner.machines_dir.join(name)
    }

    /// The machine's serial console log.
    pub fn console_log(&self, name: &str) -> PathBuf {
        VmFiles::in_dir(&self.dir(name)).console
    }

    fn machine_lock(&self, name: &str) -> Arc<Mutex<()>> {
        lock(&self.inner.locks).entry(name.to_owned()).or_default().clone()
    }

    pub async fn get(&self, name: &str) -> Result<MachineRecord, Error> {
        self.find(name).await?.map(|(rec, _)| rec).ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    async fn find(&self, name: &str) -> Result<Option<(MachineRecord, u64)>, Error> {
        let Some(kv) = self.inner.store.get(&record::key(name)).await? else { return Ok(None) };
        let rec: MachineRecord =
            serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt(name.to_owned(), e))?;
        Ok(Some((rec, kv.mod_revision)))
    }

    pub async fn list(&self) -> Result<Vec<MachineRecord>, Error> {
        let range = self.inner.store.range(record::PREFIX).await?;
        range
            .kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| Error::Corrupt(kv.key.trim_start_matches(record::PREFIX).to_owned(), e))
            })
            .collect()
    }

    /// Applies `change` to the record with compare-and-swap, retrying on
    /// conflict. `change` returns false to leave the record as it is.
    async fn update(
        &self,
        name: &str,
        mut change: impl FnMut(&mut MachineRecord) -> bool,
    ) -> Result<Option<MachineRecord>, Error> {
        for _ in 0..16 {
            let Some((mut rec, revision)) = self.find(name).await? else { return Ok(None) };
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
            if self.inner.store.txn(txn).await?.succeeded {
                return Ok(Some(rec));
            }
        }
        Err(Error::Contended(name.to_owned()))
    }

    async fn set_status(&self, name: &str, f: impl Fn(&mut Status)) -> Result<Option<MachineRecord>, Error> {
        self.update(name, |rec| {
            let before = rec.status.clone();
            f(&mut rec.status);
            rec.status != before
        })
        .await
    }

    /// Records a new machine and, unless asked not to, starts it.
    pub async fn create(&self, req: CreateRequest) -> Result<MachineRecord, Error> {
        record::validate_name(&req.name).map_err(Error::Invalid)?;
        if req.memory_mib < MIN_MEMORY_MIB {
            return Err(Error::Invalid(format!(
                "{} MiB of memory is too little to boot Linux: give at least {MIN_MEMORY_MIB} MiB (--memory {MIN_MEMORY_MIB})",
                req.memory_mib
            )));
        }
        let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        if req.cpus == 0 || req.cpus > host_cpus.max(1) * 4 {
            return Err(Error::Invalid(format!(
                "{} CPUs is out of range: give from 1 to {} (this host has {host_cpus})",
                req.cpus,
                host_cpus * 4
            )));
        }
        if let Some(kernel) = &req.kernel
            && !kernel.is_file()
        {
            return Err(Error::Invalid(format!(
                "the kernel {} does not exist: give the path of a bzImage, or omit --kernel for Debian's cloud kernel",
                kernel.display()
            )));
        }
        let backend = req.backend.unwrap_or_else(|| self.default_backend());
        if let Some(reason) = self.backend_problem(backend) {
            return Err(Error::BackendUnavailable { backend, reason });
        }
        let images = self.inner.images.clone();
        let wanted = req.image.clone();
        let image = tokio::task::spawn_blocking(move || images.get(&wanted))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??
            .ok_or_else(|| Error::ImageNotFound(req.image.clone()))?;
        let image_mib = image.size_bytes.div_ceil(MIB);
        let disk_mib = match req.disk_mib {
            None => image_mib,
            Some(mib) if mib < image_mib => {
                return Err(Error::DiskTooSmall { disk_mib: mib, image: req.image, image_mib });
            }
            Some(mib) if mib > MAX_DISK_MIB => {
                return Err(Error::Invalid(format!(
                    "a {mib} MiB disk is larger than the {MAX_DISK_MIB} MiB (16 TiB) hearth supports: give a smaller --disk-size"
                )));
            }
            Some(mib) => mib,
        };
        let entrypoint = match req.command {
            Some(cmd) => cmd,
            None => image.config.entrypoint.iter().chain(&image.config.cmd).cloned().collect(),
        };
        let rec = MachineRecord {
            name: req.name.clone(),
            spec: Spec {
                image: req.image,
                image_digest: image.digest.clone(),
                backend,
                cpus: req.cpus,
                memory_mib: req.memory_mib,
                entrypoint,
                env: image.config.env.clone(),
                kernel: req.kernel.map(|k| k.display().to_string()),
                auto_remove: req.auto_remove,
                nics: Vec::new(),
                ports: req.ports.clone(),
                disk_mib: Some(disk_mib),
            },
            desired: if req.start { Desired::Running } else { Desired::Stopped },
            status: Status::default(),
            created_at: now_unix(),
        };
        if self.find(&req.name).await?.is_some() {
            return Err(Error::AlreadyExists(req.name));
        }
        let others = self.list().await?;
        for port in &req.ports {
            if let Some(other) =
                others.iter().find(|m| m.spec.ports.iter().any(|p| p.host == port.host && p.udp == port.udp))
            {
                return Err(Error::Invalid(format!(
                    "host port {} is already forwarded to machine {:?}; pick another host port",
                    port.host, other.name
                )));
            }
        }
        let mut rec = rec;
        rec.spec.nics = self.allocate_nics(&req.name, &req.networks, req.no_network).await?;
        let key = record::key(&req.name);
        let value = serde_json::to_vec(&rec).map_err(|e| Error::Corrupt(req.name.clone(), e))?;
        let txn = Txn::new().when(Compare::missing(&key)).and_then(Op::Put { key, value, lease: None });
        if !self.inner.store.txn(txn).await?.succeeded {
            for nic in &rec.spec.nics {
                let _ = self.inner.networks.release(nic).await;
            }
            return Err(Error::AlreadyExists(req.name));
        }
        self.kick(&rec.name);
        Ok(rec)
    }

    /// Addresses on each network asked for (the default one if none),
    /// all or nothing.
    async fn allocate_nics(
        &self,
        machine: &str,
        networks: &[(String, Option<std::net::Ipv4Addr>)],
        none: bool,
    ) -> Result<Vec<hearth_net::record::Nic>, Error> {
        if none || (networks.is_empty() && !self.inner.networks.enabled()) {
            return Ok(Vec::new());
        }
        // No network asked for and no default network: the machine runs unplugged.
        if networks.is_empty() && self.inner.networks.get(hearth_net::service::DEFAULT_NETWORK).await.is_err()
        {
            return Ok(Vec::new());
        }
        let default = [(hearth_net::service::DEFAULT_NETWORK.to_owned(), None)];
        let wanted = if networks.is_empty() { &default[..] } else { networks };
        let mut nics = Vec::new();
        for (network, ip) in wanted {
            if nics.iter().any(|n: &hearth_net::record::Nic| &n.network == network) {
                continue;
            }
            match self.inner.networks.allocate(network, machine, *ip).await {
                Ok(nic) => nics.push(nic),
                Err(error) => {
                    for nic in &nics {
                        let _ = self.inner.networks.release(nic).await;
                    }
                    return Err(error.into());
                }
            }
        }
        Ok(nics)
    }

    /// Asks for the machine to run.
    pub async fn start(&self, name: &str) -> Result<MachineRecord, Error> {
        let rec = self
            .update(name, |rec| {
                let changed = rec.desired != Desired::Running || rec.status.state.is_down();
                rec.desired = Desired::Running;
                if rec.status.state.is_down() {
                    rec.status.state = State::Created;
                    rec.status.reason = None;
                    rec.status.phase = None;
                }
                changed
            })
            .await?
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        self.kick(name);
        Ok(rec)
    }

    /// Asks for the machine to stop.
    pub async fn stop(&self, name: &str) -> Result<MachineRecord, Error> {
        let rec = self
            .update(name, |rec| {
                let changed = rec.desired != Desired::Stopped;
                rec.desired = Desired::Stopped;
                changed
            })
            .await?
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        self.kick(name);
        Ok(rec)
    }

    /// Removes a machine: its VM process, its directory and its record.
    /// Without `force` a running machine is refused.
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), Error> {
        record::validate_name(name).map_err(Error::Invalid)?;
        let guard = self.machine_lock(name);
        let _held = guard.lock().await;
        let found = self.find(name).await?;
        let dir = self.dir(name);
        if found.is_none() && !(force && dir.exists()) {
            return Err(Error::NotFound(name.to_owned()));
        }
        let files = VmFiles::in_dir(&dir);
        if let Some(pid) = vmm::running_pid(&files, name) {
            if !force {
                let state = found.as_ref().map_or(State::Running, |(r, _)| r.status.state);
                return Err(Error::StillRunning { name: name.to_owned(), state: state.as_str() });
            }
            kill_now(pid, name).await;
        }
        self.forget_agent(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let nics = found.as_ref().map(|(r, _)| r.spec.nics.clone()).unwrap_or_default();
        self.inner.networks.forget(name, &nics).await?;
        if found.is_some() {
            self.inner.store.delete(&record::key(name)).await?;
        }
        tracing::info!(machine = name, "Machine removed.");
        Ok(())
    }

    /// The machines and snapshots whose disks are backed by this image.
    pub async fn image_in_use(&self, digest: &str) -> Result<Vec<String>, Error> {
        let mut users: Vec<String> = self
            .list()
            .await?
            .into_iter()
            .filter(|m| m.spec.image_digest == digest)
            .map(|m| m.name)
            .collect();
        users.extend(
            self.snapshots()
                .await?
                .into_iter()
                .filter(|s| s.spec.image_digest == digest)
                .map(|s| format!("snapshot {}", s.name)),
        );
        Ok(users)
    }

    /// A connected agent client for a running machine.
    pub async fn agent(&self, name: &str) -> Result<Arc<AgentClient>, Error> {
        let rec = self.get(name).await?;
        if rec.status.state != State::Running {
            return Err(Error::NotRunning { name: name.to_owned(), state: rec.status.state.as_str() });
        }
        if let Some(client) = lock(&self.inner.agents).get(name).filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let files = VmFiles::in_dir(&self.dir(name));
        let deadline = Duration::from_secs(10);
        let backend = rec.spec.backend;
        let (client, _) = tokio::task::spawn_blocking(move || connect_agent(&files, backend, deadline))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let client = Arc::new(client.with_timeout(hearth_agent::client::DEFAULT_TIMEOUT));
        lock(&self.inner.agents).insert(name.to_owned(), client.clone());
        Ok(client)
    }

    fn forget_agent(&self, name: &str) {
        lock(&self.inner.agents).remove(name);
    }

    /// Reconciles one machine soon, without waiting for the loop.
    fn kick(&self, name: &str) {
        let this = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move { this.reconcile(&name).await });
    }

    /// Learns whether KVM really works by booting the guest payload under it
    /// with a deadline (nested KVM is often present but broken), on QEMU, or
    /// on Firecracker where QEMU is not installed. The answer is cached per
    /// host boot, kernel and VMM, so it is paid once.
    pub async fn probe_kvm(&self) {
        let host = self.host();
        if host.kvm.usable.is_some() {
            return;
        }
        let Some(backend) = probe::kvm_probe_backend(&host) else { return };
        let result = self.kvm_boot_probe(backend).await;
        let mut host = lock(&self.inner.host);
        match result {
            Ok(detail) => {
                host.kvm.usable = Some(true);
                host.kvm.detail = detail;
            }
            Err(detail) => {
                host.kvm.usable = Some(false);
                host.kvm.detail = detail;
            }
        }
        tracing::info!(usable = ?host.kvm.usable, detail = host.kvm.detail, "KVM probe finished.");
    }

    /// Boots the test guest on `backend` (qemu-kvm or Firecracker, both KVM).
    async fn kvm_boot_probe(&self, backend: Backend) -> Result<String, String> {
        let spec_kernel = Spec {
            image: String::new(),
            image_digest: String::new(),
            backend,
            cpus: 1,
            memory_mib: 256,
            entrypoint: vec![],
            env: vec![],
            kernel: None,
            auto_remove: true,
            nics: vec![],
            ports: vec![],
            disk_mib: None,
        };
        let (kernel, initrd) = self
            .payload(&spec_kernel)
            .await
            .map_err(|e| format!("could not prepare a test guest: {}", crate::chain(&e)))?;
        let host = self.host();
        let vmm = match backend {
            Backend::Firecracker => host.firecracker.as_ref(),
            Backend::QemuKvm | Backend::QemuTcg => host.qemu.as_ref(),
        }
        .map(|tool| format!("{}|{}", tool.path.display(), tool.version.as_deref().unwrap_or_default()))
        .unwrap_or_default();
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let key = format!(
            "{:016x}",
            fnv(&format!("{}|{}|{backend}|{vmm}|{}", kernel.display(), initrd.display(), boot_id.trim()))
        );
        let cached = self.inner.cache_dir.join(format!("kvm-probe-{key}.json"));
        if let Ok(text) = std::fs::read_to_string(&cached)
            && let Ok((ok, detail)) = serde_json::from_str::<(bool, String)>(&text)
        {
            return if ok { Ok(detail) } else { Err(detail) };
        }
        let kernel = self
            .kernel_for(backend, kernel)
            .await
            .map_err(|e| format!("could not prepare the test guest's kernel: {}", crate::chain(&e)))?;
        // Where the probe fails, what guests do instead.
        let fallback = if host.qemu.is_some() {
            "guests use software emulation"
        } else {
            "and without QEMU there is no software emulation to fall back on: install the qemu-system-x86 \
             package to run machines without KVM"
        };
        let firecracker = self.firecracker_binary();
        let dir = self.inner.cache_dir.join(format!("kvm-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("could not make a probe directory: {e}"))?;
        let config = VmConfig {
            name: format!("kvm-probe-{}", std::process::id()),
            dir: dir.clone(),
            kernel,
            initrd,
            cmdline: kernel_cmdline(backend, "hearth.hostname=kvm-probe"),
            disk: None,
            cpus: 1,
            memory_mib: 256,
            nics: vec![],
        };
        let name = config.name.clone();
        let deadline = Duration::from_secs(20);
        let outcome = blocking(move || {
            let started = Instant::now();
            if let Err(e) = vmm::launch(backend, &firecracker, &config) {
                return Ok(Err(format!("{backend} could not start a KVM guest ({}); {fallback}", crate::chain(&e))));
            }
            let files = VmFiles::in_dir(&config.dir);
            let pid = vmm::running_pid(&files, &name);
            let answer = connect_agent(&files, backend, deadline);
            if let Some(pid) = pid {
                vmm::signal(pid, Signal::SIGKILL);
            }
            Ok(match answer {
                Ok(_) => Ok(format!(
                    "a test guest booted under KVM on {backend} in {:.1}s",
                    started.elapsed().as_secs_f64()
                )),
                Err(_) => Err(format!(
                    "/dev/kvm is present, but a test guest did not boot under KVM on {backend} within {}s (nested KVM is often broken); {fallback}. The test guest's console said: {}",
                    deadline.as_secs(),
                    console_tail(&files.console, 2)
                )),
            })
        })
        .await
        .unwrap_or_else(|e| Err(crate::chain(&e)));
        let _ = std::fs::remove_dir_all(&dir);
        let record = match &outcome {
            Ok(d) => (true, d.clone()),
            Err(d) => (false, d.clone()),
        };
        if let Ok(text) = serde_json::to_string(&record) {
            let _ = std::fs::write(&cached, text);
        }
        outcome
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

    /// At start-up: running VMs whose records say so are adopted; records
    /// that say running with no VM behind them are marked failed.
    async fn adopt_all(&self) -> Result<u64, Error> {
        let revision = self.inner.store.revision().await?;
        for rec in self.list().await? {
            let files = VmFiles::in_dir(&self.dir(&rec.name));
            let alive = vmm::running_pid(&files, &rec.name);
            match (rec.status.state, alive) {
                (State::Running, Some(pid)) => {
                    tracing::info!(machine = rec.name, pid, "Adopted a running machine.");
                }
                (State::Starting | State::Stopping, Some(pid)) => {
                    tracing::info!(machine = rec.name, pid, "Adopting a machine caught mid-transition.");
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

    async fn check_liveness(&self) {
        let Ok(records) = self.list().await else { return };
        for rec in records {
            if !matches!(rec.status.state, State::Running) || self.is_busy(&rec.name) {
                continue;
            }
            let files = VmFiles::in_dir(&self.dir(&rec.name));
            if vmm::running_pid(&files, &rec.name).is_some() {
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

    fn is_busy(&self, name: &str) -> bool {
        lock(&self.inner.busy).contains(name)
    }

    /// Brings one machine towards its desired state.
    async fn reconcile(&self, name: &str) {
        let guard = self.machine_lock(name);
        let _held = guard.lock().await;
        let rec = match self.find(name).await {
            Ok(Some((rec, _))) => rec,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(machine = name, error = %crate::chain(&error), "Cannot read machine record.");
                return;
            }
        };
        if self.is_busy(name) {
            return;
        }
        match (rec.desired, rec.status.state) {
            (Desired::Running, State::Created | State::Starting) => self.spawn_task(name, Task::Boot),
            (Desired::Stopped, State::Running | State::Starting | State::Stopping) => {
                self.spawn_task(name, Task::Stop)
            }
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

    async fn phase(&self, name: &str, phase: &str) -> Result<(), Error> {
        tracing::debug!(machine = name, phase, "Machine phase.");
        self.set_status(name, |s| {
            s.state = State::Starting;
            s.phase = Some(phase.to_owned());
            s.reason = None;
        })
        .await?
        .map(|_| ())
        .ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    async fn boot(&self, name: &str) -> Result<(), Error> {
        let rec = self.get(name).await?;
        let dir = self.dir(name);
        let files = VmFiles::in_dir(&dir);
        if let Some(pid) = vmm::running_pid(&files, name) {
            // Already up (e.g. adopted): just make sure the agent answers.
            return self.await_agent(name, &rec, pid, Instant::now()).await;
        }
        self.phase(name, "preparing the kernel and initramfs").await?;
        let (kernel, initrd) = self.payload(&rec.spec).await?;
        let backend = rec.spec.backend;
        let kernel = self.kernel_for(backend, kernel).await?;
        self.phase(name, "preparing the disk").await?;
        let images = self.inner.images.clone();
        let digest = rec.spec.image_digest.clone();
        let disk = dir.join(disk_file(backend));
        let disk2 = disk.clone();
        let dir2 = dir.clone();
        let disk_bytes = rec.spec.disk_mib.map(|mib| mib * MIB);
        blocking(move || -> Result<(), Error> {
            std::fs::create_dir_all(&dir2).map_err(|e| Error::io(&dir2, e))?;
            // An existing disk is the machine's own (stop and start keep
            // it), already at its size.
            if disk2.exists() {
                return Ok(());
            }
            let image = images.get(&digest)?.ok_or_else(|| Error::ImageNotFound(digest.clone()))?;
            // Only larger: the image's ext4 must fit, and at its own size
            // the overlay takes the base's size by itself.
            let size = disk_bytes.filter(|&bytes| bytes > image.size_bytes);
            match backend {
                Backend::Firecracker => {
                    vmm::firecracker::raw_disk(&image.rootfs, &disk2, size).map_err(Error::from)
                }
                Backend::QemuKvm | Backend::QemuTcg => overlay(&image.rootfs, &disk2, size),
            }
        })
        .await?;
        if !rec.spec.nics.is_empty() {
            self.phase(name, "connecting its network interfaces").await?;
            for nic in &rec.spec.nics {
                self.inner.networks.prepare(nic).await?;
            }
        }
        let mut cmdline = kernel_cmdline(backend, &format!("hearth.root=/dev/vda hearth.hostname={name}"));
        cmdline.push_str(&self.inner.networks.guest_cmdline(
            name,
            &rec.spec.nics,
            &self.inner.networks.subnets().await?,
        ));
        if !rec.spec.entrypoint.is_empty() {
            cmdline.push_str(" hearth.cmd=");
            cmdline.push_str(&hearth_agent::cmdline::encode_cmd(&rec.spec.entrypoint));
        }
        let config = VmConfig {
            name: name.to_owned(),
            dir: dir.clone(),
            kernel,
            initrd,
            cmdline,
            disk: Some(disk),
            cpus: rec.spec.cpus,
            memory_mib: rec.spec.memory_mib,
            nics: rec.spec.nics.iter().map(|n| (n.tap.clone(), n.mac.clone())).collect(),
        };
        self.phase(name, &format!("starting the VM ({})", rec.spec.backend)).await?;
        let launched = Instant::now();
        let firecracker = self.firecracker_binary();
        blocking(move || vmm::launch(backend, &firecracker, &config).map_err(Error::from)).await?;
        let pid = vmm::running_pid(&files, name).ok_or_else(|| {
            Error::Vmm(vmm::Error::Start {
                vmm: vmm_name(backend),
                message: "it exited right after starting; see `hearth machine logs`".into(),
            })
        })?;
        self.set_status(name, |s| s.pid = Some(pid)).await?;
        self.phase(name, "booting the kernel").await?;
        self.await_agent(name, &rec, pid, launched).await
    }

    async fn await_agent(
        &self,
        name: &str,
        rec: &MachineRecord,
        pid: u32,
        launched: Instant,
    ) -> Result<(), Error> {
        let files = VmFiles::in_dir(&self.dir(name));
        let backend = rec.spec.backend;
        let deadline = boot_deadline(backend);
        let vm_name = name.to_owned();
        let connected = blocking(move || {
            // Give up early if the VM process dies while we wait.
            let started = Instant::now();
            loop {
                let left = deadline.saturating_sub(started.elapsed());
                match connect_agent(&files, backend, left.min(Duration::from_secs(5))) {
                    Ok(found) => return Ok(found),
                    Err(_) if !vmm::is_vm_process(pid, &vm_name) => {
                        return Err(Error::BootFailed(format!(
                            "the VM process exited during boot; the console says: {}",
                            console_tail(&files.console, 3)
                        )));
                    }
                    Err(_) if started.elapsed() >= deadline => {
                        return Err(Error::BootFailed(format!(
                            "the guest agent did not answer within {}s; the console says: {}",
                            deadline.as_secs(),
                            console_tail(&files.console, 3)
                        )));
                    }
                    Err(_) => continue,
                }
            }
        })
        .await;
        let (client, hello) = match connected {
            Ok(found) => found,
            Err(error) => {
                kill_now(pid, name).await;
                return Err(error);
            }
        };
        let boot_ms = launched.elapsed().as_millis() as u64;
        lock(&self.inner.agents)
            .insert(name.to_owned(), Arc::new(client.with_timeout(hearth_agent::client::DEFAULT_TIMEOUT)));
        tracing::info!(machine = name, pid, boot_ms, backend = %rec.spec.backend, "Machine is running.");
        self.set_status(name, |s| {
            s.state = State::Running;
            s.phase = None;
            s.reason = None;
            s.pid = Some(pid);
            s.boot_ms = Some(boot_ms);
            s.kernel = Some(hello.kernel.clone());
            s.started_at = Some(now_unix());
        })
        .await?;
        Ok(())
    }

    async fn shut_down(&self, name: &str) -> Result<(), Error> {
        let files = VmFiles::in_dir(&self.dir(name));
        // A record gone meanwhile: its VM is stopped the QEMU way, which
        // ends a Firecracker too, by SIGKILL after the grace period.
        let backend = self.find(name).await?.map_or(Backend::QemuTcg, |(rec, _)| rec.spec.backend);
        if let Some(pid) = vmm::running_pid(&files, name) {
            self.set_status(name, |s| {
                s.state = State::Stopping;
                s.phase = Some("asking the guest to power off".into());
            })
            .await?;
            let agent = lock(&self.inner.agents).get(name).cloned();
            let vm = name.to_owned();
            blocking(move || {
                // Firecracker ends when its guest restarts, and ignores a
                // power-off; QEMU runs with -no-reboot, so either ends it.
                let restart = backend == Backend::Firecracker;
                let asked = match agent {
                    Some(agent) => agent.shutdown(restart).is_ok(),
                    None => connect_agent(&files, backend, Duration::from_secs(3))
                        .is_ok_and(|(agent, _)| agent.shutdown(restart).is_ok()),
                };
                // An agent that does not answer still restarts the guest
                // cleanly on Ctrl-Alt-Del, which Firecracker can press.
                let asked = asked
                    || (backend == Backend::Firecracker
                        && vmm::firecracker::ctrl_alt_del(
                            &vmm::firecracker::Api::new(&files.control).with_timeout(Duration::from_secs(5)),
                        )
                        .is_ok());
                let grace = if asked { SHUTDOWN_GRACE } else { Duration::ZERO };
                let started = Instant::now();
                while vmm::is_vm_process(pid, &vm) && started.elapsed() < grace {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok::<(), Error>(())
            })
            .await?;
            if vmm::is_vm_process(pid, name) {
                tracing::warn!(machine = name, "The guest did not power off in time; stopping its VM.");
                kill_now(pid, name).await;
            }
        }
        self.forget_agent(name);
        self.set_status(name, |s| {
            s.state = State::Stopped;
            s.phase = None;
            s.pid = None;
            s.reason = None;
        })
        .await?;
        tracing::info!(machine = name, "Machine stopped.");
        Ok(())
    }

    /// The kernel and initramfs for a spec, preparing them on first use.
    async fn payload(&self, spec: &Spec) -> Result<(PathBuf, PathBuf), Error> {
        let mut cached = self.inner.payload.lock().await;
        let agent = self.agent_path()?;
        let agent_mtime = std::fs::metadata(&agent).and_then(|m| m.modified()).ok();
        // Resolving the kernel asks apt (hundreds of milliseconds): do it
        // once per daemon, and again only if the agent binary changes.
        let fresh = cached
            .as_ref()
            .is_some_and(|p| p.agent == agent && p.agent_mtime == agent_mtime && p.initrd.is_file());
        if !fresh {
            let cache = self.inner.cache_dir.clone();
            let agent_file = agent.clone();
            let (debian, initrd) = blocking(move || {
                let debian = kernel::debian_cloud_kernel(&cache.join("kernels"))?;
                let initrd = guest::initramfs(&cache.join("initramfs"), &debian, &agent_file)?;
                Ok((debian, initrd))
            })
            .await?;
            *cached = Some(Payload { debian, initrd, agent, agent_mtime });
        }
        let payload = cached.as_ref().ok_or_else(|| Error::Internal("payload vanished".into()))?;
        let vmlinuz = match &spec.kernel {
            Some(path) => PathBuf::from(path),
            None => payload.debian.vmlinuz.clone(),
        };
        Ok((vmlinuz, payload.initrd.clone()))
    }

    /// The kernel as `backend` boots it: Firecracker needs an uncompressed
    /// ELF, taken out of a bzImage once and cached next to the kernels.
    async fn kernel_for(&self, backend: Backend, kernel: PathBuf) -> Result<PathBuf, Error> {
        if backend != Backend::Firecracker {
            return Ok(kernel);
        }
        let cache = self.inner.cache_dir.join("kernels");
        blocking(move || kernel::vmlinux(&cache, &kernel).map_err(Error::from)).await
    }

    /// The firecracker binary the host probe found (else `firecracker` on PATH).
    fn firecracker_binary(&self) -> PathBuf {
        self.host().firecracker.map_or_else(|| PathBuf::from(vmm::firecracker::BINARY), |tool| tool.path)
    }

    fn agent_path(&self) -> Result<PathBuf, Error> {
        if let Some(path) = &self.inner.agent {
            return Ok(path.clone());
        }
        guest::find_agent().ok_or(Error::AgentMissing)
    }
}

/// Debian's kernel and the initramfs built for it with the current agent.
#[derive(Debug)]
struct Payload {
    debian: Kernel,
    initrd: PathBuf,
    agent: PathBuf,
    agent_mtime: Option<std::time::SystemTime>,
}

#[derive(Debug, Clone, Copy)]
enum Task {
    Boot,
    Stop,
}

/// The kernel command line every guest boots with on `backend`, then `args`.
fn kernel_cmdline(backend: Backend, args: &str) -> String {
    let mut cmdline = format!("console=ttyS0 quiet panic=-1 {args}");
    if backend == Backend::Firecracker {
        cmdline.push(' ');
        cmdline.push_str(&vmm::firecracker::kernel_args());
    }
    cmdline
}

/// The root disk's file in the machine directory: a qcow2 overlay for
/// QEMU, a raw copy for Firecracker.
fn disk_file(backend: Backend) -> &'static str {
    match backend {
        Backend::Firecracker => vmm::firecracker::DISK,
        Backend::QemuKvm | Backend::QemuTcg => "disk.qcow2",
    }
}

fn vmm_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Firecracker => "firecracker",
        Backend::QemuKvm | Backend::QemuTcg => "qemu",
    }
}

/// Connects to the agent (QEMU's virtio-serial socket, or Firecracker's
/// vsock socket with its handshake) and exchanges hellos within `deadline`.
fn connect_agent(
    files: &VmFiles,
    backend: Backend,
    deadline: Duration,
) -> Result<(AgentClient, HelloInfo), Error> {
    let started = Instant::now();
    let socket = match backend {
        Backend::Firecracker => &files.vsock,
        Backend::QemuKvm | Backend::QemuTcg => &files.agent,
    };
    let connect = || match backend {
        Backend::Firecracker => AgentClient::connect_firecracker(
            socket,
            vmm::firecracker::DEFAULT_VSOCK_PORT,
            Duration::from_secs(1),
        ),
        Backend::QemuKvm | Backend::QemuTcg => AgentClient::connect_unix(socket),
    };
    loop {
        let attempt = connect().map_err(|e| Error::io(socket, e)).and_then(|c| {
            let c = c.with_timeout(Duration::from_millis(1000));
            let hello = c.hello().map_err(Error::Agent)?;
            Ok((c, hello))
        });
        match attempt {
            Ok(found) => return Ok(found),
            Err(error) if started.elapsed() >= deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Makes a copy-on-write disk on top of an image's root file system, of
/// `bytes` if given (the guest grows its file system to fill it), else of
/// the image's size.
fn overlay(base: &Path, disk: &Path, bytes: Option<u64>) -> Result<(), Error> {
    let mut command = std::process::Command::new("qemu-img");
    command.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(base).arg(disk);
    if let Some(bytes) = bytes {
        command.arg(bytes.to_string());
    }
    let out = command.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Vmm(vmm::Error::Missing("qemu-img")),
        _ => Error::io(disk, e),
    })?;
    if !out.status.success() {
        return Err(Error::Vmm(vmm::Error::Start {
            vmm: "qemu-img",
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }));
    }
    Ok(())
}

/// SIGKILLs the VM and waits (briefly) for it to be gone.
async fn kill_now(pid: u32, name: &str) {
    vmm::signal(pid, Signal::SIGKILL);
    for _ in 0..100 {
        if !vmm::is_vm_process(pid, name) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// The last `lines` non-empty lines of the console log, joined.
fn console_tail(console: &Path, lines: usize) -> String {
    let text = std::fs::read(console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let tail: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = &tail[tail.len().saturating_sub(lines)..];
    if tail.is_empty() { "(nothing)".to_owned() } else { tail.join(" | ") }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(e.to_string()))?
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
