//! The wire types: one per request and response body.
//!
//! Request types refuse unknown fields, so a typo is an error rather than a
//! silently ignored option.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    pub store: StoreStatus,
    pub host: HostInfo,
}

/// The state store, as seen by `hearth status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoreStatus {
    /// `redb` for the embedded store, `etcd` for a cluster.
    pub backend: String,
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

impl From<hearth_machines::probe::HostReport> for HostInfo {
    fn from(report: hearth_machines::probe::HostReport) -> Self {
        let tool = |t: hearth_machines::probe::Tool| ToolInfo {
            path: t.path.display().to_string(),
            version: t.version,
        };
        HostInfo {
            kvm: KvmInfo {
                present: report.kvm.present,
                accessible: report.kvm.accessible,
                usable: report.kvm.usable,
                detail: report.kvm.detail,
            },
            qemu: report.qemu.map(tool),
            firecracker: report.firecracker.map(tool),
        }
    }
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

impl From<hearth_store::Event> for ChangeEvent {
    fn from(event: hearth_store::Event) -> Self {
        let revision = event.revision();
        let kind = match event.kind {
            hearth_store::EventKind::Put => EventKind::Put,
            hearth_store::EventKind::Delete => EventKind::Delete,
        };
        let (value, encoding) = match kind {
            EventKind::Put => {
                let (value, encoding) = Encoding::encode(event.kv.value);
                (Some(value), encoding)
            }
            EventKind::Delete => (None, Encoding::Utf8),
        };
        ChangeEvent { revision, kind, key: event.kv.key, value, encoding, version: event.kv.version }
    }
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
    /// First revision to include. Default: the last `limit` revisions for a
    /// list, only new changes when following.
    pub since: Option<u64>,
    /// Only changes to keys starting with this prefix.
    pub prefix: Option<String>,
    /// At most this many events in a list (default 100, at most 10000).
    pub limit: Option<usize>,
}
