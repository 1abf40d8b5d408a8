//! Each app's log: its stdout and stderr, one line per request, and what
//! hearth has to say about it (deploys, traps, denied calls), in a bounded
//! in-memory ring with a broadcast for followers.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Lines kept per app.
pub const RING_LINES: usize = 2000;
/// Of those, hearth's own lines that the app's lines cannot push out.
const HEARTH_KEPT: usize = 200;
/// Lines a slow follower may fall behind before it misses some.
const FOLLOW_BACKLOG: usize = 1024;
/// Longest line kept; longer ones are cut.
const MAX_LINE: usize = 8 * 1024;
/// Output one request may write before the rest is dropped.
const MAX_OUTPUT_PER_REQUEST: usize = 256 * 1024;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The app's standard output.
    Stdout,
    /// The app's standard error.
    Stderr,
    /// A request: `GET /path 200 1.2ms`.
    Request,
    /// hearth, about the app: deploys, traps, limits, denied calls.
    Hearth,
}

/// One line of an app's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix milliseconds.
    pub time: u64,
    /// The version that wrote it (0 when no version was involved).
    pub version: u32,
    pub stream: LogStream,
    pub text: String,
}

/// Every app's lines as they are written, for the alert rules that read
/// logs: `(app, line)`. A reader that falls behind by more than
/// [`TAP_BACKLOG`] lines misses some, and is told so by the channel.
pub type Tap = broadcast::Sender<(Arc<str>, LogLine)>;

/// Lines the tap's reader may fall behind.
pub const TAP_BACKLOG: usize = 4096;

/// The last [`RING_LINES`] lines of one app, in the order written, except
/// that hearth's own lines (a deploy, a swap of compiled code, a trap) are
/// not pushed out by the app's:
///
/// - While the ring has room, every line is kept.
/// - A full ring drops its oldest line that is the app's (output or a
///   request), as long as it holds no more than [`HEARTH_KEPT`] of
///   hearth's lines.
/// - Beyond those, it drops its oldest line, whoever wrote it.
///
/// So `app logs` on a busy app still shows how its version came to serve.
#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    /// How many of `lines` are hearth's.
    hearth: usize,
}

impl Ring {
    fn push(&mut self, line: LogLine) {
        if self.lines.len() >= RING_LINES {
            let dropped = if self.hearth <= HEARTH_KEPT {
                let apps = self.lines.iter().position(|l| l.stream != LogStream::Hearth);
                apps.and_then(|at| self.lines.remove(at))
            } else {
                None
            };
            if let Some(dropped) = dropped.or_else(|| self.lines.pop_front())
                && dropped.stream == LogStream::Hearth
            {
                self.hearth -= 1;
            }
        }
        if line.stream == LogStream::Hearth {
            self.hearth += 1;
        }
        self.lines.push_back(line);
    }
}

/// One app's ring and its followers.
#[derive(Debug)]
pub(crate) struct AppLog {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<LogLine>,
    /// The app's name and the tap every line is also sent to.
    tap: Option<(Arc<str>, Tap)>,
}

impl AppLog {
    #[cfg(test)]
    pub(crate) fn new() -> Arc<AppLog> {
        Arc::new(AppLog { ring: Mutex::default(), tx: broadcast::channel(FOLLOW_BACKLOG).0, tap: None })
    }

    /// An app's log whose lines also go to `tap`.
    pub(crate) fn tapped(app: &str, tap: Tap) -> Arc<AppLog> {
        Arc::new(AppLog {
            ring: Mutex::default(),
            tx: broadcast::channel(FOLLOW_BACKLOG).0,
            tap: Some((Arc::from(app), tap)),
        })
    }

    pub(crate) fn push(&self, version: u32, stream: LogStream, text: impl Into<String>) {
        let mut text = text.into();
        if text.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(" …(line cut)");
        }
        let line = LogLine { time: crate::now_ms(), version, stream, text };
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.push(line.clone());
        if let Some((app, tap)) = &self.tap
            && tap.receiver_count() > 0
        {
            let _ = tap.send((app.clone(), line.clone()));
        }
        // Sent under the lock, so a `snapshot` sees each line exactly once:
        // either in the copy or on the receiver.
        let _ = self.tx.send(line);
    }

    /// The kept lines and a receiver for the ones that follow, with neither
    /// a gap nor an overlap between them.
    pub(crate) fn snapshot(&self) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (ring.lines.iter().cloned().collect(), self.tx.subscribe())
    }
}

/// A guest's stdout or stderr: complete lines go to the app's log as they
/// are written; a partial last line when the request ends.
#[derive(Clone)]
pub(crate) struct LogPipe {
    inner: Arc<Mutex<PipeState>>,
}

struct PipeState {
    log: Arc<AppLog>,
    version: u32,
    stream: LogStream,
    partial: Vec<u8>,
    written: usize,
    cut: bool,
}

impl LogPipe {
    pub(crate) fn new(log: Arc<AppLog>, version: u32, stream: LogStream) -> LogPipe {
        LogPipe {
            inner: Arc::new(Mutex::new(PipeState {
                log,
                version,
                stream,
                partial: Vec::new(),
                written: 0,
                cut: false,
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.write(bytes);
    }
}

impl PipeState {
    fn write(&mut self, mut bytes: &[u8]) {
        if self.cut {
            return;
        }
        if self.written + bytes.len() > MAX_OUTPUT_PER_REQUEST {
            bytes = &bytes[..MAX_OUTPUT_PER_REQUEST - self.written];
            self.cut = true;
        }
        self.written += bytes.len();
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            if let Some(line) = chunk.strip_suffix(b"\n") {
                self.partial.extend_from_slice(line);
                self.emit();
            } else {
                self.partial.extend_from_slice(chunk);
                if self.partial.len() > MAX_LINE {
                    self.emit();
                }
            }
        }
        if self.cut {
            self.emit();
            self.log.push(
                self.version,
                LogStream::Hearth,
                format!(
                    "The app wrote more than {} KiB in one request; the rest was dropped.",
                    MAX_OUTPUT_PER_REQUEST >> 10
                ),
            );
        }
    }

    fn emit(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(&self.partial);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        self.log.push(self.version, self.stream, line);
        self.partial.clear();
    }
}

impl Drop for PipeState {
    fn drop(&mut self) {
        self.emit();
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always ready: output past the per-request budget is dropped rather
        // than blocking or failing the app.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(log: &AppLog) -> Vec<String> {
        log.snapshot().0.into_iter().map(|l| l.text).collect()
    }

    #[test]
    fn pipe_splits_lines_and_flushes_the_rest_on_drop() {
        let log = AppLog::new();
        let pipe = LogPipe::new(log.clone(), 1, LogStream::Stdout);
        pipe.write_bytes(b"one\ntw");
        pipe.write_bytes(b"o\r\nthree");
        assert_eq!(texts(&log), ["one", "two"]);
        drop(pipe);
        assert_eq!(texts(&log), ["one", "two", "three"]);
    }

    #[test]
    fn ring_is_bounded_and_followers_see_what_comes_next() {
        let log = AppLog::new();
        for i in 0..RING_LINES + 5 {
            log.push(1, LogStream::Hearth, i.to_string());
        }
        let (lines, mut rx) = log.snapshot();
        assert_eq!(lines.len(), RING_LINES);
        assert_eq!(lines[0].text, "5");
        log.push(1, LogStream::Hearth, "next");
        assert_eq!(rx.try_recv().unwrap().text, "next");
    }

    #[test]
    fn a_full_ring_drops_its_oldest_line_that_is_the_apps() {
        let log = AppLog::new();
        log.push(1, LogStream::Request, "GET / 200 (first)");
        log.push(1, LogStream::Hearth, "Deployed version 1");
        for i in 0..RING_LINES {
            log.push(1, LogStream::Request, format!("GET / 200 ({i})"));
        }
        let lines = texts(&log);
        assert_eq!(lines.len(), RING_LINES);
        assert_eq!(lines[0], "Deployed version 1", "hearth's line stays, in its place");
        assert_eq!(lines[1], "GET / 200 (1)", "the oldest requests went");
        assert_eq!(lines.last().unwrap(), &format!("GET / 200 ({})", RING_LINES - 1));
    }

    #[test]
    fn beyond_the_lines_it_keeps_hearths_oldest_go_too() {
        let log = AppLog::new();
        for i in 0..HEARTH_KEPT + 1 {
            log.push(1, LogStream::Hearth, format!("hearth {i}"));
        }
        for i in 0..RING_LINES {
            log.push(1, LogStream::Stdout, format!("out {i}"));
        }
        let lines = texts(&log);
        assert_eq!(lines.len(), RING_LINES);
        // The first app line pushed out the oldest of hearth's, one over
        // the share; then the rest pushed out the app's oldest.
        assert_eq!(lines[0], "hearth 1");
        assert_eq!(lines[HEARTH_KEPT - 1], format!("hearth {HEARTH_KEPT}"));
        assert_eq!(lines[HEARTH_KEPT], format!("out {}", HEARTH_KEPT));
        assert_eq!(lines.iter().filter(|l| l.starts_with("hearth")).count(), HEARTH_KEPT);
    }

    #[test]
    fn output_past_the_budget_is_dropped_with_a_note() {
        let log = AppLog::new();
        let pipe = LogPipe::new(log.clone(), 1, LogStream::Stdout);
        let line = [b'x'; 1023].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..300 {
            pipe.write_bytes(&line);
        }
        let lines = texts(&log);
        assert_eq!(lines.len(), 257, "256 lines and the note");
        assert!(lines.last().unwrap().contains("dropped"));
    }
}
