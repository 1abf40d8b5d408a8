//! The key-value API over hearth's store, and leases.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
    #[schema(minimum = 1, maximum = 2592000)]
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
