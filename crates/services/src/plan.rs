//! Which instances a service of machines should have: the count, scaling,
//! and rolling updates, decided by one pure function, [`plan`], from the
//! service and what its instances are now.

use std::collections::HashSet;
use std::time::Duration;

use crate::record::{InstanceRecord, RolloutState, ServiceRecord};
use crate::service::instance_name;

/// How long an instance drains (out of the endpoints, its machine still
/// running) before it is removed, so that requests in flight finish.
pub const DRAIN: Duration = Duration::from_secs(2);

/// One instance as the planner sees it.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    pub instance: &'a InstanceRecord,
    /// Its checks pass now.
    pub passing: bool,
    /// Its checks passed at some time (or pass now).
    pub passed: bool,
    /// Its machine's host is draining: the instance moves away.
    pub leaving: bool,
}

/// What the supervisor should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write a new instance of the service's version, named `id`.
    Create { id: String },
    /// Take an instance out of the endpoints; it is removed after [`DRAIN`].
    Drain { id: String, reason: String },
    /// Remove an instance and its machine now.
    Remove { id: String, reason: String },
    /// Go back to the previous version.
    RollBack { reason: String },
    /// The rollout under way is complete.
    Finish,
}

/// The instances a service of machines should have next.
///
/// The policy:
/// - A draining instance is removed once it has drained for [`DRAIN`].
/// - An instance of another version that never passed is removed at once:
///   it serves nothing (a version rolled back leaves these).
/// - Current instances beyond the count drain, those not passing first,
///   then the highest numbers.
/// - With no older instance left, missing current instances are all made at once.
/// - During a rollout, one current instance is made at a time, and only while
///   every current instance passes.
/// - During a rollout, once every current instance passes, an older instance
///   that is not passing drains, or else, if more instances pass than the
///   count, the older instance with the lowest number drains.
/// - During a rollout, a current instance that has not passed within
///   `deadline` of its creation rolls the service back to its previous version.
/// - A rollout with no older or draining instance left and every current
///   instance passing is finished.
/// - An instance on a draining host leaves as an older instance does: it
///   counts as of another version, so one replacement is made at a time
///   (on another host) and it drains only once every current instance
///   passes; capacity holds while the host empties.
///
/// New instances take the lowest free number, `NAME-1` first.
pub fn plan(def: &ServiceRecord, members: &[Member<'_>], now_ms: u64, deadline: Duration) -> Vec<Action> {
    let mut actions = Vec::new();
    let (draining, live): (Vec<&Member>, Vec<&Member>) =
        members.iter().partition(|m| m.instance.draining_since_ms.is_some());
    for m in &draining {
        let since = m.instance.draining_since_ms.unwrap_or(0);
        if now_ms.saturating_sub(since) >= DRAIN.as_millis() as u64 {
            actions.push(Action::Remove { id: m.instance.id.clone(), reason: String::new() });
        }
    }
    let (current, older): (Vec<&Member>, Vec<&Member>) =
        live.into_iter().partition(|m| m.instance.version == def.version && !m.leaving);
    let count = def.count as usize;

    let mut older_left = Vec::new();
    for m in older {
        if m.passed {
            older_left.push(m);
        } else {
            let reason = if m.leaving {
                "its host is draining, and it never passed".to_owned()
            } else {
                format!("version {} never passed; version {} replaces it", m.instance.version, def.version)
            };
            actions.push(Action::Remove { id: m.instance.id.clone(), reason });
        }
    }
    let rolling = !older_left.is_empty();
    let all_pass = current.iter().all(|m| m.passing);
    let under_way = def.rollout.as_ref().is_some_and(|r| r.state == RolloutState::Rolling);

    if rolling && under_way {
        let late = current.iter().find(|m| {
            !m.passing && now_ms.saturating_sub(m.instance.created_at * 1000) >= deadline.as_millis() as u64
        });
        if let Some(m) = late
            && def.previous.is_some()
        {
            actions.push(Action::RollBack {
                reason: format!(
                    "{} (version {}) did not pass its checks within {}s",
                    m.instance.id,
                    def.version,
                    deadline.as_secs()
                ),
            });
            return actions;
        }
    }

    if current.len() > count {
        let mut extra: Vec<&&Member> = current.iter().collect();
        extra.sort_by_key(|m| (m.passing, std::cmp::Reverse(number(&m.instance.id))));
        for m in extra.into_iter().take(current.len() - count) {
            let reason = format!("the service is scaled to {}", def.count);
            actions.push(Action::Drain { id: m.instance.id.clone(), reason });
        }
    }

    let taken: HashSet<u32> = members.iter().filter_map(|m| number(&m.instance.id)).collect();
    let mut free = (1..).filter(|n| !taken.contains(n));
    if current.len() < count {
        let missing = if rolling { usize::from(all_pass) } else { count - current.len() };
        for _ in 0..missing {
            let n = free.next().unwrap_or(u32::MAX);
            actions.push(Action::Create { id: instance_name(&def.name, n) });
        }
    }

    if rolling && all_pass {
        older_left.sort_by_key(|m| (m.passing, number(&m.instance.id)));
        let older_passing = older_left.iter().filter(|m| m.passing).count();
        let first = older_left[0];
        if !first.passing || current.len() + older_passing > count {
            let reason = if first.leaving {
                "its host is draining".to_owned()
            } else {
                format!("version {} replaces version {}", def.version, first.instance.version)
            };
            actions.push(Action::Drain { id: first.instance.id.clone(), reason });
        }
    }

    if under_way && !rolling && draining.is_empty() && all_pass && current.len() == count {
        actions.push(Action::Finish);
    }
    actions
}

/// The number of `NAME-N`.
pub(crate) fn number(id: &str) -> Option<u32> {
    id.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Kind, Rollout, Template, TemplateVersion};

    const DEADLINE: Duration = Duration::from_secs(30);
    const NOW: u64 = 1_000_000_000;

    fn template(image: &str) -> Template {
        Template {
            image: image.into(),
            cpus: 1,
            memory_mib: 256,
            command: None,
            env: vec![],
            network: None,
            on_config_change: None,
            sleep_after_secs: None,
        }
    }

    fn service(count: u32, version: u32) -> ServiceRecord {
        ServiceRecord {
            name: "web".into(),
            kind: Kind::Machines,
            template: Some(template("v2")),
            count,
            port: 80,
            checks: vec![],
            ports: vec![],
            routes: vec![],
            meta: Default::default(),
            created_at: 0,
            version,
            previous: (version > 1)
                .then(|| TemplateVersion { version: version - 1, template: template("v1") }),
            rollout: (version > 1).then(|| Rollout {
                from: version - 1,
                to: version,
                state: RolloutState::Rolling,
                reason: None,
                started_ms: 0,
                ended_ms: None,
            }),
        }
    }

    fn instance(n: u32, version: u32) -> InstanceRecord {
        InstanceRecord {
            id: format!("web-{n}"),
            service: "web".into(),
            address: None,
            port: 80,
            machine: Some(format!("web-{n}")),
            ttl_s: None,
            checks: vec![],
            tags: vec![],
            created_at: NOW / 1000,
            version,
            draining_since_ms: None,
        }
    }

    fn members<'a>(instances: &'a [InstanceRecord], passing: &[bool]) -> Vec<Member<'a>> {
        instances
            .iter()
            .zip(passing)
            .map(|(instance, &passing)| Member { instance, passing, passed: passing, leaving: false })
            .collect()
    }

    fn create(n: u32) -> Action {
        Action::Create { id: format!("web-{n}") }
    }

    #[test]
    fn an_instance_on_a_draining_host_leaves_as_an_older_instance_does() {
        let all = [instance(1, 1), instance(2, 1)];
        let leaving = |passing: &[bool]| {
            let mut m = members(&all, passing);
            m[1].leaving = true;
            m
        };
        // One replacement first, the leaving one still serving.
        assert_eq!(plan(&service(2, 1), &leaving(&[true, true]), NOW, DEADLINE), [create(3)]);
        // Once the replacement passes, the leaving one drains.
        let all = [instance(1, 1), instance(2, 1), instance(3, 1)];
        let mut m = members(&all, &[true, true, true]);
        m[1].leaving = true;
        let actions = plan(&service(2, 1), &m, NOW, DEADLINE);
        assert!(
            matches!(&actions[..], [Action::Drain { id, reason }] if id == "web-2" && reason.contains("draining")),
            "{actions:?}"
        );
        // Not while the replacement is still coming up.
        let mut m = members(&all, &[true, true, false]);
        m[1].leaving = true;
        assert_eq!(plan(&service(2, 1), &m, NOW, DEADLINE), []);
        // One that never passed goes at once.
        let all = [instance(1, 1), instance(2, 1)];
        let mut m = members(&all, &[true, false]);
        m[1].leaving = true;
        let actions = plan(&service(2, 1), &m, NOW, DEADLINE);
        assert!(
            matches!(&actions[..], [Action::Remove { id, .. }, Action::Create { .. }] if id == "web-2"),
            "{actions:?}"
        );
    }

    #[test]
    fn a_draining_instance_is_removed_once_it_has_drained() {
        let mut a = instance(1, 1);
        a.draining_since_ms = Some(NOW - 500);
        let mut b = instance(2, 1);
        b.draining_since_ms = Some(NOW - DRAIN.as_millis() as u64);
        let all = [a, b, instance(3, 1)];
        let actions = plan(&service(1, 1), &members(&all, &[true, true, true]), NOW, DEADLINE);
        assert_eq!(actions, [Action::Remove { id: "web-2".into(), reason: String::new() }]);
    }

    #[test]
    fn an_instance_of_another_version_that_never_passed_is_removed_at_once() {
        let all = [instance(1, 1), instance(2, 2)];
        let actions = plan(&service(1, 2), &members(&all, &[false, true]), NOW, DEADLINE);
        assert!(
            matches!(&actions[..], [Action::Remove { id, .. }, Action::Finish] if id == "web-1"),
            "{actions:?}"
        );
    }

    #[test]
    fn during_a_rollout_an_older_instance_that_stopped_passing_drains_first_and_capacity_holds() {
        let all = [instance(1, 1), instance(2, 1), instance(3, 2)];
        let mut m = members(&all, &[true, false, true]);
        m[1].passed = true;
        let actions = plan(&service(2, 2), &m, NOW, DEADLINE);
        assert!(
            matches!(&actions[..], [Action::Create { .. }, Action::Drain { id, .. }] if id == "web-2"),
            "{actions:?}"
        );
        // Not while the new one is still coming up.
        let mut m = members(&all, &[true, false, false]);
        m[1].passed = true;
        assert_eq!(plan(&service(2, 2), &m, NOW, DEADLINE), []);
    }

    #[test]
    fn current_instances_beyond_the_count_drain_those_not_passing_first_then_the_highest() {
        let all = [instance(1, 1), instance(2, 1), instance(3, 1), instance(4, 1)];
        let actions = plan(&service(2, 1), &members(&all, &[true, false, true, true]), NOW, DEADLINE);
        let drained: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Drain { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(drained, ["web-2", "web-4"]);
    }

    #[test]
    fn with_no_older_instance_left_missing_instances_are_all_made_at_once() {
        assert_eq!(plan(&service(3, 1), &[], NOW, DEADLINE), [create(1), create(2), create(3)]);
        let all = [instance(2, 1)];
        assert_eq!(plan(&service(3, 1), &members(&all, &[false]), NOW, DEADLINE), [create(1), create(3)]);
    }

    #[test]
    fn during_a_rollout_one_current_instance_is_made_at_a_time_while_every_current_one_passes() {
        let all = [instance(1, 1), instance(2, 1), instance(3, 1)];
        assert_eq!(plan(&service(3, 2), &members(&all, &[true, true, true]), NOW, DEADLINE), [create(4)]);
        let all = [instance(1, 1), instance(2, 1), instance(3, 1), instance(4, 2)];
        assert_eq!(plan(&service(3, 2), &members(&all, &[true, true, true, false]), NOW, DEADLINE), []);
    }

    #[test]
    fn during_a_rollout_once_every_current_instance_passes_one_older_instance_drains() {
        let all = [instance(1, 1), instance(2, 1), instance(3, 1), instance(4, 2)];
        let actions = plan(&service(3, 2), &members(&all, &[true, true, true, true]), NOW, DEADLINE);
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert_eq!(actions[0], create(5));
        assert!(matches!(&actions[1], Action::Drain { id, .. } if id == "web-1"), "{actions:?}");
    }

    #[test]
    fn during_a_rollout_a_current_instance_that_has_not_passed_in_time_rolls_the_service_back() {
        let mut late = instance(4, 2);
        late.created_at = (NOW - DEADLINE.as_millis() as u64) / 1000;
        let all = [instance(1, 1), instance(2, 1), instance(3, 1), late];
        let actions = plan(&service(3, 2), &members(&all, &[true, true, true, false]), NOW, DEADLINE);
        assert!(
            matches!(&actions[..], [Action::RollBack { reason }] if reason.contains("web-4")),
            "{actions:?}"
        );
    }

    #[test]
    fn a_rollout_with_no_older_instance_left_and_every_current_one_passing_is_finished() {
        let all = [instance(4, 2), instance(5, 2), instance(6, 2)];
        assert_eq!(
            plan(&service(3, 2), &members(&all, &[true, true, true]), NOW, DEADLINE),
            [Action::Finish]
        );
        assert_eq!(plan(&service(3, 2), &members(&all, &[true, false, true]), NOW, DEADLINE), []);
    }

    #[test]
    fn a_whole_rollout_keeps_the_count_passing_at_every_step() {
        // Simulated: each pass applies the plan; new instances pass on the
        // pass after they are made, drains complete at once.
        let def = service(3, 2);
        let mut all: Vec<(InstanceRecord, bool)> = (1..=3).map(|n| (instance(n, 1), true)).collect();
        for _ in 0..20 {
            let instances: Vec<InstanceRecord> = all.iter().map(|(i, _)| i.clone()).collect();
            let passing: Vec<bool> = all.iter().map(|(_, p)| *p).collect();
            let actions = plan(&def, &members(&instances, &passing), NOW, DEADLINE);
            assert!(passing.iter().filter(|p| **p).count() >= 3, "capacity fell: {all:?}");
            if actions == [Action::Finish] {
                let versions: Vec<u32> = all.iter().map(|(i, _)| i.version).collect();
                assert_eq!(versions, [2, 2, 2]);
                return;
            }
            for (_, p) in all.iter_mut() {
                *p = true;
            }
            for action in actions {
                match action {
                    Action::Create { id } => {
                        let n = number(&id).expect("numbered");
                        all.push((instance(n, 2), false));
                    }
                    Action::Drain { id, .. } | Action::Remove { id, .. } => all.retain(|(i, _)| i.id != id),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        panic!("the rollout never finished: {all:?}");
    }
}
