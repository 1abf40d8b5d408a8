//! Networks that span hosts: a VXLAN overlay.
//!
//! When several hosts share a store, a network is one layer-2 segment
//! across all of them. Each host keeps, per network, a kernel `vxlan`
//! device enslaved to the network's bridge, and writes its forwarding
//! entries from the store rather than learning them from traffic:
//!
//! - a machine of another host is reached at that host's overlay address
//!   (its MAC, from the machine's record, to the address in its host's
//!   record, `overlay=IP`);
//! - broadcasts, multicasts and frames for unknown MACs go to every other
//!   host (head-end replication, one all-zero entry per host), which is
//!   how address resolution finds a machine that was just created.
//!
//! One address space and one DNS view come for free: addresses are
//! claimed in the shared store and every host's DNS server answers from it.
//!
//! The gateway is distributed: every host's bridge carries the network's
//! gateway address, and a machine talks to its own host's (DNS, NAT).
//! The firewall keeps each gateway on its host (`firewall::Overlay`):
//! requests for the gateway's address do not cross, and nothing the host
//! itself sends leaves through the tunnel. A host reaches another host's
//! machine by routing instead: a route to the machine's address through
//! its host (`proto 186`, hearth's), which forwards it onto its bridge.
//! That is how the leader checks every host's service instances and how a
//! published port reaches instances anywhere. The hosts' addresses must
//! then be on one link (a route's next hop is on-link), as they are in
//! `hearth cluster up`.
//!
//! [`plan`] is a pure function of the records; [`sync`] makes the host
//! match it, idempotently, changing only what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::cmd::{Cmd, check_ifname, stderr};
pub use crate::cmd::{Error, Netns};
use crate::link::{self, parse_json};
use crate::record::NetworkRecord;
use crate::service::MachineView;

/// VXLAN's IANA port.
pub const PORT: u16 = 4789;

/// The MTU of the tunnel devices, a machine's: its 1,500-byte frame
/// crosses whole where the underlay's MTU is at least 1,550 (50 bytes of
/// tunnel headers; `hearth cluster up` gives 9,000). Below that, what the
/// machine sends beyond 1,450 bytes depends on the kernel's path-MTU
/// handling for the tunnel.
pub const MTU: u32 = 1500;

/// The routing protocol number on hearth's routes to other hosts'
/// machines, so that they are found again and no one else's is touched.
pub const ROUTE_PROTO: &str = "186";

/// The all-zero MAC: where the kernel sends what it has no entry for.
const FLOOD: &str = "00:00:00:00:00:00";

/// In a host record's addresses, the one other hosts tunnel to.
pub const ADDRESS_KEY: &str = "overlay=";

/// Another host, as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub host: String,
    pub address: Ipv4Addr,
}

/// The overlay address in a host record's `addresses`, if it has one.
pub fn peer_address(addresses: &[String]) -> Option<Ipv4Addr> {
    addresses.iter().find_map(|a| a.strip_prefix(ADDRESS_KEY)?.parse().ok())
}

/// One network's tunnel on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub network: String,
    /// The vxlan device.
    pub device: String,
    /// The network's bridge, which the device is a port of.
    pub bridge: String,
    pub vni: u32,
    /// The network's gateway, which stays on each host.
    pub gateway: Ipv4Addr,
    /// Every other host's overlay address.
    pub flood: BTreeSet<Ipv4Addr>,
    /// Other hosts' machines on this network: MAC (lowercase) to the
    /// overlay address of the host that runs it.
    pub machines: BTreeMap<String, Ipv4Addr>,
    /// The addresses of those machines, to the same host's address: this
    /// host's routes to them.
    pub routes: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

/// The VXLAN network identifier of a network: 24 bits of a hash of its
/// name, the same on every host without asking anyone. 0 is never used.
pub fn vni(network: &str) -> u32 {
    (link::fnv1a(network.as_bytes()) & 0x00ff_ffff).max(1)
}

/// The tunnel device of `network` under a daemon's interface prefix.
pub fn device_name(prefix: &str, network: &str) -> String {
    link::iface_name(&format!("{prefix}x-"), network)
}

/// What the overlay should be on host `local`, and why any network has none.
///
/// - Every network gets a tunnel, as soon as there is another host with an
///   overlay address: a machine created on another host later is reached
///   without a new device.
/// - Its flood list is every other host with an overlay address, this
///   host's own address excepted (a host that restarted under a new name
///   may still have a stale record with it).
/// - Its machine entries are the NICs, on that network, of machines that
///   run on another host with an overlay address. A machine that is not
///   running keeps its entry: its address is still its own.
/// - Two networks whose names hash to the same identifier would share a
///   segment, so the one created later (then by name) gets no tunnel, and
///   the problem says so.
pub fn plan(
    local: &str,
    local_address: Ipv4Addr,
    prefix: &str,
    networks: &[NetworkRecord],
    machines: &[MachineView],
    peers: &[Peer],
) -> (Vec<Tunnel>, Vec<String>) {
    let peers: BTreeMap<&str, Ipv4Addr> = peers
        .iter()
        .filter(|p| p.host != local && p.address != local_address)
        .map(|p| (p.host.as_str(), p.address))
        .collect();
    if peers.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut ordered: Vec<&NetworkRecord> = networks.iter().collect();
    ordered.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    let mut taken: BTreeMap<u32, &str> = BTreeMap::new();
    let mut tunnels = Vec::new();
    let mut problems = Vec::new();
    for network in ordered {
        let vni = vni(&network.name);
        if let Some(first) = taken.get(&vni) {
            problems.push(format!(
                "network {:?} does not span hosts: its VXLAN id {vni} is also network {first:?}'s; \
                 recreate it under another name",
                network.name
            ));
            continue;
        }
        taken.insert(vni, &network.name);
        let nics: Vec<(&crate::record::Nic, Ipv4Addr)> = machines
            .iter()
            .filter_map(|m| Some((m, *peers.get(m.host.as_deref()?)?)))
            .flat_map(|(m, address)| {
                m.spec.nics.iter().filter(|n| n.network == network.name).map(move |n| (n, address))
            })
            .collect();
        let routes = nics.iter().map(|(n, address)| (n.ip, *address)).collect();
        let machines = nics.iter().map(|(n, address)| (n.mac.to_ascii_lowercase(), *address)).collect();
        tunnels.push(Tunnel {
            network: network.name.clone(),
            device: device_name(prefix, &network.name),
            bridge: network.bridge.clone(),
            vni,
            gateway: network.subnet.gateway(),
            flood: peers.values().copied().collect(),
            machines,
            routes,
        });
    }
    tunnels.sort_by(|a, b| a.device.cmp(&b.device));
    (tunnels, problems)
}

/// Makes the host's tunnels those of `tunnels`, from `local`: each device
/// exists with its identifier and address, in its bridge and up, with
/// exactly its forwarding entries; devices under `prefix` that no tunnel
/// names are deleted; hearth's routes are exactly the tunnels' routes.
/// The bridges must exist.
///
/// A route whose host is not on-link is left out, and the error says so
/// once everything else is in place: machines still reach each other, only
/// this host's own connections to that host's machines do not.
pub fn sync(ns: &Netns, prefix: &str, local: Ipv4Addr, tunnels: &[Tunnel]) -> Synced {
    // One tunnel that cannot be made stops no other, nor the clean-up and
    // the routes: the errors are gathered and said together.
    let mut problems = Vec::new();
    let mut made = BTreeSet::new();
    for tunnel in tunnels {
        match ensure_device(ns, tunnel, local).and_then(|()| sync_entries(ns, tunnel)) {
            Ok(()) => {
                made.insert(tunnel.device.clone());
            }
            Err(error) => problems.push(format!("network {:?}: {error}", tunnel.network)),
        }
    }
    match tunnel_devices(ns, prefix) {
        Ok(present) => {
            for stale in present.iter().filter(|l| !tunnels.iter().any(|t| t.device == **l)) {
                if let Err(error) = link::delete_link(ns, stale) {
                    problems.push(error.to_string());
                }
            }
        }
        Err(error) => problems.push(error.to_string()),
    }
    // Routes only through tunnels that are there.
    let routes: BTreeMap<Ipv4Addr, Ipv4Addr> =
        tunnels.iter().filter(|t| made.contains(&t.device)).flat_map(|t| t.routes.clone()).collect();
    let unreachable = match sync_routes(ns, &routes) {
        Ok(()) => BTreeSet::new(),
        Err((unreachable, error)) => {
            problems.push(error.to_string());
            unreachable
        }
    };
    let reached = tunnels
        .iter()
        .filter(|t| made.contains(&t.device))
        .flat_map(|t| t.flood.iter().copied())
        .filter(|a| !unreachable.contains(a))
        .collect();
    Synced { reached, problems }
}

/// What [`sync`] made, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// The other hosts' addresses whose machines this host reaches: a
    /// tunnel to them is up and nothing kept a route to them from being
    /// made.
    pub reached: BTreeSet<Ipv4Addr>,
    /// What went wrong, each a sentence.
    pub problems: Vec<String>,
}

impl Synced {
    /// Everything was made, or why not.
    pub fn result(&self) -> Result<(), Error> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(Error::Invalid { what: "tunnels to other hosts", reason: self.problems.join("; ") })
    }
}

/// Deletes this daemon's tunnel devices and hearth's routes: what a host
/// whose networks no longer span hosts (its address gone, or the flag
/// removed) must not keep from a life that did.
pub fn clear(ns: &Netns, prefix: &str) -> Result<(), Error> {
    let devices = tunnel_devices(ns, prefix)?;
    if devices.is_empty() {
        return Ok(());
    }
    for device in &devices {
        link::delete_link(ns, device)?;
    }
    clear_routes(ns)
}

/// Removes every route of hearth's protocol (the machines' routes only ever
/// are); the routes go with their tunnels.
pub fn clear_routes(ns: &Netns) -> Result<(), Error> {
    sync_routes(ns, &BTreeMap::new()).map_err(|(_, error)| error)
}

/// Makes hearth's routes `wanted` (machine to its host's address); the
/// hosts' addresses it could not route to (not on a link of this host, or
/// a route of someone else's to the machine's address in the way).
fn sync_routes(ns: &Netns, wanted: &BTreeMap<Ipv4Addr, Ipv4Addr>) -> Result<(), (BTreeSet<Ipv4Addr>, Error)> {
    let all = || wanted.values().copied().collect::<BTreeSet<_>>();
    sync_routes_inner(ns, wanted).map_err(|e| match e {
        RouteError::Unreachable(set, error) => (set, error),
        RouteError::Other(error) => (all(), error),
    })
}

enum RouteError {
    Unreachable(BTreeSet<Ipv4Addr>, Error),
    Other(Error),
}

impl From<Error> for RouteError {
    fn from(error: Error) -> Self {
        RouteError::Other(error)
    }
}

fn sync_routes_inner(ns: &Netns, wanted: &BTreeMap<Ipv4Addr, Ipv4Addr>) -> Result<(), RouteError> {
    let cmd = Cmd::new(ns, "ip").args(["-4", "-j", "route", "show", "proto", ROUTE_PROTO]);
    let present: Vec<Route> = parse_json(&cmd, &cmd.run()?)?;
    let present: BTreeMap<Ipv4Addr, Option<Ipv4Addr>> =
        present.into_iter().filter_map(|r| Some((r.dst.parse().ok()?, r.gateway))).collect();
    for (dst, gateway) in &present {
        if wanted.get(dst) != gateway.as_ref() {
            let cmd = Cmd::new(ns, "ip").args(["route", "del", &format!("{dst}/32"), "proto", ROUTE_PROTO]);
            let output = cmd.output(None)?;
            if !output.status.success() && !stderr(&output).contains("No such process") {
                return Err(cmd.failed(&output).into());
            }
        }
    }
    let mut unreachable = BTreeSet::new();
    let mut in_the_way = Vec::new();
    for (dst, via) in wanted {
        if present.get(dst) == Some(&Some(*via)) {
            continue;
        }
        // `add`, not `replace`: a route to that address that is not
        // hearth's (one a person made) is never overwritten.
        let cmd = Cmd::new(ns, "ip").args([
            "route",
            "add",
            &format!("{dst}/32"),
            "via",
            &via.to_string(),
            "proto",
            ROUTE_PROTO,
        ]);
        let output = cmd.output(None)?;
        if output.status.success() {
            continue;
        }
        let err = stderr(&output);
        if err.contains("invalid gateway") || err.contains("unreachable") {
            unreachable.insert(*via);
        } else if err.contains("File exists") {
            unreachable.insert(*via);
            in_the_way.push(dst.to_string());
        } else {
            return Err(cmd.failed(&output).into());
        }
    }
    if unreachable.is_empty() {
        return Ok(());
    }
    let hosts: Vec<String> = unreachable.iter().map(ToString::to_string).collect();
    let mut reason = format!(
        "this host cannot route to the machines of {} (they still reach each other): ",
        hosts.join(", ")
    );
    if in_the_way.is_empty() {
        reason.push_str("not on a link of this host; put the hosts on one network, or give each the --advertise-address it has on a shared one");
    } else {
        reason.push_str(&format!(
            "a route that is not hearth's goes to {}; remove it, or move the machine",
            in_the_way.join(", ")
        ));
    }
    Err(RouteError::Unreachable(unreachable, Error::Invalid { what: "hosts' addresses", reason }))
}

#[derive(Deserialize)]
struct Route {
    dst: String,
    #[serde(default)]
    gateway: Option<Ipv4Addr>,
}

/// This daemon's tunnel devices: the `vxlan` links named under its prefix,
/// and only those (a link of another kind under a like name is someone
/// else's).
fn tunnel_devices(ns: &Netns, prefix: &str) -> Result<Vec<String>, Error> {
    #[derive(Deserialize)]
    struct Named {
        ifname: String,
    }
    let cmd = Cmd::new(ns, "ip").args(["-j", "link", "show", "type", "vxlan"]);
    let links: Vec<Named> = parse_json(&cmd, &cmd.run()?)?;
    let wanted = format!("{prefix}x-");
    let mut names: Vec<String> =
        links.into_iter().map(|l| l.ifname).filter(|n| n.starts_with(&wanted)).collect();
    names.sort();
    Ok(names)
}

/// The forwarding entries a tunnel wants: (MAC, address) pairs.
fn wanted_entries(tunnel: &Tunnel) -> BTreeSet<(String, Ipv4Addr)> {
    let flood = tunnel.flood.iter().map(|a| (FLOOD.to_owned(), *a));
    flood.chain(tunnel.machines.iter().map(|(mac, a)| (mac.clone(), *a))).collect()
}

fn ensure_device(ns: &Netns, tunnel: &Tunnel, local: Ipv4Addr) -> Result<(), Error> {
    check_ifname(&tunnel.device)?;
    check_ifname(&tunnel.bridge)?;
    let dev = tunnel.device.as_str();
    // A device with another identifier or address (the host's address
    // changed) is made again, since neither can be changed in place.
    match vxlan_of(ns, dev)? {
        Some((vni, address)) if vni == tunnel.vni && address == Some(local) => {}
        found => {
            if found.is_some() {
                link::delete_link(ns, dev)?;
            }
            Cmd::new(ns, "ip")
                .args(["link", "add", dev, "type", "vxlan", "id", &tunnel.vni.to_string()])
                .args(["dstport", &PORT.to_string(), "local", &local.to_string(), "nolearning"])
                .run()?;
            // No IPv6 address of its own: the device is a port, not a host.
            Cmd::new(ns, "ip").args(["link", "set", "dev", dev, "addrgenmode", "none"]).run()?;
        }
    }
    Cmd::new(ns, "ip")
        .args(["link", "set", "dev", dev, "mtu", &MTU.to_string(), "master", &tunnel.bridge, "up"])
        .run()?;
    Ok(())
}

fn sync_entries(ns: &Netns, tunnel: &Tunnel) -> Result<(), Error> {
    let dev = tunnel.device.as_str();
    let wanted = wanted_entries(tunnel);
    let cmd = Cmd::new(ns, "bridge").args(["-j", "fdb", "show", "dev", dev]);
    let entries: Vec<FdbEntry> = parse_json(&cmd, &cmd.run()?)?;
    // The device's own entries carry the address they send to; the bridge's
    // learned ones (`master`) do not, and are the bridge's business.
    let present: BTreeSet<(String, Ipv4Addr)> =
        entries.into_iter().filter_map(|e| Some((e.mac.to_ascii_lowercase(), e.dst?))).collect();
    for (mac, address) in present.difference(&wanted) {
        let cmd = Cmd::new(ns, "bridge").args(["fdb", "del", mac, "dev", dev, "dst", &address.to_string()]);
        let output = cmd.output(None)?;
        if !output.status.success() && !stderr(&output).contains("No such file") {
            return Err(cmd.failed(&output));
        }
    }
    for (mac, address) in wanted.difference(&present) {
        // `append` adds one more address for the all-zero MAC, and is the
        // same as `add` for a machine's, which has one.
        Cmd::new(ns, "bridge")
            .args(["fdb", "append", mac, "dev", dev, "dst", &address.to_string(), "self", "permanent"])
            .run()?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct FdbEntry {
    mac: String,
    #[serde(default)]
    dst: Option<Ipv4Addr>,
}

#[derive(Deserialize)]
struct VxlanLink {
    #[serde(default)]
    linkinfo: Option<VxlanInfo>,
}

#[derive(Deserialize)]
struct VxlanInfo {
    #[serde(default)]
    info_kind: Option<String>,
    #[serde(default)]
    info_data: Option<VxlanData>,
}

#[derive(Deserialize)]
struct VxlanData {
    id: u32,
    #[serde(default)]
    local: Option<Ipv4Addr>,
}

/// The identifier and local address of the vxlan device `dev`; `None` if
/// there is none. A link of another kind under that name is an error.
fn vxlan_of(ns: &Netns, dev: &str) -> Result<Option<(u32, Option<Ipv4Addr>)>, Error> {
    let cmd = Cmd::new(ns, "ip").args(["-d", "-j", "link", "show", "dev", dev]);
    let output = cmd.output(None)?;
    if !output.status.success() {
        let err = stderr(&output);
        return if link::is_absent(&err) { Ok(None) } else { Err(cmd.failed(&output)) };
    }
    let links: Vec<VxlanLink> = parse_json(&cmd, &String::from_utf8_lossy(&output.stdout))?;
    let Some(info) = links.into_iter().next().and_then(|l| l.linkinfo) else { return Ok(None) };
    match (info.info_kind.as_deref(), info.info_data) {
        (Some("vxlan"), Some(data)) => Ok(Some((data.id, data.local))),
        (kind, _) => Err(Error::WrongKind {
            name: dev.to_owned(),
            found: kind.unwrap_or("device").to_owned(),
            expected: "vxlan",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Subnet;

    fn network(name: &str, subnet: &str, created_at: u64) -> NetworkRecord {
        NetworkRecord {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            bridge: format!("hb-{name}"),
            nat: false,
            created_at,
        }
    }

    fn machine(name: &str, host: Option<&str>, nics: &[(&str, &str)]) -> MachineView {
        let host = host.map_or("null".to_owned(), |h| format!("{h:?}"));
        let nics: Vec<String> = nics
            .iter()
            .map(|(network, mac)| {
                format!(r#"{{"network":"{network}","ip":"10.0.0.9","mac":"{mac}","tap":"ht-{name}"}}"#)
            })
            .collect();
        let record = format!(
            r#"{{"name":"{name}","host":{host},"status":{{"state":"running"}},"spec":{{"nics":[{}]}}}}"#,
            nics.join(",")
        );
        serde_json::from_str(&record).unwrap()
    }

    fn peer(host: &str, address: &str) -> Peer {
        Peer { host: host.into(), address: address.parse().unwrap() }
    }

    const ME: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);

    #[test]
    fn a_host_alone_has_no_tunnels() {
        let networks = [network("lab", "10.250.0.0/24", 1)];
        let (tunnels, problems) = plan("one", ME, "h", &networks, &[], &[peer("one", "10.77.0.11")]);
        assert!(tunnels.is_empty() && problems.is_empty());
    }

    #[test]
    fn every_network_gets_a_tunnel_flooding_to_every_other_host() {
        let networks = [network("lab", "10.250.0.0/24", 1), network("db", "10.251.0.0/24", 2)];
        let peers = [peer("one", "10.77.0.11"), peer("two", "10.77.0.12"), peer("three", "10.77.0.13")];
        let (tunnels, problems) = plan("one", ME, "h", &networks, &[], &peers);
        assert!(problems.is_empty());
        let names: Vec<(&str, &str, u32)> =
            tunnels.iter().map(|t| (t.network.as_str(), t.device.as_str(), t.vni)).collect();
        assert_eq!(names, [("db", "hx-db", vni("db")), ("lab", "hx-lab", vni("lab"))]);
        let flood: Vec<String> = tunnels[0].flood.iter().map(ToString::to_string).collect();
        assert_eq!(flood, ["10.77.0.12", "10.77.0.13"]);
        assert_eq!(tunnels[1].gateway, Ipv4Addr::new(10, 250, 0, 1));
        assert_eq!(tunnels[1].bridge, "hb-lab");
    }

    #[test]
    fn machine_entries_are_other_hosts_machines_on_that_network() {
        let networks = [network("lab", "10.250.0.0/24", 1), network("db", "10.251.0.0/24", 2)];
        let machines = [
            machine("mine", Some("one"), &[("lab", "02:00:00:00:00:01")]),
            machine("theirs", Some("two"), &[("lab", "02:00:00:00:00:02"), ("db", "02:00:00:00:00:03")]),
            machine("before-hosts", None, &[("lab", "02:00:00:00:00:04")]),
            machine("unknown-host", Some("nine"), &[("lab", "02:00:00:00:00:05")]),
            machine("upper", Some("two"), &[("lab", "02:00:00:00:0A:0B")]),
        ];
        let peers = [peer("one", "10.77.0.11"), peer("two", "10.77.0.12")];
        let (tunnels, _) = plan("one", ME, "h", &networks, &machines, &peers);
        let lab = tunnels.iter().find(|t| t.network == "lab").unwrap();
        let entries: Vec<String> = lab.machines.iter().map(|(mac, a)| format!("{mac} {a}")).collect();
        assert_eq!(entries, ["02:00:00:00:00:02 10.77.0.12", "02:00:00:00:0a:0b 10.77.0.12"]);
        let db = tunnels.iter().find(|t| t.network == "db").unwrap();
        assert_eq!(db.machines.len(), 1);
        // And this host's routes to them, by address.
        assert_eq!(lab.routes.len(), 1, "two machines of two, one address in the test's records");
        assert_eq!(lab.routes.get(&Ipv4Addr::new(10, 0, 0, 9)), Some(&Ipv4Addr::new(10, 77, 0, 12)));
    }

    #[test]
    fn a_stale_record_with_this_hosts_address_is_not_a_peer() {
        let networks = [network("lab", "10.250.0.0/24", 1)];
        let peers = [peer("old-name", "10.77.0.11"), peer("two", "10.77.0.12")];
        let (tunnels, _) = plan("one", ME, "h", &networks, &[], &peers);
        assert_eq!(tunnels[0].flood.iter().copied().collect::<Vec<_>>(), [Ipv4Addr::new(10, 77, 0, 12)]);
    }

    #[test]
    fn the_later_of_two_networks_sharing_an_identifier_gets_no_tunnel() {
        // Two names whose identifiers collide: 24 bits collide among a few
        // thousand names.
        let mut seen = BTreeMap::new();
        let (first, second) = (0..1_000_000)
            .map(|i| format!("n{i}"))
            .find_map(|n| seen.insert(vni(&n), n.clone()).map(|earlier| (earlier, n)))
            .expect("a collision among a million names");
        let networks = [network(&second, "10.251.0.0/24", 5), network(&first, "10.250.0.0/24", 3)];
        let (tunnels, problems) = plan("one", ME, "h", &networks, &[], &[peer("two", "10.77.0.12")]);
        assert_eq!(tunnels.iter().map(|t| t.network.as_str()).collect::<Vec<_>>(), [first.as_str()]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains(&format!("{second:?}")) && problems[0].contains("recreate"),
            "{problems:?}"
        );
    }

    #[test]
    fn identifiers_are_24_bits_and_never_zero() {
        for name in ["default", "lab", "a", "a-very-long-network-name-of-32c"] {
            let id = vni(name);
            assert!((1..=0x00ff_ffff).contains(&id), "{name}: {id}");
            assert_eq!(id, vni(name));
        }
    }

    #[test]
    fn wanted_entries_are_the_flood_list_and_the_machines() {
        let tunnel = Tunnel {
            network: "lab".into(),
            device: "hx-lab".into(),
            bridge: "hb-lab".into(),
            vni: 7,
            gateway: Subnet { network: Ipv4Addr::new(10, 250, 0, 0), prefix: 24 }.gateway(),
            flood: [Ipv4Addr::new(10, 77, 0, 12), Ipv4Addr::new(10, 77, 0, 13)].into(),
            machines: [("02:00:00:00:00:02".to_owned(), Ipv4Addr::new(10, 77, 0, 12))].into(),
            routes: BTreeMap::new(),
        };
        let entries: Vec<String> = wanted_entries(&tunnel).iter().map(|(m, a)| format!("{m} {a}")).collect();
        assert_eq!(
            entries,
            ["00:00:00:00:00:00 10.77.0.12", "00:00:00:00:00:00 10.77.0.13", "02:00:00:00:00:02 10.77.0.12"]
        );
    }

    #[test]
    fn peer_addresses_come_from_the_host_records_overlay_entry() {
        let addresses = ["api=10.77.0.11:7070".to_owned(), "overlay=10.77.0.11".to_owned()];
        assert_eq!(peer_address(&addresses), Some(ME));
        assert_eq!(peer_address(&["api=1.2.3.4:1".to_owned()]), None);
        assert_eq!(peer_address(&["overlay=nonsense".to_owned()]), None);
    }
}
