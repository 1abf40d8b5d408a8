//! Apps as records in the store, and the routes that lead to them.
//!
//! `apps/records/NAME` holds an [`App`] as JSON: its versions (content hash,
//! size, manifest), which one is active, and its custom routes. The bytes of
//! each version are kept apart, by hash, in the data dir: the store holds
//! state, not megabytes of code.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::manifest::Manifest;

/// Everything the apps service keeps in the store is under this prefix.
pub const APPS: &str = "apps/";
/// Where app records live.
pub const RECORDS: &str = "apps/records/";
/// Where apps' key-value data lives: `apps/data/NAME/STORE/KEY`.
pub const DATA: &str = "apps/data/";
/// Where apps' secret values live: `apps/secrets/NAME/SECRET`.
pub const SECRETS: &str = "apps/secrets/";

pub(crate) fn key(name: &str) -> String {
    format!("{RECORDS}{name}")
}

pub(crate) fn data_prefix(app: &str, store: &str) -> String {
    format!("{DATA}{app}/{store}/")
}

pub(crate) fn secrets_prefix(app: &str) -> String {
    format!("{SECRETS}{app}/")
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
    pub(crate) fn numbers(&self) -> String {
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
}

/// Checks an app name: it becomes a DNS label (`NAME.localhost`).
pub fn validate_name(name: &str) -> Result<(), Error> {
    hearth_store::names::check_label("app", name, 63)
        .map_err(|message| Error::Invalid(format!("{message} (it becomes a host name, NAME.localhost)")))
}

/// Where requests for an app come in: a host name and a path prefix.
/// Written `HOST[/PATH]`; the longest matching prefix wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    /// Lowercase host name, without a port.
    pub host: String,
    /// Starts with `/`; no trailing `/` except for the root.
    pub path: String,
}

impl Route {
    /// Parses `HOST[/PATH]` (a leading `http://` and a port are ignored:
    /// the ingress routes by name, whatever port it listens on).
    pub fn parse(text: &str) -> Result<Route, Error> {
        let bad = |reason: &str| Error::InvalidRoute { route: text.to_owned(), reason: reason.to_owned() };
        let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://")).unwrap_or(text);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, _port) = crate::manifest::split_host_port(authority);
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad("the host is not a valid host name (letters, digits, `-` and `.`)"));
        }
        if path.contains(['?', '#', ' ']) || path.contains("//") || path.split('/').any(|s| s == "..") {
            return Err(bad("the path must be a plain prefix like /api, without a query, `..` or `//`"));
        }
        let path = match path.trim_end_matches('/') {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        Ok(Route { host, path })
    }

    /// The route every app has: `NAME.DOMAIN/`.
    pub fn default_for(name: &str, domain: &str) -> Route {
        Route { host: format!("{name}.{domain}"), path: "/".into() }
    }

    /// Whether `path` (of a request) falls under this route's prefix, at a
    /// segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
    pub(crate) fn matches_path(&self, path: &str) -> bool {
        self.path == "/"
            || (path.starts_with(self.path.as_str())
                && matches!(path.as_bytes().get(self.path.len()), None | Some(b'/')))
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path == "/" { write!(f, "{}", self.host) } else { write!(f, "{}{}", self.host, self.path) }
    }
}

impl std::str::FromStr for Route {
    type Err = Error;
    fn from_str(s: &str) -> Result<Route, Error> {
        Route::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_normalise() {
        let check = |text: &str, host: &str, path: &str| {
            let r = Route::parse(text).unwrap();
            assert_eq!((r.host.as_str(), r.path.as_str()), (host, path), "{text}");
        };
        check("example.com", "example.com", "/");
        check("Example.COM/", "example.com", "/");
        check("example.com/api/", "example.com", "/api");
        check("http://example.com:8080/api", "example.com", "/api");
        check("hello.localhost", "hello.localhost", "/");
        for bad in ["", "/api", "exa mple.com", "-x.com", "x.com/a?b", "x.com/../etc", "x..com"] {
            assert!(Route::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        let r = Route::parse("x.com/api").unwrap();
        assert!(r.matches_path("/api"));
        assert!(r.matches_path("/api/v1"));
        assert!(!r.matches_path("/apix"));
        assert!(!r.matches_path("/"));
        assert!(Route::parse("x.com").unwrap().matches_path("/anything"));
    }

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
