//! A host dies: two daemons on one etcd, `one` (the leader) and `two`. A
//! service of two machines is spread over both hosts; when one is killed,
//! two takes the lead, marks one's machine lost with the reason and
//! replaces one's service instance; when one comes back it takes its own
//! machine up again and stops the copy that was replaced meanwhile.

use std::time::{Duration, Instant};

use hearth_client::types::{Machine, MachineState};
use hearth_testkit::etcd::Etcd;
use hearth_testkit::{Daemon, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

async fn daemon_on(etcd: &Etcd, host: &str) -> Daemon {
    Daemon::start_on_etcd(BIN, etcd, host, &[]).await
}

async fn machines(daemon: &Daemon) -> Vec<Machine> {
    daemon.client().machines().await.map(|l| l.machines).unwrap_or_default()
}

/// The service's machines as (host, state), sorted.
async fn web(daemon: &Daemon) -> Vec<(String, MachineState)> {
    let mut web: Vec<_> = machines(daemon)
        .await
        .into_iter()
        .filter(|m| m.name.starts_with("web-"))
        .map(|m| (m.host.unwrap_or_default(), m.state))
        .collect();
    web.sort_by(|a, b| a.0.cmp(&b.0));
    web
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_leaders_machines_are_marked_lost_and_its_service_instances_move() {
    let etcd = Etcd::start();
    // One starts first and leads; it is the one that dies, so two must
    // take the lead before it can act.
    let mut one = daemon_on(&etcd, "one").await;
    let two = daemon_on(&etcd, "two").await;
    let image = two.ensure_debian_image().await;

    success(&two.cli(&["machine", "run", "--on", "one", "--name", "solo", "--memory", "256M", &image]));
    success(&two.cli(&[
        "service", "create", "web", "--image", &image, "--count", "2", "--memory", "256", "--port", "8080",
        "--detach",
    ]));
    // Spread: one instance on each host.
    let spread = wait_until(Duration::from_secs(90), async || {
        web(&two).await
            == [("one".to_owned(), MachineState::Running), ("two".to_owned(), MachineState::Running)]
    })
    .await;
    assert!(
        spread,
        "{:?}\n{}\n{}",
        web(&two).await,
        success(&two.cli(&["service", "inspect", "web"])),
        one.log()
    );
    assert_eq!(one.vm_pids().len(), 2, "solo and one instance run on one");

    let died = Instant::now();
    one.kill9();
    let marked = wait_until(Duration::from_secs(40), async || {
        two.client().machine("solo").await.is_ok_and(|m| m.state == MachineState::Lost)
    })
    .await;
    let solo = two.client().machine("solo").await.expect("solo");
    assert!(marked, "{solo:?}\n{}", two.log());
    let reason = solo.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("host one stopped renewing its lease") && reason.contains("its disk is on host one"),
        "{reason}"
    );
    let listed = success(&two.cli(&["machine", "ls"]));
    assert!(listed.lines().any(|l| l.starts_with("solo ") && l.contains("lost")), "{listed}");
    let status = success(&two.cli(&["status"]));
    assert!(status.contains("host two, the leader, 1 of 2 hosts lost"), "{status}");

    let moved = wait_until(Duration::from_secs(60), async || {
        web(&two).await
            == [("two".to_owned(), MachineState::Running), ("two".to_owned(), MachineState::Running)]
    })
    .await;
    assert!(moved, "{:?}\n{}", web(&two).await, two.log());
    eprintln!(
        "the instance on one ran again on two {:.1} s after one was killed",
        died.elapsed().as_secs_f64()
    );

    // One comes back: its own machine runs again (the VM outlived its
    // daemon), and the instance replaced meanwhile is stopped there.
    one.restart().await;
    let back = wait_until(Duration::from_secs(60), async || {
        two.client().machine("solo").await.is_ok_and(|m| m.state == MachineState::Running)
    })
    .await;
    assert!(back, "{:?}\n{}", two.client().machine("solo").await, one.log());
    assert!(wait_until(Duration::from_secs(30), async || one.vm_pids().len() == 1).await, "{}", one.log());
    assert_eq!(web(&two).await.len(), 2);

    success(&two.cli(&["service", "rm", "web"]));
    success(&two.cli(&["machine", "rm", "-f", "solo"]));
    assert!(
        wait_until(Duration::from_secs(30), async || one.vm_pids().is_empty() && two.vm_pids().is_empty())
            .await
    );
}
