//! A workflow's `http-call` to a service by name:
//! `http://NAME.service.hearth/...` goes to one of the service's passing
//! instances, read from the registry's endpoints record
//! (`services/endpoints/NAME`), never through DNS.
//!
//! A workflow declares the services it calls in its `hearth.toml`, as an
//! app does: `outbound = ["service:backend"]`. Workflows have no allow-list
//! for other hosts (an activity reaches any URL), so `service:NAME` is the
//! only kind of entry there.
//!
//! Instances are taken in turn (round robin), one per call: an activity is
//! already retried by the workflow's own code, and its answer is
//! journaled, so a replay never calls again. The apps' balancer (least
//! outstanding, ejection) is not shared: it lives in the apps subsystem,
//! which workflows do not depend on.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

use crate::Error;

/// The domain services are named under: `NAME.service.hearth`.
pub(crate) const DOMAIN: &str = "service.hearth";
/// Where the registry publishes each service's passing instances.
pub(crate) const ENDPOINTS: &str = "services/endpoints/";

/// The services a manifest's `outbound` declares, checked.
pub(crate) fn declared(outbound: &[String]) -> Result<Vec<String>, Error> {
    outbound
        .iter()
        .map(|entry| {
            let Some(name) = entry.strip_prefix("service:") else {
                return Err(Error::Manifest(format!(
                    "outbound entry {entry:?} is not valid: a workflow calls other hosts without declaring \
                     them; list only the services it calls, as \"service:NAME\""
                )));
            };
            hearth_store::names::check_label("service", name, 50).map_err(|reason| {
                Error::Manifest(format!(
                    "outbound entry {entry:?} is not valid: {reason} (write service:NAME, e.g. \
                     \"service:backend\", to call http://backend.service.hearth/)"
                ))
            })?;
            Ok(name.to_owned())
        })
        .collect()
}

/// The `outbound` list of a workflow's `hearth.toml` (any other section is
/// the triggers').
pub(crate) fn from_manifest(manifest: &str) -> Result<Vec<String>, Error> {
    #[derive(Deserialize)]
    struct View {
        #[serde(default)]
        outbound: Vec<String>,
    }
    let view: View =
        toml::from_str(manifest).map_err(|e| Error::Manifest(e.to_string().trim_end().to_owned()))?;
    declared(&view.outbound)
}

/// The service a URL's host names, if it is under [`DOMAIN`] (the name may
/// not be valid).
pub(crate) fn named(host: &str) -> Option<&str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host == DOMAIN {
        return Some("");
    }
    host.strip_suffix(DOMAIN)?.strip_suffix('.')
}

/// The part of an endpoints record a call needs.
#[derive(Debug, Deserialize)]
struct EndpointsView {
    #[serde(default)]
    instances: Vec<EndpointView>,
}

#[derive(Debug, Deserialize)]
struct EndpointView {
    address: IpAddr,
    port: u16,
}

/// Why a call to a service was not made: the message the workflow gets.
pub(crate) fn check(declared: &[String], name: &str, scheme: &str, port: Option<u16>) -> Result<(), String> {
    let target = format!("http://{name}.{DOMAIN}");
    if hearth_store::names::check_label("service", name, 63).is_err() {
        return Err(format!(
            "{name:?} is not a service name: call http://NAME.{DOMAIN}/ with the name of a service (see `hearth service ls`)"
        ));
    }
    if !declared.iter().any(|d| d == name) {
        return Err(format!(
            "{target} is refused: the workflow's hearth.toml does not declare the service; add \
             \"service:{name}\" to `outbound` and deploy again"
        ));
    }
    if scheme != "http" {
        return Err(format!(
            "https://{name}.{DOMAIN} is refused: services are reached over http only (hearth holds no \
             certificate for {name}.{DOMAIN}); call {target}/ instead"
        ));
    }
    if let Some(port) = port.filter(|p| *p != 80) {
        return Err(format!(
            "{target}:{port} is refused: a service's instances have their own ports, which hearth picks; \
             call {target}/ without a port"
        ));
    }
    Ok(())
}

/// Picks the instance of `name` for the next call, in turn, from its
/// endpoints record (`None`: deleted or absent).
pub(crate) fn pick(
    name: &str,
    record: Option<&[u8]>,
    turn: &AtomicUsize,
) -> Result<std::net::SocketAddr, String> {
    let none = || {
        format!(
            "http://{name}.{DOMAIN} failed: the service {name:?} has no passing instance; see `hearth service inspect {name}`"
        )
    };
    let view: EndpointsView = match record {
        None => return Err(none()),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
            format!("http://{name}.{DOMAIN} failed: the service's endpoints record is unreadable ({e})")
        })?,
    };
    if view.instances.is_empty() {
        return Err(none());
    }
    let at = turn.fetch_add(1, Ordering::Relaxed) % view.instances.len();
    let instance = &view.instances[at];
    Ok(std::net::SocketAddr::new(instance.address, instance.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_entries_are_declared() {
        assert_eq!(from_manifest("outbound = [\"service:backend\"]").unwrap(), ["backend"]);
        assert_eq!(from_manifest("[[cron]]\nschedule = \"* * * * *\"").unwrap(), Vec::<String>::new());
        for (text, want) in [
            ("outbound = [\"https://api.example.com\"]", "list only the services it calls"),
            ("outbound = [\"service:Back_end\"]", "service name \"Back_end\" is not valid"),
            ("outbound = [\"service:\"]", "write service:NAME"),
        ] {
            let err = from_manifest(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn a_call_is_checked_against_the_declared_services() {
        let declared = ["backend".to_owned()];
        assert_eq!(check(&declared, "backend", "http", None), Ok(()));
        assert_eq!(check(&declared, "backend", "http", Some(80)), Ok(()));
        let refused = |name, scheme, port| check(&declared, name, scheme, port).unwrap_err();
        assert!(refused("other", "http", None).contains("add \"service:other\" to `outbound`"));
        assert!(refused("backend", "https", None).contains("over http only"));
        assert!(refused("backend", "http", Some(8080)).contains("without a port"));
        assert!(refused("a.b", "http", None).contains("not a service name"));
        assert_eq!(named("backend.service.hearth"), Some("backend"));
        assert_eq!(named("backend.service.hearth.evil"), None);
    }

    #[test]
    fn instances_are_taken_in_turn() {
        let record = br#"{"name":"b","instances":[{"id":"b-1","address":"127.0.0.1","port":1},{"id":"b-2","address":"::1","port":2}],"x":1}"#;
        let turn = AtomicUsize::new(0);
        let ports: Vec<u16> = (0..4).map(|_| pick("b", Some(record), &turn).unwrap().port()).collect();
        assert_eq!(ports, [1, 2, 1, 2]);
        let empty = br#"{"name":"b","instances":[]}"#;
        assert!(pick("b", Some(empty), &turn).unwrap_err().contains("no passing instance"));
        assert!(pick("b", None, &turn).unwrap_err().contains("hearth service inspect b"));
    }
}
