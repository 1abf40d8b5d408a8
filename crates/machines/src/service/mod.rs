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
//!
//! Hosts may share one store: each record names the host that runs the
//! machine (its VM and its disk), and a service reconciles only its own
//! host's records. The API of any host may change a record's desired state
//! or remove it; the owning host's service acts on that. What needs the VM
//! itself (exec, files, logs, snapshots) is refused with
//! [`Error::Elsewhere`] on the other hosts.
//!
//! The rooms: this file holds the handle, its options and the public API
//! (create, start, stop, remove, the agent); `reconcile` the loop; `boot`
//! starting and stopping a VM process; `payload` what goes into the guest
//! (kernel, initramfs, command line, disk); `kvm_probe` the KVM boot probe;
//! `snapshot` pausing to disk and resuming; `hosts` which host a machine
//! belongs to, adopting records from before hosts, and lost hosts.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use hearth_agent::client::AgentClient;
use hearth_store::{Compare, Op, Store, Txn};
use tokio::sync::Mutex;

use crate::Error;
use crate::image::ImageStore;
use crate::probe::{self, HostReport};
use crate::record::{self, Desired, MachineRecord, RestartPolicy, Spec, State, Status, now_unix};
use crate::vmm::{self, Backend, VmFiles};

mod boot;
mod config;
mod hosts;
mod kvm_probe;
mod payload;
mod reconcile;
mod sleep;
mod snapshot;
pub mod triggers;

use boot::{connect_agent, kill_now};
pub use config::{ConfigFeed, ConfigPayload};
pub use hosts::{Load, mark_host_lost};
use hosts::{find_record, update_record};
use payload::{Payload, disk_file};

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
    /// This daemon's host name: the service runs the machines whose
    /// records name it, and new machines are recorded under it unless
    /// asked otherwise.
    pub host: String,
}

/// What `create` needs. `Default` gives 1 CPU, 512 MiB, started, restart
/// `no`, and the image's command, environment, directory and user.
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
    /// `KEY=VALUE`, over the image's environment.
    pub env: Vec<String>,
    /// Overrides the image's working directory.
    pub workdir: Option<String>,
    /// Overrides the image's user (a name or `uid[:gid]` of the guest).
    pub user: Option<String>,
    /// When the agent starts the main process again.
    pub restart: RestartPolicy,
    /// What the agent does after the machine's config changed: `SIGHUP`
    /// (any signal name) to the main process, or a command.
    pub on_config_change: Option<String>,
    /// The host to run it on (its service boots it, and keeps its disk);
    /// `None`: this one.
    pub host: Option<String>,
    /// Put it to sleep after this long without a connection (whole
    /// seconds, at least one); never when `None`.
    pub sleep_after: Option<Duration>,
}

impl Default for CreateRequest {
    fn default() -> Self {
        Self {
            name: String::new(),
            image: String::new(),
            backend: None,
            cpus: 1,
            memory_mib: 512,
            command: None,
            kernel: None,
            auto_remove: false,
            start: true,
            networks: Vec::new(),
            no_network: false,
            ports: Vec::new(),
            disk_mib: None,
            env: Vec::new(),
            workdir: None,
            user: None,
            restart: RestartPolicy::No,
            on_config_change: None,
            host: None,
            sleep_after: None,
        }
    }
}

/// `env` with each of `overrides` replacing the variable of the same name
/// (or added), in order: `KEY=VALUE` pairs, as images and `--env` give them.
fn merge_env(env: &[String], overrides: &[String]) -> Vec<String> {
    let key = |pair: &str| pair.split_once('=').map_or(pair, |(k, _)| k).to_owned();
    let mut merged: Vec<String> = env.to_vec();
    for pair in overrides {
        match merged.iter_mut().find(|old| key(old) == key(pair)) {
            Some(old) => old.clone_from(pair),
            None => merged.push(pair.clone()),
        }
    }
    merged
}

/// A cheap-to-clone handle to the machines service.
#[derive(Clone)]
pub struct Machines {
    inner: Arc<Inner>,
    /// Where this handle's writes go when not the store
    /// ([`Machines::writing_through`]).
    writes: Option<Writes>,
}

/// A leader's way to write: the store fenced by its term, and the networks
/// service writing address claims through the same.
#[derive(Clone)]
struct Writes {
    store: Arc<dyn Store>,
    networks: hearth_net::Networks,
}

struct Inner {
    store: Arc<dyn Store>,
    /// This daemon's host (see [`Options::host`]).
    host_name: String,
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
    /// One connection attempt to a machine's agent at a time: its VMM
    /// serves one connection, and a second caller waits for the first's.
    dialing: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Machines whose logs a background task is rotating.
    rotating: StdMutex<HashSet<String>>,
    /// Machines whose agent a background task is connecting to.
    connecting: StdMutex<HashSet<String>>,
    /// The boot payload, prepared once (kernel download and initramfs
    /// assembly happen one at a time, under this lock).
    payload: Mutex<Option<Payload>>,
    /// Where machines' configs come from, once the daemon gave one.
    config_feed: StdMutex<Option<Arc<dyn ConfigFeed>>>,
    /// One config push to a machine at a time, in the order asked.
    config_locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Machines with a config push waiting for its turn.
    config_queued: StdMutex<HashSet<String>>,
    /// The last config revision each machine's agent took.
    config_delivered: StdMutex<HashMap<String, u64>>,
    /// The NICs of this host's machines as last read, to unplug their taps
    /// once a machine's record is removed through another host.
    nics: StdMutex<HashMap<String, Vec<hearth_net::record::Nic>>>,
    /// Callers waiting for a machine to wake, one at a time per machine.
    waking_callers: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// What wakes this host's sleeping machines when a connection comes;
    /// the networks service holds it weakly.
    waking: Arc<dyn hearth_net::activity::Waker>,
}

impl std::fmt::Debug for Machines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machines")
            .field("host", &self.inner.host_name)
            .field("dir", &self.inner.machines_dir)
            .finish_non_exhaustive()
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
        let inner = Arc::new_cyclic(|weak| Inner {
            store,
            host_name: options.host,
            networks,
            machines_dir,
            cache_dir: options.cache_dir,
            images,
            agent: options.agent,
            host: StdMutex::new(host),
            locks: StdMutex::default(),
            busy: StdMutex::default(),
            agents: StdMutex::default(),
            dialing: StdMutex::default(),
            rotating: StdMutex::default(),
            connecting: StdMutex::default(),
            payload: Mutex::new(None),
            config_feed: StdMutex::default(),
            config_locks: StdMutex::default(),
            config_queued: StdMutex::default(),
            config_delivered: StdMutex::default(),
            nics: StdMutex::default(),
            waking_callers: StdMutex::default(),
            waking: Arc::new(sleep::Waking(weak.clone())),
        });
        inner.networks.activity().set_waker(Arc::downgrade(&inner.waking));
        Ok(Self { inner, writes: None })
    }

    /// A handle whose [`create`](Self::create), [`start`](Self::start),
    /// [`stop`](Self::stop) and [`remove`](Self::remove) write every
    /// record (the machine's, its addresses, its faults) through `store`:
    /// for a leader, the store fenced by its term, so that a leader deposed
    /// without knowing it makes, starts and removes no machine. Reads, and
    /// what the service does for its own host's machines afterwards (their
    /// VMs and status), are the service's own.
    pub fn writing_through(&self, store: Arc<dyn Store>) -> Machines {
        let networks = self.inner.networks.writing_through(store.clone());
        Machines { inner: self.inner.clone(), writes: Some(Writes { store, networks }) }
    }

    /// This service's own handle, writing through the store: for the
    /// tasks that act on this host's machines, which are no leader's.
    fn own(&self) -> Machines {
        Machines { inner: self.inner.clone(), writes: None }
    }

    /// The store this handle's record writes go through.
    fn writes(&self) -> &dyn Store {
        self.writes.as_ref().map_or(&*self.inner.store, |w| &*w.store)
    }

    /// The networks service, writing address claims as this handle writes.
    fn addresses(&self) -> &hearth_net::Networks {
        self.writes.as_ref().map_or(&self.inner.networks, |w| &w.networks)
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

    /// Each machine whose VMM process is running, with its pid (for the
    /// daemon's metrics: CPU and memory read from `/proc`). Reads the
    /// machine directories' `vm.pid` files.
    pub fn vmm_pids(&self) -> Vec<(String, u32)> {
        let Ok(entries) = std::fs::read_dir(&self.inner.machines_dir) else { return Vec::new() };
        let mut pids: Vec<(String, u32)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let pid = vmm::running_pid(&VmFiles::in_dir(&entry.path()), &name)?;
                Some((name, pid))
            })
            .collect();
        pids.sort();
        pids
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.inner.machines_dir.join(name)
    }

    /// The machine's serial console log.
    pub fn console_log(&self, name: &str) -> PathBuf {
        VmFiles::in_dir(&self.dir(name)).console
    }

    /// The machine's main process's output (QEMU), each line `out| ` or `err| `.
    pub fn main_log(&self, name: &str) -> PathBuf {
        VmFiles::in_dir(&self.dir(name)).main_log
    }

    fn machine_lock(&self, name: &str) -> Arc<Mutex<()>> {
        lock(&self.inner.locks).entry(name.to_owned()).or_default().clone()
    }

    pub async fn get(&self, name: &str) -> Result<MachineRecord, Error> {
        self.find(name).await?.map(|(rec, _)| rec).ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    async fn find(&self, name: &str) -> Result<Option<(MachineRecord, u64)>, Error> {
        find_record(&*self.inner.store, name).await
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
        change: impl FnMut(&mut MachineRecord) -> bool,
    ) -> Result<Option<MachineRecord>, Error> {
        update_record(self.writes(), name, change).await
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
        let host = match req.host {
            Some(host) => {
                record::validate_host(&host).map_err(Error::Invalid)?;
                host
            }
            None => self.inner.host_name.clone(),
        };
        if req.memory_mib < MIN_MEMORY_MIB {
            return Err(Error::Invalid(format!(
                "{} MiB of memory is too little to boot Linux: give at least {MIN_MEMORY_MIB} MiB (--memory {MIN_MEMORY_MIB})",
                req.memory_mib
            )));
        }
        if let Some(after) = req.sleep_after
            && after < Duration::from_secs(1)
        {
            return Err(Error::Invalid(format!(
                "a machine cannot sleep after {after:?} of idleness: give at least one second (--sleep-after 1s)"
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
        for pair in &req.env {
            if pair.split_once('=').is_none_or(|(key, _)| key.is_empty()) {
                return Err(Error::Invalid(format!(
                    "the environment variable {pair:?} is not KEY=VALUE: give it as --env KEY=VALUE"
                )));
            }
        }
        if req.user.as_deref().is_some_and(|u| u.is_empty() || u.contains(char::is_whitespace)) {
            return Err(Error::Invalid(
                "the user is empty or has spaces: give a user name or uid[:gid] of the guest".into(),
            ));
        }
        if let Some(action) = &req.on_config_change {
            record::validate_on_config_change(action)
                .map_err(|why| Error::Invalid(format!("--on-config-change: {why}")))?;
        }
        if req.workdir.as_deref().is_some_and(|w| !w.starts_with('/')) {
            return Err(Error::Invalid(format!(
                "the working directory {:?} is not an absolute path: give one such as /srv",
                req.workdir.as_deref().unwrap_or_default()
            )));
        }
        let env = merge_env(&image.config.env, &req.env);
        let workdir = req.workdir.or_else(|| image.config.working_dir.clone());
        let user = req.user.or_else(|| image.config.user.clone());
        let main = main_spec(&entrypoint, &env, workdir.as_deref(), user.as_deref(), req.restart);
        if let Some(main) = &main {
            let encoded = hearth_agent::cmdline::encode_main(main).len();
            if encoded > hearth_agent::cmdline::MAX_MAIN {
                return Err(Error::Invalid(format!(
                    "the command, environment, working directory and user take {encoded} bytes on the guest's \
                     kernel command line, over the {} hearth allows: shorten them, or put the environment in a \
                     file in the image and source it from the command",
                    hearth_agent::cmdline::MAX_MAIN
                )));
            }
        }
        let rec = MachineRecord {
            name: req.name.clone(),
            host: Some(host),
            spec: Spec {
                image: req.image,
                image_digest: image.digest.clone(),
                backend,
                cpus: req.cpus,
                memory_mib: req.memory_mib,
                entrypoint,
                env,
                workdir,
                user,
                restart: req.restart,
                kernel: req.kernel.map(|k| k.display().to_string()),
                auto_remove: req.auto_remove,
                nics: Vec::new(),
                ports: req.ports.clone(),
                disk_mib: Some(disk_mib),
                on_config_change: req.on_config_change,
                sleep_after_secs: req.sleep_after.map(|d| d.as_secs()),
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
        if !self.writes().txn(txn).await?.succeeded {
            for nic in &rec.spec.nics {
                let _ = self.addresses().release(nic).await;
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
            match self.addresses().allocate(network, machine, *ip).await {
                Ok(nic) => nics.push(nic),
                Err(error) => {
                    for nic in &nics {
                        let _ = self.addresses().release(nic).await;
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
    /// Without `force` a running machine is refused. A machine of another
    /// host loses its record here, and that host's service stops its VM
    /// and deletes its directory when it sees the record gone.
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), Error> {
        record::validate_name(name).map_err(Error::Invalid)?;
        let guard = self.machine_lock(name);
        let _held = guard.lock().await;
        let found = self.find(name).await?;
        if let Some((rec, _)) = &found
            && !self.runs_here(rec)
        {
            return self.remove_elsewhere(rec, force).await;
        }
        let dir = self.dir(name);
        if found.is_none() && !(force && dir.exists()) {
            return Err(Error::NotFound(name.to_owned()));
        }
        if self.writes.is_some() {
            // A leader's removal asks its fence before the VM goes: a
            // deposed one kills nothing. (The window between this question
            // and the record's delete, fenced too, is one round trip.)
            self.writes().txn(Txn::new().and_then(Op::Get { key: record::key(name) })).await?;
        }
        if !force
            && let Some((rec, _)) = &found
            && rec.status.state == State::Sleeping
        {
            return Err(Error::StillRunning { name: name.to_owned(), state: rec.status.state.as_str() });
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
        self.forget_config(name);
        self.inner.networks.activity().forget(name);
        lock(&self.inner.dialing).remove(name);
        lock(&self.inner.nics).remove(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        // A jailed Firecracker's cgroup is the one thing it leaves outside
        // the machine's directory (its chroot is inside).
        vmm::jailer::remove_cgroup(name);
        let nics = found.as_ref().map(|(r, _)| r.spec.nics.clone()).unwrap_or_default();
        self.addresses().forget(name, &nics).await?;
        if found.is_some() {
            let mut txn = Txn::new().and_then(Op::Delete { key: record::key(name) });
            for op in Self::forget_triggers(name) {
                txn = txn.and_then(op);
            }
            self.writes().txn(txn).await?;
        }
        tracing::info!(machine = name, "Machine removed.");
        Ok(())
    }

    /// Removes the record of a machine another host runs, with what of it
    /// is in the store (addresses, faults). Without `force`, only a
    /// machine whose record says it has no VM: its host's VM cannot be
    /// looked at from here.
    async fn remove_elsewhere(&self, rec: &MachineRecord, force: bool) -> Result<(), Error> {
        let state = rec.status.state;
        let no_vm = state.is_down() || state == State::Created;
        if !force && !no_vm {
            return Err(Error::StillRunning { name: rec.name.clone(), state: state.as_str() });
        }
        self.addresses().forget(&rec.name, &rec.spec.nics).await?;
        let mut txn = Txn::new().and_then(Op::Delete { key: record::key(&rec.name) });
        for op in Self::forget_triggers(&rec.name) {
            txn = txn.and_then(op);
        }
        self.writes().txn(txn).await?;
        tracing::info!(machine = rec.name, host = rec.host, "Removed the record of another host's machine.");
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
        let rec = self.get_here(name).await?;
        if rec.status.state != State::Running {
            return Err(Error::NotRunning { name: name.to_owned(), state: rec.status.state.as_str() });
        }
        if let Some(client) = self.open_agent(name) {
            return Ok(client);
        }
        let dial = lock(&self.inner.dialing).entry(name.to_owned()).or_default().clone();
        let _dialing = dial.lock().await;
        // Whoever dialled first may have connected meanwhile.
        if let Some(client) = self.open_agent(name) {
            return Ok(client);
        }
        let files = VmFiles::in_dir(&self.dir(name));
        let deadline = Duration::from_secs(10);
        let backend = rec.spec.backend;
        let (client, _) = tokio::task::spawn_blocking(move || connect_agent(&files, backend, deadline))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        self.follow_agent_events(name, &client);
        let client = Arc::new(client.with_timeout(hearth_agent::client::DEFAULT_TIMEOUT));
        lock(&self.inner.agents).insert(name.to_owned(), client.clone());
        // Still dialling: nobody else has this connection before its config.
        self.push_config_on_connect(name, &client).await;
        Ok(client)
    }

    fn open_agent(&self, name: &str) -> Option<Arc<AgentClient>> {
        lock(&self.inner.agents).get(name).filter(|c| !c.is_closed()).cloned()
    }

    fn forget_agent(&self, name: &str) {
        lock(&self.inner.agents).remove(name);
    }
}

/// What the agent is told to run, or `None` for a machine without a main
/// process.
pub(crate) fn main_spec(
    argv: &[String],
    env: &[String],
    workdir: Option<&str>,
    user: Option<&str>,
    restart: RestartPolicy,
) -> Option<hearth_agent::main_process::MainSpec> {
    (!argv.is_empty()).then(|| hearth_agent::main_process::MainSpec {
        argv: argv.to_vec(),
        env: env.to_vec(),
        workdir: workdir.map(str::to_owned),
        user: user.map(str::to_owned),
        restart,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(e.to_string()))?
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_replace_the_images_variables_and_add_new_ones() {
        let image = ["PATH=/usr/bin".to_owned(), "MODE=prod".to_owned()];
        let merged = merge_env(&image, &["MODE=dev".to_owned(), "FOO=a=b".to_owned()]);
        assert_eq!(merged, ["PATH=/usr/bin", "MODE=dev", "FOO=a=b"]);
    }
}
