//! Virtual machine monitors: how a machine's VM process is started, found
//! again after a daemon restart, and stopped.
//!
//! Every backend runs the VM as a detached process that outlives the daemon
//! (QEMU's `-daemonize`; Firecracker in a session of its own), writes its pid to `vm.pid` in the machine's
//! directory, and exposes the guest agent and its control channel as Unix
//! sockets there. The daemon holds no state that the directory and the store
//! do not also hold, so a restarted daemon can adopt running machines.

pub mod console;
pub mod firecracker;
pub mod qemu;
pub mod qmp;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which VMM runs a machine, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// QEMU with KVM: the `microvm` machine type, virtio-mmio devices.
    QemuKvm,
    /// QEMU in software emulation: the `pc` machine type (microvm needs a
    /// PIT that TCG does not give it and hangs), virtio-pci devices.
    QemuTcg,
    /// Firecracker (needs KVM).
    Firecracker,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::QemuKvm => "qemu-kvm",
            Backend::QemuTcg => "qemu-tcg",
            Backend::Firecracker => "firecracker",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu-kvm" => Ok(Backend::QemuKvm),
            "qemu-tcg" => Ok(Backend::QemuTcg),
            "firecracker" => Ok(Backend::Firecracker),
            other => Err(format!("unknown backend {other:?}: use qemu-kvm, qemu-tcg or firecracker")),
        }
    }
}

/// Everything needed to start one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The machine's name; the VM process is named `hearth-NAME`.
    pub name: String,
    /// The machine's directory: sockets, pid file, console log live here.
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// The root disk (a qcow2 overlay); none for a guest that lives in its initramfs.
    pub disk: Option<PathBuf>,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Network interfaces: (host tap, guest MAC).
    pub nics: Vec<(String, String)>,
}

/// The files a running VM keeps in its machine directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    pub pid: PathBuf,
    /// The guest agent's socket (QEMU's virtio-serial port).
    pub agent: PathBuf,
    /// Firecracker's vsock socket: the agent, after a `CONNECT` handshake.
    pub vsock: PathBuf,
    /// QEMU's QMP control socket, or Firecracker's API socket.
    pub control: PathBuf,
    /// Everything the guest printed on its serial console.
    pub console: PathBuf,
}

impl VmFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            pid: dir.join("vm.pid"),
            agent: dir.join("agent.sock"),
            vsock: dir.join(firecracker::VSOCK),
            control: dir.join("control.sock"),
            console: dir.join("console.log"),
        }
    }
}

/// What can go wrong with a VM process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VMM refused to start; its own words follow.
    #[error("{vmm} did not start: {message}")]
    Start { vmm: &'static str, message: String },

    /// The VMM binary is missing.
    #[error("{0} is not installed")]
    Missing(&'static str),

    /// The chosen backend cannot work on this host.
    #[error("backend {backend} cannot run here: {reason}")]
    Unsupported { backend: Backend, reason: String },

    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The control channel misbehaved.
    #[error("the VMM's control socket failed: {0}")]
    Control(String),
}

/// Starts the VM for `config` on `backend`, detached; `firecracker` is the
/// binary to run where the backend is Firecracker.
pub fn launch(backend: Backend, firecracker: &Path, config: &VmConfig) -> Result<(), Error> {
    match backend {
        Backend::Firecracker => firecracker::launch(firecracker, config),
        Backend::QemuKvm | Backend::QemuTcg => qemu::launch(backend, config),
    }
}

/// The pid in `vm.pid`, if that process is alive and is this machine's VMM.
pub fn running_pid(files: &VmFiles, name: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(&files.pid).ok()?.trim().parse().ok()?;
    is_vm_process(pid, name).then_some(pid)
}

/// Whether `pid` is alive and its command line names `hearth-NAME` (so a
/// recycled pid is never mistaken for the VM).
pub fn is_vm_process(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let wanted = process_name(name);
    // A zombie has an empty command line; it is not running.
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == wanted.as_bytes() || arg.ends_with(format!(",process={wanted}").as_bytes()))
}

/// The name the VM process carries, for `ps` and for adoption.
pub fn process_name(name: &str) -> String {
    format!("hearth-{name}")
}

/// Sends `signal` to the VM process; false if it is already gone.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal).is_ok()
}
