//! The QEMU backend: `-M pc` under software emulation, `-M microvm` with KVM.
//!
//! QEMU is confined as libvirt confines it. It runs under its seccomp
//! filter (`-sandbox`): no obsolete system calls, no spawning processes
//! (so no `exec:` migration helper and no `-daemonize`, which forks after
//! the filter is on), no scheduler or CPU-affinity changes. When the daemon
//! is root, QEMU opens its devices, taps and files as root and then drops
//! to [`super::VMM_USER`] (`-runas`) before the guest runs: from there it
//! can open nothing in the machine's directory, and the files it needs
//! later (a snapshot's state) are opened by the daemon and handed over on
//! the control socket.
//!
//! The filter's `elevateprivileges=deny` (no `set*id` calls) would kill
//! QEMU 7.2 at its own `-runas` switch, which comes after the filter is
//! installed; so with `-runas` set*id stays allowed, and is harmless: once
//! QEMU's real, effective and saved ids are all the unprivileged user's, it
//! holds no capability that could take them back. An unprivileged daemon's
//! QEMU gets `deny`.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::qmp::Qmp;
use super::{Backend, Error, VmConfig, VmFiles, detach, log_tail, process_name};

/// The QEMU binary.
pub const BINARY: &str = "qemu-system-x86_64";

/// What QEMU prints on its standard output and error, in the machine's
/// directory.
pub const LOG: &str = "qemu.log";

/// How long QEMU gets to set up its devices and answer on its control
/// socket.
const START_WAIT: Duration = Duration::from_secs(30);

/// How QEMU is confined beyond its seccomp filter, which is always on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confinement<'a> {
    /// The user QEMU drops to once its devices are set up (`-runas`).
    pub user: Option<&'a str>,
    /// The root disk as two descriptors QEMU inherits, read-write and
    /// read-only: QEMU reopens its disk when a snapshot starts or ends,
    /// which the dropped user could not do by the file's name, but can
    /// through these (`-add-fd`, `/dev/fdset/1`), as under libvirt.
    pub disk_fds: Option<(RawFd, RawFd)>,
}

/// The seccomp filter QEMU runs under; see the module doc for
/// `elevateprivileges`.
fn sandbox(user: Option<&str>) -> String {
    let elevate = if user.is_some() { "allow" } else { "deny" };
    format!("on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny")
}

/// The arguments that start `config` on `backend`, with its agent socket,
/// control socket and console log in the machine dir, confined as
/// `confined` says (see the module doc).
pub fn args(backend: Backend, config: &VmConfig, confined: &Confinement<'_>) -> Result<Vec<String>, Error> {
    let files = VmFiles::in_dir(&config.dir);
    let p = |path: &Path| path.display().to_string();
    // virtio devices hang off PCI on `pc`, off MMIO on `microvm`.
    let (machine, accel, cpu, bus) = match backend {
        Backend::QemuTcg => ("pc", "tcg", "max", "pci"),
        // ACPI describes the virtio-mmio devices to the guest: Debian's
        // kernel is built without VIRTIO_MMIO_CMDLINE_DEVICES, so with
        // acpi=off (QEMU then lists them on the command line) it finds none
        // and the agent never sees its port.
        Backend::QemuKvm => {
            ("microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=on", "kvm", "host", "device")
        }
        Backend::Firecracker => {
            return Err(Error::Unsupported { backend, reason: "not a QEMU backend".to_owned() });
        }
    };
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("{},process={}", process_name(&config.name), process_name(&config.name)),
        "-M".into(),
        machine.into(),
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        config.cpus.to_string(),
        "-m".into(),
        format!("{}M", config.memory_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        // A guest reboot or power-off ends the process; hearth decides what next.
        "-no-reboot".into(),
        "-kernel".into(),
        p(&config.kernel),
        "-initrd".into(),
        p(&config.initrd),
        "-append".into(),
        config.cmdline.clone(),
        "-chardev".into(),
        format!("file,id=console,path={},append=on", p(&files.console)),
        "-serial".into(),
        "chardev:console".into(),
        "-device".into(),
        format!("virtio-serial-{bus}"),
        "-chardev".into(),
        format!("socket,id=agent,path={},server=on,wait=off", p(&files.agent)),
        "-device".into(),
        "virtserialport,chardev=agent,name=hearth.agent".into(),
        // The main process's output: a file QEMU opens before it drops its
        // privileges, as it does the console, so it lands on the host even
        // while no daemon runs.
        "-chardev".into(),
        format!("file,id=main,path={},append=on", p(&files.main_log)),
        "-device".into(),
        format!("virtserialport,chardev=main,name={}", hearth_agent::main_process::LOG_PORT),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p(&files.control)),
        "-sandbox".into(),
        sandbox(confined.user),
    ];
    if let Some(user) = confined.user {
        args.extend(["-runas".into(), user.to_owned()]);
    }
    if let Some(disk) = &config.disk {
        let file = match confined.disk_fds {
            Some((rw, ro)) => {
                args.extend(["-add-fd".into(), format!("fd={rw},set=1,opaque=rw")]);
                args.extend(["-add-fd".into(), format!("fd={ro},set=1,opaque=ro")]);
                "/dev/fdset/1".to_owned()
            }
            None => p(disk),
        };
        // cache=unsafe: the overlay is scratch space that dies with the
        // machine; the guest's own fsyncs still reach the host page cache.
        args.extend([
            "-drive".into(),
            format!("file={file},if=none,id=root,format=qcow2,cache=unsafe"),
            "-device".into(),
            format!("virtio-blk-{bus},drive=root"),
        ]);
    }
    for (i, (tap, mac)) in config.nics.iter().enumerate() {
        args.extend([
            "-netdev".into(),
            format!("tap,id=net{i},ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-{bus},netdev=net{i},mac={mac}"),
        ]);
    }
    if backend == Backend::QemuTcg {
        // Translated code cache: the default is a quarter of guest RAM, far
        // more than a small guest needs; smaller keeps idle machines light.
        args.splice(5..6, ["tcg,tb-size=64".to_owned()]);
    }
    Ok(args)
}

/// Starts the VM and returns once QEMU has set up its devices and answers
/// on its control socket, or with QEMU's own message.
pub fn launch(backend: Backend, config: &VmConfig) -> Result<(), Error> {
    launch_with(backend, config, &[])
}

/// Starts the VM paused, waiting for its state from [`load_state`].
pub fn launch_incoming(backend: Backend, config: &VmConfig) -> Result<(), Error> {
    launch_with(backend, config, &["-incoming".into(), "defer".into(), "-S".into()])
}

fn launch_with(backend: Backend, config: &VmConfig, extra: &[String]) -> Result<(), Error> {
    let user = super::vmm_user()?;
    // Open until QEMU has its copies, after `spawn`.
    let disk = match (user, &config.disk) {
        (Some(_), Some(disk)) => Some(open_disk(disk)?),
        _ => None,
    };
    let disk_fds = disk.as_ref().map(|(rw, ro)| (rw.as_raw_fd(), ro.as_raw_fd()));
    let mut args = args(backend, config, &Confinement { user, disk_fds })?;
    args.extend_from_slice(extra);
    let files = VmFiles::in_dir(&config.dir);
    for stale in [&files.pid, &files.agent, &files.control] {
        let _ = std::fs::remove_file(stale);
    }
    let log = config.dir.join(LOG);
    let output = std::fs::File::create(&log).map_err(|source| Error::Io { path: log.clone(), source })?;
    let errors = output.try_clone().map_err(|source| Error::Io { path: log.clone(), source })?;
    let mut command = Command::new(BINARY);
    command.args(&args).current_dir(&config.dir).stdin(Stdio::null()).stdout(output).stderr(errors);
    detach(&mut command, disk_fds.map(|(rw, ro)| vec![rw, ro]).unwrap_or_default());
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Missing(BINARY),
        _ => Error::Io { path: BINARY.into(), source: e },
    })?;
    drop(disk);
    let ready = std::fs::write(&files.pid, format!("{}\n", child.id()))
        .map_err(|source| Error::Io { path: files.pid.clone(), source })
        .and_then(|()| wait_ready(&mut child, &files.control, &log));
    if let Err(error) = ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(error);
    }
    // Reaped by a thread of its own when it ends (while this daemon lives;
    // after, by init).
    let reaper = std::thread::Builder::new().name("qemu-reaper".into()).spawn(move || {
        let _ = child.wait();
    });
    if let Err(error) = reaper {
        // Unreaped, it stays a zombie once it ends, which `is_vm_process`
        // already counts as gone.
        tracing::warn!(error = %error, "Cannot start a thread to reap QEMU.");
    }
    Ok(())
}

/// The root disk opened read-write and read-only, for [`Confinement`].
fn open_disk(disk: &Path) -> Result<(File, File), Error> {
    let io = |source| Error::Io { path: disk.to_owned(), source };
    let rw = std::fs::OpenOptions::new().read(true).write(true).open(disk).map_err(io)?;
    let ro = File::open(disk).map_err(io)?;
    Ok((rw, ro))
}

/// Waits until QEMU answers on its control socket, which it does once its
/// devices are set up; fails with its log if it exits first.
fn wait_ready(child: &mut Child, control: &Path, log: &Path) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let said = log_tail(log);
            return Err(Error::Start { vmm: "qemu", message: format!("it exited ({status}): {said}") });
        }
        if control.exists()
            && let Ok(mut qmp) = Qmp::connect(control, Duration::from_secs(5))
            && qmp.execute("query-status", None).is_ok()
        {
            return Ok(());
        }
        if started.elapsed() > START_WAIT {
            return Err(Error::Start {
                vmm: "qemu",
                message: format!(
                    "it did not answer on its control socket within {}s: {}",
                    START_WAIT.as_secs(),
                    log_tail(log)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long saving or loading a VM's state may take.
const MIGRATION_LIMIT: Duration = Duration::from_secs(120);

/// Pauses the VM and writes its device and memory state to `state`. The VM
/// stays paused; the caller decides whether to quit or continue it. The
/// daemon opens the file and hands it to QEMU, which may open nothing.
pub fn save_state(control: &Path, state: &Path) -> Result<(), Error> {
    let file = std::fs::File::create(state).map_err(|source| Error::Io { path: state.to_owned(), source })?;
    let mut qmp = Qmp::connect(control, Duration::from_secs(10))?;
    qmp.execute("stop", None)?;
    // The default bandwidth cap (32 MiB/s) is for live migration over a
    // network; a paused VM to a local file can go as fast as the disk.
    qmp.execute("migrate-set-parameters", Some(json!({ "max-bandwidth": 8u64 << 30 })))?;
    qmp.pass_fd("state", file.as_fd())?;
    qmp.execute("migrate", Some(json!({ "uri": "fd:state" })))?;
    wait_for_migration(&mut qmp)?;
    file.sync_all().map_err(|source| Error::Io { path: state.to_owned(), source })
}

/// Feeds `state` to a VM started with [`launch_incoming`] and resumes it.
pub fn load_state(control: &Path, state: &Path) -> Result<(), Error> {
    let file = std::fs::File::open(state).map_err(|source| Error::Io { path: state.to_owned(), source })?;
    let mut qmp = Qmp::connect(control, Duration::from_secs(10))?;
    qmp.pass_fd("state", file.as_fd())?;
    qmp.execute("migrate-incoming", Some(json!({ "uri": "fd:state" })))?;
    wait_for_migration(&mut qmp)?;
    qmp.execute("cont", None)?;
    Ok(())
}

/// Asks QEMU to exit now.
pub fn quit(control: &Path) -> Result<(), Error> {
    let mut qmp = Qmp::connect(control, Duration::from_secs(5))?;
    // QEMU may close the socket before it answers.
    let _ = qmp.execute("quit", None);
    Ok(())
}

fn wait_for_migration(qmp: &mut Qmp) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let info = qmp.execute("query-migrate", None)?;
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let why = info.get("error-desc").and_then(|d| d.as_str()).unwrap_or("no reason given");
                return Err(Error::Control(format!("saving or loading the VM state failed: {why}")));
            }
            _ if started.elapsed() > MIGRATION_LIMIT => {
                return Err(Error::Control(format!(
                    "saving or loading the VM state took over {}s",
                    MIGRATION_LIMIT.as_secs()
                )));
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            name: "n1".into(),
            dir: "/m/n1".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/m/n1/initrd".into(),
            cmdline: "console=ttyS0 hearth.root=/dev/vda".into(),
            disk: Some("/m/n1/disk.qcow2".into()),
            cpus: 2,
            memory_mib: 512,
            nics: vec![("ht-n1".into(), "52:54:00:00:00:01".into())],
        }
    }

    fn joined(backend: Backend) -> String {
        let confined = Confinement { user: Some("hearth-vmm"), disk_fds: None };
        args(backend, &config(), &confined).expect("args").join(" ")
    }

    #[test]
    fn tcg_uses_the_pc_machine_and_pci_devices() {
        let a = joined(Backend::QemuTcg);
        assert!(a.contains("-M pc -accel tcg,tb-size=64 -cpu max"), "{a}");
        assert!(a.contains("virtio-blk-pci,drive=root"), "{a}");
        assert!(a.contains("virtio-serial-pci"), "{a}");
        assert!(a.contains("-netdev tap,id=net0,ifname=ht-n1,script=no,downscript=no"), "{a}");
        assert!(a.contains("virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01"), "{a}");
        assert!(!a.contains("microvm"), "{a}");
    }

    #[test]
    fn kvm_uses_microvm_and_mmio_devices() {
        let a = joined(Backend::QemuKvm);
        assert!(a.contains("-M microvm,acpi=on"), "{a}");
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
        assert!(a.contains("virtio-blk-device,drive=root"), "{a}");
    }

    #[test]
    fn every_backend_names_its_process_and_detaches() {
        for backend in [Backend::QemuTcg, Backend::QemuKvm] {
            let a = joined(backend);
            assert!(a.contains("-name hearth-n1,process=hearth-n1"), "{a}");
            assert!(!a.contains("-daemonize"), "QEMU may not fork under its filter: {a}");
            assert!(a.contains("path=/m/n1/agent.sock,server=on,wait=off"), "{a}");
            assert!(
                a.contains("-chardev file,id=main,path=/m/n1/main.log,append=on -device virtserialport,chardev=main,name=hearth.main"),
                "{a}"
            );
            assert!(a.contains("-m 512M -nodefaults"), "{a}");
            assert!(a.contains("file=/m/n1/disk.qcow2,if=none,id=root,format=qcow2"), "{a}");
        }
        assert!(args(Backend::Firecracker, &config(), &Confinement::default()).is_err());
    }

    #[test]
    fn qemu_runs_under_its_seccomp_filter_and_drops_to_the_vmm_user() {
        let a = joined(Backend::QemuTcg);
        assert!(
            a.contains("-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny -runas hearth-vmm"),
            "{a}"
        );
        let unprivileged =
            args(Backend::QemuTcg, &config(), &Confinement::default()).expect("args").join(" ");
        assert!(unprivileged.contains("elevateprivileges=deny,spawn=deny"), "{unprivileged}");
        assert!(!unprivileged.contains("-runas"), "{unprivileged}");
    }

    #[test]
    fn a_dropped_qemu_reaches_its_disk_through_inherited_descriptors() {
        let confined = Confinement { user: Some("hearth-vmm"), disk_fds: Some((17, 18)) };
        let a = args(Backend::QemuTcg, &config(), &confined).expect("args").join(" ");
        assert!(a.contains("-add-fd fd=17,set=1,opaque=rw -add-fd fd=18,set=1,opaque=ro"), "{a}");
        assert!(a.contains("-drive file=/dev/fdset/1,if=none,id=root,format=qcow2"), "{a}");
        assert!(!a.contains("disk.qcow2"), "{a}");
    }
}
