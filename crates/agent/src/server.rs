//! The request loop: reads [`Request`]s from a connection, runs sessions and
//! transfers, and writes their [`Response`]s back.
//!
//! One thread reads requests and handles the quick ones itself; each session
//! has a thread pumping its output (and one feeding its stdin), each download
//! a thread reading the file. They all queue responses into one bounded
//! outbox, which a writer thread drains into the connection: a slow host
//! slows the producers down instead of filling memory. The outbox outlives
//! connections, so sessions keep running while the host reconnects.
//!
//! `Hello` starts a new *epoch*: sessions and transfers of older epochs are
//! killed or abandoned, and whatever they still queue is dropped by the
//! writer, so a host that says `Hello` hears only about what it started.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{self, Config};
use crate::files::{self, Uploads};
use crate::main_process::{self, LogTarget, MainSpec};
use crate::protocol::{self, FrameReader, Request, Response, VERSION};
use crate::session::{self, Session};
use crate::{describe, lock, reaper, say};

/// Responses queued for the host before producers wait (at most 64 KiB each).
const OUTBOX_FRAMES: usize = 64;
/// Bytes of responses gathered before they are written out.
const OUT_BUFFER: usize = 256 * 1024;
/// How long a persistent port waits after its host went away before reading again.
const RECONNECT_POLL: Duration = Duration::from_millis(50);

/// A byte stream to serve requests on.
pub struct Connection {
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
    close: Box<dyn Fn() + Send + Sync>,
    persistent: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("persistent", &self.persistent).finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection that ends at end of stream. `close` must make both
    /// halves fail (e.g. shut a socket down); it is called when either side
    /// of the conversation breaks.
    pub fn stream(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        close: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self { reader: Box::new(reader), writer: Box::new(writer), close: Box::new(close), persistent: false }
    }

    /// A connected Unix socket.
    pub fn unix(stream: UnixStream) -> io::Result<Self> {
        let reader = stream.try_clone()?;
        let closer = stream.try_clone()?;
        Ok(Self::stream(reader, stream, move || {
            let _ = closer.shutdown(std::net::Shutdown::Both);
        }))
    }

    /// A virtio-serial port. End of stream there means the host side is
    /// not connected: the server waits for it to come back instead of ending.
    pub fn port(port: File) -> io::Result<Self> {
        let reader = port.try_clone()?;
        Ok(Self {
            reader: Box::new(reader),
            writer: Box::new(port),
            close: Box::new(|| {}),
            persistent: true,
        })
    }
}

/// Why [`Server::serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The connection ended or broke.
    Disconnected,
    /// The host asked to power off (or restart) the machine.
    Shutdown { reboot: bool },
}

/// Serves the agent protocol on one connection at a time.
#[derive(Debug)]
pub struct Server {
    state: Arc<State>,
}

/// What the request loop, session threads and the writer share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) epoch: AtomicU64,
    pub(crate) sessions: Mutex<HashMap<u32, Session>>,
    outbox: SyncSender<Outgoing>,
    outbox_rx: Mutex<Receiver<Outgoing>>,
    serials: AtomicU64,
    /// The main process's latest state, repeated after every `HelloAck`:
    /// a host that connects later learns it too.
    pub(crate) main_status: Mutex<Option<Response>>,
    /// The config files and what follows their changes.
    pub(crate) config: Config,
}

#[derive(Debug)]
enum Outgoing {
    /// A response; dropped unless `epoch` is `None` or the current one.
    Frame { epoch: Option<u64>, response: Response },
    /// Ends the writer of connection `conn`.
    Stop { conn: u64 },
}

impl State {
    /// Queues a response, waiting while the outbox is full.
    pub(crate) fn send(&self, epoch: Option<u64>, response: Response) {
        // Cannot fail: `self` holds the receiver.
        let _ = self.outbox.send(Outgoing::Frame { epoch, response });
    }

    pub(crate) fn next_serial(&self) -> u64 {
        self.serials.fetch_add(1, Ordering::SeqCst)
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with no sessions, keeping the config in `/run/hearth`
    /// without a reload action. Starts the process-wide reaper, which
    /// reaps every child of this process (see the crate docs).
    pub fn new() -> Self {
        Self::with_config(config::Options::default())
    }

    /// A server that keeps the config as `options` say.
    pub fn with_config(options: config::Options) -> Self {
        reaper::global();
        let (outbox, outbox_rx) = mpsc::sync_channel(OUTBOX_FRAMES);
        Self {
            state: Arc::new(State {
                epoch: AtomicU64::new(0),
                sessions: Mutex::new(HashMap::new()),
                outbox,
                outbox_rx: Mutex::new(outbox_rx),
                serials: AtomicU64::new(0),
                main_status: Mutex::new(None),
                config: Config::new(options),
            }),
        }
    }

    /// Serves requests until the connection ends or the host asks for a
    /// shutdown. Sessions outlive the connection; uploads do not.
    pub fn serve(&self, conn: Connection) -> Ending {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let conn_id = CONNECTIONS.fetch_add(1, Ordering::SeqCst);
        let close: Arc<dyn Fn() + Send + Sync> = Arc::from(conn.close);
        let persistent = conn.persistent;
        let writer = {
            let (state, close, writer) = (self.state.clone(), close.clone(), conn.writer);
            std::thread::Builder::new()
                .name("writer".into())
                .spawn(move || write_loop(&state, conn_id, persistent, writer, &*close))
                .expect("the writer thread must start")
        };

        let mut reader = FrameReader::new(conn.reader);
        let mut uploads = Uploads::default();
        let ending = loop {
            match reader.read::<Request>() {
                Ok(Some(request)) => {
                    if let Some(ending) = self.handle(request, &mut uploads) {
                        break ending;
                    }
                }
                Ok(None) if conn.persistent => {
                    // The host is away; what it sent half of is void.
                    uploads.abort_all();
                    std::thread::sleep(RECONNECT_POLL);
                }
                Ok(None) => break Ending::Disconnected,
                Err(protocol::Error::Io(e)) => {
                    if conn.persistent {
                        say(&format!("reading from the host failed: {}", describe(&e)));
                        std::thread::sleep(RECONNECT_POLL);
                    } else {
                        break Ending::Disconnected;
                    }
                }
                Err(e) => {
                    let message = format!("{e}; the frame was skipped");
                    self.state.send(None, Response::Error { id: None, message });
                }
            }
        };

        uploads.abort_all();
        close();
        // The writer drains the outbox until it reaches this stop (its
        // writes fail fast once the connection is closed). The loop only
        // guards against a writer that died.
        let mut stop = Outgoing::Stop { conn: conn_id };
        while let Err(TrySendError::Full(again)) = self.state.outbox.try_send(stop) {
            if writer.is_finished() {
                break;
            }
            stop = again;
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = writer.join();
        ending
    }

    /// Kills every session's processes.
    pub fn kill_all(&self) {
        session::kill_all(&self.state);
    }

    /// Starts the main process and supervises it (see [`main_process`]):
    /// each start and exit is reported to whichever host is connected then
    /// (or next), and the latest again after every `HelloAck`. When the
    /// config options say to hold it, it starts once the first config is
    /// in place (or the hold's time is up).
    pub fn spawn_main(&self, spec: MainSpec, log: impl FnOnce() -> LogTarget + Send + 'static) {
        if spec.argv.is_empty() {
            return;
        }
        main_process::supervise(self.state.clone(), spec, log);
    }

    /// Handles one request; `Some` ends the loop.
    fn handle(&self, request: Request, uploads: &mut Uploads) -> Option<Ending> {
        let state = &self.state;
        let (id, result) = match request {
            Request::Hello { version: _, nonce } => {
                state.epoch.fetch_add(1, Ordering::SeqCst);
                session::kill_all(state);
                uploads.abort_all();
                let hostname =
                    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
                let kernel = nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default();
                state.send(None, Response::HelloAck { version: VERSION, nonce, hostname, kernel });
                if let Some(event) = lock(&state.main_status).clone() {
                    state.send(None, event);
                }
                return None;
            }
            Request::Ping { nonce } => {
                state.send(None, Response::Pong { nonce });
                return None;
            }
            Request::Shutdown { reboot } => return Some(Ending::Shutdown { reboot }),
            Request::Exec { id, argv, env, cwd, tty, stdin } => {
                let spec = session::Spec { id, argv, env, cwd, tty, stdin };
                (id, session::start(state, state.epoch(), spec))
            }
            Request::Stdin { id, data } => (id, session::write_stdin(state, id, data)),
            Request::CloseStdin { id } => (id, session::close_stdin(state, id)),
            Request::Signal { id, signal } => (id, session::signal(state, id, signal)),
            Request::Kill { id } => (id, session::kill(state, id)),
            Request::Resize { id, rows, cols } => (id, session::resize(state, id, rows, cols)),
            Request::PutFile { id, path, mode } => (id, uploads.begin(id, &path, mode)),
            Request::FileChunk { id, data } => (id, uploads.write(id, &data)),
            Request::FileEnd { id } => match uploads.finish(id) {
                Ok(true) => {
                    state.send(Some(state.epoch()), Response::Done { id });
                    return None;
                }
                Ok(false) => return None,
                Err(e) => (id, Err(e)),
            },
            Request::GetFile { id, path } => (id, files::start_download(state, state.epoch(), id, path)),
            Request::Config { id, json, env, revision } => {
                (id, config::apply(state, state.epoch(), id, &json, &env, revision))
            }
        };
        if let Err(message) = result {
            state.send(Some(state.epoch()), Response::Error { id: Some(id), message });
        }
        None
    }
}

/// Drains the outbox into the connection until told to stop. Flushes
/// whenever the outbox is empty. Once the connection breaks it keeps
/// draining, dropping responses, so that nobody waits on a full outbox for a
/// host that is gone (the request loop among them, which would then never
/// notice the end of its connection).
///
/// A persistent port is never given up: a failed write loses its response,
/// and the next one is tried.
fn write_loop(state: &State, conn: u64, persistent: bool, writer: Box<dyn Write + Send>, close: &dyn Fn()) {
    let rx = lock(&state.outbox_rx);
    let mut out = Some(BufWriter::with_capacity(OUT_BUFFER, writer));
    let broken = |out: &mut Option<BufWriter<_>>| {
        if persistent {
            say("writing to the host failed; the response was lost");
            // Forget what is buffered: the port is not writable now.
            *out = out.take().map(|w| BufWriter::with_capacity(OUT_BUFFER, w.into_parts().0));
            std::thread::sleep(RECONNECT_POLL);
        } else {
            *out = None;
            close();
        }
    };
    loop {
        let item = match rx.try_recv() {
            Ok(item) => item,
            Err(TryRecvError::Empty) => {
                if out.as_mut().is_some_and(|w| w.flush().is_err()) {
                    broken(&mut out);
                }
                match rx.recv() {
                    Ok(item) => item,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        match item {
            Outgoing::Stop { conn: c } if c == conn => {
                if let Some(w) = out.as_mut() {
                    let _ = w.flush();
                }
                return;
            }
            Outgoing::Stop { .. } => {}
            Outgoing::Frame { epoch: Some(epoch), .. } if epoch != state.epoch() => {}
            Outgoing::Frame { response, .. } => {
                let Some(w) = out.as_mut() else { continue };
                match protocol::write_frame(w, &response) {
                    Ok(()) => {}
                    Err(protocol::Error::Io(_)) => broken(&mut out),
                    Err(e) => say(&format!("a response was not sent: {e}")),
                }
            }
        }
    }
}
