//! The wire types: one per request and response body.
//!
//! Request types refuse unknown fields, so a typo is an error rather than a
//! silently ignored option.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Declares a wire enum: a closed set of words, each written on the wire
/// as the string given, with `as_str`, `Display`, `FromStr` and comparison
/// with a `&str` (so `machine.state == "running"` reads as it did when the
/// field was a string).
macro_rules! wire_enum {
    // `$text` is a `tt`, not a `literal`: a `literal` reaches derive macros
    // wrapped in an invisible group, which utoipa does not look into, and
    // the document would name the variants instead of their words.
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:tt,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in the order the API documents them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as it is written on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, so that `{:<8}` lines up columns as a string would.
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;

            fn from_str(text: &str) -> Result<Self, UnknownValue> {
                $name::ALL.iter().copied().find(|v| v.as_str() == text).ok_or_else(|| UnknownValue {
                    what: stringify!($name),
                    value: text.to_owned(),
                    expected: $name::ALL.iter().map(|v| v.as_str()).collect(),
                })
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

/// A word that is none of a wire enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {what}: use one of {}", expected.join(", "))]
pub struct UnknownValue {
    /// The enum's name, e.g. `MachineState`.
    pub what: &'static str,
    /// The word that matched no value.
    pub value: String,
    /// The values there are.
    pub expected: Vec<&'static str>,
}

wire_enum! {
    /// The state store's backend.
    StoreBackend {
        /// The embedded store, one file in the data dir.
        Redb = "redb",
        /// An etcd cluster.
        Etcd = "etcd",
    }
}

wire_enum! {
    /// What runs a machine's VM.
    Backend {
        /// QEMU with software emulation (TCG): slow, runs anywhere.
        QemuTcg = "qemu-tcg",
        /// QEMU with KVM.
        QemuKvm = "qemu-kvm",
        /// Firecracker (needs KVM).
        Firecracker = "firecracker",
    }
}

wire_enum! {
    /// What the user asked of a machine.
    Desired {
        Running = "running",
        Stopped = "stopped",
    }
}

wire_enum! {
    /// Where a machine is in its life.
    MachineState {
        /// Recorded, not yet started.
        Created = "created",
        Starting = "starting",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Failed = "failed",
    }
}

wire_enum! {
    /// A lab's machine's state, or `missing` if it was removed behind the
    /// lab's back.
    LabMachineState {
        Created = "created",
        Starting = "starting",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Failed = "failed",
        /// The lab owns it, but it is gone.
        Missing = "missing",
    }
}

impl From<MachineState> for LabMachineState {
    fn from(state: MachineState) -> Self {
        match state {
            MachineState::Created => LabMachineState::Created,
            MachineState::Starting => LabMachineState::Starting,
            MachineState::Running => LabMachineState::Running,
            MachineState::Stopping => LabMachineState::Stopping,
            MachineState::Stopped => LabMachineState::Stopped,
            MachineState::Failed => LabMachineState::Failed,
        }
    }
}

wire_enum! {
    /// What a fault does.
    FaultKind {
        Partition = "partition",
        Delay = "delay",
        Loss = "loss",
    }
}

wire_enum! {
    /// Where an image came from.
    ImageSource {
        /// Pulled from a registry.
        Registry = "registry",
        /// Built with debootstrap.
        Debootstrap = "debootstrap",
    }
}

wire_enum! {
    /// Where a line of an app's log came from.
    LogStream {
        /// The app's standard output.
        Stdout = "stdout",
        /// The app's standard error.
        Stderr = "stderr",
        /// A request the app answered.
        Request = "request",
        /// hearth, about the app: deploys, traps, limits, denied calls.
        Hearth = "hearth",
    }
}

wire_enum! {
    /// Where a workflow run is in its life.
    RunStatus {
        Running = "running",
        Waiting = "waiting",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

wire_enum! {
    /// What started a workflow run.
    StartedBy {
        Cli = "cli",
        Api = "api",
        Webhook = "webhook",
        Cron = "cron",
        Event = "event",
        /// Another run, as its child.
        Child = "child",
    }
}

wire_enum! {
    /// Where a line of a run's log came from.
    RunLogSource {
        /// The durable `log` call.
        Log = "log",
        /// Standard output and standard error.
        Output = "output",
    }
}

wire_enum! {
    /// What fires a trigger.
    TriggerKind {
        /// A schedule.
        Cron = "cron",
        /// A change in hearth's store.
        Event = "event",
        /// An HTTP request.
        Webhook = "webhook",
    }
}

wire_enum! {
    /// Where a trigger comes from.
    TriggerSource {
        /// The active version's `hearth.toml`.
        Manifest = "manifest",
        /// Added through the API; removable.
        Api = "api",
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, in a stable machine-readable `code`, a sentence for
/// people, and a hint that says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable identifier, e.g. `invalid_field` or `not_found`.
    pub code: String,
    /// What was wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    pub store: StoreStatus,
    pub host: HostInfo,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    pub kvm: KvmInfo,
    /// `qemu-system-x86_64`, if installed.
    pub qemu: Option<ToolInfo>,
    /// `firecracker`, if installed.
    pub firecracker: Option<ToolInfo>,
    /// The backend new machines get unless one is forced.
    pub default_backend: Backend,
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

/// How a value is written on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The value is UTF-8 text, as is.
    #[default]
    Utf8,
    /// The value is bytes, base64-encoded (standard alphabet, padded).
    Base64,
}

impl Encoding {
    /// Encodes bytes for the wire: as text when they are UTF-8, else base64.
    pub fn encode(bytes: Vec<u8>) -> (String, Encoding) {
        match String::from_utf8(bytes) {
            Ok(text) => (text, Encoding::Utf8),
            Err(e) => (base64::engine::general_purpose::STANDARD.encode(e.into_bytes()), Encoding::Base64),
        }
    }

    /// Decodes a wire value back to bytes.
    pub fn decode(self, value: String) -> Result<Vec<u8>, base64::DecodeError> {
        match self {
            Encoding::Utf8 => Ok(value.into_bytes()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(value),
        }
    }
}

/// One key of the user key space (`/v1/kv`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KvEntry {
    pub key: String,
    pub value: String,
    pub encoding: Encoding,
    /// Revision at which the key was created.
    pub create_revision: u64,
    /// Revision of the key's last write.
    pub mod_revision: u64,
    /// Writes since creation.
    pub version: u64,
    /// The lease the key is attached to.
    pub lease: Option<u64>,
}

/// `GET /v1/kv?prefix=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KvList {
    /// The revision the list was read at.
    pub revision: u64,
    pub entries: Vec<KvEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KvListQuery {
    /// Only keys starting with this prefix.
    pub prefix: Option<String>,
}

/// `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutKv {
    pub value: String,
    #[serde(default)]
    pub encoding: Encoding,
    /// Attach the key to this lease: it is deleted when the lease expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Write only if the key's last write was at this revision
    /// (0: only if the key does not exist). Otherwise 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_mod_revision: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteKvQuery {
    /// Delete only if the key's last write was at this revision. Otherwise 409.
    pub if_mod_revision: Option<u64>,
}

/// The outcome of a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WriteResult {
    /// The store's revision after the write.
    pub revision: u64,
}

/// The outcome of a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeleteResult {
    /// The store's revision after the delete.
    pub revision: u64,
    /// Whether the key existed.
    pub deleted: bool,
}

/// `POST /v1/leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantLease {
    /// Seconds until the lease expires unless kept alive (1 to 2592000).
    pub ttl_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_secs: u64,
    /// Seconds left before expiry.
    pub remaining_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseList {
    pub leases: Vec<LeaseInfo>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

/// One change in the store, as `/v1/events` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeEvent {
    /// The revision of the change.
    pub revision: u64,
    pub kind: EventKind,
    /// The store key, e.g. `kv/greeting`.
    pub key: String,
    /// The new value (null for deletes).
    pub value: Option<String>,
    pub encoding: Encoding,
    /// Writes since the key was created (0 for deletes).
    pub version: u64,
}

/// `GET /v1/events` without `follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// The store's revision when the list was taken; follow from `revision + 1`.
    pub revision: u64,
    pub events: Vec<ChangeEvent>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Stream changes as server-sent events instead of returning a list.
    pub follow: Option<bool>,
    /// First revision to include; 0 is the oldest still retained. Default:
    /// the last `limit` revisions for a list, only new changes when
    /// following.
    pub since: Option<u64>,
    /// Only changes to keys starting with this prefix.
    pub prefix: Option<String>,
    /// At most this many events in a list (default 100, at most 10000).
    pub limit: Option<usize>,
}

/// A machine: what was asked for and what is observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    pub name: String,
    /// The image as named at creation.
    pub image: String,
    pub image_digest: String,
    pub backend: Backend,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The program started at boot, if any.
    pub entrypoint: Vec<String>,
    /// What the user asked for.
    pub desired: Desired,
    pub state: MachineState,
    /// What is happening now, while starting or stopping.
    pub phase: Option<String>,
    /// Why it is stopped or failed.
    pub reason: Option<String>,
    /// The VM process id.
    pub pid: Option<u32>,
    /// Milliseconds from launch to the agent's first answer, last boot.
    pub boot_ms: Option<u64>,
    /// The guest kernel release.
    pub kernel: Option<String>,
    pub auto_remove: bool,
    /// Network interfaces.
    pub nics: Vec<MachineNic>,
    /// Forwarded ports, `HOSTPORT:GUESTPORT[/udp]` on 127.0.0.1.
    pub ports: Vec<String>,
    /// The root disk's size in MiB; absent for machines made before disks
    /// could be sized, whose disks are their image's size.
    #[serde(default)]
    pub disk_mib: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    pub started_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachineNic {
    pub network: String,
    pub ip: String,
    pub mac: String,
    /// The host tap.
    pub tap: String,
    /// `MACHINE.NETWORK.hearth`.
    pub dns_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachineList {
    pub machines: Vec<Machine>,
}

/// `POST /v1/machines`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMachine {
    /// Lowercase letters, digits and dashes; generated if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An image name or digest, as `hearth image ls` shows.
    pub image: String,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Run this at boot instead of the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `qemu-tcg`, `qemu-kvm` or `firecracker`; default: the best this host can run.
    // A `Backend` on the wire, but a string here, so that the daemon rather
    // than the JSON parser answers a wrong one, with its hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Backend>)]
    pub backend: Option<String>,
    /// A bzImage on the daemon's host to boot instead of Debian's cloud kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Remove the machine when it stops.
    #[serde(default)]
    pub auto_remove: bool,
    /// Create without starting.
    #[serde(default)]
    pub no_start: bool,
    /// Networks to join (default: the `default` network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    /// Join no network at all.
    #[serde(default)]
    pub no_network: bool,
    /// Ports forwarded from the host's loopback: `HOSTPORT:GUESTPORT[/udp]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// The root disk's size in MiB, at least the image's; the root file
    /// system grows to fill it. Default: the image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
}

/// A network to join, optionally at a chosen address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttachment {
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveMachineQuery {
    /// Remove even if it is running (the VM is killed).
    pub force: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep streaming as the console grows.
    pub follow: Option<bool>,
    /// Only the last N lines first.
    pub tail: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// Absolute path in the guest.
    pub path: String,
    /// Permission bits for an upload, octal (default 644).
    pub mode: Option<String>,
}

/// The first byte of a binary exec message from the daemon whose rest is
/// the command's standard output.
pub const EXEC_STDOUT: u8 = 1;

/// The first byte of a binary exec message from the daemon whose rest is
/// the command's standard error.
pub const EXEC_STDERR: u8 = 2;

/// The response header of `GET /v1/machines/{name}/files` that carries
/// the file's permission bits, in octal.
pub const MODE_HEADER: &str = "x-hearth-mode";

/// The first message on an exec WebSocket (text, JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Allocate a terminal of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TermSize>,
    /// Whether the client will send stdin.
    #[serde(default)]
    pub stdin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// Control messages on an exec WebSocket (text, JSON), client to daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecControl {
    Resize(TermSize),
    Signal(i32),
    CloseStdin,
}

/// The last message on an exec WebSocket (text, JSON), daemon to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecEnd {
    Exit { code: Option<i32>, signal: Option<i32> },
    Error(ErrorDetail),
}

/// An image on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    pub name: String,
    pub digest: String,
    pub size_bytes: u64,
    pub source: ImageSource,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub images: Vec<ImageInfo>,
}

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// e.g. `debian:bookworm`, `ghcr.io/org/app:1.2`, `127.0.0.1:5000/test`.
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /v1/images/build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildImage {
    /// Only `debian` for now.
    pub distro: String,
    /// Default `bookworm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    /// The image's name; default `debian:SUITE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One progress report of a long operation (streamed as SSE `progress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// What is happening, e.g. `downloading sha256:ab12…`.
    pub message: String,
    /// Bytes or steps done, when known.
    pub done: Option<u64>,
    /// Bytes or steps in all, when known.
    pub total: Option<u64>,
}

/// A machine saved to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub name: String,
    /// The machine it was taken from.
    pub machine: String,
    pub image: String,
    pub backend: Backend,
    pub cpus: u32,
    pub memory_mib: u32,
    pub size_bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
}

/// `POST /v1/machines/{name}/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshot {
    /// The snapshot's name.
    pub name: String,
}

/// `POST /v1/snapshots/{name}/restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshot {
    /// The new machine's name; default: the machine the snapshot was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub name: String,
    pub subnet: String,
    pub gateway: String,
    /// The host bridge.
    pub bridge: String,
    pub nat: bool,
    /// Machines on it, with their addresses.
    pub machines: Vec<NetworkMember>,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkMember {
    pub machine: String,
    pub ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkList {
    pub networks: Vec<Network>,
}

/// `POST /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: String,
    /// e.g. `10.250.0.0/24`; default: the next free /24 from 10.200.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Reach the outside through NAT (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<bool>,
}

/// A fault, as injected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Fault {
    pub id: String,
    pub kind: FaultKind,
    /// A readable summary, e.g. `delay n1 100ms ±10ms`.
    pub description: String,
    /// Unix seconds at which it heals itself, if it does.
    pub expires_at: Option<u64>,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FaultList {
    pub faults: Vec<Fault>,
}

/// `POST /v1/faults`: exactly one of `partition`, `delay`, `loss`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossFault>,
    /// Heal automatically after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_secs: Option<u64>,
}

/// Traffic from `from` to `machines` is dropped; with `both_ways`, back too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionFault {
    pub machines: Vec<String>,
    pub from: Vec<String>,
    #[serde(default = "yes")]
    pub both_ways: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayFault {
    pub machine: String,
    pub delay_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LossFault {
    pub machine: String,
    pub percent: f32,
}

/// How many faults were healed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Healed {
    pub healed: usize,
}

/// `PUT /v1/apps/{name}`: a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployApp {
    /// The component (`wasm32-wasip2`, exporting `wasi:http/incoming-handler`), base64.
    pub component_base64: String,
    /// The `hearth.toml` beside it, if any: key-value stores, config, secrets, outbound hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// `HOST[/PATH]` routes besides `NAME.localhost`; empty keeps the current ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppVersion {
    pub number: u32,
    pub sha256: String,
    pub size: u64,
    /// Unix milliseconds.
    pub created_at: u64,
    /// The manifest text it was deployed with.
    pub manifest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeployResult {
    pub app: String,
    pub version: AppVersion,
    /// False when the compiled code came from the cache.
    pub compiled: bool,
    /// From the request to the new version serving.
    pub duration_ms: f64,
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppSummary {
    pub name: String,
    /// The version that serves.
    pub active: u32,
    /// How many versions are kept.
    pub version_count: usize,
    pub routes: Vec<String>,
    pub urls: Vec<String>,
    /// The version this daemon serves, if loaded.
    pub serving: Option<u32>,
    /// Why it is not serving, if it is not.
    pub error: Option<String>,
    /// Unix milliseconds.
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<AppSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppDetail {
    #[serde(flatten)]
    pub summary: AppSummary,
    pub versions: Vec<AppVersion>,
}

/// `POST /v1/apps/{name}/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version to serve; default: the one before the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
}

/// `PUT /v1/apps/{name}/secrets/{secret}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppLogLine {
    /// Unix milliseconds.
    pub time: u64,
    pub version: u32,
    pub stream: LogStream,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppLogs {
    pub lines: Vec<AppLogLine>,
}

// ---------------------------------------------------------------------------
// Workflows

/// `PUT /v1/workflows/{name}`: a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployWorkflow {
    /// The component (`wasm32-wasip2`, the `hearth:workflow/workflow` world), base64.
    pub component_base64: String,
    /// The `hearth.toml` beside it, if any: its webhook, cron and event triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowVersion {
    pub number: u32,
    pub sha256: String,
    pub size: u64,
    /// Unix milliseconds.
    pub created_at: u64,
    pub manifest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowDeployed {
    pub workflow: String,
    pub version: WorkflowVersion,
    /// False when the compiled component came from the cache.
    pub compiled: bool,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowSummary {
    pub name: String,
    /// The version new runs start on.
    pub active: u32,
    pub versions: Vec<WorkflowVersion>,
    /// Webhook URLs, one per declared webhook.
    pub webhooks: Vec<String>,
    /// `SCHEDULE (TIMEZONE)`, one per cron trigger.
    pub crons: Vec<String>,
    /// Store key prefixes that start runs.
    pub events: Vec<String>,
    /// Unix milliseconds.
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummary>,
}

/// `POST /v1/workflows/{name}/runs`: start a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The run's input (JSON is usual); empty by default.
    #[serde(default)]
    pub input: String,
    /// Starting twice with one id starts one run; default: a new id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub workflow: String,
    /// The version it runs on.
    pub version: u32,
    pub status: RunStatus,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    /// What it waits for, in words, while `waiting`.
    pub waiting_for: Option<String>,
    /// When the wait ends (a timer, or a timeout), Unix milliseconds.
    pub deadline: Option<u64>,
    pub started_by: StartedBy,
    pub parent: Option<String>,
    /// Times an instance ran it.
    pub executions: u32,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    pub finished_at: Option<u64>,
}

/// `POST /v1/workflows/{name}/runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunStarted {
    #[serde(flatten)]
    pub run: RunSummary,
    /// False when a run with that id already existed.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunSummary>,
}

/// One step of a run's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JournalStep {
    pub seq: u32,
    /// When it was recorded, Unix milliseconds.
    pub at: u64,
    /// The call, in words: `sleep(5m)`, `http-call(POST http://...)`.
    pub call: String,
    /// Its result, in words.
    pub outcome: String,
    /// The entry as stored.
    #[schema(value_type = Object)]
    pub entry: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PendingSignal {
    pub name: String,
    pub data: String,
    /// Unix milliseconds.
    pub sent_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunSummary,
    pub journal: Vec<JournalStep>,
    /// Signals sent that no step has taken yet.
    pub pending_signals: Vec<PendingSignal>,
}

/// `GET /v1/runs` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Only runs with this status.
    pub status: Option<String>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
}

/// `POST /v1/runs/{id}/signals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendSignal {
    pub name: String,
    #[serde(default)]
    pub data: String,
}

/// `POST /v1/runs/{id}/migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRun {
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunLogLine {
    /// Unix milliseconds.
    pub time: u64,
    pub source: RunLogSource,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunLogs {
    pub lines: Vec<RunLogLine>,
}

/// `GET /v1/runs/{id}/result`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ResultQuery {
    /// How long to wait for the run to end, in milliseconds (at most 60000;
    /// default 30000). The answer is the run as it is then.
    pub timeout_ms: Option<u64>,
}

/// A trigger to add to an app or a workflow (`POST
/// /v1/apps/{name}/triggers`, `POST /v1/workflows/{name}/triggers`). The
/// fields that apply depend on `kind`:
///
/// - `cron`: `schedule` (five fields, or six with seconds first), `timezone`
///   (default UTC); for an app `path` (the route POSTed to, default `/`) and
///   `body`; for a workflow `input`.
/// - `event`: `prefix` (of keys in hearth's store), `kinds` (`put`,
///   `delete`; default both); for an app `path`.
/// - `webhook`: for an app, `path` (deliveries under it are handled once
///   per `Idempotency-Key`) and an optional `secret` (then they must be
///   signed); for a workflow, `path` (the last part of
///   `http://hooks.DOMAIN/WORKFLOW/PATH`), optional `secret` and `signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    pub kind: TriggerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    /// Write-only: never listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

impl TriggerBody {
    /// A trigger of this kind with every other field unset.
    pub fn new(kind: TriggerKind) -> Self {
        TriggerBody {
            kind,
            schedule: None,
            timezone: None,
            path: None,
            body: None,
            input: None,
            prefix: None,
            kinds: None,
            secret: None,
            signal: None,
        }
    }
}

/// A trigger of an app or workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TriggerInfo {
    /// `cron-0`, `event-0`, `webhook-0`… for the manifest's, by kind and
    /// position; `t-HEX` for those added through the API.
    pub id: String,
    pub source: TriggerSource,
    /// What it does; `secret` is left out.
    #[serde(flatten)]
    pub spec: TriggerBody,
    /// Whether requests must be signed (a webhook with a secret).
    pub signed: bool,
    /// Unix milliseconds.
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TriggerList {
    pub triggers: Vec<TriggerInfo>,
}

// ---------------------------------------------------------------------------
// Labs

/// `PUT /v1/labs/{name}`: records a lab, or replaces its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutLab {
    /// The lab's name; the same as in the path.
    pub name: String,
    /// The lab file it came from, as the CLI's user named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The lab file's text (TOML).
    pub source: String,
    /// The machines the lab owns: `down` removes them.
    #[serde(default)]
    pub machines: Vec<String>,
    /// The networks the lab created: `down` removes them. Networks it only
    /// joins (made by someone else) are not listed.
    #[serde(default)]
    pub networks: Vec<String>,
}

/// A lab, with the state of its machines now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lab {
    pub name: String,
    pub file: Option<String>,
    /// The lab file's text, as last brought up.
    pub source: String,
    pub machines: Vec<LabMachine>,
    /// The networks the lab created.
    pub networks: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last `lab up`.
    pub updated_at: u64,
}

/// One of a lab's machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LabMachine {
    pub name: String,
    pub state: LabMachineState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LabList {
    pub labs: Vec<Lab>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteLabQuery {
    /// Also remove the lab's machines (killed if running) and the networks
    /// it created; without it only the record goes.
    pub down: Option<bool>,
}

/// What `DELETE /v1/labs/{name}` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LabDown {
    pub name: String,
    pub removed_machines: Vec<String>,
    pub removed_networks: Vec<String>,
    /// What was left alone, and why.
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use serde::de::DeserializeOwned;

    use super::*;

    /// Each value is written as its word, read back from it, and parsed
    /// from it; the words are the strings these fields held before they
    /// were enums.
    fn check<T>(all: &[T], words: &[&str])
    where
        T: Serialize
            + DeserializeOwned
            + FromStr<Err = UnknownValue>
            + fmt::Display
            + fmt::Debug
            + Copy
            + PartialEq,
    {
        let written: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(written, words);
        for value in all {
            let json = serde_json::to_string(value).expect("serialize");
            assert_eq!(json, format!("\"{value}\""));
            assert_eq!(serde_json::from_str::<T>(&json).expect("deserialize"), *value);
            assert_eq!(value.to_string().parse::<T>().expect("parse"), *value);
        }
    }

    #[test]
    fn wire_enums_are_written_as_the_words_they_replaced() {
        check(StoreBackend::ALL, &["redb", "etcd"]);
        check(Backend::ALL, &["qemu-tcg", "qemu-kvm", "firecracker"]);
        check(Desired::ALL, &["running", "stopped"]);
        check(MachineState::ALL, &["created", "starting", "running", "stopping", "stopped", "failed"]);
        check(
            LabMachineState::ALL,
            &["created", "starting", "running", "stopping", "stopped", "failed", "missing"],
        );
        check(FaultKind::ALL, &["partition", "delay", "loss"]);
        check(ImageSource::ALL, &["registry", "debootstrap"]);
        check(LogStream::ALL, &["stdout", "stderr", "request", "hearth"]);
        check(RunStatus::ALL, &["running", "waiting", "completed", "failed", "cancelled"]);
        check(StartedBy::ALL, &["cli", "api", "webhook", "cron", "event", "child"]);
        check(RunLogSource::ALL, &["log", "output"]);
        check(TriggerKind::ALL, &["cron", "event", "webhook"]);
        check(TriggerSource::ALL, &["manifest", "api"]);
    }

    #[test]
    fn lab_machines_have_every_machine_state() {
        for state in MachineState::ALL {
            assert_eq!(LabMachineState::from(*state).as_str(), state.as_str());
        }
    }

    #[test]
    fn enums_compare_with_words_and_pad_like_strings() {
        assert!(MachineState::Running == "running");
        assert!(MachineState::Running != "stopped");
        assert_eq!(format!("[{:<8}]", LogStream::Stdout), "[stdout  ]");
        let error = "vmware".parse::<Backend>().expect_err("not a backend");
        assert_eq!(
            error.to_string(),
            "\"vmware\" is not a Backend: use one of qemu-tcg, qemu-kvm, firecracker"
        );
    }

    #[test]
    fn an_unknown_word_is_refused_when_read() {
        let error = serde_json::from_str::<MachineState>("\"paused\"").expect_err("not a state");
        assert!(error.to_string().contains("unknown variant `paused`"), "{error}");
    }
}
