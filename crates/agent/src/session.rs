//! Exec sessions: one process each, its output pumped to the host, its exit
//! reported after all of its output.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::protocol::{MAX_CHUNK, Response};
use crate::reaper::{self, Exit};
use crate::server::State;
use crate::{describe, lock, tty};

/// The environment every session starts from; the request's `env` is added.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long the pump waits for a process before checking whether it exited.
const EXIT_CHECK: Duration = Duration::from_millis(100);
/// After the process exited, output that pauses this long is considered done:
/// a background child may hold the pipes open forever.
const QUIET_AFTER_EXIT: Duration = Duration::from_millis(50);
/// After the process exited, output is read for at most this long.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// Stdin queued for a process that does not read it, before further data is refused.
const MAX_STDIN_QUEUE: usize = 64 << 20;

/// A running session, as the request handlers see it.
#[derive(Debug)]
pub(crate) struct Session {
    /// Tells this session apart from a later one with the same id.
    serial: u64,
    pid: u32,
    /// The pty's master side, for `Resize`.
    tty: Option<File>,
    /// Gone once stdin is closed, and for sessions started without stdin.
    stdin: Option<StdinQueue>,
}

#[derive(Debug)]
struct StdinQueue {
    tx: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

/// What to run; the fields of `Request::Exec`.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) id: u32,
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<String>,
    pub(crate) tty: Option<(u16, u16)>,
    pub(crate) stdin: bool,
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Starts a session: `Started` is queued before any of its output.
pub(crate) fn start(state: &Arc<State>, epoch: u64, spec: Spec) -> Result<(), String> {
    let id = spec.id;
    let program = spec.argv.first().ok_or("cannot run an empty command")?.clone();
    if lock(&state.sessions).contains_key(&id) {
        return Err(format!("session {id} is already running"));
    }
    let cwd = spec.cwd.as_deref().unwrap_or("/");
    if !Path::new(cwd).is_dir() {
        return Err(format!("cannot run {program:?}: the working directory {cwd:?} is not a directory"));
    }

    let mut cmd = Command::new(&program);
    cmd.args(&spec.argv[1..]).env_clear().current_dir(cwd).env("PATH", DEFAULT_PATH).env("HOME", "/root");
    if spec.tty.is_some() {
        cmd.env("TERM", "xterm-256color");
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));

    // Every descriptor is ready before the spawn, so that nothing can fail
    // once the process runs.
    let mut terminal = None;
    if let Some((rows, cols)) = spec.tty {
        let fail = |e: io::Error| format!("cannot open a terminal: {}", describe(&e));
        let pty = tty::open(rows, cols).map_err(fail)?;
        cmd.stdin(pty.slave.try_clone().map_err(fail)?)
            .stdout(pty.slave.try_clone().map_err(fail)?)
            .stderr(pty.slave);
        tty::make_controlling_terminal(&mut cmd);
        let output = pty.master.try_clone().map_err(fail)?;
        let sink = if spec.stdin { Some(pty.master.try_clone().map_err(fail)?) } else { None };
        terminal = Some((pty.master, output, sink));
    } else {
        let stdin = if spec.stdin { Stdio::piped() } else { Stdio::null() };
        // A group of its own, so that a reset can kill what it started too.
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    }

    let (mut child, exits) =
        reaper::global().spawn(&mut cmd).map_err(|e| format!("cannot run {program:?}: {}", describe(&e)))?;
    // Closes our copies of the pty's slave side, so that the master sees a
    // hang-up once the session's processes are gone.
    drop(cmd);
    let pid = child.id();

    let (outputs, stdin_sink, resize) = match terminal {
        Some((master, output, sink)) => (vec![(output, Stream::Stdout)], sink, Some(master)),
        None => {
            let mut outputs = Vec::with_capacity(2);
            outputs.extend(child.stdout.take().map(|o| (File::from(OwnedFd::from(o)), Stream::Stdout)));
            outputs.extend(child.stderr.take().map(|e| (File::from(OwnedFd::from(e)), Stream::Stderr)));
            let sink = child.stdin.take().map(|i| File::from(OwnedFd::from(i)));
            (outputs, sink, None)
        }
    };

    let serial = state.next_serial();
    let is_tty = resize.is_some();
    let stdin = stdin_sink.map(|sink| {
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let feeder = Feeder { state: state.clone(), id, epoch, queued: queued.clone(), is_tty };
        spawn_thread(format!("stdin-{id}"), move || feeder.run(sink, rx));
        StdinQueue { tx, queued }
    });
    lock(&state.sessions).insert(id, Session { serial, pid, tty: resize, stdin });
    state.send(Some(epoch), Response::Started { id, pid });

    let pump = Pump { state: state.clone(), id, epoch, serial };
    spawn_thread(format!("session-{id}"), move || pump.run(outputs, exits));
    Ok(())
}

/// Queues bytes for a session's stdin.
pub(crate) fn write_stdin(state: &State, id: u32, data: Vec<u8>) -> Result<(), String> {
    let sessions = lock(&state.sessions);
    let session = sessions.get(&id).ok_or_else(|| no_session(id))?;
    let stdin = session.stdin.as_ref().ok_or_else(|| format!("session {id} has no open stdin"))?;
    let len = data.len();
    if stdin.queued.fetch_add(len, Ordering::SeqCst) + len > MAX_STDIN_QUEUE {
        stdin.queued.fetch_sub(len, Ordering::SeqCst);
        return Err(format!(
            "session {id} is not reading its stdin and {MAX_STDIN_QUEUE} bytes are queued; these {len} were dropped"
        ));
    }
    // A send fails only if the feeder ended after a write error it reported.
    let _ = stdin.tx.send(data);
    Ok(())
}

/// Closes a session's stdin once the queued bytes are written.
pub(crate) fn close_stdin(state: &State, id: u32) -> Result<(), String> {
    let mut sessions = lock(&state.sessions);
    let session = sessions.get_mut(&id).ok_or_else(|| no_session(id))?;
    session.stdin.take().map(drop).ok_or_else(|| format!("session {id} has no open stdin"))
}

/// Sends a signal to a session's process.
pub(crate) fn signal(state: &State, id: u32, signal: i32) -> Result<(), String> {
    let sig =
        Signal::try_from(signal).map_err(|_| format!("{signal} is not a signal this agent can send"))?;
    let pid = lock(&state.sessions).get(&id).map(|s| s.pid).ok_or_else(|| no_session(id))?;
    // Not ours any more means it already exited: its `Exited` is on the way.
    reaper::global()
        .signal(pid, sig, false)
        .map(drop)
        .map_err(|e| format!("cannot signal session {id}: {}", e.desc()))
}

/// Kills every process of a session: its process group and, for a tty
/// session, every process of its Unix session.
pub(crate) fn kill(state: &State, id: u32) -> Result<(), String> {
    let (pid, tty) =
        lock(&state.sessions).get(&id).map(|s| (s.pid, s.tty.is_some())).ok_or_else(|| no_session(id))?;
    kill_processes(pid, tty);
    Ok(())
}

/// SIGKILLs the process group led by `pid` and, with `tty`, every process
/// of the Unix session it leads: a shell with job control puts each job in
/// a group of its own, in its session. No check that `pid` is still ours:
/// Linux does not reuse a pid while a process has it as its group or
/// session id, and only such processes are signalled.
fn kill_processes(pid: u32, tty: bool) {
    let Ok(leader) = i32::try_from(pid) else { return };
    if leader <= 1 || leader == std::process::id() as i32 {
        return;
    }
    let _ = nix::sys::signal::kill(Pid::from_raw(-leader), Signal::SIGKILL);
    if !tty {
        return;
    }
    // Again while some are found: a process that forked before its kill
    // has a child the previous pass did not see.
    for _ in 0..8 {
        let members = session_members(leader);
        if members.is_empty() {
            break;
        }
        for member in members {
            let _ = nix::sys::signal::kill(Pid::from_raw(member), Signal::SIGKILL);
        }
    }
}

/// The live processes (not zombies) whose session id is `sid`.
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let own = std::process::id() as i32;
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid > 1 && pid != own)
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // `pid (comm) state ppid pgrp session ...`; comm may hold anything.
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let fields: Vec<&str> = rest.split_whitespace().take(4).collect();
            fields.len() == 4 && !matches!(fields[0], "Z" | "X") && fields[3].parse::<i32>() == Ok(sid)
        })
        .collect()
}

/// Changes a tty session's window size.
pub(crate) fn resize(state: &State, id: u32, rows: u16, cols: u16) -> Result<(), String> {
    let sessions = lock(&state.sessions);
    let session = sessions.get(&id).ok_or_else(|| no_session(id))?;
    let master = session.tty.as_ref().ok_or_else(|| format!("session {id} has no terminal"))?;
    tty::set_window_size(master, rows, cols)
        .map_err(|e| format!("cannot resize session {id}: {}", describe(&e)))
}

/// Forgets every session and kills its process group.
pub(crate) fn kill_all(state: &State) {
    let sessions: Vec<Session> = lock(&state.sessions).drain().map(|(_, s)| s).collect();
    for session in sessions {
        // Each session leads its own process group (tty sessions lead a Unix session).
        kill_processes(session.pid, session.tty.is_some());
    }
}

fn no_session(id: u32) -> String {
    format!("no session {id} is running")
}

fn spawn_thread(name: String, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name).spawn(f) {
        crate::say(&format!("cannot start a thread: {e}"));
    }
}

/// Copies a session's output to the host, then reports its exit.
struct Pump {
    state: Arc<State>,
    id: u32,
    epoch: u64,
    serial: u64,
}

impl Pump {
    fn run(self, mut outputs: Vec<(File, Stream)>, exits: Receiver<Exit>) {
        let mut buf = vec![0; MAX_CHUNK];
        let mut exit = None;
        let mut exited_at: Option<Instant> = None;
        while !outputs.is_empty() {
            if exit.is_none()
                && let Ok(e) = exits.try_recv()
            {
                exit = Some(e);
                exited_at = Some(Instant::now());
            }
            let timeout = match exited_at {
                None => EXIT_CHECK,
                Some(at) if at.elapsed() >= DRAIN_AFTER_EXIT => break,
                Some(_) => QUIET_AFTER_EXIT,
            };
            let ready = match self.wait_readable(&outputs, timeout) {
                Ok(ready) => ready,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    self.error(format!("cannot read the output of session {}: {}", self.id, e.desc()));
                    break;
                }
            };
            if ready.is_empty() && exited_at.is_some() {
                break;
            }
            let mut closed = Vec::new();
            for i in ready {
                let (file, stream) = &mut outputs[i];
                match file.read(&mut buf) {
                    Ok(0) => closed.push(i),
                    Ok(n) => {
                        let (id, data) = (self.id, buf[..n].to_vec());
                        let response = match stream {
                            Stream::Stdout => Response::Stdout { id, data },
                            Stream::Stderr => Response::Stderr { id, data },
                        };
                        self.state.send(Some(self.epoch), response);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EIO: every slave side of the pty is closed.
                    Err(_) => closed.push(i),
                }
            }
            for i in closed.into_iter().rev() {
                outputs.remove(i);
            }
        }
        let exit = exit.or_else(|| exits.recv().ok()).unwrap_or(Exit { code: None, signal: None });
        self.state
            .send(Some(self.epoch), Response::Exited { id: self.id, code: exit.code, signal: exit.signal });
        let mut sessions = lock(&self.state.sessions);
        if sessions.get(&self.id).is_some_and(|s| s.serial == self.serial) {
            sessions.remove(&self.id);
        }
    }

    /// Indices of the outputs with data or a hang-up, after waiting at most `timeout`.
    fn wait_readable(&self, outputs: &[(File, Stream)], timeout: Duration) -> nix::Result<Vec<usize>> {
        let mut fds: Vec<PollFd> =
            outputs.iter().map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN)).collect();
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        poll(&mut fds, PollTimeout::from(ms))?;
        Ok(fds.iter().enumerate().filter(|(_, fd)| fd.any().unwrap_or(true)).map(|(i, _)| i).collect())
    }

    fn error(&self, message: String) {
        self.state.send(Some(self.epoch), Response::Error { id: Some(self.id), message });
    }
}

/// Writes queued bytes to a session's stdin until the queue is closed.
struct Feeder {
    state: Arc<State>,
    id: u32,
    epoch: u64,
    queued: Arc<AtomicUsize>,
    is_tty: bool,
}

impl Feeder {
    fn run(self, mut sink: File, rx: Receiver<Vec<u8>>) {
        let mut failed = false;
        let mut at_line_start = true;
        for data in rx {
            self.queued.fetch_sub(data.len(), Ordering::SeqCst);
            if failed || data.is_empty() {
                continue;
            }
            at_line_start = data.ends_with(b"\n");
            if let Err(e) = sink.write_all(&data) {
                failed = true;
                // The process closed its stdin or exited: not worth a message.
                if !matches!(Errno::from_raw(e.raw_os_error().unwrap_or(0)), Errno::EPIPE | Errno::EIO) {
                    let message =
                        format!("cannot write to the stdin of session {}: {}", self.id, describe(&e));
                    self.state.send(Some(self.epoch), Response::Error { id: Some(self.id), message });
                }
            }
        }
        if self.is_tty && !failed {
            // A terminal has no end of input: send the EOF character, twice
            // if a partial line is pending (the first only ends the line).
            let eof: &[u8] = if at_line_start { b"\x04" } else { b"\x04\x04" };
            let _ = sink.write_all(eof);
        }
    }
}
