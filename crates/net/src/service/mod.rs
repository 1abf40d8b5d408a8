//! The networks service: network records, address management, faults, and
//! the reconcile loop that makes the host match them. This module holds the
//! handle, its options and network records; `ipam` hands out addresses,
//! `faults` records faults and `reconcile` is the loop.
//!
//! Everything on the host (bridges, taps' delays, the nftables ruleset, DNS
//! servers, port forwards) is *derived*: each pass computes the whole desired
//! host state from the store and applies it idempotently, so a restarted
//! daemon converges by running one pass.
//!
//! Machines are read from their records in the store (`machines/NAME`),
//! through the minimal [`MachineView`], and services' passing instances and
//! published ports from theirs (`services/endpoints/NAME`, in `endpoints`;
//! the ports are served by `publish`), so this crate depends
//! on neither the machines nor the services crate: subsystems meet in the
//! store.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex as StdMutex};

use hearth_store::{Compare, Op, Store, Txn};
use serde::Deserialize;
use tokio::sync::{Mutex, Notify, watch};

use crate::activity::Activity;
use crate::record::{self, NetworkRecord, Nic, Subnet, now_unix};
use crate::{dns, link, shaping};

mod endpoints;
mod faults;
mod ipam;
mod publish;
mod reconcile;

pub use endpoints::ENDPOINTS;

/// Where machine records live: the machines crate's prefix, read here
/// through [`MachineView`] so that this crate does not depend on it.
const MACHINES: &str = "machines/";

/// Where host records live: the hosts crate's prefix, read here through
/// [`HostView`] for their overlay addresses.
const HOSTS: &str = "hosts/records/";

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
    /// This daemon's host name (`hearth serve --host-name`). Several hosts
    /// may share one store; only the host that runs a machine can reach its
    /// tap, so only it forwards the machine's ports (see
    /// [`MachineView::runs_on`]).
    pub host: String,
    /// This host's address for other hosts' tunnels (`hearth serve
    /// --advertise-address`), when hosts share a store: with it, every
    /// network spans the hosts that have one (`crate::overlay`).
    pub overlay: Option<Ipv4Addr>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: "h".into(),
            default_nat: true,
            enabled: true,
            default_network: true,
            host: "host".into(),
            overlay: None,
        }
    }
}

/// What the service needs to know of a machine, read from its record.
#[derive(Debug, Clone, Deserialize)]
pub struct MachineView {
    pub name: String,
    /// The host that runs the machine; `None` in records from before hosts
    /// shared a store.
    #[serde(default)]
    pub host: Option<String>,
    pub spec: MachineSpecView,
    /// `running`, `stopped` or `sleeping`.
    #[serde(default)]
    pub desired: String,
    #[serde(default)]
    pub status: MachineStatusView,
}

impl MachineView {
    /// Whether the machine runs on `host`: its record names it, or names no
    /// host. A record without one is from before hosts shared a store, when
    /// the store had one host and every record was that host's; the
    /// machines service writes its host in when it adopts the record.
    pub fn runs_on(&self, host: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host)
    }
}

/// What the overlay needs to know of a host, read from its record.
#[derive(Debug, Clone, Deserialize)]
pub struct HostView {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MachineSpecView {
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Set for a machine that sleeps when idle.
    #[serde(default)]
    pub sleep_after_secs: Option<u64>,
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
    /// What this handle's address claims and releases are written
    /// through, when not the store ([`Networks::writing_through`]).
    writes: Option<Arc<dyn Store>>,
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
    /// Without an overlay: whether an earlier life's tunnels and routes
    /// were looked for and removed (once is enough).
    overlay_leftovers_cleared: Arc<std::sync::atomic::AtomicBool>,
    /// What this host saw of each machine's traffic, for the machines
    /// that sleep when idle.
    activity: Activity,
}

/// Tasks serving the current desired state, with their stop switches.
#[derive(Default)]
struct Running {
    dns: HashMap<Ipv4Addr, watch::Sender<bool>>,
    forwards: HashMap<(String, PortSpec), (SocketAddr, watch::Sender<bool>)>,
    /// Why forwards could not start, by machine, for status.
    problems: BTreeMap<String, String>,
    /// Services' published ports, by service and host port.
    published: HashMap<(String, u16), publish::Published>,
    /// Why published ports could not be bound, by service.
    published_problems: BTreeMap<String, String>,
    /// Why networks do not span hosts, as last logged.
    overlay_problems: Vec<String>,
    /// Other hosts whose machines this host reaches.
    reached: std::collections::BTreeSet<String>,
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
        let zone = dns::Zone::new("hearth");
        let activity = Activity::default();
        {
            // A lookup of a sleeping machine's name wakes it: what the
            // lookup is for, a connection straight to its address, passes
            // through no forward that could hold it, but its SYNs are
            // sent again until the machine answers.
            let activity = activity.clone();
            zone.on_machine_lookup(move |machine| {
                if activity.touch(machine)
                    && let Ok(runtime) = tokio::runtime::Handle::try_current()
                {
                    let (activity, machine) = (activity.clone(), machine.to_owned());
                    runtime.spawn(async move {
                        if let Err(error) = activity.wake(&machine).await {
                            tracing::warn!(machine, error, "A lookup could not wake its machine.");
                        }
                    });
                }
            });
        }
        Self {
            inner: Arc::new(Inner {
                store,
                options,
                zone,
                dirty: Notify::new(),
                applying: Mutex::new(()),
                shaper: Arc::new(StdMutex::new(shaper)),
                running: StdMutex::default(),
                overlay_leftovers_cleared: Arc::default(),
                activity,
            }),
            writes: None,
        }
    }

    /// A handle whose address claims and releases ([`Self::allocate`],
    /// [`Self::release`], [`Self::forget`]) are written through `store`:
    /// for a leader's writes, through the store fenced by its term, so
    /// that a leader deposed without knowing it claims no address. Reads,
    /// and everything else, are the service's own.
    pub fn writing_through(&self, store: Arc<dyn Store>) -> Networks {
        Networks { inner: self.inner.clone(), writes: Some(store) }
    }

    /// The store this handle's address writes go through.
    fn writes(&self) -> &dyn Store {
        self.writes.as_deref().unwrap_or(&*self.inner.store)
    }

    /// What this host saw of each machine's traffic (its forwards count
    /// connections; the machines service puts idle machines to sleep by
    /// it, and wakes them through it).
    pub fn activity(&self) -> Activity {
        self.inner.activity.clone()
    }

    /// The DNS zone every network's server answers from, kept up to date by
    /// [`Self::run`]: for the host's own DNS listener.
    pub fn zone(&self) -> dns::Zone {
        self.inner.zone.clone()
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
                if let Some((route, dev)) =
                    host_routes.iter().find(|(r, _)| r.overlaps(&subnet) && r.prefix > 0)
                {
                    return Err(Error::Invalid(format!(
                        "subnet {subnet} overlaps the host's route to {route} (through {dev}); pick another, e.g. 10.250.0.0/24"
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
                        && !host_routes.iter().any(|(r, _)| r.prefix > 0 && r.overlaps(s))
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

    /// Subnets by network name, for [`Self::guest_cmdline`].
    pub async fn subnets(&self) -> Result<HashMap<String, Subnet>, Error> {
        Ok(self.list().await?.into_iter().map(|n| (n.name, n.subnet)).collect())
    }

    /// Other hosts' overlay addresses, from their records.
    async fn peers(&self) -> Result<Vec<crate::overlay::Peer>, Error> {
        let range = self.inner.store.range(HOSTS).await?;
        Ok(range
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<HostView>(&kv.value).ok())
            .filter_map(|h| {
                let address = crate::overlay::peer_address(&h.addresses)?;
                Some(crate::overlay::Peer { host: h.name, address })
            })
            .collect())
    }

    async fn machines(&self) -> Result<Vec<MachineView>, Error> {
        let range = self.inner.store.range(MACHINES).await?;
        Ok(range.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
    }
}

/// The name of a daemon's firewall tables, and of its delay rules' chain.
fn table_name(prefix: &str) -> String {
    format!("hearth-{prefix}")
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(value).map_err(|e| Error::Corrupt(key.to_owned(), e))
}

/// The host's IPv4 routes and the device each goes through, except those
/// through this daemon's own bridges (`own_bridges` is their name prefix),
/// so that new networks avoid them.
fn host_route_subnets(own_bridges: &str) -> Vec<(Subnet, String)> {
    let Ok(out) = std::process::Command::new("ip").args(["-4", "route", "show"]).output() else {
        return vec![];
    };
    routes(&String::from_utf8_lossy(&out.stdout), own_bridges)
}

/// The routes in `ip -4 route show`'s output, as [`host_route_subnets`]
/// keeps them.
fn routes(shown: &str, own_bridges: &str) -> Vec<(Subnet, String)> {
    shown
        .lines()
        .filter_map(|line| {
            let dest = line.split_whitespace().next()?;
            let dev =
                line.split_whitespace().skip_while(|w| *w != "dev").nth(1).unwrap_or("an unnamed device");
            if dest == "default" || dev.starts_with(own_bridges) {
                return None;
            }
            // Routes a network could be given (/8 to /29, as `Subnet`
            // parses): not a single address's, nor a VPN's catch-alls.
            let subnet = dest.parse::<Subnet>().ok()?;
            Some((subnet, dev.to_owned()))
        })
        .collect()
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
    fn host_routes_name_their_device_and_skip_the_daemons_own_bridges() {
        let shown = "default via 10.0.2.2 dev eth0\n\
            10.0.2.0/24 dev eth0 proto kernel scope link src 10.0.2.15\n\
            10.242.0.0/24 dev hb-n1 proto kernel scope link src 10.242.0.1 linkdown\n\
            10.243.0.0/24 dev tb-n1 proto kernel scope link src 10.243.0.1\n\
            192.168.7.1 dev wg0 scope link\n";
        let found: Vec<(String, String)> =
            routes(shown, "hb-").into_iter().map(|(s, dev)| (s.to_string(), dev)).collect();
        let expected =
            [("10.0.2.0/24", "eth0"), ("10.243.0.0/24", "tb-n1")].map(|(s, d)| (s.to_owned(), d.to_owned()));
        assert_eq!(found, expected);
    }

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
