//! Runs the real `hearth-agent serve --unix` on a temporary directory and
//! kills it when the test ends, even when the test fails.
#![allow(dead_code, unreachable_pub)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use hearth_agent::client::AgentClient;
use hearth_agent::protocol::{FrameReader, Request, Response, write_frame};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a test may wait for any one answer.
pub const WAIT: Duration = Duration::from_secs(10);
/// An agent still running after this long is killed, so a hung test fails.
const WATCHDOG: Duration = Duration::from_secs(60);

pub struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    watchdog: Sender<()>,
}

impl Agent {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the agent with extra `serve` options.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_hearth-agent"))
            .args(["serve", "--unix"])
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("the agent binary starts");
        let watchdog = start_watchdog(child.id());
        Self { child, dir, socket, watchdog }
    }

    /// Connects, waiting for the agent to listen. (Not probing before: a
    /// connection that is dropped unused would swallow queued events.)
    pub fn connect(&self) -> UnixStream {
        let started = Instant::now();
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(stream) => return stream,
                Err(e) if started.elapsed() > WAIT => panic!("the agent did not listen within {WAIT:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// A scratch directory for files the test shares with the agent.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client that said hello.
    pub fn client(&self) -> AgentClient {
        let client = AgentClient::from_unix(self.connect()).expect("a client").with_timeout(WAIT);
        client.hello().expect("hello");
        client
    }

    /// A plain connection, for speaking the protocol frame by frame.
    pub fn raw(&self) -> Raw {
        let stream = self.connect();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let reader = FrameReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the agent to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.watchdog.send(());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_watchdog(pid: u32) -> Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(WATCHDOG) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("the agent ran for {WATCHDOG:?}; killing it");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    });
    tx
}

pub struct Raw {
    pub stream: UnixStream,
    pub reader: FrameReader<UnixStream>,
}

impl Raw {
    pub fn send(&mut self, request: &Request) {
        write_frame(&mut self.stream, request).expect("send a request");
    }

    pub fn recv(&mut self) -> Response {
        self.reader.read().expect("read a response").expect("a response before end of stream")
    }

    pub fn hello(&mut self, nonce: u64) -> Response {
        self.send(&Request::Hello { version: hearth_agent::protocol::VERSION, nonce });
        loop {
            match self.recv() {
                ack @ Response::HelloAck { nonce: n, .. } if n == nonce => return ack,
                _ => {}
            }
        }
    }
}

/// Bytes that are not all alike, so that a shifted or dropped chunk shows.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
