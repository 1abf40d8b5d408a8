//! The service registry: services of machines, registered instances,
//! apps, their health and their passing instances.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

wire_enum! {
    /// How a service's instances come to be.
    ServiceKind {
        /// hearth keeps `count` machines of an image running.
        Machines = "machines",
        /// Processes register instances under a TTL.
        Registered = "registered",
        /// A WebAssembly app: its routes on the ingress.
        App = "app",
    }
}

wire_enum! {
    /// Where a rolling update is.
    RolloutState {
        Rolling = "rolling",
        Done = "done",
        RolledBack = "rolled-back",
    }
}

wire_enum! {
    /// An instance's health.
    Health {
        Passing = "passing",
        Warning = "warning",
        Critical = "critical",
        /// Its machine sleeps: routed to when no awake instance can take a
        /// request, and woken by it; not checked meanwhile.
        Sleeping = "sleeping",
    }
}

/// A service, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Service {
    pub name: String,
    pub kind: ServiceKind,
    /// The image of a service of machines.
    pub image: Option<String>,
    /// How many machines hearth keeps (services of machines).
    pub count: Option<u32>,
    /// The port instances answer on (services of machines).
    pub port: Option<u16>,
    /// Host ports on loopback balanced over the passing instances, `HOST:PORT`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Checks in their one-line form, e.g. `http:/healthz,interval=2s`.
    pub checks: Vec<String>,
    pub instances: u32,
    /// Instances whose checks pass.
    pub passing: u32,
    /// Instances whose machines sleep (they passed before; the next
    /// request wakes one).
    #[serde(default)]
    pub sleeping: u32,
    /// Where it answers on the ingress: an app's URLs, e.g.
    /// `http://hello.localhost:8088/`; the routes a service declares,
    /// `HOST[/PATH]`, besides its own `NAME.localhost`.
    pub routes: Vec<String>,
    pub tags: Vec<String>,
    pub description: Option<String>,
    pub links: BTreeMap<String, String>,
    /// Unix seconds.
    pub created_at: u64,
    /// What does not work and what to do: a published port that cannot be
    /// bound, an app that does not load.
    #[serde(default)]
    pub problem: Option<String>,
    /// The version of the template (services of machines); each deploy makes the next.
    pub version: Option<u32>,
    /// The last rolling update, under way or ended.
    pub rollout: Option<Rollout>,
    /// Each machine sleeps after this long without a request or connection
    /// (services of machines that sleep when idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_after_secs: Option<u64>,
}

/// A rolling update from one version to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    pub from: u32,
    pub to: u32,
    pub state: RolloutState,
    /// Why it was rolled back.
    pub reason: Option<String>,
}

/// `POST /v1/services/{name}/deploy`: what changes; what is left out stays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `KEY=VALUE`, replacing the whole environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// `HOST[/PATH]`, replacing the service's routes (`[]` removes them);
    /// applied at once, with no new instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// The machines' reload action (see `CreateService`), from the next
    /// version on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_config_change: Option<String>,
    /// How long each machine may be idle before it sleeps (`5m`), or
    /// `never`, from the next version on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<Service>,
}

/// A service with every instance, passing or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceDetail {
    pub service: Service,
    pub instances: Vec<ServiceInstance>,
}

/// One instance and its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceInstance {
    pub id: String,
    /// `None` while its machine has no address yet.
    pub address: Option<String>,
    pub port: u16,
    /// The machine it runs in (services of machines).
    pub machine: Option<String>,
    pub health: Health,
    /// What the deciding check said.
    pub output: String,
    /// Unix milliseconds of the last change of health.
    pub since_ms: Option<u64>,
    /// A registration's TTL.
    pub ttl_s: Option<u64>,
    pub checks: Vec<String>,
    pub tags: Vec<String>,
    /// The last changes of health, oldest first.
    pub changes: Vec<HealthChange>,
    /// The service's version its machine is made from.
    pub version: Option<u32>,
    /// Out of the endpoints, finishing requests in flight before removal.
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthChange {
    pub at_ms: u64,
    pub health: Health,
    pub output: String,
}

/// The passing instances of a service: what DNS answers and routing uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Endpoints {
    pub name: String,
    /// The revision of the last change; pass it back as `index` to wait
    /// for the next one.
    pub index: u64,
    pub instances: Vec<Endpoint>,
    /// The routes the service declares on the ingress, `HOST[/PATH]`.
    #[serde(default)]
    pub routes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    pub id: String,
    pub address: String,
    pub port: u16,
    /// Its machine sleeps: a connection to it waits for the machine to
    /// wake (the ingress and published ports wake it; a direct connection
    /// to the address does not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sleeping: bool,
}

/// `GET /v1/services/{name}/endpoints`: with `index`, waits up to `wait`
/// for a change after that revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EndpointsQuery {
    /// The `index` of the last answer: wait for a change after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// How long to wait, e.g. `30s` (default 60 s, at most 5 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
}

/// `POST /v1/services`: a service of machines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateService {
    pub name: String,
    pub image: String,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    pub port: u16,
    /// Checks in their one-line form: `http[:PATH]`, `tcp`, `exec:COMMAND`,
    /// with options like `,interval=2s,timeout=1s,passes=1,failures=1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// `HOST:PORT` (or `HOST`, for the service's port): a loopback port on
    /// the host, each connection to it passed to a passing instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `HOST[/PATH]`: where the ingress routes to the passing instances,
    /// besides `NAME.localhost`; as an app's routes, the longest prefix on
    /// the exact host wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// The network the instances join (default: the default network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `KEY=VALUE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Overrides the image's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// What each machine's agent does after its config changed (scope
    /// `service:NAME`, then `machine:NAME`): a signal sent to the main
    /// process (`SIGHUP`), or a command run with `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_config_change: Option<String>,
    /// Each machine sleeps after this long without a request or
    /// connection (`5m`, whole seconds, at least one): its memory is saved
    /// to disk and its VM stopped, and the next request through the
    /// service's routes or ports wakes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_after: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Name to URL: a runbook, a repository, a dashboard.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
}

/// `PUT /v1/services/{name}/count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleService {
    pub count: u32,
}

/// `POST /v1/services/{name}/instances`: registers an instance under a TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterInstance {
    /// Default: made up from the service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub address: String,
    pub port: u16,
    /// Seconds without a heartbeat before the instance is gone.
    pub ttl_s: u64,
    /// `http[:PATH]` or `tcp` checks the daemon runs against it; without
    /// any, it is passing while registered, or as its heartbeats say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// `HOST[/PATH]`: if given, the service's routes from now on
    /// (replacing those it had; `[]` removes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
}

/// `PUT /v1/services/{name}/instances/{id}/heartbeat`: renews the TTL and
/// optionally sets the instance's health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// What the platform did by itself for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceHistory {
    pub entries: Vec<ServiceEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceEvent {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub instance: Option<String>,
    /// `created`, `replaced`, `restarted`, `draining`, `removed`, `failed`,
    /// `deployed`, `rolled-back`.
    pub action: String,
    pub reason: String,
}
