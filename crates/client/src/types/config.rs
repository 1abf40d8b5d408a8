//! `/v1/config`: layered configuration, its history, schemas and key.
//!
//! A secret's value never crosses the wire: it shows as `"(secret)"` with
//! `secret: true`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

wire_enum! {
    /// What changed in a history record or a diff.
    ConfigChangeKind {
        /// A value of a layer.
        Value = "value",
        /// The JSON Schema of a prefix.
        Schema = "schema",
    }
}

wire_enum! {
    /// What happened to a key, in `/v1/config/watch`.
    ConfigEventKind {
        Set = "set",
        Removed = "removed",
    }
}

/// `GET /v1/config`: a scope's merged config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigQuery {
    /// `global` (the default), `app:NAME`, `service:NAME`, `machine:NAME` or `workflow:NAME`.
    pub scope: Option<String>,
    /// Only the part under this dotted key.
    pub prefix: Option<String>,
}

/// A scope's merged config, and where each key came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigView {
    pub scope: String,
    /// The store revision the view was read at.
    pub revision: u64,
    pub prefix: String,
    /// The merged value under `prefix` (a table at the root); absent when nothing is set there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Each leaf under `prefix`, with the layer it came from.
    pub keys: Vec<ConfigKeySource>,
}

/// One leaf of a merged view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigKeySource {
    pub key: String,
    pub value: Value,
    /// `files`, `global`, `app:NAME`..., `override`, or the app's or workflow's `hearth.toml`.
    pub layer: String,
    /// The file it was imported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub secret: bool,
}

/// `GET /v1/config/entries`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigEntriesQuery {
    /// Only this layer: `files`, `global`, `app:NAME`, ..., `override`.
    pub layer: Option<String>,
    /// Only keys under this dotted key.
    pub prefix: Option<String>,
}

/// The leaves of the layers, as set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigEntryList {
    pub entries: Vec<ConfigEntry>,
}

/// One leaf of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigEntry {
    pub layer: String,
    pub key: String,
    pub value: Value,
    pub secret: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The revision of its last change.
    pub revision: u64,
}

/// Which layer a write goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigLayerQuery {
    /// `global` (the default), `app:NAME`, `service:NAME`, `machine:NAME`, `workflow:NAME` or `override`.
    pub layer: Option<String>,
}

/// `PUT /v1/config/entries/{key}`: exactly one of `text` and `value`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// The value as a person types it: a TOML value (`5`, `"text"`, `{ a = 1 }`), or one bare word
    /// as a string. For a secret, the text itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The value as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Encrypt it: it is never shown again, only delivered.
    #[serde(default)]
    pub secret: bool,
}

/// What a config write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConfigWritten {
    /// The store revision of the change.
    pub revision: u64,
}

/// `PUT /v1/config/files`: the `files` layer, replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// Merged in this order, a later file winning.
    pub files: Vec<ConfigFile>,
}

/// A file to import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Its name: `.json` is JSON, anything else TOML.
    pub name: String,
    pub text: String,
}

/// `GET /v1/config/history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigHistoryQuery {
    /// Only changes to keys under this dotted key.
    pub prefix: Option<String>,
    /// At most this many changes, newest first (default 50).
    pub limit: Option<usize>,
}

/// Changes, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigHistory {
    pub entries: Vec<ConfigHistoryEntry>,
}

/// One committed change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigHistoryEntry {
    pub revision: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub changes: Vec<ConfigChange>,
}

/// One leaf (or schema) that changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigChange {
    pub kind: ConfigChangeKind,
    /// The layer, for a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// The key, or the schema's prefix.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    pub secret: bool,
}

/// `GET /v1/config/diff`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigDiffQuery {
    pub from: u64,
    /// Now, when absent.
    pub to: Option<u64>,
}

/// What differs between two revisions, leaf by leaf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigDiff {
    pub from: u64,
    pub to: u64,
    pub changes: Vec<ConfigChange>,
}

/// `POST /v1/config/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackConfig {
    pub key: String,
    /// `global` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// The revision whose value to set again.
    pub to: u64,
}

/// The schemas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigSchemaList {
    pub schemas: Vec<ConfigSchema>,
}

/// A JSON Schema for the keys under a prefix (`""`: the whole tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigSchema {
    pub prefix: String,
    pub schema: Value,
}

/// `DELETE /v1/config/schemas`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigSchemaQuery {
    pub prefix: String,
}

/// The public key secrets are encrypted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConfigKey {
    /// An age X25519 recipient, `age1...`.
    pub recipient: String,
    /// Retired keys kept to read older records.
    pub retired: u64,
}

/// `POST /v1/config/rekey`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rekey {
    /// Also drop the retired keys (what was recorded with them can no longer be read).
    #[serde(default)]
    pub forget: bool,
}

/// What a rekey did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rekeyed {
    pub recipient: String,
    /// Secrets encrypted again to the new key.
    pub reencrypted: u64,
}

/// `GET /v1/config/watch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigWatchQuery {
    /// Only keys under this dotted key.
    pub prefix: Option<String>,
    /// From this revision on (inclusive); from the next change when absent.
    pub since: Option<u64>,
}

/// One change in `/v1/config/watch` (event `set` or `removed`; a `reset`
/// event's data is a [`ConfigEntryList`]: everything, after history was
/// compacted away).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigEvent {
    pub revision: u64,
    pub kind: ConfigEventKind,
    pub layer: String,
    pub key: String,
    /// The new value (`"(secret)"` for a secret); absent when removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    pub secret: bool,
}
