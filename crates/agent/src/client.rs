//! The host's side of the protocol: a blocking client over any byte stream.
//!
//! [`AgentClient`] writes requests from the calling thread and reads
//! responses on a thread of its own, which routes each to whoever waits for
//! it: an [`ExecHandle`] per session, or the call waiting for an answer.
//! Responses nobody waits for (the main process's starts and exits, errors about no
//! request in particular) are [`Event`]s.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use hearth_agent::client::{AgentClient, ExecRequest};
//!
//! let agent = AgentClient::connect_unix("/run/hearth/vm-1.agent", std::time::Duration::from_secs(5))?;
//! agent.hello()?;
//! let out = agent.run(["uname", "-r"])?;
//! print!("{}", String::from_utf8_lossy(&out.stdout));
//!
//! let mut shell = agent.exec(ExecRequest::new(["sh"]).tty(24, 80).stdin(true))?;
//! shell.write_stdin(b"exit 3\n")?;
//! while let Some(output) = shell.recv() {
//!     println!("{output:?}");
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::lock;
use crate::protocol::{self, FrameReader, MAX_CHUNK, MAX_PAYLOAD, Request, Response, VERSION};

/// The most config bytes (JSON and env together) one `Config` message
/// carries: a frame's payload, less room for the rest of the message (a
/// tag, the id, the revision and two lengths take at most 22 bytes).
pub const MAX_CONFIG: usize = MAX_PAYLOAD - 64;

pub use crate::protocol::{MainState, MainStatus, ReloadOutcome};

/// How long calls wait for an answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request could not be sent.
    #[error("cannot send a request to the agent")]
    Send(#[source] protocol::Error),
    /// The connection ended (or `hello` ended the session waited on).
    #[error("the connection to the agent is closed")]
    Closed,
    /// No answer came in time.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent refused or failed the request; its message, verbatim.
    #[error("{0}")]
    Agent(String),
    /// The agent answered something that does not fit the request.
    #[error("the agent answered {0}, which does not fit the request")]
    Unexpected(String),
    /// The agent speaks another protocol version.
    #[error("the agent speaks protocol version {agent}, this host speaks version {host}")]
    Version { agent: u32, host: u32 },
    /// Reading or writing the local side of a file transfer failed.
    #[error("the local side of the file transfer failed")]
    Local(#[source] io::Error),
    /// A download ended with fewer or more bytes than announced.
    #[error("the agent sent {received} bytes of a file it says has {size}")]
    Truncated { received: u64, size: u64 },
    /// A config does not fit in one message to the agent.
    #[error(
        "the config is {size} bytes as JSON and env together, more than one message to the agent carries \
         ({limit} bytes): keep large data out of config, in files or a key-value store"
    )]
    ConfigTooLarge { size: usize, limit: usize },
}

/// How a process ended: `code` if it exited, `signal` if it was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Something a session produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The last output of a session.
    Exited(ExitStatus),
    /// A failure of this session that did not end it (e.g. writing its stdin).
    Error(String),
}

/// A session's collected output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// What the agent says about itself in answer to `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    pub version: u32,
    pub hostname: String,
    /// The guest kernel's release (`uname -r`).
    pub kernel: String,
}

/// A downloaded file's permission bits and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub mode: u32,
    pub size: u64,
}

/// What the agent did with a config, for [`AgentClient::apply_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigApplied {
    pub revision: u64,
    /// False when the files already held this config: nothing was written or reloaded.
    pub changed: bool,
    /// How the reload action went, when one ran.
    pub reload: Option<ReloadOutcome>,
}

/// How long [`AgentClient::apply_config`] waits at least: the answer
/// follows the reload, which may take [`crate::config::RELOAD_TIMEOUT`].
pub const CONFIG_TIMEOUT: Duration = Duration::from_secs(45);

/// Responses that answer no call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The main process started, ended, or could not start.
    Main(MainStatus),
    /// An error about no request in particular, or a frame this client could not read.
    Error(String),
}

/// What to run, for [`AgentClient::exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Added to the agent's default environment.
    pub env: Vec<(String, String)>,
    /// The working directory; `/` when `None`.
    pub cwd: Option<String>,
    /// A terminal of (rows, cols); without one, stdout and stderr are separate pipes.
    pub tty: Option<(u16, u16)>,
    /// Whether stdin will be written; without it the process reads `/dev/null`.
    pub stdin: bool,
}

impl ExecRequest {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { argv: argv.into_iter().map(Into::into).collect(), ..Self::default() }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = Some((rows, cols));
        self
    }

    pub fn stdin(mut self, stdin: bool) -> Self {
        self.stdin = stdin;
        self
    }
}

/// A connection to one agent. `Send + Sync`: share it behind an `Arc`.
pub struct AgentClient {
    shared: Arc<Shared>,
    timeout: Duration,
    close: Option<Box<dyn Fn() + Send + Sync>>,
    events: Mutex<Option<Receiver<Event>>>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

struct Shared {
    /// Taken (and so closed) when the client is dropped.
    writer: Mutex<Option<Box<dyn Write + Send>>>,
    routes: Mutex<Routes>,
    next_id: AtomicU32,
    next_nonce: AtomicU64,
}

struct Routes {
    closed: bool,
    /// Sessions and transfers.
    by_id: HashMap<u32, Sender<Response>>,
    /// Calls waiting for `HelloAck` or `Pong`.
    by_nonce: HashMap<u64, Sender<Response>>,
    events: Sender<Event>,
}

impl AgentClient {
    /// A client over a stream's two halves. Dropping the client drops
    /// `writer`; the reading thread ends when `reader` ends.
    pub fn new(reader: impl Read + Send + 'static, writer: impl Write + Send + 'static) -> Self {
        let (events_tx, events_rx) = mpsc::channel();
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let shared = Arc::new(Shared {
            writer: Mutex::new(Some(Box::new(writer))),
            routes: Mutex::new(Routes {
                closed: false,
                by_id: HashMap::new(),
                by_nonce: HashMap::new(),
                events: events_tx,
            }),
            next_id: AtomicU32::new(1),
            next_nonce: AtomicU64::new(seed),
        });
        let reading = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("agent-client".into())
            .spawn(move || read_loop(&reading, reader));
        if spawned.is_err() {
            lock(&shared.routes).closed = true;
        }
        Self { shared, timeout: DEFAULT_TIMEOUT, close: None, events: Mutex::new(Some(events_rx)) }
    }

    /// A client over a connected Unix socket, shut down when the client is dropped.
    pub fn from_unix(stream: UnixStream) -> io::Result<Self> {
        let reader = stream.try_clone()?;
        let closer = stream.try_clone()?;
        let mut client = Self::new(reader, stream);
        client.close = Some(Box::new(move || {
            let _ = closer.shutdown(std::net::Shutdown::Both);
        }));
        Ok(client)
    }

    /// Connects to an agent listening on a Unix socket (`hearth-agent serve
    /// --unix`, or a VMM's socket for the guest's port), waiting at most
    /// `timeout` for the socket to take the connection (see [`connect_within`]).
    pub fn connect_unix(path: impl AsRef<Path>, timeout: Duration) -> io::Result<Self> {
        Self::from_unix(connect_within(path.as_ref(), timeout)?)
    }

    /// Connects to an agent serving on vsock `port` in a Firecracker guest,
    /// through `uds`, the Unix socket Firecracker proxies the guest's vsock
    /// with (see [`vsock_handshake`]), within `timeout` for each step.
    pub fn connect_firecracker(uds: impl AsRef<Path>, port: u32, timeout: Duration) -> io::Result<Self> {
        let mut stream = connect_within(uds.as_ref(), timeout)?;
        vsock_handshake(&mut stream, port, timeout)?;
        Self::from_unix(stream)
    }

    /// Sets how long calls wait for an answer (not how long sessions may run).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The responses that answer no call; `None` after the first call.
    pub fn take_events(&self) -> Option<Receiver<Event>> {
        lock(&self.events).take()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.routes).closed
    }

    /// Starts a conversation: the agent ends every session and transfer
    /// (their handles here see the end too) and says who it is.
    pub fn hello(&self) -> Result<HelloInfo, Error> {
        let nonce = self.shared.next_nonce.fetch_add(1, Ordering::SeqCst);
        let rx = self.shared.await_nonce(nonce)?;
        lock(&self.shared.routes).by_id.clear();
        self.shared.send(&Request::Hello { version: VERSION, nonce })?;
        match recv(&rx, self.timeout)? {
            Response::HelloAck { version, hostname, kernel, .. } if version == VERSION => {
                Ok(HelloInfo { version, hostname, kernel })
            }
            Response::HelloAck { version, .. } => Err(Error::Version { agent: version, host: VERSION }),
            other => Err(unexpected(&other)),
        }
    }

    /// Measures a round trip.
    pub fn ping(&self) -> Result<Duration, Error> {
        let nonce = self.shared.next_nonce.fetch_add(1, Ordering::SeqCst);
        let rx = self.shared.await_nonce(nonce)?;
        let started = Instant::now();
        self.shared.send(&Request::Ping { nonce })?;
        match recv(&rx, self.timeout)? {
            Response::Pong { .. } => Ok(started.elapsed()),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts a session; returns once its process runs. A program that
    /// cannot be run is an [`Error::Agent`].
    pub fn exec(&self, request: ExecRequest) -> Result<ExecHandle, Error> {
        let route = self.shared.route()?;
        let ExecRequest { argv, env, cwd, tty, stdin } = request;
        self.shared.send(&Request::Exec { id: route.id, argv, env, cwd, tty, stdin })?;
        match recv(&route.rx, self.timeout)? {
            Response::Started { pid, .. } => Ok(ExecHandle { route, pid, exited: false }),
            Response::Error { message, .. } => Err(Error::Agent(message)),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a program without stdin and collects its output.
    pub fn run<I, S>(&self, argv: I) -> Result<RunOutput, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exec(ExecRequest::new(argv))?.wait()
    }

    /// Uploads `src` to `path` (absolute, in the guest) with permission bits
    /// `mode`. The file appears whole or not at all. Returns its size.
    ///
    /// If reading `src` fails, the partial upload is abandoned by the agent
    /// at the next `hello` or when the connection ends.
    pub fn put_file(&self, path: &str, mode: u32, mut src: impl Read) -> Result<u64, Error> {
        let route = self.shared.route()?;
        let id = route.id;
        self.shared.send(&Request::PutFile { id, path: path.to_owned(), mode })?;
        let mut buf = vec![0; MAX_CHUNK];
        let mut size = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Local(e)),
            };
            self.shared.send(&Request::FileChunk { id, data: buf[..n].to_vec() })?;
            size += n as u64;
            // Stop early if the agent already failed the upload.
            if let Ok(Response::Error { message, .. }) = route.rx.try_recv() {
                return Err(Error::Agent(message));
            }
        }
        self.shared.send(&Request::FileEnd { id })?;
        match recv(&route.rx, self.timeout)? {
            Response::Done { .. } => Ok(size),
            Response::Error { message, .. } => Err(Error::Agent(message)),
            other => Err(unexpected(&other)),
        }
    }

    /// Downloads the regular file at `path` (absolute, in the guest) into `dst`.
    pub fn get_file(&self, path: &str, mut dst: impl Write) -> Result<FileInfo, Error> {
        let route = self.shared.route()?;
        self.shared.send(&Request::GetFile { id: route.id, path: path.to_owned() })?;
        let mut received = 0u64;
        loop {
            match recv(&route.rx, self.timeout)? {
                Response::FileChunk { data, .. } => {
                    dst.write_all(&data).map_err(Error::Local)?;
                    received += data.len() as u64;
                }
                Response::FileEnd { mode, size, .. } if size == received => {
                    dst.flush().map_err(Error::Local)?;
                    return Ok(FileInfo { mode, size });
                }
                Response::FileEnd { size, .. } => return Err(Error::Truncated { received, size }),
                Response::Error { message, .. } => return Err(Error::Agent(message)),
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Puts the machine's config in place: `json` and `env` become the
    /// agent's `config.json` and `config.env` (see [`crate::config`]).
    /// Returns once they are written and the reload action, if one was due,
    /// ran; waits for that at least [`CONFIG_TIMEOUT`]. A config larger than
    /// [`MAX_CONFIG`] is refused here, before anything is sent.
    pub fn apply_config(&self, json: &[u8], env: &[u8], revision: u64) -> Result<ConfigApplied, Error> {
        let size = json.len() + env.len();
        if size > MAX_CONFIG {
            return Err(Error::ConfigTooLarge { size, limit: MAX_CONFIG });
        }
        let route = self.shared.route()?;
        self.shared.send(&Request::Config {
            id: route.id,
            json: json.to_vec(),
            env: env.to_vec(),
            revision,
        })?;
        match recv(&route.rx, self.timeout.max(CONFIG_TIMEOUT))? {
            Response::ConfigApplied { revision, changed, reload, .. } => {
                Ok(ConfigApplied { revision, changed, reload })
            }
            Response::Error { message, .. } => Err(Error::Agent(message)),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the agent to power the machine off (or restart it); outside a
    /// VM the agent's server ends. Nothing answers: the connection closes.
    pub fn shutdown(&self, reboot: bool) -> Result<(), Error> {
        self.shared.send(&Request::Shutdown { reboot })
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        lock(&self.shared.writer).take();
        if let Some(close) = &self.close {
            close();
        }
    }
}

/// The input side of a session: stdin, signals, terminal size.
#[derive(Clone)]
pub struct ExecControl {
    id: u32,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ExecControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecControl").field("id", &self.id).finish_non_exhaustive()
    }
}

impl ExecControl {
    /// Queues bytes for the process's stdin.
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), Error> {
        for chunk in data.chunks(MAX_CHUNK) {
            self.shared.send(&Request::Stdin { id: self.id, data: chunk.to_vec() })?;
        }
        Ok(())
    }

    /// Ends stdin once the queued bytes are written (with a tty: sends EOF).
    pub fn close_stdin(&self) -> Result<(), Error> {
        self.shared.send(&Request::CloseStdin { id: self.id })
    }

    /// Sends a signal by number, e.g. 9 for SIGKILL.
    pub fn signal(&self, signal: i32) -> Result<(), Error> {
        self.shared.send(&Request::Signal { id: self.id, signal })
    }

    /// Changes the terminal's size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), Error> {
        self.shared.send(&Request::Resize { id: self.id, rows, cols })
    }

    /// Kills every process of the session with SIGKILL: its process group
    /// and, with a tty, every process of its Unix session, so that a
    /// shell's background jobs (`sleep 1000 &`, `nohup`) end with it. An
    /// agent older than this request cannot read it (it reports an error
    /// without an id) and gets the SIGKILL of the process itself that
    /// follows; a newer one has nothing left for that signal to kill.
    pub fn kill(&self) -> Result<(), Error> {
        self.shared.send(&Request::Kill { id: self.id })?;
        self.signal(9)
    }
}

/// A running session. Dropping it stops listening, not the process.
pub struct ExecHandle {
    route: Route,
    pid: u32,
    exited: bool,
}

impl std::fmt::Debug for ExecHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecHandle")
            .field("id", &self.route.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl ExecHandle {
    /// The session's id on the wire.
    pub fn id(&self) -> u32 {
        self.route.id
    }

    /// The process id in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A cheap, cloneable handle for the session's input side, so that one
    /// thread can write stdin and send signals while another reads output.
    pub fn control(&self) -> ExecControl {
        ExecControl { id: self.route.id, shared: self.route.shared.clone() }
    }

    /// Queues bytes for the process's stdin (the session must have been
    /// started with `stdin`).
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), Error> {
        self.control().write_stdin(data)
    }

    /// Ends stdin once the queued bytes are written (with a tty: sends EOF).
    pub fn close_stdin(&self) -> Result<(), Error> {
        self.control().close_stdin()
    }

    /// Sends a signal by number, e.g. 9 for SIGKILL.
    pub fn signal(&self, signal: i32) -> Result<(), Error> {
        self.control().signal(signal)
    }

    /// Changes the terminal's size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), Error> {
        self.control().resize(rows, cols)
    }

    /// Kills every process of the session (see [`ExecControl::kill`]).
    pub fn kill(&self) -> Result<(), Error> {
        self.control().kill()
    }

    /// The next output, waiting as long as it takes. `None` after
    /// [`Output::Exited`], or if the connection ended before it.
    pub fn recv(&mut self) -> Option<Output> {
        loop {
            if self.exited {
                return None;
            }
            let response = self.route.rx.recv().ok()?;
            if let Some(output) = self.output(response) {
                return Some(output);
            }
        }
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Output>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.route.rx.recv_timeout(left) {
                Ok(response) => {
                    if let Some(output) = self.output(response) {
                        return Ok(Some(output));
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(Error::Timeout(timeout)),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }

    /// Collects all output until the process exits. [`Output::Error`]s are
    /// skipped: they do not end the session.
    pub fn wait(mut self) -> Result<RunOutput, Error> {
        self.collect(|handle| Ok(handle.recv()))
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` without output.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<RunOutput, Error> {
        self.collect(|handle| handle.recv_timeout(timeout))
    }

    fn collect(
        &mut self,
        mut next: impl FnMut(&mut Self) -> Result<Option<Output>, Error>,
    ) -> Result<RunOutput, Error> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match next(self)? {
                Some(Output::Stdout(data)) => stdout.extend(data),
                Some(Output::Stderr(data)) => stderr.extend(data),
                Some(Output::Exited(status)) => return Ok(RunOutput { status, stdout, stderr }),
                Some(Output::Error(_)) => {}
                None => return Err(Error::Closed),
            }
        }
    }

    fn output(&mut self, response: Response) -> Option<Output> {
        match response {
            Response::Stdout { data, .. } => Some(Output::Stdout(data)),
            Response::Stderr { data, .. } => Some(Output::Stderr(data)),
            Response::Exited { code, signal, .. } => {
                self.exited = true;
                Some(Output::Exited(ExitStatus { code, signal }))
            }
            Response::Error { message, .. } => Some(Output::Error(message)),
            _ => None,
        }
    }
}

/// A registered id whose responses arrive on `rx`; unregistered on drop.
struct Route {
    id: u32,
    shared: Arc<Shared>,
    rx: Receiver<Response>,
}

impl Drop for Route {
    fn drop(&mut self) {
        lock(&self.shared.routes).by_id.remove(&self.id);
    }
}

impl Shared {
    fn send(&self, request: &Request) -> Result<(), Error> {
        let mut writer = lock(&self.writer);
        let writer = writer.as_mut().ok_or(Error::Closed)?;
        protocol::write_frame(writer, request).map_err(Error::Send)?;
        writer.flush().map_err(|e| Error::Send(e.into()))
    }

    fn route(self: &Arc<Self>) -> Result<Route, Error> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let mut routes = lock(&self.routes);
        if routes.closed {
            return Err(Error::Closed);
        }
        routes.by_id.insert(id, tx);
        Ok(Route { id, shared: self.clone(), rx })
    }

    fn await_nonce(&self, nonce: u64) -> Result<Receiver<Response>, Error> {
        let (tx, rx) = mpsc::channel();
        let mut routes = lock(&self.routes);
        if routes.closed {
            return Err(Error::Closed);
        }
        routes.by_nonce.insert(nonce, tx);
        Ok(rx)
    }

    fn dispatch(&self, response: Response) {
        let mut routes = lock(&self.routes);
        let (id, last) = match &response {
            Response::HelloAck { nonce, .. } | Response::Pong { nonce } => {
                if let Some(tx) = routes.by_nonce.remove(nonce) {
                    let _ = tx.send(response);
                }
                return;
            }
            Response::Error { id: None, message } => {
                let _ = routes.events.send(Event::Error(message.clone()));
                return;
            }
            Response::Main(status) => {
                let _ = routes.events.send(Event::Main(status.clone()));
                return;
            }
            Response::Exited { id, .. }
            | Response::FileEnd { id, .. }
            | Response::Done { id }
            | Response::ConfigApplied { id, .. } => (*id, true),
            Response::Started { id, .. }
            | Response::Stdout { id, .. }
            | Response::Stderr { id, .. }
            | Response::FileChunk { id, .. }
            | Response::Error { id: Some(id), .. } => (*id, false),
        };
        // Responses for ids nobody waits for any more are dropped.
        let tx = if last { routes.by_id.remove(&id) } else { routes.by_id.get(&id).cloned() };
        if let Some(tx) = tx {
            let _ = tx.send(response);
        }
    }
}

fn read_loop(shared: &Shared, reader: impl Read) {
    let mut frames = FrameReader::new(reader);
    loop {
        match frames.read::<Response>() {
            Ok(Some(response)) => shared.dispatch(response),
            Ok(None) | Err(protocol::Error::Io(_)) => break,
            Err(e) => {
                let _ = lock(&shared.routes).events.send(Event::Error(e.to_string()));
            }
        }
    }
    let mut routes = lock(&shared.routes);
    routes.closed = true;
    routes.by_id.clear();
    routes.by_nonce.clear();
}

fn recv(rx: &Receiver<Response>, timeout: Duration) -> Result<Response, Error> {
    rx.recv_timeout(timeout).map_err(|e| match e {
        RecvTimeoutError::Timeout => Error::Timeout(timeout),
        RecvTimeoutError::Disconnected => Error::Closed,
    })
}

fn unexpected(response: &Response) -> Error {
    let name = format!("{response:?}");
    let name = name.split([' ', '{', '(']).next().unwrap_or_default().to_owned();
    Error::Unexpected(name)
}

/// Connects to the Unix socket at `path`, waiting at most `timeout` for a
/// place in its queue.
///
/// A VMM's socket for a guest port (QEMU's `-chardev socket,server=on`)
/// serves one connection at a time and queues one more; a plain blocking
/// `connect` to it waits without end once that queue is full, and a
/// connection given up on while queued keeps its place until the VMM gets
/// to it. So this connects without blocking and tries again while the queue
/// is full, until `timeout` has passed.
pub fn connect_within(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd;

    let deadline = Instant::now() + timeout;
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(Errno::EAGAIN) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} took no new connection within {timeout:?}: it serves one at a time, and its queue is full",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Firecracker's host-initiated vsock connection: on its Unix socket, the
/// host writes `CONNECT PORT\n` and Firecracker answers `OK HOSTPORT\n` once
/// the guest accepted; from then on the stream is the guest connection. A
/// guest not listening on `port` makes Firecracker close the socket instead.
/// Reads no byte past the answer's newline, which belongs to the guest.
pub fn vsock_handshake(stream: &mut UnixStream, port: u32, timeout: Duration) -> io::Result<()> {
    let previous = stream.read_timeout()?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8];
    let outcome = loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                break Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "Firecracker closed the vsock connection: nothing in the guest listens on vsock port {port} (yet)"
                    ),
                ));
            }
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) if line.len() >= 64 => {
                break Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the vsock socket answered CONNECT with a line too long to be Firecracker's",
                ));
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                break Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("Firecracker did not answer CONNECT {port} within {timeout:?}"),
                ));
            }
            Err(e) => break Err(e),
        }
    };
    outcome?;
    let answer = String::from_utf8_lossy(&line);
    match answer.strip_prefix("OK ").map(|p| p.trim().parse::<u32>()) {
        Some(Ok(_)) => {}
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the vsock socket answered CONNECT {port} with {answer:?}, not OK"),
            ));
        }
    }
    stream.set_read_timeout(previous)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn a_connect_to_a_socket_whose_queue_is_full_gives_up_at_its_timeout() {
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
        use std::os::fd::AsRawFd;

        // A listener that never accepts and queues one connection, as a
        // VMM's socket does while another client is connected.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener =
            socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
        bind(listener.as_raw_fd(), &UnixAddr::new(&path).expect("addr")).expect("bind");
        listen(&listener, Backlog::new(0).expect("backlog")).expect("listen");

        let limit = Duration::from_millis(300);
        let mut queued = Vec::new();
        let started = Instant::now();
        let error = loop {
            match connect_within(&path, limit) {
                Ok(stream) => queued.push(stream),
                Err(error) => break error,
            }
            assert!(queued.len() < 8, "the queue never filled");
        };
        assert!(!queued.is_empty(), "the first connection is queued");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(error.to_string().contains("queue is full"), "{error}");
        assert!(started.elapsed() >= limit, "it tried until its timeout");

        // With nobody listening, a connect is refused at once, not retried.
        drop(queued);
        drop(listener);
        assert_eq!(
            connect_within(&path, limit).expect_err("nobody listens").kind(),
            io::ErrorKind::ConnectionRefused
        );
    }

    /// A fake Firecracker vsock socket: answers the first connection's
    /// CONNECT line with `answer` (or closes it if `None`), then echoes
    /// what follows. Returns the CONNECT line it got.
    fn fake_vsock(
        answer: Option<&'static str>,
    ) -> (tempfile::TempDir, std::path::PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.vsock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = io::BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            reader.read_line(&mut line).expect("read CONNECT");
            let Some(answer) = answer else { return line };
            let mut writer = stream;
            // The answer and the guest's first bytes in one write: the
            // handshake must not swallow what follows the newline.
            writer.write_all(format!("{answer}guest says hi").as_bytes()).expect("answer");
            let mut rest = [0u8; 5];
            if reader.read_exact(&mut rest).is_ok() {
                let _ = writer.write_all(&rest);
            }
            line
        });
        (dir, path, server)
    }

    #[test]
    fn the_handshake_connects_to_the_guest_port() {
        let (_dir, path, server) = fake_vsock(Some("OK 1073741824\n"));
        let mut stream = UnixStream::connect(&path).expect("connect");
        vsock_handshake(&mut stream, 1024, Duration::from_secs(5)).expect("handshake");
        let mut greeting = [0u8; 13];
        stream.read_exact(&mut greeting).expect("read");
        assert_eq!(&greeting, b"guest says hi");
        stream.write_all(b"hello").expect("write");
        let mut echo = [0u8; 5];
        stream.read_exact(&mut echo).expect("echo");
        assert_eq!(&echo, b"hello");
        assert_eq!(server.join().expect("server"), "CONNECT 1024\n");
        // The handshake's timeout is not left on the stream.
        assert_eq!(stream.read_timeout().expect("timeout"), None);
    }

    #[test]
    fn a_port_nobody_listens_on_is_a_clear_error() {
        let (_dir, path, server) = fake_vsock(None);
        let mut stream = UnixStream::connect(&path).expect("connect");
        let error = vsock_handshake(&mut stream, 1025, Duration::from_secs(5)).expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        assert!(error.to_string().contains("nothing in the guest listens on vsock port 1025"), "{error}");
        server.join().expect("server");
    }

    #[test]
    fn an_answer_other_than_ok_is_refused() {
        let (_dir, path, server) = fake_vsock(Some("NO\n"));
        let error =
            AgentClient::connect_firecracker(&path, 1024, Duration::from_secs(5)).expect_err("refused");
        assert!(error.to_string().contains(r#"with "NO", not OK"#), "{error}");
        server.join().expect("server");
    }

    #[test]
    fn a_silent_socket_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.vsock");
        let _listener = UnixListener::bind(&path).expect("bind");
        let mut stream = UnixStream::connect(&path).expect("connect");
        let error = vsock_handshake(&mut stream, 1024, Duration::from_millis(100)).expect_err("silent");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    }
}
