//! The networks service: network records, address management, faults, and
//! the reconcile loop that makes the host match them.
//!
//! Everything on the host (bridges, taps' delays, the nftables ruleset, DNS
//! servers, port forwards) is *derived*: each pass computes the whole desired
//! host state from the store and applies it idempotently, so a restarted
//! daemon converges by running one pass.
//!
//! Machines are read from their records in the store (`machines/NAME`),
//! through the minimal [`MachineView`], so this crate does not depend on the
//! machines crate: subsystems meet in the store.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use hearth_store::{Compare, Follower, Op, Store, Txn};
use serde::Deserialize;
use tokio::sync::{Mutex, Notify, watch};

use crate::record::{self, FaultKind, FaultRecord, NetworkRecord, Nic, Subnet, now_unix};
use crate::{dns, firewall, forward, link, shaping};

/// Where machine records live: the machines crate's prefix, read here
/// through [`MachineView`] so that this crate does not depend on it.
const MACHINES: &str = "machines/";

/// Set to `netem` or `queue` to choose how delays are made instead of
/// probing the kernel at the first delay.
pub const DELAY_BACKEND_ENV: &str = "HEARTH_DELAY_BACKEND";

/// The network every machine joins unless told otherwise.
pub const DEFAULT_NETWORK: &str = "default";

/// Where default subnets are carved from: 10.200.0.0/24, 10.201.0.0/24, …
const AUTO_SUBNET_BASE: [u8; 2] = [10, 200];

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network {0:?} does not exist")]
    NotFound(String),
    #[error("a network named {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("subnet {subnet} overlaps network {other:?} ({other_subnet})")]
    Overlap { subnet: Subnet, other: String, other_subnet: Subnet },
    #[error("address {ip} is not in network {network:?} ({subnet})")]
    OutOfSubnet { ip: Ipv4Addr, network: String, subnet: Subnet },
    #[error("address {ip} on network {network:?} is taken by machine {holder:?}")]
    Taken { ip: Ipv4Addr, network: String, holder: String },
    #[error("network {0:?} has no free address left")]
    Full(String),
    #[error("network {network:?} still has machines: {machines}")]
    InUse { network: String, machines: String },
    #[error("machine {0:?} does not exist or has no network interface")]
    NoSuchMachine(String),
    #[error("fault {0:?} does not exist")]
    FaultNotFound(String),
    #[error("the record {0:?} is unreadable")]
    Corrupt(String, #[source] serde_json::Error),
    #[error(transparent)]
    Store(#[from] hearth_store::Error),
    #[error(transparent)]
    Link(#[from] link::Error),
}

/// How the service names and shapes things on the host.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prefix of every host interface and of the firewall tables, so that
    /// several daemons (tests) can share one host. At most 4 characters.
    pub prefix: String,
    /// Whether the default network masquerades to the outside.
    pub default_nat: bool,
    /// Networks need root (CAP_NET_ADMIN); without it machines run unplugged.
    pub enabled: bool,
    /// Create the `default` network at start.
    pub default_network: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { prefix: "h".into(), default_nat: true, enabled: true, default_network: true }
    }
}

/// What the service needs to know of a machine, read from its record.
#[derive(Debug, Clone, Deserialize)]
pub struct MachineView {
    pub name: String,
    pub spec: MachineSpecView,
    #[serde(default)]
    pub status: MachineStatusView,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MachineSpecView {
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MachineStatusView {
    #[serde(default)]
    pub state: String,
}

/// `-p HOSTPORT:GUESTPORT[/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
pub struct PortSpec {
    pub host: u16,
    pub guest: u16,
    pub udp: bool,
}

impl std::str::FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port mapping like 8080:80 or 5353:53/udp");
        let (ports, udp) = match s.split_once('/') {
            Some((p, "udp")) => (p, true),
            Some((p, "tcp")) => (p, false),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        let (host, guest) = ports.split_once(':').ok_or_else(bad)?;
        let host: u16 = host.parse().map_err(|_| bad())?;
        let guest: u16 = guest.parse().map_err(|_| bad())?;
        if host == 0 || guest == 0 {
            return Err(bad());
        }
        Ok(PortSpec { host, guest, udp })
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}{}", self.host, self.guest, if self.udp { "/udp" } else { "" })
    }
}

/// A cheap-to-clone handle to the networks service.
#[derive(Clone)]
pub struct Networks {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    options: Options,
    zone: dns::Zone,
    /// Wakes the reconcile loop.
    dirty: Notify,
    /// One host-apply at a time.
    applying: Mutex<()>,
    /// Delays on taps (netem, or the NFQUEUE delay line).
    shaper: Arc<StdMutex<shaping::Shaper>>,
    running: StdMutex<Running>,
}

/// Tasks serving the current desired state, with their stop switches.
#[derive(Default)]
struct Running {
    dns: HashMap<Ipv4Addr, watch::Sender<bool>>,
    forwards: HashMap<(String, PortSpec), (SocketAddr, watch::Sender<bool>)>,
    /// Why forwards could not start, by machine, for status.
    problems: BTreeMap<String, String>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks").field("prefix", &self.inner.options.prefix).finish_non_exhaustive()
    }
}

impl Networks {
    pub fn new(store: Arc<dyn Store>, options: Options) -> Self {
        let shaper = shaping::Shaper::new(link::Netns::Host, &table_name(&options.prefix));
        // Which way to delay is probed at the first delay, unless forced
        // (to test the delay line on a kernel that has netem, say).
        let shaper = match std::env::var(DELAY_BACKEND_ENV).ok().filter(|v| !v.is_empty()) {
            None => shaper,
            Some(value) => match value.parse() {
                Ok(backend) => shaper.with_backend(backend),
                Err(error) => {
                    tracing::warn!(error, "Ignoring {DELAY_BACKEND_ENV}; delays probe the kernel instead.");
                    shaper
                }
            },
        };
        Self {
            inner: Arc::new(Inner {
                store,
                options,
                zone: dns::Zone::new("hearth"),
                dirty: Notify::new(),
                applying: Mutex::new(()),
                shaper: Arc::new(StdMutex::new(shaper)),
                running: StdMutex::default(),
            }),
        }
    }

    /// Whether this daemon can make networks (it runs as root).
    pub fn enabled(&self) -> bool {
        self.inner.options.enabled
    }

    fn check_enabled(&self) -> Result<(), Error> {
        if self.inner.options.enabled {
            Ok(())
        } else {
            Err(Error::Invalid(
                "networks need root (CAP_NET_ADMIN): run `hearth serve` as root, or run machines with --network none".into(),
            ))
        }
    }

    fn bridge_name(&self, network: &str) -> String {
        link::iface_name(&format!("{}b-", self.inner.options.prefix), network)
    }

    fn tap_name(&self, machine: &str, network: &str) -> String {
        link::iface_name(&format!("{}t-", self.inner.options.prefix), &format!("{machine}-{network}"))
    }

    /// The firewall tables' name.
    fn table(&self) -> String {
        table_name(&self.inner.options.prefix)
    }

    pub async fn list(&self) -> Result<Vec<NetworkRecord>, Error> {
        let range = self.inner.store.range(record::NETWORKS).await?;
        range.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    pub async fn get(&self, name: &str) -> Result<NetworkRecord, Error> {
        let kv = self
            .inner
            .store
            .get(&record::network_key(name))
            .await?
            .ok_or_else(|| Error::NotFound(name.into()))?;
        decode(&kv.key, &kv.value)
    }

    /// Creates the default network if it does not exist.
    pub async fn ensure_default(&self) -> Result<(), Error> {
        match self.create(DEFAULT_NETWORK, None, self.inner.options.default_nat).await {
            Ok(_) | Err(Error::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates a network. Without a subnet, the first free /24 from
    /// 10.200.0.0 on is used, avoiding other networks and the host's routes.
    pub async fn create(
        &self,
        name: &str,
        subnet: Option<Subnet>,
        nat: bool,
    ) -> Result<NetworkRecord, Error> {
        self.check_enabled()?;
        record::validate_name(name).map_err(Error::Invalid)?;
        let existing = self.list().await?;
        if existing.iter().any(|n| n.name == name) {
            return Err(Error::AlreadyExists(name.into()));
        }
        // Routes through this daemon's own bridges are not conflicts: a
        // network being removed may still have its bridge for a moment.
        let host_routes = host_route_subnets(&format!("{}b-", self.inner.options.prefix));
        let subnet = match subnet {
            Some(subnet) => {
                if let Some(other) = existing.iter().find(|n| n.subnet.overlaps(&subnet)) {
                    return Err(Error::Overlap {
                        subnet,
                        other: other.name.clone(),
                        other_subnet: other.subnet,
                    });
                }
                if let Some(route) = host_routes.iter().find(|r| r.overlaps(&subnet) && r.prefix > 0) {
                    return Err(Error::Invalid(format!(
                        "subnet {subnet} overlaps the host's route to {route}; pick another, e.g. 10.250.0.0/24"
                    )));
                }
                subnet
            }
            None => (0..=55u8)
                .map(|i| Subnet {
                    network: Ipv4Addr::new(AUTO_SUBNET_BASE[0], AUTO_SUBNET_BASE[1] + i, 0, 0),
                    prefix: 24,
                })
                .find(|s| {
                    !existing.iter().any(|n| n.subnet.overlaps(s))
                        && !host_routes.iter().any(|r| r.prefix > 0 && r.overlaps(s))
                })
                .ok_or_else(|| {
                    Error::Invalid("no free 10.200-255.0.0/24 subnet is left; give --subnet".into())
                })?,
        };
        let rec = NetworkRecord {
            name: name.into(),
            subnet,
            bridge: self.bridge_name(name),
            nat,
            created_at: now_unix(),
        };
        let key = record::network_key(name);
        let value = serde_json::to_vec(&rec).map_err(|e| Error::Corrupt(key.clone(), e))?;
        let txn = Txn::new().when(Compare::missing(&key)).and_then(Op::Put { key, value, lease: None });
        if !self.inner.store.txn(txn).await?.succeeded {
            return Err(Error::AlreadyExists(name.into()));
        }
        self.inner.dirty.notify_one();
        Ok(rec)
    }

    /// The machines on a network, with their addresses, in address order.
    pub async fn members(&self, network: &str) -> Result<Vec<(String, Ipv4Addr)>, Error> {
        let prefix = format!("{}{network}/", record::IPAM);
        let used = self.inner.store.range(&prefix).await?;
        let mut members: Vec<(String, Ipv4Addr)> = used
            .kvs
            .iter()
            .filter_map(|kv| {
                let ip = kv.key.strip_prefix(&prefix)?.parse().ok()?;
                Some((String::from_utf8_lossy(&kv.value).into_owned(), ip))
            })
            .collect();
        members.sort_by_key(|(_, ip)| u32::from(*ip));
        Ok(members)
    }

    /// Removes a network that no machine uses.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        self.get(name).await?;
        let used = self.inner.store.range(&format!("{}{name}/", record::IPAM)).await?;
        if !used.kvs.is_empty() {
            let machines: Vec<String> =
                used.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect();
            return Err(Error::InUse { network: name.into(), machines: machines.join(", ") });
        }
        self.inner.store.delete(&record::network_key(name)).await?;
        self.inner.dirty.notify_one();
        Ok(())
    }

    /// Gives `machine` an address on `network`: `requested`, or the lowest
    /// free one. Recorded with compare-and-swap, so no two machines get one.
    pub async fn allocate(
        &self,
        network: &str,
        machine: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Nic, Error> {
        self.check_enabled()?;
        let net = self.get(network).await?;
        let nic = |ip| Nic {
            network: network.into(),
            ip,
            mac: record::mac_for(machine, network),
            tap: self.tap_name(machine, network),
        };
        if let Some(ip) = requested {
            if !net.subnet.contains(ip)
                || ip == net.subnet.gateway()
                || ip == net.subnet.broadcast()
                || ip == net.subnet.network
            {
                return Err(Error::OutOfSubnet { ip, network: network.into(), subnet: net.subnet });
            }
            return if self.claim(network, ip, machine).await? {
                Ok(nic(ip))
            } else {
                let holder = self.holder(network, ip).await?.unwrap_or_default();
                Err(Error::Taken { ip, network: network.into(), holder })
            };
        }
        for ip in net.subnet.machine_addresses() {
            if self.claim(network, ip, machine).await? {
                return Ok(nic(ip));
            }
        }
        Err(Error::Full(network.into()))
    }

    async fn claim(&self, network: &str, ip: Ipv4Addr, machine: &str) -> Result<bool, Error> {
        let key = record::ipam_key(network, ip);
        let txn = Txn::new().when(Compare::missing(&key)).and_then(Op::Put {
            key,
            value: machine.as_bytes().to_vec(),
            lease: None,
        });
        Ok(self.inner.store.txn(txn).await?.succeeded)
    }

    async fn holder(&self, network: &str, ip: Ipv4Addr) -> Result<Option<String>, Error> {
        Ok(self
            .inner
            .store
            .get(&record::ipam_key(network, ip))
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Gives an address back.
    pub async fn release(&self, nic: &Nic) -> Result<(), Error> {
        self.inner.store.delete(&record::ipam_key(&nic.network, nic.ip)).await?;
        Ok(())
    }

    /// Makes the NIC's bridge and tap exist (before its VM starts).
    pub async fn prepare(&self, nic: &Nic) -> Result<(), Error> {
        let net = self.get(&nic.network).await?;
        let (bridge, tap) = (net.bridge.clone(), nic.tap.clone());
        blocking(move || {
            link::ensure_bridge(&link::Netns::Host, &bridge, net.subnet.gateway(), net.subnet.prefix)?;
            link::ensure_tap(&link::Netns::Host, &tap, &bridge)?;
            Ok(())
        })
        .await?;
        self.inner.dirty.notify_one();
        Ok(())
    }

    /// Removes the NIC's tap and address, and every fault that names the
    /// machine (a machine's removal takes its faults with it).
    pub async fn forget(&self, machine: &str, nics: &[Nic]) -> Result<(), Error> {
        for nic in nics {
            let tap = nic.tap.clone();
            blocking(move || link::delete_link(&link::Netns::Host, &tap).map_err(Error::from)).await?;
            self.release(nic).await?;
        }
        for fault in self.faults().await? {
            if fault.kind.machines().contains(&machine) {
                self.inner.store.delete(&record::fault_key(&fault.id)).await?;
            }
        }
        self.inner.dirty.notify_one();
        Ok(())
    }

    /// The kernel command line a guest needs for its NICs and names.
    pub fn guest_cmdline(&self, machine: &str, nics: &[Nic], subnets: &HashMap<String, Subnet>) -> String {
        let mut out = String::new();
        let mut gateway_set = false;
        let mut dns = Vec::new();
        let mut search = Vec::new();
        for nic in nics {
            let Some(subnet) = subnets.get(&nic.network) else { continue };
            out.push_str(&format!(" hearth.net={},{}/{}", nic.mac, nic.ip, subnet.prefix));
            if !gateway_set {
                out.push_str(&format!(",{}", subnet.gateway()));
                gateway_set = true;
            }
            dns.push(subnet.gateway().to_string());
            search.push(format!("{}.hearth", nic.network));
        }
        if !dns.is_empty() {
            out.push_str(&format!(" hearth.dns={} hearth.search={}", dns.join(","), search.join(",")));
        }
        let _ = machine;
        out
    }

    /// Subnets by network name, for [`Self::guest_cmdline`].
    pub async fn subnets(&self) -> Result<HashMap<String, Subnet>, Error> {
        Ok(self.list().await?.into_iter().map(|n| (n.name, n.subnet)).collect())
    }

    pub async fn faults(&self) -> Result<Vec<FaultRecord>, Error> {
        let range = self.inner.store.range(record::FAULTS).await?;
        range.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// Injects a fault; with `lasting`, it heals itself after that long.
    pub async fn add_fault(&self, kind: FaultKind, lasting: Option<Duration>) -> Result<FaultRecord, Error> {
        let machines = self.machines().await?;
        for name in kind.machines() {
            if !machines.iter().any(|m| m.name == name && !m.spec.nics.is_empty()) {
                return Err(Error::NoSuchMachine(name.into()));
            }
        }
        match &kind {
            FaultKind::Partition { machines, from, .. } => {
                if machines.is_empty() || from.is_empty() {
                    return Err(Error::Invalid("a partition needs machines on both sides".into()));
                }
                if let Some(both) = machines.iter().find(|m| from.contains(m)) {
                    return Err(Error::Invalid(format!(
                        "machine {both:?} is on both sides of the partition"
                    )));
                }
            }
            FaultKind::Loss { percent, .. } if !(0.0..=100.0).contains(percent) || percent.is_nan() => {
                return Err(Error::Invalid(format!("loss {percent}% is not a percentage from 0 to 100")));
            }
            FaultKind::Delay { delay, jitter, .. } if *delay > Duration::from_secs(60) || jitter > delay => {
                return Err(Error::Invalid(
                    "use a delay up to 60s and a jitter no larger than the delay".into(),
                ));
            }
            _ => {}
        }
        let id = format!("f{:x}", now_nanos() & 0xff_ffff);
        let now = now_unix();
        let rec = FaultRecord {
            id: id.clone(),
            kind,
            expires_at: lasting.map(|d| now + d.as_secs().max(1)),
            created_at: now,
        };
        let value = serde_json::to_vec(&rec).map_err(|e| Error::Corrupt(id.clone(), e))?;
        self.inner.store.put(&record::fault_key(&id), value, None).await?;
        // Applied now, so that a fault this host cannot make (a delay on a
        // kernel with neither netem nor NFQUEUE) is refused rather than
        // silently absent.
        let applied = {
            let _one = self.inner.applying.lock().await;
            self.apply_inner().await
        };
        if let Err(error) = applied {
            self.inner.store.delete(&record::fault_key(&id)).await?;
            self.apply().await;
            return Err(error);
        }
        Ok(rec)
    }

    /// Heals one fault, or all of them. Returns how many were healed.
    pub async fn heal(&self, id: Option<&str>) -> Result<usize, Error> {
        let faults = self.faults().await?;
        let chosen: Vec<&FaultRecord> = match id {
            Some(id) => {
                let found: Vec<_> = faults.iter().filter(|f| f.id == id).collect();
                if found.is_empty() {
                    return Err(Error::FaultNotFound(id.into()));
                }
                found
            }
            None => faults.iter().collect(),
        };
        for fault in &chosen {
            self.inner.store.delete(&record::fault_key(&fault.id)).await?;
        }
        self.apply().await;
        Ok(chosen.len())
    }

    async fn machines(&self) -> Result<Vec<MachineView>, Error> {
        let range = self.inner.store.range(MACHINES).await?;
        Ok(range.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
    }

    /// Why a machine's port forwards are not working, if they are not.
    pub fn forward_problem(&self, machine: &str) -> Option<String> {
        lock(&self.inner.running).problems.get(machine).cloned()
    }

    /// The reconcile loop: applies the desired host state now, again on every
    /// change to networks, machines or faults, and when a fault expires.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if !self.inner.options.enabled {
            tracing::warn!("Not running as root: networks are off, machines run without network interfaces.");
            let _ = shutdown.wait_for(|s| *s).await;
            return;
        }
        if self.inner.options.default_network
            && let Err(error) = self.ensure_default().await
        {
            tracing::warn!(error = %error, "Cannot create the default network.");
        }
        // Networks, faults and machines, each followed from the revision the
        // first pass reads at, so that no change after it goes unapplied.
        let from = loop {
            match self.inner.store.revision().await {
                Ok(revision) => break revision + 1,
                Err(error) => {
                    tracing::warn!(error = %error, "Cannot read the store's revision; retrying.");
                    tokio::select! {
                        () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let store = &self.inner.store;
        let mut networks = Follower::new(store.clone(), record::NETWORKS, from, "Networks");
        let mut faults = Follower::new(store.clone(), record::FAULTS, from, "Network faults");
        let mut machines = Follower::new(store.clone(), MACHINES, from, "Networks' machines");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        self.apply().await;
        loop {
            tokio::select! {
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                () = self.inner.dirty.notified() => self.apply().await,
                _ = networks.next() => self.apply_after(&mut [&mut networks, &mut faults, &mut machines]).await,
                _ = faults.next() => self.apply_after(&mut [&mut networks, &mut faults, &mut machines]).await,
                _ = machines.next() => self.apply_after(&mut [&mut networks, &mut faults, &mut machines]).await,
                _ = tick.tick() => self.expire_faults().await,
            }
        }
        let mut running = lock(&self.inner.running);
        for (_, stop) in running.dns.drain() {
            let _ = stop.send(true);
        }
        for (_, (_, stop)) in running.forwards.drain() {
            let _ = stop.send(true);
        }
    }

    /// One pass for a change and every other change already waiting: a
    /// burst of writes (a lab coming up) costs one pass, not one each.
    async fn apply_after(&self, followers: &mut [&mut Follower]) {
        use futures::FutureExt as _;
        for follower in followers.iter_mut() {
            // `next` is cancel-safe: a change not ready now is not lost.
            while follower.next().now_or_never().is_some() {}
        }
        self.apply().await;
    }

    async fn expire_faults(&self) {
        let Ok(faults) = self.faults().await else { return };
        let now = now_unix();
        let mut expired = false;
        for fault in faults.iter().filter(|f| f.expires_at.is_some_and(|t| t <= now)) {
            tracing::info!(fault = fault.id, what = fault.kind.describe(), "Fault healed itself.");
            let _ = self.inner.store.delete(&record::fault_key(&fault.id)).await;
            expired = true;
        }
        if expired {
            self.apply().await;
        }
    }

    /// One reconcile pass: the whole host state, from the store.
    pub async fn apply(&self) {
        let _one = self.inner.applying.lock().await;
        if let Err(error) = self.apply_inner().await {
            tracing::warn!(error = %error, "Could not apply the network state; retrying on the next change.");
        }
    }

    async fn apply_inner(&self) -> Result<(), Error> {
        let networks = self.list().await?;
        let machines = self.machines().await?;
        let faults = self.faults().await?;
        let prefix = self.inner.options.prefix.clone();
        let table = self.table();

        // Taps by machine name, for faults.
        let taps: HashMap<String, Vec<String>> = machines
            .iter()
            .map(|m| (m.name.clone(), m.spec.nics.iter().map(|n| n.tap.clone()).collect()))
            .collect();
        let taps_of = |names: &[String]| -> Vec<String> {
            names.iter().flat_map(|n| taps.get(n).cloned().unwrap_or_default()).collect()
        };
        let mut desired = firewall::Desired {
            table: table.clone(),
            networks: networks
                .iter()
                .map(|n| firewall::NetworkRules {
                    bridge: n.bridge.clone(),
                    subnet: n.subnet.to_string(),
                    nat: n.nat,
                })
                .collect(),
            partitions: faults
                .iter()
                .filter_map(|f| match &f.kind {
                    FaultKind::Partition { machines, from, both_ways } => Some(firewall::Partition {
                        id: f.id.clone(),
                        from: taps_of(from),
                        to: taps_of(machines),
                        both_ways: *both_ways,
                    }),
                    _ => None,
                })
                .collect(),
            losses: Vec::new(),
        };
        // Several delays on one machine add up.
        let mut delays: BTreeMap<String, shaping::TapDelay> = BTreeMap::new();
        let mut losses: HashMap<String, f32> = HashMap::new();
        for f in &faults {
            match &f.kind {
                FaultKind::Delay { machine, delay, jitter } => {
                    let nics = machines.iter().filter(|m| m.name == *machine).flat_map(|m| &m.spec.nics);
                    for nic in nics {
                        let Some(net) = networks.iter().find(|n| n.name == nic.network) else { continue };
                        let d = delays.entry(nic.tap.clone()).or_insert_with(|| shaping::TapDelay {
                            tap: nic.tap.clone(),
                            bridge: net.bridge.clone(),
                            ip: nic.ip,
                            shape: Default::default(),
                        });
                        d.shape.delay += *delay;
                        d.shape.jitter += *jitter;
                    }
                }
                FaultKind::Loss { machine, percent } => {
                    for tap in taps.get(machine).cloned().unwrap_or_default() {
                        let total = losses.entry(tap).or_insert(0.0);
                        *total = (*total + percent).min(100.0);
                    }
                }
                FaultKind::Partition { .. } => {}
            }
        }
        let delays: Vec<shaping::TapDelay> = delays.into_values().collect();
        let shaper = self.inner.shaper.clone();
        desired.losses = losses.into_iter().map(|(tap, percent)| firewall::Loss { tap, percent }).collect();
        let all_taps: Vec<String> = taps.values().flatten().cloned().collect();
        let nets = networks.clone();
        let any_nat = networks.iter().any(|n| n.nat);
        let shaped = blocking(move || {
            let host = link::Netns::Host;
            for n in &nets {
                link::ensure_bridge(&host, &n.bridge, n.subnet.gateway(), n.subnet.prefix)?;
            }
            // Bridges of networks that are gone.
            for stale in link::links_with_prefix(&host, &format!("{prefix}b-"))? {
                if !nets.iter().any(|n| n.bridge == stale) {
                    link::delete_link(&host, &stale)?;
                }
            }
            if any_nat {
                link::enable_ip_forwarding(&host)?;
            }
            firewall::apply(&host, &desired)?;
            let existing = link::links_with_prefix(&host, &format!("{prefix}t-"))?;
            let taps: Vec<String> = all_taps.into_iter().filter(|t| existing.contains(t)).collect();
            // A host that cannot delay says so, but only once the rest of
            // the network (names and forwards too, below) is in place.
            Ok(lock(&shaper).apply(&taps, &delays))
        })
        .await?;

        // Names.
        self.inner.zone.set(
            machines
                .iter()
                .flat_map(|m| m.spec.nics.iter().map(move |n| (m.name.clone(), n.network.clone(), n.ip)))
                .collect(),
        );
        self.sync_dns(&networks);
        self.sync_forwards(&machines).await;
        shaped.map_err(Error::from)
    }

    /// One DNS server per network, on its gateway address, port 53.
    fn sync_dns(&self, networks: &[NetworkRecord]) {
        let mut running = lock(&self.inner.running);
        let wanted: Vec<Ipv4Addr> = networks.iter().map(|n| n.subnet.gateway()).collect();
        running.dns.retain(|ip, stop| {
            let keep = wanted.contains(ip);
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for ip in wanted {
            if running.dns.contains_key(&ip) {
                continue;
            }
            let (stop_tx, mut stop_rx) = watch::channel(false);
            let zone = self.inner.zone.clone();
            let addr = SocketAddr::from((ip, 53));
            tokio::spawn(async move {
                let stop = async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                };
                if let Err(error) = dns::serve(addr, zone, upstream_resolvers(), stop).await {
                    tracing::warn!(%addr, error = %error, "DNS server stopped.");
                }
            });
            running.dns.insert(ip, stop_tx);
        }
    }

    /// Port forwards for running machines.
    async fn sync_forwards(&self, machines: &[MachineView]) {
        let mut wanted: HashMap<(String, PortSpec), SocketAddr> = HashMap::new();
        for m in machines.iter().filter(|m| m.status.state == "running") {
            let Some(nic) = m.spec.nics.first() else { continue };
            for port in &m.spec.ports {
                wanted.insert((m.name.clone(), *port), SocketAddr::from((nic.ip, port.guest)));
            }
        }
        let to_start: Vec<((String, PortSpec), SocketAddr)> = {
            let mut running = lock(&self.inner.running);
            running.forwards.retain(|key, (target, stop)| {
                let keep = wanted.get(key) == Some(target);
                if !keep {
                    let _ = stop.send(true);
                }
                keep
            });
            running.problems.clear();
            wanted.into_iter().filter(|(k, _)| !running.forwards.contains_key(k)).collect()
        };
        for ((machine, port), target) in to_start {
            let spec = forward::Forward {
                protocol: if port.udp { forward::Protocol::Udp } else { forward::Protocol::Tcp },
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port.host)),
                target,
            };
            match forward::bind(&spec).await {
                Ok(bound) => {
                    let (stop_tx, mut stop_rx) = watch::channel(false);
                    tokio::spawn(bound.run(async move {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    }));
                    lock(&self.inner.running).forwards.insert((machine, port), (target, stop_tx));
                }
                Err(error) => {
                    tracing::warn!(machine, %port, error = %error, "Cannot forward a port.");
                    lock(&self.inner.running).problems.insert(machine, format!("port {port}: {error}"));
                }
            }
        }
    }

    /// Removes everything on the host with this daemon's prefix (tests, and
    /// `hearth serve` when networking is switched off).
    pub async fn teardown(&self) {
        let prefix = self.inner.options.prefix.clone();
        let table = self.table();
        let shaper = self.inner.shaper.clone();
        let _ = blocking(move || {
            let host = link::Netns::Host;
            let _ = firewall::clear(&host, &table);
            if let Err(error) = lock(&shaper).clear() {
                tracing::warn!(error = %error, "Cannot remove the delay rules.");
            }
            for name in link::links_with_prefix(&host, &format!("{prefix}t-")).unwrap_or_default() {
                let _ = link::delete_link(&host, &name);
            }
            for name in link::links_with_prefix(&host, &format!("{prefix}b-")).unwrap_or_default() {
                let _ = link::delete_link(&host, &name);
            }
            Ok(())
        })
        .await;
    }
}

/// The name of a daemon's firewall tables, and of its delay rules' chain.
fn table_name(prefix: &str) -> String {
    format!("hearth-{prefix}")
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(value).map_err(|e| Error::Corrupt(key.to_owned(), e))
}

/// The host's IPv4 routes, except those through this daemon's own bridges
/// (`own_bridges` is their name prefix), so that new networks avoid them.
fn host_route_subnets(own_bridges: &str) -> Vec<Subnet> {
    let Ok(out) = std::process::Command::new("ip").args(["-4", "route", "show"]).output() else {
        return vec![];
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace().skip_while(|w| *w != "dev");
            !words.nth(1).is_some_and(|dev| dev.starts_with(own_bridges))
        })
        .filter_map(|line| line.split_whitespace().next())
        .filter(|dest| *dest != "default")
        .filter_map(|dest| {
            if dest.contains('/') { dest.parse().ok() } else { format!("{dest}/32").parse::<Subnet>().ok() }
        })
        .collect()
}

/// The host's own resolvers, for names outside `.hearth`.
fn upstream_resolvers() -> Option<Vec<SocketAddr>> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::from((ip, 53)))
        .collect();
    (!servers.is_empty()).then_some(servers)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::Invalid(format!("internal error: {e}"))))
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse_or_explain() {
        assert_eq!("8080:80".parse(), Ok(PortSpec { host: 8080, guest: 80, udp: false }));
        assert_eq!("5353:53/udp".parse(), Ok(PortSpec { host: 5353, guest: 53, udp: true }));
        assert_eq!("1:2/tcp".parse::<PortSpec>().map(|p| p.to_string()), Ok("1:2".to_owned()));
        for bad in ["80", "a:b", "0:80", "80:80/sctp", "99999:1"] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
    }
}
