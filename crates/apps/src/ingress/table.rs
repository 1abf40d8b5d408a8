//! The routing table the ingress reads: host, then the longest path
//! prefix, to the version that serves and the webhook checks it carries.
//! Immutable; the service builds a new one from what is loaded on every
//! change and swaps it in whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hearth_routing::route::prefix_matches;

use crate::record::Route;
use crate::service::Loaded;
use crate::triggers::Guards;

/// One app in this daemon, as the table is built from it.
pub(crate) struct Entry {
    pub(crate) routes: Vec<Route>,
    pub(crate) serving: Result<Arc<Loaded>, String>,
    /// Its webhooks, longest path first: installed with the version they
    /// belong to, so a request never meets a version without its checks.
    pub(crate) guards: Guards,
}

/// Where requests go: an immutable snapshot.
#[derive(Default)]
pub(crate) struct Table {
    /// Host → (path prefix, target), longest prefix first.
    hosts: HashMap<String, Vec<(String, Arc<Target>)>>,
    /// Every app and its routes, for the 404 page.
    pub(crate) apps: Vec<(String, Vec<Route>)>,
}

pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) serving: Result<Arc<Loaded>, String>,
    pub(crate) guards: Guards,
}

impl Table {
    /// The table for the apps loaded, by name.
    pub(crate) fn build(loaded: &BTreeMap<String, Entry>) -> Table {
        let mut table = Table::default();
        for (name, entry) in loaded {
            let target = Arc::new(Target {
                name: name.clone(),
                serving: entry.serving.clone(),
                guards: entry.guards.clone(),
            });
            for route in &entry.routes {
                table.hosts.entry(route.host.clone()).or_default().push((route.path.clone(), target.clone()));
            }
            table.apps.push((name.clone(), entry.routes.clone()));
        }
        for prefixes in table.hosts.values_mut() {
            prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        }
        table
    }

    /// The app for a request, by host and then the longest path prefix,
    /// with the prefix it matched.
    pub(crate) fn route(&self, host: &str, path: &str) -> Option<(&str, &Arc<Target>)> {
        self.hosts
            .get(host)?
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(prefix, t)| (prefix.as_str(), t))
    }

    pub(crate) fn has_host(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
    }
}
