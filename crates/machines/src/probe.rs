//! What this host can run guests with.
//!
//! The probe looks for the pieces a backend needs: `/dev/kvm` and whether this
//! process may open it, and the VMM binaries on `PATH`. Whether KVM actually
//! *works* (nested KVM is often present but broken) can only be learnt by
//! booting a tiny guest with a deadline; until that probe runs, `usable` stays
//! `None` and nothing claims more than was checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// The result of probing the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport {
    pub kvm: KvmReport,
    /// `qemu-system-x86_64`, if found.
    pub qemu: Option<Tool>,
    /// `firecracker`, if found.
    pub firecracker: Option<Tool>,
}

/// What is known about KVM on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmReport {
    /// `/dev/kvm` exists.
    pub present: bool,
    /// This process can open `/dev/kvm` read-write.
    pub accessible: bool,
    /// A test guest ran to completion under KVM within its deadline.
    /// `None` until such a boot probe has run.
    pub usable: Option<bool>,
    /// A sentence a person can act on.
    pub detail: String,
}

/// An executable found on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tool {
    pub path: PathBuf,
    /// The first line the tool printed for `--version`, if any.
    pub version: Option<String>,
}

/// Probes the host. Cheap: no guest is booted.
pub fn probe_host() -> HostReport {
    HostReport {
        kvm: probe_kvm(Path::new("/dev/kvm")),
        qemu: find_tool("qemu-system-x86_64"),
        firecracker: find_tool("firecracker"),
    }
}

/// Why Firecracker cannot run here, if it cannot: it needs its binary, 1.8
/// or later (older ones hand their devices to the kernel on its command
/// line, which Debian's kernel does not read), and KVM proven to work by
/// the boot probe.
pub fn firecracker_problem(host: &HostReport) -> Option<String> {
    if let Some(problem) = firecracker_binary_problem(host) {
        return Some(problem);
    }
    match host.kvm.usable {
        Some(true) => None,
        Some(false) => Some(format!("Firecracker needs KVM, which is not usable here: {}", host.kvm.detail)),
        None => {
            Some(format!("Firecracker needs KVM, which has not been proven to work yet: {}", host.kvm.detail))
        }
    }
}

/// The VMM that can run the KVM boot probe: QEMU where it is installed,
/// else a Firecracker new enough to boot hearth's guest, so that a host
/// with only Firecracker still learns that KVM works. `None` where KVM
/// cannot be opened or neither VMM is there.
pub fn kvm_probe_backend(host: &HostReport) -> Option<crate::vmm::Backend> {
    use crate::vmm::Backend;
    if !host.kvm.accessible {
        None
    } else if host.qemu.is_some() {
        Some(Backend::QemuKvm)
    } else if firecracker_binary_problem(host).is_none() {
        Some(Backend::Firecracker)
    } else {
        None
    }
}

/// Why the Firecracker binary will not do, KVM aside.
fn firecracker_binary_problem(host: &HostReport) -> Option<String> {
    use crate::vmm::firecracker::{MIN_VERSION, parse_version};
    let Some(tool) = &host.firecracker else {
        return Some(
            "firecracker is not installed: put a firecracker binary (1.8 or later) on PATH, or use qemu-kvm"
                .into(),
        );
    };
    if let Some(line) = &tool.version
        && let Some(version) = parse_version(line)
        && version < MIN_VERSION
    {
        return Some(format!(
            "{} is {line:?}, older than 1.8, which is the first to describe its devices to Debian's kernel: install a newer one, or use qemu-kvm",
            tool.path.display()
        ));
    }
    None
}

fn probe_kvm(dev: &Path) -> KvmReport {
    if !dev.exists() {
        return KvmReport {
            present: false,
            accessible: false,
            usable: Some(false),
            detail: format!(
                "{} does not exist: enable virtualization in the firmware or load the kvm module; guests will use software emulation",
                dev.display()
            ),
        };
    }
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => KvmReport {
            present: true,
            accessible: true,
            usable: None,
            detail: format!(
                "{} is present and accessible; a boot probe decides whether it really works",
                dev.display()
            ),
        },
        Err(error) => KvmReport {
            present: true,
            accessible: false,
            usable: Some(false),
            detail: format!(
                "{} exists but cannot be opened ({error}): add your user to the `kvm` group; guests will use software emulation",
                dev.display()
            ),
        },
    }
}

/// Finds `name` on `PATH` and asks it for its version.
pub fn find_tool(name: &str) -> Option<Tool> {
    let path = which(name, std::env::var_os("PATH")?.as_os_str())?;
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout).lines().next().map(|line| line.trim().to_owned())
        })
        .filter(|line| !line.is_empty());
    Some(Tool { path, version })
}

fn which(name: &str, path_var: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var).map(|dir| dir.join(name)).find(|candidate| {
        candidate.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kvm_device_is_reported_unusable_with_a_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = probe_kvm(&dir.path().join("kvm"));
        assert!(!report.present);
        assert_eq!(report.usable, Some(false));
        assert!(report.detail.contains("software emulation"));
    }

    #[test]
    fn firecracker_needs_its_binary_a_new_enough_version_and_working_kvm() {
        let tool =
            |version: &str| Tool { path: "/usr/bin/firecracker".into(), version: Some(version.into()) };
        let kvm = |usable| KvmReport {
            present: true,
            accessible: true,
            usable,
            detail: "the probe said so".into(),
        };
        let host = |firecracker, usable| HostReport { kvm: kvm(usable), qemu: None, firecracker };
        let problem = |h: &HostReport| firecracker_problem(h).unwrap_or_default();

        assert_eq!(firecracker_problem(&host(Some(tool("Firecracker v1.10.1")), Some(true))), None);
        assert!(problem(&host(None, Some(true))).contains("not installed"));
        assert!(problem(&host(Some(tool("Firecracker v1.7.0")), Some(true))).contains("older than 1.8"));
        let unusable = problem(&host(Some(tool("Firecracker v1.10.1")), Some(false)));
        assert!(unusable.contains("KVM, which is not usable here: the probe said so"), "{unusable}");
        assert!(problem(&host(Some(tool("Firecracker v1.10.1")), None)).contains("not been proven"));
        // A version line it cannot read does not stop it.
        assert_eq!(firecracker_problem(&host(Some(tool("custom build")), Some(true))), None);
    }

    #[test]
    fn the_kvm_probe_runs_on_qemu_else_on_a_new_enough_firecracker() {
        use crate::vmm::Backend;
        let tool = |version: &str| Tool { path: "/usr/bin/vmm".into(), version: Some(version.into()) };
        let host = |accessible, qemu: Option<Tool>, firecracker: Option<Tool>| HostReport {
            kvm: KvmReport { present: true, accessible, usable: None, detail: String::new() },
            qemu,
            firecracker,
        };
        let qemu = || Some(tool("QEMU emulator version 7.2.19"));
        let firecracker = |v: &str| Some(tool(v));

        assert_eq!(
            kvm_probe_backend(&host(true, qemu(), firecracker("Firecracker v1.10.1"))),
            Some(Backend::QemuKvm)
        );
        assert_eq!(
            kvm_probe_backend(&host(true, None, firecracker("Firecracker v1.10.1"))),
            Some(Backend::Firecracker)
        );
        assert_eq!(kvm_probe_backend(&host(true, None, firecracker("Firecracker v1.7.0"))), None);
        assert_eq!(kvm_probe_backend(&host(true, None, None)), None);
        assert_eq!(kvm_probe_backend(&host(false, qemu(), firecracker("Firecracker v1.10.1"))), None);
    }

    #[test]
    fn which_finds_only_executable_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("vmm");
        std::fs::write(&exe, "#!/bin/sh\n").expect("write");
        assert_eq!(which("vmm", dir.path().as_os_str()), None);
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(which("vmm", dir.path().as_os_str()), Some(exe));
        assert_eq!(which("absent", dir.path().as_os_str()), None);
    }
}
