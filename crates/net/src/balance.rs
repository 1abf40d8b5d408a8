//! TCP balanced over a service's instances: what `hearth service create
//! -p HOSTPORT:GUESTPORT` publishes.
//!
//! [`bind`] takes the host port at once (a port in use is the caller's to
//! report, as for [`forward`](crate::forward)); [`Bound::run`] then accepts
//! until its shutdown future resolves. Each accepted connection goes to one
//! target of a [`Pool`] by the policy the apps ingress balances requests
//! with ([`hearth_routing::balance`]): the admitted target with the fewest
//! open connections, ties in turn; a target that refuses or does not
//! answer within [`CONNECT_TIMEOUT`] is passed over for another, up to
//! [`ATTEMPTS`] in all, so the client never sees it; and one that failed
//! three times in a row is left out of the next connections for 5 s,
//! doubling to 60 s while it keeps failing, until it takes one again.
//! Bytes are copied both ways as a forward copies them, half-closes
//! included.
//!
//! The pool is shared with whoever keeps it up to date ([`Pool::set`]): a
//! change of targets applies to the next connection, with no new listener,
//! and a target that stays keeps its state. Connections are tasks of their
//! own, so closing the listener lets those open finish.
//!
//! A target whose machine sleeps when idle ([`Target::machine`]) is passed
//! each connection through the host's [`Activity`], which counts it as the
//! machine's activity while it is open; a sleeping target takes a
//! connection only when no awake one can, and the connection waits for it
//! to wake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_routing::activity::{Activity, Open};
use hearth_routing::{Balancer, Outcome};
use tokio::net::{TcpListener, TcpStream};

use crate::forward::{self, Error};

/// How long connecting to one target may take before another is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many targets one client connection is tried on at most.
pub const ATTEMPTS: usize = 3;

/// The targets a published port balances over, with how many connections
/// each has open and which are ejected. Cheap to clone; clones share one
/// state.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    state: Arc<Mutex<PoolState>>,
    /// Where connections to machines are counted, and sleepers woken.
    activity: Option<Activity>,
}

/// One target of a pool, as a service's endpoints give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The machine behind it, if it is a machine that may sleep.
    pub machine: Option<String>,
    /// Its machine sleeps: a connection to it wakes it first.
    pub asleep: bool,
}

#[derive(Debug, Default)]
struct PoolState {
    balancer: Balancer<SocketAddr>,
    /// The machine behind each target that has one.
    machines: HashMap<SocketAddr, String>,
    /// How far the tests have moved this pool's clock on.
    #[cfg(test)]
    skew: Duration,
}

impl Pool {
    pub fn new(targets: Vec<SocketAddr>) -> Pool {
        let pool = Pool::default();
        pool.set(targets);
        pool
    }

    /// The pool of `targets`, which passes connections to machines through
    /// `activity`.
    pub fn with_activity(targets: Vec<Target>, activity: Activity) -> Pool {
        let pool = Pool { activity: Some(activity), ..Pool::default() };
        pool.set_targets(targets);
        pool
    }

    /// Replaces the targets with these awake ones, of no machine; the next
    /// connection chooses among these.
    pub fn set(&self, targets: Vec<SocketAddr>) {
        let targets = targets.into_iter().map(|addr| Target { addr, machine: None, asleep: false }).collect();
        self.set_targets(targets);
    }

    /// Replaces the targets; the next connection chooses among these.
    pub fn set_targets(&self, targets: Vec<Target>) {
        let mut state = self.lock();
        state.machines = targets.iter().filter_map(|t| Some((t.addr, t.machine.clone()?))).collect();
        let asleep: Vec<SocketAddr> = targets.iter().filter(|t| t.asleep).map(|t| t.addr).collect();
        state.balancer.set(targets.into_iter().map(|t| t.addr).collect());
        state.balancer.set_asleep(|addr| asleep.contains(addr));
    }

    pub fn targets(&self) -> Vec<SocketAddr> {
        self.lock().balancer.targets()
    }

    /// How many connections are open to `target`.
    pub fn open(&self, target: SocketAddr) -> usize {
        self.lock().balancer.outstanding(&target) as usize
    }

    /// Whether `target` is left out of the next connections, after failing
    /// three times in a row.
    pub fn is_ejected(&self, target: SocketAddr) -> bool {
        let state = self.lock();
        state.balancer.is_ejected(&target, state.now())
    }

    /// Takes the best target not in `tried`, counted as open until the
    /// lease is dropped; `None` if no target is left.
    fn lease(&self, tried: &[SocketAddr]) -> Option<Lease> {
        let mut state = self.lock();
        let now = state.now();
        let target = state.balancer.pick(now, tried)?;
        let machine = state.machines.get(&target).cloned();
        let asleep = state.balancer.is_asleep(&target);
        Some(Lease { pool: self.clone(), target, machine, asleep, open: None })
    }

    /// Records whether connecting to `target` worked.
    fn record(&self, target: SocketAddr, outcome: Outcome) {
        let mut state = self.lock();
        let now = state.now();
        state.balancer.record(&target, outcome, now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PoolState {
    fn now(&self) -> Instant {
        #[cfg(test)]
        return Instant::now() + self.skew;
        #[cfg(not(test))]
        Instant::now()
    }
}

/// One connection's claim on a target: counted as open while it lives,
/// and as its machine's activity once [`Lease::pass`] let it through.
#[derive(Debug)]
struct Lease {
    pool: Pool,
    target: SocketAddr,
    machine: Option<String>,
    asleep: bool,
    open: Option<Open>,
}

impl Lease {
    /// Counts the connection as its machine's activity, waking the machine
    /// first if it sleeps; why not, if it could not be woken.
    async fn pass(&mut self) -> Result<(), String> {
        let (Some(machine), Some(activity)) = (&self.machine, &self.pool.activity) else { return Ok(()) };
        self.open = Some(activity.pass(machine, self.asleep).await?);
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.lock().balancer.finish(&self.target);
    }
}

/// A published port whose listener is bound, ready to [`run`](Bound::run).
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
}

/// Takes `listen` now, so that a port in use is reported to the caller
/// rather than found out later.
pub async fn bind(listen: SocketAddr) -> Result<Bound, Error> {
    Ok(Bound { listener: forward::bind_tcp(listen).await? })
}

impl Bound {
    /// The address listened on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound socket has an address")
    }

    /// Accepts and balances over `pool` until `shutdown` resolves; then the
    /// port is released and the connections still open go on to their end.
    pub async fn run(self, pool: Pool, shutdown: impl Future<Output = ()> + Send) {
        let listen = self.local_addr();
        let mut connections = forward::accept_tcp(
            &self.listener,
            "a connection to a published port",
            shutdown,
            |client, peer| {
                let pool = pool.clone();
                async move { relay(client, peer, listen, &pool).await }
            },
        )
        .await;
        connections.detach_all();
    }
}

/// Connects the client to a target of the pool and copies both ways; the
/// client's connection is closed if no target can be reached.
async fn relay(client: TcpStream, peer: SocketAddr, listen: SocketAddr, pool: &Pool) {
    let Some((upstream, lease)) = connect(pool, peer, listen).await else { return };
    forward::copy_both_ways(client, upstream, peer, lease.target).await;
}

/// A connection to a target of the pool, trying another after a failure,
/// up to [`ATTEMPTS`] targets.
async fn connect(pool: &Pool, peer: SocketAddr, listen: SocketAddr) -> Option<(TcpStream, Lease)> {
    let mut tried = Vec::with_capacity(ATTEMPTS);
    while tried.len() < ATTEMPTS {
        let Some(mut lease) = pool.lease(&tried) else {
            if tried.is_empty() {
                tracing::debug!(client = %peer, %listen, "No instance passes: closing the connection.");
            } else {
                tracing::debug!(client = %peer, %listen, ?tried, "No other instance to try: closing the connection.");
            }
            return None;
        };
        let target = lease.target;
        tried.push(target);
        if let Err(error) = lease.pass().await {
            tracing::warn!(client = %peer, %listen, target_addr = %target, error, "An instance's machine did not wake; trying another.");
            pool.record(target, Outcome::Failed);
            continue;
        }
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await;
        let outcome = if matches!(connected, Ok(Ok(_))) { Outcome::Answered } else { Outcome::Failed };
        pool.record(target, outcome);
        match connected {
            Ok(Ok(upstream)) => return Some((upstream, lease)),
            Ok(Err(error)) => {
                tracing::debug!(client = %peer, %listen, target_addr = %target, %error, "Cannot connect to an instance; trying another.");
            }
            Err(_elapsed) => {
                tracing::debug!(
                    client = %peer, %listen, target_addr = %target, timeout = ?CONNECT_TIMEOUT,
                    "Connecting to an instance timed out; trying another."
                );
            }
        }
    }
    tracing::debug!(client = %peer, %listen, ?tried, "No instance could be reached: closing the connection.");
    None
}

#[cfg(test)]
mod tests {
    use hearth_routing::balance::{FAILURES_TO_EJECT, FIRST_EJECTION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn a_lease_counts_until_dropped_and_retries_skip_what_was_tried() {
        let a: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:80".parse().unwrap();
        let pool = Pool::new(vec![a, b]);
        let first = pool.lease(&[]).unwrap();
        assert_eq!((first.target, pool.open(a)), (a, 1));
        let second = pool.lease(&[]).unwrap();
        assert_eq!(second.target, b, "the idle one");
        drop(first);
        assert_eq!(pool.open(a), 0);
        assert_eq!(pool.lease(&[a]).unwrap().target, b, "a was tried");
        assert!(pool.lease(&[a, b]).is_none());
        assert!(Pool::new(vec![]).lease(&[]).is_none());
    }

    /// A server on loopback that answers every connection with `word`.
    async fn answering(listener: TcpListener, word: &'static str) {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(word.as_bytes()).await;
            });
        }
    }

    /// What the target a connection through `published` reached answered.
    async fn through(published: SocketAddr) -> String {
        let read = async {
            let mut stream = TcpStream::connect(published).await.expect("the published port accepts");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("the relay ends the stream");
            answer
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("a connection is relayed in time")
    }

    #[tokio::test]
    async fn a_target_that_refuses_three_times_is_left_out_until_its_time_is_up() {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        tokio::spawn(answering(live, "live"));
        let refusing = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = refusing.local_addr().unwrap();
        drop(refusing);
        let pool = Pool::new(vec![dead, live_addr]);
        let bound = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let published = bound.local_addr();
        tokio::spawn(bound.run(pool.clone(), std::future::pending()));

        // Every connection reaches the live target, trying the dead one in
        // its turn until it has refused three times.
        let mut connections = 0;
        while !pool.is_ejected(dead) {
            assert_eq!(through(published).await, "live");
            connections += 1;
            assert!(connections <= 2 * FAILURES_TO_EJECT, "ejected after {FAILURES_TO_EJECT} refusals");
        }
        assert_eq!(pool.lock().balancer.failures(&dead), FAILURES_TO_EJECT);
        // Ejected, it is not tried at all: no connection meets its refusal.
        for _ in 0..6 {
            assert_eq!(through(published).await, "live");
        }
        assert_eq!(pool.lock().balancer.failures(&dead), FAILURES_TO_EJECT, "not tried while ejected");

        // Back up, and its time up, it takes connections again.
        let back = TcpListener::bind(dead).await.expect("the refusing port is free again");
        tokio::spawn(answering(back, "back"));
        pool.lock().skew = FIRST_EJECTION;
        assert!(!pool.is_ejected(dead));
        let answers: Vec<String> = futures::future::join_all((0..4).map(|_| through(published))).await;
        assert!(answers.iter().any(|a| a == "back"), "{answers:?}");
        assert_eq!(pool.lock().balancer.failures(&dead), 0, "a success resets its failures");
    }
}
