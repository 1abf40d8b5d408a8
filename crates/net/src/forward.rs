//! Port forwarding from the host into machines, TCP and UDP: what
//! `hearth machine run -p HOSTPORT:GUESTPORT` sets up.
//!
//! [`bind`] takes the host port at once, so that a port already in use is an
//! error the caller reports ("TCP port 8080 on 127.0.0.1 is in use"); then
//! [`Bound::run`] relays until its shutdown future resolves.
//!
//! - TCP: each accepted connection gets its own connection to the target
//!   (within [`CONNECT_TIMEOUT`], else the client's connection is closed) and
//!   bytes are copied both ways; a half-close on one side is passed on to the
//!   other, so request-then-EOF protocols work.
//! - UDP: each client address gets a session, a socket connected to the
//!   target; what the target sends back on it goes to that client, from the
//!   listening socket. Sessions end after [`UDP_IDLE_TIMEOUT`] without
//!   traffic either way; beyond [`UDP_MAX_SESSIONS`], the least recently
//!   used session is ended to make room.
//! - A forward to a machine that sleeps when idle carries a [`Gate`]: each
//!   connection (each datagram, for UDP) counts as the machine's activity,
//!   and one that finds the machine asleep is held while it wakes (within
//!   [`WAKE_TIMEOUT`]), then passed through.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::activity::{Activity, Open};

/// How long connecting to the target may take before the client is dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub use crate::activity::WAKE_TIMEOUT;

/// A UDP session without traffic for this long is ended.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many UDP sessions (client addresses) per forward.
pub const UDP_MAX_SESSIONS: usize = 1024;

/// At most this many TCP connections are relayed at once per forward; more
/// wait in the listen backlog.
const TCP_MAX_CONNECTIONS: usize = 1024;

/// The largest UDP payload.
const DATAGRAM_MAX: usize = 65535;

/// Errors of port forwarding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process (or another forward) has the port.
    #[error("{protocol} port {} on {} is in use", .addr.port(), .addr.ip())]
    InUse { protocol: Protocol, addr: SocketAddr },
    /// Any other reason the port could not be taken (a privileged port, an
    /// address the host does not have).
    #[error("cannot listen on {protocol} {addr}")]
    Bind {
        protocol: Protocol,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The transport a forward relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// One port forward.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Forward {
    pub protocol: Protocol,
    /// Where the host listens, usually `127.0.0.1:HOSTPORT`.
    pub listen: SocketAddr,
    /// Where the traffic goes: `GUESTIP:GUESTPORT`.
    pub target: SocketAddr,
}

/// A forward whose port is taken, ready to [`run`](Bound::run).
#[derive(Debug)]
pub struct Bound {
    socket: Socket,
    target: SocketAddr,
    udp_idle_timeout: Duration,
    udp_max_sessions: usize,
    gate: Option<Gate>,
}

/// What a forward to a machine passes its traffic through: the machine's
/// activity, which counts it and says when the machine must be woken.
#[derive(Debug, Clone)]
pub struct Gate {
    pub machine: String,
    pub activity: Activity,
}

impl Gate {
    /// Counts a connection open, and wakes the machine first if it sleeps.
    async fn pass(&self) -> Result<Open, String> {
        self.activity.pass(&self.machine, false).await
    }

    /// A datagram passed: wakes the machine first if it sleeps.
    async fn touch(&self) -> Result<(), String> {
        if self.activity.touch(&self.machine) {
            self.activity.pass(&self.machine, true).await?;
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Takes the forward's listening port now, so that a port in use is
/// reported to the caller rather than found out later.
pub async fn bind(forward: &Forward) -> Result<Bound, Error> {
    let Forward { protocol, listen: addr, target } = *forward;
    let socket = match protocol {
        Protocol::Tcp => Socket::Tcp(bind_tcp(addr).await?),
        Protocol::Udp => Socket::Udp(UdpSocket::bind(addr).await.map_err(|e| bind_error(protocol, addr, e))?),
    };
    Ok(Bound {
        socket,
        target,
        udp_idle_timeout: UDP_IDLE_TIMEOUT,
        udp_max_sessions: UDP_MAX_SESSIONS,
        gate: None,
    })
}

/// A TCP listener on `addr`, or why not (also for [`balance`](crate::balance)).
pub(crate) async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|e| bind_error(Protocol::Tcp, addr, e))
}

fn bind_error(protocol: Protocol, addr: SocketAddr, source: io::Error) -> Error {
    match source.kind() {
        io::ErrorKind::AddrInUse => Error::InUse { protocol, addr },
        _ => Error::Bind { protocol, addr, source },
    }
}

impl Bound {
    /// The address the forward listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        match &self.socket {
            Socket::Tcp(listener) => listener.local_addr(),
            Socket::Udp(socket) => socket.local_addr(),
        }
        .expect("a bound socket has an address")
    }

    /// Changes how long an idle UDP session lives and how many there may be
    /// (defaults: [`UDP_IDLE_TIMEOUT`], [`UDP_MAX_SESSIONS`]). No effect on TCP.
    pub fn with_udp_sessions(mut self, idle_timeout: Duration, max_sessions: usize) -> Bound {
        self.udp_idle_timeout = idle_timeout;
        self.udp_max_sessions = max_sessions.max(1);
        self
    }

    /// Passes the traffic through `gate`: for a machine that sleeps when idle.
    pub fn with_gate(mut self, gate: Gate) -> Bound {
        self.gate = Some(gate);
        self
    }

    /// Relays until `shutdown` resolves. At shutdown the port is released and
    /// the connections and sessions still open are closed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        match self.socket {
            Socket::Tcp(listener) => run_tcp(listener, self.target, self.gate, shutdown).await,
            Socket::Udp(socket) => {
                let sessions = Sessions {
                    listen: Arc::new(socket),
                    target: self.target,
                    idle_timeout: self.udp_idle_timeout,
                    max: self.udp_max_sessions,
                    by_client: HashMap::new(),
                    epoch: Instant::now(),
                    gate: self.gate,
                };
                sessions.run(shutdown).await;
            }
        }
    }
}

async fn run_tcp(
    listener: TcpListener,
    target: SocketAddr,
    gate: Option<Gate>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = accept_tcp(&listener, "a forwarded connection", shutdown, move |client, peer| {
        let gate = gate.clone();
        async move {
            let _open = match &gate {
                None => None,
                Some(gate) => match gate.pass().await {
                    Ok(open) => Some(open),
                    Err(error) => {
                        tracing::warn!(client = %peer, machine = gate.machine, error, "Dropped a connection to a machine that could not wake.");
                        return;
                    }
                },
            };
            relay_tcp(client, peer, target).await;
        }
    })
    .await;
    // Dropping the set aborts the connections still open, closing both sides.
    drop(connections);
}

/// Accepts on `listener` until `shutdown` resolves, with at most
/// [`TCP_MAX_CONNECTIONS`] connections open at once (more wait in the
/// listen backlog), each served by `serve` in a task of the set returned,
/// which the caller aborts or detaches. An accept that fails (usually out
/// of file descriptors) backs off instead of spinning. For forwards and
/// [`balance`](crate::balance) alike.
pub(crate) async fn accept_tcp<F, Fut>(
    listener: &TcpListener,
    what: &str,
    shutdown: impl Future<Output = ()>,
    serve: F,
) -> JoinSet<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listen = listener.local_addr().ok();
    let limit = Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = async {
                let permit = limit.clone().acquire_owned().await.expect("the semaphore is never closed");
                (listener.accept().await, permit)
            } => match accepted {
                (Ok((client, peer)), permit) => {
                    let served = serve(client, peer);
                    connections.spawn(async move {
                        served.await;
                        drop(permit);
                    });
                }
                (Err(error), _) => {
                    tracing::warn!(?listen, %error, "Accepting {what} failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections
}

/// Connects to the target and copies both ways until both sides are done.
async fn relay_tcp(client: TcpStream, peer: SocketAddr, target: SocketAddr) {
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            tracing::debug!(
                client = %peer, target_addr = %target, %error,
                "Cannot connect to the forward's target."
            );
            return;
        }
        Err(_elapsed) => {
            tracing::debug!(
                client = %peer, target_addr = %target, timeout = ?CONNECT_TIMEOUT,
                "Connecting to the forward's target timed out."
            );
            return;
        }
    };
    copy_both_ways(client, upstream, peer, target).await;
}

/// Copies bytes both ways until both sides are done (also for
/// [`balance`](crate::balance)).
pub(crate) async fn copy_both_ways(
    mut client: TcpStream,
    mut upstream: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
) {
    // Forwarded ports are often interactive (shells, databases): no Nagle delay.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // copy_bidirectional passes a read EOF on as a write shutdown on the other side.
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(
                client = %peer, target_addr = %target, sent, received,
                "Forwarded connection closed."
            )
        }
        Err(error) => {
            tracing::debug!(client = %peer, target_addr = %target, %error, "Forwarded connection failed.")
        }
    }
}

/// The UDP sessions of one forward.
#[derive(Debug)]
struct Sessions {
    listen: Arc<UdpSocket>,
    target: SocketAddr,
    idle_timeout: Duration,
    max: usize,
    by_client: HashMap<SocketAddr, Session>,
    /// Activity times are stored as milliseconds since this instant, so that
    /// both directions can update them without a lock.
    epoch: Instant,
    gate: Option<Gate>,
}

/// One client's session: its socket to the target, and the task that sends
/// the target's replies back to the client. Dropping it ends the task.
#[derive(Debug)]
struct Session {
    socket: Arc<UdpSocket>,
    last_active: Arc<AtomicU64>,
    replies: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

impl Sessions {
    async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut buf = vec![0u8; DATAGRAM_MAX];
        // Sweep often enough that a session outlives its timeout by at most a quarter.
        let mut sweep = tokio::time::interval((self.idle_timeout / 4).max(Duration::from_millis(1)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                received = self.listen.recv_from(&mut buf) => match received {
                    Ok((len, client)) => self.send(client, &buf[..len]).await,
                    Err(error) => {
                        let target_addr = self.target;
                        tracing::debug!(%target_addr, %error, "Receiving a datagram to forward failed.");
                    }
                },
                _ = sweep.tick() => self.expire(),
            }
        }
    }

    /// Sends a client's datagram to the target through its session. A
    /// sleeping machine is woken first: every session goes to it, so
    /// holding the next datagrams meanwhile holds up no other machine.
    async fn send(&mut self, client: SocketAddr, datagram: &[u8]) {
        if let Some(gate) = &self.gate
            && let Err(error) = gate.touch().await
        {
            tracing::warn!(%client, machine = gate.machine, error, "Dropped a datagram to a machine that could not wake.");
            return;
        }
        // A session whose reply task ended cannot answer: replace it.
        if self.by_client.get(&client).is_some_and(|session| session.replies.is_finished()) {
            self.by_client.remove(&client);
        }
        let session = match self.by_client.get(&client) {
            Some(session) => session,
            None => match self.open(client).await {
                Ok(session) => self.by_client.entry(client).or_insert(session),
                Err(error) => {
                    tracing::debug!(
                        %client, target_addr = %self.target, %error,
                        "Cannot open a UDP session to the forward's target."
                    );
                    return;
                }
            },
        };
        session.last_active.store(millis_since(self.epoch), Ordering::Relaxed);
        // ECONNREFUSED here is the target's ICMP answer to an earlier datagram.
        if let Err(error) = session.socket.send(datagram).await {
            tracing::debug!(%client, target_addr = %self.target, %error, "Forwarding a datagram failed.");
        }
    }

    /// Opens a session for `client`, first ending the least recently used
    /// one if there are as many as allowed.
    async fn open(&mut self, client: SocketAddr) -> io::Result<Session> {
        if self.by_client.len() >= self.max
            && let Some(oldest) = self
                .by_client
                .iter()
                .min_by_key(|(_, session)| session.last_active.load(Ordering::Relaxed))
                .map(|(client, _)| *client)
        {
            tracing::debug!(
                client = %oldest, target_addr = %self.target,
                "Ended a UDP session to make room for another."
            );
            self.by_client.remove(&oldest);
        }
        let local: SocketAddr = match self.target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = Arc::new(UdpSocket::bind(local).await?);
        socket.connect(self.target).await?;
        let last_active = Arc::new(AtomicU64::new(millis_since(self.epoch)));
        let replies = tokio::spawn(relay_replies(
            socket.clone(),
            self.listen.clone(),
            client,
            last_active.clone(),
            self.epoch,
        ));
        Ok(Session { socket, last_active, replies })
    }

    /// Ends the sessions idle for longer than the timeout.
    fn expire(&mut self) {
        let now = millis_since(self.epoch);
        let idle = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        self.by_client
            .retain(|_, session| now.saturating_sub(session.last_active.load(Ordering::Relaxed)) < idle);
    }
}

/// Sends what the target sends on a session's socket back to its client.
async fn relay_replies(
    session: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    last_active: Arc<AtomicU64>,
    epoch: Instant,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        match session.recv(&mut buf).await {
            Ok(len) => {
                last_active.store(millis_since(epoch), Ordering::Relaxed);
                if let Err(error) = listen.send_to(&buf[..len], client).await {
                    tracing::debug!(%client, %error, "Sending a forwarded reply failed.");
                }
            }
            // Nothing listens on the target port (yet): the client's next datagram may find it.
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::debug!(%client, %error, "The forward's target refused a datagram.");
            }
            Err(error) => {
                tracing::debug!(%client, %error, "Receiving from the target failed: ending the session.");
                return;
            }
        }
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}
