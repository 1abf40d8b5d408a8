//! A machine's record in the store, at `machines/NAME`: what the user asked
//! for (the spec and the desired state) and what hearth observed (the status).
//!
//! The API writes the spec and the desired state; the machines service
//! writes the status. Both update with compare-and-swap on the record's
//! revision, so neither overwrites the other.

use serde::{Deserialize, Serialize};

use crate::vmm::Backend;

/// The store prefix of machine records.
pub const PREFIX: &str = "machines/";

/// The store key of a machine's record.
pub fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// A machine, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub name: String,
    pub spec: Spec,
    pub desired: Desired,
    pub status: Status,
    /// Unix seconds.
    pub created_at: u64,
}

/// What the user asked for when creating the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// The image as the user named it.
    pub image: String,
    /// The image's digest, pinned at creation.
    pub image_digest: String,
    pub backend: Backend,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The program started at boot (from the image or `-- CMD`), if any.
    pub entrypoint: Vec<String>,
    /// Environment for the entrypoint and for `exec`, `KEY=VALUE`.
    pub env: Vec<String>,
    /// A user-supplied kernel instead of the default.
    pub kernel: Option<String>,
    /// Remove the machine when it stops.
    pub auto_remove: bool,
    /// Network interfaces, one per network, with their addresses.
    #[serde(default)]
    pub nics: Vec<hearth_net::record::Nic>,
    /// Ports forwarded from the host's loopback.
    #[serde(default)]
    pub ports: Vec<hearth_net::service::PortSpec>,
    /// The root disk's size in MiB; the guest grows its root file system to
    /// fill it. `None`: the image's own size (and records from before
    /// `--disk-size`, whose disks are that size).
    #[serde(default)]
    pub disk_mib: Option<u64>,
}

/// The state the user wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

/// What hearth last observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    /// What is happening now, while starting or stopping ("booting the kernel").
    pub phase: Option<String>,
    /// Why the machine is stopped or failed, as a sentence with what to do.
    pub reason: Option<String>,
    /// The VMM process.
    pub pid: Option<u32>,
    /// Milliseconds from launch to the agent's answer, for the last boot.
    pub boot_ms: Option<u64>,
    /// The guest's kernel release, from the agent.
    pub kernel: Option<String>,
    /// Unix seconds of the last start.
    pub started_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded, not yet started.
    #[default]
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    /// The machine has no VM process and none is being started.
    pub fn is_down(self) -> bool {
        matches!(self, State::Stopped | State::Failed)
    }
}

/// The store prefix of snapshot records.
pub const SNAPSHOT_PREFIX: &str = "snapshots/";

/// The store key of a snapshot's record.
pub fn snapshot_key(name: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{name}")
}

/// A machine saved to disk: its memory and device state, and its disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    /// The machine it was taken from.
    pub machine: String,
    /// The machine's spec: a restore must recreate the same virtual hardware.
    pub spec: Spec,
    /// Bytes on disk (state and disk overlay).
    pub size_bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
}

/// Checks a machine name: it becomes a host name and a directory name.
pub fn validate_name(name: &str) -> Result<(), String> {
    hearth_store::names::check_label("machine", name, 63)
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_host_names() {
        for good in ["n1", "raft-node-3", "a", &"x".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "N1", "-a", "a-", "a_b", "a.b", "a/b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
