//! This daemon among the hosts sharing the store (`hearth_hosts`): the
//! record it joins with, the fence its leader writes through, and what the
//! leader does about a lost host.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hearth_hosts::{Capacity, HostRecord, Lost};
use hearth_machines::probe::HostReport;
use hearth_store::Store;

/// The backends this host can run machines on now.
pub(crate) fn backends(report: &HostReport) -> Vec<String> {
    let mut backends = Vec::new();
    if report.qemu.is_some() {
        backends.push("qemu-tcg".to_owned());
        if report.kvm.usable == Some(true) {
            backends.push("qemu-kvm".to_owned());
        }
    }
    if hearth_machines::probe::firecracker_problem(report).is_none() {
        backends.push("firecracker".to_owned());
    }
    backends
}

/// The record this host joins with.
pub(crate) fn record(
    name: &str,
    report: &HostReport,
    data_dir: &Path,
    api: Option<SocketAddr>,
    ingress: Option<SocketAddr>,
    overlay: Option<std::net::Ipv4Addr>,
) -> HostRecord {
    let resources = hearth_api::host::resources(data_dir);
    let mut addresses = Vec::new();
    if let Some(api) = api {
        addresses.push(format!("api={api}"));
    }
    if let Some(ingress) = ingress {
        addresses.push(format!("ingress={ingress}"));
    }
    if let Some(overlay) = overlay {
        addresses.push(format!("{}{overlay}", hearth_net::overlay::ADDRESS_KEY));
    }
    HostRecord {
        name: name.to_owned(),
        addresses,
        capacity: Capacity {
            cpus: resources.as_ref().map_or(1, |r| r.cpus),
            memory_mib: resources.as_ref().map_or(0, |r| r.memory_total_bytes / (1024 * 1024)),
        },
        backends: backends(report),
        version: hearth_api::VERSION.to_owned(),
        joined_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        draining: false,
    }
}

/// The store a leader writes through: every write compares its term. A
/// host alone on the embedded store (its term's token is 0: no other can
/// ever lead, and it writes no leader key) writes through the store.
pub(crate) fn fence(store: Arc<dyn Store>) -> hearth_hosts::Fence {
    Arc::new(move |term: hearth_hosts::Term| {
        if term.token == 0 {
            return store.clone();
        }
        Arc::new(hearth_store::fenced::Fenced::new(store.clone(), hearth_hosts::record::LEADER, term.token))
            as Arc<dyn Store>
    })
}

/// What the leader does about a lost host: its machines are marked lost,
/// with the reason, since their disks are on it.
pub(crate) struct Failover;

#[async_trait::async_trait]
impl hearth_hosts::Failover for Failover {
    async fn host_lost(&self, store: Arc<dyn Store>, host: &str, lost: &Lost) -> Result<(), String> {
        let at = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(lost.at_ms),
        );
        // The machines crate adds where the disk is and what happens next.
        let reason = format!("host {host} stopped renewing its lease (seen at {at})");
        let marked =
            hearth_machines::mark_host_lost(&*store, host, &reason).await.map_err(|e| e.to_string())?;
        if marked > 0 {
            tracing::warn!(host, machines = marked, "Marked a lost host's machines lost.");
        }
        Ok(())
    }
}

/// Runs `duty` while this host leads: started with each term, stopped
/// (its stop signal turned true, then awaited) when the term ends or the
/// daemon stops. For work exactly one host may do at a time.
pub(crate) async fn while_leading<F, Fut>(
    mut term: tokio::sync::watch::Receiver<Option<hearth_hosts::Term>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    duty: F,
) where
    F: Fn(tokio::sync::watch::Receiver<bool>, hearth_hosts::Term) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let current = tokio::select! {
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            current = term.wait_for(Option::is_some) => match current {
                Ok(current) => *current,
                Err(_) => return,
            },
        };
        tracing::info!(what, term = current.map(|t| t.token), "This host leads: taking up a leader's duty.");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let Some(this_term) = current else { continue };
        let mut task = tokio::spawn(duty(stopped, this_term));
        enum End {
            DaemonStops,
            TermEnds,
            DutyEnded,
        }
        let end = tokio::select! {
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => End::DaemonStops,
            _ = term.wait_for(|now| *now != current) => End::TermEnds,
            _ = &mut task => End::DutyEnded,
        };
        match end {
            End::DaemonStops => {
                let _ = stop.send(true);
                let _ = task.await;
                return;
            }
            End::TermEnds => {
                let _ = stop.send(true);
                let _ = task.await;
                tracing::info!(what, "This host's term ended: its duty stopped.");
            }
            End::DutyEnded => {
                // It stopped by itself: not again within this term.
                tokio::select! {
                    () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                    _ = term.wait_for(|now| *now != current) => {}
                }
            }
        }
    }
}

/// Places service instances on hosts as machines are placed
/// ([`hearth_machines::Machines::place`]).
pub(crate) struct Placer {
    pub(crate) hosts: hearth_hosts::Hosts,
    pub(crate) machines: hearth_machines::Machines,
    /// Which hosts' machines this host reaches (`hearth_net::overlay`).
    pub(crate) networks: hearth_net::Networks,
}

#[async_trait::async_trait]
impl hearth_services::Placer for Placer {
    async fn place(
        &self,
        memory_mib: u64,
        siblings: std::collections::BTreeMap<String, u32>,
    ) -> Result<String, String> {
        let hosts = self.hosts.list().await.map_err(|e| e.to_string())?;
        let need = hearth_hosts::Need { memory_mib, backend: None, siblings };
        let placed = self.machines.place(&hosts, &need).await.map_err(|e| e.to_string())?;
        placed.map_err(|e| e.to_string())
    }

    /// The hosts this one has a tunnel and a route to, as its networks
    /// service last made them.
    async fn reachable_hosts(&self) -> std::collections::BTreeSet<String> {
        self.networks.reachable_hosts()
    }

    async fn draining_hosts(&self) -> std::collections::BTreeSet<String> {
        match self.hosts.list().await {
            Ok(hosts) => hosts.into_iter().filter(|h| h.record.draining).map(|h| h.record.name).collect(),
            Err(error) => {
                tracing::warn!(error = %error, "Cannot read the hosts; no instance moves off a draining host this pass.");
                Default::default()
            }
        }
    }
}
