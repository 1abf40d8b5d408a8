//! The wire protocol between the host and the guest agent.
//!
//! A connection is a byte stream (a virtio-serial port, a vsock or Unix
//! socket, a pipe) carrying frames in both directions:
//!
//! ```text
//! "HRTH" | payload length (u32, little endian) | payload (postcard)
//! ```
//!
//! The host sends [`Request`]s, the guest answers with [`Response`]s. Payloads
//! are at most [`MAX_PAYLOAD`] bytes; data travels in chunks of at most
//! [`MAX_CHUNK`] bytes. A virtio-serial port keeps its bytes when the host
//! side reconnects, so a reader can start in the middle of a frame:
//! [`FrameReader`] skips anything that is not a frame and resynchronises on
//! the next magic.
//!
//! Sessions (`Exec`) and file transfers (`PutFile`, `GetFile`) are named by an
//! `id` the host picks; many run at once and their frames interleave. `Hello`
//! ends every session and transfer, so a host that reconnects starts clean.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The four bytes that start every frame.
pub const MAGIC: [u8; 4] = *b"HRTH";
/// Magic plus length.
pub const HEADER_LEN: usize = 8;
/// The largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The largest data chunk (stdin, output, file contents) in one frame.
pub const MAX_CHUNK: usize = 64 * 1024;
/// The protocol version this crate speaks, exchanged in `Hello`/`HelloAck`.
pub const VERSION: u32 = 1;

/// A message from the host to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Starts a conversation: ends all sessions and transfers, answered by `HelloAck`.
    Hello { version: u32, nonce: u64 },
    /// Runs a program. Answered by `Started` then output and `Exited`, or by `Error`.
    Exec {
        id: u32,
        argv: Vec<String>,
        /// Added to the default environment (`PATH`, `HOME`, and `TERM` with a tty).
        env: Vec<(String, String)>,
        /// The working directory; `/` when absent.
        cwd: Option<String>,
        /// Run on a new pseudo-terminal of this size (rows, cols).
        tty: Option<(u16, u16)>,
        /// Whether the host will send stdin; without it stdin is `/dev/null`.
        stdin: bool,
    },
    /// Bytes for a session's stdin.
    Stdin { id: u32, data: Vec<u8> },
    /// Ends a session's stdin (on a tty: sends the EOF character).
    CloseStdin { id: u32 },
    /// Sends a signal (by number) to a session's process.
    Signal { id: u32, signal: i32 },
    /// Changes a tty session's window size.
    Resize { id: u32, rows: u16, cols: u16 },
    /// Starts an upload to `path`, created with `mode`; `FileChunk`s and a `FileEnd` follow.
    PutFile { id: u32, path: String, mode: u32 },
    /// Part of an upload.
    FileChunk { id: u32, data: Vec<u8> },
    /// Ends an upload: the file is synced and renamed into place, answered by `Done`.
    FileEnd { id: u32 },
    /// Downloads a regular file: answered by `FileChunk`s and a `FileEnd`, or by `Error`.
    GetFile { id: u32, path: String },
    /// Answered by `Pong` with the same nonce.
    Ping { nonce: u64 },
    /// Powers the machine off (or restarts it). Outside a VM, ends the server.
    Shutdown { reboot: bool },
    /// The machine's merged config at `revision`: `json` and `env` become
    /// `config.json` and `config.env` in the agent's config directory
    /// (`/run/hearth`), each replaced atomically. Answered by
    /// `ConfigApplied` or `Error`. Fits one frame: the host refuses larger.
    Config { id: u32, json: Vec<u8>, env: Vec<u8>, revision: u64 },
    /// Kills every process of a session with SIGKILL: its process group
    /// and, with a tty, every process of its Unix session (a shell's jobs
    /// have groups of their own). Added after version 1 went out, last so
    /// that the others keep their encoding: an older agent cannot decode it
    /// and answers `Error` without an id, so hosts follow it with `Signal`.
    Kill { id: u32 },
}

/// A message from the guest to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to `Hello`.
    HelloAck { version: u32, nonce: u64, hostname: String, kernel: String },
    /// A session's process is running.
    Started { id: u32, pid: u32 },
    /// Output of a session (all output, with a tty).
    Stdout { id: u32, data: Vec<u8> },
    /// Error output of a session without a tty.
    Stderr { id: u32, data: Vec<u8> },
    /// A session's process ended; sent after all of its output.
    Exited { id: u32, code: Option<i32>, signal: Option<i32> },
    /// Part of a download.
    FileChunk { id: u32, data: Vec<u8> },
    /// The end of a download, with the file's permission bits and size.
    FileEnd { id: u32, mode: u32, size: u64 },
    /// An upload is complete and durable.
    Done { id: u32 },
    /// A request failed; `id` names its session or transfer, if any.
    Error { id: Option<u32>, message: String },
    /// The answer to `Ping`.
    Pong { nonce: u64 },
    /// The main process (`hearth.main`) started, ended, is about to be
    /// restarted, or could not start. The latest is repeated after every
    /// `HelloAck`. The machine keeps running whatever it says.
    Main(MainStatus),
    /// The config of `revision` is in place. `changed` is false when both
    /// files already held exactly these bytes: nothing was rewritten and
    /// nothing reloaded. `reload` says how the reload action went, when one
    /// ran (only for a change, and never for the first config after boot).
    ConfigApplied { id: u32, revision: u64, changed: bool, reload: Option<ReloadOutcome> },
}

/// How a machine's reload action went after its config changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// What ran: `SIGHUP to the main process (pid 42)`, or `/bin/sh -c "CMD"`.
    pub action: String,
    /// Why it failed (no main process to signal, a non-zero exit, a
    /// timeout), or `None` when it worked.
    pub error: Option<String>,
    /// The command's exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended the command, if one did.
    pub signal: Option<i32>,
    /// The last 4 KiB of the command's output, stdout and stderr together.
    pub output: Vec<u8>,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// Where the main process is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MainState {
    #[default]
    Running,
    /// Ended, and not to be restarted.
    Exited,
    /// Ended, and to be started again after a delay.
    Restarting,
    /// Could not be started (no such program or user); not retried.
    FailedToStart,
}

/// The main process's state, as the agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainStatus {
    pub state: MainState,
    /// The process id in the guest, while running and after it ended.
    pub pid: Option<u32>,
    /// The exit code of the last run, if it exited.
    pub code: Option<i32>,
    /// The signal that ended the last run, if one did.
    pub signal: Option<i32>,
    /// How many times it was started again.
    pub restarts: u32,
    /// Why it could not start.
    pub error: Option<String>,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed.
    #[error("the transport failed")]
    Io(#[from] io::Error),
    /// A frame announced a payload larger than [`MAX_PAYLOAD`].
    #[error("a frame of {len} bytes exceeds the limit of {MAX_PAYLOAD} bytes")]
    TooLarge { len: usize },
    /// A frame's payload is not a message of the expected type.
    #[error("a frame's payload is not a valid message")]
    Decode(#[source] postcard::Error),
    /// A message could not be serialised.
    #[error("a message could not be encoded")]
    Encode(#[source] postcard::Error),
}

/// Serialises `msg` into one complete frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, Error> {
    let mut frame = Vec::with_capacity(HEADER_LEN + 64);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&[0; 4]);
    let mut frame = postcard::to_extend(msg, frame).map_err(Error::Encode)?;
    let len = frame.len() - HEADER_LEN;
    if len > MAX_PAYLOAD {
        return Err(Error::TooLarge { len });
    }
    // `len` ≤ MAX_PAYLOAD, which fits a u32.
    frame[4..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(frame)
}

/// Writes `msg` as one frame with a single `write_all`. Does not flush.
pub fn write_frame<W: Write + ?Sized, T: Serialize>(w: &mut W, msg: &T) -> Result<(), Error> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

/// Reads frames from a byte stream, skipping bytes that are not frames.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Where the unconsumed bytes of `buf` start.
    start: usize,
    skipped: u64,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a byte stream.
    pub fn new(inner: R) -> Self {
        Self { inner, buf: Vec::with_capacity(MAX_CHUNK + 2 * HEADER_LEN), start: 0, skipped: 0 }
    }

    /// The next frame's payload, or `None` at end of stream.
    ///
    /// Bytes before a magic are skipped (see [`skipped`](Self::skipped)). A
    /// frame whose length exceeds [`MAX_PAYLOAD`] is an error; the reader
    /// then resynchronises on the next magic after its first byte, so it can
    /// be called again.
    /// At end of stream a partial frame is discarded: bytes read after that
    /// (a port whose host reconnected) start afresh.
    pub fn read_frame(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let Some((at, len)) = self.fill_frame()? else { return Ok(None) };
        let payload = self.buf[at..at + len].to_vec();
        self.start = at + len;
        Ok(Some(payload))
    }

    /// The next frame decoded as a `T`, or `None` at end of stream.
    ///
    /// A payload that does not decode is an error; only its first byte is
    /// consumed, so a real frame hidden in stale bytes is still found.
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        let Some((at, len)) = self.fill_frame()? else { return Ok(None) };
        match postcard::from_bytes(&self.buf[at..at + len]) {
            Ok(msg) => {
                self.start = at + len;
                Ok(Some(msg))
            }
            Err(e) => {
                self.start = at - HEADER_LEN + 1;
                self.skipped += 1;
                Err(Error::Decode(e))
            }
        }
    }

    /// How many bytes were skipped so far while looking for frames.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Buffers bytes until a whole frame is at `self.start`; returns where its
    /// payload starts and how long it is.
    fn fill_frame(&mut self) -> Result<Option<(usize, usize)>, Error> {
        loop {
            self.seek_magic();
            let avail = self.buf.len() - self.start;
            if avail >= HEADER_LEN {
                let header = &self.buf[self.start..self.start + HEADER_LEN];
                let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
                if len > MAX_PAYLOAD {
                    // Skip one byte only: a real magic may overlap this one
                    // ("HRTHRTH"), and whatever follows is scanned again.
                    self.start += 1;
                    self.skipped += 1;
                    return Err(Error::TooLarge { len });
                }
                if avail >= HEADER_LEN + len {
                    return Ok(Some((self.start + HEADER_LEN, len)));
                }
            }
            if !self.fill()? {
                self.skipped += (self.buf.len() - self.start) as u64;
                self.buf.clear();
                self.start = 0;
                return Ok(None);
            }
        }
    }

    /// Drops bytes before the first magic, keeping a tail that may be the
    /// start of one.
    fn seek_magic(&mut self) {
        let data = &self.buf[self.start..];
        let drop = match data.windows(MAGIC.len()).position(|w| w == MAGIC) {
            Some(pos) => pos,
            None => {
                let keep = (1..MAGIC.len()).rev().find(|&k| data.ends_with(&MAGIC[..k])).unwrap_or(0);
                data.len() - keep
            }
        };
        self.start += drop;
        self.skipped += drop as u64;
    }

    /// Reads more bytes; false at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old_len = self.buf.len();
        self.buf.resize(old_len + MAX_CHUNK + HEADER_LEN, 0);
        let result = loop {
            match self.inner.read(&mut self.buf[old_len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(old_len + n);
        Ok(result? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_puts_the_payload_length_in_the_header() {
        let frame = encode(&Request::Ping { nonce: 7 }).unwrap();
        assert_eq!(&frame[..4], b"HRTH");
        let len = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - HEADER_LEN);
        let decoded: Request = postcard::from_bytes(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(decoded, Request::Ping { nonce: 7 });
    }

    #[test]
    fn a_magic_split_across_reads_is_found() {
        // A reader that returns one byte at a time splits every magic.
        struct Trickle(std::io::Cursor<Vec<u8>>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(1);
                self.0.read(&mut buf[..n])
            }
        }
        let mut bytes = b"xxHR".to_vec();
        bytes.extend(encode(&Request::Ping { nonce: 1 }).unwrap());
        let mut reader = FrameReader::new(Trickle(std::io::Cursor::new(bytes)));
        assert_eq!(reader.read::<Request>().unwrap(), Some(Request::Ping { nonce: 1 }));
        assert_eq!(reader.skipped(), 4);
        assert!(reader.read::<Request>().unwrap().is_none());
    }

    #[test]
    fn a_partial_frame_before_an_end_of_stream_is_dropped_and_reading_resumes() {
        // A virtio-serial port reads 0 bytes while the host is away, then
        // carries on with what the next host sends.
        struct Port(Vec<Vec<u8>>);
        impl Read for Port {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let chunk = self.0.remove(0);
                buf[..chunk.len()].copy_from_slice(&chunk);
                Ok(chunk.len())
            }
        }
        let old = encode(&Request::Ping { nonce: 1 }).unwrap();
        let new = encode(&Request::Ping { nonce: 2 }).unwrap();
        let mut reader = FrameReader::new(Port(vec![old[..old.len() - 1].to_vec(), vec![], new]));
        assert!(reader.read::<Request>().unwrap().is_none());
        assert_eq!(reader.read::<Request>().unwrap(), Some(Request::Ping { nonce: 2 }));
    }
}
