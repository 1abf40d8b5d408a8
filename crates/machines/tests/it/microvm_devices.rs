//! The qemu-kvm machine model (`-M microvm`, virtio-mmio devices) finds its
//! devices with Debian's cloud kernel: the guest agent opens its
//! virtio-serial port and says it is ready.
//!
//! KVM does not work on the build machines, so the machine boots with the
//! exact arguments hearth gives QEMU for `qemu-kvm`, but with the
//! accelerator swapped for software emulation and the kernel told its TSC
//! frequency (microvm has no timer a TCG guest can calibrate against; with
//! KVM the guest uses kvmclock). The devices, their discovery and the agent
//! are the same. This test caught `acpi=off`, under which Debian's kernel
//! (built without `VIRTIO_MMIO_CMDLINE_DEVICES`) saw no device at all.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth_machines::vmm::{Backend, VmConfig, VmFiles, qemu};
use hearth_machines::{guest, kernel};

/// The kernel cache the other machine tests share
/// ([`hearth_testkit::test_cache_dir`]), so the kernel package is fetched once.
fn cache() -> PathBuf {
    hearth_testkit::test_cache_dir()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/hearth-test-cache"))
}

#[test]
fn the_kvm_machine_model_gives_the_agent_its_port() {
    let cache = cache();
    let kernel = kernel::debian_cloud_kernel(&cache.join("kernels")).expect("Debian's cloud kernel");
    let agent = guest::find_agent().expect("the guest agent: run `make agent`");
    let initrd = guest::initramfs(&cache.join("initramfs"), &kernel, &agent).expect("the initramfs");
    let dir = tempfile::tempdir().unwrap();
    let config = VmConfig {
        name: format!("microvm-test-{}", std::process::id()),
        dir: dir.path().to_owned(),
        kernel: kernel.vmlinuz.clone(),
        initrd,
        cmdline:
            "console=ttyS0 panic=-1 hearth.hostname=microvm tsc_early_khz=2000000 tsc=reliable no_timer_check"
                .into(),
        disk: None,
        disk_base: None,
        cpus: 1,
        memory_mib: 256,
        nics: vec![],
    };
    let mut args = qemu::args(Backend::QemuKvm, &config, None).unwrap();
    let at = |flag: &str| args.iter().position(|a| a == flag).unwrap() + 1;
    let (accel, cpu) = (at("-accel"), at("-cpu"));
    assert_eq!((args[accel].as_str(), args[cpu].as_str()), ("kvm", "host"));
    args[accel] = "tcg".into();
    args[cpu] = "max".into();
    // hearth's arguments keep QEMU in the foreground: a child to kill after.
    let mut qemu = std::process::Command::new("qemu-system-x86_64")
        .args(&args)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("run qemu-system-x86_64");

    let files = VmFiles::in_dir(dir.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    let console = loop {
        let console = std::fs::read_to_string(&files.console).unwrap_or_default();
        let exited = qemu.try_wait().expect("wait for QEMU");
        if console.contains("hearth-agent: ready") || exited.is_some() || Instant::now() > deadline {
            break console;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(
        console.contains("hearth-agent: ready"),
        "the agent did not get its port on microvm: {}",
        console.lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
}
