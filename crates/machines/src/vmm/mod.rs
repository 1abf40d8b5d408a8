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
    /// The image the overlay is on (its raw ext4 in the image store), from
    /// the machine's record: a confined QEMU is handed this file, never the
    /// one the overlay's header names, which the VM could have rewritten.
    pub disk_base: Option<PathBuf>,
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
/// so no other child gets it). With `ids`, the child takes them (groups,
/// then group, then user: real, effective and saved) before it execs.
#[allow(unsafe_code)]
pub(crate) fn detach(command: &mut Command, inherit: Vec<std::os::fd::RawFd>, ids: Option<&VmmIds>) {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    use std::os::fd::BorrowedFd;
    let ids = ids.map(|ids| {
        let groups: Vec<Gid> = ids.groups.iter().copied().map(Gid::from_raw).collect();
        (Uid::from_raw(ids.uid), Gid::from_raw(ids.gid), groups)
    });
    // SAFETY: the closure runs in the forked child before exec and calls
    // only setsid(2), close_range(2), fcntl(2), prctl(2), setgroups(2),
    // setresgid(2) and setresuid(2), which are async-signal-safe; it reads
    // what it captured and allocates nothing. The caller keeps each
    // inherited descriptor open until `spawn` returns, so each is valid in
    // the child.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if ids.is_some() {
                // Nothing but what is handed over reaches an unprivileged
                // VMM, even a descriptor the daemon itself inherited
                // without close-on-exec.
                let closed = nix::libc::syscall(
                    nix::libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    nix::libc::CLOSE_RANGE_CLOEXEC,
                );
                if closed != 0 {
                    let error = std::io::Error::last_os_error();
                    // Kernels before 5.11 lack the flag; then only the
                    // close-on-exec descriptors are closed.
                    let unsupported = [nix::libc::ENOSYS, nix::libc::EINVAL];
                    if !error.raw_os_error().is_some_and(|e| unsupported.contains(&e)) {
                        return Err(error);
                    }
                }
                if nix::libc::prctl(nix::libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for &fd in &inherit {
                fcntl(BorrowedFd::borrow_raw(fd), FcntlArg::F_SETFD(FdFlag::empty()))
                    .map_err(std::io::Error::from)?;
            }
            if let Some((uid, gid, groups)) = &ids {
                setgroups(groups).map_err(std::io::Error::from)?;
                setresgid(*gid, *gid, *gid).map_err(std::io::Error::from)?;
                setresuid(*uid, *uid, *uid).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Attaches to the host tap `name` (persistent, made by the network side)
/// on a new `/dev/net/tun` descriptor, with no packet information and,
/// with `vnet_hdr`, virtio-net headers (as QEMU attaches with `ifname=`).
/// Closing the descriptor detaches; the tap stays.
#[allow(unsafe_code)]
pub(crate) fn attach_tap(name: &str, vnet_hdr: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, IfReq);

    let mut request = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    if name.is_empty() || name.len() >= request.name.len() {
        return Err(std::io::Error::other(format!("the tap name {name:?} is empty or too long")));
    }
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    let vnet = if vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
    request.flags = (libc::IFF_TAP | libc::IFF_NO_PI | vnet) as libc::c_short;
    let tun: std::os::fd::OwnedFd =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?.into();
    // SAFETY: `tun` is an open /dev/net/tun descriptor for the call's
    // duration, and `request` a valid, NUL-terminated ifreq that outlives it.
    unsafe { tun_set_iff(tun.as_raw_fd(), &request) }.map_err(std::io::Error::from)?;
    Ok(tun)
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

/// The ids VMMs run as when the daemon is root: 65,536 user and group ids
/// in the range systemd leaves unallocated (1879048192 to 2147483647), far
/// from any account's and any container's.
pub const VMM_IDS: std::ops::Range<u32> = 1_900_000_000..1_900_065_536;

/// Who one VMM runs as, when the daemon is root: a user and group id of its
/// own, held by no other process, named in no account (so it owns no file
/// and can reach only what any stranger can), with `kvm` as its one
/// supplementary group for `/dev/kvm`. The VMM starts as it, before exec:
/// it never holds root, not even while it sets up its devices, and one
/// broken-out VMM cannot signal or trace another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Ids for a VMM about to start, or `None` when the daemon is
/// unprivileged, so that its VMMs already are.
pub fn vmm_ids() -> Result<Option<VmmIds>, Error> {
    /// The ids this daemon handed out last: a VMM may not run as its ids
    /// yet when the next one is chosen (the jailer drops to them only
    /// after its own set-up), so these are skipped even if no process
    /// holds them.
    static GIVEN: Mutex<std::collections::VecDeque<u32>> = Mutex::new(std::collections::VecDeque::new());
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut taken = ids_in_use();
    taken.extend(given.iter().copied());
    // From a random place in the range, so that daemons sharing a host
    // (with data dirs of their own) rarely even look at the same ids.
    let seed = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish()
    };
    // Held by no process, and by no account or group either (an id
    // mapping such as SSSD's can hand out ids this high).
    let id = loop {
        let id = choose_id(&taken, seed).ok_or_else(|| Error::Start {
            vmm: "qemu",
            message: format!(
                "every one of the {} user ids VMMs run as ({}..{}) is in use or an account's; stop some machines",
                VMM_IDS.len(),
                VMM_IDS.start,
                VMM_IDS.end
            ),
        })?;
        let account = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id)).ok().flatten().is_some()
            || nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id)).ok().flatten().is_some();
        if !account {
            break id;
        }
        taken.insert(id);
    };
    if given.len() >= 256 {
        given.pop_front();
    }
    given.push_back(id);
    let kvm = nix::unistd::Group::from_name("kvm").ok().flatten().map(|g| g.gid.as_raw());
    Ok(Some(VmmIds { uid: id, gid: id, groups: kvm.into_iter().collect() }))
}

/// The first id of [`VMM_IDS`] from `seed` on (wrapping) that no process
/// holds as a user or group id.
fn choose_id(taken: &std::collections::HashSet<u32>, seed: u64) -> Option<u32> {
    let len = VMM_IDS.len() as u64;
    (0..len).map(|i| VMM_IDS.start + ((seed + i) % len) as u32).find(|id| !taken.contains(id))
}

/// Every user and group id that a live process holds in [`VMM_IDS`].
fn ids_in_use() -> std::collections::HashSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Default::default() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:"))
                .flat_map(|l| l.split_whitespace().skip(1).filter_map(|n| n.parse::<u32>().ok()))
                .filter(|id| VMM_IDS.contains(id))
                .collect::<Vec<_>>()
        })
        .collect()
}
