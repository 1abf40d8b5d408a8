//! Where new work goes: [`place`], a pure function of the hosts and what
//! they carry, so that its policy is read and tested in one place.

use std::collections::BTreeMap;

use crate::record::{HostView, State};

/// What a host carries now: the machines that should be running on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub machines: u32,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// What a new piece of work needs.
#[derive(Debug, Clone, Default)]
pub struct Need {
    pub memory_mib: u64,
    /// The backend it must run on, when the user forced one.
    pub backend: Option<String>,
    /// How many of its siblings (instances of the same service) each host
    /// already runs, to spread them.
    pub siblings: BTreeMap<String, u32>,
}

/// No host can take the work: why not, host by host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no host can run it: {}", refusals.iter().map(|(host, why)| format!("{host} {why}")).collect::<Vec<_>>().join("; "))]
pub struct NoHost {
    /// Each host with the reason it was passed over, in name order.
    pub refusals: Vec<(String, String)>,
}

/// The host a new piece of work goes to.
///
/// Policy:
/// - Only a ready host takes new work: a lost host cannot start it, and a
///   draining host is being emptied.
/// - Only a host that can run it: the backend it asks for, if any, is one
///   the host has.
/// - Only a host with the memory for it: what its machines are given
///   already plus what the work needs stays within its memory (a host
///   that could not read its memory is not refused for it).
/// - Of those, siblings are spread first (the host with the fewest
///   instances of the same service), then the host with the smallest share
///   of its memory given out once the work is there, then the one with the
///   fewest machines, then the first by name, so the same state always
///   gives the same answer.
/// - When no host qualifies, the error says for each host why not.
pub fn place(hosts: &[HostView], loads: &BTreeMap<String, Load>, need: &Need) -> Result<String, NoHost> {
    let mut refusals = Vec::new();
    let mut best: Option<((u32, u64, u32), &str)> = None;
    let mut sorted: Vec<&HostView> = hosts.iter().collect();
    sorted.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    for host in sorted {
        let name = host.record.name.as_str();
        let load = loads.get(name).copied().unwrap_or_default();
        let capacity = host.record.capacity.memory_mib;
        let refusal = match host.state {
            State::Lost => Some("is lost".to_owned()),
            State::Draining => Some("is draining".to_owned()),
            State::Ready => None,
        }
        .or_else(|| {
            need.backend
                .as_ref()
                .filter(|b| !host.record.backends.contains(b))
                .map(|b| format!("cannot run {b} (it has {})", list(&host.record.backends)))
        })
        .or_else(|| {
            // A capacity of 0 is one the host could not read: unknown, not full.
            (capacity > 0 && load.memory_mib + need.memory_mib > capacity).then(|| {
                format!(
                    "has {} MiB of {capacity} MiB free, {} MiB needed",
                    capacity.saturating_sub(load.memory_mib),
                    need.memory_mib
                )
            })
        });
        if let Some(why) = refusal {
            refusals.push((name.to_owned(), why));
            continue;
        }
        let siblings = need.siblings.get(name).copied().unwrap_or(0);
        // Parts per million of the memory given out once the work is there.
        let share = (load.memory_mib + need.memory_mib) * 1_000_000 / capacity.max(1);
        let rank = (siblings, share, load.machines);
        if best.is_none_or(|(best_rank, _)| rank < best_rank) {
            best = Some((rank, name));
        }
    }
    best.map(|(_, name)| name.to_owned()).ok_or(NoHost { refusals })
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Capacity, HostRecord};

    fn host(name: &str, state: State, memory_mib: u64) -> HostView {
        HostView {
            record: HostRecord {
                name: name.into(),
                addresses: vec![],
                capacity: Capacity { cpus: 4, memory_mib },
                backends: vec!["qemu-tcg".into()],
                version: "test".into(),
                joined_at: 0,
                draining: state == State::Draining,
            },
            state,
            leader: false,
            lost: None,
        }
    }

    fn loads(items: &[(&str, u32, u64)]) -> BTreeMap<String, Load> {
        items
            .iter()
            .map(|(name, machines, memory_mib)| {
                ((*name).to_owned(), Load { machines: *machines, cpus: *machines, memory_mib: *memory_mib })
            })
            .collect()
    }

    fn need(memory_mib: u64) -> Need {
        Need { memory_mib, ..Need::default() }
    }

    #[test]
    fn only_a_ready_host_takes_new_work() {
        let hosts =
            [host("a", State::Lost, 4096), host("b", State::Draining, 4096), host("c", State::Ready, 1024)];
        assert_eq!(place(&hosts, &loads(&[("c", 3, 768)]), &need(256)).unwrap(), "c");
        let error = place(&hosts[..2], &BTreeMap::new(), &need(256)).unwrap_err();
        assert_eq!(error.to_string(), "no host can run it: a is lost; b is draining");
    }

    #[test]
    fn only_a_host_that_can_run_the_backend_it_asks_for() {
        let mut kvm = host("b", State::Ready, 1024);
        kvm.record.backends.push("firecracker".into());
        let hosts = [host("a", State::Ready, 4096), kvm];
        let firecracker = Need { backend: Some("firecracker".into()), ..need(256) };
        assert_eq!(place(&hosts, &BTreeMap::new(), &firecracker).unwrap(), "b");
        let error = place(&hosts[..1], &BTreeMap::new(), &firecracker).unwrap_err();
        assert_eq!(error.to_string(), "no host can run it: a cannot run firecracker (it has qemu-tcg)");
    }

    #[test]
    fn only_a_host_with_the_memory_for_it() {
        let hosts = [host("a", State::Ready, 1024), host("b", State::Ready, 1024)];
        let error = place(&hosts, &loads(&[("a", 1, 900), ("b", 2, 1024)]), &need(256)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no host can run it: a has 124 MiB of 1024 MiB free, 256 MiB needed; b has 0 MiB of 1024 MiB free, 256 MiB needed"
        );
        assert_eq!(place(&hosts, &loads(&[("a", 1, 768)]), &need(256)).unwrap(), "b");
        assert_eq!(place(&hosts, &loads(&[("a", 1, 768), ("b", 1, 1024)]), &need(256)).unwrap(), "a");
    }

    #[test]
    fn a_host_that_could_not_read_its_memory_is_not_refused_for_it() {
        let hosts = [host("a", State::Ready, 0)];
        assert_eq!(place(&hosts, &loads(&[("a", 3, 1536)]), &need(512)).unwrap(), "a");
    }

    #[test]
    fn siblings_are_spread_first() {
        let hosts = [host("a", State::Ready, 8192), host("b", State::Ready, 1024)];
        let spread = Need { siblings: [("a".to_owned(), 1)].into(), ..need(256) };
        // b is far fuller, but a already runs one of the service's instances.
        assert_eq!(place(&hosts, &loads(&[("b", 2, 512)]), &spread).unwrap(), "b");
    }

    #[test]
    fn then_the_smallest_share_of_memory_given_out() {
        let hosts = [host("a", State::Ready, 1024), host("b", State::Ready, 4096)];
        // a: (256 + 256) / 1024 = 50 %; b: (1024 + 256) / 4096 = 31 %.
        assert_eq!(place(&hosts, &loads(&[("a", 1, 256), ("b", 4, 1024)]), &need(256)).unwrap(), "b");
    }

    #[test]
    fn then_the_fewest_machines_then_the_name() {
        let hosts = [host("b", State::Ready, 1024), host("a", State::Ready, 1024)];
        assert_eq!(place(&hosts, &loads(&[("a", 2, 256), ("b", 1, 256)]), &need(128)).unwrap(), "b");
        assert_eq!(place(&hosts, &BTreeMap::new(), &need(128)).unwrap(), "a");
    }
}
