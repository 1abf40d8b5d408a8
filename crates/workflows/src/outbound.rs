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
//! The instance is picked by the balancer the ingress and published ports
//! use (`hearth_routing::Balancer`: fewest calls outstanding, ties in turn;
//! an instance that fails three calls in a row is left out for a while), one
//! per service in this executor. One instance per call: an activity is
//! already retried by the workflow's own code, and its answer is
//! journaled, so a replay never calls again; the balancer then sends the
//! retry elsewhere if the instance keeps failing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use hearth_routing::{Balancer, Outcome};
use serde::Deserialize;

use crate::Error;

pub(crate) use hearth_routing::{SERVICE_DOMAIN as DOMAIN, service_named as named};

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
    #[serde(default)]
    machine: Option<String>,
    #[serde(default)]
    sleeping: bool,
}

/// The instance a call goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Picked {
    pub(crate) address: SocketAddr,
    /// Its machine, if it is one: a sleeping one is woken before the call.
    pub(crate) machine: Option<String>,
    pub(crate) asleep: bool,
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

/// Each called service's balancer, by name.
#[derive(Debug, Default)]
pub(crate) struct Balancers(Mutex<HashMap<String, Balancer<SocketAddr>>>);

impl Balancers {
    /// Picks the instance of `name` for the next call from its endpoints
    /// record (`None`: deleted or absent), counted as outstanding until
    /// [`Balancers::done`].
    pub(crate) fn pick(&self, name: &str, record: Option<&[u8]>) -> Result<Picked, String> {
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
        let mut balancers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if view.instances.is_empty() {
            balancers.remove(name);
            return Err(none());
        }
        let balancer = balancers.entry(name.to_owned()).or_default();
        let address = |i: &EndpointView| SocketAddr::new(i.address, i.port);
        balancer.set(view.instances.iter().map(address).collect());
        let asleep: Vec<SocketAddr> = view.instances.iter().filter(|i| i.sleeping).map(address).collect();
        balancer.set_asleep(|a| asleep.contains(a));
        let picked = balancer.pick(Instant::now(), &[]).ok_or_else(none)?;
        let machine = view.instances.iter().find(|i| address(i) == picked).and_then(|i| i.machine.clone());
        Ok(Picked { address: picked, machine, asleep: balancer.is_asleep(&picked) })
    }

    /// A call picked for `address` of `name` ended: with an answer below
    /// 500 (`Answered`), or with a 5xx or no answer at all (`Failed`).
    pub(crate) fn done(&self, name: &str, address: SocketAddr, outcome: Outcome) {
        let mut balancers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(balancer) = balancers.get_mut(name) {
            balancer.record(&address, outcome, Instant::now());
            balancer.finish(&address);
        }
    }
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

    const RECORD: &[u8] = br#"{"name":"b","instances":[{"id":"b-1","address":"127.0.0.1","port":1},{"id":"b-2","address":"::1","port":2}],"x":1}"#;

    #[test]
    fn calls_that_end_at_once_take_the_instances_in_turn() {
        let balancers = Balancers::default();
        let ports: Vec<u16> = (0..4)
            .map(|_| {
                let address = balancers.pick("b", Some(RECORD)).unwrap().address;
                balancers.done("b", address, Outcome::Answered);
                address.port()
            })
            .collect();
        assert_eq!(ports, [1, 2, 1, 2]);
        let empty = br#"{"name":"b","instances":[]}"#;
        assert!(balancers.pick("b", Some(empty)).unwrap_err().contains("no passing instance"));
        assert!(balancers.pick("b", None).unwrap_err().contains("hearth service inspect b"));
    }

    #[test]
    fn a_call_goes_to_the_instance_with_fewer_calls_outstanding() {
        let balancers = Balancers::default();
        let busy = balancers.pick("b", Some(RECORD)).unwrap().address;
        for _ in 0..3 {
            let other = balancers.pick("b", Some(RECORD)).unwrap().address;
            assert_ne!(other, busy, "the busy instance was picked again");
            balancers.done("b", other, Outcome::Answered);
        }
    }

    #[test]
    fn a_sleeping_instance_is_called_only_when_no_awake_one_can_be_and_is_woken_first() {
        let record = br#"{"name":"b","instances":[
            {"address":"127.0.0.1","port":1,"machine":"b-1","sleeping":true},
            {"address":"127.0.0.1","port":2,"machine":"b-2"}]}"#;
        let balancers = Balancers::default();
        for _ in 0..3 {
            let picked = balancers.pick("b", Some(record)).unwrap();
            assert_eq!((picked.machine.as_deref(), picked.asleep), (Some("b-2"), false));
        }
        let only =
            br#"{"name":"b","instances":[{"address":"127.0.0.1","port":1,"machine":"b-1","sleeping":true}]}"#;
        let picked = balancers.pick("b", Some(only)).unwrap();
        assert_eq!((picked.machine.as_deref(), picked.asleep), (Some("b-1"), true), "to be woken");
    }

    #[test]
    fn an_instance_that_fails_three_calls_in_a_row_is_left_out() {
        let balancers = Balancers::default();
        let failing = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut fails = 0;
        while fails < 3 {
            let address = balancers.pick("b", Some(RECORD)).unwrap().address;
            if address == failing {
                balancers.done("b", address, Outcome::Failed);
                fails += 1;
            } else {
                balancers.done("b", address, Outcome::Answered);
            }
        }
        for _ in 0..4 {
            let address = balancers.pick("b", Some(RECORD)).unwrap().address;
            assert_ne!(address, failing, "an instance that failed three calls in a row was called");
            balancers.done("b", address, Outcome::Answered);
        }
    }
}
