//! Hosts as records in the store.
//!
//! - `hosts/records/NAME`: what the host is ([`HostRecord`]), written by
//!   the host when it joins and kept after it goes, so that a host that
//!   stopped is still known, as lost.
//! - `hosts/alive/NAME`: attached to the host's lease ([`Alive`]); it
//!   exists exactly while the host renews its lease. A host is never
//!   *reported* lost: it is lost because this key went.
//! - `hosts/lost/NAME`: when and why the leader found the host lost
//!   ([`Lost`]), written by the leader, removed by the host when it joins
//!   again.
//! - `hosts/leader`: the leader's name, attached to its lease; the key's
//!   create revision is the leader's fencing token.

use serde::{Deserialize, Serialize};

/// Everything about hosts is under this prefix.
pub const PREFIX: &str = "hosts/";
/// Host records.
pub const RECORDS: &str = "hosts/records/";
/// Hosts alive now: one key per host, attached to its lease.
pub const ALIVE: &str = "hosts/alive/";
/// Hosts the leader found lost.
pub const LOST: &str = "hosts/lost/";
/// The leader's key.
pub const LEADER: &str = "hosts/leader";

pub fn record_key(name: &str) -> String {
    format!("{RECORDS}{name}")
}

pub fn alive_key(name: &str) -> String {
    format!("{ALIVE}{name}")
}

pub fn lost_key(name: &str) -> String {
    format!("{LOST}{name}")
}

/// A host, as it describes itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// Where the host can be reached: its API's TCP address and its apps
    /// ingress, when it has them (`api=ADDR`, `ingress=ADDR`).
    pub addresses: Vec<String>,
    pub capacity: Capacity,
    /// The machine backends it can run (`qemu-tcg`, `qemu-kvm`,
    /// `firecracker`), as probed at start and after the KVM probe.
    pub backends: Vec<String>,
    /// hearth's version on the host.
    pub version: String,
    /// Unix seconds of the host's last join.
    pub joined_at: u64,
    /// Set by `hearth host drain`: no new work is placed on the host, and
    /// the leader moves what it can away. Kept across the host's restarts.
    #[serde(default)]
    pub draining: bool,
}

/// What a host offers to machines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// The value of a host's alive key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alive {
    /// The lease the key hangs on.
    pub lease: u64,
    /// Unix milliseconds of the join.
    pub since_ms: u64,
}

/// Why the leader took a host for lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// Unix milliseconds when the leader saw the host's alive key go.
    pub at_ms: u64,
    /// The leader that saw it.
    pub by: String,
}

/// A host's state, derived from the store, never self-reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Alive, and new work may be placed on it.
    Ready,
    /// Alive, but drained: nothing new goes there.
    Draining,
    /// Its lease expired (or it never came back after a restart).
    Lost,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Draining => "draining",
            State::Lost => "lost",
        }
    }
}

/// A host as the registry sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub record: HostRecord,
    pub state: State,
    /// Whether it holds the leader's key.
    pub leader: bool,
    /// Set while lost, once the leader noticed.
    pub lost: Option<Lost>,
}
