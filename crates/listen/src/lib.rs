//! How hearth serves HTTP/1.1 on a listener, the same way for the API's TCP
//! port, the API's Unix socket and the apps ingress: no client can hold the
//! daemon's connections or file descriptors for long, and one listener's
//! flood cannot starve another.
//!
//! - A request's headers must arrive within [`Limits::header_read_timeout`]
//!   (a slow-loris header, trickled a byte at a time, is closed).
//! - A connection with no request in flight on which no byte moved for
//!   [`Limits::idle_timeout`] is closed: one that sends nothing, or a
//!   kept-alive one that sends no next request. A request is in flight
//!   from its handler's start to its response body's end, so a slow
//!   handler (a machine booting) or a long response (an event stream, a
//!   followed log) is not idle. Upgraded connections (exec's WebSocket)
//!   leave the server and are bounded by their session.
//! - A request in flight that waits on its client with no byte moving for
//!   [`Limits::stall_timeout`] is cut: a body trickled then stopped, or a
//!   response the client no longer reads (the socket takes no byte).
//!   Progress, not total time: a 1 GiB upload at a steady rate, or an
//!   event stream that sends a keep-alive now and then, goes on for as
//!   long as it moves; a handler at work is waiting on no one.
//! - A client that hangs up while its request is in flight ends it (its
//!   handler is dropped), as hyper itself would.
//! - Each listener has its own global cap, and TCP listeners a cap per peer
//!   address; a connection over a cap is answered a short 503 and closed at
//!   once, so it costs a descriptor for microseconds.
//! - An `accept` that fails (out of descriptors) backs off, doubling up to a
//!   second, and the listener keeps serving.
//!
//! The caps are fractions of the process's descriptor limit, which
//! [`Budget::raise_nofile`] raises to its hard limit at start: see
//! [`Budget`].

mod activity;
mod budget;
mod conn;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use budget::{Budget, HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_PER_PEER, STALL_TIMEOUT};
pub use conn::Conn;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
pub use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What one listener allows its connections.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The listener's name in logs ("API on TCP", "apps ingress").
    pub name: &'static str,
    /// Time a client gets to send a request's headers, counted from when
    /// the server starts waiting for them.
    pub header_read_timeout: Duration,
    /// Time a connection may move no byte while no request is in flight.
    pub idle_timeout: Duration,
    /// Time a request in flight may wait on its client (for its body's
    /// next bytes, or for the socket to take its response's next bytes)
    /// with no byte moving either way.
    pub stall_timeout: Duration,
    /// Connections open at once on this listener.
    pub max_connections: usize,
    /// Connections open at once from one peer address (TCP only).
    pub max_per_peer: usize,
    /// Whether refusals are the API's JSON error shape (else plain text).
    pub json_errors: bool,
}

/// Serves `service` on `listener` under `limits` until `shutdown` turns
/// true; then stops accepting, lets requests in flight finish, and returns
/// once every connection has closed (the caller bounds that wait).
pub async fn serve<L, S, B>(mut listener: L, limits: Limits, service: S, shutdown: watch::Receiver<bool>)
where
    L: Accept,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let counts = Counts::new(limits.clone());
    let limits = Arc::new(limits);
    let mut connections = JoinSet::new();
    let mut backoff = Backoff::default();
    let stopped = {
        let mut shutdown = shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    };
    tokio::pin!(stopped);
    loop {
        let pause = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, peer)) => {
                    backoff.reset(limits.name);
                    match counts.take(peer) {
                        Some(slot) => {
                            let (service, limits, shutdown) = (service.clone(), limits.clone(), shutdown.clone());
                            connections.spawn(async move {
                                conn::serve(conn, peer, service, &limits, shutdown).await;
                                drop(slot);
                            });
                        }
                        None => refuse(&conn, &limits, peer),
                    }
                    None
                }
                Err(error) if is_transient(&error) => {
                    tracing::debug!(listener = limits.name, %error, "A connection failed before it was accepted.");
                    None
                }
                Err(error) => Some(backoff.next(limits.name, &error)),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => None,
            () = &mut stopped => break,
        };
        if let Some(pause) = pause {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut stopped => break,
            }
        }
    }
    drop(listener);
    // Each connection saw the same signal and is finishing its request.
    while connections.join_next().await.is_some() {}
}

/// The address a request came from, in its extensions on TCP listeners
/// (a proxy names it in `X-Forwarded-For`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

/// A listener whose connections [`serve`] takes: TCP or Unix.
pub trait Accept: Send + 'static {
    /// The accepted connection.
    type Conn: Conn;
    /// Accepts the next connection, with its peer's address if it has one.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<(Self::Conn, Option<IpAddr>)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Conn, Option<IpAddr>)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(peer.ip().to_canonical())))
    }
}

impl Accept for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Conn, Option<IpAddr>)> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((stream, None))
    }
}

/// Errors of one connection that died before `accept` returned it: the
/// listener is fine, go on at once.
fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(error.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
}

/// Answers a connection over a cap with a 503 (written only if the socket
/// takes it at once, which a fresh one does) and closes it.
fn refuse<C: Conn>(conn: &C, limits: &Limits, peer: Option<IpAddr>) {
    tracing::debug!(listener = limits.name, peer = ?peer, "Refused a connection over the connection cap.");
    let what = match peer {
        Some(ip) => format!("{ip} has too many connections open to hearth's {}", limits.name),
        None => format!("hearth's {} has too many connections open", limits.name),
    };
    let hint = "close idle connections, or retry in a moment";
    let (content_type, body) = if limits.json_errors {
        let body =
            format!(r#"{{"error":{{"code":"too_many_connections","message":"{what}","hint":"{hint}"}}}}"#);
        ("application/json", body)
    } else {
        ("text/plain; charset=utf-8", format!("{what}: {hint}.\n"))
    };
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.try_write(response.as_bytes());
}

/// Connections open on one listener, in all and per peer.
#[derive(Debug)]
struct Counts {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection's place under the caps, given back when it drops.
#[derive(Debug)]
struct Slot {
    counts: Arc<Counts>,
    peer: Option<IpAddr>,
}

impl Counts {
    fn new(limits: Limits) -> Arc<Counts> {
        Arc::new(Counts { limits, open: Mutex::new((0, HashMap::new())) })
    }

    fn take(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_peer) = &mut *open;
        if *total >= self.limits.max_connections {
            return None;
        }
        if let Some(ip) = peer {
            let mine = by_peer.entry(ip).or_default();
            if *mine >= self.limits.max_per_peer {
                return None;
            }
            *mine += 1;
        }
        *total += 1;
        Some(Slot { counts: self.clone(), peer })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_peer) = &mut *open;
        *total -= 1;
        if let Some(ip) = self.peer
            && let std::collections::hash_map::Entry::Occupied(mut entry) = by_peer.entry(ip)
        {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// The pause after a failed `accept`: 10 ms, doubling to 1 s, so that a
/// listener out of descriptors neither spins nor gives up.
#[derive(Debug, Default)]
struct Backoff {
    pause: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self, listener: &str, error: &std::io::Error) -> Duration {
        let pause = match self.pause {
            None => {
                tracing::warn!(
                    listener,
                    %error,
                    "Cannot accept connections (out of file descriptors?); backing off until one closes."
                );
                Self::FIRST
            }
            Some(pause) => (pause * 2).min(Self::MAX),
        };
        self.pause = Some(pause);
        pause
    }

    fn reset(&mut self, listener: &str) {
        if self.pause.take().is_some() {
            tracing::info!(listener, "Accepting connections again.");
        }
    }
}

#[cfg(test)]
mod tests;
