//! One accepted connection, served by hyper under the listener's limits.

use std::io::IoSlice;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{Interest, Ready};
use tokio::sync::watch;

use crate::Limits;
use crate::activity::{Activity, Counted, Stall, Watched};

/// An accepted connection: a socket read and written through a shared
/// reference, as tokio's sockets allow, so that the server can look at its
/// readiness (has the client hung up?) while hyper owns the stream.
pub trait Conn: AsRawFd + Send + Sync + 'static {
    /// Whether the socket may have bytes to read (registers `cx` if not).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
    /// Reads what is there without waiting.
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Whether the socket may take bytes (registers `cx` if not).
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
    /// Writes what the socket takes now, without waiting.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
    /// The same, gathered.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;
    /// Waits until the socket is ready for `interest`, or closed.
    fn ready(&self, interest: Interest) -> impl Future<Output = std::io::Result<Ready>> + Send;
    /// How many bytes (0 or 1) are there to read, without taking them:
    /// 0 is the client's end of the stream. `WouldBlock` (none yet) clears
    /// the socket's readiness, as a read that finds nothing does.
    fn try_peek(&self) -> std::io::Result<usize>;

    /// Closes the writing half (the client reads the end of the stream).
    fn shutdown_write(&self) -> std::io::Result<()> {
        shutdown_write(self.as_raw_fd())
    }
}

macro_rules! conn {
    ($stream:ty) => {
        impl Conn for $stream {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                <$stream>::poll_read_ready(self, cx)
            }
            fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
                <$stream>::try_read(self, buf)
            }
            fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                <$stream>::poll_write_ready(self, cx)
            }
            fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
                <$stream>::try_write(self, buf)
            }
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
                <$stream>::try_write_vectored(self, bufs)
            }
            fn ready(&self, interest: Interest) -> impl Future<Output = std::io::Result<Ready>> + Send {
                <$stream>::ready(self, interest)
            }
            fn try_peek(&self) -> std::io::Result<usize> {
                <$stream>::try_io(self, Interest::READABLE, || peek(self.as_raw_fd()))
            }
        }
    };
}

conn!(tokio::net::TcpStream);
conn!(tokio::net::UnixStream);

#[allow(unsafe_code)]
fn peek(fd: std::os::fd::RawFd) -> std::io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: `fd` is the open socket of a stream borrowed for this call,
    // and `byte` is a writable byte that outlives it.
    let peeked = unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    usize::try_from(peeked).map_err(|_| std::io::Error::last_os_error())
}

#[allow(unsafe_code)]
fn shutdown_write(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: `fd` is the open socket of a stream borrowed for this call.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } != 0 {
        let error = std::io::Error::last_os_error();
        // The client closed first: nothing left to tell it.
        if error.raw_os_error() != Some(libc::ENOTCONN) {
            return Err(error);
        }
    }
    Ok(())
}

/// Serves one connection until the client closes it, a timeout closes it,
/// or, after `shutdown`, its last request is answered.
pub(crate) async fn serve<C, S, B>(
    conn: C,
    peer: Option<IpAddr>,
    service: S,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    C: Conn,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = Arc::new(conn);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched::new(conn.clone(), activity.clone()));
    let service = Counted::new(service, activity.clone(), peer);
    let mut http = http1::Builder::new();
    // Half-close allowed: hyper then reads a connection only for a
    // request's head and body, so a read pending while a request is in
    // flight is a body awaited (see `Activity::stalled`); a client that
    // hangs up is noticed by `Activity::hung_up` instead. That watcher
    // takes a client that shuts down only its sending side (`nc -N`) for
    // one gone, as hyper's default does: such a client gets no answer.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .half_close(true);
    let served = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(served);
    let mut draining = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(listener = limits.name, %error, "A connection ended with an error.");
                }
                return;
            }
            () = activity.idle(limits.idle_timeout) => {
                tracing::debug!(listener = limits.name, "Closed a connection idle for {:?}.", limits.idle_timeout);
                return;
            }
            stall = activity.stalled(limits.stall_timeout) => {
                let waiting = match stall {
                    Stall::Reading => "for the rest of a request's body",
                    Stall::Writing => "for the client to read its response",
                };
                tracing::debug!(
                    listener = limits.name,
                    peer = ?peer,
                    "Cut a request that waited {waiting} for {:?} with no byte moving.",
                    limits.stall_timeout
                );
                return;
            }
            () = activity.hung_up(conn.as_ref()) => {
                tracing::debug!(listener = limits.name, "The client hung up.");
                return;
            }
            _ = shutdown.wait_for(|stop| *stop), if !draining => {
                served.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}
