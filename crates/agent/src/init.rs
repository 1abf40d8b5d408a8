//! PID 1: prepares the machine, then serves the host until it says shut down.
//!
//! PID 1 must never exit (the kernel would panic): every step reports its
//! failure on the console and the boot goes on, so that the host can still
//! reach the machine and see what went wrong.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::libc;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::unistd::{Pid, chdir, chroot, sethostname, sync};

use crate::cmdline::{self, BootConfig};
use crate::main_process::LogTarget;
use crate::server::{Connection, Ending, Server};
use crate::transport::{VsockListener, open_virtio_port};
use crate::{config, describe, grow, net, reaper, say};

/// Kernel modules to load, one absolute path per line, in dependency order.
pub const MODULES_LIST: &str = "/etc/hearth/modules";
/// `finit_module` flag: the kernel decompresses the module itself (Linux ≥ 6.4).
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;
/// How long to wait for a device (the root disk, the port) to be probed.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Runs as PID 1; never returns.
pub fn run() -> ! {
    // The panic message is already on the console (the default hook).
    if catch_unwind(|| boot_and_serve()).is_err() {
        say("crashed; the machine stays up but cannot be reached");
    }
    sleep_forever()
}

fn boot_and_serve() -> ! {
    mount_kernel_filesystems();
    attach_console();
    say("starting");
    // Before any thread exists, so that every thread inherits the mask.
    shut_down_on_ctrl_alt_del();
    let config = match fs::read_to_string("/proc/cmdline") {
        Ok(line) => cmdline::parse(&line),
        Err(e) => {
            say(&format!("cannot read /proc/cmdline: {}; using defaults", describe(&e)));
            BootConfig::default()
        }
    };
    for problem in &config.problems {
        say(problem);
    }
    let loaded = load_modules(Path::new(MODULES_LIST));
    say(&format!("modules loaded ({loaded})"));
    if let Some(device) = &config.root {
        match switch_root(device) {
            Ok(()) => {
                say(&format!("switched root to {device}"));
                grow_root(device);
            }
            Err(why) => say(&format!("cannot switch root to {device}: {why}; staying in the initramfs")),
        }
    }
    mount_fs("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777");
    if let Err(e) = bring_up_loopback() {
        say(&format!("cannot bring up lo: {}", describe(&e)));
    }
    if let Some(hostname) = &config.hostname
        && let Err(e) = sethostname(hostname)
    {
        say(&format!("cannot set the hostname to {hostname:?}: {}", e.desc()));
    }
    // After the modules (virtio-net) and the switch (the root disk's /etc).
    net::configure(&config);

    let server = Server::with_config(config::Options {
        reload: config.config_reload.clone(),
        hold: config.config.then_some(config::HOLD),
        owner: config.main.as_ref().and_then(|m| m.user.clone()),
        ..config::Options::default()
    });
    if let Some(spec) = config.main.clone() {
        // Firecracker has no virtio-serial: its output goes to the console.
        let console = config.vsock.is_some();
        server.spawn_main(spec, move || if console { LogTarget::Console } else { LogTarget::open() });
    }
    match config.vsock {
        Some(port) => serve_vsock(&server, port),
        None => serve_port(&server, &config.port),
    }
}

fn serve_port(server: &Server, name: &str) -> ! {
    let port = retry_until_open(&format!("the virtio-serial port {name:?}"), || open_virtio_port(name));
    say("ready");
    loop {
        match port.try_clone().and_then(Connection::port) {
            Ok(conn) => serve_one(server, conn),
            Err(e) => {
                say(&format!("cannot use the port: {}", describe(&e)));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn serve_vsock(server: &Server, port: u32) -> ! {
    let listener = retry_until_open(&format!("vsock port {port}"), || VsockListener::bind(port));
    say("ready");
    loop {
        match listener.accept() {
            Ok(conn) => serve_one(server, conn),
            Err(e) => {
                say(&format!("cannot accept on vsock port {port}: {}", describe(&e)));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn serve_one(server: &Server, conn: Connection) {
    match catch_unwind(AssertUnwindSafe(|| server.serve(conn))) {
        Ok(Ending::Disconnected) => {}
        Ok(Ending::Shutdown { reboot }) => shut_down(reboot),
        Err(_) => say("the server crashed; serving again"),
    }
}

/// Retries quickly while devices are probed, then slowly, forever: without
/// a transport there is nothing else to do.
fn retry_until_open<T>(what: &str, mut open: impl FnMut() -> io::Result<T>) -> T {
    let started = Instant::now();
    let mut reported = false;
    loop {
        match open() {
            Ok(opened) => return opened,
            Err(e) if started.elapsed() >= DEVICE_WAIT && !reported => {
                say(&format!("cannot open {what}: {}; still trying", describe(&e)));
                reported = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(if reported { Duration::from_secs(5) } else { Duration::from_millis(20) });
    }
}

fn mount_kernel_filesystems() {
    let (nosuid, nodev, noexec) = (MsFlags::MS_NOSUID, MsFlags::MS_NODEV, MsFlags::MS_NOEXEC);
    mount_fs("proc", "/proc", "proc", nosuid | nodev | noexec, "");
    mount_fs("sysfs", "/sys", "sysfs", nosuid | nodev | noexec, "");
    mount_fs("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755");
    mount_fs("devpts", "/dev/pts", "devpts", nosuid | noexec, "gid=5,mode=0620,ptmxmode=0666");
    mount_fs("tmpfs", "/dev/shm", "tmpfs", nosuid | nodev, "mode=1777");
    mount_fs("tmpfs", "/run", "tmpfs", nosuid | nodev, "mode=0755");
}

/// Mounts a filesystem, creating the mount point; already mounted is fine.
fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) {
    let _ = fs::create_dir_all(target);
    match mount(Some(source), target, Some(fstype), flags, Some(data)) {
        Ok(()) | Err(Errno::EBUSY) => {}
        Err(e) => say(&format!("cannot mount {fstype} on {target}: {}", e.desc())),
    }
}

/// Points stdin, stdout and stderr at the console: the kernel leaves them
/// closed when the initramfs has no `/dev/console`.
fn attach_console() {
    let Ok(console) =
        OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open("/dev/console")
    else {
        return;
    };
    let console = OwnedFd::from(console);
    let _ = nix::unistd::dup2_stdin(&console);
    let _ = nix::unistd::dup2_stdout(&console);
    let _ = nix::unistd::dup2_stderr(&console);
    if console.as_raw_fd() <= 2 {
        // It landed on a standard descriptor, which must stay open.
        let _ = console.into_raw_fd();
    }
}

/// Loads the modules in `list`; returns how many were loaded (not counting
/// those already in the kernel).
fn load_modules(list: &Path) -> usize {
    let Ok(text) = fs::read_to_string(list) else { return 0 };
    let mut loaded = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match load_module(Path::new(line)) {
            Ok(true) => loaded += 1,
            Ok(false) => {}
            Err(why) => say(&format!("cannot load module {line}: {why}")),
        }
    }
    loaded
}

/// `Ok(false)` if the module was already loaded.
fn load_module(path: &Path) -> Result<bool, String> {
    let file = File::open(path).map_err(|e| describe(&e))?;
    let compressed = matches!(path.extension().and_then(|e| e.to_str()), Some("xz" | "zst" | "gz"));
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    match finit_module(&file, c"", flags) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e.desc().to_string()),
    }
}

/// Mounts `device` (ext4) and makes it `/`, carrying the kernel filesystems
/// over. The initramfs stays in memory underneath, with this binary in it.
fn switch_root(device: &str) -> Result<(), String> {
    let started = Instant::now();
    while !Path::new(device).exists() {
        if started.elapsed() >= DEVICE_WAIT {
            return Err(format!("the device did not appear within {} s", DEVICE_WAIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::create_dir_all("/newroot").map_err(|e| format!("cannot create /newroot: {}", describe(&e)))?;
    mount(Some(device), "/newroot", Some("ext4"), MsFlags::empty(), None::<&str>)
        .map_err(|e| format!("cannot mount it: {}", e.desc()))?;
    for dir in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("/newroot{dir}");
        let _ = fs::create_dir_all(&target);
        mount(Some(dir), target.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| format!("cannot move {dir} into it: {}", e.desc()))?;
    }
    // The initramfs's root cannot be pivoted away: move the new root over it.
    chdir("/newroot").map_err(|e| format!("cannot enter it: {}", e.desc()))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("cannot move it to /: {}", e.desc()))?;
    chroot(".").map_err(|e| format!("cannot chroot into it: {}", e.desc()))?;
    chdir("/").map_err(|e| format!("cannot enter it: {}", e.desc()))?;
    Ok(())
}

/// Makes the root file system fill its disk, which may be larger than the
/// image (`machine run --disk-size`). A failure leaves the old size.
fn grow_root(device: &str) {
    match grow::grow(device, Path::new("/")) {
        Ok(None) => {}
        Ok(Some((before, after))) => {
            say(&format!("grew the root file system from {} to {} MiB", before >> 20, after >> 20))
        }
        Err(why) => say(&format!("cannot grow the root file system on {device}: {why}")),
    }
}

/// `ip link set lo up`, with one ioctl.
#[allow(unsafe_code)]
fn bring_up_loopback() -> io::Result<()> {
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    name[0] = b'l' as libc::c_char;
    name[1] = b'o' as libc::c_char;
    let flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    let request =
        libc::ifreq { ifr_name: name, ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: flags } };
    // SAFETY: SIOCSIFFLAGS reads one `ifreq` through the pointer, which is
    // valid for the call; the socket is open.
    let res = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) };
    Errno::result(res)?;
    Ok(())
}

/// Makes Ctrl-Alt-Del (Firecracker's `SendCtrlAltDel`, the host's way to
/// stop a guest whose agent does not answer) a clean restart: the kernel's
/// default is an immediate reboot without syncing the disks; told not to,
/// it sends SIGINT to PID 1 instead, which a thread waits for. A restart,
/// not a power-off: on x86 Firecracker exits when its guest reboots and
/// ignores a power-off, and QEMU runs with `-no-reboot`.
fn shut_down_on_ctrl_alt_del() {
    let mut sigint = SigSet::empty();
    sigint.add(Signal::SIGINT);
    if let Err(e) = sigint.thread_block() {
        say(&format!("cannot block SIGINT, Ctrl-Alt-Del restarts at once: {}", e.desc()));
        return;
    }
    if let Err(e) = set_cad_enabled(false) {
        say(&format!("cannot route Ctrl-Alt-Del to init, it restarts at once: {}", e.desc()));
    }
    let waiter = std::thread::Builder::new().name("ctrl-alt-del".into()).spawn(move || {
        loop {
            if let Ok(Signal::SIGINT) = sigint.wait() {
                say("Ctrl-Alt-Del pressed");
                shut_down(true);
            }
        }
    });
    if let Err(e) = waiter {
        say(&format!("cannot wait for Ctrl-Alt-Del: {}", describe(&e)));
    }
}

/// Ends every process, makes the disks clean, and powers off or restarts.
fn shut_down(restart: bool) -> ! {
    say(if restart { "restarting" } else { "powering off" });
    sync();
    // -1: every process but PID 1.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    wait_for_children(Duration::from_secs(5));
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    wait_for_children(Duration::from_secs(1));
    sync();
    for target in ["/tmp", "/dev/shm", "/dev/pts", "/run"] {
        let _ = umount2(target, MntFlags::MNT_DETACH);
    }
    // `/` cannot be unmounted from under PID 1; read-only leaves it clean.
    let _ = mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>);
    sync();
    let mode = if restart { RebootMode::RB_AUTOBOOT } else { RebootMode::RB_POWER_OFF };
    let Err(e) = reboot(mode);
    say(&format!("cannot {}: {}", if restart { "restart" } else { "power off" }, e.desc()));
    sleep_forever()
}

fn wait_for_children(limit: Duration) {
    let started = Instant::now();
    while !reaper::global().has_no_children() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
