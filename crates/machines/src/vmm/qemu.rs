//! The QEMU backend: `-M pc` under software emulation, `-M microvm` with KVM.
//!
//! QEMU is confined beyond what libvirt does by default. It always runs
//! under its seccomp filter (`-sandbox`): no obsolete system calls, no
//! spawning processes (so no `exec:` migration helper and no `-daemonize`,
//! which forks after the filter is on), no scheduler or CPU-affinity
//! changes, and no `set*id` calls.
//!
//! When the daemon is root, QEMU never is: it starts as user and group ids
//! of its own ([`super::VmmIds`], one per VM, held by no other process and
//! named in no account), set before exec. It can open nothing in the
//! machine's directory, so the daemon opens everything QEMU needs and
//! hands it over as inherited descriptors ([`Handed`]): the kernel and
//! initramfs (as `/proc/self/fd/N`), the disk, the console and main logs
//! (`-add-fd`, `/dev/fdset/N`), the agent and control sockets, already
//! bound and listening (`fd=N`), and each tap, attached (`-netdev
//! tap,fd=N`). What it needs later (a snapshot's state file, a new console
//! log after a rotation) comes the same way, on the control socket. An
//! unprivileged daemon's QEMU runs as the daemon's user and opens its files
//! by path.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::qmp::Qmp;
use super::{Backend, Error, VmConfig, VmFiles, VmmIds, detach, log_tail, process_name};

/// The QEMU binary.
pub const BINARY: &str = "qemu-system-x86_64";

/// What QEMU prints on its standard output and error, in the machine's
/// directory.
pub const LOG: &str = "qemu.log";

/// How long QEMU gets to set up its devices and answer on its control
/// socket.
const START_WAIT: Duration = Duration::from_secs(30);

/// The `-add-fd` sets of a confined QEMU: the disk's two descriptors, and
/// the console and main logs (each log's set also carries its chardev id
/// as its `opaque`, so a rotation finds the set it replaces).
const DISK_SET: u32 = 1;
const CONSOLE_SET: u32 = 2;
const MAIN_SET: u32 = 3;
const BASE_SET: u32 = 4;

/// The chardev ids of the two logs, for a rotation's `chardev-change`.
pub const CONSOLE_CHARDEV: &str = "console";
pub const MAIN_CHARDEV: &str = "main";

/// What a confined QEMU gets instead of paths: descriptors the daemon
/// opened, by their numbers in QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    pub kernel: RawFd,
    pub initrd: RawFd,
    /// The console and main logs, opened for appending.
    pub console: RawFd,
    pub main_log: RawFd,
    /// The agent's and QMP's sockets, bound in the machine's directory
    /// and listening.
    pub agent: RawFd,
    pub control: RawFd,
    /// The root disk, read-write and read-only: QEMU reopens it when a
    /// snapshot starts or ends, which it could not do by the file's name.
    pub disk: Option<(RawFd, RawFd)>,
    /// The raw image the disk is an overlay on, read-only: QEMU could not
    /// open it by the name in the overlay's header, and must not, as the
    /// VM can write that header.
    pub base: Option<RawFd>,
    /// One attached tap per NIC, in `VmConfig::nics` order.
    pub taps: Vec<RawFd>,
}

/// The seccomp filter QEMU runs under (see the module doc).
const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The arguments that start `config` on `backend`: with `handed`, on the
/// descriptors it names; without, on the machine directory's paths (see
/// the module doc).
pub fn args(backend: Backend, config: &VmConfig, handed: Option<&Handed>) -> Result<Vec<String>, Error> {
    let files = VmFiles::in_dir(&config.dir);
    let p = |path: &Path| path.display().to_string();
    // virtio devices hang off PCI on `pc`, off MMIO on `microvm`.
    let (machine, accel, cpu, bus) = match backend {
        Backend::QemuTcg => ("pc", "tcg,tb-size=64", "max", "pci"),
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
    // Where QEMU finds each file: an inherited descriptor or a path.
    let proc_fd = |fd: RawFd| format!("/proc/self/fd/{fd}");
    let (kernel, initrd) = match handed {
        Some(h) => (proc_fd(h.kernel), proc_fd(h.initrd)),
        None => (p(&config.kernel), p(&config.initrd)),
    };
    let mut sets: Vec<String> = Vec::new();
    let mut log = |set: u32, fd: Option<RawFd>, chardev: &str, path: &Path| match fd {
        Some(fd) => {
            sets.extend(["-add-fd".into(), format!("fd={fd},set={set},opaque={chardev}")]);
            format!("file,id={chardev},path=/dev/fdset/{set},append=on")
        }
        None => format!("file,id={chardev},path={},append=on", p(path)),
    };
    let console = log(CONSOLE_SET, handed.map(|h| h.console), CONSOLE_CHARDEV, &files.console);
    let main_log = log(MAIN_SET, handed.map(|h| h.main_log), MAIN_CHARDEV, &files.main_log);
    let socket = |fd: Option<RawFd>, path: &Path| match fd {
        Some(fd) => format!("fd={fd},server=on,wait=off"),
        None => format!("path={},server=on,wait=off", p(path)),
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
        kernel,
        "-initrd".into(),
        initrd,
        "-append".into(),
        config.cmdline.clone(),
    ];
    args.append(&mut sets);
    args.extend([
        // The console and the main process's output go to files, which
        // keep them while no daemon runs.
        "-chardev".into(),
        console,
        "-serial".into(),
        format!("chardev:{CONSOLE_CHARDEV}"),
        "-device".into(),
        format!("virtio-serial-{bus}"),
        "-chardev".into(),
        format!("socket,id=agent,{}", socket(handed.map(|h| h.agent), &files.agent)),
        "-device".into(),
        "virtserialport,chardev=agent,name=hearth.agent".into(),
        "-chardev".into(),
        main_log,
        "-device".into(),
        format!("virtserialport,chardev={MAIN_CHARDEV},name={}", hearth_agent::main_process::LOG_PORT),
        "-chardev".into(),
        format!("socket,id=qmp,{}", socket(handed.map(|h| h.control), &files.control)),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-sandbox".into(),
        SANDBOX.into(),
    ]);
    // cache=unsafe: the overlay is scratch space that dies with the
    // machine; the guest's own fsyncs still reach the host page cache.
    match (&config.disk, handed.and_then(|h| h.disk)) {
        (Some(_), Some((rw, ro))) => {
            // By descriptors: the overlay's backing image is a node of its
            // own, the record's image, never the path in the overlay's
            // header, which the VM could have rewritten. Without one, no
            // backing file at all (`backing=`).
            args.extend(["-add-fd".into(), format!("fd={rw},set={DISK_SET},opaque=rw")]);
            args.extend(["-add-fd".into(), format!("fd={ro},set={DISK_SET},opaque=ro")]);
            let nocache = "cache.direct=off,cache.no-flush=on";
            let mut backing = ",backing=".to_owned();
            if let Some(base) = handed.and_then(|h| h.base) {
                args.extend(["-add-fd".into(), format!("fd={base},set={BASE_SET},opaque=base")]);
                args.extend([
                    "-blockdev".into(),
                    format!("driver=file,node-name=base-file,filename=/dev/fdset/{BASE_SET},read-only=on,{nocache}"),
                    "-blockdev".into(),
                    format!("driver=raw,node-name=base,file=base-file,read-only=on,{nocache}"),
                ]);
                backing = ",backing=base".into();
            }
            args.extend([
                "-blockdev".into(),
                format!("driver=file,node-name=root-file,filename=/dev/fdset/{DISK_SET},{nocache}"),
                "-blockdev".into(),
                format!("driver=qcow2,node-name=root,file=root-file{backing},{nocache}"),
                "-device".into(),
                format!("virtio-blk-{bus},drive=root"),
            ]);
        }
        (Some(disk), None) => args.extend([
            "-drive".into(),
            format!("file={},if=none,id=root,format=qcow2,cache=unsafe", p(disk)),
            "-device".into(),
            format!("virtio-blk-{bus},drive=root"),
        ]),
        (None, _) => {}
    }
    for (i, (tap, mac)) in config.nics.iter().enumerate() {
        let netdev = match handed.and_then(|h| h.taps.get(i)) {
            Some(fd) => format!("tap,id=net{i},fd={fd}"),
            None => format!("tap,id=net{i},ifname={tap},script=no,downscript=no"),
        };
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("virtio-net-{bus},netdev=net{i},mac={mac}"),
        ]);
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
    let files = VmFiles::in_dir(&config.dir);
    for stale in [&files.pid, &files.agent, &files.control] {
        let _ = std::fs::remove_file(stale);
    }
    let ids = super::vmm_ids()?;
    // Open until QEMU has its copies, after `spawn`.
    let opened = match ids {
        Some(_) => Some(Opened::for_vm(config)?),
        None => None,
    };
    let handed = opened.as_ref().map(Opened::handed);
    let mut args = args(backend, config, handed.as_ref())?;
    args.extend_from_slice(extra);
    let inherit = opened.as_ref().map(Opened::raw).unwrap_or_default();
    let mut child = spawn(config, &args, inherit, ids.as_ref())?;
    drop(opened);
    let log = config.dir.join(LOG);
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

/// Starts QEMU with `args`, detached, as `ids`, with `inherit` open in it.
fn spawn(
    config: &VmConfig,
    args: &[String],
    inherit: Vec<RawFd>,
    ids: Option<&VmmIds>,
) -> Result<Child, Error> {
    let log = config.dir.join(LOG);
    let output = File::create(&log).map_err(|source| Error::Io { path: log.clone(), source })?;
    let errors = output.try_clone().map_err(|source| Error::Io { path: log.clone(), source })?;
    let mut command = Command::new(BINARY);
    // A confined QEMU could not enter the machine's directory.
    let cwd = if ids.is_some() { Path::new("/") } else { config.dir.as_path() };
    command.args(args).current_dir(cwd).stdin(Stdio::null()).stdout(output).stderr(errors);
    detach(&mut command, inherit, ids);
    command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Missing(BINARY),
        _ => Error::Io { path: BINARY.into(), source: e },
    })
}

/// The files and sockets the daemon opens for a confined QEMU.
struct Opened {
    kernel: File,
    initrd: File,
    console: File,
    main_log: File,
    agent: UnixListener,
    control: UnixListener,
    disk: Option<(File, File)>,
    base: Option<File>,
    taps: Vec<OwnedFd>,
}

impl Opened {
    fn for_vm(config: &VmConfig) -> Result<Opened, Error> {
        let files = VmFiles::in_dir(&config.dir);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        let bind = |path: &Path| UnixListener::bind(path).map_err(io(path));
        let disk = match &config.disk {
            Some(disk) => {
                let rw = std::fs::OpenOptions::new().read(true).write(true).open(disk).map_err(io(disk))?;
                Some((rw, File::open(disk).map_err(io(disk))?))
            }
            None => None,
        };
        let base = match (&config.disk, &config.disk_base) {
            (Some(_), Some(base)) => Some(File::open(base).map_err(io(base))?),
            _ => None,
        };
        let taps = config
            .nics
            .iter()
            .map(|(tap, _)| {
                super::attach_tap(tap, true).map_err(io(Path::new(&format!("/dev/net/tun ({tap})"))))
            })
            .collect::<Result<_, _>>()?;
        Ok(Opened {
            kernel: readable_by_anyone(&config.kernel)?,
            initrd: readable_by_anyone(&config.initrd)?,
            console: super::console::open_log(&files.console, false).map_err(io(&files.console))?,
            main_log: super::console::open_log(&files.main_log, false).map_err(io(&files.main_log))?,
            agent: bind(&files.agent)?,
            control: bind(&files.control)?,
            disk,
            base,
            taps,
        })
    }

    fn handed(&self) -> Handed {
        Handed {
            kernel: self.kernel.as_raw_fd(),
            initrd: self.initrd.as_raw_fd(),
            console: self.console.as_raw_fd(),
            main_log: self.main_log.as_raw_fd(),
            agent: self.agent.as_raw_fd(),
            control: self.control.as_raw_fd(),
            disk: self.disk.as_ref().map(|(rw, ro)| (rw.as_raw_fd(), ro.as_raw_fd())),
            base: self.base.as_ref().map(AsRawFd::as_raw_fd),
            taps: self.taps.iter().map(AsRawFd::as_raw_fd).collect(),
        }
    }

    fn raw(&self) -> Vec<RawFd> {
        let h = self.handed();
        let mut fds = vec![h.kernel, h.initrd, h.console, h.main_log, h.agent, h.control];
        fds.extend(h.disk.into_iter().flat_map(|(rw, ro)| [rw, ro]));
        fds.extend(h.base);
        fds.extend(h.taps);
        fds
    }
}

/// Opens a kernel or initramfs that QEMU reads as `/proc/self/fd/N`: that
/// skips the directories on the way (QEMU may not enter them), but not the
/// file's own mode, which must let anyone read it.
fn readable_by_anyone(path: &Path) -> Result<File, Error> {
    use std::os::unix::fs::PermissionsExt;
    let file = File::open(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    let mode =
        file.metadata().map_err(|source| Error::Io { path: path.to_owned(), source })?.permissions().mode();
    if mode & 0o004 == 0 {
        return Err(Error::Start {
            vmm: "qemu",
            message: format!(
                "{} can be read only by its owner, and QEMU runs as a user of its own; make it readable \
                 with `chmod o+r {}` (a kernel or initramfs holds no secret)",
                path.display(),
                path.display()
            ),
        });
    }
    Ok(file)
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

/// QEMU's run state (`running`, `paused`, `inmigrate`, `prelaunch`,
/// `postmigrate`, ...), as `query-status` says.
pub fn run_state(control: &Path) -> Result<String, Error> {
    let mut qmp = Qmp::connect(control, Duration::from_secs(5))?;
    let status = qmp.execute("query-status", None)?;
    status
        .get("status")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Control(format!("query-status answered {status}, with no status")))
}

/// Lets a paused VM run again.
pub fn resume(control: &Path) -> Result<(), Error> {
    let mut qmp = Qmp::connect(control, Duration::from_secs(5))?;
    qmp.execute("cont", None).map(drop)
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

/// Points the log chardev `chardev` ([`CONSOLE_CHARDEV`], [`MAIN_CHARDEV`])
/// at `file`, a new log after a rotation: QEMU gets the file in an
/// `-add-fd` set of its own and switches the chardev to it
/// (`chardev-change`), and the set it wrote to before is removed, so that
/// QEMU keeps nothing of the old file open.
pub fn reopen_log(control: &Path, chardev: &str, file: &File) -> Result<(), Error> {
    let mut qmp = Qmp::connect(control, Duration::from_secs(5))?;
    let added = qmp.execute_with_fd("add-fd", Some(json!({ "opaque": chardev })), file.as_fd())?;
    let set = added
        .get("fdset-id")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| Error::Control(format!("add-fd answered {added}, with no fdset-id")))?;
    let backend = json!({ "type": "file", "data": { "out": format!("/dev/fdset/{set}"), "append": true } });
    if let Err(error) = qmp.execute("chardev-change", Some(json!({ "id": chardev, "backend": backend }))) {
        let _ = qmp.execute("remove-fd", Some(json!({ "fdset-id": set })));
        return Err(error);
    }
    // QEMU writes to the new file now: whatever fails from here, the
    // rotation happened. The sets this chardev used before (each of their
    // descriptors marked with the chardev's id) hold the old file open
    // until removed.
    let removed = qmp.execute("query-fdsets", None).and_then(|sets| {
        let old: Vec<u64> = sets
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let id = s.get("fdset-id")?.as_u64()?;
                let fds = s.get("fds")?.as_array()?;
                let ours = !fds.is_empty()
                    && fds.iter().all(|fd| fd.get("opaque").and_then(|o| o.as_str()) == Some(chardev));
                (ours && id != set).then_some(id)
            })
            .collect();
        old.into_iter().try_for_each(|id| qmp.execute("remove-fd", Some(json!({ "fdset-id": id }))).map(drop))
    });
    if let Err(error) = removed {
        tracing::warn!(chardev, %error, "QEMU switched to the new log but still holds the old one open.");
    }
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
    use super::super::VMM_IDS;
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            name: "n1".into(),
            dir: "/m/n1".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/m/n1/initrd".into(),
            cmdline: "console=ttyS0 hearth.root=/dev/vda".into(),
            disk: Some("/m/n1/disk.qcow2".into()),
            disk_base: Some("/cache/images/abc/rootfs.ext4".into()),
            cpus: 2,
            memory_mib: 512,
            nics: vec![("ht-n1".into(), "52:54:00:00:00:01".into())],
        }
    }

    fn handed() -> Handed {
        Handed {
            kernel: 10,
            initrd: 11,
            console: 12,
            main_log: 13,
            agent: 14,
            control: 15,
            disk: Some((16, 17)),
            base: Some(19),
            taps: vec![18],
        }
    }

    fn joined(backend: Backend) -> String {
        args(backend, &config(), None).expect("args").join(" ")
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
            assert!(a.contains("-chardev socket,id=agent,path=/m/n1/agent.sock,server=on,wait=off"), "{a}");
            assert!(
                a.contains("-chardev socket,id=qmp,path=/m/n1/control.sock,server=on,wait=off -mon chardev=qmp,mode=control"),
                "{a}"
            );
            assert!(
                a.contains("-chardev file,id=main,path=/m/n1/main.log,append=on -device virtserialport,chardev=main,name=hearth.main"),
                "{a}"
            );
            assert!(
                a.contains(
                    "-chardev file,id=console,path=/m/n1/console.log,append=on -serial chardev:console"
                ),
                "{a}"
            );
            assert!(a.contains("-m 512M -nodefaults"), "{a}");
            assert!(a.contains("file=/m/n1/disk.qcow2,if=none,id=root,format=qcow2"), "{a}");
        }
        assert!(args(Backend::Firecracker, &config(), None).is_err());
    }

    #[test]
    fn qemu_always_runs_under_its_seccomp_filter_with_no_way_to_change_its_ids() {
        for handed in [None, Some(handed())] {
            let a = args(Backend::QemuTcg, &config(), handed.as_ref()).expect("args").join(" ");
            assert!(
                a.contains(
                    "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
                ),
                "{a}"
            );
            assert!(!a.contains("-runas"), "QEMU starts as its own user, never as root: {a}");
        }
    }

    #[test]
    fn a_confined_qemu_names_no_path_only_the_descriptors_it_was_handed() {
        let a = args(Backend::QemuTcg, &config(), Some(&handed())).expect("args").join(" ");
        assert!(a.contains("-kernel /proc/self/fd/10 -initrd /proc/self/fd/11"), "{a}");
        assert!(a.contains("-add-fd fd=12,set=2,opaque=console -add-fd fd=13,set=3,opaque=main"), "{a}");
        assert!(a.contains("-chardev file,id=console,path=/dev/fdset/2,append=on"), "{a}");
        assert!(a.contains("-chardev file,id=main,path=/dev/fdset/3,append=on"), "{a}");
        assert!(a.contains("-chardev socket,id=agent,fd=14,server=on,wait=off"), "{a}");
        assert!(
            a.contains("-chardev socket,id=qmp,fd=15,server=on,wait=off -mon chardev=qmp,mode=control"),
            "{a}"
        );
        assert!(a.contains("-add-fd fd=16,set=1,opaque=rw -add-fd fd=17,set=1,opaque=ro"), "{a}");
        assert!(a.contains("-add-fd fd=19,set=4,opaque=base -blockdev driver=file,node-name=base-file,filename=/dev/fdset/4,read-only=on"), "{a}");
        assert!(a.contains("-blockdev driver=raw,node-name=base,file=base-file,read-only=on"), "{a}");
        assert!(a.contains("-blockdev driver=file,node-name=root-file,filename=/dev/fdset/1,"), "{a}");
        assert!(a.contains("-blockdev driver=qcow2,node-name=root,file=root-file,backing=base,cache.direct=off,cache.no-flush=on -device virtio-blk-pci,drive=root"), "{a}");
        assert!(a.contains("-netdev tap,id=net0,fd=18 "), "{a}");
        // The command line's only paths are the descriptors'.
        assert!(!a.contains("/m/") && !a.contains("/k/") && !a.contains("ifname"), "{a}");
    }

    #[test]
    fn vmm_ids_are_chosen_from_their_range_past_those_taken() {
        let start = VMM_IDS.start;
        let taken: std::collections::HashSet<u32> = [start + 5, start + 6].into();
        assert_eq!(super::super::choose_id(&taken, 5), Some(start + 7));
        assert_eq!(super::super::choose_id(&taken, 4), Some(start + 4));
        // From the end of the range, it wraps to the start.
        let last = VMM_IDS.len() as u64 - 1;
        let end_taken: std::collections::HashSet<u32> = [VMM_IDS.end - 1].into();
        assert_eq!(super::super::choose_id(&end_taken, last), Some(start));
        let all: std::collections::HashSet<u32> = VMM_IDS.collect();
        assert_eq!(super::super::choose_id(&all, 0), None);
    }
}
