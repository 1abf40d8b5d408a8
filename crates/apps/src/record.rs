//! Apps as records in the store, and the routes that lead to them.
//!
//! `apps/records/NAME` holds an [`App`] as JSON: its versions (content hash,
//! size, manifest), which one is active, and its custom routes. The bytes of
//! each version are kept apart, by hash, in the data dir: the store holds
//! state, not megabytes of code. Only when several hosts share the store
//! are the bytes shared through it too, under [`BLOBS`], so that every host
//! can serve every app.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::manifest::Manifest;

/// Where requests for an app come in: the syntax and the matching are
/// shared with services' routes ([`hearth_routing::route`]).
pub use hearth_routing::Route;

/// Everything the apps service keeps in the store is under this prefix.
pub const APPS: &str = "apps/";
/// Where app records live.
pub const RECORDS: &str = "apps/records/";
/// Where apps' key-value data lives: `apps/data/NAME/STORE/KEY`.
pub const DATA: &str = "apps/data/";
/// Where the bytes of deployed components are shared when several hosts
/// share the store: `apps/blobs/SHA256` and its chunks
/// ([`hearth_wasm::blobs`]).
pub const BLOBS: &str = "apps/blobs/";
/// Where apps' secret values lived before config held them
/// (`apps/secrets/NAME/SECRET`, in clear): moved into config at start.
pub const SECRETS: &str = "apps/secrets/";

pub(crate) fn key(name: &str) -> String {
    format!("{RECORDS}{name}")
}

pub(crate) fn data_prefix(app: &str, store: &str) -> String {
    format!("{DATA}{app}/{store}/")
}

/// An app: what is deployed under a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub name: String,
    /// The version that serves requests.
    pub active: u32,
    /// Routes besides the default `NAME.DOMAIN/`.
    pub routes: Vec<Route>,
    /// Kept versions, oldest first.
    pub versions: Vec<Version>,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
}

impl App {
    pub fn version(&self, number: u32) -> Option<&Version> {
        self.versions.iter().find(|v| v.number == number)
    }

    pub fn active_version(&self) -> Option<&Version> {
        self.version(self.active)
    }

    pub(crate) fn next_version(&self) -> u32 {
        self.versions.iter().map(|v| v.number).max().unwrap_or(0) + 1
    }

    /// The version numbers, for error messages.
    pub fn numbers(&self) -> String {
        let list: Vec<String> = self.versions.iter().map(|v| v.number.to_string()).collect();
        if list.is_empty() { "none".into() } else { list.join(", ") }
    }
}

/// One deployed version of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, 3…: never reused within an app.
    pub number: u32,
    /// SHA-256 of the component's bytes, lowercase hex.
    pub sha256: String,
    /// Size of the component, in bytes.
    pub size: u64,
    /// Unix milliseconds.
    pub created_at: u64,
    /// The manifest, parsed.
    pub manifest: Manifest,
    /// The manifest as uploaded, if there was one.
    pub manifest_text: Option<String>,
    /// The handler it was built from, when deployed as source
    /// (`hearth fn deploy`): the code that serves, kept with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::source::Source>,
}

/// Checks an app name: it becomes a DNS label (`NAME.localhost`).
pub fn validate_name(name: &str) -> Result<(), Error> {
    hearth_store::names::check_label("app", name, 63)
        .map_err(|message| Error::Invalid(format!("{message} (it becomes a host name, NAME.localhost)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["hello", "a", "my-app-2"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "Hello", "-a", "a-", "a.b", "a_b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
