//! hearth's one nftables ruleset: isolation between networks, NAT, and
//! partitions.
//!
//! The ruleset is a pure function of the desired state ([`render`]) and is
//! applied as one nft transaction that empties hearth's two tables and
//! fills them again, so applying is idempotent, a crash half-way cannot
//! leave half a ruleset, and removing a network or healing a partition is
//! just applying the desired state without it. The tables' chains are the
//! same whatever the state, and are flushed rather than deleted: a hook
//! that goes away makes the kernel drop every packet held in the
//! namespace's NFQUEUEs, which would cut the delay line's packets at every
//! pass. Nothing outside `table inet TABLE` and
//! `table bridge TABLE` is ever touched (`TABLE` is [`TABLE`] unless a daemon
//! picks its own, so that several can share a host).
//!
//! - `table inet TABLE` sees routed traffic: it drops what is routed from one
//!   hearth bridge to another (isolation), and masquerades what leaves a NAT
//!   network for anywhere else. It also sees what comes in from a bridge for
//!   the host itself, and lets machines reach only the gateway's DNS (see
//!   `render_input`).
//! - `table bridge TABLE` sees frames switched between the ports (taps) of a
//!   bridge: it drops the frames of a partition, and keeps each host's
//!   gateway on its host when a network spans hosts ([`Overlay`]).

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::cmd::{Cmd, check_ifname};
pub use crate::cmd::{Error, Netns};

/// The name of hearth's tables unless told otherwise.
pub const TABLE: &str = "hearth";

/// Everything hearth wants from nftables, in one place.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The name of both tables (`inet` and `bridge`); [`TABLE`] by default.
    pub table: String,
    pub networks: Vec<NetworkRules>,
    pub partitions: Vec<Partition>,
    /// Random loss of frames towards taps.
    pub losses: Vec<Loss>,
    /// Networks' tunnels to other hosts.
    pub overlays: Vec<Overlay>,
    /// The other hosts' addresses, when networks span hosts: only they
    /// send tunnels here and open connections to machines from outside,
    /// and no machine reaches them.
    pub peers: Vec<Ipv4Addr>,
}

impl Default for Desired {
    fn default() -> Self {
        Desired {
            table: TABLE.to_owned(),
            networks: Vec::new(),
            partitions: Vec::new(),
            losses: Vec::new(),
            overlays: Vec::new(),
            peers: Vec::new(),
        }
    }
}

/// A share of the frames sent towards `tap` (by other machines or by the
/// host) is dropped at random. Done in nftables rather than netem, so it
/// works on kernels without `sch_netem`.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    pub tap: String,
    /// 0 to 100.
    pub percent: f32,
}

/// One hearth network: its bridge, its subnet, and whether it reaches the
/// outside through NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRules {
    pub bridge: String,
    /// `ADDRESS/PREFIX`, e.g. `10.200.0.0/24`; host bits are ignored.
    pub subnet: String,
    pub nat: bool,
}

/// A network's tunnel to other hosts (`crate::overlay`). Every host's
/// bridge carries the network's gateway address, so the gateway must stay
/// on its host: requests for its address are not sent through the tunnel
/// (each host answers its own machines), and nothing the host itself sends
/// leaves through it (the same address answering from two hosts would
/// confuse the machines that hear both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The tunnel device, a port of the network's bridge.
    pub device: String,
    pub gateway: Ipv4Addr,
}

/// Frames from any machine in `from` to any machine in `to` are dropped;
/// with `both_ways`, frames from `to` to `from` as well. A machine of this
/// host is named by its tap; one of another host by its MAC, since its
/// frames come and go through a tunnel shared by all of that host's
/// machines. Each host drops what crosses its own bridge, so between hosts
/// a partition holds at both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Shown in the rules' comments, so `nft list ruleset` says which fault
    /// a rule belongs to.
    pub id: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// MACs of other hosts' machines on the `from` side.
    pub from_remote: Vec<String>,
    /// MACs of other hosts' machines on the `to` side.
    pub to_remote: Vec<String>,
    pub both_ways: bool,
}

/// The longest partition id, and table name, we accept: ids go into rule
/// comments, which nftables limits to 128 bytes.
const ID_MAX: usize = 64;

/// Replaces hearth's tables in `ns` with the ones `desired` renders to, in
/// one transaction. Everything the script quotes is validated first.
pub fn apply(ns: &Netns, desired: &Desired) -> Result<(), Error> {
    validate(desired)?;
    nft(ns, &render(desired))
}

/// Removes the two tables named `table` from `ns` (absent is fine); other
/// tables stay.
pub fn clear(ns: &Netns, table: &str) -> Result<(), Error> {
    check_table(table)?;
    let mut script = String::new();
    for family in ["inet", "bridge"] {
        // Declaring the table first makes the delete succeed when it is absent.
        let _ = writeln!(script, "table {family} {table}\ndelete table {family} {table}");
    }
    nft(ns, &script)
}

/// The start of a table's refill. Declaring the table makes the flush
/// succeed when it is absent; both happen in the same transaction as the
/// table's new contents.
fn refill_table(family: &str, table: &str) -> String {
    format!("table {family} {table}\nflush table {family} {table}")
}

/// The nft script [`apply`] runs for `desired`; for tests and debugging.
///
/// Names are not checked here: [`apply`] validates them first, since the
/// script quotes them verbatim.
pub fn render(desired: &Desired) -> String {
    let mut s = String::new();
    let table = &desired.table;
    let bridges: Vec<&str> = desired.networks.iter().map(|n| n.bridge.as_str()).collect();

    let _ = writeln!(s, "{}\ntable inet {table} {{", refill_table("inet", table));
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    // Connection tracking's hooks are registered while any rule uses it and
    // go away with the last one (NAT's), which would drop every packet the
    // delay line holds. This rule, which only counts, keeps them.
    s.push_str("\t\tct state invalid counter comment \"keeps connection tracking's hooks\"\n");
    // Between hosts: a machine opens no connection to another host (its
    // etcd, its API, its tunnels' port; it answers theirs), and from
    // outside only other hosts open connections to machines (a host's own
    // connections to its machines leave through output, not here).
    if !desired.peers.is_empty() && !bridges.is_empty() {
        let peers: Vec<String> = desired.peers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "\t\tiifname {} ip daddr {} ct direction original counter drop comment \"machines do not reach other hosts\"",
            set(&bridges),
            bare_set(&peers)
        );
        let _ = writeln!(
            s,
            "\t\toifname {b} iifname != {b} ct state new ip saddr != {} counter drop comment \"only other hosts reach machines from outside\"",
            bare_set(&peers),
            b = set(&bridges)
        );
    }
    // Isolation comes first: the NAT rules below accept anything leaving a
    // NAT network, which would otherwise include other hearth networks.
    for network in &desired.networks {
        let others: Vec<&str> = bridges.iter().copied().filter(|b| *b != network.bridge).collect();
        if !others.is_empty() {
            let _ = writeln!(
                s,
                "\t\tiifname \"{b}\" oifname {} counter drop comment \"isolate {b}\"",
                set(&others),
                b = network.bridge
            );
        }
    }
    // Between hosts, another network's machines are reached through a
    // route to their host, not through their bridge: isolation then goes by
    // their subnet.
    if !desired.overlays.is_empty() {
        for network in &desired.networks {
            let others: Vec<String> = desired
                .networks
                .iter()
                .filter(|n| n.bridge != network.bridge)
                .filter_map(|n| parse_subnet(&n.subnet).map(|(a, p)| format!("{a}/{p}")))
                .collect();
            if !others.is_empty() {
                let _ = writeln!(
                    s,
                    "\t\tiifname \"{b}\" ip daddr {} counter drop comment \"isolate {b} across hosts\"",
                    bare_set(&others),
                    b = network.bridge
                );
            }
        }
    }
    for network in desired.networks.iter().filter(|n| n.nat) {
        let b = &network.bridge;
        let _ = writeln!(s, "\t\tiifname \"{b}\" oifname != \"{b}\" accept comment \"nat {b}: out\"");
        let _ = writeln!(
            s,
            "\t\toifname \"{b}\" ct state established,related accept comment \"nat {b}: replies\""
        );
    }
    s.push_str("\t}\n");
    render_input(&mut s, &desired.networks, &desired.peers);
    s.push_str("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
    for network in desired.networks.iter().filter(|n| n.nat) {
        let _ = writeln!(
            s,
            "\t\tip saddr {} oifname != \"{b}\" masquerade comment \"nat {b}\"",
            parse_subnet(&network.subnet).map_or_else(|| network.subnet.clone(), |(a, p)| format!("{a}/{p}")),
            b = network.bridge
        );
    }
    s.push_str("\t}\n}\n");

    let _ = writeln!(s, "{}\ntable bridge {table} {{", refill_table("bridge", table));
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    for o in &desired.overlays {
        let _ = writeln!(
            s,
            "\t\toifname \"{}\" arp daddr ip {} counter drop comment \"the gateway answers on each host\"",
            o.device, o.gateway
        );
    }
    // Address resolution crosses partitions. Otherwise a one-way partition
    // A -> C would also drop A's ARP replies to C, C could never resolve A,
    // and the partition would cut C -> A too.
    s.push_str("\t\tether type arp accept comment \"address resolution crosses partitions\"\n");
    s.push_str(
        "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept comment \"address resolution crosses partitions\"\n",
    );
    for p in &desired.partitions {
        render_partition(&mut s, &p.id, (&p.from, &p.from_remote), (&p.to, &p.to_remote), "");
        if p.both_ways {
            render_partition(&mut s, &p.id, (&p.to, &p.to_remote), (&p.from, &p.from_remote), " (reverse)");
        }
    }
    let losses: Vec<String> = desired
        .losses
        .iter()
        .filter(|l| l.percent > 0.0)
        .map(|l| {
            // numgen draws 0..9999, so the share has a resolution of 0.01 %;
            // all of it is every frame (nft refuses a comparison with
            // 10000, beyond what numgen draws).
            let threshold = (l.percent.clamp(0.0, 100.0) * 100.0).round() as u32;
            let matches = if threshold >= 10_000 {
                String::new()
            } else {
                format!("numgen random mod 10000 < {threshold} ")
            };
            format!("\t\toifname \"{}\" {matches}counter drop comment \"loss {}%\"\n", l.tap, l.percent)
        })
        .collect();
    for rule in &losses {
        s.push_str(rule);
    }
    s.push_str("\t}\n");
    // What the host itself sends towards a machine (e.g. the gateway's DNS
    // answers) leaves through the bridge's output hook. The chain is there
    // with no losses too, so that its hook never goes away.
    s.push_str("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n");
    for o in &desired.overlays {
        let _ = writeln!(
            s,
            "\t\toifname \"{}\" counter drop comment \"the host's own frames stay on its host\"",
            o.device
        );
    }
    if !losses.is_empty() {
        s.push_str("\t\tether type arp accept comment \"address resolution is never lost\"\n");
    }
    for rule in &losses {
        s.push_str(rule);
    }
    s.push_str("\t}\n");
    s.push_str("}\n");
    s
}

/// The rules of one direction of a partition: this host's machines by
/// tap, other hosts' by MAC. Frames between two other hosts' machines
/// never cross this host's bridge.
fn render_partition(
    s: &mut String,
    id: &str,
    from: (&[String], &[String]),
    to: (&[String], &[String]),
    what: &str,
) {
    let (from_taps, from_macs) = from;
    let (to_taps, to_macs) = to;
    let mut rule = |matches: String| {
        let _ = writeln!(s, "\t\t{matches} counter drop comment \"partition {id}{what}\"");
    };
    if !from_taps.is_empty() && !to_taps.is_empty() {
        rule(format!("iifname {} oifname {}", set(from_taps), set(to_taps)));
    }
    if !from_taps.is_empty() && !to_macs.is_empty() {
        rule(format!("iifname {} ether daddr {}", set(from_taps), bare_set(to_macs)));
    }
    if !from_macs.is_empty() && !to_taps.is_empty() {
        rule(format!("ether saddr {} oifname {}", bare_set(from_macs), set(to_taps)));
    }
}

/// What a machine may reach on the host itself, that is, traffic coming in
/// from a hearth bridge for one of the host's own addresses (the gateway's,
/// the uplink's, or any other, since the host routes): the gateway's DNS
/// server on port 53, a ping of the gateway, IPv6 neighbour discovery, and
/// replies to connections the host opened (forwarded ports, `exec` over the
/// network). Everything else is dropped and counted, so that a guest
/// cannot reach a host service that listens on `0.0.0.0` or on its bridge's
/// address. Other traffic to the host (from its uplink, its loopback) is
/// not hearth's to filter and passes, but for tunnels' packets, which only
/// other hosts may send.
fn render_input(s: &mut String, networks: &[NetworkRules], peers: &[Ipv4Addr]) {
    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n");
    // Tunnels carry frames straight into bridges: only other hosts send
    // them, or anyone on the hosts' network could write into a network.
    if !peers.is_empty() {
        let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "\t\tudp dport {} ip saddr != {} counter drop comment \"tunnels only from other hosts\"",
            crate::overlay::PORT,
            bare_set(&peers)
        );
    }
    if !networks.is_empty() {
        let bridges: Vec<&str> = networks.iter().map(|n| n.bridge.as_str()).collect();
        let from = set(&bridges);
        let _ = writeln!(
            s,
            "\t\tiifname {from} ct state established,related accept comment \"guests: replies to the host\""
        );
        let _ = writeln!(
            s,
            "\t\tiifname {from} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept comment \"guests: address resolution\""
        );
        for network in networks {
            let Some((address, _)) = parse_subnet(&network.subnet) else { continue };
            let gateway = Ipv4Addr::from(u32::from(address) + 1);
            let b = &network.bridge;
            let _ = writeln!(
                s,
                "\t\tiifname \"{b}\" ip daddr {gateway} meta l4proto {{ tcp, udp }} th dport 53 accept comment \"guests on {b}: DNS\""
            );
            let _ = writeln!(
                s,
                "\t\tiifname \"{b}\" ip daddr {gateway} icmp type echo-request accept comment \"guests on {b}: ping the gateway\""
            );
        }
        let _ =
            writeln!(s, "\t\tiifname {from} counter drop comment \"guests reach nothing else on the host\"");
    }
    s.push_str("\t}\n");
}

/// `"a"` for one name, `{ "a", "b" }` for several.
fn set<S: AsRef<str>>(names: &[S]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{}\"", n.as_ref())).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("{{ {} }}", quoted.join(", ")),
    }
}

/// `a` for one value, `{ a, b }` for several, unquoted (MACs).
fn bare_set<S: AsRef<str>>(values: &[S]) -> String {
    let values: Vec<&str> = values.iter().map(AsRef::as_ref).collect();
    match values.as_slice() {
        [one] => (*one).to_owned(),
        _ => format!("{{ {} }}", values.join(", ")),
    }
}

/// The network address and prefix length of `ADDRESS/PREFIX`, host bits
/// cleared; `None` if it is not one.
fn parse_subnet(subnet: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = subnet.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Some((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

/// Checks a table name, which goes into the script unquoted and must start
/// with a letter for nft to read it as a name.
fn check_table(table: &str) -> Result<(), Error> {
    check_word("table name", table, (u8::is_ascii_alphabetic, "a letter"))
}

/// Checks a partition id, which goes inside a quoted comment.
fn check_id(id: &str) -> Result<(), Error> {
    check_word("partition id", id, (u8::is_ascii_alphanumeric, "a letter or digit"))
}

/// `first` says which bytes may start the word, and in words.
fn check_word(what: &'static str, word: &str, first: (fn(&u8) -> bool, &str)) -> Result<(), Error> {
    let ok = word.len() <= ID_MAX
        && word.bytes().next().is_some_and(|b| first.0(&b))
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        return Ok(());
    }
    Err(Error::Invalid {
        what,
        reason: format!(
            "`{word}` must be 1 to {ID_MAX} ASCII letters, digits, `-`, `_` or `.`, starting with {}",
            first.1
        ),
    })
}

/// Checks everything [`render`] puts in the script verbatim.
fn validate(desired: &Desired) -> Result<(), Error> {
    check_table(&desired.table)?;
    for (i, network) in desired.networks.iter().enumerate() {
        check_ifname(&network.bridge)?;
        if parse_subnet(&network.subnet).is_none() {
            return Err(Error::Invalid {
                what: "subnet",
                reason: format!("`{}` is not an IPv4 subnet like 10.200.0.0/24", network.subnet),
            });
        }
        if desired.networks[..i].iter().any(|n| n.bridge == network.bridge) {
            return Err(Error::Invalid {
                what: "networks",
                reason: format!("the bridge `{}` is listed twice", network.bridge),
            });
        }
    }
    for p in &desired.partitions {
        check_id(&p.id)?;
        p.from.iter().chain(&p.to).try_for_each(|tap| check_ifname(tap))?;
        p.from_remote.iter().chain(&p.to_remote).try_for_each(|mac| check_mac(mac))?;
    }
    for o in &desired.overlays {
        check_ifname(&o.device)?;
    }
    for l in &desired.losses {
        check_ifname(&l.tap)?;
        if !(0.0..=100.0).contains(&l.percent) {
            return Err(Error::Invalid {
                what: "loss",
                reason: format!("{}% is not between 0 and 100", l.percent),
            });
        }
    }
    Ok(())
}

/// Checks a MAC, which goes into the script unquoted.
fn check_mac(mac: &str) -> Result<(), Error> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Ok(());
    }
    Err(Error::Invalid {
        what: "MAC address",
        reason: format!("`{mac}` is not six hex pairs like 52:54:00:12:34:56"),
    })
}

fn nft(ns: &Netns, script: &str) -> Result<(), Error> {
    Cmd::new(ns, "nft").args(["-f", "-"]).run_with_stdin(Some(script))?;
    Ok(())
}
