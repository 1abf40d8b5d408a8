//! `GET /v1/status`: the daemon, its store and its host.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Backend;

wire_enum! {
    /// The state store's backend.
    StoreBackend {
        /// The embedded store, one file in the data dir.
        Redb = "redb",
        /// An etcd cluster.
        Etcd = "etcd",
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    /// The daemon's data directory.
    pub data_dir: String,
    /// The Unix socket the API is served on.
    pub socket: String,
    /// The TCP address the API is also served on, if any.
    pub tcp: Option<String>,
    /// Where apps answer HTTP, e.g. `127.0.0.1:8080`.
    pub ingress: Option<String>,
    pub dns: DnsStatus,
    /// The web dashboard (`hearth ui` prints a sign-in link).
    #[serde(default)]
    pub ui: UiStatus,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    pub store: StoreStatus,
    pub host: HostInfo,
    /// This host among the hosts sharing the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// This host among the hosts sharing the store (`GET /v1/hosts` lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// The name this host goes by.
    pub host: String,
    /// The host that leads now, if one does.
    pub leader: Option<String>,
    /// Hosts known to the store, and how many of them are lost.
    pub hosts: u32,
    pub lost: u32,
}

/// The web dashboard (`hearth serve --ui`): where it answers, or why it
/// does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UiStatus {
    /// `http://127.0.0.1:PORT/ui/`.
    pub url: Option<String>,
    pub problem: Option<String>,
}

/// The host's DNS listener (`hearth serve --dns`): `.hearth` names, such as
/// `NAME.service.hearth` and `_NAME._tcp.service.hearth`, for programs on
/// the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DnsStatus {
    /// The address it answers on, over UDP and TCP, e.g. `127.0.0.1:8600`;
    /// null if it does not listen.
    pub listen: Option<String>,
    /// Why it does not listen (switched off, or its port was taken); null
    /// if it listens.
    pub problem: Option<String>,
}

/// The state store, as seen by `hearth status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoreStatus {
    pub backend: StoreBackend,
    /// Where the store lives: a file path or etcd endpoints.
    pub location: String,
    /// The current revision.
    pub revision: u64,
    /// The oldest revision a watch can start from.
    pub compacted_revision: u64,
}

/// What this host can run guests with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    pub kvm: KvmInfo,
    /// `qemu-system-x86_64`, if installed.
    pub qemu: Option<ToolInfo>,
    /// `firecracker`, if installed.
    pub firecracker: Option<ToolInfo>,
    /// The backend new machines get unless one is forced.
    pub default_backend: Backend,
    /// CPU, memory and disk, read when the status was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<HostResources>,
}

/// What the host has and uses now: its CPUs and their load, its memory,
/// and the disk that holds the data dir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostResources {
    /// CPUs the daemon may run on.
    pub cpus: u32,
    /// The load average over 1, 5 and 15 minutes (runnable threads).
    pub load: [f64; 3],
    pub memory_total_bytes: u64,
    /// Memory the kernel could give to new work without swapping.
    pub memory_available_bytes: u64,
    /// The file system of the data dir.
    pub disk_total_bytes: u64,
    /// Free to unprivileged users, as `df` shows it.
    pub disk_available_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KvmInfo {
    /// `/dev/kvm` exists.
    pub present: bool,
    /// The daemon can open `/dev/kvm`.
    pub accessible: bool,
    /// A test guest booted under KVM within its deadline; null if not probed.
    pub usable: Option<bool>,
    /// What this means for you.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ToolInfo {
    pub path: String,
    pub version: Option<String>,
}
