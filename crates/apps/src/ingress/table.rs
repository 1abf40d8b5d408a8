//! The routing table the ingress reads: host, then the longest path
//! prefix, to the version that serves and the webhook checks it carries.
//! Immutable; the service builds a new one from what is loaded on every
//! change and swaps it in whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use hearth_routing::route::prefix_matches;

use crate::record::Route;
use crate::service::Loaded;
use crate::traffic::{RouteCounters, Traffic};
use crate::triggers::Guards;

/// One app in this daemon, as the table is built from it.
pub(crate) struct Entry {
    pub(crate) routes: Vec<Route>,
    pub(crate) serving: Result<Arc<Loaded>, String>,
    /// Its webhooks, longest path first: installed with the version they
    /// belong to, so a request never meets a version without its checks.
    pub(crate) guards: Guards,
}

/// A route's path prefix, the app it goes to, and the route's counters.
type Routed = (String, Arc<Target>, Arc<RouteCounters>);

/// Where requests go: an immutable snapshot.
#[derive(Default)]
pub(crate) struct Table {
    /// Host → (path prefix, target, the route's counters), longest prefix first.
    hosts: HashMap<String, Vec<Routed>>,
    /// Every app and its routes, for the 404 page.
    pub(crate) apps: Vec<(String, Vec<Route>)>,
}

pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) serving: Result<Arc<Loaded>, String>,
    pub(crate) guards: Guards,
}

impl Table {
    /// The table for the apps loaded, by name, with each route's counters
    /// from `traffic` (which forgets the routes no longer loaded).
    pub(crate) fn build(loaded: &BTreeMap<String, Entry>, traffic: &Traffic) -> Table {
        let routes: BTreeSet<(String, String)> = loaded
            .iter()
            .flat_map(|(name, entry)| entry.routes.iter().map(|r| (name.clone(), r.path.clone())))
            .collect();
        let counters = traffic.update(&routes);
        let mut table = Table::default();
        for (name, entry) in loaded {
            let target = Arc::new(Target {
                name: name.clone(),
                serving: entry.serving.clone(),
                guards: entry.guards.clone(),
            });
            for route in &entry.routes {
                let counted = counters[&(name.clone(), route.path.clone())].clone();
                table.hosts.entry(route.host.clone()).or_default().push((
                    route.path.clone(),
                    target.clone(),
                    counted,
                ));
            }
            table.apps.push((name.clone(), entry.routes.clone()));
        }
        for prefixes in table.hosts.values_mut() {
            prefixes.sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
        }
        table
    }

    /// The app for a request, by host and then the longest path prefix,
    /// with the prefix it matched and that route's counters.
    pub(crate) fn route(&self, host: &str, path: &str) -> Option<(&str, &Arc<Target>, &Arc<RouteCounters>)> {
        self.hosts
            .get(host)?
            .iter()
            .find(|(prefix, _, _)| prefix_matches(prefix, path))
            .map(|(prefix, t, c)| (prefix.as_str(), t, c))
    }

    pub(crate) fn has_host(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
    }
}
