//! The supervisor: a reconciler that keeps every service true without a
//! person.
//!
//! It follows service definitions, instances, health and machines, and on
//! every change (and once a second, for its timers) makes one idempotent
//! pass over all of them:
//!
//! 1. A service of machines has exactly the instances `NAME-1` to
//!    `NAME-COUNT`: a missing instance record is written first, then its
//!    machine made; instances past the count are removed with their machines.
//! 2. An instance whose machine is missing is given one; a machine that
//!    failed, or was lost with its host, is replaced; a stopped one is started; a running one whose
//!    checks stayed critical for [`grace`] is replaced. Replacements back off
//!    per instance, from [`FIRST_BACKOFF`] doubling to [`MAX_BACKOFF`], so a
//!    crash loop does not spin; an instance passing for [`MAX_BACKOFF`] is
//!    forgiven. Each such act is written to the service's history.
//! 3. An instance whose machine is not running is critical at once (no
//!    check needed to know it); a running one is judged by its checks, each
//!    instance by a checker task of its own (see [`checker`]). One whose
//!    machine sleeps (or is falling asleep, or waking) having passed is
//!    `sleeping`: not checked, not replaced, and still published, so that
//!    the next request wakes it; once it runs, its checks go on from
//!    passing. One that fell asleep before it passed stays critical and is
//!    woken, so that its checks decide (and, failing, replace it).
//! 4. `services/endpoints/NAME` is rewritten when the set of passing (or
//!    sleeping) instances changes, and only then.
//! 5. What a removed service left (instances, machines, health) is removed.
//!
//! When hosts share the store, only the leader's supervisor runs (the
//! daemon starts it with each term and stops it when the term ends), and
//! new instance machines go where the [`crate::Placer`] says, spread over
//! hosts. Checks run from the leader, which reaches another host's
//! machines when networks span both hosts (the placer's
//! `reachable_hosts`); an instance running on a host it cannot reach
//! passes while its machine runs, and its health says so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_machines::CreateRequest;
use hearth_machines::record::{Desired, MachineRecord, State};
use hearth_store::{Compare, Follower, Op, Store, Txn};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::check::CheckSpec;
use crate::checker::{checker, write_health};
use crate::plan::{self, Action, Member};
use crate::record::{
    self, Endpoint, Endpoints, HealthRecord, HistoryEntry, InstanceRecord, Kind, RolloutState, ServiceRecord,
    Status,
};
use crate::service::{Services, parse, to_json};

/// The first wait before a replacement, after a replacement.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between replacements of one instance.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long a running machine's checks may stay critical before it is
/// replaced: 30 s, or five intervals of its slowest check if longer.
pub(crate) fn grace(checks: &[CheckSpec]) -> Duration {
    let slowest = checks.iter().map(CheckSpec::interval).max().unwrap_or_default();
    (slowest * 5).max(Duration::from_secs(30))
}

#[derive(Default)]
struct Supervisor {
    checkers: HashMap<String, Checker>,
    backoff: HashMap<String, Backoff>,
    /// The last failure said per instance, so a retry that fails the same
    /// way is not written to the history again.
    failures: HashMap<String, String>,
}

struct Checker {
    fingerprint: String,
    task: JoinHandle<()>,
}

struct Backoff {
    next_at: Instant,
    delay: Duration,
}

impl Supervisor {
    fn may_act(&self, key: &str) -> bool {
        self.backoff.get(key).is_none_or(|b| Instant::now() >= b.next_at)
    }

    fn bump(&mut self, key: &str) {
        let delay = self.backoff.get(key).map_or(FIRST_BACKOFF, |b| (b.delay * 2).min(MAX_BACKOFF));
        self.backoff.insert(key.to_string(), Backoff { next_at: Instant::now() + delay, delay });
    }

    async fn stop_checker(&mut self, key: &str) {
        if let Some(checker) = self.checkers.remove(key) {
            checker.task.abort();
            let _ = checker.task.await;
        }
    }
}

/// Where an instance's machine is with sleep, as far as the registry is
/// concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asleep {
    /// Awake (or stopped, or failed): judged as any machine.
    No,
    /// Asked to sleep, asleep, or waking from it, having passed before:
    /// routed to, and woken by the next request.
    Routable,
    /// The same, but its checks had not passed (or had failed) when it
    /// fell asleep: not routed to; woken, so that its checks decide.
    BeforePassing,
}

/// Where `machine` is with sleep, given the instance's last `health`.
/// Waking (starting, or caught mid-save) counts as asleep only while its
/// health still says it sleeps; a machine to stop is not asleep.
fn asleep(machine: &MachineRecord, health: Option<&HealthRecord>) -> Asleep {
    let was = health.map(|h| h.status);
    let sleeping = match (machine.desired, machine.status.state) {
        (Desired::Stopped, _) => false,
        (_, State::Sleeping) | (Desired::Sleeping, State::Running | State::Stopping) => true,
        (Desired::Running, State::Starting | State::Stopping) => was == Some(Status::Sleeping),
        _ => false,
    };
    match (sleeping, was) {
        (false, _) => Asleep::No,
        (true, Some(Status::Passing | Status::Sleeping)) => Asleep::Routable,
        (true, _) => Asleep::BeforePassing,
    }
}

/// Everything a pass reads, at one revision.
struct Snapshot {
    defs: BTreeMap<String, ServiceRecord>,
    instances: Vec<(String, InstanceRecord)>,
    health: HashMap<String, HealthRecord>,
    endpoints: HashMap<String, Endpoints>,
    machines: HashMap<String, MachineRecord>,
}

impl Services {
    /// The supervisor loop; returns when `shutdown` turns true.
    /// As [`Services::run`], every write through `writer`: the store fenced
    /// by this host's term as leader, so that a leader deposed without
    /// knowing it writes nothing once another is elected.
    pub async fn run_fenced(
        self,
        writer: std::sync::Arc<dyn hearth_store::Store>,
        shutdown: watch::Receiver<bool>,
    ) {
        *self.inner.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(writer);
        self.clone().run(shutdown).await;
        *self.inner.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let from = loop {
            match self.writer().revision().await {
                Ok(revision) => break revision + 1,
                Err(error) => {
                    tracing::warn!(error = %error, "Cannot read the store's revision; retrying.");
                    tokio::select! {
                        () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let store = self.writer().clone();
        let mut defs = Follower::new(store.clone(), record::DEFS, from, "Services");
        let mut instances = Follower::new(store.clone(), record::INSTANCES, from, "Service instances");
        let mut health = Follower::new(store.clone(), record::HEALTH, from, "Service health");
        let mut machines =
            Follower::new(store.clone(), hearth_machines::record::PREFIX, from, "Services' machines");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = Supervisor::default();
        let mut leases = Registrations::default();
        if let Ok(range) = store.range(record::INSTANCES).await {
            leases.keys = range.kvs.iter().filter(|kv| kv.lease.is_some()).map(|kv| kv.key.clone()).collect();
        }
        loop {
            tokio::select! {
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                () = self.inner.kick.notified() => {}
                _ = defs.next() => {}
                change = instances.next() => leases.see(&change),
                _ = health.next() => {}
                _ = machines.next() => {}
                _ = tick.tick() => {}
            }
            // A burst of changes costs one pass.
            for follower in [&mut defs, &mut health, &mut machines] {
                while futures::FutureExt::now_or_never(follower.next()).is_some() {}
            }
            while let Some(change) = futures::FutureExt::now_or_never(instances.next()) {
                leases.see(&change);
            }
            for (key, revision) in std::mem::take(&mut leases.gone) {
                self.record_expiry(&key, revision).await;
            }
            if let Err(error) = self.pass(&mut state).await {
                tracing::warn!(error = %hearth_store::chain(&error), "A services pass failed; the next one retries.");
            }
        }
        for (_, checker) in state.checkers.drain() {
            checker.task.abort();
        }
    }

    /// Records `expired` for a registration whose key went at `revision`
    /// unless it was deregistered then (deregistering writes its history
    /// entry in the same revision) or its service went with it.
    async fn record_expiry(&self, key: &str, revision: hearth_store::Revision) {
        let Some((name, id)) = record::split_instance_key(record::INSTANCES, key) else { return };
        let Ok(history) = self.writer().range(&record::history_prefix(name)).await else { return };
        let deregistered = history.kvs.iter().any(|kv| {
            kv.mod_revision == revision
                && parse::<HistoryEntry>(kv).is_ok_and(|e| e.instance.as_deref() == Some(id))
        });
        if deregistered {
            return;
        }
        let reason = "no heartbeat came within its TTL, so its lease expired".to_owned();
        self.record_history(name, Some(id), "expired", reason).await;
    }

    /// Everything a pass needs, read in one transaction: at one revision,
    /// so that an instance and its health (written together) are seen
    /// together or not at all.
    async fn read(&self) -> Result<Snapshot, crate::Error> {
        let prefixes = [
            record::DEFS,
            record::INSTANCES,
            record::HEALTH,
            record::ENDPOINTS,
            hearth_machines::record::PREFIX,
        ];
        let txn = prefixes
            .iter()
            .fold(Txn::new(), |txn, prefix| txn.and_then(Op::Range { prefix: prefix.to_string() }));
        let mut ranges = self.writer().txn(txn).await?.responses.into_iter().map(|r| match r {
            hearth_store::OpResponse::Range { kvs } => kvs,
            _ => Vec::new(),
        });
        let mut next = || ranges.next().unwrap_or_default();
        let mut defs = BTreeMap::new();
        for kv in next() {
            let def: ServiceRecord = parse(&kv)?;
            defs.insert(def.name.clone(), def);
        }
        let mut instances = Vec::new();
        for kv in next() {
            instances.push((kv.key.clone(), parse(&kv)?));
        }
        let mut health = HashMap::new();
        for kv in next() {
            match parse::<HealthRecord>(&kv) {
                Ok(h) => {
                    health.insert(kv.key.replacen(record::HEALTH, record::INSTANCES, 1), h);
                }
                Err(error) => {
                    tracing::warn!(key = kv.key, error = %error, "An unreadable health record is ignored.")
                }
            }
        }
        let mut endpoints = HashMap::new();
        for kv in next() {
            if let Ok(e) = parse::<Endpoints>(&kv) {
                endpoints.insert(e.name.clone(), e);
            }
        }
        let mut machines = HashMap::new();
        for kv in next() {
            if let Ok(m) = serde_json::from_slice::<MachineRecord>(&kv.value) {
                machines.insert(m.name.clone(), m);
            }
        }
        Ok(Snapshot { defs, instances, health, endpoints, machines })
    }

    /// One pass; see the module's documentation for what it does.
    async fn pass(&self, state: &mut Supervisor) -> Result<(), crate::Error> {
        let now = self.read().await?;
        let reachable = match self.placer() {
            Some(placer) => placer.reachable_hosts().await,
            None => Default::default(),
        };

        // 5. Leftovers of removed services.
        let orphaned: HashSet<&str> = now
            .instances
            .iter()
            .filter(|(_, i)| !now.defs.contains_key(&i.service))
            .map(|(_, i)| i.service.as_str())
            .collect();
        for service in orphaned {
            tracing::info!(service, "Removing what a removed service left.");
            self.purge(service).await;
        }
        for name in now.endpoints.keys().filter(|n| !now.defs.contains_key(*n)) {
            let _ = self.writer().delete(&record::endpoints_key(name)).await;
        }

        // 1. Services of machines have their count of instances, and roll
        // from one version to the next (see `plan`).
        let present: HashSet<String> = now.instances.iter().map(|(key, _)| key.clone()).collect();
        let draining = match self.placer() {
            Some(placer) => placer.draining_hosts().await,
            None => Default::default(),
        };
        let leaving = |instance: &InstanceRecord| {
            instance
                .machine
                .as_ref()
                .and_then(|m| now.machines.get(m))
                .and_then(|m| m.host.as_ref())
                .is_some_and(|host| draining.contains(host))
        };
        for def in now.defs.values().filter(|d| d.kind == Kind::Machines) {
            let members: Vec<Member> = now
                .instances
                .iter()
                .filter(|(_, i)| i.service == def.name)
                .map(|(key, instance)| {
                    let health = now.health.get(key);
                    // A sleeper passed before it fell asleep, and the
                    // next request wakes it: it counts as passing.
                    let passing =
                        health.is_some_and(|h| matches!(h.status, Status::Passing | Status::Sleeping));
                    Member {
                        instance,
                        passing,
                        passed: health.is_some_and(|h| h.changes.iter().any(|c| c.status == Status::Passing)),
                        leaving: leaving(instance),
                    }
                })
                .collect();
            let actions = plan::plan(def, &members, record::now_ms(), grace(&def.checks));
            for action in actions {
                self.act(state, def, &now, action).await?;
            }
        }

        // 2 and 3. Machines and health.
        let mut wanted_checkers: HashMap<String, (String, InstanceRecord, Vec<CheckSpec>)> = HashMap::new();
        for (key, instance) in &now.instances {
            let Some(def) = now.defs.get(&instance.service) else { continue };
            if instance.draining_since_ms.is_some() {
                continue;
            }
            let health = now.health.get(key);
            match &instance.machine {
                None => {
                    if !instance.checks.is_empty() && instance.address.is_some() {
                        let fingerprint =
                            format!("{:?}{}{:?}", instance.address, instance.port, instance.checks);
                        wanted_checkers
                            .insert(key.clone(), (fingerprint, instance.clone(), instance.checks.clone()));
                    }
                }
                Some(machine) if def.kind == Kind::Registered && !now.machines.contains_key(machine) => {
                    let reason = format!("machine {machine} is gone");
                    self.remove_instance(state, def, key, instance, reason).await;
                }
                Some(machine) => {
                    let running = self
                        .supervise_machine(state, def, key, instance, now.machines.get(machine), health)
                        .await;
                    let elsewhere =
                        now.machines.get(machine).and_then(|m| m.host.clone()).filter(|host| {
                            host != self.inner.machines.host_name() && !reachable.contains(host)
                        });
                    if let (Some(_), Some(host)) = (running, &elsewhere)
                        && !def.checks.is_empty()
                    {
                        // Checks run from this (the leader's) host, which
                        // reaches another host's machines only when
                        // networks span both: a running machine on a host
                        // it cannot reach passes, and says why.
                        let output = format!(
                            "machine {machine} is running on host {host}, whose machines the leader's host cannot reach (networks span hosts only when both have an --advertise-address), so it passes while it runs"
                        );
                        self.set_health(state, key, instance, health, Status::Passing, output).await;
                        continue;
                    }
                    if let Some(started_at) = running {
                        let fingerprint =
                            format!("{:?}{}{:?}{started_at}", instance.address, instance.port, def.checks);
                        wanted_checkers
                            .insert(key.clone(), (fingerprint, instance.clone(), def.checks.clone()));
                    }
                }
            }
        }
        let stale: Vec<String> = state
            .checkers
            .iter()
            .filter(|(key, c)| wanted_checkers.get(*key).is_none_or(|(f, _, _)| *f != c.fingerprint))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            state.stop_checker(&key).await;
        }
        for (key, (fingerprint, instance, checks)) in wanted_checkers {
            if let std::collections::hash_map::Entry::Vacant(entry) = state.checkers.entry(key) {
                let task = tokio::spawn(checker(self.clone(), instance, checks));
                entry.insert(Checker { fingerprint, task });
            }
        }
        state.backoff.retain(|key, _| present.contains(key));
        state.failures.retain(|key, _| present.contains(key));

        // Health of instances that are gone (and still gone: an instance
        // registered since is left alone).
        for key in now.health.keys().filter(|k| !present.contains(*k)) {
            let health = key.replacen(record::INSTANCES, record::HEALTH, 1);
            let txn = Txn::new().when(Compare::missing(key.as_str())).and_then(Op::Delete { key: health });
            let _ = self.writer().txn(txn).await;
        }

        // 4. Endpoints.
        for name in now.defs.keys() {
            self.publish_through(name, self.writer()).await?;
        }
        Ok(())
    }

    /// Rewrites a service's endpoints if the set of passing instances
    /// changed. Called by every pass and by the calls that change a
    /// registration, so a client reads its own registration at once. Two
    /// callers may race: each writes only over the record it read, so a
    /// stale set never overwrites a newer one.
    pub(crate) async fn publish(&self, name: &str) -> Result<(), crate::Error> {
        self.publish_through(name, self.store().clone()).await
    }

    /// As [`Services::publish`], written through `store`: the supervisor's
    /// writer (fenced during a term), or the plain store for an API call.
    async fn publish_through(&self, name: &str, store: Arc<dyn Store>) -> Result<(), crate::Error> {
        // Another writer between our read and our write: read again, so
        // that this call returns only once what it saw is published.
        for _ in 0..10 {
            if self.publish_once(name, &store).await? {
                return Ok(());
            }
        }
        Err(crate::Error::Conflict(name.to_string()))
    }

    /// One attempt: `false` if the record changed under it.
    async fn publish_once(&self, name: &str, store: &Arc<dyn Store>) -> Result<bool, crate::Error> {
        let key = record::endpoints_key(name);
        // All at one revision: a writer that read the state before us
        // wrote, if at all, before this or fails its compare.
        let read = Txn::new()
            .and_then(Op::Get { key: key.clone() })
            .and_then(Op::Get { key: record::def_key(name) })
            .and_then(Op::Range { prefix: record::health_prefix(name) })
            .and_then(Op::Range { prefix: record::instances_prefix(name) });
        let mut answers = store.txn(read).await?.responses.into_iter();
        let mut get = || match answers.next() {
            Some(hearth_store::OpResponse::Get { kv }) => kv.map(|kv| vec![kv]).unwrap_or_default(),
            Some(hearth_store::OpResponse::Range { kvs }) => kvs,
            _ => Vec::new(),
        };
        let stored = get().pop();
        let Some(def) = get().pop() else { return Ok(true) };
        let def: ServiceRecord = parse(&def)?;
        let health = get();
        let routed: HashMap<&str, Status> = health
            .iter()
            .filter_map(|kv| Some((kv, parse::<HealthRecord>(kv).ok()?.status)))
            .filter(|(_, status)| matches!(status, Status::Passing | Status::Sleeping))
            .filter_map(|(kv, status)| Some((record::split_instance_key(record::HEALTH, &kv.key)?.1, status)))
            .collect();
        let instance_kvs = get();
        let mut instances = Vec::new();
        for kv in &instance_kvs {
            let i: InstanceRecord = parse(kv)?;
            let Some(&status) = routed.get(i.id.as_str()) else { continue };
            if i.draining_since_ms.is_some() {
                continue;
            }
            if let Some(address) = i.address {
                let sleeping = status == Status::Sleeping;
                instances.push(Endpoint { id: i.id, address, port: i.port, machine: i.machine, sleeping });
            }
        }
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let next = Endpoints { name: name.to_string(), instances, ports: def.ports, routes: def.routes };
        let unchanged = match &stored {
            Some(kv) => parse::<Endpoints>(kv).is_ok_and(|e| e == next),
            None => false,
        };
        if unchanged {
            return Ok(true);
        }
        let def_key = record::def_key(name);
        let same = match &stored {
            Some(kv) => Compare::mod_revision(&key, kv.mod_revision),
            None => Compare::missing(&key),
        };
        let txn = Txn::new().when(Compare::exists(&def_key)).when(same).and_then(Op::Put {
            key,
            value: to_json(&next),
            lease: None,
        });
        if store.txn(txn).await?.succeeded {
            return Ok(true);
        }
        // Failed because the service went away: nothing to publish.
        Ok(store.get(&def_key).await?.is_none())
    }

    /// Carries out one of the planner's actions.
    async fn act(
        &self,
        state: &mut Supervisor,
        def: &ServiceRecord,
        now: &Snapshot,
        action: Action,
    ) -> Result<(), crate::Error> {
        let find = |id: &str| {
            let key = record::instance_key(&def.name, id);
            now.instances.iter().find(|(k, _)| *k == key).map(|(k, i)| (k.clone(), i.clone()))
        };
        match action {
            Action::Create { id } => self.add_instance(def, &id).await?,
            Action::Drain { id, reason } => {
                let Some((key, mut instance)) = find(&id) else { return Ok(()) };
                instance.draining_since_ms = Some(record::now_ms());
                let txn = Txn::new().when(Compare::exists(&key)).and_then(Op::Put {
                    key: key.clone(),
                    value: to_json(&instance),
                    lease: None,
                });
                self.writer().txn(txn).await?;
                self.publish_through(&def.name, self.writer()).await?;
                self.record_history(&def.name, Some(&id), "draining", reason).await;
            }
            Action::Remove { id, reason } => {
                let Some((key, instance)) = find(&id) else { return Ok(()) };
                self.remove_instance(state, def, &key, &instance, reason).await;
            }
            Action::RollBack { reason } => {
                self.change_rollout(def, |record| {
                    let Some(previous) = record.previous.take() else { return };
                    record.version = previous.version;
                    record.template = Some(previous.template);
                    if let Some(rollout) = record.rollout.as_mut() {
                        rollout.state = RolloutState::RolledBack;
                        rollout.reason = Some(reason.clone());
                        rollout.ended_ms = Some(record::now_ms());
                    }
                })
                .await?;
                let back = def.previous.as_ref().map_or(0, |p| p.version);
                self.record_history(
                    &def.name,
                    None,
                    "rolled-back",
                    format!("back to version {back}: {reason}"),
                )
                .await;
            }
            Action::Finish => {
                self.change_rollout(def, |record| {
                    if let Some(rollout) = record.rollout.as_mut() {
                        rollout.state = RolloutState::Done;
                        rollout.ended_ms = Some(record::now_ms());
                    }
                })
                .await?;
                let reason = format!("every instance runs version {} and passes", def.version);
                self.record_history(&def.name, None, "deployed", reason).await;
            }
        }
        Ok(())
    }

    /// Changes a service's definition by compare-and-swap, if it is still
    /// the version the pass read.
    async fn change_rollout(
        &self,
        def: &ServiceRecord,
        change: impl Fn(&mut ServiceRecord),
    ) -> Result<(), crate::Error> {
        let key = record::def_key(&def.name);
        let Some(kv) = self.writer().get(&key).await? else { return Ok(()) };
        let mut record: ServiceRecord = parse(&kv)?;
        if record.version != def.version {
            return Ok(());
        }
        change(&mut record);
        let txn = Txn::new().when(Compare::mod_revision(&key, kv.mod_revision)).and_then(Op::Put {
            key,
            value: to_json(&record),
            lease: None,
        });
        self.writer().txn(txn).await?;
        Ok(())
    }

    /// Writes a missing instance's record; its machine comes in the same pass.
    async fn add_instance(&self, def: &ServiceRecord, id: &str) -> Result<(), crate::Error> {
        let instance = InstanceRecord {
            id: id.to_string(),
            service: def.name.clone(),
            address: None,
            port: def.port,
            machine: Some(id.to_string()),
            ttl_s: None,
            checks: vec![],
            tags: vec![],
            created_at: record::now_ms() / 1000,
            version: def.version,
            draining_since_ms: None,
        };
        let key = record::instance_key(&def.name, id);
        let txn = Txn::new()
            .when(Compare::exists(record::def_key(&def.name)))
            .when(Compare::missing(&key))
            .and_then(Op::Put { key, value: to_json(&instance), lease: None });
        self.writer().txn(txn).await?;
        Ok(())
    }

    /// Removes an instance: its checker, its machine, its records.
    async fn remove_instance(
        &self,
        state: &mut Supervisor,
        def: &ServiceRecord,
        key: &str,
        instance: &InstanceRecord,
        reason: String,
    ) {
        state.stop_checker(key).await;
        if let Some(machine) = &instance.machine {
            match self.machines().remove(machine, true).await {
                Ok(()) | Err(hearth_machines::Error::NotFound(_)) => {}
                Err(error) => {
                    tracing::warn!(machine, error = %error, "Cannot remove a service's machine; retrying.");
                    return;
                }
            }
        }
        let txn = Txn::new()
            .and_then(Op::Delete { key: key.to_string() })
            .and_then(Op::Delete { key: record::health_key(&def.name, &instance.id) });
        if self.writer().txn(txn).await.is_ok() && !reason.is_empty() {
            self.record_history(&def.name, Some(&instance.id), "removed", reason).await;
        }
    }

    /// Brings an instance's machine towards running. Returns the machine's
    /// start time when it runs, so its checker starts afresh with each boot.
    async fn supervise_machine(
        &self,
        state: &mut Supervisor,
        def: &ServiceRecord,
        key: &str,
        instance: &InstanceRecord,
        machine: Option<&MachineRecord>,
        health: Option<&HealthRecord>,
    ) -> Option<u64> {
        let name = instance.machine.as_deref().unwrap_or(&instance.id);
        // An instance of an older version is never remade: the planner
        // removes it once it stops passing. A machine that joined a
        // registered service by hand is its owner's: never remade either.
        let current = def.kind == Kind::Machines && instance.version == def.version;
        let Some(machine) = machine else {
            self.set_health(
                state,
                key,
                instance,
                health,
                Status::Critical,
                format!("machine {name} is being made"),
            )
            .await;
            if current && state.may_act(key) {
                self.make_machine(state, def, key, instance).await;
            }
            return None;
        };
        let address = machine.spec.nics.first().map(|nic| std::net::IpAddr::V4(nic.ip));
        if address != instance.address {
            let mut updated = instance.clone();
            updated.address = address;
            let txn = Txn::new().when(Compare::exists(key)).and_then(Op::Put {
                key: key.to_string(),
                value: to_json(&updated),
                lease: None,
            });
            let _ = self.writer().txn(txn).await;
        }
        match asleep(machine, health) {
            Asleep::No => {}
            Asleep::Routable => {
                let said = format!(
                    "machine {name} is asleep; the next request through the service's routes or ports wakes it"
                );
                self.set_health(state, key, instance, health, Status::Sleeping, said).await;
                return None;
            }
            Asleep::BeforePassing => {
                let said =
                    format!("machine {name} fell asleep before its checks passed; waking it to check it");
                self.set_health(state, key, instance, health, Status::Critical, said).await;
                if state.may_act(key) {
                    state.bump(key);
                    if let Err(error) = self.machines().wake(name).await {
                        tracing::warn!(machine = name, error = %error, "Cannot wake a service's machine to check it.");
                    }
                }
                return None;
            }
        }
        match machine.status.state {
            State::Running => {
                let started_at = machine.status.started_at.unwrap_or(0);
                let grace = grace(&def.checks);
                if let Some(h) = health {
                    let critical_for = Duration::from_millis(record::now_ms().saturating_sub(h.since_ms));
                    let up_for = Duration::from_secs((record::now_ms() / 1000).saturating_sub(started_at));
                    if current
                        && h.status == Status::Critical
                        && critical_for >= grace
                        && up_for >= grace
                        && state.may_act(key)
                    {
                        let reason = format!(
                            "its checks stayed critical for {}s: {}",
                            critical_for.as_secs(),
                            h.output
                        );
                        self.replace(state, def, key, instance, reason).await;
                        return None;
                    }
                    if h.status == Status::Passing && critical_for >= MAX_BACKOFF {
                        state.backoff.remove(key);
                        state.failures.remove(key);
                    }
                }
                Some(started_at)
            }
            down => {
                // Not running: critical at once, no check needed to know it.
                let said = match down {
                    State::Failed => {
                        let why = machine.status.reason.as_deref().unwrap_or("no reason given");
                        format!("machine {name} failed: {why}")
                    }
                    State::Lost => {
                        let why = machine.status.reason.as_deref().unwrap_or("its host was lost");
                        format!("machine {name} is lost: {why}")
                    }
                    other => format!("machine {name} is {}", other.as_str()),
                };
                self.set_health(state, key, instance, health, Status::Critical, said.clone()).await;
                if !current || !state.may_act(key) {
                    return None;
                }
                match down {
                    // A lost machine's host is gone: another host runs the
                    // instance, and the lost host stops its copy when it
                    // comes back (its record is gone by then).
                    State::Failed | State::Lost => self.replace(state, def, key, instance, said).await,
                    State::Stopped => {
                        state.bump(key);
                        match self.machines().start(name).await {
                            Ok(_) => {
                                let reason = format!("machine {name} was stopped");
                                self.record_history(&def.name, Some(&instance.id), "restarted", reason).await;
                            }
                            Err(error) => {
                                let reason = format!("cannot start machine {name}: {error}");
                                self.failed(state, def, key, instance, reason).await;
                            }
                        }
                    }
                    // Starting or stopping: the machines service is at it.
                    _ => {}
                }
                None
            }
        }
    }

    async fn make_machine(
        &self,
        state: &mut Supervisor,
        def: &ServiceRecord,
        key: &str,
        instance: &InstanceRecord,
    ) {
        let Some(template) = &def.template else { return };
        let name = instance.machine.clone().unwrap_or_else(|| instance.id.clone());
        // The agent restarts the main process whenever it ends (with its
        // own backoff); the supervisor replaces the machine when that is
        // not enough (it fails, or its checks stay critical).
        let host = match self.placer() {
            None => None,
            Some(placer) => {
                match placer.place(u64::from(template.memory_mib), self.siblings(&def.name).await).await {
                    Ok(host) => Some(host),
                    Err(why) => {
                        let reason = format!("cannot place machine {name}: {why}");
                        self.failed(state, def, key, instance, reason).await;
                        return;
                    }
                }
            }
        };
        let request = CreateRequest {
            host,
            name: name.clone(),
            image: template.image.clone(),
            cpus: template.cpus,
            memory_mib: template.memory_mib,
            command: template.command.clone(),
            networks: template.network.iter().map(|n| (n.clone(), None)).collect(),
            env: template.env.clone(),
            restart: hearth_machines::record::RestartPolicy::Always,
            on_config_change: template.on_config_change.clone(),
            sleep_after: template.sleep_after_secs.map(Duration::from_secs),
            ..CreateRequest::default()
        };
        match self.machines().create(request).await {
            Ok(_) => {
                state.failures.remove(key);
                let again = state.backoff.contains_key(key);
                let reason = if again {
                    "its last machine was removed".to_string()
                } else {
                    format!("the service keeps {} running", def.count)
                };
                self.record_history(
                    &def.name,
                    Some(&instance.id),
                    "created",
                    format!("machine {name}: {reason}"),
                )
                .await;
            }
            Err(error) => {
                let reason = format!("cannot make machine {name}: {}", hearth_store::chain(&error));
                self.failed(state, def, key, instance, reason).await;
            }
        }
    }

    /// How many of a service's instance machines each host runs, to
    /// spread its instances over hosts. Unreadable records count for none.
    async fn siblings(&self, service: &str) -> BTreeMap<String, u32> {
        let txn = Txn::new()
            .and_then(Op::Range { prefix: record::instances_prefix(service) })
            .and_then(Op::Range { prefix: hearth_machines::record::PREFIX.to_string() });
        let Ok(response) = self.writer().txn(txn).await else { return BTreeMap::new() };
        let mut ranges = response.responses.into_iter().map(|r| match r {
            hearth_store::OpResponse::Range { kvs } => kvs,
            _ => Vec::new(),
        });
        let (instances, machines) = (ranges.next().unwrap_or_default(), ranges.next().unwrap_or_default());
        let hosts: HashMap<String, String> = machines
            .iter()
            .filter_map(|kv| parse::<MachineRecord>(kv).ok())
            .filter_map(|m| Some((m.name, m.host?)))
            .collect();
        let mut counts = BTreeMap::new();
        for instance in instances.iter().filter_map(|kv| parse::<InstanceRecord>(kv).ok()) {
            let name = instance.machine.unwrap_or(instance.id);
            if let Some(host) = hosts.get(&name) {
                *counts.entry(host.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Removes a machine that is failing; the next pass makes a new one
    /// once the instance's backoff allows.
    async fn replace(
        &self,
        state: &mut Supervisor,
        def: &ServiceRecord,
        key: &str,
        instance: &InstanceRecord,
        reason: String,
    ) {
        state.stop_checker(key).await;
        let name = instance.machine.as_deref().unwrap_or(&instance.id);
        match self.machines().remove(name, true).await {
            Ok(()) | Err(hearth_machines::Error::NotFound(_)) => {
                state.bump(key);
                let wait = state.backoff.get(key).map(|b| b.delay).unwrap_or_default();
                self.record_history(
                    &def.name,
                    Some(&instance.id),
                    "replaced",
                    format!("{reason}; a new machine follows in {}s", wait.as_secs().max(1)),
                )
                .await;
            }
            Err(error) => {
                self.failed(
                    state,
                    def,
                    key,
                    instance,
                    format!("cannot remove machine {name} to replace it: {error}"),
                )
                .await;
            }
        }
    }

    async fn failed(
        &self,
        state: &mut Supervisor,
        def: &ServiceRecord,
        key: &str,
        instance: &InstanceRecord,
        reason: String,
    ) {
        state.bump(key);
        if state.failures.get(key) != Some(&reason) {
            state.failures.insert(key.to_string(), reason.clone());
            self.record_history(&def.name, Some(&instance.id), "failed", reason).await;
        }
    }

    /// Writes an instance's health when the supervisor knows it without a
    /// check (its machine is not running), stopping its checker first so
    /// the two never race.
    async fn set_health(
        &self,
        state: &mut Supervisor,
        key: &str,
        instance: &InstanceRecord,
        previous: Option<&HealthRecord>,
        status: Status,
        output: String,
    ) {
        state.stop_checker(key).await;
        write_health(self, instance, previous, status, &output).await;
    }
}

/// The instance keys held by a lease (registrations), and those of them
/// deleted since the last pass, with the revision they went at.
#[derive(Debug, Default)]
struct Registrations {
    keys: HashSet<String>,
    gone: Vec<(String, hearth_store::Revision)>,
}

impl Registrations {
    fn see(&mut self, change: &hearth_store::Change) {
        match change {
            hearth_store::Change::Event(event) => match event.kind {
                hearth_store::EventKind::Put if event.kv.lease.is_some() => {
                    self.keys.insert(event.kv.key.clone());
                }
                hearth_store::EventKind::Put => {
                    self.keys.remove(&event.kv.key);
                }
                hearth_store::EventKind::Delete => {
                    if self.keys.remove(&event.kv.key) {
                        self.gone.push((event.kv.key.clone(), event.revision()));
                    }
                }
            },
            hearth_store::Change::Reset(range) => {
                self.keys =
                    range.kvs.iter().filter(|kv| kv.lease.is_some()).map(|kv| kv.key.clone()).collect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(desired: Desired, state: State) -> MachineRecord {
        use hearth_machines::record::Spec;
        use hearth_machines::vmm::Backend;
        MachineRecord {
            name: "web-1".into(),
            host: None,
            spec: Spec {
                image: "test".into(),
                image_digest: "sha256:0".into(),
                backend: Backend::QemuTcg,
                cpus: 1,
                memory_mib: 128,
                entrypoint: vec![],
                env: vec![],
                workdir: None,
                user: None,
                restart: Default::default(),
                kernel: None,
                auto_remove: false,
                nics: vec![],
                ports: vec![],
                disk_mib: None,
                on_config_change: None,
                sleep_after_secs: Some(60),
            },
            desired,
            status: hearth_machines::record::Status { state, ..Default::default() },
            created_at: 0,
        }
    }

    fn health(status: Status) -> HealthRecord {
        HealthRecord::changed(None, status, "said", 1).expect("a first record")
    }

    #[test]
    fn a_machine_asked_to_sleep_or_asleep_having_passed_is_routed_to() {
        let passing = health(Status::Passing);
        for (desired, state) in [
            (Desired::Sleeping, State::Running),
            (Desired::Sleeping, State::Stopping),
            (Desired::Sleeping, State::Sleeping),
            (Desired::Running, State::Sleeping),
        ] {
            assert_eq!(
                asleep(&machine(desired, state), Some(&passing)),
                Asleep::Routable,
                "{desired:?} {state:?}"
            );
        }
        assert_eq!(asleep(&machine(Desired::Running, State::Running), Some(&passing)), Asleep::No);
    }

    #[test]
    fn waking_counts_as_asleep_only_while_its_health_still_says_it_sleeps() {
        let sleeping = health(Status::Sleeping);
        for state in [State::Starting, State::Stopping] {
            let waking = machine(Desired::Running, state);
            assert_eq!(asleep(&waking, Some(&sleeping)), Asleep::Routable, "{state:?}");
            assert_eq!(asleep(&waking, Some(&health(Status::Passing))), Asleep::No, "a restart: {state:?}");
        }
    }

    #[test]
    fn a_machine_that_fell_asleep_before_it_passed_is_not_routed_to() {
        let asleep_now = machine(Desired::Sleeping, State::Sleeping);
        assert_eq!(asleep(&asleep_now, Some(&health(Status::Critical))), Asleep::BeforePassing);
        assert_eq!(asleep(&asleep_now, Some(&health(Status::Warning))), Asleep::BeforePassing);
        assert_eq!(asleep(&asleep_now, None), Asleep::BeforePassing);
    }

    #[test]
    fn a_machine_to_stop_is_not_asleep() {
        let stopping = machine(Desired::Stopped, State::Sleeping);
        assert_eq!(asleep(&stopping, Some(&health(Status::Sleeping))), Asleep::No);
    }

    #[test]
    fn grace_is_thirty_seconds_or_five_of_the_slowest_intervals() {
        assert_eq!(grace(&[]), Duration::from_secs(30));
        let slow: CheckSpec = "tcp,interval=10s".parse().expect("check");
        let fast: CheckSpec = "tcp".parse().expect("check");
        assert_eq!(grace(std::slice::from_ref(&fast)), Duration::from_secs(30));
        assert_eq!(grace(&[fast, slow]), Duration::from_secs(50));
    }

    #[test]
    fn replacements_back_off_doubling_up_to_a_minute() {
        let mut s = Supervisor::default();
        assert!(s.may_act("k"));
        let mut delays = vec![];
        for _ in 0..9 {
            s.bump("k");
            delays.push(s.backoff["k"].delay.as_secs());
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(!s.may_act("k"));
    }
}
