//! `hearth machine ssh`: the system `ssh` into a machine whose image has an
//! SSH server, with the key pair hearth keeps in its data dir; the remote
//! exit code becomes the CLI's. Images without an SSH server, and machines
//! this host cannot reach, get an error that says what to do.
//!
//! The network is the test's own (10.248.0.0/24, on this daemon's prefixed
//! bridge, a subnet no other test uses: two overlapping networks of tests
//! that run at once are refused), removed with the daemon.

use std::os::unix::fs::PermissionsExt;

use hearth_testkit::{Daemon, failure, success};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");
/// Debian with an SSH server: a repository of its own, so the plain test
/// image's package list stays as other tests expect.
const SSH_IMAGE: &str = "hearth-test-debian-ssh";

fn code(output: &std::process::Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_runs_commands_in_a_machine_and_passes_their_exit_codes_back() {
    let daemon = Daemon::start(BIN).await;
    let ssh_image = daemon.ensure_debian_image_with(SSH_IMAGE, "openssh-server").await;
    let plain_image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&["network", "create", "sshnet", "--subnet", "10.248.0.0/24", "--no-nat"]));
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "s1",
        "--network",
        "sshnet",
        "--memory",
        "256M",
        "--sleep-after",
        "3s",
        &ssh_image,
    ]));

    let hostname = daemon.cli(&["machine", "ssh", "s1", "--", "hostname"]);
    assert_eq!(
        String::from_utf8_lossy(&hostname.stdout),
        "s1\n",
        "{}",
        String::from_utf8_lossy(&hostname.stderr)
    );
    assert_eq!(code(&hostname), 0);

    // A sleeping machine is woken first, and a session keeps it awake
    // however long it is quiet (longer than the 3 s after which it sleeps:
    // asleep, it could not end the command, and ssh would wait forever).
    success(&daemon.cli(&["machine", "sleep", "s1"]));
    let woken = daemon.cli(&["machine", "ssh", "s1", "--", "sleep 6; hostname"]);
    assert_eq!(String::from_utf8_lossy(&woken.stdout), "s1\n", "{}", String::from_utf8_lossy(&woken.stderr));
    assert!(String::from_utf8_lossy(&woken.stderr).contains("waking s1"));

    // Exit codes come back, and the command line is the remote shell's, as with ssh.
    let out = daemon.cli(&["machine", "ssh", "s1", "--", "echo out; echo err >&2; exit 42"]);
    assert_eq!(code(&out), 42);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // One key pair per data dir, private to its owner, authorized once
    // however often ssh is used; host keys made by the machine itself.
    let key = daemon.data_dir().join("ssh/id_ed25519");
    assert_eq!(std::fs::metadata(&key).expect("private key").permissions().mode() & 0o777, 0o600);
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let authorized =
        success(&daemon.cli(&["machine", "exec", "s1", "--", "cat", "/root/.ssh/authorized_keys"]));
    assert_eq!(authorized, public, "the key is authorized exactly once");
    let known = std::fs::read_to_string(daemon.data_dir().join("ssh/known_hosts")).expect("known hosts");
    assert!(known.starts_with("hearth-s1-") && known.contains(" ssh-ed25519 "), "{known}");

    // A machine this host cannot reach: the error says how to make it reachable.
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "s2",
        "--network",
        "none",
        "--memory",
        "256M",
        &ssh_image,
    ]));
    let err = failure(&daemon.cli(&["machine", "ssh", "s2", "--", "true"]));
    assert!(err.contains("is on no network") && err.contains("-p 2222:22"), "{err}");

    // An image without an SSH server: the error says how to build one that has it.
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "p1",
        "--network",
        "none",
        "--memory",
        "256M",
        &plain_image,
    ]));
    let err = failure(&daemon.cli(&["machine", "ssh", "p1", "--", "true"]));
    assert!(err.contains("has no SSH server"), "{err}");
    assert!(err.contains("hearth image build debian --packages openssh-server"), "{err}");

    // Stopped machines are not reached for.
    success(&daemon.cli(&["machine", "stop", "p1"]));
    let err = failure(&daemon.cli(&["machine", "ssh", "p1"]));
    assert!(err.contains("is stopped") && err.contains("hearth machine start p1"), "{err}");

    for name in ["s1", "s2", "p1"] {
        success(&daemon.cli(&["machine", "rm", "-f", name]));
    }
    success(&daemon.cli(&["network", "rm", "sshnet"]));
    assert!(daemon.vm_pids().is_empty());
}
