//! The Firecracker backend (KVM only).
//!
//! A machine's Firecracker runs as a detached process (its own session, the
//! guest's serial console on its stdout, into `console.log`), with its pid
//! in `vm.pid`, so it outlives the daemon, as QEMU does. It is
//! configured over its HTTP API on `control.sock` ([`Api`]): boot source,
//! machine size, the root drive, network interfaces and a vsock, then
//! `InstanceStart`. The guest agent listens on vsock port
//! [`DEFAULT_VSOCK_PORT`], which the host reaches through `agent.vsock`.
//!
//! Firecracker has no qcow2: each machine gets a raw copy of its image's
//! ext4 ([`raw_disk`]), a reflink where the file system can, else sparse.
//!
//! **Paths a snapshot records are relative to the machine directory**
//! (Firecracker runs there): the drive is `disk.raw` and the vsock
//! `agent.vsock`, so a snapshot restores into another directory, under
//! another name. Only the taps (named for the machine) differ then, and
//! those are handed over with `network_overrides`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use hearth_agent::cmdline::DEFAULT_VSOCK_PORT;
use serde::Serialize;
use serde_json::Value;

use super::{Error, VmConfig, VmFiles, detach, log_tail, process_name};

/// The Firecracker binary, looked up on `PATH`.
pub const BINARY: &str = "firecracker";
/// The guest's vsock CID. Firecracker proxies the vsock through a Unix
/// socket per VM, so CIDs need not differ between machines; 3 is the first
/// a guest may have.
pub const GUEST_CID: u32 = 3;
/// The root drive, relative to the machine directory.
pub const DISK: &str = "disk.raw";
/// The vsock's Unix socket, relative to the machine directory.
pub const VSOCK: &str = "agent.vsock";
/// Firecracker's own log (warnings and errors), in the machine directory.
pub const LOG: &str = "firecracker.log";
/// What the kernel needs on Firecracker: the serial console, reboot through
/// the keyboard controller (Firecracker exits when its guest reboots; it
/// ignores a power-off), no PCI probing (devices are virtio-mmio, described
/// in ACPI), and the agent's transport.
pub fn kernel_args() -> String {
    format!("reboot=k pci=off hearth.vsock={DEFAULT_VSOCK_PORT}")
}

/// How long the API may take to come up after the process starts.
const API_WAIT: Duration = Duration::from_secs(5);
/// How long one API call may take (snapshots write all of guest memory).
const CALL_LIMIT: Duration = Duration::from_secs(120);

// The API's request bodies, field for field as in Firecracker's
// `swagger/firecracker.yaml`.

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct BootSource {
    pub kernel_image_path: String,
    pub initrd_path: String,
    pub boot_args: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct InstanceActionInfo {
    pub action_type: &'static str,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VmState {
    pub state: &'static str,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SnapshotCreateParams {
    pub snapshot_type: &'static str,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MemoryBackend {
    pub backend_type: &'static str,
    pub backend_path: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    pub mem_backend: MemoryBackend,
    pub resume_vm: bool,
    /// Only sent when a tap changes (a restore under another name): older
    /// Firecrackers refuse the field, and their refusal says so.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
}

/// One API call: method, path and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Value,
}

impl Call {
    fn new(method: &'static str, path: impl Into<String>, body: &impl Serialize) -> Self {
        // Serialising these plain structs cannot fail.
        Self { method, path: path.into(), body: serde_json::to_value(body).unwrap_or(Value::Null) }
    }
}

/// The guest interface name Firecracker gets for NIC `i`, as the guest
/// sees it with one virtio-net per interface (`eth0`, `eth1`, …).
fn iface_id(i: usize) -> String {
    format!("eth{i}")
}

/// A path as Firecracker, running in `dir`, should be given it: relative
/// when inside `dir` (so a snapshot does not pin the directory), else as is.
fn in_dir(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

/// The calls that configure and boot `config`, in order.
pub fn boot_calls(config: &VmConfig) -> Vec<Call> {
    let mut calls = vec![
        Call::new(
            "PUT",
            "/boot-source",
            &BootSource {
                kernel_image_path: config.kernel.display().to_string(),
                initrd_path: config.initrd.display().to_string(),
                boot_args: config.cmdline.clone(),
            },
        ),
        Call::new(
            "PUT",
            "/machine-config",
            &MachineConfiguration { vcpu_count: config.cpus, mem_size_mib: config.memory_mib },
        ),
    ];
    if let Some(disk) = &config.disk {
        calls.push(Call::new(
            "PUT",
            "/drives/rootfs",
            &Drive {
                drive_id: "rootfs".into(),
                path_on_host: in_dir(&config.dir, disk),
                // The guest mounts it itself (`hearth.root`); not the kernel's root=.
                is_root_device: false,
                is_read_only: false,
            },
        ));
    }
    for (i, (tap, mac)) in config.nics.iter().enumerate() {
        calls.push(Call::new(
            "PUT",
            format!("/network-interfaces/{}", iface_id(i)),
            &NetworkInterface { iface_id: iface_id(i), host_dev_name: tap.clone(), guest_mac: mac.clone() },
        ));
    }
    calls.push(Call::new("PUT", "/vsock", &Vsock { guest_cid: GUEST_CID, uds_path: VSOCK.into() }));
    calls.push(Call::new("PUT", "/actions", &InstanceActionInfo { action_type: "InstanceStart" }));
    calls
}

/// The call that loads a snapshot into a fresh Firecracker and resumes it.
/// `taps` are the restored machine's, in the snapshot's NIC order;
/// `recorded` those the snapshot was taken with.
pub fn load_call(state: &Path, memory: &Path, recorded: &[String], taps: &[String]) -> Call {
    let network_overrides = taps
        .iter()
        .enumerate()
        .filter(|(i, tap)| recorded.get(*i) != Some(*tap))
        .map(|(i, tap)| NetworkOverride { iface_id: iface_id(i), host_dev_name: tap.clone() })
        .collect();
    Call::new(
        "PUT",
        "/snapshot/load",
        &SnapshotLoadParams {
            snapshot_path: state.display().to_string(),
            mem_backend: MemoryBackend { backend_type: "File", backend_path: memory.display().to_string() },
            resume_vm: true,
            network_overrides,
        },
    )
}

/// A client of one Firecracker's API socket: HTTP/1.1, one request per
/// connection, blocking (like [`super::qmp::Qmp`]).
#[derive(Debug, Clone)]
pub struct Api {
    socket: PathBuf,
    timeout: Duration,
}

impl Api {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), timeout: CALL_LIMIT }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects, retrying briefly while the socket is bound but not yet
    /// listening (right after Firecracker starts).
    fn connect(&self) -> std::io::Result<UnixStream> {
        let started = Instant::now();
        loop {
            match UnixStream::connect(&self.socket) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused && started.elapsed() < API_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                result => return result,
            }
        }
    }

    /// Makes one call; returns the response body, if any. A refusal comes
    /// back as [`Error::Start`] with Firecracker's `fault_message`.
    pub fn call(&self, call: &Call) -> Result<Option<Value>, Error> {
        let control = |what: String| Error::Control(format!("{} {}: {what}", call.method, call.path));
        let mut stream = self.connect().map_err(|e| {
            control(format!("cannot connect to Firecracker's API socket {}: {e}", self.socket.display()))
        })?;
        stream.set_read_timeout(Some(self.timeout)).map_err(|e| control(e.to_string()))?;
        stream.set_write_timeout(Some(self.timeout)).map_err(|e| control(e.to_string()))?;
        // GETs (and anything else without a body) send none.
        let body = match &call.body {
            Value::Null => Vec::new(),
            body => serde_json::to_vec(body).map_err(|e| control(e.to_string()))?,
        };
        let head = format!(
            "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            call.method,
            call.path,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&body))
            .map_err(|e| control(format!("cannot send the request: {e}")))?;
        let (status, body) = read_response(&mut stream).map_err(control)?;
        if (200..300).contains(&status) {
            return Ok(if body.is_empty() { None } else { serde_json::from_slice(&body).ok() });
        }
        Err(Error::Start {
            vmm: "firecracker",
            message: format!(
                "{} {} was refused ({status}): {}",
                call.method,
                call.path,
                fault_message(&body)
            ),
        })
    }
}

/// Reads one HTTP/1.1 response: its status and body (by `Content-Length`).
fn read_response(stream: &mut impl Read) -> Result<(u16, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 64 << 10 {
            return Err("the response headers are over 64 KiB".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("Firecracker closed the connection without answering".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("no answer: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("the answer is not HTTP: {status_line:?}"))?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()
        .map_err(|_| "a bad Content-Length".to_owned())?
        .unwrap_or(0);
    let mut body = buf.split_off(header_end);
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) => return Err("the response body ended early".into()),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("the response body did not arrive: {e}")),
        }
    }
    body.truncate(length);
    Ok((status, body))
}

/// Firecracker's reason for a refusal: `{"fault_message": "..."}`, or the
/// body as it is when it is not that.
pub fn fault_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("fault_message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            if text.is_empty() { "no reason given".to_owned() } else { text }
        })
}

/// Starts Firecracker for `config` and boots it; returns once the guest
/// is started (its kernel boots on) or with Firecracker's reason. Under
/// the jailer where one is installed (see [`super::jailer`]).
pub fn launch(binary: &Path, config: &VmConfig) -> Result<(), Error> {
    let api = Api::new(VmFiles::in_dir(&config.dir).control);
    match super::jailer::find(binary)? {
        Some(jailer) => {
            let plan = super::jailer::plan(&jailer, config, &[]);
            let child = spawn_jailed(&jailer, &plan, config)?;
            run_calls(child, &api, &boot_calls(&plan.config))
        }
        None => run_calls(spawn(binary, config)?, &api, &boot_calls(config)),
    }
}

/// Starts a fresh Firecracker in `config.dir` and resumes the snapshot
/// whose device state and memory are `state` and `memory` in it (the
/// drive and vsock resolve in that directory, see the module doc);
/// `recorded` are the taps the snapshot was taken with.
pub fn launch_restored(
    binary: &Path,
    config: &VmConfig,
    state: &Path,
    memory: &Path,
    recorded: &[String],
) -> Result<(), Error> {
    let taps: Vec<String> = config.nics.iter().map(|(tap, _)| tap.clone()).collect();
    let (child, load) = match super::jailer::find(binary)? {
        Some(jailer) => {
            let plan = super::jailer::plan(&jailer, config, &super::jailer::snapshot_places(state, memory));
            let load = load_call(
                Path::new(super::jailer::SNAPSHOT_STATE),
                Path::new(super::jailer::SNAPSHOT_MEMORY),
                recorded,
                &taps,
            );
            (spawn_jailed(&jailer, &plan, config)?, load)
        }
        None => (spawn(binary, config)?, load_call(state, memory, recorded, &taps)),
    };
    let api = Api::new(VmFiles::in_dir(&config.dir).control);
    run_calls(child, &api, std::slice::from_ref(&load)).map_err(|error| match error {
        Error::Start { vmm, message } if load.body.get("network_overrides").is_some() => Error::Start {
            vmm,
            message: format!(
                "{message}; the machine's taps differ from the snapshot's, which needs a Firecracker that takes \
                 network_overrides: upgrade it, or remove the original machine and restore under its name"
            ),
        },
        other => other,
    })
}

/// Makes the calls; on the first failure Firecracker is killed, so a
/// failed start leaves no process behind. On success the child is reaped
/// by a thread of its own when it ends (while this daemon lives; after,
/// by init).
fn run_calls(mut child: Child, api: &Api, calls: &[Call]) -> Result<(), Error> {
    for call in calls {
        if let Err(error) = api.call(call) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
    }
    let reaper = std::thread::Builder::new().name("firecracker-reaper".into()).spawn(move || {
        let _ = child.wait();
    });
    if let Err(error) = reaper {
        // The VM runs; unreaped, it stays a zombie once it ends, which
        // `is_vm_process` already counts as gone.
        tracing::warn!(error = %error, "Cannot start a thread to reap Firecracker.");
    }
    Ok(())
}

/// Starts the Firecracker process, detached, and waits for its API socket.
pub fn spawn(binary: &Path, config: &VmConfig) -> Result<Child, Error> {
    let files = VmFiles::in_dir(&config.dir);
    remove_stale(&files);
    // A jail left by an earlier, jailed run would make snapshots look for
    // their files there.
    let _ = std::fs::remove_dir_all(config.dir.join(super::jailer::BASE));
    let mut command = Command::new(binary);
    command.arg("--api-sock").arg(&files.control).args(["--log-path", LOG, "--level", "Warning"]);
    start(command, binary, config)
}

/// Starts Firecracker through `jailer` once `plan`'s chroot is built: the
/// jailer execs Firecracker in the process it is, so the pid is the VMM's.
pub fn spawn_jailed(
    jailer: &super::jailer::Jailer,
    plan: &super::jailer::Plan,
    config: &VmConfig,
) -> Result<Child, Error> {
    remove_stale(&VmFiles::in_dir(&config.dir));
    super::jailer::apply(plan)?;
    let mut command = Command::new(&jailer.binary);
    command.args(&plan.args);
    start(command, &jailer.binary, config).map_err(|error| match error {
        Error::Start { vmm, message } => Error::Start {
            vmm,
            message: format!(
                "{message} (it ran under the jailer {}; a data directory on a `nodev` file system \
                 keeps the jail's /dev/kvm from working)",
                jailer.binary.display()
            ),
        },
        other => other,
    })
}

fn remove_stale(files: &VmFiles) {
    for stale in [&files.pid, &files.control, &files.vsock] {
        let _ = std::fs::remove_file(stale);
    }
}

/// Runs `command` (Firecracker, or the jailer that becomes it) detached,
/// its output to the console log and its errors to Firecracker's log, and
/// waits for the API socket.
fn start(mut command: Command, binary: &Path, config: &VmConfig) -> Result<Child, Error> {
    let files = VmFiles::in_dir(&config.dir);
    let log = config.dir.join(LOG);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let append =
        |path: &Path| std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io(path));
    let console = append(&files.console)?;
    let errors = append(&log)?;
    command
        // `hearth-NAME` as argv[0]: what `ps` shows and adoption looks for.
        .arg0(process_name(&config.name))
        .current_dir(&config.dir)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(errors);
    detach(&mut command, Vec::new(), None);
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Missing(BINARY),
        _ => Error::Io { path: binary.to_owned(), source: e },
    })?;
    if let Err(source) = std::fs::write(&files.pid, format!("{}\n", child.id())) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Io { path: files.pid, source });
    }
    let started = Instant::now();
    loop {
        // The socket file is there once Firecracker bound it; the first
        // call waits for it to listen.
        if files.control.exists() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Start {
                vmm: "firecracker",
                message: format!("it exited ({status}) before its API came up: {}", log_tail(&log)),
            });
        }
        if started.elapsed() > API_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Start {
                vmm: "firecracker",
                message: format!(
                    "its API socket did not appear within {}s: {}",
                    API_WAIT.as_secs(),
                    log_tail(&log)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Presses Ctrl-Alt-Del in the guest: the agent (PID 1) restarts it
/// cleanly, which ends Firecracker.
pub fn ctrl_alt_del(api: &Api) -> Result<(), Error> {
    api.call(&Call::new("PUT", "/actions", &InstanceActionInfo { action_type: "SendCtrlAltDel" })).map(drop)
}

/// Pauses the VM of machine `name` (in `dir`) and writes a full snapshot:
/// device state to `state`, guest memory to `memory`. The VM stays paused.
/// A jailed Firecracker writes them in its chroot, whence they are moved.
pub fn save_state(dir: &Path, name: &str, api: &Api, state: &Path, memory: &Path) -> Result<(), Error> {
    let root = super::jailer::root(dir, name);
    let (to_state, to_memory) = if root.is_some() {
        (Path::new(super::jailer::SNAPSHOT_STATE), Path::new(super::jailer::SNAPSHOT_MEMORY))
    } else {
        (state, memory)
    };
    api.call(&Call::new("PATCH", "/vm", &VmState { state: "Paused" }))?;
    api.call(&Call::new(
        "PUT",
        "/snapshot/create",
        &SnapshotCreateParams {
            snapshot_type: "Full",
            snapshot_path: to_state.display().to_string(),
            mem_file_path: to_memory.display().to_string(),
        },
    ))?;
    if let Some(root) = root {
        super::jailer::take_out(dir, &root, super::jailer::SNAPSHOT_STATE, state)?;
        super::jailer::take_out(dir, &root, super::jailer::SNAPSHOT_MEMORY, memory)?;
    }
    Ok(())
}

/// Lets a paused VM run again (after a failed snapshot).
pub fn resume(api: &Api) -> Result<(), Error> {
    api.call(&Call::new("PATCH", "/vm", &VmState { state: "Resumed" })).map(drop)
}

/// Makes `disk` a raw copy of the image's ext4 `base`, `bytes` long if
/// given (the guest grows its file system to fill it): a reflink where the
/// file system shares blocks (btrfs, XFS), else a sparse copy, so that only
/// the image's used blocks take room. Written under a temporary name.
pub fn raw_disk(base: &Path, disk: &Path, bytes: Option<u64>) -> Result<(), Error> {
    let tmp = disk.with_extension("partial");
    copy_sparse(base, &tmp)?;
    let sized = match bytes {
        Some(bytes) => std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .and_then(|f| if f.metadata()?.len() < bytes { f.set_len(bytes) } else { Ok(()) }),
        None => Ok(()),
    };
    if let Err(source) = sized.and_then(|()| std::fs::rename(&tmp, disk)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io { path: disk.to_owned(), source });
    }
    Ok(())
}

/// Copies a disk as cheaply as the file system allows (`cp --reflink=auto
/// --sparse=always`: coreutils does the FICLONE and the hole detection).
pub fn copy_sparse(from: &Path, to: &Path) -> Result<(), Error> {
    let out = Command::new("cp")
        .args(["--reflink=auto", "--sparse=always", "--"])
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Io { path: to.to_owned(), source: e })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(to);
        return Err(Error::Io {
            path: to.to_owned(),
            source: std::io::Error::other(format!(
                "cannot copy {} there: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    Ok(())
}

/// Parses `firecracker --version`'s first line (`Firecracker v1.10.1`).
pub fn parse_version(line: &str) -> Option<(u32, u32)> {
    let version = line.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = version.split('.');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()?,
    ))
}

/// The oldest Firecracker that describes its devices in ACPI (1.8), which
/// Debian's kernel needs: it cannot read virtio-mmio devices from its
/// command line.
pub const MIN_VERSION: (u32, u32) = (1, 8);

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    use serde_json::json;

    use super::*;

    fn config(dir: &Path) -> VmConfig {
        VmConfig {
            name: "n1".into(),
            dir: dir.to_owned(),
            kernel: "/k/vmlinux-0123".into(),
            initrd: "/c/initrd.cpio".into(),
            cmdline: "console=ttyS0 reboot=k pci=off hearth.vsock=1024".into(),
            disk: Some(dir.join(DISK)),
            disk_base: None,
            cpus: 2,
            memory_mib: 512,
            nics: vec![
                ("ht-n1".into(), "52:54:00:00:00:01".into()),
                ("ht-n1-b".into(), "52:54:00:00:00:02".into()),
            ],
        }
    }

    /// The bodies are exactly what Firecracker's API spec names.
    #[test]
    fn boot_calls_follow_the_api_spec_in_order() {
        let calls = boot_calls(&config(Path::new("/m/n1")));
        let got: Vec<(&str, &str, Value)> =
            calls.iter().map(|c| (c.method, c.path.as_str(), c.body.clone())).collect();
        assert_eq!(
            got,
            [
                (
                    "PUT",
                    "/boot-source",
                    json!({
                        "kernel_image_path": "/k/vmlinux-0123",
                        "initrd_path": "/c/initrd.cpio",
                        "boot_args": "console=ttyS0 reboot=k pci=off hearth.vsock=1024",
                    })
                ),
                ("PUT", "/machine-config", json!({ "vcpu_count": 2, "mem_size_mib": 512 })),
                (
                    "PUT",
                    "/drives/rootfs",
                    json!({
                        "drive_id": "rootfs",
                        "path_on_host": "disk.raw",
                        "is_root_device": false,
                        "is_read_only": false,
                    })
                ),
                (
                    "PUT",
                    "/network-interfaces/eth0",
                    json!({ "iface_id": "eth0", "host_dev_name": "ht-n1", "guest_mac": "52:54:00:00:00:01" })
                ),
                (
                    "PUT",
                    "/network-interfaces/eth1",
                    json!({ "iface_id": "eth1", "host_dev_name": "ht-n1-b", "guest_mac": "52:54:00:00:00:02" })
                ),
                ("PUT", "/vsock", json!({ "guest_cid": 3, "uds_path": "agent.vsock" })),
                ("PUT", "/actions", json!({ "action_type": "InstanceStart" })),
            ]
        );
    }

    #[test]
    fn a_disk_outside_the_machine_dir_keeps_its_absolute_path() {
        let mut c = config(Path::new("/m/n1"));
        c.disk = Some("/elsewhere/disk.raw".into());
        c.nics.clear();
        let calls = boot_calls(&c);
        assert_eq!(calls[2].body["path_on_host"], "/elsewhere/disk.raw");
        assert_eq!(calls.len(), 5);
        c.disk = None;
        assert!(boot_calls(&c).iter().all(|call| call.path != "/drives/rootfs"));
    }

    #[test]
    fn snapshot_bodies_follow_the_api_spec() {
        let taps = ["ht-n1".to_owned()];
        let same = load_call(Path::new("/s/state"), Path::new("/s/memory"), &taps, &taps);
        assert_eq!((same.method, same.path.as_str()), ("PUT", "/snapshot/load"));
        assert_eq!(
            same.body,
            json!({
                "snapshot_path": "/s/state",
                "mem_backend": { "backend_type": "File", "backend_path": "/s/memory" },
                "resume_vm": true,
            })
        );
        let moved = load_call(Path::new("/s/state"), Path::new("/s/memory"), &taps, &["ht-n2".to_owned()]);
        assert_eq!(
            moved.body["network_overrides"],
            json!([{ "iface_id": "eth0", "host_dev_name": "ht-n2" }])
        );

        let create = Call::new(
            "PUT",
            "/snapshot/create",
            &SnapshotCreateParams {
                snapshot_type: "Full",
                snapshot_path: "/s/state".into(),
                mem_file_path: "/s/memory".into(),
            },
        );
        assert_eq!(
            create.body,
            json!({ "snapshot_type": "Full", "snapshot_path": "/s/state", "mem_file_path": "/s/memory" })
        );
        assert_eq!(
            serde_json::to_value(VmState { state: "Paused" }).expect("json"),
            json!({ "state": "Paused" })
        );
    }

    #[test]
    fn fault_messages_are_read_from_the_error_body() {
        assert_eq!(
            fault_message(br#"{"fault_message":"The kernel file cannot be opened: No such file or directory (os error 2)"}"#),
            "The kernel file cannot be opened: No such file or directory (os error 2)"
        );
        assert_eq!(fault_message(b"  plain words \n"), "plain words");
        assert_eq!(fault_message(b""), "no reason given");
        assert_eq!(fault_message(br#"{"other":1}"#), r#"{"other":1}"#);
    }

    #[test]
    fn versions_are_parsed_from_the_version_line() {
        assert_eq!(parse_version("Firecracker v1.10.1"), Some((1, 10)));
        assert_eq!(parse_version("Firecracker v1.8.0-dev"), Some((1, 8)));
        assert_eq!(parse_version("Firecracker v0.25.2"), Some((0, 25)));
        assert_eq!(parse_version("nonsense"), None);
        assert!(parse_version("Firecracker v1.7.0").expect("parse") < MIN_VERSION);
    }

    /// One request as the fake server saw it.
    #[derive(Debug, PartialEq)]
    struct Seen {
        method: String,
        path: String,
        body: Value,
    }

    /// [`fake_api`] on `socket`, once the fake binary has written the file
    /// `marker` beside it (the launch first clears stale sockets, so it is
    /// bound only then, as Firecracker would), or after 10 s at most.
    fn fake_api_once_started(
        socket: &Path,
        marker: &str,
        answers: Vec<(u16, &'static str)>,
    ) -> std::thread::JoinHandle<std::thread::Result<Vec<Seen>>> {
        let socket = socket.to_owned();
        let marker = socket.with_file_name(marker);
        std::thread::spawn(move || {
            let started = Instant::now();
            while !marker.exists() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            fake_api(&socket, answers).join()
        })
    }

    /// A temporary root and a machine directory `NAME` in it.
    fn machine_dir(name: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        (root, dir)
    }

    /// A fake Firecracker API on `socket`: answers each request with the
    /// next of `answers` (status, body), one connection per request, and
    /// returns what it was sent.
    fn fake_api(socket: &Path, answers: Vec<(u16, &'static str)>) -> std::thread::JoinHandle<Vec<Seen>> {
        let listener = UnixListener::bind(socket).expect("bind");
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                reader.read_line(&mut line).expect("request line");
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or_default().to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                );
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).expect("header") == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some(v) = header.strip_prefix("Content-Length: ") {
                        length = v.trim().parse().expect("length");
                    }
                }
                let mut request = vec![0u8; length];
                reader.read_exact(&mut request).expect("body");
                let sent = if request.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&request).expect("json body")
                };
                seen.push(Seen { method, path, body: sent });
                let reason = if status < 300 { "No Content" } else { "Bad Request" };
                let mut out = stream;
                // Headers and body in separate writes, as a real server may.
                write!(
                    out,
                    "HTTP/1.1 {status} {reason}\r\nServer: Firecracker API\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .expect("answer");
                out.write_all(body.as_bytes()).expect("answer body");
            }
            seen
        })
    }

    #[test]
    fn calls_reach_a_fake_api_and_refusals_carry_the_fault_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("control.sock");
        let server = fake_api(
            &socket,
            vec![
                (204, ""),
                (200, r#"{"firecracker_version":"1.10.1"}"#),
                (400, r#"{"fault_message":"Invalid vCPU count: 0"}"#),
            ],
        );
        let api = Api::new(&socket).with_timeout(Duration::from_secs(5));
        let start = Call::new("PUT", "/actions", &InstanceActionInfo { action_type: "InstanceStart" });
        assert_eq!(api.call(&start).expect("start"), None);
        let version =
            api.call(&Call { method: "GET", path: "/version".into(), body: Value::Null }).expect("version");
        assert_eq!(version, Some(json!({ "firecracker_version": "1.10.1" })));
        let bad =
            Call::new("PUT", "/machine-config", &MachineConfiguration { vcpu_count: 0, mem_size_mib: 128 });
        let error = api.call(&bad).expect_err("refused");
        assert!(matches!(error, Error::Start { vmm: "firecracker", .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "firecracker did not start: PUT /machine-config was refused (400): Invalid vCPU count: 0"
        );
        let seen = server.join().expect("server");
        assert_eq!(
            seen[0],
            Seen {
                method: "PUT".into(),
                path: "/actions".into(),
                body: json!({ "action_type": "InstanceStart" })
            }
        );
        assert_eq!(seen[1], Seen { method: "GET".into(), path: "/version".into(), body: Value::Null });
        assert_eq!(seen.len(), 3);

        let gone = Api::new(dir.path().join("absent.sock")).call(&start).expect_err("no socket");
        assert!(gone.to_string().contains("cannot connect to Firecracker's API socket"), "{gone}");
    }

    /// A stand-in `firecracker`: a script that records its arguments and
    /// working directory, then serves nothing (the test's fake API, bound
    /// at the path the script was given, answers instead).
    fn fake_binary(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-firecracker");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn a_full_start_runs_detached_and_sends_the_calls_in_order() {
        let (root, dir) = machine_dir("n1");
        let config = config(&dir);
        let files = VmFiles::in_dir(&dir);
        // The fake binary waits for the test's API socket to exist (the
        // launch removes stale ones first), then sleeps like a VMM would.
        let binary = fake_binary(
            root.path(),
            r#"echo "$* cwd=$(pwd) sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$" > args; echo "guest console"; exec sleep 30"#,
        );
        let answers = vec![(204, ""); boot_calls(&config).len()];
        let server = fake_api_once_started(&files.control, "args", answers);
        launch(&binary, &config).expect("launch");
        let seen = server.join().expect("server").expect("fake api");
        let want: Vec<(String, String, Value)> =
            boot_calls(&config).into_iter().map(|c| (c.method.to_owned(), c.path, c.body)).collect();
        let got: Vec<(String, String, Value)> =
            seen.into_iter().map(|s| (s.method, s.path, s.body)).collect();
        assert_eq!(got, want);

        // (argv[0], `hearth-n1`, is lost to the script's interpreter here.)
        let pid: u32 = std::fs::read_to_string(&files.pid).expect("pid file").trim().parse().expect("pid");
        let args = std::fs::read_to_string(dir.join("args")).expect("args");
        assert!(args.starts_with(&format!("--api-sock {} ", files.control.display())), "{args}");
        assert!(args.contains("--log-path firecracker.log --level Warning"), "{args}");
        assert!(args.contains(&format!("cwd={}", dir.display())), "{args}");
        // Its own session: the session id is its pid.
        assert!(args.contains(&format!("sid={pid} pid={pid}")), "{args}");
        let started = Instant::now();
        while !std::fs::read_to_string(&files.console).unwrap_or_default().contains("guest console") {
            assert!(started.elapsed() < Duration::from_secs(5), "stdout is not the console log");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(super::super::signal(pid, nix::sys::signal::Signal::SIGKILL));
    }

    #[test]
    fn a_refused_call_kills_firecracker_and_says_why() {
        let (root, dir) = machine_dir("n1");
        let config = config(&dir);
        let socket = VmFiles::in_dir(&dir).control;
        let binary = fake_binary(root.path(), "echo $$ > started; exec sleep 30");
        let server = fake_api_once_started(
            &socket,
            "started",
            vec![(204, ""), (400, r#"{"fault_message":"Out of memory"}"#)],
        );
        let error = launch(&binary, &config).expect_err("refused");
        assert!(
            error.to_string().contains("PUT /machine-config was refused (400): Out of memory"),
            "{error}"
        );
        server.join().expect("server").expect("fake api");
        let pid: u32 =
            std::fs::read_to_string(dir.join("started")).expect("pid").trim().parse().expect("pid");
        // Killed and reaped: no such process any more.
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the process was left running");
    }

    #[test]
    fn a_refused_restore_under_another_name_says_what_to_do() {
        let (root, dir) = machine_dir("n2");
        let socket = VmFiles::in_dir(&dir).control;
        let binary = fake_binary(root.path(), "touch started; exec sleep 30");
        let refusal = r#"{"fault_message":"unknown field `network_overrides`"}"#;
        let server = fake_api_once_started(&socket, "started", vec![(400, refusal)]);
        let (state, memory) = (Path::new("/s/state"), Path::new("/s/memory"));
        // Taken as machine n0: its first tap differs from this one's.
        let recorded = ["ht-n0".to_owned(), "ht-n1-b".to_owned()];
        let load = load_call(state, memory, &recorded, &["ht-n1".into(), "ht-n1-b".into()]);
        let error = launch_restored(&binary, &config(&dir), state, memory, &recorded).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains("unknown field `network_overrides`") && text.contains("restore under its name"),
            "{text}"
        );
        let seen = server.join().expect("server").expect("fake api");
        assert_eq!(seen[0].path, "/snapshot/load");
        assert_eq!(seen[0].body, load.body);
    }

    #[test]
    fn a_firecracker_that_exits_at_once_is_reported_with_its_log() {
        let (root, dir) = machine_dir("n1");
        let binary =
            fake_binary(root.path(), "echo 'Error: Kvm(OpenKvm(No such file or directory))' >&2; exit 1");
        let error = launch(&binary, &config(&dir)).expect_err("exits");
        let text = error.to_string();
        assert!(text.contains("exited") && text.contains("OpenKvm"), "{text}");
        let missing = launch(&root.path().join("absent"), &config(&dir)).expect_err("missing");
        assert!(matches!(missing, Error::Missing(BINARY)), "{missing:?}");
    }

    #[test]
    fn raw_disks_are_sparse_copies_grown_to_size() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("rootfs.ext4");
        let mut file = std::fs::File::create(&base).expect("create");
        file.write_all(b"superblock").expect("write");
        file.set_len(64 << 20).expect("sparse");
        drop(file);
        let disk = dir.path().join("disk.raw");
        raw_disk(&base, &disk, Some(128 << 20)).expect("raw disk");
        let meta = std::fs::metadata(&disk).expect("stat");
        assert_eq!(meta.len(), 128 << 20);
        assert!(meta.blocks() * 512 < 8 << 20, "not sparse: {} blocks", meta.blocks());
        let mut head = [0u8; 10];
        std::fs::File::open(&disk).expect("open").read_exact(&mut head).expect("read");
        assert_eq!(&head, b"superblock");
        assert!(!dir.path().join("disk.partial").exists());
        // Never smaller than the image.
        let small = dir.path().join("small.raw");
        raw_disk(&base, &small, Some(1 << 20)).expect("raw disk");
        assert_eq!(std::fs::metadata(&small).expect("stat").len(), 64 << 20);
        let error = raw_disk(&dir.path().join("absent"), &small, None).expect_err("absent");
        let text = crate::chain(&error);
        assert!(text.contains("cannot copy") && text.contains("absent"), "{text}");
    }
}
