//! Firecracker under its `jailer`, where one is installed and the daemon
//! runs as root.
//!
//! The jailer (Firecracker's own, `docs/jailer.md` in its repository)
//! copies Firecracker into a chroot at
//! `<base>/<exec-file name>/<id>/root` (the name of the real file, once
//! symbolic links are resolved: `firecracker-v1.10.1-x86_64` for a
//! `firecracker` that links to it), makes `/dev/kvm` and `/dev/net/tun`
//! there, puts the process in a cgroup of its own with the limits it is
//! given, enters a new mount namespace, pivots into the chroot, drops to
//! an unprivileged uid/gid and execs Firecracker in the same process (no
//! `--daemonize`, no `--new-pid-ns`: the pid the daemon spawned is
//! Firecracker's, as unjailed, so `vm.pid`, adoption and the reaper stay
//! as they are). Firecracker then sees nothing of the host's file system
//! but what was put in its chroot, and holds no privilege.
//!
//! hearth's part is the chroot's content, rendered by [`plan`], a pure
//! function, and put in place by [`apply`]:
//!
//! - the base is `jail/` in the machine directory, so the chroot goes with
//!   the machine and hard links to its disk never cross a file system;
//! - each file the VM uses is hard-linked in (copied when it lives on
//!   another file system): the kernel, the initramfs and a snapshot's
//!   files read-only (group-readable by the VMM's group), the machine's
//!   disk and Firecracker's log read-write (owned by the VMM's user);
//! - the API socket and the vsock's socket are made by Firecracker in the
//!   chroot, and the machine directory's `control.sock` and `agent.vsock`
//!   are symbolic links to them, so the rest of hearth reaches them where
//!   it always has;
//! - the machine's taps are given to the VMM's user (`TUNSETOWNER`), as
//!   an unprivileged Firecracker opens them itself;
//! - on cgroup v2 hosts, `memory.max` (the guest's memory and
//!   [`VMM_OVERHEAD_MIB`]) and `cpu.max` (the guest's CPUs and one for the
//!   VMM's own threads) bound the process, in `/sys/fs/cgroup/hearth/<id>`,
//!   removed with the machine.
//!
//! The paths Firecracker is given are the chroot's: the drive and the
//! vsock stay relative (`disk.raw`, `agent.vsock`, Firecracker's working
//! directory being the chroot's root), so a snapshot taken jailed restores
//! unjailed and the other way round.
//!
//! The ids are the VM's own ([`super::VmmIds`]), as a confined QEMU's are:
//! no two VMMs share a user.
//!
//! Untested on the host this was written on, which has neither KVM nor
//! Firecracker: the plan is checked by golden tests, [`apply`] by review.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Error, VmConfig, firecracker, process_name};

/// The jailer's binary name, looked up next to Firecracker, then on `PATH`.
pub const BINARY: &str = "jailer";
/// The jails' base, in the machine directory.
pub const BASE: &str = "jail";
/// The cgroup (v2) under which each jailed Firecracker gets its own.
pub const PARENT_CGROUP: &str = "hearth";
/// Memory a Firecracker may use beyond its guest's: its own (Firecracker
/// promises at most 5 MiB) and the kernel's accounting of its page tables,
/// sockets and the guest's virtio queues, with room to spare; past it the
/// kernel reclaims, then kills the VMM, not the host.
pub const VMM_OVERHEAD_MIB: u64 = 128;
/// Where the jailer puts v2 cgroups.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup v2 period (µs) `cpu.max` counts in.
const CPU_PERIOD_US: u64 = 100_000;
/// The longest `--id` the jailer takes.
const MAX_ID: usize = 64;

/// Names in the chroot, relative to its root (Firecracker's working
/// directory there).
pub const KERNEL: &str = "vmlinux";
pub const INITRD: &str = "initrd";
pub const API_SOCKET: &str = "control.sock";
/// A snapshot's device state and guest memory, while Firecracker writes or
/// reads them.
pub const SNAPSHOT_STATE: &str = "snapshot.state";
pub const SNAPSHOT_MEMORY: &str = "snapshot.mem";

/// A jailer that can run Firecracker here, and whom as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jailer {
    pub binary: PathBuf,
    /// The Firecracker it runs, with symbolic links resolved, as the
    /// jailer resolves `--exec-file`: its name names the chroot's parent.
    pub firecracker: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Whether the host has the unified (v2) cgroup hierarchy.
    pub cgroup_v2: bool,
}

/// How the VMM may use a file put in its chroot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only: the file keeps its owner, and its group becomes the
    /// VMM's, with read permission (a shared kernel, a snapshot).
    Read,
    /// Read and write: the file becomes the VMM's user's (the machine's
    /// own disk and log).
    ReadWrite,
}

/// One file put in the chroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub host: PathBuf,
    /// Its path in the chroot, relative to the root.
    pub jailed: PathBuf,
    pub access: Access,
}

/// Everything that running one Firecracker jailed takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The jailer's arguments (after its argv[0]).
    pub args: Vec<OsString>,
    /// The chroot, on the host.
    pub root: PathBuf,
    /// What to remove before building it again (the machine's `jail/`).
    pub base: PathBuf,
    /// Files put in the chroot.
    pub places: Vec<Place>,
    /// Symbolic links in the machine directory to sockets Firecracker
    /// makes in the chroot: (link, target relative to the machine dir).
    pub links: Vec<(PathBuf, PathBuf)>,
    /// Taps given to the VMM's user.
    pub taps: Vec<String>,
    /// The VM as Firecracker sees it in the chroot: the paths its
    /// configuration calls must use.
    pub config: VmConfig,
    pub uid: u32,
    pub gid: u32,
    /// The cgroup the jailer makes (removed with the machine), if any.
    pub cgroup: Option<PathBuf>,
}

/// The jailer's `--id` for machine `name`: the VMM's process name
/// (`hearth-NAME`), which is also how adoption recognises it in
/// `/proc/PID/cmdline`; names too long for the jailer's 64 characters are
/// cut and given a hash of the whole, so that ids stay distinct.
pub fn id(name: &str) -> String {
    let full = process_name(name);
    if full.len() <= MAX_ID {
        return full;
    }
    // FNV-1a: stable across builds, unlike the std hasher.
    let hash =
        name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let keep = MAX_ID - 1 - 16;
    format!("{}-{hash:016x}", &full[..keep])
}

/// The chroot the jailer makes for machine `name` whose directory is
/// `dir`, running the Firecracker binary `firecracker` (symbolic links
/// resolved).
fn root_for(dir: &Path, firecracker: &Path, name: &str) -> PathBuf {
    let exec_name = firecracker.file_name().unwrap_or(firecracker::BINARY.as_ref());
    dir.join(BASE).join(exec_name).join(id(name)).join("root")
}

/// The chroot of machine `name` whose directory is `dir`, if it runs
/// jailed: `jail/<exec-file name>/<id>/root`, whatever the name.
pub fn root(dir: &Path, name: &str) -> Option<PathBuf> {
    let id = id(name);
    std::fs::read_dir(dir.join(BASE))
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join(&id).join("root"))
        .find(|root| root.is_dir())
}

/// The plan for running `jailer.firecracker` jailed for `config`; `extra`
/// are more files the VM needs (a snapshot's, to load it).
pub fn plan(jailer: &Jailer, config: &VmConfig, extra: &[Place]) -> Plan {
    let firecracker = jailer.firecracker.as_path();
    let id = id(&config.name);
    let base = config.dir.join(BASE);
    let root = root_for(&config.dir, firecracker, &config.name);
    let jailed = |name: &str| PathBuf::from("/").join(name);
    let mut places = vec![
        Place { host: config.kernel.clone(), jailed: KERNEL.into(), access: Access::Read },
        Place { host: config.initrd.clone(), jailed: INITRD.into(), access: Access::Read },
        Place {
            host: config.dir.join(firecracker::LOG),
            jailed: firecracker::LOG.into(),
            access: Access::ReadWrite,
        },
    ];
    if let Some(disk) = &config.disk {
        places.push(Place {
            host: disk.clone(),
            jailed: firecracker::DISK.into(),
            access: Access::ReadWrite,
        });
    }
    places.extend(extra.iter().cloned());
    let from_dir = root.strip_prefix(&config.dir).unwrap_or(&root).to_owned();
    let links = [API_SOCKET, firecracker::VSOCK]
        .into_iter()
        .map(|socket| (config.dir.join(socket), from_dir.join(socket)))
        .collect();

    let mut args: Vec<OsString> = vec![
        "--id".into(),
        id.clone().into(),
        "--exec-file".into(),
        firecracker.into(),
        "--uid".into(),
        jailer.uid.to_string().into(),
        "--gid".into(),
        jailer.gid.to_string().into(),
        "--chroot-base-dir".into(),
        base.clone().into(),
    ];
    let cgroup = if jailer.cgroup_v2 {
        let memory = (u64::from(config.memory_mib) + VMM_OVERHEAD_MIB) << 20;
        let quota = (u64::from(config.cpus) + 1) * CPU_PERIOD_US;
        args.extend(
            [
                "--cgroup-version",
                "2",
                "--parent-cgroup",
                PARENT_CGROUP,
                "--cgroup",
                &format!("memory.max={memory}"),
                "--cgroup",
                &format!("cpu.max={quota} {CPU_PERIOD_US}"),
            ]
            .map(OsString::from),
        );
        Some(Path::new(CGROUP_ROOT).join(PARENT_CGROUP).join(&id))
    } else {
        // No limits on a v1 host: the jailer makes no cgroup then.
        args.extend(["--cgroup-version", "1"].map(OsString::from));
        None
    };
    // Firecracker's own arguments: in the chroot, whose root is its
    // working directory.
    args.push("--".into());
    args.extend(["--api-sock".into(), jailed(API_SOCKET).into_os_string()]);
    args.extend(["--log-path".into(), jailed(firecracker::LOG).into_os_string()]);
    args.extend(["--level", "Warning"].map(OsString::from));

    let config = VmConfig {
        dir: PathBuf::from("/"),
        kernel: jailed(KERNEL),
        initrd: jailed(INITRD),
        disk: config.disk.as_ref().map(|_| jailed(firecracker::DISK)),
        disk_base: None,
        ..config.clone()
    };
    Plan {
        args,
        root,
        base,
        places,
        links,
        taps: config.nics.iter().map(|(tap, _)| tap.clone()).collect(),
        config,
        uid: jailer.uid,
        gid: jailer.gid,
        cgroup,
    }
}

/// The files of a snapshot to load, as places in the chroot.
pub fn snapshot_places(state: &Path, memory: &Path) -> [Place; 2] {
    [
        Place { host: state.to_owned(), jailed: SNAPSHOT_STATE.into(), access: Access::Read },
        Place { host: memory.to_owned(), jailed: SNAPSHOT_MEMORY.into(), access: Access::Read },
    ]
}

/// The jailer to use with `firecracker` for one VM, if Firecracker should
/// run jailed: the daemon is root and a `jailer` is next to Firecracker or
/// on `PATH`; the VM gets ids of its own ([`super::vmm_ids`]). `None`
/// otherwise, said once in the log with how to get the jailer.
pub fn find(firecracker: &Path) -> Result<Option<Jailer>, Error> {
    let Some(ids) = super::vmm_ids()? else {
        unjailed_once("the daemon does not run as root, which the jailer needs");
        return Ok(None);
    };
    let sibling = firecracker.parent().map(|dir| dir.join(BINARY)).filter(|path| path.is_file());
    // A jailer on PATH goes with the Firecracker on PATH, not with one
    // given by its path elsewhere.
    let on_path = || {
        let firecracker_on_path = crate::probe::find_tool(firecracker::BINARY).map(|tool| tool.path);
        (firecracker_on_path.as_deref() == Some(firecracker))
            .then(|| crate::probe::find_tool(BINARY).map(|tool| tool.path))
            .flatten()
    };
    let Some(binary) = sibling.or_else(on_path) else {
        unjailed_once("no `jailer` next to it or on PATH");
        return Ok(None);
    };
    // The jailer and Firecracker must come from one release.
    let (jailer_version, firecracker_version) = (version(&binary), version(firecracker));
    if jailer_version.is_none() || jailer_version != firecracker_version {
        unjailed_once(&format!(
            "the jailer {} is version {jailer_version:?} and Firecracker {firecracker_version:?}; \
             they must come from the same release",
            binary.display()
        ));
        return Ok(None);
    }
    // The jailer resolves `--exec-file` and names the chroot's parent after
    // the real file; resolving it here too keeps the plan's paths its.
    let firecracker = std::fs::canonicalize(firecracker)
        .map_err(|source| Error::Io { path: firecracker.to_owned(), source })?;
    Ok(Some(Jailer {
        binary,
        firecracker,
        uid: ids.uid,
        gid: ids.gid,
        cgroup_v2: Path::new(CGROUP_ROOT).join("cgroup.controllers").exists(),
    }))
}

/// The (major, minor) a binary says it is with `--version`.
fn version(binary: &Path) -> Option<(u32, u32)> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next().and_then(firecracker::parse_version)
}

fn unjailed_once(why: &str) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::warn!(
            reason = why,
            "Firecracker runs unjailed (its own seccomp filters only, with the daemon's privileges). \
             Install the `jailer` from the same Firecracker release next to `firecracker` (or on PATH) \
             and run the daemon as root to confine it."
        );
    });
}

/// Builds the chroot `plan` describes: the old one removed, each file
/// linked or copied in and given to the VMM, the sockets' links made in
/// the machine directory, the taps given to the VMM's user.
pub fn apply(plan: &Plan) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    match std::fs::remove_dir_all(&plan.base) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&plan.base)(e)),
        _ => {}
    }
    std::fs::create_dir_all(&plan.root).map_err(io(&plan.root))?;
    for place in &plan.places {
        let to = plan.root.join(&place.jailed);
        if place.access == Access::ReadWrite && !place.host.exists() {
            // Firecracker's log: it appends to what the daemon made.
            std::fs::File::create(&place.host).map_err(io(&place.host))?;
        }
        match place.access {
            Access::Read => link_or_copy(&place.host, &to)?,
            // A copy would take the VM's writes away from the machine's
            // file: only a link will do, and the jail is in the machine
            // directory, on its file system.
            Access::ReadWrite => std::fs::hard_link(&place.host, &to).map_err(|source| Error::Io {
                path: to.clone(),
                source: std::io::Error::new(
                    source.kind(),
                    format!(
                        "cannot link {} into the jail ({source}); keep a Firecracker machine's disk in its \
                         directory",
                        place.host.display()
                    ),
                ),
            })?,
        }
        own(&to, place.access, plan.uid, plan.gid)?;
    }
    for (link, target) in &plan.links {
        match std::fs::remove_file(link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(link)(e)),
            _ => {}
        }
        std::os::unix::fs::symlink(target, link).map_err(io(link))?;
    }
    for tap in &plan.taps {
        give_tap(tap, plan.uid, plan.gid)
            .map_err(|source| Error::Io { path: PathBuf::from("/dev/net/tun"), source })?;
    }
    Ok(())
}

/// A hard link where `from` and the chroot share a file system, else a
/// copy (a reflink where the file system can): for files the VM only
/// reads.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), Error> {
    let same_fs = match (std::fs::metadata(from), to.parent().map(std::fs::metadata)) {
        (Ok(file), Some(Ok(dir))) => file.dev() == dir.dev(),
        (Err(source), _) => return Err(Error::Io { path: from.to_owned(), source }),
        _ => false,
    };
    if same_fs {
        return std::fs::hard_link(from, to).map_err(|source| Error::Io { path: to.to_owned(), source });
    }
    firecracker::copy_sparse(from, to)
}

/// Gives `path` to the VMM: its user for a file it writes; its group, with
/// read permission, for one it only reads (whose owner stays).
fn own(path: &Path, access: Access, uid: u32, gid: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| Error::Io { path: path.to_owned(), source };
    match access {
        Access::ReadWrite => {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)
        }
        Access::Read => {
            let mode = std::fs::metadata(path).map_err(io)?.mode();
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(io)?;
            // Read for the group, and no writing by it.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode((mode & !0o020) | 0o040))
                .map_err(io)
        }
    }
}

/// The VMM's user's and group's own a persistent tap, so that Firecracker,
/// unprivileged, may open it (`ip tuntap add ... user UID group GID`, on a
/// tap that exists).
#[allow(unsafe_code)]
fn give_tap(tap: &str, uid: u32, gid: u32) -> std::io::Result<()> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    nix::ioctl_write_int_bad!(tun_set_owner, libc::TUNSETOWNER);
    nix::ioctl_write_int_bad!(tun_set_group, libc::TUNSETGROUP);

    let tun = super::attach_tap(tap, false)?;
    let (uid, gid) = (
        libc::c_int::try_from(uid).map_err(std::io::Error::other)?,
        libc::c_int::try_from(gid).map_err(std::io::Error::other)?,
    );
    // SAFETY: `tun` is the open /dev/net/tun, attached to the tap, for the
    // calls' duration; they take plain integers. Closing `tun` detaches;
    // the tap, persistent, stays.
    unsafe {
        tun_set_owner(tun.as_raw_fd(), uid).map_err(std::io::Error::from)?;
        tun_set_group(tun.as_raw_fd(), gid).map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Removes what a jailed Firecracker of machine `name` left outside its
/// machine directory: its cgroup (once the process is gone, an empty one).
pub fn remove_cgroup(name: &str) {
    let cgroup = Path::new(CGROUP_ROOT).join(PARENT_CGROUP).join(id(name));
    match std::fs::remove_dir(&cgroup) {
        Ok(()) => tracing::debug!(cgroup = %cgroup.display(), "Removed a jailed VMM's cgroup."),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(cgroup = %cgroup.display(), %error, "Cannot remove a jailed VMM's cgroup.")
        }
    }
}

/// Moves a snapshot file Firecracker wrote in the chroot of the machine
/// whose directory is `dir` to `to`, owned by root and private again.
///
/// The chroot is the VMM's: what it left at that name may be a symbolic
/// link or a hard link to another file, put there to have root give that
/// file away. So the name is first moved out of the VMM's reach (a rename
/// in the machine directory moves a link itself, never its target), then
/// opened without following links, and used only if it is a regular file
/// with no other name; its owner and mode are set through that open file.
pub fn take_out(dir: &Path, root: &Path, jailed: &str, to: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let from = root.join(jailed);
    let staged = dir.join(format!(".{jailed}.taken"));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    std::fs::rename(&from, &staged).map_err(io(&from))?;
    let refuse = |what: &str| {
        let _ = std::fs::remove_file(&staged);
        Err(Error::Start {
            vmm: "firecracker",
            message: format!(
                "the snapshot file {} the VMM wrote is {what}, not a file of its own: refused; \
                 the VMM may be compromised, so remove the machine",
                from.display()
            ),
        })
    };
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(&staged)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return refuse("a symbolic link"),
        Err(e) => return Err(io(&staged)(e)),
    };
    let meta = file.metadata().map_err(io(&staged))?;
    if !meta.is_file() {
        return refuse("not a regular file");
    }
    if meta.nlink() != 1 {
        return refuse("a hard link to another file");
    }
    std::os::unix::fs::fchown(&file, Some(0), Some(0)).map_err(io(&staged))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io(&staged))?;
    drop(file);
    if std::fs::rename(&staged, to).is_err() {
        firecracker::copy_sparse(&staged, to)?;
        std::fs::remove_file(&staged).map_err(io(&staged))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).map_err(io(to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
