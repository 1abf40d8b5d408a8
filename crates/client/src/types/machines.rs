//! Machines: records, creation, exec, files and snapshots.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ErrorDetail;

wire_enum! {
    /// What runs a machine's VM.
    Backend {
        /// QEMU with software emulation (TCG): slow, runs anywhere.
        QemuTcg = "qemu-tcg",
        /// QEMU with KVM.
        QemuKvm = "qemu-kvm",
        /// Firecracker (needs KVM).
        Firecracker = "firecracker",
    }
}

wire_enum! {
    /// What the user asked of a machine.
    Desired {
        Running = "running",
        Stopped = "stopped",
        /// Saved to disk until something wakes it.
        Sleeping = "sleeping",
    }
}

wire_enum! {
    /// Where a machine is in its life.
    MachineState {
        /// Recorded, not yet started.
        Created = "created",
        Starting = "starting",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Failed = "failed",
        /// Its host stopped answering: whether it still runs is unknown,
        /// and its disk is on that host, so it comes back when the host does.
        Lost = "lost",
        /// Its memory is saved to disk and no VM runs: the next connection
        /// through its ports, `hearth machine wake` or an exec wakes it.
        Sleeping = "sleeping",
    }
}

wire_enum! {
    /// When the agent starts a machine's main process again after it ended.
    RestartPolicy {
        /// Never: it runs once.
        No = "no",
        /// After a non-zero exit or a signal.
        OnFailure = "on-failure",
        /// Whenever it ends.
        Always = "always",
    }
}

wire_enum! {
    /// Where a machine's main process is in its life. Whatever it says,
    /// the machine keeps running: exec into it to see why.
    MainState {
        Running = "running",
        /// Ended, and not to be restarted under its policy.
        Exited = "exited",
        /// Ended, and about to be started again (after a backoff of 100 ms
        /// doubling to 10 s).
        Restarting = "restarting",
        /// Could not start: no such program, user or directory. Not retried.
        FailedToStart = "failed-to-start",
    }
}

/// A machine's main process, as its agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MainProcess {
    pub state: MainState,
    /// Its process id in the guest (the last run's, once it ended).
    pub pid: Option<u32>,
    /// The exit code of its last run, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended its last run, if one did.
    pub signal: Option<i32>,
    /// How many times the agent started it again.
    pub restarts: u32,
    /// Unix seconds of its last start.
    pub started_at: Option<u64>,
    /// Why it could not start.
    pub error: Option<String>,
}

/// The config in a machine's `/run/hearth/config.json` and `config.env`,
/// pushed by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachineConfig {
    /// The config revision whose content the machine's files hold (they
    /// change only when its merged config does, not at every revision).
    pub revision: u64,
    /// Unix seconds when the files last changed.
    pub applied_at: u64,
    /// Why the last reload (`on_config_change`) failed; null once one worked.
    pub reload_error: Option<String>,
}

/// A machine: what was asked for and what is observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    pub name: String,
    /// The host that runs it and keeps its disk; null for a machine made
    /// before hosts shared a store, until a host adopts it.
    #[serde(default)]
    pub host: Option<String>,
    /// The image as named at creation.
    pub image: String,
    pub image_digest: String,
    pub backend: Backend,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The main process's command, started at boot, if any.
    pub entrypoint: Vec<String>,
    /// The main process's (and exec's) environment, `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// The main process's working directory; `/` when absent.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Who the main process runs as; root when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// When the main process is started again.
    #[serde(default = "default_restart")]
    pub restart: RestartPolicy,
    /// The main process's state, once the agent reported it.
    #[serde(default)]
    pub main: Option<MainProcess>,
    /// What the agent does after the machine's config changed: a signal
    /// sent to the main process (`SIGHUP`), or a command run with `/bin/sh -c`.
    #[serde(default)]
    pub on_config_change: Option<String>,
    /// The config the machine holds, once one was pushed this boot.
    #[serde(default)]
    pub config: Option<MachineConfig>,
    /// What the user asked for.
    pub desired: Desired,
    pub state: MachineState,
    /// What is happening now, while starting or stopping.
    pub phase: Option<String>,
    /// Why it is stopped or failed.
    pub reason: Option<String>,
    /// The VM process id.
    pub pid: Option<u32>,
    /// Milliseconds from launch to the agent's first answer, last boot.
    pub boot_ms: Option<u64>,
    /// The guest kernel release.
    pub kernel: Option<String>,
    pub auto_remove: bool,
    /// Network interfaces.
    pub nics: Vec<MachineNic>,
    /// Forwarded ports, `HOSTPORT:GUESTPORT[/udp]` on 127.0.0.1.
    pub ports: Vec<String>,
    /// Why some of `ports` are not forwarded now (a host port another
    /// process holds), tried again every second; null when all are.
    #[serde(default)]
    pub ports_problem: Option<String>,
    /// The root disk's size in MiB; absent for machines made before disks
    /// could be sized, whose disks are their image's size.
    #[serde(default)]
    pub disk_mib: Option<u64>,
    /// Seconds without a connection after which it sleeps; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_after_secs: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    pub started_at: Option<u64>,
}

fn default_restart() -> RestartPolicy {
    RestartPolicy::No
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachineNic {
    pub network: String,
    pub ip: String,
    pub mac: String,
    /// The host tap.
    pub tap: String,
    /// `MACHINE.NETWORK.hearth`.
    pub dns_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachineList {
    pub machines: Vec<Machine>,
}

/// `POST /v1/machines`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMachine {
    /// Lowercase letters, digits and dashes; generated if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An image name or digest, as `hearth image ls` shows.
    pub image: String,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// The main process: run this at boot instead of the image's
    /// entrypoint and command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` for the main process and exec, over the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The main process's working directory (absolute), instead of the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Who the main process runs as, instead of the image's user: a name or
    /// `uid[:gid]` of the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `no` (default), `on-failure` or `always`.
    // A string here, as `backend` is, so that the daemon answers a wrong one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<RestartPolicy>)]
    pub restart: Option<String>,
    /// After the machine's config changed: a signal name sent to the main
    /// process (`SIGHUP`, `SIGUSR1`), or a command run with `/bin/sh -c`
    /// (e.g. `nginx -s reload`). Nothing when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_config_change: Option<String>,
    /// `qemu-tcg`, `qemu-kvm` or `firecracker`; default: the best this host can run.
    // A `Backend` on the wire, but a string here, so that the daemon rather
    // than the JSON parser answers a wrong one, with its hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Backend>)]
    pub backend: Option<String>,
    /// A bzImage on the daemon's host to boot instead of Debian's cloud kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Remove the machine when it stops.
    #[serde(default)]
    pub auto_remove: bool,
    /// Create without starting.
    #[serde(default)]
    pub no_start: bool,
    /// Networks to join (default: the `default` network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    /// Join no network at all.
    #[serde(default)]
    pub no_network: bool,
    /// Ports forwarded from the host's loopback: `HOSTPORT:GUESTPORT[/udp]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// The root disk's size in MiB, at least the image's; the root file
    /// system grows to fill it. Default: the image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Put it to sleep after this long without a connection through its
    /// ports (`30s`, `5m`, `1h`; at least `1s`); the next connection wakes
    /// it. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_after: Option<String>,
    /// `NAME:PORT`: the machine joins service NAME (made if missing) as an
    /// instance answering on PORT, for as long as the machine exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The host to run it on (a `hearth serve --host-name`); default: the
    /// host whose daemon is asked. The image must be in that host's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
}

/// A network to join, optionally at a chosen address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttachment {
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveMachineQuery {
    /// Remove even if it is running (the VM is killed).
    pub force: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep streaming as the logs grow.
    pub follow: Option<bool>,
    /// Only the last N lines (of each log) first.
    pub tail: Option<usize>,
    /// `console` (the serial console, as it is), `main` (the main
    /// process's output, each line `out| ` or `err| `) or `all` (default:
    /// both, each line labelled `console| ` or `main `).
    #[param(value_type = Option<LogSource>)]
    pub source: Option<String>,
}

wire_enum! {
    /// Which of a machine's logs.
    LogSource {
        Console = "console",
        Main = "main",
        All = "all",
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// Absolute path in the guest.
    pub path: String,
    /// Permission bits for an upload, octal (default 644).
    pub mode: Option<String>,
}

/// The first byte of a binary exec message from the daemon whose rest is
/// the command's standard output.
pub const EXEC_STDOUT: u8 = 1;

/// The first byte of a binary exec message from the daemon whose rest is
/// the command's standard error.
pub const EXEC_STDERR: u8 = 2;

/// The response header of `GET /v1/machines/{name}/files` that carries
/// the file's permission bits, in octal.
pub const MODE_HEADER: &str = "x-hearth-mode";

/// The largest file `/v1/machines/{name}/files` moves either way (1 GiB):
/// the daemon answers 413 past it, and the CLI checks before it sends.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// The first message on an exec WebSocket (text, JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Allocate a terminal of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TermSize>,
    /// Whether the client will send stdin.
    #[serde(default)]
    pub stdin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// Control messages on an exec WebSocket (text, JSON), client to daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecControl {
    Resize(TermSize),
    Signal(i32),
    CloseStdin,
}

/// The last message on an exec WebSocket (text, JSON), daemon to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecEnd {
    Exit { code: Option<i32>, signal: Option<i32> },
    Error(ErrorDetail),
}

/// A machine saved to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub name: String,
    /// The machine it was taken from.
    pub machine: String,
    /// The host whose disk holds it, where it is restored; null for a
    /// snapshot from before hosts shared a store.
    #[serde(default)]
    pub host: Option<String>,
    pub image: String,
    pub backend: Backend,
    pub cpus: u32,
    pub memory_mib: u32,
    pub size_bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
}

/// `POST /v1/machines/{name}/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshot {
    /// The snapshot's name.
    pub name: String,
}

/// `POST /v1/snapshots/{name}/restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshot {
    /// The new machine's name; default: the machine the snapshot was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
