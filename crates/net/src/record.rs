//! Network and fault records in the store, and the subnet arithmetic IPAM
//! needs.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The store prefix of network records: `networks/NAME`.
pub const NETWORKS: &str = "networks/";
/// The store prefix of address allocations: `ipam/NETWORK/IP` → machine.
pub const IPAM: &str = "ipam/";
/// The store prefix of faults: `faults/ID`.
pub const FAULTS: &str = "faults/";

pub fn network_key(name: &str) -> String {
    format!("{NETWORKS}{name}")
}

pub fn ipam_key(network: &str, ip: Ipv4Addr) -> String {
    format!("{IPAM}{network}/{ip}")
}

pub fn fault_key(id: &str) -> String {
    format!("{FAULTS}{id}")
}

/// An IPv4 subnet, e.g. `10.200.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// The first host address: the bridge's own, the machines' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// Addresses machines may get: all hosts but the gateway.
    pub fn machine_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let last = u32::from(self.broadcast()).saturating_sub(1);
        (first..=last).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 subnet like 10.200.0.0/24");
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix) {
            return Err(format!(
                "{s:?}: use a prefix from /8 to /29, so there is room for a gateway and machines"
            ));
        }
        let subnet = Subnet { network: ip, prefix };
        if u32::from(ip) & !subnet.mask() != 0 {
            let network = Ipv4Addr::from(u32::from(ip) & subnet.mask());
            return Err(format!("{s:?} has host bits set; did you mean {network}/{prefix}?"));
        }
        Ok(subnet)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub subnet: Subnet,
    /// The host bridge.
    pub bridge: String,
    /// Machines reach the outside through the host (masquerade).
    pub nat: bool,
    /// Unix seconds.
    pub created_at: u64,
}

/// A fault injected on purpose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub id: String,
    pub kind: FaultKind,
    /// Unix seconds at which the fault heals itself.
    pub expires_at: Option<u64>,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FaultKind {
    /// Frames from `from` to `machines` are dropped (and back, if `both_ways`).
    Partition { machines: Vec<String>, from: Vec<String>, both_ways: bool },
    /// Traffic towards `machine` is delayed.
    Delay {
        machine: String,
        #[serde(with = "millis")]
        delay: Duration,
        #[serde(with = "millis")]
        jitter: Duration,
    },
    /// Traffic towards `machine` is dropped at random.
    Loss { machine: String, percent: f32 },
}

impl FaultKind {
    /// Every machine the fault involves.
    pub fn machines(&self) -> Vec<&str> {
        match self {
            FaultKind::Partition { machines, from, .. } => {
                machines.iter().chain(from).map(String::as_str).collect()
            }
            FaultKind::Delay { machine, .. } | FaultKind::Loss { machine, .. } => vec![machine.as_str()],
        }
    }

    /// A line for tables.
    pub fn describe(&self) -> String {
        match self {
            FaultKind::Partition { machines, from, both_ways } => format!(
                "partition {} {} {}",
                machines.join(","),
                if *both_ways { "<-/->" } else { "<-/-" },
                from.join(",")
            ),
            FaultKind::Delay { machine, delay, jitter } => {
                format!("delay {machine} {}ms ±{}ms", delay.as_millis(), jitter.as_millis())
            }
            FaultKind::Loss { machine, percent } => format!("loss {machine} {percent}%"),
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A network interface of a machine, as the machine record holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The host tap.
    pub tap: String,
}

/// Checks a network name: it becomes part of interface and DNS names, so it
/// cannot be `service`, the DNS label under which services are named.
pub fn validate_name(name: &str) -> Result<(), String> {
    hearth_store::names::check_label("network", name, 32)?;
    if name == crate::dns::SERVICE_LABEL {
        return Err(format!(
            "network name {name:?} is reserved: NAME.{name}.hearth names services in DNS, so it cannot name a network's machines; pick another name, e.g. {name}s or svc"
        ));
    }
    Ok(())
}

/// A stable locally-administered MAC for a machine's NIC on a network.
pub fn mac_for(machine: &str, network: &str) -> String {
    let h = format!("{machine}/{network}")
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    let b = h.to_be_bytes();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_cannot_be_named_service_for_dns_names_services_there() {
        let error = validate_name("service").unwrap_err();
        assert!(error.contains("reserved") && error.contains("NAME.service.hearth"), "{error}");
        for good in ["services", "svc", "service-net"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
    }

    fn check(input: &str, expect: Result<&str, &str>) {
        match (input.parse::<Subnet>(), expect) {
            (Ok(s), Ok(text)) => assert_eq!(s.to_string(), text, "{input}"),
            (Err(e), Err(words)) => assert!(e.contains(words), "{input}: {e}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn subnets_parse_or_say_why_not() {
        check("10.200.0.0/24", Ok("10.200.0.0/24"));
        check("192.168.10.0/29", Ok("192.168.10.0/29"));
        check("10.200.0.1/24", Err("did you mean 10.200.0.0/24"));
        check("10.0.0.0/30", Err("/8 to /29"));
        check("10.0.0.0", Err("not an IPv4 subnet"));
        check("fd00::/64", Err("not an IPv4 subnet"));
    }

    #[test]
    fn subnet_arithmetic() {
        let s: Subnet = "10.1.2.0/24".parse().expect("subnet");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 1, 2, 255));
        assert_eq!(s.machine_addresses().next(), Some(Ipv4Addr::new(10, 1, 2, 2)));
        assert_eq!(s.machine_addresses().count(), 253);
        assert!(s.contains(Ipv4Addr::new(10, 1, 2, 200)) && !s.contains(Ipv4Addr::new(10, 1, 3, 1)));
        let wide: Subnet = "10.1.0.0/16".parse().expect("subnet");
        assert!(wide.overlaps(&s) && s.overlaps(&wide));
        assert!(!s.overlaps(&"10.1.3.0/24".parse().expect("subnet")));
    }

    #[test]
    fn macs_are_stable_and_local() {
        assert_eq!(mac_for("n1", "lab"), mac_for("n1", "lab"));
        assert_ne!(mac_for("n1", "lab"), mac_for("n2", "lab"));
        assert!(mac_for("n1", "lab").starts_with("52:54:"));
    }
}
