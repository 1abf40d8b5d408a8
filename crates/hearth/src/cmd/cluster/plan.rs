//! The plan of a cluster on one machine, as a pure function of its name,
//! its number of hosts, its subnet and its directory: every name, address
//! and path `hearth cluster` makes, so that each is checked (interface
//! names fit the kernel's 15 bytes, addresses fit the subnet) before
//! anything exists, and found again by every later command from the state
//! file alone.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hearth_net::link::iface_name;
use serde::{Deserialize, Serialize};

/// At most this many hosts: h1 to h9, addresses `.11` to `.19`.
pub(crate) const MAX_HOSTS: usize = 9;

/// The longest cluster name: it is in every netns and interface name.
const MAX_NAME: usize = 20;

/// etcd's ports on every host's address.
pub(crate) const ETCD_CLIENT_PORT: u16 = 2379;
pub(crate) const ETCD_PEER_PORT: u16 = 2380;

/// Where each host's apps answer, on its address.
pub(crate) const INGRESS_PORT: u16 = 8080;

/// The underlay's MTU: a VXLAN overlay inside (50 bytes of headers) still
/// carries 1500-byte frames.
pub(crate) const MTU: u32 = 9000;

/// An IPv4 subnet, e.g. `10.77.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subnet {
    pub(crate) network: Ipv4Addr,
    pub(crate) prefix: u8,
}

impl Subnet {
    /// The subnet's `n`th address.
    fn nth(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) }
    }

    /// Whether the two share an address.
    pub(crate) fn overlaps(self, other: Subnet) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// The underlay's gateway, the bridge in the root netns: `.1`.
    pub(crate) fn gateway(self) -> Ipv4Addr {
        self.nth(1)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = String;

    /// A subnet of a cluster: room for `.1` and `.11` to `.19` (/27 or
    /// wider), no wider than a /8, its host bits zero.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IPv4 subnet like 10.77.0.0/24");
        let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=27).contains(&prefix) {
            return Err(format!(
                "{text}: a cluster's subnet is /8 to /27 (its hosts take .11 to .19), e.g. 10.77.0.0/24"
            ));
        }
        let subnet = Subnet { network: address, prefix };
        let network = Ipv4Addr::from(u32::from(address) & subnet.mask());
        if network != address {
            return Err(format!("{text} has host bits set: did you mean {network}/{prefix}?"));
        }
        Ok(subnet)
    }
}

/// One route of the host's, as `ip -j route` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Route {
    pub(crate) dst: String,
    #[serde(default)]
    pub(crate) dev: String,
}

/// The first of the host's routes that overlaps `subnet`, but for the
/// cluster's own bridge's (there when `up` runs again) and the default
/// route (which overlaps everything, and is how the host reaches the
/// rest of the world, not a network on it).
pub(crate) fn overlapping_route<'a>(subnet: Subnet, routes: &'a [Route], bridge: &str) -> Option<&'a Route> {
    routes.iter().filter(|r| r.dev != bridge && r.dst != "default").find(|route| {
        let dst = if route.dst.contains('/') { route.dst.clone() } else { format!("{}/32", route.dst) };
        let Some((address, prefix)) = dst.split_once('/') else { return false };
        match (address.parse::<Ipv4Addr>(), prefix.parse::<u8>()) {
            (Ok(address), Ok(prefix)) if prefix <= 32 => {
                let route = Subnet { network: address, prefix };
                let route = Subnet { network: Ipv4Addr::from(u32::from(address) & route.mask()), prefix };
                route.overlaps(subnet)
            }
            _ => false,
        }
    })
}

/// Checks a cluster's name: it goes into netns and interface names.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && !name.starts_with('-')
        && !name.ends_with('-');
    if fine {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a cluster name: use 1 to {MAX_NAME} lowercase letters, digits and inner dashes, e.g. lab"
        ))
    }
}

/// A cluster: what `up` made (or is making), kept in its state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) name: String,
    /// The cluster's directory, which holds this file.
    pub(crate) dir: PathBuf,
    pub(crate) subnet: String,
    /// The bridge in the root netns, at the subnet's `.1`.
    pub(crate) bridge: String,
    pub(crate) gateway: Ipv4Addr,
    /// The cache of kernels and images the daemons share.
    pub(crate) cache_dir: PathBuf,
    /// `--store` of every daemon.
    pub(crate) store: String,
    /// etcd's `--initial-cluster`.
    pub(crate) initial_cluster: String,
    pub(crate) hosts: Vec<Host>,
}

/// One host of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Host {
    /// `h1`, `h2`, ...: its `--host-name` and its etcd member's name.
    pub(crate) name: String,
    pub(crate) netns: String,
    /// The root netns's end of its veth pair, on the bridge; the other
    /// end is `eth0` in its netns.
    pub(crate) veth: String,
    pub(crate) address: Ipv4Addr,
    /// The daemon's data dir.
    pub(crate) data_dir: PathBuf,
    /// The etcd member's data dir.
    pub(crate) etcd_dir: PathBuf,
    pub(crate) daemon_log: PathBuf,
    pub(crate) etcd_log: PathBuf,
    /// The daemon's process, once started.
    pub(crate) daemon_pid: Option<u32>,
    /// The etcd member's process, once started.
    pub(crate) etcd_pid: Option<u32>,
}

impl State {
    pub(crate) fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub(crate) fn host_mut(&mut self, name: &str) -> Option<&mut Host> {
        self.hosts.iter_mut().find(|h| h.name == name)
    }
}

/// Every name, address and path of cluster `name` with `hosts` hosts on
/// `subnet`, kept in `dir`, its daemons sharing `cache_dir`.
pub(crate) fn plan(
    name: &str,
    hosts: usize,
    subnet: Subnet,
    dir: &Path,
    cache_dir: &Path,
) -> Result<State, String> {
    check_name(name)?;
    if !(1..=MAX_HOSTS).contains(&hosts) {
        return Err(format!("--hosts {hosts}: a cluster on one machine has 1 to {MAX_HOSTS} hosts"));
    }
    let hosts: Vec<Host> = (1..=hosts)
        .map(|i| {
            let host = format!("h{i}");
            let home = dir.join(&host);
            Host {
                netns: format!("hearth-{name}-{host}"),
                veth: iface_name(VETH_PREFIX, &format!("{name}-{host}")),
                address: subnet.nth(10 + i as u32),
                data_dir: home.join("data"),
                etcd_dir: home.join("etcd"),
                daemon_log: home.join("daemon.log"),
                etcd_log: home.join("etcd.log"),
                daemon_pid: None,
                etcd_pid: None,
                name: host,
            }
        })
        .collect();
    let store = format!(
        "etcd://{}",
        hosts.iter().map(|h| format!("{}:{ETCD_CLIENT_PORT}", h.address)).collect::<Vec<_>>().join(",")
    );
    let initial_cluster = hosts
        .iter()
        .map(|h| format!("{}=http://{}:{ETCD_PEER_PORT}", h.name, h.address))
        .collect::<Vec<_>>()
        .join(",");
    Ok(State {
        name: name.to_owned(),
        dir: dir.to_owned(),
        subnet: subnet.to_string(),
        bridge: iface_name(BRIDGE_PREFIX, name),
        gateway: subnet.gateway(),
        cache_dir: cache_dir.to_owned(),
        store,
        initial_cluster,
        hosts,
    })
}

/// The prefixes of the cluster's interfaces in the root netns: distinct
/// from a daemon's (`hb-`, `ht-` under its default `--net-prefix h`), and
/// from each other, so a bridge never takes a veth's name. Names that do
/// not fit 15 bytes are shortened with a hash, as a daemon's are.
pub(crate) const BRIDGE_PREFIX: &str = "hcb-";
pub(crate) const VETH_PREFIX: &str = "hcv-";

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(text: &str) -> Subnet {
        text.parse().expect("subnet")
    }

    fn lab(name: &str, hosts: usize) -> State {
        plan(name, hosts, subnet("10.77.0.0/24"), Path::new("/c"), Path::new("/cache")).expect("plan")
    }

    #[test]
    fn three_hosts_get_their_names_addresses_and_paths() {
        let state = lab("lab", 3);
        assert_eq!(state.bridge, "hcb-lab");
        assert_eq!(state.gateway, Ipv4Addr::new(10, 77, 0, 1));
        let rows: Vec<_> = state
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.netns.as_str(), h.veth.as_str(), h.address.to_string()))
            .collect();
        assert_eq!(
            rows,
            [
                ("h1", "hearth-lab-h1", "hcv-lab-h1", "10.77.0.11".to_owned()),
                ("h2", "hearth-lab-h2", "hcv-lab-h2", "10.77.0.12".to_owned()),
                ("h3", "hearth-lab-h3", "hcv-lab-h3", "10.77.0.13".to_owned()),
            ]
        );
        assert_eq!(state.hosts[1].data_dir, Path::new("/c/h2/data"));
        assert_eq!(state.hosts[1].etcd_dir, Path::new("/c/h2/etcd"));
        assert_eq!(state.hosts[1].daemon_log, Path::new("/c/h2/daemon.log"));
        assert_eq!(state.hosts[1].etcd_log, Path::new("/c/h2/etcd.log"));
        assert_eq!(state.store, "etcd://10.77.0.11:2379,10.77.0.12:2379,10.77.0.13:2379");
        assert_eq!(
            state.initial_cluster,
            "h1=http://10.77.0.11:2380,h2=http://10.77.0.12:2380,h3=http://10.77.0.13:2380"
        );
    }

    #[test]
    fn long_names_are_shortened_to_distinct_interface_names() {
        let long = "a-rather-long-name-x";
        let state = lab(long, 9);
        let mut names: Vec<&str> = state.hosts.iter().map(|h| h.veth.as_str()).collect();
        names.push(&state.bridge);
        assert!(names.iter().all(|n| n.len() <= 15), "{names:?}");
        assert!(
            state.bridge.starts_with(BRIDGE_PREFIX) && names[..9].iter().all(|n| n.starts_with(VETH_PREFIX))
        );
        let distinct: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), 10, "{names:?}");
        assert_eq!(state.hosts[8].address, Ipv4Addr::new(10, 77, 0, 19));
        // Stable: the state file names them, but a rerun must agree.
        assert_eq!(lab(long, 9), state);
    }

    #[test]
    fn names_and_host_counts_are_checked() {
        for bad in ["", "Lab", "-lab", "lab-", "la_b", "a-name-over-twenty-ch"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("lab-2").expect("fine");
        let plan = |n| plan("lab", n, subnet("10.77.0.0/24"), Path::new("/c"), Path::new("/cache"));
        assert!(plan(0).is_err());
        assert!(plan(10).unwrap_err().contains("1 to 9"));
        assert_eq!(plan(1).expect("one").initial_cluster, "h1=http://10.77.0.11:2380");
    }

    #[test]
    fn subnets_are_parsed_and_checked() {
        assert_eq!(subnet("10.77.0.0/24").to_string(), "10.77.0.0/24");
        assert_eq!(subnet("10.77.0.0/24").gateway(), Ipv4Addr::new(10, 77, 0, 1));
        subnet("10.77.0.32/27");
        let error = |text: &str| text.parse::<Subnet>().unwrap_err();
        assert!(error("10.77.0.1/24").contains("did you mean 10.77.0.0/24"));
        assert!(error("10.77.0.0/28").contains("/8 to /27"));
        assert!(error("10.77.0.0").contains("like 10.77.0.0/24"));
        assert!(error("10.77.0/24").contains("like"));
    }

    #[test]
    fn a_subnet_that_overlaps_a_route_is_found() {
        let route = |dst: &str, dev: &str| Route { dst: dst.to_owned(), dev: dev.to_owned() };
        let routes = [
            route("default", "eth0"),
            route("192.0.2.0/24", "eth0"),
            route("10.77.0.0/24", "hcb-lab"),
            route("10.80.1.7", "tun0"),
            route("10.88.0.0/14", "vpn0"),
        ];
        let found = |text: &str| overlapping_route(subnet(text), &routes, "hcb-lab").map(|r| r.dev.clone());
        assert_eq!(found("10.77.0.0/24"), None, "its own bridge's route");
        assert_eq!(found("10.90.0.0/24"), Some("vpn0".to_owned()));
        assert_eq!(found("10.80.1.0/24"), Some("tun0".to_owned()));
        assert_eq!(found("10.96.0.0/24"), None);
        assert_eq!(found("192.0.0.0/16"), Some("eth0".to_owned()));
    }
}
