//! The machine's config, pushed by the host.
//!
//! The host sends the machine's merged config in a `Config` request; the
//! agent keeps it in two files of its config directory ([`DIR`],
//! `/run/hearth`): [`JSON_FILE`] and [`ENV_FILE`], mode 0600, owned by the
//! user the main process runs as (root when it has none). Each is
//! replaced atomically (a temporary file in the same directory, synced,
//! renamed over the old one, and the directory synced), so a reader sees
//! the old file or the new one, never a mix. When both files already hold
//! exactly what was sent, nothing is written and nothing reloaded: a host
//! that reconnects and sends the same config again changes nothing.
//!
//! After a change the agent runs the machine's reload action, given by the
//! host at boot (`hearth.config_reload=`, see [`crate::cmdline`]): a
//! [`Reload::Signal`] sent to the main process, or a [`Reload::Command`]
//! run with `/bin/sh -c`, for at most [`RELOAD_TIMEOUT`], its output's last
//! [`OUTPUT_TAIL`] bytes reported. Never for the first config after boot:
//! the main process reads that one when it starts. With `hearth.config=1`
//! the main process waits for that first config, at most [`HOLD`].
//!
//! Reloads run one at a time, in the order their configs came, on a thread
//! of their own: the request loop goes on serving while a slow reload runs,
//! and the `ConfigApplied` answer follows the reload.

use std::fs::{self, File, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::protocol::{MainState, ReloadOutcome, Response};
use crate::server::State;
use crate::session::DEFAULT_PATH;
use crate::{describe, lock, reaper, say};

/// Where the config files live in a machine.
pub const DIR: &str = "/run/hearth";
/// The merged config as JSON.
pub const JSON_FILE: &str = "config.json";
/// The merged config as `KEY=VALUE` lines.
pub const ENV_FILE: &str = "config.env";
/// How long the main process waits for its first config (`hearth.config=1`).
pub const HOLD: Duration = Duration::from_secs(10);
/// How long a reload command may run before it is killed.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a reload command's output is reported: its end.
pub const OUTPUT_TAIL: usize = 4096;
/// The longest reload command.
pub const MAX_COMMAND: usize = 4096;
/// How long the output of a reload command that exited is still read:
/// a process it left in the background may hold the pipe open.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// What the agent does after the config changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Send this signal to the main process.
    Signal(Signal),
    /// Run this with `/bin/sh -c`.
    Command(String),
}

impl Reload {
    /// Reads a reload action as a person gives it (`SIGHUP`, `nginx -s
    /// reload`). A word that looks like a signal name must be one: a typo
    /// such as `SIGHPU` is refused, not run as a command.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("the reload action is empty: give a signal such as SIGHUP, or a command".into());
        }
        if text.contains('\0') {
            return Err("the reload command contains a NUL byte".into());
        }
        if text.len() > MAX_COMMAND {
            return Err(format!(
                "the reload command is {} bytes, over the {MAX_COMMAND} allowed: put it in a script in the image and give its path",
                text.len()
            ));
        }
        let looks_like_signal = text.strip_prefix("SIG").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        });
        if looks_like_signal {
            return Signal::from_str(text).map(Self::Signal).map_err(|_| {
                format!(
                    "{text} is not a signal name: give one such as SIGHUP, SIGUSR1 or SIGUSR2, or a command"
                )
            });
        }
        Ok(Self::Command(text.to_owned()))
    }

    /// The action as [`parse`](Self::parse) reads it.
    pub fn as_text(&self) -> String {
        match self {
            Self::Signal(signal) => signal.as_str().to_owned(),
            Self::Command(command) => command.clone(),
        }
    }
}

/// Where the config goes and what follows a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The directory of [`JSON_FILE`] and [`ENV_FILE`].
    pub dir: PathBuf,
    /// What to do after a change.
    pub reload: Option<Reload>,
    /// Hold the main process until the first config came, at most this long.
    pub hold: Option<Duration>,
    /// How long a reload command may run.
    pub reload_timeout: Duration,
    /// The main process's user (`name`, `uid[:gid]`, ...), who owns the
    /// files; root when `None`.
    pub owner: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DIR),
            reload: None,
            hold: None,
            reload_timeout: RELOAD_TIMEOUT,
            owner: None,
        }
    }
}

/// The config's side of the server's state.
#[derive(Debug)]
pub(crate) struct Config {
    options: Options,
    /// Whether a config was applied since the agent started.
    applied: Mutex<bool>,
    applied_cv: Condvar,
    /// The reload thread's queue, started on first use.
    reloads: Mutex<Option<Sender<Job>>>,
}

/// A reload to run, and the answer to send after it.
#[derive(Debug)]
struct Job {
    epoch: u64,
    id: u32,
    revision: u64,
}

impl Config {
    pub(crate) fn new(options: Options) -> Self {
        Self { options, applied: Mutex::new(false), applied_cv: Condvar::new(), reloads: Mutex::new(None) }
    }

    /// Waits (if told to hold the main process) until the first config was
    /// applied, or the hold's time is up.
    pub(crate) fn hold_main(&self) {
        let Some(hold) = self.options.hold else { return };
        let applied = lock(&self.applied);
        let (applied, _) = self
            .applied_cv
            .wait_timeout_while(applied, hold, |applied| !*applied)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !*applied {
            say(&format!(
                "no config came from the host within {} s; starting the main process without it",
                hold.as_secs_f64()
            ));
        }
    }
}

/// Handles a `Config` request: writes the files, then answers at once, or
/// after the reload when one is due.
pub(crate) fn apply(
    state: &Arc<State>,
    epoch: u64,
    id: u32,
    json: &[u8],
    env: &[u8],
    revision: u64,
) -> Result<(), String> {
    let config = &state.config;
    let owner = match &config.options.owner {
        Some(user) => {
            let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
            let ids = crate::main_process::resolve_user(user, &read("/etc/passwd"), &read("/etc/group"))
                .map_err(|why| format!("cannot give the config files to the main process's user: {why}"))?;
            Some((ids.uid, ids.gid))
        }
        None => None,
    };
    let changed = write_files(&config.options.dir, json, env, owner).map_err(|e| {
        format!("cannot write the config into {}: {}", config.options.dir.display(), describe(&e))
    })?;
    let first = {
        let mut applied = lock(&config.applied);
        !std::mem::replace(&mut *applied, true)
    };
    config.applied_cv.notify_all();
    if !changed || first || config.options.reload.is_none() {
        state.send(Some(epoch), Response::ConfigApplied { id, revision, changed, reload: None });
        return Ok(());
    }
    let mut reloads = lock(&config.reloads);
    if reloads.is_none() {
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = state.clone();
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                while let Ok(Job { epoch, id, revision }) = rx.recv() {
                    let reload = reload(&worker);
                    worker.send(Some(epoch), Response::ConfigApplied { id, revision, changed: true, reload });
                }
            })
            .map_err(|e| format!("the config is in place, but the reload thread cannot start: {e}"))?;
        *reloads = Some(tx);
    }
    let queued = reloads.as_ref().map(|tx| tx.send(Job { epoch, id, revision }));
    match queued {
        Some(Ok(())) => Ok(()),
        _ => Err("the config is in place, but the reload thread is gone".into()),
    }
}

/// Runs the reload action, if any.
fn reload(state: &State) -> Option<ReloadOutcome> {
    let options = &state.config.options;
    let outcome = match options.reload.as_ref()? {
        Reload::Signal(signal) => send_signal(*signal, main_pid(state)),
        Reload::Command(command) => run_command(command, &options.dir, options.reload_timeout),
    };
    match &outcome.error {
        Some(error) => say(&format!("the config changed; the reload failed: {error}")),
        None => say(&format!("the config changed; reloaded ({})", outcome.action)),
    }
    Some(outcome)
}

/// The main process's pid while it runs.
fn main_pid(state: &State) -> Option<u32> {
    match &*lock(&state.main_status) {
        Some(Response::Main(status)) if status.state == MainState::Running => status.pid,
        _ => None,
    }
}

fn send_signal(signal: Signal, pid: Option<u32>) -> ReloadOutcome {
    let started = Instant::now();
    let name = signal.as_str();
    let (action, error) = match pid {
        None => (
            format!("{name} to the main process"),
            Some(format!("no main process runs; {name} was not sent")),
        ),
        Some(pid) => {
            let action = format!("{name} to the main process (pid {pid})");
            match reaper::global().signal(pid, signal, false) {
                Ok(true) => (action, None),
                Ok(false) => (action, Some(format!("the main process had ended; {name} was not sent"))),
                Err(e) => (action, Some(format!("cannot send {name}: {}", e.desc()))),
            }
        }
    };
    ReloadOutcome { action, error, millis: started.elapsed().as_millis() as u64, ..Default::default() }
}

/// Runs `command` with `/bin/sh -c`, its stdout and stderr into one pipe
/// whose last [`OUTPUT_TAIL`] bytes are kept; killed (with its process
/// group) after `timeout`.
fn run_command(command: &str, dir: &Path, timeout: Duration) -> ReloadOutcome {
    let started = Instant::now();
    let mut outcome = ReloadOutcome { action: format!("/bin/sh -c {command:?}"), ..Default::default() };
    let finish = |mut outcome: ReloadOutcome, error: Option<String>| {
        outcome.error = error;
        outcome.millis = started.elapsed().as_millis() as u64;
        outcome
    };
    let (reader, writer) = match nix::unistd::pipe() {
        Ok(pipe) => pipe,
        Err(e) => return finish(outcome, Some(format!("cannot make a pipe: {}", e.desc()))),
    };
    let (child, exits) = {
        let mut cmd = Command::new("/bin/sh");
        let stderr = match writer.try_clone() {
            Ok(fd) => fd,
            Err(e) => return finish(outcome, Some(format!("cannot make a pipe: {}", describe(&e)))),
        };
        cmd.arg("-c")
            .arg(command)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .env("HOME", "/root")
            .env("HEARTH_CONFIG_JSON", dir.join(JSON_FILE))
            .env("HEARTH_CONFIG_ENV", dir.join(ENV_FILE))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        match reaper::global().spawn(&mut cmd) {
            Ok(spawned) => spawned,
            Err(e) => return finish(outcome, Some(format!("cannot run /bin/sh: {}", describe(&e)))),
        }
        // `cmd` drops here with our copies of the pipe's write end, so the
        // reader sees its end once the command's processes are gone.
    };
    let tail = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    {
        let (tail, mut pipe) = (tail.clone(), File::from(reader));
        let spawned = std::thread::Builder::new().name("reload-output".into()).spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                keep_tail(&mut lock(&tail), &buf[..n], OUTPUT_TAIL);
            }
            let _ = done_tx.send(());
        });
        if let Err(e) = spawned {
            say(&format!("the reload command's output is not read: {e}"));
        }
    }
    let pid = child.id();
    drop(child);
    let error = match exits.recv_timeout(timeout) {
        Ok(exit) => {
            outcome.code = exit.code;
            outcome.signal = exit.signal;
            match (exit.code, exit.signal) {
                (Some(0), _) => None,
                (Some(code), _) => Some(format!("the reload command exited with code {code}")),
                (_, Some(signal)) => Some(format!("the reload command was killed by signal {signal}")),
                _ => Some("the reload command ended".into()),
            }
        }
        Err(_) => {
            let _ = reaper::global().signal(pid, Signal::SIGKILL, true);
            if let Ok(exit) = exits.recv_timeout(Duration::from_secs(5)) {
                outcome.signal = exit.signal;
            }
            Some(format!(
                "the reload command did not finish within {} s and was killed",
                timeout.as_secs_f64()
            ))
        }
    };
    let _ = done_rx.recv_timeout(OUTPUT_GRACE);
    outcome.output = lock(&tail).clone();
    finish(outcome, error)
}

/// Appends `data` to `tail`, keeping its last `max` bytes.
fn keep_tail(tail: &mut Vec<u8>, data: &[u8], max: usize) {
    tail.extend_from_slice(data);
    if tail.len() > max {
        tail.drain(..tail.len() - max);
    }
}

/// Writes the files that differ from `json` and `env` (or whose owner is
/// not `owner`), owned by `owner`; false when neither was written.
pub(crate) fn write_files(
    dir: &Path,
    json: &[u8],
    env: &[u8],
    owner: Option<(u32, u32)>,
) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let differs = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        let owned =
            owner.is_none_or(|wanted| fs::metadata(&path).is_ok_and(|m| (m.uid(), m.gid()) == wanted));
        !owned || fs::read(&path).map_or(true, |old| old != bytes)
    };
    let writes: Vec<(&str, &[u8])> = [(JSON_FILE, json), (ENV_FILE, env)]
        .into_iter()
        .filter(|(name, bytes)| differs(name, bytes))
        .collect();
    if writes.is_empty() {
        return Ok(false);
    }
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, Permissions::from_mode(0o755))?;
    for (name, bytes) in writes {
        crate::files::replace_file_owned(&dir.join(name), bytes, 0o600, owner)?;
    }
    // Makes the renames durable.
    File::open(dir)?.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn reload_actions_parse_as_signals_or_commands() {
        assert_eq!(Reload::parse("SIGHUP"), Ok(Reload::Signal(Signal::SIGHUP)));
        assert_eq!(Reload::parse("SIGUSR1"), Ok(Reload::Signal(Signal::SIGUSR1)));
        assert_eq!(Reload::parse("nginx -s reload"), Ok(Reload::Command("nginx -s reload".into())));
        assert_eq!(Reload::parse("SIGHUP x"), Ok(Reload::Command("SIGHUP x".into())));
        let typo = Reload::parse("SIGHPU").unwrap_err();
        assert!(typo.contains("SIGHPU is not a signal name"), "{typo}");
        assert!(Reload::parse(" ").unwrap_err().contains("empty"));
        assert!(Reload::parse("a\0b").unwrap_err().contains("NUL"));
        assert!(Reload::parse(&"x".repeat(MAX_COMMAND + 1)).unwrap_err().contains("over the 4096"));
        for text in ["SIGHUP", "kill -HUP 1 && echo 'done'"] {
            assert_eq!(Reload::parse(text).unwrap().as_text(), text);
        }
    }

    #[test]
    fn the_files_belong_to_the_main_process_s_user() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join("hearth");
        let written = write_files(&dir, b"{}", b"", Some((4321, 4322)));
        if !nix::unistd::geteuid().is_root() {
            // Only root gives files away: the attempt is what is checked.
            let error = written.unwrap_err();
            assert_eq!(error.raw_os_error(), Some(nix::libc::EPERM), "{error}");
            return;
        }
        assert!(written.unwrap());
        for name in [JSON_FILE, ENV_FILE] {
            let meta = fs::metadata(dir.join(name)).unwrap();
            assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (4321, 4322, 0o600), "{name}");
        }
        // The same config again, same owner: nothing to write.
        assert!(!write_files(&dir, b"{}", b"", Some((4321, 4322))).unwrap());
        // Another owner: written again, for the new one.
        assert!(write_files(&dir, b"{}", b"", Some((4323, 4323))).unwrap());
        assert_eq!(fs::metadata(dir.join(JSON_FILE)).unwrap().uid(), 4323);
    }

    #[test]
    fn the_files_are_replaced_whole_with_mode_0600_and_no_temporary_file_left() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run/hearth");
        assert!(write_files(&dir, b"{\"a\":1}", b"A=1\n", None).unwrap());
        assert_eq!(fs::read(dir.join(JSON_FILE)).unwrap(), b"{\"a\":1}");
        assert_eq!(fs::read(dir.join(ENV_FILE)).unwrap(), b"A=1\n");
        for name in [JSON_FILE, ENV_FILE] {
            assert_eq!(fs::metadata(dir.join(name)).unwrap().mode() & 0o7777, 0o600, "{name}");
        }
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o755);
        // A new inode each time: a reader holding the old file keeps it whole.
        let before = fs::metadata(dir.join(JSON_FILE)).unwrap().ino();
        assert!(write_files(&dir, b"{}", b"A=1\n", None).unwrap());
        assert_ne!(fs::metadata(dir.join(JSON_FILE)).unwrap().ino(), before);
        let mut names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, [ENV_FILE, JSON_FILE]);
    }

    #[test]
    fn the_same_bytes_again_write_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        assert!(write_files(dir, b"{}", b"", None).unwrap());
        let inodes = |dir: &Path| {
            [JSON_FILE, ENV_FILE].map(|name| {
                let meta = fs::metadata(dir.join(name)).unwrap();
                (meta.ino(), meta.mtime_nsec())
            })
        };
        let before = inodes(dir);
        assert!(!write_files(dir, b"{}", b"", None).unwrap());
        assert_eq!(inodes(dir), before, "nothing was rewritten");
        // Only the file that differs is replaced.
        assert!(write_files(dir, b"{}", b"B=2\n", None).unwrap());
        let after = inodes(dir);
        assert_eq!(after[0], before[0]);
        assert_ne!(after[1], before[1]);
    }

    #[test]
    fn the_output_tail_keeps_the_last_bytes() {
        let mut tail = Vec::new();
        keep_tail(&mut tail, b"abcdef", 4);
        assert_eq!(tail, b"cdef");
        keep_tail(&mut tail, b"gh", 4);
        assert_eq!(tail, b"efgh");
    }
}
