//! One accepted connection, served by hyper under the listener's limits.

use std::net::IpAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::Limits;
use crate::activity::{Activity, Counted, Watched};

/// An accepted connection: a byte stream that can also take a few bytes
/// without waiting (the refusal of a connection over a cap).
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes what the socket takes now, without waiting.
    fn try_send(&self, bytes: &[u8]) -> std::io::Result<usize>;
}

impl Conn for tokio::net::TcpStream {
    fn try_send(&self, bytes: &[u8]) -> std::io::Result<usize> {
        self.try_write(bytes)
    }
}

impl Conn for tokio::net::UnixStream {
    fn try_send(&self, bytes: &[u8]) -> std::io::Result<usize> {
        self.try_write(bytes)
    }
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
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched::new(conn, activity.clone()));
    let service = Counted::new(service, activity.clone(), peer);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let conn = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(listener = limits.name, %error, "A connection ended with an error.");
                }
                return;
            }
            () = activity.idle(limits.idle_timeout) => {
                tracing::debug!(listener = limits.name, "Closed a connection idle for {:?}.", limits.idle_timeout);
                return;
            }
            _ = shutdown.wait_for(|stop| *stop), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}
