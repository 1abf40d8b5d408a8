//! Bridges and taps, through iproute2.
//!
//! Every function is idempotent: it looks at what exists, changes only what
//! differs from what was asked, and treats "already there" (or, for
//! deletion, "already gone") as success. That lets the daemon call them again
//! after a restart without remembering what it did before.

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::cmd::{Cmd, check_ifname, stderr};
pub use crate::cmd::{Error, Netns};

/// The longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// Hex digits of the hash that [`iface_name`] appends to names it shortens.
const HASH_LEN: usize = 6;

/// The interface name for `name` under `prefix`: `prefix + name` when that
/// fits in [`IFNAME_MAX`] bytes and uses only `[a-z0-9-]`; otherwise the
/// prefix, as many (lowercased, `-` for anything else) characters of `name`
/// as fit, `-`, and a 6-hex-digit hash of `name`, so that long names sharing
/// a beginning still get distinct interfaces.
///
/// Deterministic across runs and builds (the hash is FNV-1a, not std's
/// randomised hasher): the daemon finds a machine's tap again after a
/// restart by recomputing its name. A prefix longer than 8 bytes is cut to 8
/// so that the hash always fits.
pub fn iface_name(prefix: &str, name: &str) -> String {
    let prefix: String = sanitize(prefix).take(IFNAME_MAX - 1 - HASH_LEN).collect();
    let clean = name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    if clean && prefix.len() + name.len() <= IFNAME_MAX {
        return format!("{prefix}{name}");
    }
    let room = IFNAME_MAX - prefix.len() - 1 - HASH_LEN;
    let head: String = sanitize(name).take(room).collect();
    format!("{prefix}{head}-{:0width$x}", fnv1a(name.as_bytes()) & 0xff_ffff, width = HASH_LEN)
}

fn sanitize(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' }
    })
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| (hash ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Makes `bridge` exist as a bridge with exactly `gateway/prefix_len` as its
/// IPv4 address, and up. Addresses left from an earlier subnet are removed.
pub fn ensure_bridge(ns: &Netns, bridge: &str, gateway: Ipv4Addr, prefix_len: u8) -> Result<(), Error> {
    check_ifname(bridge)?;
    if prefix_len > 32 {
        return Err(Error::Invalid {
            what: "prefix length",
            reason: format!("/{prefix_len} is longer than 32 bits"),
        });
    }
    ensure_link(ns, bridge, "bridge", &["link", "add", "name", bridge, "type", "bridge"])?;

    let want = (gateway, prefix_len);
    for stale in ipv4_addresses(ns, bridge)?.into_iter().filter(|a| *a != want) {
        Cmd::new(ns, "ip").args(["addr", "del", &format!("{}/{}", stale.0, stale.1), "dev", bridge]).run()?;
    }
    Cmd::new(ns, "ip").args(["addr", "replace", &format!("{gateway}/{prefix_len}"), "dev", bridge]).run()?;
    Cmd::new(ns, "ip").args(["link", "set", "dev", bridge, "up"]).run()?;
    Ok(())
}

/// Makes `tap` exist as a persistent tap (one a VMM can open later), enslaved
/// to `bridge`, and up. The bridge must exist.
pub fn ensure_tap(ns: &Netns, tap: &str, bridge: &str) -> Result<(), Error> {
    check_ifname(tap)?;
    check_ifname(bridge)?;
    ensure_link(ns, tap, "tun", &["tuntap", "add", "dev", tap, "mode", "tap"])?;
    Cmd::new(ns, "ip").args(["link", "set", "dev", tap, "master", bridge, "up"]).run()?;
    Ok(())
}

/// Deletes the link `name`; a link that does not exist is already deleted.
pub fn delete_link(ns: &Netns, name: &str) -> Result<(), Error> {
    check_ifname(name)?;
    let cmd = Cmd::new(ns, "ip").args(["link", "del", "dev", name]);
    let output = cmd.output(None)?;
    if output.status.success() || is_absent(&stderr(&output)) {
        return Ok(());
    }
    Err(cmd.failed(&output))
}

/// The names of all links starting with `prefix`, sorted: what hearth owns,
/// for cleanup and leak checks.
pub fn links_with_prefix(ns: &Netns, prefix: &str) -> Result<Vec<String>, Error> {
    let cmd = Cmd::new(ns, "ip").args(["-j", "link", "show"]);
    let links: Vec<Link> = parse_json(&cmd, &cmd.run()?)?;
    let mut names: Vec<String> =
        links.into_iter().map(|l| l.ifname).filter(|n| n.starts_with(prefix)).collect();
    names.sort();
    Ok(names)
}

/// Turns on IPv4 forwarding in the namespace, which NAT and routing between
/// a network and the outside need.
pub fn enable_ip_forwarding(ns: &Netns) -> Result<(), Error> {
    Cmd::new(ns, "sysctl").args(["-q", "-w", "net.ipv4.ip_forward=1"]).run()?;
    Ok(())
}

#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
}

#[derive(Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

#[derive(Deserialize)]
struct AddrLink {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    local: Ipv4Addr,
    prefixlen: u8,
}

/// Creates `name` with `create` (an `ip` command line) unless a link of
/// `kind` already has that name; a link of another kind is an error, since
/// quietly reusing it would wire the wrong thing into a network.
fn ensure_link(ns: &Netns, name: &str, kind: &'static str, create: &[&str]) -> Result<(), Error> {
    let check = |found: Option<String>| match found {
        Some(found) if found != kind => {
            Err(Error::WrongKind { name: name.to_owned(), found, expected: kind })
        }
        found => Ok(found.is_some()),
    };
    if check(link_kind(ns, name)?)? {
        return Ok(());
    }
    let cmd = Cmd::new(ns, "ip").args(create);
    let output = cmd.output(None)?;
    if output.status.success() {
        return Ok(());
    }
    // Someone else may have created it between our look and our add.
    if stderr(&output).contains("File exists") && check(link_kind(ns, name)?)? {
        return Ok(());
    }
    Err(cmd.failed(&output))
}

/// The kind of link `name` is (`bridge`, `tun`, `veth`, or `device` for a
/// plain one), or `None` if there is none.
fn link_kind(ns: &Netns, name: &str) -> Result<Option<String>, Error> {
    let cmd = Cmd::new(ns, "ip").args(["-d", "-j", "link", "show", "dev", name]);
    let output = cmd.output(None)?;
    if !output.status.success() {
        return if is_absent(&stderr(&output)) { Ok(None) } else { Err(cmd.failed(&output)) };
    }
    let links: Vec<Link> = parse_json(&cmd, &String::from_utf8_lossy(&output.stdout))?;
    Ok(links
        .into_iter()
        .next()
        .map(|link| link.linkinfo.and_then(|info| info.info_kind).unwrap_or_else(|| "device".to_owned())))
}

fn ipv4_addresses(ns: &Netns, name: &str) -> Result<Vec<(Ipv4Addr, u8)>, Error> {
    let cmd = Cmd::new(ns, "ip").args(["-j", "-4", "addr", "show", "dev", name]);
    let links: Vec<AddrLink> = parse_json(&cmd, &cmd.run()?)?;
    Ok(links.into_iter().flat_map(|l| l.addr_info).map(|a| (a.local, a.prefixlen)).collect())
}

pub(crate) fn is_absent(stderr: &str) -> bool {
    stderr.contains("Cannot find device") || stderr.contains("does not exist")
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(cmd: &Cmd, stdout: &str) -> Result<T, Error> {
    // Some iproute2 versions print nothing rather than `[]` when there is
    // nothing to show.
    let stdout = if stdout.trim().is_empty() { "[]" } else { stdout };
    serde_json::from_str(stdout).map_err(|e| Error::Output { command: cmd.display(), reason: e.to_string() })
}
