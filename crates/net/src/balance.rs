//! TCP balanced over a service's instances: what `hearth service create
//! -p HOSTPORT:GUESTPORT` publishes.
//!
//! [`bind`] takes the host port at once (a port in use is the caller's to
//! report, as for [`forward`](crate::forward)); [`Bound::run`] then accepts
//! until its shutdown future resolves. Each accepted connection goes to one
//! target of a [`Pool`], the one with the fewest open connections (ties in
//! turn, see [`choose`]); a target that refuses or does not answer within
//! [`CONNECT_TIMEOUT`] is passed over for another, up to [`ATTEMPTS`] in
//! all, so the client never sees it. Bytes are copied both ways as a
//! forward copies them, half-closes included.
//!
//! The pool is shared with whoever keeps it up to date ([`Pool::set`]): a
//! change of targets applies to the next connection, with no new listener.
//! Connections are tasks of their own, so closing the listener lets those
//! open finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::forward::{self, Error};

/// How long connecting to one target may take before another is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many targets one client connection is tried on at most.
pub const ATTEMPTS: usize = 3;

/// At most this many connections are relayed at once per published port;
/// more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;

/// The targets a published port balances over, and how many connections
/// each has open. Cheap to clone; clones share one state.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    state: Arc<Mutex<PoolState>>,
}

#[derive(Debug, Default)]
struct PoolState {
    targets: Vec<SocketAddr>,
    /// Open connections by target; kept for a target that left the pool
    /// until its connections close, so that one coming back is not
    /// mistaken for an idle one.
    open: HashMap<SocketAddr, usize>,
    /// Where the next search for a target starts: ties go in turn.
    next: usize,
}

impl Pool {
    pub fn new(targets: Vec<SocketAddr>) -> Pool {
        let pool = Pool::default();
        pool.set(targets);
        pool
    }

    /// Replaces the targets; the next connection chooses among these.
    pub fn set(&self, targets: Vec<SocketAddr>) {
        self.lock().targets = targets;
    }

    pub fn targets(&self) -> Vec<SocketAddr> {
        self.lock().targets.clone()
    }

    /// How many connections are open to `target`.
    pub fn open(&self, target: SocketAddr) -> usize {
        self.lock().open.get(&target).copied().unwrap_or(0)
    }

    /// Takes the best target not in `tried`, counted as open until the
    /// lease is dropped; `None` if no target is left.
    fn lease(&self, tried: &[SocketAddr]) -> Option<Lease> {
        let mut state = self.lock();
        let open: Vec<usize> =
            state.targets.iter().map(|t| state.open.get(t).copied().unwrap_or(0)).collect();
        let skip: Vec<bool> = state.targets.iter().map(|t| tried.contains(t)).collect();
        let index = choose(&open, &skip, state.next)?;
        let target = state.targets[index];
        state.next = index + 1;
        *state.open.entry(target).or_insert(0) += 1;
        Some(Lease { pool: self.clone(), target })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One connection's claim on a target: counted as open while it lives.
#[derive(Debug)]
struct Lease {
    pool: Pool,
    target: SocketAddr,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        if let Some(count) = state.open.get_mut(&self.target) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.open.remove(&self.target);
            }
        }
    }
}

/// Which target a connection goes to: of those not `skip`ped, the one with
/// the fewest `open` connections; among equals, the first found searching
/// from `next` on, around the end, so that equals take turns when the
/// caller moves `next` past each choice. `None` if every target is skipped.
pub fn choose(open: &[usize], skip: &[bool], next: usize) -> Option<usize> {
    let len = open.len();
    (0..len)
        .map(|offset| (next + offset) % len)
        .filter(|&index| !skip.get(index).copied().unwrap_or(false))
        // min_by_key keeps the first of equal keys.
        .min_by_key(|&index| open[index])
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
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                // Accept only with a free slot, so that a flood waits in the backlog.
                accepted = async {
                    let permit = limit.clone().acquire_owned().await.expect("the semaphore is never closed");
                    (self.listener.accept().await, permit)
                } => match accepted {
                    (Ok((client, peer)), permit) => {
                        let pool = pool.clone();
                        tokio::spawn(async move {
                            relay(client, peer, listen, &pool).await;
                            drop(permit);
                        });
                    }
                    (Err(error), _) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(%listen, %error, "Accepting a connection to a published port failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
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
        let Some(lease) = pool.lease(&tried) else {
            if tried.is_empty() {
                tracing::debug!(client = %peer, %listen, "No instance passes: closing the connection.");
            } else {
                tracing::debug!(client = %peer, %listen, ?tried, "No other instance to try: closing the connection.");
            }
            return None;
        };
        let target = lease.target;
        tried.push(target);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
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
    use super::*;

    /// Chooses `picks` times from targets with `open` connections (none
    /// closing), each choice counted as open and moving the turn on, as the
    /// pool does; returns the targets chosen, as letters.
    fn picks(open: &[usize], skip: &[bool], picks: usize) -> String {
        let mut open = open.to_vec();
        let mut next = 0;
        let mut chosen = String::new();
        for _ in 0..picks {
            match choose(&open, skip, next) {
                Some(index) => {
                    open[index] += 1;
                    next = index + 1;
                    chosen.push(char::from(b'a' + u8::try_from(index).unwrap()));
                }
                None => chosen.push('-'),
            }
        }
        chosen
    }

    #[test]
    fn equals_take_turns() {
        assert_eq!(picks(&[0, 0, 0], &[], 6), "abcabc");
        assert_eq!(picks(&[0], &[], 3), "aaa");
    }

    #[test]
    fn the_fewest_open_connections_win() {
        // After b, b and c tie and it is c's turn.
        assert_eq!(picks(&[3, 0, 1], &[], 3), "bcb");
        assert_eq!(picks(&[2, 0], &[], 4), "bbab");
    }

    #[test]
    fn skipped_targets_are_never_chosen() {
        assert_eq!(picks(&[0, 5, 0], &[true, false, false], 3), "ccc");
        assert_eq!(picks(&[0, 0], &[true, true], 1), "-");
        assert_eq!(picks(&[], &[], 1), "-");
    }

    #[test]
    fn the_turn_wraps_around() {
        assert_eq!(choose(&[0, 0, 0], &[], 2), Some(2));
        assert_eq!(choose(&[0, 0, 0], &[], 3), Some(0));
        assert_eq!(choose(&[0, 0, 0], &[], 7), Some(1));
        assert_eq!(choose(&[1, 0, 0], &[], 2), Some(2));
    }

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
        // A target that leaves keeps its count until its connections close.
        pool.set(vec![a]);
        assert_eq!(pool.open(b), 1);
        drop(second);
        assert_eq!(pool.open(b), 0);
        assert!(Pool::new(vec![]).lease(&[]).is_none());
    }
}
