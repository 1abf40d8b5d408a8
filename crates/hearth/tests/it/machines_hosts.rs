//! Machines belong to hosts: two daemons on one etcd, hosts `one` and
//! `two`. A machine run through one with `--on two` boots on two, and
//! both list it there; what needs its VM is refused by one, naming two;
//! a stop or a removal through one is carried out by two.

use std::time::Duration;

use hearth_client::Error;
use hearth_testkit::etcd::Etcd;
use hearth_testkit::{Daemon, failure, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

async fn daemon_on(etcd: &Etcd, host: &str) -> Daemon {
    Daemon::start_on_etcd(BIN, etcd, host, &[]).await
}

/// The `machine ls` line of `name`, split into its columns.
fn ls_row(daemon: &Daemon, name: &str) -> Vec<String> {
    let ls = success(&daemon.cli(&["machine", "ls"]));
    let row =
        ls.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in {ls}"));
    row.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_run_on_another_host_runs_there_and_is_driven_from_either() {
    let etcd = Etcd::start();
    let one = daemon_on(&etcd, "one").await;
    let two = daemon_on(&etcd, "two").await;
    let image = one.ensure_debian_image().await;

    let out = success(&one.cli(&["machine", "run", "--on", "two", "--name", "far", &image]));
    assert!(out.contains("far is running"), "{out}");
    assert_eq!(two.vm_pids().len(), 1, "the VM runs on two");
    assert!(one.vm_pids().is_empty(), "and not on one");
    assert!(two.data_dir().join("machines/far").is_dir() && !one.data_dir().join("machines/far").exists());
    for daemon in [&one, &two] {
        let row = ls_row(daemon, "far");
        assert_eq!(row[1..3], ["running", "two"], "{row:?}");
        let m = daemon.client().machine("far").await.expect("machine");
        assert_eq!(m.host.as_deref(), Some("two"));
    }
    let json = success(&one.cli(&["machine", "ls", "--json"]));
    assert!(json.contains(r#""host": "two""#), "{json}");
    assert!(success(&one.cli(&["machine", "inspect", "far"])).contains("host        two"));

    // What needs the VM is refused by one, which says where to ask.
    let refused = one.client().exec_socket("far").await.map(drop);
    let Err(Error::Api { status, detail }) = refused else { panic!("expected a refusal, got {refused:?}") };
    assert_eq!((status.as_u16(), detail.code.as_str()), (409, "machine_elsewhere"), "{detail:?}");
    assert!(detail.message.contains(r#"machine "far" runs on host "two""#), "{}", detail.message);
    assert!(
        detail.hint.contains("run this on host two") && detail.hint.contains("hearth --host"),
        "{}",
        detail.hint
    );
    let exec = failure(&one.cli(&["machine", "exec", "far", "--", "true"]));
    assert!(exec.contains("runs on host \"two\"") && exec.contains("run this on host two"), "{exec}");
    let logs = failure(&one.cli(&["machine", "logs", "far"]));
    assert!(logs.contains("runs on host \"two\""), "{logs}");
    // Two has it.
    let hostname = success(&two.cli(&["machine", "exec", "far", "--", "hostname"]));
    assert_eq!(hostname, "far\n");

    // A host name that is none is refused with a hint.
    let bad = failure(&one.cli(&["machine", "run", "--on", "Two_", "--name", "bad", &image]));
    assert!(bad.contains("field `on`") && bad.contains("hearth host ls"), "{bad}");
    let nobody = failure(&one.cli(&["machine", "run", "--on", "nobody", "--name", "bad", &image]));
    assert!(nobody.contains("no host is named \"nobody\"") && nobody.contains("hearth host ls"), "{nobody}");

    // A stop through one: two stops the VM.
    let out = success(&one.cli(&["machine", "stop", "far"]));
    assert!(out.contains("far is stopped"), "{out}");
    assert!(wait_until(Duration::from_secs(10), async || two.vm_pids().is_empty()).await, "two stopped it");
    assert_eq!(ls_row(&one, "far")[1..3], ["stopped", "two"]);

    // A removal through one: two deletes the machine's directory.
    success(&one.cli(&["machine", "rm", "far"]));
    let gone = two.data_dir().join("machines/far");
    assert!(wait_until(Duration::from_secs(10), async || !gone.exists()).await, "two deleted its disk");
    assert!(two.client().machines().await.expect("ls").machines.is_empty());
    assert!(one.vm_pids().is_empty() && two.vm_pids().is_empty());

    // Without --on, hearth places it: one is drained, so two takes it.
    success(&one.cli(&["host", "drain", "one"]));
    let refused = failure(&one.cli(&["machine", "run", "--on", "one", "--name", "bad", &image]));
    assert!(
        refused.contains("host \"one\" is draining") && refused.contains("hearth host undrain one"),
        "{refused}"
    );
    success(&one.cli(&["machine", "run", "--name", "placed", "--memory", "256M", &image]));
    assert_eq!(ls_row(&one, "placed")[2], "two");
    let hosts: hearth_client::types::HostList =
        serde_json::from_str(&success(&one.cli(&["host", "ls", "--json"]))).unwrap();
    let load: Vec<_> =
        hosts.hosts.iter().map(|h| (h.name.as_str(), h.load.machines, h.load.memory_mib)).collect();
    assert_eq!(load, [("one", 0, 0), ("two", 1, 256)]);
    success(&one.cli(&["machine", "rm", "-f", "placed"]));
    assert!(wait_until(Duration::from_secs(20), async || two.vm_pids().is_empty()).await, "two removed it");
}
