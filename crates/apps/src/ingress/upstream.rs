//! The services the ingress routes to: `NAME.DOMAIN` and the routes each
//! declares (`hearth service create --route HOST/PATH`), for every service
//! with an endpoints record (`services/endpoints/NAME`, the passing
//! instances and the routes the registry publishes), each with its own
//! [`Balancer`].
//!
//! The set follows the store: one `range` at start, then a [`Follower`]
//! from the revision after it, so a change in the registry is routed
//! within milliseconds. The records are read through a view of their own
//! (unknown fields ignored), so this crate does not depend on the
//! registry's.
//!
//! An instance whose machine sleeps stays in its service's balancer,
//! marked asleep: it takes a request only when no awake instance can, and
//! the request waits for it to wake (see `proxy`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hearth_routing::activity::{Activity, Open};
use hearth_store::{Change, EventKind, Follower, KeyValue};
use serde::Deserialize;
use tokio::sync::watch;

use hearth_routing::Route;
use hearth_routing::route::prefix_matches;

use crate::chain;
use crate::service::{Apps, lock, stopped};

/// Where the registry publishes each service's passing instances.
pub(crate) const ENDPOINTS: &str = "services/endpoints/";

/// The part of an endpoints record routing needs.
#[derive(Debug, Deserialize)]
struct EndpointsView {
    #[serde(default)]
    instances: Vec<EndpointView>,
    #[serde(default)]
    routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
struct EndpointView {
    id: String,
    address: IpAddr,
    port: u16,
    #[serde(default)]
    machine: Option<String>,
    #[serde(default)]
    sleeping: bool,
}

/// One passing (or sleeping) instance, as published in the service's
/// endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    /// Its machine, for a service of machines: what a request wakes when
    /// it sleeps, and whose activity the request is.
    pub(crate) machine: Option<String>,
}

/// The balancer of one service's instances, in one ingress.
pub(crate) type Balancer = hearth_routing::Balancer<Endpoint>;

/// One service the ingress routes to.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) balancer: Mutex<Balancer>,
}

/// How a proxied request ended, as counted in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Counted {
    /// An instance answered (any status but 5xx).
    Answered,
    /// An instance answered with a 5xx.
    ServerError,
    /// No instance could be reached, or the one reached failed before
    /// answering (a 502).
    Failed,
    /// The service had no passing instance (a 503).
    NoInstance,
    /// An instance switched protocols (a 101, a WebSocket most often): the
    /// connection is then a tunnel to it. Upgrades it declined count as
    /// answered.
    Upgraded,
}

impl Counted {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Counted::Answered => "answered",
            Counted::ServerError => "server_error",
            Counted::Failed => "failed",
            Counted::NoInstance => "no_instance",
            Counted::Upgraded => "upgraded",
        }
    }
}

/// Every service with an endpoints record, by name.
#[derive(Debug, Default)]
pub(crate) struct Upstreams {
    known: RwLock<Known>,
    counts: Mutex<BTreeMap<(String, Counted), u64>>,
    /// Where a request to a service's machine is counted as its activity,
    /// and a sleeping one woken.
    activity: Activity,
}

#[derive(Debug, Default)]
struct Known {
    services: HashMap<String, Arc<Upstream>>,
    /// The routes each service declares, by name.
    declared: HashMap<String, Vec<Route>>,
    /// Host → (path prefix, service) of the declared routes, longest
    /// prefix first: rebuilt from `declared` on every change.
    hosts: HashMap<String, Vec<(String, Arc<Upstream>)>>,
}

impl Known {
    fn index(&mut self) {
        self.hosts.clear();
        for (name, routes) in &self.declared {
            let Some(upstream) = self.services.get(name) else { continue };
            for route in routes {
                self.hosts
                    .entry(route.host.clone())
                    .or_default()
                    .push((route.path.clone(), upstream.clone()));
            }
        }
        for prefixes in self.hosts.values_mut() {
            // By name among equal prefixes, so that a conflict (which
            // create and deploy refuse) routes the same way every time.
            prefixes.sort_by(|(a, x), (b, y)| b.len().cmp(&a.len()).then_with(|| x.name.cmp(&y.name)));
        }
    }

    fn read(known: &RwLock<Known>) -> std::sync::RwLockReadGuard<'_, Known> {
        known.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Upstream {
    /// Picks the instance for the next attempt of a request that has
    /// tried `tried`, and passes the request to its machine's activity,
    /// waking the machine first if it sleeps: what the ingress and apps'
    /// calls to services both do. `None` when every instance was tried;
    /// `Err` with the instance and why when its machine did not wake
    /// (recorded as its failure).
    pub(crate) async fn pick_and_pass(
        self: &Arc<Self>,
        activity: &Activity,
        tried: &[Endpoint],
    ) -> Option<Result<Outstanding, (Endpoint, String)>> {
        let (endpoint, asleep) = {
            let mut balancer = lock(&self.balancer);
            let endpoint = balancer.pick(Instant::now(), tried)?;
            let asleep = balancer.is_asleep(&endpoint);
            (endpoint, asleep)
        };
        let mut outstanding = Outstanding { upstream: self.clone(), endpoint, _open: None };
        let Some(machine) = outstanding.endpoint.machine.clone() else { return Some(Ok(outstanding)) };
        match activity.pass(&machine, asleep).await {
            Ok(open) => {
                outstanding._open = Some(open);
                Some(Ok(outstanding))
            }
            Err(error) => {
                let endpoint = outstanding.endpoint.clone();
                lock(&self.balancer).record(&endpoint, hearth_routing::Outcome::Failed, Instant::now());
                Some(Err((endpoint, error)))
            }
        }
    }
}

/// A request picked for an instance: counted as outstanding on it until
/// dropped, and as its machine's activity.
pub(crate) struct Outstanding {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) endpoint: Endpoint,
    _open: Option<Open>,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        lock(&self.upstream.balancer).finish(&self.endpoint);
    }
}

impl Upstreams {
    /// The registry of upstreams whose requests to machines go through
    /// `activity`.
    pub(crate) fn new(activity: Activity) -> Upstreams {
        Upstreams { activity, ..Upstreams::default() }
    }

    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }

    /// The service a request's host names, if it is `NAME.DOMAIN` and NAME
    /// has an endpoints record.
    pub(crate) fn for_host(&self, host: &str, domain: &str) -> Option<Arc<Upstream>> {
        let name = host.strip_suffix(domain)?.strip_suffix('.')?;
        if name.is_empty() || name.contains('.') {
            return None;
        }
        Known::read(&self.known).services.get(name).cloned()
    }

    /// The service a request goes to, with the path prefix it matched: of
    /// the routes services declare on `host` and the implicit
    /// `NAME.DOMAIN/`, the longest prefix `path` falls under.
    pub(crate) fn route(&self, host: &str, path: &str, domain: &str) -> Option<(usize, Arc<Upstream>)> {
        let declared = Known::read(&self.known).hosts.get(host).and_then(|prefixes| {
            prefixes
                .iter()
                .find(|(prefix, _)| prefix_matches(prefix, path))
                .map(|(prefix, upstream)| (prefix.len(), upstream.clone()))
        });
        let implicit = || self.for_host(host, domain).map(|upstream| ("/".len(), upstream));
        declared.or_else(implicit)
    }

    pub(crate) fn count(&self, service: &str, outcome: Counted) {
        *lock(&self.counts).entry((service.to_owned(), outcome)).or_default() += 1;
    }

    /// Proxied requests so far: service, outcome, count.
    pub(crate) fn counts(&self) -> Vec<(String, &'static str, u64)> {
        lock(&self.counts).iter().map(|((s, o), n)| (s.clone(), o.as_str(), *n)).collect()
    }

    /// Applies one record (`None`: deleted).
    pub(crate) fn apply(&self, name: &str, value: Option<&[u8]>) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        let Some(value) = value else {
            known.services.remove(name);
            if known.declared.remove(name).is_some() {
                known.index();
            }
            return;
        };
        let (endpoints, asleep, routes) = match serde_json::from_slice::<EndpointsView>(value) {
            Ok(view) => {
                let mut asleep = Vec::new();
                let endpoints = view
                    .instances
                    .into_iter()
                    .map(|i| {
                        let endpoint = Endpoint {
                            id: i.id,
                            addr: SocketAddr::new(i.address, i.port),
                            machine: i.machine,
                        };
                        if i.sleeping {
                            asleep.push(endpoint.clone());
                        }
                        endpoint
                    })
                    .collect();
                (endpoints, asleep, view.routes)
            }
            Err(e) => {
                // Routing to instances that may be gone would be worse than
                // routing to none: the 503 names the command to look.
                tracing::warn!(service = name, error = %e, "A service's endpoints record is unreadable; routing to none of its instances.");
                (Vec::new(), Vec::new(), known.declared.get(name).cloned().unwrap_or_default())
            }
        };
        let upstream = known
            .services
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Upstream { name: name.to_owned(), balancer: Mutex::default() }))
            .clone();
        {
            let mut balancer = lock(&upstream.balancer);
            balancer.set(endpoints);
            balancer.set_asleep(|e| asleep.contains(e));
        }
        if known.declared.get(name).map_or(routes.is_empty(), |old| *old == routes) {
            return;
        }
        if routes.is_empty() {
            known.declared.remove(name);
        } else {
            known.declared.insert(name.to_owned(), routes);
        }
        known.index();
    }

    /// Takes `kvs` as every record there is.
    fn reset(&self, kvs: &[KeyValue]) {
        let names: Vec<&str> = kvs.iter().filter_map(|kv| kv.key.strip_prefix(ENDPOINTS)).collect();
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.services.retain(|name, _| names.contains(&name.as_str()));
        known.declared.retain(|name, _| names.contains(&name.as_str()));
        known.index();
        drop(known);
        for kv in kvs {
            if let Some(name) = kv.key.strip_prefix(ENDPOINTS) {
                self.apply(name, Some(&kv.value));
            }
        }
    }
}

/// Keeps `apps`' upstreams in step with the registry's endpoints until
/// `shutdown`.
pub(crate) async fn follow(apps: Apps, mut shutdown: watch::Receiver<bool>) {
    let upstreams = &apps.inner.upstreams;
    let store = apps.store().clone();
    let from = loop {
        match store.range(ENDPOINTS).await {
            Ok(range) => {
                upstreams.reset(&range.kvs);
                break range.revision + 1;
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "Cannot read the services' endpoints; retrying.");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stopped(&mut shutdown) => return,
                }
            }
        }
    };
    let mut changes = Follower::new(store, ENDPOINTS, from, "Service routes");
    loop {
        let change = tokio::select! {
            () = stopped(&mut shutdown) => return,
            change = changes.next() => change,
        };
        match change {
            Change::Reset(range) => upstreams.reset(&range.kvs),
            Change::Event(event) => {
                let Some(name) = event.kv.key.strip_prefix(ENDPOINTS) else { continue };
                let value = (event.kind == EventKind::Put).then_some(event.kv.value.as_slice());
                upstreams.apply(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(name: &str, value: &str) -> KeyValue {
        KeyValue {
            key: format!("{ENDPOINTS}{name}"),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        }
    }

    #[test]
    fn a_service_is_found_by_its_host_under_the_domain_only() {
        let upstreams = Upstreams::default();
        let record =
            r#"{"name":"api","instances":[{"id":"api-1","address":"::1","port":80,"tags":["x"]}],"more":1}"#;
        upstreams.reset(&[kv("api", record)]);
        let api = upstreams.for_host("api.localhost", "localhost").expect("api");
        let picked = lock(&api.balancer).pick(std::time::Instant::now(), &[]).expect("an instance");
        assert_eq!((picked.id.as_str(), picked.addr), ("api-1", "[::1]:80".parse().expect("addr")));
        for host in [
            "api.localhost.evil",
            "x.api.localhost",
            "localhost",
            ".localhost",
            "apilocalhost",
            "web.localhost",
        ] {
            assert!(upstreams.for_host(host, "localhost").is_none(), "{host}");
        }
        upstreams.apply("api", None);
        assert!(upstreams.for_host("api.localhost", "localhost").is_none());
    }

    #[test]
    fn a_sleeping_instance_stays_in_the_balancer_marked_asleep_with_its_machine() {
        let upstreams = Upstreams::default();
        let record = r#"{"name":"api","instances":[
            {"id":"api-1","address":"::1","port":80,"machine":"api-1","sleeping":true},
            {"id":"api-2","address":"::1","port":81,"machine":"api-2"}]}"#;
        upstreams.reset(&[kv("api", record)]);
        let api = upstreams.for_host("api.localhost", "localhost").expect("api");
        let balancer = lock(&api.balancer);
        let targets = balancer.targets();
        let asleep: Vec<(&str, Option<&str>, bool)> =
            targets.iter().map(|e| (e.id.as_str(), e.machine.as_deref(), balancer.is_asleep(e))).collect();
        assert_eq!(asleep, [("api-1", Some("api-1"), true), ("api-2", Some("api-2"), false)]);
    }

    #[test]
    fn an_unreadable_record_routes_to_no_instance() {
        let upstreams = Upstreams::default();
        upstreams
            .reset(&[kv("api", r#"{"name":"api","instances":[{"id":"api-1","address":"::1","port":80}]}"#)]);
        upstreams.apply("api", Some(b"not json"));
        let api = upstreams.for_host("api.localhost", "localhost").expect("still a service");
        assert!(lock(&api.balancer).is_empty());
        upstreams.reset(&[]);
        assert!(upstreams.for_host("api.localhost", "localhost").is_none(), "a reset forgets what it lacks");
    }

    #[test]
    fn a_service_takes_the_routes_it_declares_by_the_longest_prefix_on_the_exact_host() {
        let record = |name: &str, routes: &str| {
            format!(
                r#"{{"name":"{name}","instances":[{{"id":"{name}-1","address":"::1","port":80}}],"routes":{routes}}}"#
            )
        };
        let upstreams = Upstreams::default();
        upstreams.reset(&[
            kv("api", &record("api", r#"[{"host":"shop.test","path":"/api"}]"#)),
            kv("web", &record("web", r#"[{"host":"shop.test","path":"/"}]"#)),
        ]);
        let at = |host: &str, path: &str| {
            upstreams.route(host, path, "localhost").map(|(matched, u)| (matched, u.name.clone()))
        };
        assert_eq!(at("shop.test", "/api/v1"), Some((4, "api".into())));
        assert_eq!(at("shop.test", "/apix"), Some((1, "web".into())));
        assert_eq!(at("api.localhost", "/anything"), Some((1, "api".into())), "NAME.DOMAIN stays implicit");
        assert_eq!(at("www.shop.test", "/api"), None, "the host is matched exactly");
        // A change of routes applies at once; a removed service takes its routes along.
        upstreams.apply("api", Some(record("api", "[]").as_bytes()));
        assert_eq!(at("shop.test", "/api"), Some((1, "web".into())));
        upstreams.apply("web", None);
        assert_eq!(at("shop.test", "/"), None);
    }
}
