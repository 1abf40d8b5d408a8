//! What the registry keeps in the store, under `services/`:
//!
//! | key | written by | what |
//! |---|---|---|
//! | `services/defs/NAME` | the API | a service: its kind, template, count, port, checks, routes, metadata |
//! | `services/instances/NAME/ID` | the supervisor, or a registration (under its lease) | one instance: where it answers |
//! | `services/health/NAME/ID` | the checker, or a heartbeat | an instance's health and its recent changes |
//! | `services/endpoints/NAME` | the supervisor | the *passing* instances (and the ports and routes they serve), the one record DNS and routing read |
//! | `services/history/NAME/SEQ` | the supervisor | what was done without a person, and why |
//!
//! Health and endpoints are written only when they change, so that anyone
//! following them (DNS, a blocking query) wakes only for a real change.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use hearth_net::service::PortSpec;
pub use hearth_routing::Route;

use crate::check::CheckSpec;

pub const DEFS: &str = "services/defs/";
pub const INSTANCES: &str = "services/instances/";
pub const HEALTH: &str = "services/health/";
pub const ENDPOINTS: &str = "services/endpoints/";
pub const HISTORY: &str = "services/history/";

pub fn def_key(name: &str) -> String {
    format!("{DEFS}{name}")
}

/// The prefix of one service's instances (or health records, with [`HEALTH`]).
pub fn instances_prefix(name: &str) -> String {
    format!("{INSTANCES}{name}/")
}

/// The service of machines that keeps `machine`, if any: its name is
/// `SERVICE-N` and that service has an instance record naming this
/// machine (written before the machine is made). A machine merely named
/// like a service's instance belongs to no service.
pub async fn service_of_machine(store: &dyn hearth_store::Store, machine: &str) -> Option<String> {
    let (service, n) = machine.rsplit_once('-')?;
    n.parse::<u32>().ok()?;
    let range = store.range(&instances_prefix(service)).await.ok()?;
    range
        .kvs
        .iter()
        .any(|kv| {
            serde_json::from_slice::<InstanceRecord>(&kv.value)
                .is_ok_and(|i| i.service == service && i.machine.as_deref() == Some(machine))
        })
        .then(|| service.to_owned())
}

pub fn instance_key(name: &str, id: &str) -> String {
    format!("{INSTANCES}{name}/{id}")
}

pub fn health_prefix(name: &str) -> String {
    format!("{HEALTH}{name}/")
}

pub fn health_key(name: &str, id: &str) -> String {
    format!("{HEALTH}{name}/{id}")
}

pub fn endpoints_key(name: &str) -> String {
    format!("{ENDPOINTS}{name}")
}

pub fn history_prefix(name: &str) -> String {
    format!("{HISTORY}{name}/")
}

/// `(service, id)` of an instance or health key.
pub fn split_instance_key<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(prefix)?.split_once('/')
}

/// How a service's instances come to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// hearth keeps `count` machines of an image running.
    Machines,
    /// Processes anywhere register instances, each under a TTL.
    Registered,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Machines => "machines",
            Kind::Registered => "registered",
        }
    }
}

/// A service, as stored at `services/defs/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub kind: Kind,
    /// What each machine is made from; `Some` for [`Kind::Machines`].
    pub template: Option<Template>,
    /// How many instances hearth keeps (machines only).
    pub count: u32,
    /// The port instances answer on (machines only; registrations carry theirs).
    pub port: u16,
    pub checks: Vec<CheckSpec>,
    /// Host ports on loopback balanced over the passing instances (TCP).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Where the ingress routes to the passing instances, besides the
    /// implicit `NAME.DOMAIN/`: `HOST[/PATH]`, as apps' routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub meta: Meta,
    /// Unix seconds.
    pub created_at: u64,
    /// The version of `template`; each deploy makes the next.
    #[serde(default = "first_version")]
    pub version: u32,
    /// The version before this one, which a failed rollout goes back to.
    #[serde(default)]
    pub previous: Option<TemplateVersion>,
    /// The last rollout, under way or ended.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

fn first_version() -> u32 {
    1
}

/// A template with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub version: u32,
    pub template: Template,
}

/// A rolling update from one version to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub from: u32,
    pub to: u32,
    pub state: RolloutState,
    /// Why it was rolled back.
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    Rolling,
    Done,
    RolledBack,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Rolling => "rolling",
            RolloutState::Done => "done",
            RolloutState::RolledBack => "rolled-back",
        }
    }
}

/// What a service's machines are made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Overrides the image's command.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// The network the instances join; `None`: the default network.
    pub network: Option<String>,
    /// What each machine does when its config changes: a signal to its
    /// main process (`SIGHUP`) or a command (see
    /// `hearth_machines::record::validate_on_config_change`).
    #[serde(default)]
    pub on_config_change: Option<String>,
    /// Each machine sleeps after this long without a connection (through
    /// the ingress, a published port or its own forwards) and the next
    /// request wakes it.
    #[serde(default)]
    pub sleep_after_secs: Option<u64>,
}

/// What makes the registry an application dictionary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Name to URL: a runbook, a repository, a dashboard.
    #[serde(default)]
    pub links: BTreeMap<String, String>,
}

/// One instance, at `services/instances/NAME/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub service: String,
    /// Where it answers; `None` while its machine has no address yet (or
    /// has no network).
    pub address: Option<IpAddr>,
    pub port: u16,
    /// The machine it runs in, for instances the supervisor keeps.
    pub machine: Option<String>,
    /// A registration's TTL in seconds: it is kept under a lease that long,
    /// renewed by heartbeats.
    pub ttl_s: Option<u64>,
    /// A registration's own checks (a service of machines has its checks in
    /// its definition).
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// The service's version its machine is made from.
    #[serde(default = "first_version")]
    pub version: u32,
    /// Unix milliseconds since it was taken out of the endpoints, to be
    /// removed once requests in flight are done.
    #[serde(default)]
    pub draining_since_ms: Option<u64>,
}

/// An instance's health, as the checker last judged it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    /// The state every instance starts in: nothing is routed to it until it
    /// proves itself.
    #[default]
    Critical,
    /// Its machine sleeps (it passed before it fell asleep): it is routed
    /// to when no awake instance can take a request, and woken by it. It
    /// is not checked while it sleeps.
    Sleeping,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Sleeping => "sleeping",
        }
    }
}

/// At `services/health/NAME/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub status: Status,
    /// What the deciding check said.
    pub output: String,
    /// Unix milliseconds of the last change of status.
    pub since_ms: u64,
    /// The last [`HISTORY_LEN`] changes, oldest first.
    pub changes: Vec<Transition>,
}

/// How many status changes a health record keeps.
pub const HISTORY_LEN: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub status: Status,
    pub output: String,
}

impl HealthRecord {
    /// The record after a check said `status` and `output`, or `None` if
    /// neither changed. Only a change of status is a transition, with a
    /// new `since_ms` and an entry in `changes`; a new output with the same
    /// status is kept so that a person sees the latest reason.
    pub fn changed(
        previous: Option<&HealthRecord>,
        status: Status,
        output: &str,
        now_ms: u64,
    ) -> Option<HealthRecord> {
        match previous {
            Some(p) if p.status == status && p.output == output => None,
            Some(p) if p.status == status => Some(HealthRecord { output: output.to_string(), ..p.clone() }),
            _ => {
                let mut changes = previous.map(|p| p.changes.clone()).unwrap_or_default();
                changes.push(Transition { at_ms: now_ms, status, output: output.to_string() });
                if changes.len() > HISTORY_LEN {
                    changes.drain(..changes.len() - HISTORY_LEN);
                }
                Some(HealthRecord { status, output: output.to_string(), since_ms: now_ms, changes })
            }
        }
    }
}

/// At `services/endpoints/NAME`: the passing instances, sorted by id, the
/// host ports the service publishes (each `host` port on loopback is
/// balanced over the instances' `guest` port) and the routes it declares
/// (the ingress routes them to the instances' port).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub name: String,
    pub instances: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub address: IpAddr,
    pub port: u16,
    /// The instance's machine, for a service of machines: what the ingress
    /// and published ports wake when it sleeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Its machine sleeps: a connection to it must wake it first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sleeping: bool,
}

/// At `services/history/NAME/SEQ`: one thing the platform did by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The instance it concerns, if one.
    pub instance: Option<String>,
    /// A verb: `created`, `replaced`, `removed`, `expired`, `failed`,
    /// `routes` (its routes changed).
    pub action: String,
    /// Why, as a sentence.
    pub reason: String,
}

/// How many history entries a service keeps; older ones are deleted.
pub const HISTORY_KEEP: usize = 200;

/// Checks a service name: it becomes a DNS label and a machine-name prefix
/// (`NAME-12`), so it is shorter than a machine name.
pub fn validate_name(name: &str) -> Result<(), String> {
    hearth_store::names::check_label("service", name, 50)?;
    if RESERVED.contains(&name) {
        return Err(format!(
            "the service name {name:?} is taken by hearth itself ({name}.localhost is the workflows' webhooks); pick another"
        ));
    }
    Ok(())
}

/// Names hearth uses on the ingress for its own hosts.
const RESERVED: &[&str] = &["hooks"];

/// The most routes one service declares.
pub const MAX_ROUTES: usize = 16;

/// Checks the routes a service declares (parsed already): at most
/// [`MAX_ROUTES`], each once. Whether another app or service holds one is
/// the API's to check, which sees both.
pub fn validate_routes(routes: &[Route]) -> Result<(), String> {
    if routes.len() > MAX_ROUTES {
        return Err(format!("give at most {MAX_ROUTES} routes"));
    }
    for (i, route) in routes.iter().enumerate() {
        if routes[..i].contains(route) {
            return Err(format!("the route {route} is given twice"));
        }
    }
    Ok(())
}

/// Checks an instance id given to a registration.
pub fn validate_instance_id(id: &str) -> Result<(), String> {
    hearth_store::names::check_label("instance id", id, 63)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_machine_belongs_to_a_service_only_through_an_instance_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            hearth_store::redb::RedbStore::open(&dir.path().join("s.redb"), Default::default()).unwrap();
        let instance = |id: &str, machine: Option<&str>| InstanceRecord {
            id: id.into(),
            service: "web".into(),
            address: None,
            port: 80,
            machine: machine.map(str::to_owned),
            ttl_s: None,
            checks: vec![],
            tags: vec![],
            created_at: 0,
            version: 1,
            draining_since_ms: None,
        };
        for record in [instance("web-1", Some("web-1")), instance("web-2", None)] {
            let value = serde_json::to_vec(&record).unwrap();
            hearth_store::Store::put(&store, &instance_key("web", &record.id), value, None).await.unwrap();
        }
        assert_eq!(service_of_machine(&store, "web-1").await.as_deref(), Some("web"));
        // Named like an instance, but no instance names it.
        assert_eq!(service_of_machine(&store, "web-2").await, None);
        assert_eq!(service_of_machine(&store, "web-3").await, None);
        assert_eq!(service_of_machine(&store, "web").await, None);
        assert_eq!(service_of_machine(&store, "db-1").await, None);
    }

    #[test]
    fn a_health_record_changes_only_when_the_status_or_the_output_does() {
        let first = HealthRecord::changed(None, Status::Critical, "starting", 1).expect("a first record");
        assert!(HealthRecord::changed(Some(&first), Status::Critical, "starting", 2).is_none());
        let said = HealthRecord::changed(Some(&first), Status::Critical, "refused", 2).expect("a new output");
        assert_eq!((said.since_ms, said.changes.len(), said.output.as_str()), (1, 1, "refused"));
        let passing = HealthRecord::changed(Some(&first), Status::Passing, "200 OK", 3).expect("a change");
        assert_eq!(passing.since_ms, 3);
        assert_eq!(passing.changes.len(), 2);
    }

    #[test]
    fn a_health_record_keeps_only_the_last_changes() {
        let mut record: Option<HealthRecord> = None;
        for i in 0..(HISTORY_LEN as u64 * 2) {
            let status = if i % 2 == 0 { Status::Passing } else { Status::Critical };
            record = HealthRecord::changed(record.as_ref(), status, "x", i).or(record);
        }
        let record = record.expect("a record");
        assert_eq!(record.changes.len(), HISTORY_LEN);
        assert_eq!(record.changes.last().map(|t| t.at_ms), Some(HISTORY_LEN as u64 * 2 - 1));
    }

    #[test]
    fn names_hearth_uses_itself_are_refused() {
        assert!(validate_name("web").is_ok());
        assert!(validate_name("hooks").is_err_and(|e| e.contains("workflows' webhooks")));
    }

    #[test]
    fn a_service_declares_each_route_once_and_at_most_16() {
        let routes = |texts: &[&str]| texts.iter().map(|t| Route::parse(t).unwrap()).collect::<Vec<_>>();
        assert!(validate_routes(&routes(&["shop.test/api", "shop.test", "api.test"])).is_ok());
        let twice = validate_routes(&routes(&["shop.test/api", "SHOP.test/api/"])).unwrap_err();
        assert!(twice.contains("shop.test/api is given twice"), "{twice}");
        let many: Vec<String> = (0..=MAX_ROUTES).map(|i| format!("r{i}.test")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(validate_routes(&routes(&many)).is_err_and(|e| e.contains("at most 16")));
    }

    #[test]
    fn instance_keys_split_into_service_and_id() {
        assert_eq!(split_instance_key(INSTANCES, &instance_key("web", "web-1")), Some(("web", "web-1")));
        assert_eq!(split_instance_key(HEALTH, "services/health/web"), None);
    }
}
