//! The `Services` handle: what the API asks of the registry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use hearth_machines::Machines;
use hearth_store::{Compare, KeyValue, Op, Store, Txn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::check::{CheckKind, CheckSpec};
use crate::record::{
    self, Endpoints, HealthRecord, HistoryEntry, InstanceRecord, Kind, Meta, Route, ServiceRecord, Status,
    Template,
};
use crate::{Error, Versioned};

/// The most machines one service keeps.
pub const MAX_COUNT: u32 = 64;
/// The longest a blocking query waits.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// What `create` needs for a service of machines.
#[derive(Debug, Clone)]
pub struct CreateService {
    pub name: String,
    pub template: Template,
    pub count: u32,
    pub port: u16,
    pub checks: Vec<CheckSpec>,
    /// Host ports balanced over the instances (TCP).
    pub ports: Vec<crate::record::PortSpec>,
    /// Ingress routes to the instances, besides `NAME.DOMAIN/`.
    pub routes: Vec<Route>,
    pub meta: Meta,
}

/// What a deploy changes in a service's template, or its routes; `None`
/// keeps what it is.
#[derive(Debug, Clone, Default)]
pub struct Deploy {
    pub image: Option<String>,
    pub env: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// The service's routes from now on (`Some(vec![])` removes them all).
    pub routes: Option<Vec<Route>>,
    /// The machines' reload action from now on.
    pub on_config_change: Option<String>,
    /// How long each machine may be idle before it sleeps from now on
    /// (`Some(None)`: it never sleeps).
    pub sleep_after_secs: Option<Option<u64>>,
}

impl Deploy {
    /// Whether it changes the template, which takes new instances (a
    /// change of routes alone takes none).
    fn changes_template(&self) -> bool {
        self.image.is_some()
            || self.env.is_some()
            || self.command.is_some()
            || self.cpus.is_some()
            || self.memory_mib.is_some()
            || self.on_config_change.is_some()
            || self.sleep_after_secs.is_some()
    }
}

/// What `register` needs.
#[derive(Debug, Clone)]
pub struct Register {
    /// `None`: one is made up from the service's name.
    pub id: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    /// Seconds without a heartbeat before the instance is gone.
    pub ttl_s: u64,
    /// Checks the daemon runs against it, if any; without, it is passing
    /// while registered (or as its heartbeats say).
    pub checks: Vec<CheckSpec>,
    pub tags: Vec<String>,
    /// The service's routes from now on, if given: a registered service has
    /// no other definition to declare them in.
    pub routes: Option<Vec<Route>>,
}

/// A service with its instances and their health.
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub record: ServiceRecord,
    pub instances: Vec<(InstanceRecord, Option<HealthRecord>)>,
}

/// A cheap-to-clone handle to the registry.
#[derive(Clone)]
pub struct Services {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) machines: Machines,
    /// Where new instance machines go, when hosts share the store.
    pub(crate) placer: StdMutex<Option<Arc<dyn Placer>>>,
    /// Wakes the supervisor for a pass.
    pub(crate) kick: Notify,
    /// Makes history keys unique within a millisecond.
    pub(crate) history_seq: StdMutex<u64>,
    /// What the supervisor writes through during a leader's term (the
    /// fenced store, [`Services::run_fenced`]); the store otherwise.
    pub(crate) writer: StdMutex<Option<Arc<dyn Store>>>,
}

/// Picks the host a new instance machine goes to.
#[async_trait::async_trait]
pub trait Placer: Send + Sync + 'static {
    /// The host for a machine of `memory_mib`, given how many instances of
    /// the same service each host runs already (`siblings`, to spread
    /// them); or why no host can take it, as a sentence.
    async fn place(
        &self,
        memory_mib: u64,
        siblings: std::collections::BTreeMap<String, u32>,
    ) -> Result<String, String>;

    /// The other hosts whose machines this host's own connections reach
    /// (its networks span hosts, and theirs do), so that checks run from
    /// here can judge their instances.
    async fn reachable_hosts(&self) -> std::collections::BTreeSet<String> {
        std::collections::BTreeSet::new()
    }

    /// The hosts being drained (`hearth host drain`): their instances
    /// move to other hosts.
    async fn draining_hosts(&self) -> std::collections::BTreeSet<String> {
        std::collections::BTreeSet::new()
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

impl Services {
    pub fn new(store: Arc<dyn Store>, machines: Machines) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                machines,
                placer: StdMutex::new(None),
                kick: Notify::new(),
                history_seq: StdMutex::new(0),
                writer: StdMutex::new(None),
            }),
        }
    }

    /// Sets how instance machines are placed on hosts; without one, they
    /// run on the host whose supervisor makes them.
    pub fn set_placer(&self, placer: Arc<dyn Placer>) {
        *self.inner.placer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(placer);
    }

    pub(crate) fn placer(&self) -> Option<Arc<dyn Placer>> {
        self.inner.placer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The store the supervisor writes through: fenced by the leader's
    /// term while [`Services::run_fenced`] runs.
    pub(crate) fn writer(&self) -> Arc<dyn Store> {
        let writer = self.inner.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        writer.clone().unwrap_or_else(|| self.inner.store.clone())
    }

    /// The machines service as the supervisor writes: instance machines
    /// made, started and removed through the fenced store during a term.
    pub(crate) fn machines(&self) -> Machines {
        let writer = self.inner.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match writer.clone() {
            Some(writer) => self.inner.machines.writing_through(writer),
            None => self.inner.machines.clone(),
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Records a service of machines; the supervisor brings up its instances.
    pub async fn create(&self, req: CreateService) -> Result<ServiceRecord, Error> {
        record::validate_name(&req.name).map_err(Error::Invalid)?;
        if req.count > MAX_COUNT {
            return Err(Error::Invalid(format!(
                "a count of {} is too many: give at most {MAX_COUNT}",
                req.count
            )));
        }
        if req.port == 0 {
            return Err(Error::Invalid("give the port the instances answer on, with --port".into()));
        }
        check_checks(&req.checks, Kind::Machines)?;
        record::validate_routes(&req.routes).map_err(Error::Invalid)?;
        check_meta(&req.meta)?;
        self.check_ports(&req.ports).await?;
        self.check_image(&req.template.image).await?;
        if let Some(network) = &req.template.network
            && self.store().get(&format!("networks/{network}")).await?.is_none()
        {
            return Err(Error::Invalid(format!(
                "network {network:?} does not exist: create it with `hearth network create {network}`, or leave out --network"
            )));
        }
        for i in 1..=req.count.max(1) {
            let machine = instance_name(&req.name, i);
            if self.store().get(&hearth_machines::record::key(&machine)).await?.is_some() {
                return Err(Error::Invalid(format!(
                    "a machine named {machine:?} already exists and is not this service's: remove it or pick another service name"
                )));
            }
        }
        let record = ServiceRecord {
            name: req.name.clone(),
            kind: Kind::Machines,
            template: Some(req.template),
            count: req.count,
            port: req.port,
            checks: req.checks,
            ports: req.ports,
            routes: req.routes,
            meta: req.meta,
            created_at: record::now_ms() / 1000,
            version: 1,
            previous: None,
            rollout: None,
        };
        let key = record::def_key(&req.name);
        let txn = Txn::new().when(Compare::missing(&key)).and_then(Op::Put {
            key,
            value: to_json(&record),
            lease: None,
        });
        if !self.store().txn(txn).await?.succeeded {
            return Err(Error::AlreadyExists(req.name));
        }
        self.inner.kick.notify_one();
        Ok(record)
    }

    pub async fn get(&self, name: &str) -> Result<ServiceRecord, Error> {
        let key = record::def_key(name);
        let kv = self.store().get(&key).await?.ok_or_else(|| Error::NotFound(name.to_string()))?;
        parse(&kv)
    }

    pub async fn list(&self) -> Result<Vec<ServiceRecord>, Error> {
        let range = self.store().range(record::DEFS).await?;
        range.kvs.iter().map(parse).collect()
    }

    /// A service with all its instances (passing or not) and their health.
    pub async fn view(&self, name: &str) -> Result<ServiceView, Error> {
        let record = self.get(name).await?;
        let instances = self.store().range(&record::instances_prefix(name)).await?;
        let health = self.store().range(&record::health_prefix(name)).await?;
        let mut by_id: HashMap<String, HealthRecord> = HashMap::new();
        for kv in &health.kvs {
            if let Some((_, id)) = record::split_instance_key(record::HEALTH, &kv.key) {
                by_id.insert(id.to_string(), parse(kv)?);
            }
        }
        let mut out = Vec::new();
        for kv in &instances.kvs {
            let instance: InstanceRecord = parse(kv)?;
            let health = by_id.remove(&instance.id);
            out.push((instance, health));
        }
        out.sort_by(|a, b| natural(&a.0.id).cmp(&natural(&b.0.id)));
        Ok(ServiceView { record, instances: out })
    }

    /// The passing instances, with the revision of their last change.
    pub async fn endpoints(&self, name: &str) -> Result<Versioned<Endpoints>, Error> {
        self.get(name).await?;
        let key = record::endpoints_key(name);
        Ok(match self.store().get(&key).await? {
            Some(kv) => Versioned { value: parse(&kv)?, index: kv.mod_revision },
            None => {
                Versioned { value: Endpoints { name: name.to_string(), ..Endpoints::default() }, index: 0 }
            }
        })
    }

    /// Like [`endpoints`](Self::endpoints), but waits up to `wait` for a
    /// change after revision `index`: it returns early only when the set of
    /// passing instances really changed (or the service went away).
    pub async fn wait_endpoints(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Versioned<Endpoints>, Error> {
        // Anything after `seen` is either in `current` or in the watches.
        let seen = self.store().revision().await?;
        let current = self.endpoints(name).await?;
        if current.index > index {
            return Ok(current);
        }
        let watch = self.store().watch(&record::endpoints_key(name), seen + 1).await?;
        let defs = self.store().watch(&record::def_key(name), seen + 1).await?;
        let mut changes = futures::stream::select(watch, defs);
        let deadline = tokio::time::sleep(wait.min(MAX_WAIT));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                change = changes.next() => {
                    // A change of the definition (a deploy, a scale) is not
                    // one of the passing set: only its removal ends the wait.
                    let now = self.endpoints(name).await?;
                    if now.index > index || change.is_none() {
                        return Ok(now);
                    }
                }
                () = &mut deadline => return self.endpoints(name).await,
            }
        }
    }

    /// Changes how many machines a service keeps.
    pub async fn scale(&self, name: &str, count: u32) -> Result<ServiceRecord, Error> {
        if count > MAX_COUNT {
            return Err(Error::Invalid(format!("a count of {count} is too many: give at most {MAX_COUNT}")));
        }
        let key = record::def_key(name);
        for _ in 0..5 {
            let kv = self.store().get(&key).await?.ok_or_else(|| Error::NotFound(name.to_string()))?;
            let mut record: ServiceRecord = parse(&kv)?;
            if record.kind != Kind::Machines {
                return Err(Error::NotMachines(name.to_string()));
            }
            record.count = count;
            let txn = Txn::new().when(Compare::mod_revision(&key, kv.mod_revision)).and_then(Op::Put {
                key: key.clone(),
                value: to_json(&record),
                lease: None,
            });
            if self.store().txn(txn).await?.succeeded {
                self.inner.kick.notify_one();
                return Ok(record);
            }
        }
        Err(Error::Conflict(name.to_string()))
    }

    /// Starts a rolling update to a new version of the template: one new
    /// instance at a time, each old one drained only once the new ones
    /// pass; a new instance that never passes rolls the service back. New
    /// routes apply at once, with or without a new template: they take no
    /// new instance. Each change of routes is written to the history.
    pub async fn deploy(&self, name: &str, change: Deploy) -> Result<ServiceRecord, Error> {
        if let Some(image) = &change.image {
            self.check_image(image).await?;
        }
        if let Some(routes) = &change.routes {
            record::validate_routes(routes).map_err(Error::Invalid)?;
        }
        if !change.changes_template() {
            let Some(routes) = change.routes else {
                return Err(Error::Invalid(format!(
                    "nothing to deploy to service {name:?}: give a new --image, --env, command, --route or --sleep-after"
                )));
            };
            return self.set_routes(name, routes).await;
        }
        let key = record::def_key(name);
        for _ in 0..5 {
            let kv = self.store().get(&key).await?.ok_or_else(|| Error::NotFound(name.to_string()))?;
            let mut record: ServiceRecord = parse(&kv)?;
            let Some(current) = record.template.clone().filter(|_| record.kind == Kind::Machines) else {
                return Err(Error::NotMachines(name.to_string()));
            };
            let routes_before = record.routes.clone();
            if let Some(routes) = &change.routes {
                record.routes.clone_from(routes);
            }
            let mut next = current.clone();
            if let Some(image) = &change.image {
                next.image.clone_from(image);
            }
            if let Some(env) = &change.env {
                next.env.clone_from(env);
            }
            if let Some(command) = &change.command {
                next.command = Some(command.clone());
            }
            if let Some(cpus) = change.cpus {
                next.cpus = cpus;
            }
            if let Some(action) = &change.on_config_change {
                next.on_config_change = Some(action.clone());
            }
            if let Some(memory_mib) = change.memory_mib {
                next.memory_mib = memory_mib;
            }
            if let Some(after) = change.sleep_after_secs {
                next.sleep_after_secs = after;
            }
            if next == current {
                if record.routes != routes_before {
                    return self.set_routes(name, record.routes).await;
                }
                return Err(Error::Invalid(format!(
                    "service {name:?} already runs this (version {}): give a new --image, --env, command, --route or --sleep-after",
                    record.version
                )));
            }
            let to = record.version.max(record.rollout.as_ref().map_or(0, |r| r.to)) + 1;
            record.previous =
                Some(crate::record::TemplateVersion { version: record.version, template: current });
            record.rollout = Some(crate::record::Rollout {
                from: record.version,
                to,
                state: crate::record::RolloutState::Rolling,
                reason: None,
                started_ms: record::now_ms(),
                ended_ms: None,
            });
            record.version = to;
            record.template = Some(next);
            let txn = Txn::new().when(Compare::mod_revision(&key, kv.mod_revision)).and_then(Op::Put {
                key: key.clone(),
                value: to_json(&record),
                lease: None,
            });
            if self.store().txn(txn).await?.succeeded {
                if record.routes != routes_before {
                    self.routes_changed(&record).await?;
                }
                self.inner.kick.notify_one();
                return Ok(record);
            }
        }
        Err(Error::Conflict(name.to_string()))
    }

    /// Sets a service's routes, of machines or registered, at once: no
    /// instance changes, the ingress follows the endpoints record.
    pub async fn set_routes(&self, name: &str, routes: Vec<Route>) -> Result<ServiceRecord, Error> {
        record::validate_routes(&routes).map_err(Error::Invalid)?;
        let key = record::def_key(name);
        for _ in 0..5 {
            let kv = self.store().get(&key).await?.ok_or_else(|| Error::NotFound(name.to_string()))?;
            let mut record: ServiceRecord = parse(&kv)?;
            if record.routes == routes {
                return Ok(record);
            }
            record.routes.clone_from(&routes);
            let txn = Txn::new().when(Compare::mod_revision(&key, kv.mod_revision)).and_then(Op::Put {
                key: key.clone(),
                value: to_json(&record),
                lease: None,
            });
            if self.store().txn(txn).await?.succeeded {
                self.routes_changed(&record).await?;
                return Ok(record);
            }
        }
        Err(Error::Conflict(name.to_string()))
    }

    /// Publishes a service's new routes and writes them to its history.
    async fn routes_changed(&self, record: &ServiceRecord) -> Result<(), Error> {
        self.publish(&record.name).await?;
        let reason = if record.routes.is_empty() {
            "no routes besides its own name any more".to_string()
        } else {
            let routes: Vec<String> = record.routes.iter().map(ToString::to_string).collect();
            format!("routes are now {}", routes.join(", "))
        };
        self.record_history(&record.name, None, "routes", reason).await;
        Ok(())
    }

    /// Host ports a service may publish: TCP, each once, and not forwarded
    /// already by another service or a machine.
    async fn check_ports(&self, ports: &[crate::record::PortSpec]) -> Result<(), Error> {
        let mut seen = std::collections::HashSet::new();
        for port in ports {
            if port.udp {
                return Err(Error::Invalid(format!("{port}: a service balances TCP only; drop /udp")));
            }
            if !seen.insert(port.host) {
                return Err(Error::Invalid(format!("host port {} is given twice", port.host)));
            }
        }
        self.check_published(ports).await?;
        for kv in self.store().range(hearth_machines::record::PREFIX).await?.kvs {
            let Ok(machine) = serde_json::from_slice::<hearth_machines::record::MachineRecord>(&kv.value)
            else {
                continue;
            };
            if let Some(port) = machine.spec.ports.iter().find(|p| !p.udp && seen.contains(&p.host)) {
                return Err(Error::PortTaken { port: port.host, by: format!("machine {}", machine.name) });
            }
        }
        Ok(())
    }

    /// Refuses host ports a service already publishes: what `machine run
    /// -p` checks too.
    pub async fn check_published(&self, ports: &[crate::record::PortSpec]) -> Result<(), Error> {
        for kv in self.store().range(record::DEFS).await?.kvs {
            let other: ServiceRecord = parse(&kv)?;
            let taken = other.ports.iter().find(|p| ports.iter().any(|q| !q.udp && q.host == p.host));
            if let Some(port) = taken {
                return Err(Error::PortTaken { port: port.host, by: format!("service {}", other.name) });
            }
        }
        Ok(())
    }

    async fn check_image(&self, image: &str) -> Result<(), Error> {
        let images = self.inner.machines.images();
        let wanted = image.to_string();
        let found = tokio::task::spawn_blocking(move || images.get(&wanted))
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?
            .map_err(hearth_machines::Error::from)?;
        if found.is_none() {
            return Err(Error::Machines(hearth_machines::Error::ImageNotFound(image.to_string())));
        }
        Ok(())
    }

    /// Removes a service: its machines, instances, health, endpoints and history.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        let key = record::def_key(name);
        let kv = self.store().get(&key).await?.ok_or_else(|| Error::NotFound(name.to_string()))?;
        let _: ServiceRecord = parse(&kv)?;
        // The definition goes first: from then on the supervisor creates
        // nothing for it, and cleans up whatever this call does not finish.
        self.store().delete(&key).await?;
        self.purge(name).await;
        Ok(())
    }

    /// Removes what a service without a definition left: machines,
    /// instances (and their leases), health, endpoints, history.
    pub(crate) async fn purge(&self, name: &str) {
        let instances =
            self.store().range(&record::instances_prefix(name)).await.map(|r| r.kvs).unwrap_or_default();
        for kv in &instances {
            let Ok(instance) = parse::<InstanceRecord>(kv) else { continue };
            if let Some(machine) = &instance.machine {
                match self.inner.machines.remove(machine, true).await {
                    Ok(()) | Err(hearth_machines::Error::NotFound(_)) => {}
                    Err(error) => {
                        tracing::warn!(service = name, machine, error = %error, "Cannot remove a machine of a removed service.");
                        continue;
                    }
                }
            }
            if let Some(lease) = kv.lease {
                let _ = self.store().lease_revoke(lease).await;
            }
        }
        let txn = Txn::new()
            .and_then(Op::DeletePrefix { prefix: record::instances_prefix(name) })
            .and_then(Op::DeletePrefix { prefix: record::health_prefix(name) })
            .and_then(Op::DeletePrefix { prefix: record::history_prefix(name) })
            .and_then(Op::Delete { key: record::endpoints_key(name) });
        if let Err(error) = self.store().txn(txn).await {
            tracing::warn!(service = name, error = %error, "Cannot delete a removed service's records; the supervisor retries.");
        }
    }

    /// Registers an instance under a lease of `ttl_s`, creating the
    /// service (registered) if it does not exist. Registering an id again
    /// replaces it. Returns the instance and the health it starts with
    /// (passing without checks, critical until checked), as written: its
    /// checker may change it at once.
    pub async fn register(&self, name: &str, req: Register) -> Result<(InstanceRecord, HealthRecord), Error> {
        record::validate_name(name).map_err(Error::Invalid)?;
        let id = match req.id {
            Some(id) => {
                record::validate_instance_id(&id).map_err(Error::Invalid)?;
                id
            }
            None => format!("{name}-{:08x}", rand_u32()),
        };
        if req.port == 0 {
            return Err(Error::Invalid("give the port the instance answers on".into()));
        }
        if !(1..=86_400).contains(&req.ttl_s) {
            return Err(Error::Invalid(format!(
                "a TTL of {} s is out of range: give from 1 s to 1 day",
                req.ttl_s
            )));
        }
        check_checks(&req.checks, Kind::Registered)?;
        check_tags(&req.tags)?;
        if let Some(routes) = &req.routes {
            record::validate_routes(routes).map_err(Error::Invalid)?;
        }
        let def = self.ensure_registered(name).await?;
        if def.kind != Kind::Registered {
            return Err(Error::NotRegistered(name.to_string()));
        }
        if let Some(routes) = req.routes {
            self.set_routes(name, routes).await?;
        }
        let def_key = record::def_key(name);
        let key = record::instance_key(name, &id);
        let previous = self.store().get(&key).await?.and_then(|kv| kv.lease);
        let lease = self.store().lease_grant(Duration::from_secs(req.ttl_s)).await?;
        let instance = InstanceRecord {
            id: id.clone(),
            service: name.to_string(),
            address: Some(req.address),
            port: req.port,
            machine: None,
            ttl_s: Some(req.ttl_s),
            checks: req.checks,
            tags: req.tags,
            created_at: record::now_ms() / 1000,
            version: 1,
            draining_since_ms: None,
        };
        let mut txn = Txn::new().when(Compare::exists(&def_key)).and_then(Op::Put {
            key: key.clone(),
            value: to_json(&instance),
            lease: Some(lease.id),
        });
        // Without checks of its own, an instance is passing while registered.
        let (status, output) = if instance.checks.is_empty() {
            (Status::Passing, "registered")
        } else {
            (Status::Critical, "not checked yet")
        };
        let health = HealthRecord::changed(None, status, output, record::now_ms())
            .expect("a first record is a change");
        txn = txn.and_then(Op::Put {
            key: record::health_key(name, &id),
            value: to_json(&health),
            lease: Some(lease.id),
        });
        if !self.store().txn(txn).await?.succeeded {
            let _ = self.store().lease_revoke(lease.id).await;
            return Err(Error::NotFound(name.to_string()));
        }
        if let Some(old) = previous.filter(|old| *old != lease.id) {
            let _ = self.store().lease_revoke(old).await;
        }
        self.publish(name).await?;
        Ok((instance, health))
    }

    /// The definition of a registered service, made if it is missing.
    async fn ensure_registered(&self, name: &str) -> Result<ServiceRecord, Error> {
        let def_key = record::def_key(name);
        if let Some(kv) = self.store().get(&def_key).await? {
            return parse(&kv);
        }
        let record = ServiceRecord {
            name: name.to_string(),
            kind: Kind::Registered,
            template: None,
            count: 0,
            port: 0,
            checks: vec![],
            ports: vec![],
            routes: vec![],
            meta: Meta::default(),
            created_at: record::now_ms() / 1000,
            version: 1,
            previous: None,
            rollout: None,
        };
        let txn = Txn::new().when(Compare::missing(&def_key)).and_then(Op::Put {
            key: def_key.clone(),
            value: to_json(&record),
            lease: None,
        });
        self.store().txn(txn).await?;
        match self.store().get(&def_key).await? {
            Some(kv) => parse(&kv),
            None => Err(Error::Conflict(name.to_string())),
        }
    }

    /// Makes a machine an instance of a registered service (made if
    /// missing), answering on `port`, for as long as the machine exists:
    /// `machine run --service NAME:PORT`. It is passing while the machine
    /// runs; hearth never replaces or restarts it (it is the user's).
    pub async fn join(&self, name: &str, port: u16, machine: &str) -> Result<InstanceRecord, Error> {
        record::validate_name(name).map_err(Error::Invalid)?;
        if port == 0 {
            return Err(Error::Invalid("give the port the machine answers on, as NAME:PORT".into()));
        }
        let def = self.ensure_registered(name).await?;
        if def.kind != Kind::Registered {
            return Err(Error::NotRegistered(name.to_string()));
        }
        let instance = InstanceRecord {
            id: machine.to_string(),
            service: name.to_string(),
            address: None,
            port,
            machine: Some(machine.to_string()),
            ttl_s: None,
            checks: vec![],
            tags: vec![],
            created_at: record::now_ms() / 1000,
            version: 1,
            draining_since_ms: None,
        };
        let key = record::instance_key(name, machine);
        let txn = Txn::new()
            .when(Compare::exists(record::def_key(name)))
            .when(Compare::missing(&key))
            .and_then(Op::Put { key, value: to_json(&instance), lease: None });
        if !self.store().txn(txn).await?.succeeded {
            return Err(Error::Invalid(format!(
                "service {name:?} already has an instance named {machine:?}"
            )));
        }
        self.inner.kick.notify_one();
        Ok(instance)
    }

    /// Renews a registration's lease and, if a status is given, records it
    /// as the instance's health.
    pub async fn heartbeat(
        &self,
        name: &str,
        id: &str,
        status: Option<Status>,
        output: Option<String>,
    ) -> Result<(), Error> {
        let key = record::instance_key(name, id);
        let gone = || Error::InstanceNotFound { service: name.to_string(), id: id.to_string() };
        let kv = self.store().get(&key).await?.ok_or_else(gone)?;
        let Some(lease) = kv.lease else {
            return Err(Error::NotRegistered(name.to_string()));
        };
        match self.store().lease_keep_alive(lease).await {
            Ok(_) => {}
            Err(hearth_store::Error::LeaseNotFound(_)) => return Err(gone()),
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = status {
            let output = crate::check::truncate(output.as_deref().unwrap_or("set by a heartbeat"));
            let health_key = record::health_key(name, id);
            let previous = match self.store().get(&health_key).await? {
                Some(kv) => Some(parse::<HealthRecord>(&kv)?),
                None => None,
            };
            if let Some(next) = HealthRecord::changed(previous.as_ref(), status, &output, record::now_ms()) {
                let txn = Txn::new().when(Compare::exists(&key)).and_then(Op::Put {
                    key: health_key,
                    value: to_json(&next),
                    lease: Some(lease),
                });
                self.store().txn(txn).await?;
                self.publish(name).await?;
            }
        }
        Ok(())
    }

    /// Removes a registered instance at once.
    pub async fn deregister(&self, name: &str, id: &str) -> Result<(), Error> {
        let key = record::instance_key(name, id);
        let kv = self
            .store()
            .get(&key)
            .await?
            .ok_or_else(|| Error::InstanceNotFound { service: name.to_string(), id: id.to_string() })?;
        let instance: InstanceRecord = parse(&kv)?;
        if let (Some(machine), None) = (&instance.machine, kv.lease)
            && self.get(name).await.is_ok_and(|d| d.kind == Kind::Registered)
        {
            return Err(Error::Invalid(format!(
                "instance {id:?} is machine {machine:?}, which joined by hand: `hearth machine rm {machine}` takes it out"
            )));
        }
        if instance.machine.is_some() {
            return Err(Error::Invalid(format!(
                "instance {id:?} is a machine hearth keeps for service {name:?}: scale the service instead (`hearth service scale {name} N`)"
            )));
        }
        // The history entry, in the same revision as the delete, tells the
        // supervisor that this instance was taken out, not expired.
        let entry = HistoryEntry {
            at_ms: record::now_ms(),
            instance: Some(id.to_string()),
            action: "deregistered".into(),
            reason: "deregistered through the API".into(),
        };
        let txn = Txn::new()
            .and_then(Op::Delete { key })
            .and_then(Op::Delete { key: record::health_key(name, id) })
            .and_then(Op::Put {
                key: format!("{}{:015}-dereg-{id}", record::history_prefix(name), entry.at_ms),
                value: to_json(&entry),
                lease: None,
            });
        self.store().txn(txn).await?;
        if let Some(lease) = kv.lease {
            let _ = self.store().lease_revoke(lease).await;
        }
        self.publish(name).await?;
        Ok(())
    }

    /// Which service each instance machine belongs to: machine name to
    /// service name.
    pub async fn machine_owners(&self) -> Result<HashMap<String, String>, Error> {
        let range = self.store().range(record::INSTANCES).await?;
        let mut owners = HashMap::new();
        for kv in &range.kvs {
            let instance: InstanceRecord = parse(kv)?;
            if let Some(machine) = instance.machine {
                owners.insert(machine, instance.service);
            }
        }
        Ok(owners)
    }

    /// What the platform did by itself for a service, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<HistoryEntry>, Error> {
        let range = self.store().range(&record::history_prefix(name)).await?;
        if range.kvs.is_empty() {
            self.get(name).await?;
        }
        range.kvs.iter().map(parse).collect()
    }

    /// Appends to a service's history, keeping the last [`record::HISTORY_KEEP`].
    pub(crate) async fn record_history(
        &self,
        name: &str,
        instance: Option<&str>,
        action: &str,
        reason: String,
    ) {
        let at_ms = record::now_ms();
        let seq = {
            let mut seq = self.inner.history_seq.lock().unwrap_or_else(PoisonError::into_inner);
            *seq += 1;
            *seq % 10_000
        };
        tracing::info!(service = name, instance, action, reason, "Service history.");
        let entry = HistoryEntry {
            at_ms,
            instance: instance.map(str::to_string),
            action: action.to_string(),
            reason,
        };
        let key = format!("{}{at_ms:015}-{seq:04}", record::history_prefix(name));
        let def = record::def_key(name);
        let txn = Txn::new().when(Compare::exists(&def)).and_then(Op::Put {
            key,
            value: to_json(&entry),
            lease: None,
        });
        if let Err(error) = self.store().txn(txn).await {
            tracing::warn!(service = name, error = %error, "Cannot record the service's history.");
            return;
        }
        let _ =
            hearth_store::keep_newest(&**self.store(), &record::history_prefix(name), record::HISTORY_KEEP)
                .await;
    }
}

/// The machine name of a service's `i`th instance.
pub(crate) fn instance_name(service: &str, i: u32) -> String {
    format!("{service}-{i}")
}

/// Sorts `web-2` before `web-10`.
fn natural(id: &str) -> (&str, u32) {
    match (id.rsplit_once('-'), crate::plan::number(id)) {
        (Some((head, _)), Some(n)) => (head, n),
        _ => (id, 0),
    }
}

fn check_checks(checks: &[CheckSpec], kind: Kind) -> Result<(), Error> {
    if checks.len() > 8 {
        return Err(Error::Invalid("give at most 8 checks".into()));
    }
    for check in checks {
        check.validate().map_err(Error::Invalid)?;
        match (&check.kind, kind) {
            (CheckKind::Ttl { .. }, _) => {
                return Err(Error::Invalid(
                    "a ttl check is a registration's TTL: register the instance with a TTL and send heartbeats (`hearth service register --ttl`)"
                        .into(),
                ));
            }
            (CheckKind::Exec { .. }, Kind::Registered) => {
                return Err(Error::Invalid(
                    "an exec check runs in a machine: registered instances take http and tcp checks".into(),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<(), Error> {
    if tags.len() > 32 || tags.iter().any(|t| t.is_empty() || t.len() > 64 || t.chars().any(char::is_control))
    {
        return Err(Error::Invalid("give at most 32 tags, each 1 to 64 printable characters".into()));
    }
    Ok(())
}

fn check_meta(meta: &Meta) -> Result<(), Error> {
    check_tags(&meta.tags)?;
    if meta.description.as_ref().is_some_and(|d| d.len() > 1024) {
        return Err(Error::Invalid("a description is at most 1024 bytes".into()));
    }
    if meta.links.len() > 16
        || meta
            .links
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 2048 || !v.contains("://"))
    {
        return Err(Error::Invalid(
            "give at most 16 links, each NAME=URL with a scheme, like runbook=https://…".into(),
        ));
    }
    Ok(())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    );
    h.finish() as u32
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

pub(crate) fn parse<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, Error> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt(kv.key.clone(), e))
}
