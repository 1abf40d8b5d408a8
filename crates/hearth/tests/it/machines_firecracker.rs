//! Machines on Firecracker, end to end. The boots need a firecracker binary
//! (1.8 or later) on PATH and working KVM, which the build machines do not
//! have (no firecracker package in reach, and nested KVM there is broken):
//! there those tests are counted as skipped (`make test` says so at the
//! end), and they run wherever the daemon finds both. What runs everywhere
//! is the refusal on a host that cannot run Firecracker (one that can is
//! shown a `PATH` without it), and, wherever `/dev/kvm` opens, the KVM boot
//! probe on a host with Firecracker and no QEMU, against a stand-in
//! firecracker.

use std::time::Duration;

use hearth_client::Error;
use hearth_client::types::CreateMachine;
use hearth_testkit::{Daemon, failure, skip, success, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn code(output: &std::process::Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// Whether this daemon's host can run Firecracker machines: a firecracker
/// binary, and KVM that the boot probe found working (waiting for the
/// probe, which boots a test guest, if it has not answered yet).
async fn runs_firecracker(daemon: &Daemon) -> bool {
    let client = daemon.client();
    if client.status().await.expect("status").host.firecracker.is_none() {
        return false;
    }
    let probed = wait_until(Duration::from_secs(240), async || {
        client.status().await.expect("status").host.kvm.usable.is_some()
    })
    .await;
    assert!(probed, "the KVM probe never answered\n{}", daemon.log());
    client.status().await.expect("status").host.kvm.usable == Some(true)
}

/// Starts a daemon that can boot Firecracker machines, or records that
/// this host cannot and returns None.
async fn firecracker_daemon() -> Option<Daemon> {
    let daemon = Daemon::start(BIN).await;
    if runs_firecracker(&daemon).await {
        return Some(daemon);
    }
    skip("no firecracker (1.8 or later) on PATH with working KVM");
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn firecracker_is_refused_with_the_reason_where_it_cannot_run() {
    let mut daemon = Daemon::start(BIN).await;
    let mut client = daemon.client();
    let mut host = client.status().await.expect("status").host;
    // A host that can run Firecracker is shown one that cannot: the same
    // programs but firecracker.
    let dir = tempfile::tempdir().expect("tempdir");
    if host.firecracker.is_some() && host.kvm.usable != Some(false) && runs_firecracker(&daemon).await {
        let path = path_without(dir.path(), &["firecracker"], &[]);
        daemon = Daemon::start_with_env(BIN, &[("PATH", path.as_os_str())]).await;
        client = daemon.client();
        host = client.status().await.expect("status").host;
        assert!(host.firecracker.is_none(), "{host:?}");
    }
    let result = client
        .create_machine(&CreateMachine {
            name: Some("fc".into()),
            image: "any-image".into(),
            backend: Some("firecracker".into()),
            no_start: true,
            ..Default::default()
        })
        .await;
    let Err(Error::Api { status, detail }) = result else { panic!("expected a refusal, got {result:?}") };
    assert_eq!((status.as_u16(), detail.code.as_str()), (400, "backend_unavailable"), "{detail:?}");
    let whys: &[&str] = if host.firecracker.is_none() {
        &["firecracker is not installed"]
    } else {
        &["Firecracker needs KVM", "older than 1.8"]
    };
    assert!(whys.iter().any(|why| detail.message.contains(why)), "{}", detail.message);
    assert!(!detail.message.contains("does not drive Firecracker"), "{}", detail.message);
    assert!(client.machines().await.expect("ls").machines.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_firecracker_machine_runs_execs_stops_starts_and_leaves_nothing() {
    let Some(daemon) = firecracker_daemon().await else { return };
    let image = daemon.ensure_debian_image().await;
    let out = success(&daemon.cli(&["machine", "run", "--backend", "firecracker", "--name", "fc1", &image]));
    assert!(out.contains("fc1 is running"), "{out}");
    let m = daemon.client().machine("fc1").await.expect("machine");
    assert_eq!(m.backend, "firecracker");
    assert!(m.boot_ms.is_some_and(|ms| ms < 10_000), "{m:?}");
    assert_eq!(daemon.vm_pids().len(), 1);

    let run = daemon.cli(&["machine", "exec", "fc1", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(code(&run), 7);
    assert_eq!(String::from_utf8_lossy(&run.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&run.stderr), "err\n");
    assert_eq!(success(&daemon.cli(&["machine", "exec", "fc1", "--", "hostname"])), "fc1\n");
    let tty = success(&daemon.cli(&["machine", "exec", "-t", "fc1", "--", "tty"]));
    assert!(tty.trim().starts_with("/dev/pts/"), "{tty:?}");
    let logs = success(&daemon.cli(&["machine", "logs", "fc1"]));
    assert!(logs.contains("hearth-agent: ready"), "{logs}");

    // Stop: the agent restarts the guest, which ends Firecracker.
    success(&daemon.cli(&["machine", "stop", "fc1"]));
    assert_eq!(daemon.client().machine("fc1").await.expect("m").state, "stopped");
    assert!(daemon.vm_pids().is_empty(), "a stopped machine has no VM process");
    success(&daemon.cli(&["machine", "start", "fc1"]));
    assert_eq!(success(&daemon.cli(&["machine", "exec", "fc1", "--", "echo", "again"])), "again\n");

    success(&daemon.cli(&["machine", "rm", "-f", "fc1"]));
    assert!(daemon.vm_pids().is_empty(), "VM process left behind");
    assert!(!daemon.data_dir().join("machines/fc1").exists(), "machine directory left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_firecracker_snapshot_restores_under_another_name_and_keeps_counting() {
    let Some(daemon) = firecracker_daemon().await else { return };
    let image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&["machine", "run", "--backend", "firecracker", "--name", "fc2", &image]));
    success(&daemon.cli(&[
        "machine",
        "exec",
        "fc2",
        "--",
        "sh",
        "-c",
        "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' </dev/null >/dev/null 2>&1 &",
    ]));
    let count = |machine: &str| -> Option<u64> {
        let out = daemon.cli(&["machine", "exec", machine, "--", "cat", "/tmp/count"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    assert!(
        wait_until(Duration::from_secs(10), async || count("fc2").is_some_and(|n| n > 0)).await,
        "the counter never started"
    );
    let before = count("fc2").expect("a count");
    success(&daemon.cli(&["machine", "snapshot", "fc2", "fcsnap"]));
    assert!(daemon.vm_pids().is_empty(), "the snapshotted VM is gone");
    // Another name: other taps (network_overrides), the same relative disk and vsock paths.
    let out = success(&daemon.cli(&["machine", "restore", "fcsnap", "--name", "fc3"]));
    assert!(out.contains("fc3 is running"), "{out}");
    let first = count("fc3").expect("a count after the restore");
    assert!(first >= before, "went back in time: {first} < {before}");
    assert!(
        wait_until(Duration::from_secs(10), async || count("fc3").is_some_and(|n| n > first)).await,
        "stopped counting"
    );
    let err = failure(&daemon.cli(&["machine", "exec", "fc2", "--", "true"]));
    assert!(err.contains("is stopped"), "{err}");

    for name in ["fc3", "fc2"] {
        success(&daemon.cli(&["machine", "rm", "-f", name]));
    }
    success(&daemon.cli(&["snapshot", "rm", "fcsnap"]));
    assert!(daemon.vm_pids().is_empty());
}

/// A stand-in `firecracker`: says it is 1.10.1, serves the API on its
/// socket answering every call with 204, and writes each call it gets to
/// `$FAKE_FIRECRACKER_CALLS` as a line `METHOD PATH BODY`. It boots nothing,
/// so no agent ever answers; it ends itself after a minute at most.
const FAKE_FIRECRACKER: &str = r#"
import os, socket, sys, threading
if "--version" in sys.argv:
    print("Firecracker v1.10.1")
    sys.exit(0)
threading.Timer(60, lambda: os._exit(0)).start()
calls = open(os.environ["FAKE_FIRECRACKER_CALLS"], "a", buffering=1)
calls.write("pid %d\n" % os.getpid())
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[sys.argv.index("--api-sock") + 1])
server.listen(8)
while True:
    conn, _ = server.accept()
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        if b"\r\n\r\n" not in data:
            break
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(data) < length:
            data += conn.recv(65536)
        body, data = data[:length], data[length:]
        method, path = lines[0].split(" ")[:2]
        calls.write("%s %s %s\n" % (method, path, body.decode()))
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    conn.close()
"#;

/// A `PATH` of links to everything in the usual bin directories except
/// QEMU's system emulators, plus `extra` (name, target) links.
fn path_without_qemu(dir: &std::path::Path, extra: &[(&str, &std::path::Path)]) -> std::path::PathBuf {
    path_without(dir, &["qemu-system"], extra)
}

/// A `PATH` of links to everything in the usual bin directories except the
/// programs whose names start with one of `left_out`, plus `extra` (name,
/// target) links.
fn path_without(
    dir: &std::path::Path,
    left_out: &[&str],
    extra: &[(&str, &std::path::Path)],
) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    for (name, target) in extra {
        std::os::unix::fs::symlink(target, bin.join(name)).expect("link");
    }
    for from in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let Ok(entries) = std::fs::read_dir(from) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name_text = name.to_string_lossy();
            if left_out.iter().any(|out| name_text.starts_with(out))
                || bin.join(&name).symlink_metadata().is_ok()
            {
                continue;
            }
            let _ = std::os::unix::fs::symlink(entry.path(), bin.join(&name));
        }
    }
    bin
}

/// On a host with Firecracker and no QEMU, the KVM boot probe runs on
/// Firecracker (before, it needed QEMU, so such a host never learnt that
/// KVM works and could not run machines at all). The stand-in boots
/// nothing, so the probe must give up at its deadline and say why, and
/// what to install; what it asked Firecracker shows it booted the guest
/// the way Firecracker machines are booted.
#[tokio::test(flavor = "multi_thread")]
async fn without_qemu_the_kvm_probe_runs_on_firecracker_and_says_what_it_found() {
    if let Err(error) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        eprintln!("/dev/kvm: {error}");
        skip("no accessible /dev/kvm, so the KVM boot probe does not run");
        return;
    }
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("python3 runs the stand-in firecracker: install it (`make setup` does)");
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("fake-firecracker");
    std::fs::write(&fake, format!("#!{python}\n{FAKE_FIRECRACKER}")).expect("write the stand-in");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let calls = dir.path().join("calls");
    let path = path_without_qemu(dir.path(), &[("firecracker", &fake)]);
    let daemon = Daemon::start_with_env(
        BIN,
        &[("PATH", path.as_os_str()), ("FAKE_FIRECRACKER_CALLS", calls.as_os_str())],
    )
    .await;

    let client = daemon.client();
    let host = client.status().await.expect("status").host;
    assert!(host.qemu.is_none(), "{host:?}");
    assert_eq!(host.firecracker.as_ref().and_then(|f| f.version.as_deref()), Some("Firecracker v1.10.1"));
    // The probe: preparing the guest, then a 20 s deadline for its agent.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let host = loop {
        let host = client.status().await.expect("status").host;
        if host.kvm.usable.is_some() {
            break host;
        }
        assert!(std::time::Instant::now() < deadline, "the probe never finished: {host:?}\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
    if let Some(pid) = recorded.lines().find_map(|l| l.strip_prefix("pid ")) {
        let _ = std::process::Command::new("kill").args(["-KILL", pid]).status();
    }

    assert_eq!(host.kvm.usable, Some(false), "{host:?}");
    let detail = &host.kvm.detail;
    assert!(detail.contains("did not boot under KVM on firecracker"), "{detail}");
    assert!(detail.contains("install the qemu-system-x86 package"), "{detail}");
    assert!(!detail.contains("guests use software emulation"), "{detail}");
    // Booted as Firecracker machines are: an uncompressed kernel, the
    // agent on vsock, then started.
    let boot =
        recorded.lines().find(|l| l.starts_with("PUT /boot-source ")).unwrap_or_else(|| panic!("{recorded}"));
    assert!(boot.contains("hearth.vsock=1024") && boot.contains("pci=off"), "{boot}");
    assert!(boot.contains("vmlinux"), "Firecracker needs the ELF kernel: {boot}");
    assert!(recorded.contains("PUT /vsock "), "{recorded}");
    assert!(recorded.contains("InstanceStart"), "{recorded}");
    // With neither KVM nor QEMU, new machines would need QEMU: the refusal says so.
    assert_eq!(host.default_backend, "qemu-tcg");
}
