//! Layered configuration, kept in the store and pushed to every consumer.
//!
//! A value lives in a *layer*: `files` (what `hearth config import` read
//! from files a person keeps in git), `global`, a scope's own layer
//! (`app:NAME`, `service:NAME`, `machine:NAME`, `workflow:NAME`) or
//! `override`. A consumer reads its scope's layers merged, later winning
//! and tables merging recursively, with its own `hearth.toml` `[config]`
//! (handed in as a [`Base`]) just above `files`. [`Resolved`] says for every
//! key which layer it came from (`config get --explain`).
//!
//! Every write is one compare-and-swap transaction on [`key::HEAD`]: the
//! leaves it changes, a record of the change in the history (its revision
//! is the store revision of the write), and nothing else. Before it is
//! written, the new state is checked against the JSON Schemas of the
//! prefixes it touches ([`schema`]), in every view it changes; a change
//! that does not validate is refused and no one sees it.
//!
//! Secret values are encrypted with age to the daemon's key ([`secret`])
//! before they reach the store, and decrypted only in [`Config::resolve`],
//! for the consumer they are delivered to. A consumer that must keep what
//! it read (a workflow's journal) keeps it encrypted the same way, with
//! [`Config::seal`] and [`Config::open_sealed`].
//!
//! [`Config::run`] follows `config/` and bumps [`Config::changes`] after each
//! committed change: at once when the last bump was at least
//! [`THROTTLE`] ago, otherwise once at the end of that interval, for all the
//! changes in it. Consumers re-resolve what they read when it moves.

pub mod key;
pub mod schema;
pub mod secret;
pub mod tree;

mod service;
#[cfg(test)]
mod tests;

pub use key::{Key, Layer, Scope};
pub use service::{
    Base, Config, EntryView, HistoryChange, HistoryEntry, Resolved, StoredValue, THROTTLE, ValueChange,
};
pub use tree::Leaf;

use std::path::PathBuf;

/// What can go wrong with config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config key {key:?} is not valid: {reason}")]
    InvalidKey { key: String, reason: String },

    #[error("config scope {scope:?} is not valid: {reason}")]
    InvalidScope { scope: String, reason: String },

    #[error("config layer {layer:?} is not valid: {reason}")]
    InvalidLayer { layer: String, reason: String },

    #[error("{}: {reason}", if key.is_empty() { "the value is not valid".to_owned() } else { format!("the value of {key:?} is not valid") })]
    InvalidValue { key: String, reason: String },

    #[error("the JSON Schema for {prefix:?} is not valid: {reason}")]
    InvalidSchema { prefix: String, reason: String },

    #[error("the change does not match the schema for {prefix:?} (in {view}): {}", problems.join("; "))]
    SchemaViolation { prefix: String, view: String, problems: Vec<String> },

    #[error("{what} is not set")]
    NotFound { what: String },

    #[error("a secret cannot be decrypted: {reason}")]
    Undecryptable { reason: String },

    #[error("cannot read or write the config key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the config key file {path} is not valid: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },

    #[error("the history before revision {oldest} is no longer kept (asked for {requested})")]
    HistoryGone { requested: u64, oldest: u64 },

    #[error("revision {requested} has not happened yet; the current revision is {current}")]
    FutureRevision { requested: u64, current: u64 },

    #[error("config changed under this write {attempts} times in a row")]
    Contended { attempts: u32 },

    #[error("stored config at {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },

    #[error(transparent)]
    Store(#[from] hearth_store::Error),
}

impl Error {
    /// A short machine-readable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidKey { .. }
            | Error::InvalidScope { .. }
            | Error::InvalidLayer { .. }
            | Error::InvalidValue { .. }
            | Error::InvalidSchema { .. } => "invalid_field",
            Error::SchemaViolation { .. } => "schema_violation",
            Error::NotFound { .. } => "not_found",
            Error::Undecryptable { .. } => "undecryptable",
            Error::HistoryGone { .. } => "compacted",
            Error::FutureRevision { .. } => "future_revision",
            Error::Contended { .. } => "busy",
            Error::KeyFile { .. } | Error::BadKeyFile { .. } | Error::Corrupt { .. } => "internal",
            Error::Store(_) => "store",
        }
    }

    /// What the person can do next.
    pub fn hint(&self) -> String {
        match self {
            Error::InvalidKey { .. } => "keys are dotted words: `db.host`, `feature-flags.new_ui`".into(),
            Error::InvalidScope { .. } | Error::InvalidLayer { .. } => {
                "use --scope global, app:NAME, service:NAME, machine:NAME or workflow:NAME".into()
            }
            Error::InvalidValue { .. } => {
                "values are TOML: 5, true, \"text\", [1, 2], { host = \"db\" }; one bare word is a string".into()
            }
            Error::InvalidSchema { .. } => "write a JSON Schema (draft 2020-12 unless it says $schema)".into(),
            Error::SchemaViolation { prefix, .. } => format!(
                "fix the value, or see the schema with `hearth config schema get {prefix}` and change it"
            ),
            Error::NotFound { .. } => "list what is set with `hearth config ls`".into(),
            Error::Undecryptable { .. } => {
                "the value was encrypted to another key: encrypt it again with `hearth config encrypt` against this daemon's key; hosts sharing a store must share one key file (`hearth serve --config-key FILE` on each)".into()
            }
            Error::HistoryGone { oldest, .. } => format!("use a revision from {oldest} on (`hearth config history`)"),
            Error::FutureRevision { current, .. } => format!("use a revision up to {current}"),
            Error::Contended { .. } => "something else is changing config right now; try again".into(),
            Error::KeyFile { path, .. } | Error::BadKeyFile { path, .. } => format!(
                "check {} (mode 0600, one AGE-SECRET-KEY line per key); restore it from your copy",
                path.display()
            ),
            Error::Corrupt { .. } => "this is a bug in hearth or a failing disk; the daemon log has details".into(),
            Error::Store(_) => "the daemon log has details".into(),
        }
    }
}
