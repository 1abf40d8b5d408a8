//! A machine's record in the store, at `machines/NAME`: what the user asked
//! for (the spec and the desired state) and what hearth observed (the status).
//!
//! The API writes the spec and the desired state; the machines service
//! writes the status. Both update with compare-and-swap on the record's
//! revision, so neither overwrites the other.

use serde::{Deserialize, Serialize};

use crate::vmm::Backend;

pub use hearth_agent::main_process::RestartPolicy;

/// The store prefix of machine records.
pub const PREFIX: &str = "machines/";

/// The store key of a machine's record.
pub fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// A machine, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub name: String,
    /// The host that runs the machine, and keeps its disk: only that host's
    /// machines service acts on the VM. `None` in records made before hosts
    /// shared a store; the first service that may take such a record writes
    /// its own name in (see `service::hosts`).
    #[serde(default)]
    pub host: Option<String>,
    pub spec: Spec,
    pub desired: Desired,
    pub status: Status,
    /// Unix seconds.
    pub created_at: u64,
}

/// What the user asked for when creating the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// The image as the user named it.
    pub image: String,
    /// The image's digest, pinned at creation.
    pub image_digest: String,
    pub backend: Backend,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The main process, started at boot (from the image's `Entrypoint`
    /// and `Cmd`, or `-- CMD`), if any.
    pub entrypoint: Vec<String>,
    /// Environment for the main process and for `exec`, `KEY=VALUE`: the
    /// image's, overridden by `--env`.
    pub env: Vec<String>,
    /// The main process's working directory (the image's `WorkingDir` or
    /// `--workdir`); `/` when absent.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Who the main process runs as (the image's `User` or `--user`): a
    /// name or `uid[:gid]` of the guest; root when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// When the agent starts the main process again after it ended.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A user-supplied kernel instead of the default.
    pub kernel: Option<String>,
    /// Remove the machine when it stops.
    pub auto_remove: bool,
    /// Network interfaces, one per network, with their addresses.
    #[serde(default)]
    pub nics: Vec<hearth_net::record::Nic>,
    /// Ports forwarded from the host's loopback.
    #[serde(default)]
    pub ports: Vec<hearth_net::service::PortSpec>,
    /// The root disk's size in MiB; the guest grows its root file system to
    /// fill it. `None`: the image's own size (and records from before
    /// `--disk-size`, whose disks are that size).
    #[serde(default)]
    pub disk_mib: Option<u64>,
    /// What the agent does after the machine's config changed: a signal
    /// name sent to the main process (`SIGHUP`), or a command run with
    /// `/bin/sh -c` (see [`validate_on_config_change`]). Nothing when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_config_change: Option<String>,
    /// Seconds without a connection (through its forwarded ports, or a
    /// lookup of its name) after which the running machine is put to
    /// sleep: its memory and devices saved to its directory and its VM
    /// stopped, to be woken by the next connection. Never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_after_secs: Option<u64>,
}

/// The state the user wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
    /// Saved to disk with its VM stopped, until something wakes it (see
    /// `service::sleep`).
    Sleeping,
}

/// What hearth last observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    /// What is happening now, while starting or stopping ("booting the kernel").
    pub phase: Option<String>,
    /// Why the machine is stopped or failed, as a sentence with what to do.
    pub reason: Option<String>,
    /// The VMM process.
    pub pid: Option<u32>,
    /// Milliseconds from launch to the agent's answer, for the last boot.
    pub boot_ms: Option<u64>,
    /// The guest's kernel release, from the agent.
    pub kernel: Option<String>,
    /// Unix seconds of the last start.
    pub started_at: Option<u64>,
    /// The main process, as the agent last reported it; absent until it
    /// did, and for machines without one.
    #[serde(default)]
    pub main: Option<MainProcess>,
    /// The config in the machine's `/run/hearth`, once one was pushed
    /// this boot (only while a config feed is set).
    #[serde(default)]
    pub config: Option<ConfigStatus>,
}

/// The config a machine's agent holds, as the record keeps it. Written when
/// the agent's files changed (or a reload's outcome did), not for every
/// config revision: a revision that leaves this machine's config as it was
/// is not one it needs to hear about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The config revision whose content the machine's files hold.
    pub revision: u64,
    /// Unix seconds (the host's clock) when the files last changed.
    pub applied_at: u64,
    /// Why the last reload failed; `None` once one succeeded, or when none ran.
    pub reload_error: Option<String>,
}

/// The main process's state in the record, from the agent's reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainProcess {
    pub state: MainState,
    /// Its pid in the guest (the last one, once it ended).
    pub pid: Option<u32>,
    /// How its last run ended: an exit code, or a signal.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// How many times the agent started it again.
    pub restarts: u32,
    /// Unix seconds (the host's clock) of its last start.
    pub started_at: Option<u64>,
    /// Why it could not start.
    pub error: Option<String>,
}

/// Where the main process is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MainState {
    #[default]
    Running,
    /// Ended, not to be restarted (under its policy); the machine runs on.
    Exited,
    /// Ended, and about to be started again.
    Restarting,
    /// Could not start (no such program or user); not retried.
    FailedToStart,
}

impl MainState {
    pub fn as_str(self) -> &'static str {
        match self {
            MainState::Running => "running",
            MainState::Exited => "exited",
            MainState::Restarting => "restarting",
            MainState::FailedToStart => "failed-to-start",
        }
    }
}

impl MainProcess {
    /// The record's view of an agent report. `previous` keeps the start
    /// time of the same run: the agent repeats its last report after every
    /// reconnection, which is not a new start.
    pub fn from_report(report: &hearth_agent::protocol::MainStatus, previous: Option<&MainProcess>) -> Self {
        use hearth_agent::protocol::MainState as Agent;
        let state = match report.state {
            Agent::Running => MainState::Running,
            Agent::Exited => MainState::Exited,
            Agent::Restarting => MainState::Restarting,
            Agent::FailedToStart => MainState::FailedToStart,
        };
        let same_run = previous.is_some_and(|p| p.pid == report.pid && p.restarts == report.restarts);
        let started_at = match previous {
            Some(p) if same_run => p.started_at,
            _ if state == MainState::Running => Some(now_unix()),
            _ => previous.and_then(|p| p.started_at),
        };
        Self {
            state,
            pid: report.pid,
            exit_code: report.code,
            signal: report.signal,
            restarts: report.restarts,
            started_at,
            error: report.error.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded, not yet started.
    #[default]
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// Its host stopped answering (see [`crate::mark_host_lost`]): whether
    /// the VM still runs is unknown, and its disk is out of reach until the
    /// host is back, whose service then boots it again or stops it.
    Lost,
    /// Its memory and devices are saved in its directory and no VM runs:
    /// the next connection, `hearth machine wake` or a trigger resumes it
    /// where it was.
    Sleeping,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Lost => "lost",
            State::Sleeping => "sleeping",
        }
    }

    /// The machine has no VM process and none is being started.
    pub fn is_down(self) -> bool {
        matches!(self, State::Stopped | State::Failed)
    }
}

/// The store prefix of snapshot records.
pub const SNAPSHOT_PREFIX: &str = "snapshots/";

/// The store key of a snapshot's record.
pub fn snapshot_key(name: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{name}")
}

/// A machine saved to disk: its memory and device state, and its disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    /// The machine it was taken from.
    pub machine: String,
    /// The host whose disk holds the snapshot's files (in
    /// `DATA_DIR/snapshots/NAME`): the machine's host when it was taken. A
    /// restore runs there. `None` for snapshots from before hosts shared a
    /// store, taken as this host's.
    #[serde(default)]
    pub host: Option<String>,
    /// The machine's spec: a restore must recreate the same virtual hardware.
    pub spec: Spec,
    /// Bytes on disk (state and disk overlay).
    pub size_bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
}

/// Checks a reload action (`--on-config-change`): a signal name such as
/// `SIGHUP`, or a command (no NUL, at most 4096 bytes) that fits on the
/// guest's kernel command line.
pub fn validate_on_config_change(action: &str) -> Result<(), String> {
    use hearth_agent::cmdline::{MAX_RELOAD, encode_reload};
    let reload = hearth_agent::config::Reload::parse(action)?;
    let encoded = encode_reload(&reload).len();
    if encoded > MAX_RELOAD {
        return Err(format!(
            "the reload command takes {encoded} bytes on the guest's kernel command line, over the {MAX_RELOAD} \
             hearth allows: put it in a script in the image and give the script's path"
        ));
    }
    Ok(())
}

/// Checks a machine name: it becomes a host name and a directory name.
pub fn validate_name(name: &str) -> Result<(), String> {
    hearth_store::names::check_label("machine", name, 63)
}

/// Checks the name of a host a machine runs on: a DNS label, as
/// `hearth serve --host-name` takes.
pub fn validate_host(name: &str) -> Result<(), String> {
    hearth_store::names::check_label("host", name, 63)
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_from_before_main_processes_still_parses() {
        let old = r#"{"name":"n1","spec":{"image":"debian:bookworm","image_digest":"sha256:0","backend":"qemu-tcg",
            "cpus":1,"memory_mib":512,"entrypoint":[],"env":[],"kernel":null,"auto_remove":false},
            "desired":"running","status":{"state":"running","phase":null,"reason":null,"pid":7,
            "boot_ms":null,"kernel":null,"started_at":null},"created_at":0}"#;
        let rec: MachineRecord = serde_json::from_str(old).expect("an old record parses");
        assert_eq!((rec.spec.restart, rec.spec.user, rec.status.main), (RestartPolicy::No, None, None));
        assert_eq!(rec.host, None, "a record from before hosts has none");
    }

    #[test]
    fn a_repeated_report_keeps_its_start_time_and_a_new_run_gets_one() {
        use hearth_agent::protocol::{MainState as Agent, MainStatus};
        let running = MainStatus { state: Agent::Running, pid: Some(40), ..Default::default() };
        let first = MainProcess { started_at: Some(1), ..MainProcess::from_report(&running, None) };
        let again = MainProcess::from_report(&running, Some(&first));
        assert_eq!(again.started_at, Some(1), "a reconnection's repeat is not a new start");
        let exited = MainStatus { state: Agent::Restarting, code: Some(3), ..running.clone() };
        let ended = MainProcess::from_report(&exited, Some(&again));
        assert_eq!(
            (ended.state, ended.exit_code, ended.started_at),
            (MainState::Restarting, Some(3), Some(1))
        );
        let next = MainStatus { pid: Some(41), restarts: 1, ..running };
        let restarted = MainProcess::from_report(&next, Some(&ended));
        assert!(restarted.started_at > Some(1), "{restarted:?}");
    }

    #[test]
    fn reload_actions_are_signals_or_commands_that_fit_the_command_line() {
        for good in ["SIGHUP", "SIGUSR2", "nginx -s reload", "kill -HUP $(cat /run/app.pid)"] {
            assert_eq!(validate_on_config_change(good), Ok(()), "{good}");
        }
        let refused = |action: &str| validate_on_config_change(action).unwrap_err();
        assert!(refused("SIGHUPP").contains("not a signal name"));
        assert!(refused("").contains("empty"));
        assert!(refused("a\0b").contains("NUL"));
        assert!(refused(&"x".repeat(4097)).contains("over the 4096"));
        assert!(refused(&"x".repeat(400)).contains("put it in a script"));
    }

    #[test]
    fn names_are_host_names() {
        for good in ["n1", "raft-node-3", "a", &"x".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "N1", "-a", "a-", "a_b", "a.b", "a/b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
