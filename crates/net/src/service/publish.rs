//! The host ports services publish (`hearth service create -p 8080:80`):
//! for each TCP port of an endpoints record, a listener on
//! `127.0.0.1:HOST` balanced over the passing instances' `GUEST` port
//! ([`balance`]). Reconciled from the records, with or without root: only
//! loopback is needed.
//!
//! A port stays bound while its service publishes it: a change of instances
//! or of the guest port only changes the listener's pool, so connections
//! already open are left alone and the next one follows at once.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use tokio::task::JoinHandle;

use super::endpoints::ServiceEndpoints;
use super::{Networks, lock};
use crate::balance;

/// A published port being served.
#[derive(Debug)]
pub(super) struct Published {
    pool: balance::Pool,
    /// Aborting it closes the listener; connections are tasks of their own
    /// and finish.
    task: JoinHandle<()>,
}

impl Published {
    /// Closes the listener, and waits until the port is released so that it
    /// can be bound again at once (by another service, say).
    pub(super) async fn close(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Closes the listener without waiting.
    pub(super) fn abort(self) {
        self.task.abort();
    }
}

impl Networks {
    /// Why a service's published ports are not all served, if they are not
    /// (e.g. "TCP port 8080 on 127.0.0.1 is in use").
    pub fn service_port_problem(&self, service: &str) -> Option<String> {
        lock(&self.inner.running).published_problems.get(service).cloned()
    }

    /// Whether a published port could not be bound: the reconcile loop
    /// tries again every second.
    pub(super) fn published_problems(&self) -> bool {
        !lock(&self.inner.running).published_problems.is_empty()
    }

    /// Serves exactly the TCP ports `services` publish, each balanced over
    /// its service's current instances.
    pub(super) async fn sync_published(&self, services: &[ServiceEndpoints]) {
        let wanted = wanted(services);
        let (to_close, to_open): (Vec<Published>, Vec<(String, u16)>) = {
            let mut running = lock(&self.inner.running);
            let gone: Vec<(String, u16)> =
                running.published.keys().filter(|key| !wanted.contains_key(*key)).cloned().collect();
            let to_close = gone.iter().filter_map(|key| running.published.remove(key)).collect();
            for (key, published) in &running.published {
                published.pool.set_targets(wanted[key].clone());
            }
            let to_open =
                wanted.keys().filter(|key| !running.published.contains_key(*key)).cloned().collect();
            (to_close, to_open)
        };
        for published in to_close {
            published.close().await;
        }
        let mut problems: BTreeMap<String, String> = BTreeMap::new();
        for (service, host) in to_open {
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, host));
            match balance::bind(listen).await {
                Ok(bound) => {
                    let targets = wanted[&(service.clone(), host)].clone();
                    let pool = balance::Pool::with_activity(targets, self.inner.activity.clone());
                    let task = tokio::spawn(bound.run(pool.clone(), std::future::pending()));
                    tracing::debug!(service, %listen, "Publishing a service's port.");
                    lock(&self.inner.running).published.insert((service, host), Published { pool, task });
                }
                Err(error) => {
                    let mut problem = error.to_string();
                    if let Some(source) = std::error::Error::source(&error) {
                        problem = format!("{problem} ({source})");
                    }
                    problem += ": free the port, or recreate the service with another -p";
                    problems
                        .entry(service)
                        .and_modify(|all| {
                            all.push_str("; ");
                            all.push_str(&problem);
                        })
                        .or_insert(problem);
                }
            }
        }
        let mut running = lock(&self.inner.running);
        for (service, problem) in &problems {
            // Retried every second: said once, not every time.
            if running.published_problems.get(service) != Some(problem) {
                tracing::warn!(service, problem, "Cannot publish a service's port; retrying every second.");
            }
        }
        running.published_problems = problems;
    }
}

/// The targets of each published TCP port, by service and host port.
fn wanted(services: &[ServiceEndpoints]) -> HashMap<(String, u16), Vec<balance::Target>> {
    let mut wanted = HashMap::new();
    for service in services {
        for port in &service.ports {
            if port.udp {
                // The services crate refuses these; a record written by hand may have one.
                tracing::debug!(service = service.name, %port, "Not publishing a UDP port: services balance TCP.");
                continue;
            }
            let targets = service
                .instances
                .iter()
                .map(|e| balance::Target {
                    addr: SocketAddr::from((e.instance.address, port.guest)),
                    machine: e.machine.clone(),
                    asleep: e.sleeping,
                })
                .collect();
            wanted.insert((service.name.clone(), port.host), targets);
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::ServiceInstance;
    use crate::service::PortSpec;
    use crate::service::endpoints::Endpoint;

    #[test]
    fn published_ports_target_the_guest_port_of_every_instance_and_skip_udp() {
        let instance = |id: &str, address: &str| Endpoint {
            instance: ServiceInstance { id: id.into(), address: address.parse().unwrap(), port: 1 },
            machine: Some(id.into()),
            sleeping: id == "web-2",
        };
        let services = [
            ServiceEndpoints {
                name: "web".into(),
                instances: vec![instance("web-1", "10.0.0.2"), instance("web-2", "10.0.0.3")],
                ports: vec![
                    PortSpec { host: 8080, guest: 80, udp: false },
                    PortSpec { host: 5353, guest: 53, udp: true },
                ],
            },
            ServiceEndpoints { name: "db".into(), instances: vec![], ports: vec![] },
        ];
        let wanted = wanted(&services);
        assert_eq!(wanted.len(), 1, "{wanted:?}");
        let targets: Vec<(String, bool)> =
            wanted[&("web".to_owned(), 8080)].iter().map(|t| (t.addr.to_string(), t.asleep)).collect();
        assert_eq!(targets, [("10.0.0.2:80".into(), false), ("10.0.0.3:80".into(), true)], "sleepers too");
    }
}
