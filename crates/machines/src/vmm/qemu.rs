//! The QEMU backend: `-M pc` under software emulation, `-M microvm` with KVM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::qmp::Qmp;
use super::{Backend, Error, VmConfig, VmFiles, process_name};

/// The QEMU binary.
pub const BINARY: &str = "qemu-system-x86_64";

/// The arguments that start `config` on `backend`, detached, with its pid
/// file, agent socket, control socket and console log in the machine dir.
pub fn args(backend: Backend, config: &VmConfig) -> Result<Vec<String>, Error> {
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
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p(&files.control)),
        "-pidfile".into(),
        p(&files.pid),
        "-daemonize".into(),
    ];
    if let Some(disk) = &config.disk {
        // cache=unsafe: the overlay is scratch space that dies with the
        // machine; the guest's own fsyncs still reach the host page cache.
        args.extend([
            "-drive".into(),
            format!("file={},if=none,id=root,format=qcow2,cache=unsafe", p(disk)),
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

/// Starts the VM and returns once QEMU has daemonized (devices set up, pid
/// file written) or failed with its own message.
pub fn launch(backend: Backend, config: &VmConfig) -> Result<(), Error> {
    launch_with(backend, config, &[])
}

/// Starts the VM paused, waiting for its state from [`load_state`].
pub fn launch_incoming(backend: Backend, config: &VmConfig) -> Result<(), Error> {
    launch_with(backend, config, &["-incoming".into(), "defer".into(), "-S".into()])
}

fn launch_with(backend: Backend, config: &VmConfig, extra: &[String]) -> Result<(), Error> {
    let mut args = args(backend, config)?;
    args.extend_from_slice(extra);
    let files = VmFiles::in_dir(&config.dir);
    for stale in [&files.pid, &files.agent, &files.control] {
        let _ = std::fs::remove_file(stale);
    }
    let output =
        Command::new(BINARY).args(&args).current_dir(&config.dir).stdin(Stdio::null()).output().map_err(
            |e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::Missing(BINARY),
                _ => Error::Io { path: BINARY.into(), source: e },
            },
        )?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(Error::Start {
            vmm: "qemu",
            message: if message.is_empty() { output.status.to_string() } else { message },
        });
    }
    Ok(())
}

/// How long saving or loading a VM's state may take.
const MIGRATION_LIMIT: Duration = Duration::from_secs(120);

/// Pauses the VM and writes its device and memory state to `state`. The VM
/// stays paused; the caller decides whether to quit or continue it.
pub fn save_state(control: &Path, state: &Path) -> Result<(), Error> {
    let mut qmp = Qmp::connect(control, Duration::from_secs(10))?;
    qmp.execute("stop", None)?;
    // The default bandwidth cap (32 MiB/s) is for live migration over a
    // network; a paused VM to a local file can go as fast as the disk.
    qmp.execute("migrate-set-parameters", Some(json!({ "max-bandwidth": 8u64 << 30 })))?;
    let uri = format!("exec:cat > {}", shell_quote(&state.display().to_string()));
    qmp.execute("migrate", Some(json!({ "uri": uri })))?;
    wait_for_migration(&mut qmp)
}

/// Feeds `state` to a VM started with [`launch_incoming`] and resumes it.
pub fn load_state(control: &Path, state: &Path) -> Result<(), Error> {
    let mut qmp = Qmp::connect(control, Duration::from_secs(10))?;
    let uri = format!("exec:cat {}", shell_quote(&state.display().to_string()));
    qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))?;
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

/// Quotes a path for the `sh -c` QEMU runs an `exec:` migration URI with.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
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
        args(backend, &config()).expect("args").join(" ")
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
    fn migration_paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/a b/state"), "'/a b/state'");
        assert_eq!(shell_quote("/it's"), r"'/it'\''s'");
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
            assert!(a.contains("-pidfile /m/n1/vm.pid -daemonize"), "{a}");
            assert!(a.contains("path=/m/n1/agent.sock,server=on,wait=off"), "{a}");
            assert!(a.contains("-m 512M -nodefaults"), "{a}");
            assert!(a.contains("file=/m/n1/disk.qcow2,if=none,id=root,format=qcow2"), "{a}");
        }
        assert!(args(Backend::Firecracker, &config()).is_err());
    }
}
