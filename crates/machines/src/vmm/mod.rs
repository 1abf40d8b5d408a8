//! Virtual machine monitors: how a machine's VM process is started, found
//! again after a daemon restart, and stopped.
//!
//! Every backend runs the VM as a detached process that outlives the daemon
//! (in a session of its own, reaped by the daemon while it lives), writes
//! its pid to `vm.pid` in the machine's directory, and exposes the guest agent and its control channel as Unix
//! sockets there. The daemon holds no state that the directory and the store
//! do not also hold, so a restarted daemon can adopt running machines.

pub mod console;
pub mod firecracker;
pub mod jailer;
pub mod qemu;
pub mod qmp;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

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
    /// The main process's output, line by line, marked `out| ` or `err| `
    /// (QEMU's `hearth.main` port; on Firecracker it is on the console).
    pub main_log: PathBuf,
}

impl VmFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            pid: dir.join("vm.pid"),
            agent: dir.join("agent.sock"),
            vsock: dir.join(firecracker::VSOCK),
            control: dir.join("control.sock"),
            console: dir.join("console.log"),
            main_log: dir.join("main.log"),
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
    // A jailed Firecracker carries its jail's id (`--id ID`), which is
    // `hearth-NAME` unless the name is too long for the jailer.
    let jailed = jailer::id(name);
    // A zombie has an empty command line; it is not running.
    cmdline.split(|b| *b == 0).any(|arg| {
        arg == wanted.as_bytes()
            || arg == jailed.as_bytes()
            || arg.ends_with(format!(",process={wanted}").as_bytes())
    })
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

/// Puts the child in a session of its own, so that it outlives the
/// daemon and no terminal signal for the daemon reaches it. Each
/// descriptor in `inherit` stays open across exec in the child, under the
/// same number (in the parent, as everywhere else, it stays close-on-exec,
/// so no other child gets it).
#[allow(unsafe_code)]
pub(crate) fn detach(command: &mut Command, inherit: Vec<std::os::fd::RawFd>) {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use std::os::fd::BorrowedFd;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only setsid(2) and fcntl(2), which are async-signal-safe; it reads the
    // captured list and allocates nothing. The caller keeps each inherited
    // descriptor open until `spawn` returns, so each is valid in the child.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            for &fd in &inherit {
                fcntl(BorrowedFd::borrow_raw(fd), FcntlArg::F_SETFD(FdFlag::empty()))
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// The last lines a VMM logged, for error messages.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match &lines[lines.len().saturating_sub(3)..] {
        [] => "it logged nothing".to_owned(),
        tail => tail.join(" | "),
    }
}

/// The user a VMM runs as once it has opened what it needs, when the
/// daemon runs as root: a system user of hearth's own, with no home, no
/// shell and no other rights, so that a guest that breaks out of its VMM
/// holds none of the daemon's privileges. Made at first need (as Docker
/// makes `dockremap`).
pub const VMM_USER: &str = "hearth-vmm";

/// [`VMM_USER`] when this process is root, made if missing; `None` when the
/// daemon itself is unprivileged, so that its VMMs already are.
pub fn vmm_user() -> Result<Option<&'static str>, Error> {
    static MADE: Mutex<bool> = Mutex::new(false);
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if *made || user_exists(VMM_USER) {
        *made = true;
        return Ok(Some(VMM_USER));
    }
    let output = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
        .args(["--shell", "/usr/sbin/nologin", "--comment", "hearth VMMs", VMM_USER])
        .output();
    let problem = match output {
        Ok(out) if out.status.success() || user_exists(VMM_USER) => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Some(e.to_string()),
    };
    match problem {
        None => {
            tracing::info!(user = VMM_USER, "Made the system user that VMMs run as.");
            *made = true;
            Ok(Some(VMM_USER))
        }
        Some(why) => Err(Error::Start {
            vmm: "qemu",
            message: format!(
                "cannot make the system user {VMM_USER} that VMMs run as ({why}); make it with \
                 `useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {VMM_USER}`"
            ),
        }),
    }
}

fn user_exists(name: &str) -> bool {
    nix::unistd::User::from_name(name).is_ok_and(|u| u.is_some())
}
