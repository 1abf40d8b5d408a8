//! `/v1/hosts`: the daemons sharing the store, and which one leads.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

wire_enum! {
    /// A host's state, derived from the store, never reported by the host.
    HostState {
        /// Alive (its lease is renewed); new work may go there.
        Ready = "ready",
        /// Alive, but drained: no new work goes there.
        Draining = "draining",
        /// Its lease expired: it stopped, crashed or cannot reach the store.
        Lost = "lost",
    }
}

/// One host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub name: String,
    pub state: HostState,
    /// Whether it leads: the one host that notices lost hosts and acts on them.
    pub leader: bool,
    /// Where it can be reached (`api=ADDR`, `ingress=ADDR`).
    pub addresses: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    /// The machine backends it can run.
    pub backends: Vec<String>,
    /// hearth's version on it.
    pub version: String,
    /// Unix seconds of its last join.
    pub joined_at: u64,
    /// Unix milliseconds when the leader found it lost; null unless lost
    /// and noticed.
    pub lost_at_ms: Option<u64>,
    /// The machines that should be running on it.
    pub load: HostLoad,
}

/// What a host carries: its machines whose desired state is running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostLoad {
    pub machines: u32,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// `GET /v1/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostList {
    pub hosts: Vec<Host>,
    /// The host that answered.
    pub this: String,
}
