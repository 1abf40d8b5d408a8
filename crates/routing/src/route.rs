//! Routes: where requests for an app or a service come in, written
//! `HOST[/PATH]`.
//!
//! Policy, as the ingress applies it:
//! - A route is a host name and a path prefix; a leading `http://` and a
//!   port are ignored (the ingress routes by name, whatever port it
//!   listens on), the host is lowercased, a trailing `/` dropped.
//! - A request is matched on its exact host, then on the longest path
//!   prefix, at a segment boundary: `/api` takes `/api` and `/api/x`, not
//!   `/apix`.
//! - One route (the same host and path) belongs to one owner, app or
//!   service; the owners check it when they declare it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A route that does not parse, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route {route:?}: {reason}")]
pub struct InvalidRoute {
    pub route: String,
    pub reason: String,
}

/// Where requests come in: a host name and a path prefix. Written
/// `HOST[/PATH]`; the longest matching prefix wins.
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
    pub fn parse(text: &str) -> Result<Route, InvalidRoute> {
        let bad = |reason: &str| InvalidRoute { route: text.to_owned(), reason: reason.to_owned() };
        let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://")).unwrap_or(text);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let host = authority.rsplit_once(':').map_or(authority, |(host, _port)| host);
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

    /// The route every app and service has: `NAME.DOMAIN/`.
    pub fn default_for(name: &str, domain: &str) -> Route {
        Route { host: format!("{name}.{domain}"), path: "/".into() }
    }

    /// Whether `path` (of a request) falls under this route's prefix, at a
    /// segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
    pub fn matches_path(&self, path: &str) -> bool {
        prefix_matches(&self.path, path)
    }
}

/// Whether a request's `path` falls under the route prefix `prefix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path == "/" { write!(f, "{}", self.host) } else { write!(f, "{}{}", self.host, self.path) }
    }
}

impl std::str::FromStr for Route {
    type Err = InvalidRoute;
    fn from_str(s: &str) -> Result<Route, InvalidRoute> {
        Route::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_scheme_and_a_port_are_ignored_the_host_lowercased_a_trailing_slash_dropped() {
        let check = |text: &str, host: &str, path: &str| {
            let r = Route::parse(text).unwrap();
            assert_eq!((r.host.as_str(), r.path.as_str()), (host, path), "{text}");
        };
        check("example.com", "example.com", "/");
        check("Example.COM/", "example.com", "/");
        check("example.com/api/", "example.com", "/api");
        check("http://example.com:8080/api", "example.com", "/api");
        check("hello.localhost", "hello.localhost", "/");
        for bad in ["", "/api", "exa mple.com", "-x.com", "x.com/a?b", "x.com/../etc", "x..com", "x.com//a"] {
            assert!(Route::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_prefix_matches_at_a_segment_boundary() {
        let r = Route::parse("x.com/api").unwrap();
        assert!(r.matches_path("/api"));
        assert!(r.matches_path("/api/v1"));
        assert!(!r.matches_path("/apix"));
        assert!(!r.matches_path("/"));
        assert!(Route::parse("x.com").unwrap().matches_path("/anything"));
    }

    #[test]
    fn a_route_reads_back_as_written() {
        for text in ["x.com", "x.com/api/v1"] {
            assert_eq!(Route::parse(text).unwrap().to_string(), text);
        }
    }
}
