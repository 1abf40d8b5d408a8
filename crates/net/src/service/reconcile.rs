//! The reconcile loop: follows networks, machines and faults, computes the
//! whole desired host state (bridges, the nftables ruleset, delays, DNS
//! servers, port forwards) and applies it, on every change. It also follows
//! services' endpoints, which change only the DNS zone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use hearth_store::Follower;
use tokio::sync::watch;

use super::{ENDPOINTS, Error, HOSTS, MACHINES, MachineView, Networks, PortSpec, blocking, lock};
use crate::record::{self, FaultKind, NetworkRecord};
use crate::{dns, firewall, forward, link, overlay, shaping};

impl Networks {
    /// Why a machine's port forwards are not working, if they are not.
    pub fn forward_problem(&self, machine: &str) -> Option<String> {
        lock(&self.inner.running).problems.get(machine).cloned()
    }

    /// The reconcile loop: applies the desired host state now, again on every
    /// change to networks, machines or faults, and when a fault expires; and
    /// keeps the DNS zone's services and the services' published ports up
    /// to date, even without root (the host's DNS listener answers the
    /// names; published ports need only loopback).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let enabled = self.inner.options.enabled;
        if !enabled {
            tracing::warn!("Not running as root: networks are off, machines run without network interfaces.");
        } else if self.inner.options.default_network
            && let Err(error) = self.ensure_default().await
        {
            tracing::warn!(error = %error, "Cannot create the default network.");
        }
        // Every prefix is followed from the revision the first pass reads
        // at, so that no change after it goes unapplied.
        let from = loop {
            match self.inner.store.revision().await {
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
        let store = &self.inner.store;
        let mut networks = Follower::new(store.clone(), record::NETWORKS, from, "Networks");
        let mut faults = Follower::new(store.clone(), record::FAULTS, from, "Network faults");
        let mut machines = Follower::new(store.clone(), MACHINES, from, "Networks' machines");
        let mut endpoints = Follower::new(store.clone(), ENDPOINTS, from, "Services' endpoints");
        // Other hosts' overlay addresses; only a host with one of its own
        // tunnels to them.
        let spans = enabled && self.inner.options.overlay.is_some();
        let mut hosts = Follower::new(store.clone(), HOSTS, from, "Networks' hosts");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Whether the last read of the endpoints failed: retried every tick.
        let mut services_stale = !self.refresh_services_logged().await;
        if enabled {
            self.apply().await;
        }
        loop {
            tokio::select! {
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                () = self.inner.dirty.notified(), if enabled => self.apply().await,
                _ = networks.next(), if enabled => self.apply_after(&mut [&mut networks, &mut faults, &mut machines]).await,
                _ = faults.next(), if enabled => self.apply_after(&mut [&mut networks, &mut faults, &mut machines]).await,
                _ = machines.next(), if enabled => self.apply_after(&mut [&mut networks, &mut faults, &mut machines]).await,
                _ = hosts.next(), if spans => self.apply_after(&mut [&mut hosts, &mut networks, &mut machines]).await,
                // Only the zone and published ports: a service's instances
                // touch no bridge, rule or machine's forward.
                _ = endpoints.next() => {
                    drain(&mut [&mut endpoints]);
                    services_stale = !self.refresh_services_logged().await;
                }
                _ = tick.tick() => {
                    // A published or forwarded port that was taken may be
                    // free now.
                    if services_stale || self.published_problems() {
                        services_stale = !self.refresh_services_logged().await;
                    }
                    if enabled {
                        self.expire_faults().await;
                        if self.forward_problems() {
                            self.retry_forwards().await;
                        }
                    }
                }
            }
        }
        let mut running = lock(&self.inner.running);
        for (_, stop) in running.dns.drain() {
            let _ = stop.send(true);
        }
        for (_, (_, stop)) in running.forwards.drain() {
            let _ = stop.send(true);
        }
        for (_, published) in running.published.drain() {
            published.abort();
        }
    }

    /// One pass for a change and every other change already waiting: a
    /// burst of writes (a lab coming up) costs one pass, not one each.
    async fn apply_after(&self, followers: &mut [&mut Follower]) {
        drain(followers);
        self.apply().await;
    }

    /// Puts the services' endpoints in the zone and serves their published
    /// ports; false (logged) if the store could not be read.
    async fn refresh_services_logged(&self) -> bool {
        match self.refresh_services().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(error = %error, "Could not read the services' endpoints; retrying.");
                false
            }
        }
    }

    /// One reconcile pass: the whole host state, from the store.
    pub async fn apply(&self) {
        let _one = self.inner.applying.lock().await;
        if let Err(error) = self.apply_inner().await {
            tracing::warn!(error = %error, "Could not apply the network state; retrying on the next change.");
        }
    }

    pub(super) async fn apply_inner(&self) -> Result<(), Error> {
        let networks = self.list().await?;
        let machines = self.machines().await?;
        let faults = self.faults().await?;
        let prefix = self.inner.options.prefix.clone();
        let table = self.table();

        let host_name = self.inner.options.host.clone();
        // Taps of this host's machines, and MACs of other hosts', by machine
        // name, for faults.
        let taps: HashMap<String, Vec<String>> = machines
            .iter()
            .filter(|m| m.runs_on(&host_name))
            .map(|m| (m.name.clone(), m.spec.nics.iter().map(|n| n.tap.clone()).collect()))
            .collect();
        let macs: HashMap<String, Vec<String>> = machines
            .iter()
            .filter(|m| !m.runs_on(&host_name))
            .map(|m| (m.name.clone(), m.spec.nics.iter().map(|n| n.mac.to_ascii_lowercase()).collect()))
            .collect();
        let taps_of = |names: &[String]| -> Vec<String> {
            names.iter().flat_map(|n| taps.get(n).cloned().unwrap_or_default()).collect()
        };
        let macs_of = |names: &[String]| -> Vec<String> {
            names.iter().flat_map(|n| macs.get(n).cloned().unwrap_or_default()).collect()
        };
        let mut overlay_problems = Vec::new();
        // Other hosts by their overlay address, to name those reached.
        let mut peer_names: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        let tunnels = match self.inner.options.overlay {
            Some(local) => {
                let peers = self.peers().await?;
                let (tunnels, problems) =
                    overlay::plan(&host_name, local, &prefix, &networks, &machines, &peers);
                overlay_problems = problems;
                peer_names = peers.into_iter().map(|p| (p.address, p.host)).collect();
                Some((local, tunnels))
            }
            None => None,
        };
        let peer_addresses: BTreeSet<Ipv4Addr> =
            tunnels.iter().flat_map(|(_, t)| t).flat_map(|t| t.flood.iter().copied()).collect();
        let mut desired = firewall::Desired {
            table: table.clone(),
            networks: networks
                .iter()
                .map(|n| firewall::NetworkRules {
                    bridge: n.bridge.clone(),
                    subnet: n.subnet.to_string(),
                    nat: n.nat,
                })
                .collect(),
            partitions: faults
                .iter()
                .filter_map(|f| match &f.kind {
                    FaultKind::Partition { machines, from, both_ways } => Some(firewall::Partition {
                        id: f.id.clone(),
                        from: taps_of(from),
                        to: taps_of(machines),
                        from_remote: macs_of(from),
                        to_remote: macs_of(machines),
                        both_ways: *both_ways,
                    }),
                    _ => None,
                })
                .collect(),
            losses: Vec::new(),
            peers: peer_addresses.iter().copied().collect(),
            overlays: tunnels
                .iter()
                .flat_map(|(_, tunnels)| tunnels)
                .map(|t| firewall::Overlay { device: t.device.clone(), gateway: t.gateway })
                .collect(),
        };
        // Several delays on one machine add up.
        let mut delays: BTreeMap<String, shaping::TapDelay> = BTreeMap::new();
        let mut losses: HashMap<String, f32> = HashMap::new();
        for f in &faults {
            match &f.kind {
                FaultKind::Delay { machine, delay, jitter } => {
                    let nics = machines.iter().filter(|m| m.name == *machine).flat_map(|m| &m.spec.nics);
                    for nic in nics {
                        let Some(net) = networks.iter().find(|n| n.name == nic.network) else { continue };
                        let d = delays.entry(nic.tap.clone()).or_insert_with(|| shaping::TapDelay {
                            tap: nic.tap.clone(),
                            bridge: net.bridge.clone(),
                            ip: nic.ip,
                            shape: Default::default(),
                        });
                        d.shape.delay += *delay;
                        d.shape.jitter += *jitter;
                    }
                }
                FaultKind::Loss { machine, percent } => {
                    for tap in taps.get(machine).cloned().unwrap_or_default() {
                        let total = losses.entry(tap).or_insert(0.0);
                        *total = (*total + percent).min(100.0);
                    }
                }
                FaultKind::Partition { .. } => {}
            }
        }
        let delays: Vec<shaping::TapDelay> = delays.into_values().collect();
        let shaper = self.inner.shaper.clone();
        desired.losses = losses.into_iter().map(|(tap, percent)| firewall::Loss { tap, percent }).collect();
        let all_taps: Vec<String> = taps.values().flatten().cloned().collect();
        let nets = networks.clone();
        let any_nat = networks.iter().any(|n| n.nat);
        let leftovers = self.inner.overlay_leftovers_cleared.clone();
        let shaped = blocking(move || {
            let host = link::Netns::Host;
            for n in &nets {
                link::ensure_bridge(&host, &n.bridge, n.subnet.gateway(), n.subnet.prefix)?;
            }
            // Bridges of networks that are gone.
            for stale in link::links_with_prefix(&host, &format!("{prefix}b-"))? {
                if !nets.iter().any(|n| n.bridge == stale) {
                    link::delete_link(&host, &stale)?;
                }
            }
            // The firewall first: a tunnel never carries a frame, and the
            // host forwards nothing, that its rules would stop.
            firewall::apply(&host, &desired)?;
            // A host forwards other hosts' connections to its machines.
            if any_nat || tunnels.as_ref().is_some_and(|(_, t)| !t.is_empty()) {
                link::enable_ip_forwarding(&host)?;
            }
            // Like delays, tunnels that cannot be made (a kernel without
            // vxlan, a host not on this one's link) do not stop the rest.
            // A host whose networks no longer span hosts drops what an
            // earlier life that did left, once: nothing makes more.
            let overlaid = match &tunnels {
                Some((local, tunnels)) => overlay::sync(&host, &prefix, *local, tunnels),
                None if leftovers.load(Ordering::Relaxed) => overlay::Synced::default(),
                None => {
                    let cleared = overlay::clear(&host, &prefix);
                    leftovers.store(cleared.is_ok(), Ordering::Relaxed);
                    overlay::Synced {
                        problems: cleared.err().map(|e| e.to_string()).into_iter().collect(),
                        ..Default::default()
                    }
                }
            };
            let existing = link::links_with_prefix(&host, &format!("{prefix}t-"))?;
            let taps: Vec<String> = all_taps.into_iter().filter(|t| existing.contains(t)).collect();
            // A host that cannot delay says so, but only once the rest of
            // the network (names and forwards too, below) is in place.
            Ok((lock(&shaper).apply(&taps, &delays), overlaid))
        })
        .await?;
        let (shaped, overlaid) = shaped;

        // Names.
        self.inner.zone.set(
            machines
                .iter()
                .flat_map(|m| m.spec.nics.iter().map(move |n| (m.name.clone(), n.network.clone(), n.ip)))
                .collect(),
        );
        self.sync_dns(&networks);
        self.sync_forwards(&machines).await;
        overlay_problems.extend(overlaid.problems);
        lock(&self.inner.running).reached =
            overlaid.reached.iter().filter_map(|a| peer_names.get(a).cloned()).collect();
        self.log_overlay_problems(overlay_problems);
        shaped.map_err(Error::from)
    }

    /// The other hosts whose machines this host reaches (through a tunnel
    /// and a route), as of the last pass: where checks run from here can
    /// judge instances.
    pub fn reachable_hosts(&self) -> BTreeSet<String> {
        lock(&self.inner.running).reached.clone()
    }

    /// Logs why networks do not span hosts, when that changes.
    fn log_overlay_problems(&self, problems: Vec<String>) {
        let mut running = lock(&self.inner.running);
        if running.overlay_problems != problems {
            for problem in &problems {
                tracing::warn!(problem, "A network does not span hosts.");
            }
            running.overlay_problems = problems;
        }
    }

    /// One DNS server per network, on its gateway address, port 53.
    fn sync_dns(&self, networks: &[NetworkRecord]) {
        let mut running = lock(&self.inner.running);
        let wanted: Vec<Ipv4Addr> = networks.iter().map(|n| n.subnet.gateway()).collect();
        running.dns.retain(|ip, stop| {
            let keep = wanted.contains(ip);
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for ip in wanted {
            if running.dns.contains_key(&ip) {
                continue;
            }
            let (stop_tx, mut stop_rx) = watch::channel(false);
            let zone = self.inner.zone.clone();
            let addr = SocketAddr::from((ip, 53));
            tokio::spawn(async move {
                let stop = async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                };
                if let Err(error) = dns::serve(addr, zone, upstream_resolvers(), stop).await {
                    tracing::warn!(%addr, error = %error, "DNS server stopped.");
                }
            });
            running.dns.insert(ip, stop_tx);
        }
    }

    /// Port forwards for the running machines of this host.
    async fn sync_forwards(&self, machines: &[MachineView]) {
        let wanted = wanted_forwards(machines, &self.inner.options.host);
        let to_start: Vec<((String, PortSpec), SocketAddr)> = {
            let mut running = lock(&self.inner.running);
            running.forwards.retain(|key, (target, stop)| {
                let keep = wanted.get(key) == Some(target);
                if !keep {
                    let _ = stop.send(true);
                }
                keep
            });
            wanted.into_iter().filter(|(k, _)| !running.forwards.contains_key(k)).collect()
        };
        // Each pass tries again every forward that is not running, so a
        // problem lasts exactly as long as its cause; it is logged when it
        // appears or changes, not on every retry.
        let mut problems: BTreeMap<String, String> = BTreeMap::new();
        let sleepers: std::collections::HashSet<&str> =
            machines.iter().filter(|m| m.spec.sleep_after_secs.is_some()).map(|m| m.name.as_str()).collect();
        // Asleep from a daemon's earlier life: a connection must wake it
        // even before the machines service has looked.
        for m in
            machines.iter().filter(|m| m.status.state == "sleeping" && m.runs_on(&self.inner.options.host))
        {
            self.inner.activity.doze(&m.name);
        }
        for ((machine, port), target) in to_start {
            let spec = forward::Forward {
                protocol: if port.udp { forward::Protocol::Udp } else { forward::Protocol::Tcp },
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port.host)),
                target,
            };
            match forward::bind(&spec).await {
                Ok(bound) => {
                    let bound = if sleepers.contains(machine.as_str()) {
                        bound.with_gate(forward::Gate {
                            machine: machine.clone(),
                            activity: self.inner.activity.clone(),
                        })
                    } else {
                        bound
                    };
                    let (stop_tx, mut stop_rx) = watch::channel(false);
                    tokio::spawn(bound.run(async move {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    }));
                    lock(&self.inner.running).forwards.insert((machine, port), (target, stop_tx));
                }
                Err(error) => {
                    let problem = problems.entry(machine).or_default();
                    if !problem.is_empty() {
                        problem.push_str("; ");
                    }
                    problem.push_str(&format!("port {port}: {error}"));
                }
            }
        }
        let mut running = lock(&self.inner.running);
        for (machine, problem) in &problems {
            if running.problems.get(machine) != Some(problem) {
                tracing::warn!(machine, problem, "Cannot forward a port; retrying every second.");
            }
        }
        running.problems = problems;
    }

    /// Whether some machine's port forward could not start: the tick
    /// tries again, since the port may have been freed.
    fn forward_problems(&self) -> bool {
        !lock(&self.inner.running).problems.is_empty()
    }

    /// Tries again the forwards that could not start, and only those: no
    /// bridge or rule changed.
    async fn retry_forwards(&self) {
        let _one = self.inner.applying.lock().await;
        match self.machines().await {
            Ok(machines) => self.sync_forwards(&machines).await,
            Err(error) => {
                tracing::warn!(error = %error, "Could not read the machines to forward their ports; retrying.")
            }
        }
    }

    /// Removes everything on the host with this daemon's prefix (tests, and
    /// `hearth serve` when networking is switched off).
    pub async fn teardown(&self) {
        let prefix = self.inner.options.prefix.clone();
        let table = self.table();
        let shaper = self.inner.shaper.clone();
        // Only a host with tunnels made routes; others on this host's
        // network stack (test daemons) may have theirs.
        let spans = self.inner.options.overlay.is_some();
        let _ = blocking(move || {
            let host = link::Netns::Host;
            let _ = firewall::clear(&host, &table);
            if let Err(error) = lock(&shaper).clear() {
                tracing::warn!(error = %error, "Cannot remove the delay rules.");
            }
            for name in link::links_with_prefix(&host, &format!("{prefix}t-")).unwrap_or_default() {
                let _ = link::delete_link(&host, &name);
            }
            if spans && let Err(error) = overlay::clear_routes(&host) {
                tracing::warn!(error = %error, "Cannot remove the routes to other hosts' machines.");
            }
            if let Err(error) = overlay::clear(&host, &prefix) {
                tracing::warn!(error = %error, "Cannot remove the tunnels to other hosts.");
            }
            for name in link::links_with_prefix(&host, &format!("{prefix}b-")).unwrap_or_default() {
                let _ = link::delete_link(&host, &name);
            }
            Ok(())
        })
        .await;
    }
}

/// The port forwards `host` makes: each published port of its running
/// machines, to the port in the machine's first NIC, by machine and port.
/// Another host's machines are left to it: only the host that runs a
/// machine has its tap, so a forward from anywhere else reaches nothing
/// (and holds the port on that host's loopback for nothing).
/// The forwards this host should run: the ports of its running machines,
/// and of its machines that sleep when idle for as long as they are meant
/// to run, asleep or awake or in between, so that the connection that
/// wakes one is held rather than refused.
fn wanted_forwards(machines: &[MachineView], host: &str) -> HashMap<(String, PortSpec), SocketAddr> {
    let forwarded = |m: &&MachineView| {
        let state = m.status.state.as_str();
        let sleeper = m.spec.sleep_after_secs.is_some() && m.desired != "stopped";
        m.runs_on(host)
            && (state == "running" || (sleeper && matches!(state, "sleeping" | "starting" | "stopping")))
    };
    let mut wanted = HashMap::new();
    for m in machines.iter().filter(forwarded) {
        let Some(nic) = m.spec.nics.first() else { continue };
        for port in &m.spec.ports {
            wanted.insert((m.name.clone(), *port), SocketAddr::from((nic.ip, port.guest)));
        }
    }
    wanted
}

/// Takes every change already waiting, so that one pass covers them all.
fn drain(followers: &mut [&mut Follower]) {
    use futures::FutureExt as _;
    for follower in followers.iter_mut() {
        // `next` is cancel-safe: a change not ready now is not lost.
        while follower.next().now_or_never().is_some() {}
    }
}

/// The host's own resolvers, for names outside `.hearth`.
fn upstream_resolvers() -> Option<Vec<SocketAddr>> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::from((ip, 53)))
        .collect();
    (!servers.is_empty()).then_some(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, host: Option<&str>, state: &str, ip: &str) -> MachineView {
        let host = host.map_or("null".to_owned(), |h| format!("{h:?}"));
        let record = format!(
            r#"{{"name":"{name}","host":{host},"status":{{"state":"{state}"}},"spec":{{
                "nics":[{{"network":"default","ip":"{ip}","mac":"02:00:00:00:00:01","tap":"ht-{name}"}}],
                "ports":[{{"host":8080,"guest":80,"udp":false}}]}}}}"#
        );
        serde_json::from_str(&record).unwrap()
    }

    #[test]
    fn a_host_forwards_the_ports_of_its_own_running_machines_only() {
        let machines = [
            machine("mine", Some("one"), "running", "10.0.0.2"),
            machine("theirs", Some("two"), "running", "10.0.0.3"),
            machine("before-hosts", None, "running", "10.0.0.4"),
            machine("stopped", Some("one"), "stopped", "10.0.0.5"),
        ];
        let forwards = |host: &str| {
            let mut list: Vec<String> = wanted_forwards(&machines, host)
                .into_iter()
                .map(|((name, port), target)| format!("{name} {port} -> {target}"))
                .collect();
            list.sort();
            list
        };
        assert_eq!(forwards("one"), ["before-hosts 8080:80 -> 10.0.0.4:80", "mine 8080:80 -> 10.0.0.2:80"]);
        assert_eq!(forwards("two"), ["before-hosts 8080:80 -> 10.0.0.4:80", "theirs 8080:80 -> 10.0.0.3:80"]);
    }

    #[test]
    fn a_machine_that_sleeps_keeps_its_forwards_asleep_and_in_between_until_it_is_stopped() {
        let sleeper = |name: &str, desired: &str, state: &str| {
            let mut m = machine(name, Some("one"), state, "10.0.0.9");
            m.spec.sleep_after_secs = Some(60);
            m.desired = desired.to_owned();
            m
        };
        let machines = [
            sleeper("asleep", "sleeping", "sleeping"),
            sleeper("waking", "running", "starting"),
            sleeper("dozing", "sleeping", "stopping"),
            sleeper("stopping", "stopped", "stopping"),
            sleeper("stopped", "stopped", "stopped"),
            // Without sleep, a machine between states has no forward.
            machine("booting", Some("one"), "starting", "10.0.0.8"),
        ];
        let mut names: Vec<String> =
            wanted_forwards(&machines, "one").into_keys().map(|(name, _)| name).collect();
        names.sort();
        assert_eq!(names, ["asleep", "dozing", "waking"]);
    }
}
