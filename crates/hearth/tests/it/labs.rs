//! Labs end to end, through the real binary: a lab file brings up a network
//! and a group of machines with setup and readiness checks, `lab up` again
//! changes nothing, `lab down` leaves nothing; bad lab files are refused
//! before anything is created; a failing setup names its machine.
//!
//! These tests use subnets of their own (10.244.x.0/24).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hearth_testkit::{Daemon, failure, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// Writes a lab file into its own directory under the daemon's data dir and
/// returns its path (the lab is named after the directory).
fn lab_file(daemon: &Daemon, lab: &str, text: &str) -> PathBuf {
    let dir = daemon.data_dir().join("labs-under-test").join(lab);
    std::fs::create_dir_all(&dir).expect("create the lab's directory");
    let path = dir.join("lab.toml");
    std::fs::write(&path, text).expect("write the lab file");
    path
}

fn exec(daemon: &Daemon, machine: &str, script: &str) -> String {
    success(&daemon.cli(&["machine", "exec", machine, "--", "sh", "-c", script]))
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lab_comes_up_ready_by_name_again_without_change_and_goes_down_without_a_trace() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let file = lab_file(
        &daemon,
        "tiny",
        &format!(
            r#"
[[network]]
name = "tiny"
subnet = "10.244.0.0/24"
nat = false

[[machine]]
name = "node"
count = 2
image = "{image}"
networks = ["tiny:10.244.0.1{{index}}"]
setup = "echo {{name}} {{index}} {{ip}} {{network}} {{group_names}} {{group_ips}} >> /root/setup.txt"
ready = "test -s /root/setup.txt"
ready_timeout = 60
"#
        ),
    );

    let started = Instant::now();
    let out = success(&daemon.cli(&["lab", "up", path_arg(&file)]));
    eprintln!("lab up took {:.1}s:\n{out}", started.elapsed().as_secs_f64());
    for expected in
        ["MACHINE", "node-1", "tiny:10.244.0.11", "node-2.tiny.hearth", "running", "lab tiny is up"]
    {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    let client = daemon.client();
    let mut started_at = Vec::new();
    for name in ["node-1", "node-2"] {
        let m = client.machine(name).await.expect("the lab's machine");
        assert_eq!(m.state, "running", "{m:?}");
        started_at.push(m.started_at);
    }

    // Setup ran once, with its placeholders filled in; the names resolve.
    assert_eq!(
        exec(&daemon, "node-2", "cat /root/setup.txt"),
        "node-2 2 10.244.0.12 tiny node-1,node-2 10.244.0.11,10.244.0.12\n"
    );
    let hosts = exec(&daemon, "node-1", "getent hosts node-2");
    assert!(hosts.starts_with("10.244.0.12"), "{hosts}");

    // Up again: nothing is created, restarted or set up twice.
    let again = success(&daemon.cli(&["lab", "up", path_arg(&file)]));
    assert!(again.contains("lab tiny is up"), "{again}");
    assert_eq!(client.machines().await.expect("machines").machines.len(), 2);
    assert_eq!(client.networks().await.expect("networks").networks.len(), 1);
    for (name, before) in ["node-1", "node-2"].into_iter().zip(started_at) {
        assert_eq!(client.machine(name).await.expect("machine").started_at, before, "{name} was restarted");
        assert_eq!(exec(&daemon, name, "wc -l < /root/setup.txt").trim(), "1", "{name}'s setup ran twice");
    }

    // The daemon knows the lab.
    let ls = success(&daemon.cli(&["lab", "ls"]));
    assert!(ls.contains("tiny") && ls.contains("2/2 running") && ls.contains("lab.toml"), "{ls}");
    let json: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["lab", "ls", "--json"]))).expect("lab ls --json");
    assert_eq!(json["labs"][0]["networks"], serde_json::json!(["tiny"]));
    assert_eq!(json["labs"][0]["machines"][1]["name"], "node-2");

    // Down, by its file: the machines, the network and the record go.
    let down = success(&daemon.cli(&["lab", "down", path_arg(&file)]));
    assert!(down.contains("node-1, node-2") && down.contains("removed networks tiny"), "{down}");
    assert!(client.machines().await.expect("machines").machines.is_empty());
    assert!(client.networks().await.expect("networks").networks.is_empty());
    assert!(client.labs().await.expect("labs").labs.is_empty());
    let err = failure(&daemon.cli(&["lab", "down", "tiny"]));
    assert!(err.contains("lab \"tiny\" does not exist") && err.contains("hint:"), "{err}");
    // The networks service removes the bridge on its next pass, after `down` answered.
    wait_until(Duration::from_secs(10), async || {
        daemon.host_links().is_empty() && daemon.vm_pids().is_empty()
    })
    .await;
    assert!(daemon.host_links().is_empty(), "left on the host: {:?}", daemon.host_links());
    assert!(daemon.vm_pids().is_empty(), "VMs left: {:?}", daemon.vm_pids());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_lab_files_are_refused_before_anything_is_created() {
    let daemon = Daemon::start(BIN).await;
    let up = |name: &str, text: &str| {
        let file = lab_file(&daemon, name, text);
        failure(&daemon.cli(&["lab", "up", path_arg(&file)]))
    };
    let net = "[[network]]\nname = \"bad\"\nsubnet = \"10.244.1.0/24\"\n\n";

    // One check per line: (what is wrong, the file, what the error must say).
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown field",
            format!("{net}[[machine]]\nname = \"a\"\nimage = \"i\"\nnetwork = [\"bad\"]\n"),
            &["lab.toml:8:1", "unknown field `network`", "expected one of"],
        ),
        (
            "missing image",
            format!("{net}[[machine]]\nname = \"a\"\n"),
            &["lab.toml:5", "missing field `image`"],
        ),
        (
            "duplicate names",
            format!(
                "{net}[[machine]]\nname = \"a\"\ncount = 2\nimage = \"i\"\n\n[[machine]]\nname = \"a-2\"\nimage = \"i\"\n"
            ),
            &["lab.toml:11", "\"a-2\" is used twice (line 6 and line 11)"],
        ),
        (
            "bad count",
            format!("{net}[[machine]]\nname = \"a\"\ncount = 0\nimage = \"i\"\n"),
            &["lab.toml:7", "`count` is 0"],
        ),
        (
            "count of the wrong type",
            format!("{net}[[machine]]\nname = \"a\"\ncount = \"two\"\nimage = \"i\"\n"),
            &["lab.toml:7:9", "count = \"two\""],
        ),
        (
            "unknown placeholder",
            format!("{net}[[machine]]\nname = \"a\"\nimage = \"i\"\nsetup = \"echo {{nmae}}\"\n"),
            &["lab.toml:8", "field `setup`", "unknown placeholder {nmae}"],
        ),
        (
            "address outside the subnet",
            format!("{net}[[machine]]\nname = \"a\"\nimage = \"i\"\nnetworks = [\"bad:10.9.9.9\"]\n"),
            &["lab.toml:8", "not a machine address in network \"bad\""],
        ),
        (
            "a network that is nowhere",
            "[[machine]]\nname = \"a\"\nimage = \"i\"\nnetworks = [\"nowhere\"]\n".to_owned(),
            &["network \"nowhere\"", "does not declare"],
        ),
        (
            "a bad lab name",
            "name = \"Bad Lab\"\n[[machine]]\nname = \"a\"\nimage = \"i\"\n".to_owned(),
            &["lab.toml:1", "not valid"],
        ),
    ];
    for (what, text, expect) in cases {
        let err = up("bad", text);
        for e in *expect {
            assert!(err.contains(e), "{what}: {e:?} missing from:\n{err}");
        }
    }

    // Nothing was created or recorded, not even the declared network.
    let client = daemon.client();
    assert!(client.machines().await.expect("machines").machines.is_empty());
    assert!(client.networks().await.expect("networks").networks.is_empty());
    assert!(client.labs().await.expect("labs").labs.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_setup_names_the_machine_and_the_lab_stays_for_inspection() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let file = lab_file(
        &daemon,
        "broken",
        &format!(
            "[[network]]\nname = \"broken\"\nsubnet = \"10.244.2.0/24\"\nnat = false\n\n\
             [[machine]]\nname = \"solo\"\nimage = \"{image}\"\nnetworks = [\"broken\"]\n\
             setup = \"echo the disk is full >&2; exit 3\"\n"
        ),
    );
    let out = daemon.cli(&["lab", "up", path_arg(&file)]);
    let err = failure(&out);
    for expected in ["machine solo", "setup exited with code 3", "the disk is full", "hearth lab down broken"]
    {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
    // Left for inspection, and recorded, so that down cleans it up.
    assert_eq!(daemon.client().machine("solo").await.expect("solo").state, "running");
    assert!(success(&daemon.cli(&["lab", "ls"])).contains("1/1 running"));
    success(&daemon.cli(&["lab", "down", "broken"]));
    assert!(daemon.client().machines().await.expect("machines").machines.is_empty());
    assert!(daemon.client().networks().await.expect("networks").networks.is_empty());
    wait_until(Duration::from_secs(10), async || daemon.host_links().is_empty()).await;
    assert!(daemon.host_links().is_empty(), "left on the host: {:?}", daemon.host_links());
}

/// The etcd example, end to end: builds `etcd:bookworm` (about a minute,
/// once per test cache), boots three machines under whatever backend the
/// host has, forms the cluster, and runs the partition script, which must
/// see a new leader elected and the cluster healthy after the heal.
///
/// Ignored by default because it is slow (several minutes in software
/// emulation); run it with `cargo test -p hearth --test it -- --ignored labs::`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: builds an etcd image and boots a 3-node cluster"]
async fn the_etcd_example_elects_a_new_leader_when_the_old_one_is_cut_off() {
    let daemon = Daemon::start(BIN).await;
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/labs/etcd");
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());

    let started = Instant::now();
    let up = daemon.cli(&["lab", "up", path_arg(&example.join("lab.toml"))]);
    eprintln!(
        "lab up took {:.1}s\n{}{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    success(&up);

    let started = Instant::now();
    let script = std::process::Command::new("bash")
        .arg(example.join("partition-leader.sh"))
        .env("PATH", path)
        .env("HEARTH_DATA_DIR", daemon.data_dir())
        .output()
        .expect("run partition-leader.sh");
    let out = String::from_utf8_lossy(&script.stdout).into_owned();
    eprintln!(
        "partition-leader.sh took {:.1}s:\n{out}{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&script.stderr)
    );
    assert!(script.status.success(), "the partition script failed");
    assert!(out.contains("new leader:") && out.contains("healthy again"), "{out}");

    success(&daemon.cli(&["lab", "down", "etcd"]));
    assert!(daemon.client().machines().await.expect("machines").machines.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lab_service_comes_up_passing_again_without_change_and_goes_down_with_its_machines() {
    let daemon = Daemon::start_with_default_network(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let server = "mkdir -p /www && echo ok > /www/index.html && exec busybox httpd -f -p 8080 -h /www";
    let text = format!(
        "[[service]]\nname = \"svc\"\nimage = \"{image}\"\ncount = 2\nport = 8080\nchecks = [\"http:/,interval=1s,failures=3\"]\ncommand = [\"sh\", \"-c\", \"{}\"]\n",
        server
    );
    let file = lab_file(&daemon, "withsvc", &text);
    let out = success(&daemon.cli(&["lab", "up", path_arg(&file)]));
    assert!(out.contains("lab withsvc is up") && out.contains("1 service"), "{out}");
    let detail = daemon.client().service("svc").await.expect("the lab's service");
    assert_eq!(detail.service.passing, 2, "{detail:?}");
    let lab = daemon.client().lab("withsvc").await.expect("lab");
    assert_eq!(lab.services, ["svc"]);

    // Again: nothing is made twice.
    success(&daemon.cli(&["lab", "up", path_arg(&file)]));
    assert_eq!(daemon.client().service("svc").await.expect("svc").instances.len(), 2);

    let out = success(&daemon.cli(&["lab", "down", "withsvc"]));
    assert!(out.contains("removed services svc"), "{out}");
    assert!(daemon.client().service("svc").await.is_err());
    assert!(
        wait_until(Duration::from_secs(20), async || daemon.vm_pids().is_empty()).await,
        "its machines are gone"
    );
}
