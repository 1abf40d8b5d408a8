//! The machine's main process: the image's entrypoint and command (or the
//! one given at `machine run -- CMD`), started after boot and supervised.
//!
//! The host passes a [`MainSpec`] on the kernel command line
//! (`hearth.main=`, see [`crate::cmdline`]). The agent runs it with the
//! spec's environment over its defaults, in its working directory (made if
//! missing, as Docker does), as its user (a name or `uid[:gid]`, looked up in
//! the guest's `/etc/passwd` and `/etc/group`). When it ends, the restart
//! policy decides: restarted after a delay that doubles from
//! [`FIRST_DELAY`] to [`MAX_DELAY`] (back to the first after a run of
//! [`RESET_AFTER`]), or left ended. Either way the machine keeps running:
//! it is a VM people exec into, not a container that dies with its process.
//!
//! Each start and each exit is a [`MainStatus`] sent to the host and
//! repeated after every `HelloAck`, so that a host that connects later (a
//! restarted daemon) learns the current state.
//!
//! Its output goes line by line to a [`LogTarget`]: the `hearth.main`
//! virtio-serial port, which QEMU writes to `main.log` on the host, each line
//! marked `out| ` or `err| `; where there is no such port (Firecracker), to
//! the console, each line prefixed with [`CONSOLE_PREFIX`], which the host
//! strips.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::protocol::{MainState, MainStatus, Response};
use crate::reaper::{self, Exit};
use crate::server::State;
use crate::session::DEFAULT_PATH;
use crate::{describe, lock, say};

/// The virtio-serial port the main process's output goes to.
pub const LOG_PORT: &str = "hearth.main";
/// What starts a main-process line on the console, where there is no
/// [`LOG_PORT`]; `out| ` or `err| ` follows.
pub const CONSOLE_PREFIX: &str = "hearth-main ";
/// The first delay before a restart.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay before a restart.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// A process that ran this long is restarted after [`FIRST_DELAY`] again.
pub const RESET_AFTER: Duration = Duration::from_secs(10);
/// How long [`LogTarget::open`] waits for the port to appear.
const PORT_WAIT: Duration = Duration::from_secs(3);
/// Longer output lines are cut into lines of this many bytes.
const MAX_LINE: usize = 4096;

/// When the main process is started again after it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never: it runs once.
    #[default]
    No,
    /// After a non-zero exit or a signal.
    OnFailure,
    /// Whenever it ends.
    Always,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" => Ok(Self::No),
            "on-failure" => Ok(Self::OnFailure),
            "always" => Ok(Self::Always),
            other => Err(format!("{other:?} is not a restart policy: use no, on-failure or always")),
        }
    }
}

/// What to run as the main process, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainSpec {
    pub argv: Vec<String>,
    /// `KEY=VALUE`, over the defaults (`PATH`, `HOME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The working directory; `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// A user name or uid, optionally `:group` (name or gid); root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub restart: RestartPolicy,
}

impl MainSpec {
    /// Just a command, run once as root in `/`.
    pub fn command(argv: Vec<String>) -> Self {
        Self { argv, ..Self::default() }
    }
}

/// Whether a process that ended with `exit` is started again under `policy`.
pub(crate) fn should_restart(policy: RestartPolicy, exit: Exit) -> bool {
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit.code != Some(0),
    }
}

/// The delay before the next start: the first one after a run of
/// [`RESET_AFTER`] or more, else double the previous, up to [`MAX_DELAY`].
pub(crate) fn next_delay(previous: Option<Duration>, ran: Duration) -> Duration {
    match previous {
        Some(delay) if ran < RESET_AFTER => (delay * 2).min(MAX_DELAY),
        _ => FIRST_DELAY,
    }
}

/// Who the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ids {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// From `/etc/passwd`, when the user is there.
    pub(crate) home: Option<String>,
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`, ...) against
/// the contents of `/etc/passwd` and `/etc/group`. A name that is not there
/// is an error; a number need not be (its group is then 0, as in Docker).
pub(crate) fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<Ids, String> {
    let (who, grp) = match user.split_once(':') {
        Some((who, grp)) => (who, Some(grp)),
        None => (user, None),
    };
    // name:password:uid:gid:gecos:home:shell
    let entries = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 6);
    let mut ids = match who.parse::<u32>() {
        Ok(uid) => {
            let entry = entries.clone().find(|f| f[2].parse() == Ok(uid));
            Ids {
                uid,
                gid: entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
                home: entry.map(|f| f[5].to_owned()),
            }
        }
        Err(_) => {
            let f = entries.clone().find(|f| f[0] == who).ok_or_else(|| {
                format!(
                    "the user {who:?} is not in the machine's /etc/passwd: give an existing user, or a uid"
                )
            })?;
            let number =
                |s: &str| s.parse::<u32>().map_err(|_| format!("/etc/passwd has a bad entry for {who:?}"));
            Ids { uid: number(f[2])?, gid: number(f[3])?, home: Some(f[5].to_owned()) }
        }
    };
    if let Some(grp) = grp {
        ids.gid = match grp.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == grp)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("the group {grp:?} is not in the machine's /etc/group: give an existing group, or a gid")
                })?,
        };
    }
    Ok(ids)
}

/// Where the main process's output goes.
#[derive(Debug)]
pub enum LogTarget {
    /// The [`LOG_PORT`] virtio-serial port, opened.
    Port(Mutex<File>),
    /// Our stderr (the console as PID 1), lines prefixed [`CONSOLE_PREFIX`].
    Console,
}

impl LogTarget {
    /// The [`LOG_PORT`] if this machine has one (waiting a little for the
    /// kernel to probe it), else the console.
    pub fn open() -> Self {
        let started = Instant::now();
        loop {
            match crate::transport::open_virtio_port(LOG_PORT) {
                Ok(port) => return Self::Port(Mutex::new(port)),
                Err(_) if started.elapsed() < PORT_WAIT => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    say(&format!("main process output goes to the console: {}", describe(&e)));
                    return Self::Console;
                }
            }
        }
    }

    /// Writes one line, marked with its stream (`out` or `err`), in one write.
    fn line(&self, stream: &str, text: &[u8]) {
        let mut line = Vec::with_capacity(text.len() + 16);
        if let Self::Console = self {
            line.extend_from_slice(CONSOLE_PREFIX.as_bytes());
        }
        line.extend_from_slice(stream.as_bytes());
        line.extend_from_slice(b"| ");
        line.extend_from_slice(text);
        line.push(b'\n');
        let written = match self {
            Self::Port(port) => lock(port).write_all(&line),
            Self::Console => io::stderr().lock().write_all(&line),
        };
        if let Err(e) = written {
            say(&format!("a line of the main process's output was lost: {}", describe(&e)));
        }
    }
}

/// Starts the supervisor thread of `spec`, which first opens its log
/// (waiting for a port to appear takes time the boot should not wait), then
/// waits for the first config if told to (see [`crate::config`]).
pub(crate) fn supervise(state: Arc<State>, spec: MainSpec, log: impl FnOnce() -> LogTarget + Send + 'static) {
    let spawned = std::thread::Builder::new().name("main".into()).spawn(move || {
        let log = Arc::new(log());
        state.config.hold_main();
        run(&state, &spec, &log)
    });
    if let Err(e) = spawned {
        say(&format!("cannot start the main process's supervisor: {}", describe(&e)));
    }
}

fn report(state: &State, status: MainStatus) {
    let event = Response::Main(status);
    *lock(&state.main_status) = Some(event.clone());
    state.send(None, event);
}

fn run(state: &State, spec: &MainSpec, log: &Arc<LogTarget>) {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let mut restarts = 0;
    let mut delay = None;
    loop {
        let started = Instant::now();
        let (pid, exits) = match start(spec, log) {
            Ok(started) => started,
            Err(message) => {
                let message = format!("cannot start the main process {program:?}: {message}");
                say(&message);
                report(
                    state,
                    MainStatus {
                        state: MainState::FailedToStart,
                        restarts,
                        error: Some(message),
                        ..Default::default()
                    },
                );
                return;
            }
        };
        say(&format!("main process {program:?} started (pid {pid})"));
        report(
            state,
            MainStatus { state: MainState::Running, pid: Some(pid), restarts, ..Default::default() },
        );
        let Ok(exit) = exits.recv() else { return };
        match (exit.code, exit.signal) {
            (Some(code), _) => say(&format!("main process exited with code {code}")),
            (_, Some(signal)) => say(&format!("main process was killed by signal {signal}")),
            _ => say("main process ended"),
        }
        let ended = |state| MainStatus {
            state,
            pid: Some(pid),
            code: exit.code,
            signal: exit.signal,
            restarts,
            error: None,
        };
        if !should_restart(spec.restart, exit) {
            report(state, ended(MainState::Exited));
            return;
        }
        let wait = next_delay(delay, started.elapsed());
        delay = Some(wait);
        report(state, ended(MainState::Restarting));
        std::thread::sleep(wait);
        restarts += 1;
    }
}

/// Spawns the process with its output pumped into `log`.
fn start(spec: &MainSpec, log: &Arc<LogTarget>) -> Result<(u32, std::sync::mpsc::Receiver<Exit>), String> {
    let program = spec.argv.first().ok_or("the command is empty")?;
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..]).env_clear().env("PATH", DEFAULT_PATH).env("HOME", "/root");
    if let Some(user) = &spec.user {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let ids = resolve_user(user, &read("/etc/passwd"), &read("/etc/group"))?;
        cmd.uid(ids.uid).gid(ids.gid);
        if let Some(home) = ids.home {
            cmd.env("HOME", home);
        }
    }
    for pair in &spec.env {
        match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => cmd.env(key, value),
            _ => cmd.env(pair, ""),
        };
    }
    let workdir = spec.workdir.as_deref().unwrap_or("/");
    std::fs::create_dir_all(workdir)
        .map_err(|e| format!("cannot make its working directory {workdir}: {}", describe(&e)))?;
    cmd.current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let (mut child, exits) = reaper::global().spawn(&mut cmd).map_err(|e| describe(&e))?;
    for (stream, pipe) in [
        ("out", child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        ("err", child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
    ] {
        let (Some(pipe), log) = (pipe, log.clone()) else { continue };
        let _ = std::thread::Builder::new()
            .name(format!("main-{stream}"))
            .spawn(move || pump(pipe, stream, &log));
    }
    Ok((child.id(), exits))
}

/// Copies `pipe` into `log` line by line until it closes.
fn pump(mut pipe: impl Read, stream: &str, log: &LogTarget) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        for line in take_lines(&mut pending, MAX_LINE) {
            log.line(stream, &line);
        }
    }
    if !pending.is_empty() {
        log.line(stream, &pending);
    }
}

/// Removes the complete lines (without their newline) from the front of
/// `pending`, cutting any longer than `max` bytes.
fn take_lines(pending: &mut Vec<u8>, max: usize) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    loop {
        match pending.iter().position(|b| *b == b'\n') {
            Some(end) if end <= max => {
                lines.push(pending[..end].to_vec());
                pending.drain(..=end);
            }
            _ if pending.len() >= max => lines.push(pending.drain(..max).collect()),
            _ => return lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn exit(code: Option<i32>, signal: Option<i32>) -> Exit {
        Exit { code, signal }
    }

    #[test]
    fn on_failure_restarts_after_a_non_zero_exit_or_a_signal_only() {
        let policy = RestartPolicy::OnFailure;
        assert!(!should_restart(policy, exit(Some(0), None)));
        assert!(should_restart(policy, exit(Some(3), None)));
        assert!(should_restart(policy, exit(None, Some(9))));
    }

    #[test]
    fn always_restarts_and_no_never_does() {
        for ended in [exit(Some(0), None), exit(Some(1), None), exit(None, Some(15))] {
            assert!(should_restart(RestartPolicy::Always, ended));
            assert!(!should_restart(RestartPolicy::No, ended));
        }
    }

    #[test]
    fn the_delay_doubles_from_100_ms_up_to_10_s() {
        let quick = Duration::from_millis(5);
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let next = next_delay(delay, quick);
            seen.push(next.as_millis());
            delay = Some(next);
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]);
    }

    #[test]
    fn the_delay_starts_over_after_a_run_of_10_s() {
        assert_eq!(next_delay(Some(MAX_DELAY), RESET_AFTER), FIRST_DELAY);
        assert_eq!(next_delay(Some(MAX_DELAY), RESET_AFTER - Duration::from_millis(1)), MAX_DELAY);
    }

    #[test]
    fn a_restart_policy_parses_from_its_name_and_says_what_is_valid() {
        for policy in [RestartPolicy::No, RestartPolicy::OnFailure, RestartPolicy::Always] {
            assert_eq!(policy.as_str().parse::<RestartPolicy>(), Ok(policy));
        }
        let err = "sometimes".parse::<RestartPolicy>().unwrap_err();
        assert!(err.contains("no, on-failure or always"), "{err}");
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nweb:x:101:102::/srv/web:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\nweb:x:102:\n";

    #[test]
    fn users_resolve_by_name_or_number_with_an_optional_group() {
        let ids = |user| resolve_user(user, PASSWD, GROUP).map(|i| (i.uid, i.gid, i.home));
        assert_eq!(ids("web"), Ok((101, 102, Some("/srv/web".into()))));
        assert_eq!(ids("101"), Ok((101, 102, Some("/srv/web".into()))));
        assert_eq!(ids("1234"), Ok((1234, 0, None)), "a uid need not be in /etc/passwd");
        assert_eq!(ids("web:staff"), Ok((101, 50, Some("/srv/web".into()))));
        assert_eq!(ids("nobody:7"), Ok((65534, 7, Some("/nonexistent".into()))));
    }

    #[test]
    fn a_user_or_group_that_does_not_exist_is_a_clear_error() {
        let err = resolve_user("ghost", PASSWD, GROUP).unwrap_err();
        assert!(err.contains("\"ghost\" is not in the machine's /etc/passwd"), "{err}");
        let err = resolve_user("web:ghosts", PASSWD, GROUP).unwrap_err();
        assert!(err.contains("\"ghosts\" is not in the machine's /etc/group"), "{err}");
    }

    #[test]
    fn output_is_cut_into_lines_and_long_lines_into_pieces() {
        let mut pending = b"one\ntwo\nthr".to_vec();
        assert_eq!(take_lines(&mut pending, 8), [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(pending, b"thr");
        let mut pending = b"0123456789ab\nc".to_vec();
        assert_eq!(take_lines(&mut pending, 5), [b"01234".to_vec(), b"56789".to_vec(), b"ab".to_vec()]);
        assert_eq!(pending, b"c");
    }
}
