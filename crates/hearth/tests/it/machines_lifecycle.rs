//! Machines end to end, under whatever backend this host gives (software
//! emulation on the build machines): run, exec, copy, logs, stop, start,
//! remove, and a daemon restart with a machine running.

use std::time::Duration;

use hearth_client::Error;
use hearth_client::types::CreateMachine;
use hearth_testkit::{Daemon, failure, success};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn code(output: &std::process::Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_runs_execs_copies_stops_starts_and_leaves_nothing_when_removed() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;

    let out = success(&daemon.cli(&["machine", "run", "--name", "n1", &image]));
    assert!(out.contains("n1 is running"), "{out}");
    let m = daemon.client().machine("n1").await.expect("machine");
    assert_eq!(m.state, "running");
    assert!(m.boot_ms.is_some() && m.pid.is_some(), "{m:?}");
    // Its VMM runs confined: as ids of its own that no account has, under
    // a seccomp filter that forbids changing them, with no capability.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", m.pid.expect("pid"))).expect("the VMM's status");
    let field = |name: &str| {
        let line =
            status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {status}"));
        line[name.len()..].split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    // The VM is found as the VM of this data dir (what the "leaves
    // nothing" checks below and elsewhere rely on).
    assert_eq!(daemon.vm_pids(), vec![m.pid.expect("pid")]);
    let uid = field("Uid:");
    let vmm_id: u32 = uid[0].parse().expect("uid");
    assert!(VMM_IDS.contains(&vmm_id), "a VMM id, not root or an account's: {status}");
    assert_eq!(uid, vec![uid[0].clone(); 4], "real, effective, saved and fs uids: {status}");
    assert_eq!(field("Gid:"), vec![uid[0].clone(); 4], "a group of its own: {status}");
    assert!(nix_user(vmm_id).is_none(), "no account has the VMM's id");
    assert_eq!(field("Seccomp:"), vec!["2".to_owned()], "a seccomp filter: {status}");
    assert_eq!(field("NoNewPrivs:"), vec!["1".to_owned()], "no new privileges: {status}");
    assert_eq!(field("CapEff:"), vec!["0000000000000000".to_owned()], "no capability: {status}");
    assert_eq!(field("CapPrm:"), vec!["0000000000000000".to_owned()], "none to take back: {status}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", m.pid.expect("pid"))).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    for dir in [daemon.data_dir().to_owned(), daemon.cache_dir()] {
        assert!(!cmdline.contains(&dir.display().to_string()), "QEMU names no path: {cmdline}");
    }

    // Exit codes, stdout and stderr apart.
    let run = daemon.cli(&["machine", "exec", "n1", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(code(&run), 7);
    assert_eq!(String::from_utf8_lossy(&run.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&run.stderr), "err\n");
    assert_eq!(
        String::from_utf8_lossy(&daemon.cli(&["machine", "exec", "n1", "--", "hostname"]).stdout),
        "n1\n"
    );

    // Stdin reaches the command; a pty is a pty.
    let mut child = std::process::Command::new(BIN)
        .args(["machine", "exec", "-i", "n1", "--", "sha256sum"])
        .env("HEARTH_DATA_DIR", daemon.data_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn exec -i");
    let input = vec![b'x'; 1 << 20];
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&input).expect("write stdin");
    }
    let piped = child.wait_with_output().expect("wait");
    assert!(piped.status.success());
    let expected = {
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(&input)?;
                c.wait_with_output()
            })
            .expect("host sha256sum");
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
    };
    assert!(
        String::from_utf8_lossy(&piped.stdout).starts_with(&expected),
        "stdin was not passed through intact"
    );
    let tty = success(&daemon.cli(&["machine", "exec", "-t", "n1", "--", "tty"]));
    assert!(tty.trim().starts_with("/dev/pts/"), "{tty:?}");

    // Files both ways, with their modes.
    let local = daemon.data_dir().join("upload.sh");
    std::fs::write(&local, "#!/bin/sh\necho uploaded\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    success(&daemon.cli(&["machine", "cp", local.to_str().expect("utf8"), "n1:/root/upload.sh"]));
    assert_eq!(success(&daemon.cli(&["machine", "exec", "n1", "--", "/root/upload.sh"])), "uploaded\n");
    assert_eq!(
        success(&daemon.cli(&["machine", "exec", "n1", "--", "stat", "-c", "%a", "/root/upload.sh"])),
        "750\n"
    );
    let back = daemon.data_dir().join("os-release");
    success(&daemon.cli(&["machine", "cp", "n1:/etc/os-release", back.to_str().expect("utf8")]));
    assert!(std::fs::read_to_string(&back).expect("read").contains("bookworm"));
    let err = failure(&daemon.cli(&["machine", "cp", "n1:/no/such/file", back.to_str().expect("utf8")]));
    assert!(err.contains("hint:"), "{err}");

    // Issue 13, item 2: a guest's set-ID file arrives without its set-ID
    // and sticky bits (the CLI runs as root here, so it could make them).
    success(&daemon.cli(&[
        "machine",
        "exec",
        "n1",
        "--",
        "sh",
        "-c",
        "cp /bin/true /root/suid && chmod 7755 /root/suid",
    ]));
    let suid = daemon.data_dir().join("suid");
    success(&daemon.cli(&["machine", "cp", "n1:/root/suid", suid.to_str().expect("utf8")]));
    let mode = std::fs::metadata(&suid).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "set-ID bits from the guest landed on the host: {mode:o}");
    // Several MiB stream both ways intact, through a temporary name only.
    let big = daemon.data_dir().join("big");
    let content: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&big, &content).expect("write");
    success(&daemon.cli(&["machine", "cp", big.to_str().expect("utf8"), "n1:/root/big"]));
    let again = daemon.data_dir().join("big-again");
    success(&daemon.cli(&["machine", "cp", "n1:/root/big", again.to_str().expect("utf8")]));
    assert!(std::fs::read(&again).expect("read") == content, "the file changed on the way");
    let parts: Vec<_> = std::fs::read_dir(daemon.data_dir())
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(parts.is_empty(), "temporary files left behind: {parts:?}");

    // The console.
    let logs = success(&daemon.cli(&["machine", "logs", "n1"]));
    assert!(logs.contains("hearth-agent: ready"), "{logs}");
    let tail = success(&daemon.cli(&["machine", "logs", "--tail", "2", "n1"]));
    let last: Vec<&str> = logs.lines().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect();
    assert_eq!(tail.lines().collect::<Vec<_>>(), last, "--tail 2 is the last two lines");

    // Stop keeps the disk; exec into a stopped machine says what to do.
    success(&daemon.cli(&["machine", "stop", "n1"]));
    assert_eq!(daemon.client().machine("n1").await.expect("m").state, "stopped");
    let err = failure(&daemon.cli(&["machine", "exec", "n1", "--", "true"]));
    assert!(err.contains("is stopped") && err.contains("hearth machine start n1"), "{err}");
    assert!(daemon.vm_pids().is_empty(), "a stopped machine has no VM process");
    // The VMM can write its disk's header; a backing file named there is
    // never what it is handed, only the image the record names.
    let secret = daemon.data_dir().join("not-for-guests");
    std::fs::write(&secret, "host secret").expect("write");
    let disk = daemon.data_dir().join("machines/n1/disk.qcow2");
    let rebased = std::process::Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&disk)
        .output()
        .expect("qemu-img");
    assert!(rebased.status.success(), "{}", String::from_utf8_lossy(&rebased.stderr));
    success(&daemon.cli(&["machine", "start", "n1"]));
    assert_eq!(success(&daemon.cli(&["machine", "exec", "n1", "--", "/root/upload.sh"])), "uploaded\n");
    let pid = daemon.client().machine("n1").await.expect("m").pid.expect("pid");
    let open: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(!open.contains(&secret), "QEMU was handed the header's backing file: {open:?}");

    // rm refuses a running machine, rm -f removes everything.
    let err = failure(&daemon.cli(&["machine", "rm", "n1"]));
    assert!(err.contains("rm -f n1"), "{err}");
    success(&daemon.cli(&["machine", "rm", "-f", "n1"]));
    assert!(daemon.vm_pids().is_empty(), "VM process left behind");
    assert!(!daemon.data_dir().join("machines/n1").exists(), "machine directory left behind");
    assert!(daemon.client().machines().await.expect("ls").machines.is_empty());
    let ls = success(&daemon.cli(&["machine", "ls"]));
    assert_eq!(ls.lines().count(), 1, "{ls}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_daemon_adopts_running_machines_and_notices_dead_ones() {
    let mut daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&["machine", "run", "--name", "keep", &image]));
    let before = daemon.client().machine("keep").await.expect("m");

    daemon.kill9();
    daemon.restart().await;
    let after = daemon.client().machine("keep").await.expect("m");
    assert_eq!((after.state.as_str(), after.pid), ("running", before.pid), "not adopted: {after:?}");
    assert_eq!(
        success(&daemon.cli(&["machine", "exec", "keep", "--", "echo", "still here"])),
        "still here\n"
    );

    // The VM dies behind hearth's back: the machine is marked failed, with why.
    let pid = after.pid.expect("pid");
    std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().expect("kill");
    let failed = daemon.wait_for_machine("keep", &["failed", "stopped"], Duration::from_secs(15)).await;
    assert_eq!(failed.state, "failed", "{failed:?}");
    assert!(failed.reason.as_deref().is_some_and(|r| r.contains("ended unexpectedly")), "{failed:?}");
    success(&daemon.cli(&["machine", "rm", "keep"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_machine_requests_are_refused_clearly_and_leave_nothing() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let client = daemon.client();
    let create = |name: &str| CreateMachine {
        name: Some(name.to_owned()),
        image: image.clone(),
        no_start: true,
        ..Default::default()
    };
    let refused = |result: Result<hearth_client::types::Machine, Error>| match result {
        Err(Error::Api { status, detail }) => (status.as_u16(), detail.code, detail.message, detail.hint),
        other => panic!("expected an API error, got {other:?}"),
    };

    let (status, code, message, hint) =
        refused(client.create_machine(&CreateMachine { image: "nosuch:1".into(), ..create("a") }).await);
    assert_eq!((status, code.as_str()), (404, "not_found"), "{message}");
    assert!(hint.contains("hearth image pull"), "{hint}");

    let (status, _, message, _) =
        refused(client.create_machine(&CreateMachine { memory_mib: Some(64), ..create("a") }).await);
    assert_eq!(status, 400);
    assert!(message.contains("too little"), "{message}");

    let (status, _, message, _) = refused(
        client
            .create_machine(&CreateMachine { kernel: Some("/no/such/vmlinuz".into()), ..create("a") })
            .await,
    );
    assert_eq!(status, 400);
    assert!(message.contains("does not exist"), "{message}");

    let (status, _, message, _) =
        refused(client.create_machine(&CreateMachine { name: Some("Bad_Name".into()), ..create("a") }).await);
    assert_eq!(status, 400);
    assert!(message.contains("not valid"), "{message}");

    let (status, _, message, _) = refused(
        client.create_machine(&CreateMachine { backend: Some("vmware".into()), ..create("a") }).await,
    );
    assert_eq!(status, 400);
    assert!(message.contains("unknown backend"), "{message}");

    // A reload action that is no signal, or nothing: from the API and the CLI.
    let (status, _, message, _) = refused(
        client
            .create_machine(&CreateMachine { on_config_change: Some("SIGHPU".into()), ..create("a") })
            .await,
    );
    assert_eq!(status, 400);
    assert!(message.contains("SIGHPU is not a signal name"), "{message}");
    let err = failure(&daemon.cli(&["machine", "run", "--on-config-change", " ", "--name", "a", &image]));
    assert!(err.contains("the reload action is empty"), "{err}");

    let host = client.status().await.expect("status").host;
    if host.kvm.usable != Some(true) {
        let (status, code, message, _) = refused(
            client.create_machine(&CreateMachine { backend: Some("qemu-kvm".into()), ..create("a") }).await,
        );
        assert_eq!((status, code.as_str()), (400, "backend_unavailable"), "{message}");
    }

    // A name taken; exec into a machine that never started.
    let reloads = CreateMachine { on_config_change: Some("nginx -s reload".into()), ..create("taken") };
    client.create_machine(&reloads).await.expect("create without starting");
    let (status, _, message, hint) = refused(client.create_machine(&create("taken")).await);
    assert_eq!(status, 409);
    assert!(message.contains("already exists") && hint.contains("rm -f taken"), "{message} {hint}");
    let m = daemon.wait_for_machine("taken", &["stopped"], Duration::from_secs(10)).await;
    assert_eq!(m.desired, "stopped");
    assert_eq!(m.on_config_change.as_deref(), Some("nginx -s reload"));
    let inspect = success(&daemon.cli(&["machine", "inspect", "taken"]));
    assert!(inspect.contains("on config   nginx -s reload\n"), "{inspect}");
    let err = failure(&daemon.cli(&["machine", "exec", "taken", "--", "true"]));
    assert!(err.contains("is stopped"), "{err}");

    // A reference that is not one, and a registry that is not there (loopback only).
    let err = failure(&daemon.cli(&["machine", "run", "Not/A:Ref:x"]));
    assert!(err.contains("not a valid image reference"), "{err}");
    let err = failure(&daemon.cli(&["machine", "run", "127.0.0.1:1/nothing:latest"]));
    assert!(err.contains("cannot connect to the registry"), "{err}");

    // Nothing booted, nothing left but the one stopped record.
    assert!(daemon.vm_pids().is_empty());
    success(&daemon.cli(&["machine", "rm", "taken"]));
    let dirs: Vec<_> = std::fs::read_dir(daemon.data_dir().join("machines")).expect("dir").collect();
    assert!(dirs.is_empty(), "{dirs:?}");
    let err = failure(&daemon.cli(&["machine", "rm", "taken"]));
    assert!(err.contains("does not exist"), "{err}");
}

/// The ids VMMs run as (`hearth_machines::vmm::VMM_IDS`).
const VMM_IDS: std::ops::Range<u32> = 1_900_000_000..1_900_065_536;

/// The account with this uid, if any (by `getent`).
fn nix_user(uid: u32) -> Option<String> {
    let out =
        std::process::Command::new("getent").args(["passwd", &uid.to_string()]).output().expect("getent");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
