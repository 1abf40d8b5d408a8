//! A userspace delay line, for kernels without `sch_netem`.
//!
//! Packets travelling towards a delayed machine are sent to an NFQUEUE by
//! rules hearth owns ([`apply_rules`]); a thread ([`DelayLine`]) reads which
//! packets arrived, holds each one's id for its delay ± uniform jitter, and
//! then accepts it. Only metadata crosses into userspace (the queue is bound
//! in copy-meta mode), verdicts go by packet id in whatever order the packets
//! fall due, and each delayed tap has a queue of its own so the queue number
//! says what delay a packet gets.
//!
//! The rules match what netem on the tap would shape, the traffic the tap
//! sends to its guest, in two parts: frames the bridge switches to the tap
//! from other ports (bridged IPv4, seen by iptables through br_netfilter and
//! matched with `physdev`), and what the host itself sends or routes to the
//! guest's address through the bridge. IPv6 and ARP pass undelayed. Every
//! rule has `--queue-bypass`: while no daemon listens, traffic flows
//! undelayed rather than being dropped.
//!
//! The rules live in one iptables chain per daemon in the `mangle` table
//! (nftables' own `queue` statement needs `CONFIG_NFT_QUEUE`, which kernels
//! with NFQUEUE do not always have; iptables reaches the same kernel queue
//! through `xt_NFQUEUE`). Queue numbers are claimed with the kernel: a number
//! another socket holds is refused, so parallel daemons never share one.

use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

use crate::cmd::{Cmd, check_ifname, stderr};
pub use crate::cmd::{Error, Netns};
use crate::nfqueue::{self, Event};

/// How long each packet is held: `delay`, ± up to `jitter`, uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub delay: Duration,
    pub jitter: Duration,
}

impl Shape {
    fn draw(&self, rng: &mut impl rand::Rng) -> Duration {
        if self.jitter.is_zero() {
            return self.delay;
        }
        let jitter = self.jitter.as_nanos() as i128;
        let offset = rng.random_range(-jitter..=jitter);
        Duration::from_nanos((self.delay.as_nanos() as i128 + offset).max(0) as u64)
    }
}

/// Packets a queue holds at most. At 100 ms of delay this is 100 000
/// packets a second, far beyond lab traffic; past it the queue fails open
/// (packets pass undelayed) rather than tail-dropping.
pub const QUEUE_LEN: u32 = 10_000;

/// The socket's receive buffer: room for bursts of metadata messages while
/// the thread is busy sending verdicts. Held packets do not occupy it.
const RECV_BUFFER: usize = 4 << 20;

/// How long a bind or unbind may take before we call the thread stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Queue numbers tried after the first, when other sockets hold them.
const QUEUE_TRIES: u16 = 256;

/// The delay line: a thread owning an nfnetlink_queue socket. Dropping it
/// accepts every packet it holds, unbinds its queues and stops the thread.
#[derive(Debug)]
pub struct DelayLine {
    commands: Mutex<mpsc::Sender<Command>>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

/// Where the kernel's answer to a bind or unbind goes.
type Reply = mpsc::Sender<Result<(), Errno>>;

enum Command {
    Bind {
        queue: u16,
        shape: Shape,
        reply: Reply,
    },
    Set {
        queue: u16,
        shape: Shape,
    },
    Unbind {
        queue: u16,
        reply: Reply,
    },
    /// How many packets are held, by queue (tests).
    Held {
        reply: mpsc::Sender<HashMap<u16, usize>>,
    },
}

impl DelayLine {
    /// Starts the thread, with its socket in `ns`.
    pub fn start(ns: &Netns) -> Result<DelayLine, Error> {
        let (commands, receive) = mpsc::channel();
        let (wake, wake_rx) =
            UnixStream::pair().map_err(|e| io_error("create the delay line's wake-up pipe", e))?;
        wake.set_nonblocking(true).map_err(|e| io_error("make the wake-up pipe non-blocking", e))?;
        wake_rx.set_nonblocking(true).map_err(|e| io_error("make the wake-up pipe non-blocking", e))?;
        let (started_tx, started) = mpsc::channel();
        let ns = ns.clone();
        let thread = std::thread::Builder::new()
            .name("hearth-delay".to_owned())
            .spawn(move || match open_socket(&ns) {
                Ok(socket) => {
                    let _ = started_tx.send(Ok(()));
                    Worker::new(socket, receive, wake_rx).run();
                }
                Err(error) => {
                    let _ = started_tx.send(Err(error));
                }
            })
            .map_err(|e| io_error("start the delay line's thread", e))?;
        match started.recv() {
            Ok(Ok(())) => Ok(DelayLine { commands: Mutex::new(commands), wake, thread: Some(thread) }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => Err(Error::Delay {
                what: "start the delay line".to_owned(),
                reason: "its thread ended before opening its socket".to_owned(),
                hint: BUG_HINT.to_owned(),
            }),
        }
    }

    /// Claims a queue for packets that get `shape`: `first`, or the next
    /// number no other socket holds. Returns the number claimed.
    pub fn bind(&self, first: u16, shape: Shape) -> Result<u16, Error> {
        let mut last = Errno::EPERM;
        for queue in (0..QUEUE_TRIES).map(|i| first.wrapping_add(i)) {
            let (reply, answer) = mpsc::channel();
            self.send(Command::Bind { queue, shape, reply })?;
            match self.wait(&answer, "bind a queue")? {
                Ok(()) => return Ok(queue),
                // Another socket (another daemon) holds this number.
                Err(errno @ (Errno::EPERM | Errno::EBUSY | Errno::EEXIST)) => last = errno,
                Err(errno) => return Err(bind_error(queue, errno)),
            }
        }
        Err(Error::Delay {
            what: format!("claim a queue from {first} to {}", first.wrapping_add(QUEUE_TRIES - 1)),
            reason: format!("all are held by other programs ({last})"),
            hint:
                "stop the program holding them (`cat /proc/net/netfilter/nfnetlink_queue` lists bound queues)"
                    .to_owned(),
        })
    }

    /// Whether the thread still runs: it stops only if it cannot wait for
    /// its socket any more, which it logs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|thread| !thread.is_finished())
    }

    /// Changes the delay of packets arriving from now on in `queue`.
    pub fn set(&self, queue: u16, shape: Shape) -> Result<(), Error> {
        self.send(Command::Set { queue, shape })
    }

    /// Accepts every packet `queue` holds, then gives the queue back.
    pub fn unbind(&self, queue: u16) -> Result<(), Error> {
        let (reply, answer) = mpsc::channel();
        self.send(Command::Unbind { queue, reply })?;
        match self.wait(&answer, "unbind a queue")? {
            // Not bound (any more): nothing to give back.
            Ok(()) | Err(Errno::ENODEV | Errno::ENOENT) => Ok(()),
            Err(errno) => Err(Error::Delay {
                what: format!("unbind queue {queue}"),
                reason: errno.to_string(),
                hint: BUG_HINT.to_owned(),
            }),
        }
    }

    /// How many packets each queue holds right now.
    pub fn held(&self) -> Result<HashMap<u16, usize>, Error> {
        let (reply, answer) = mpsc::channel();
        self.send(Command::Held { reply })?;
        self.wait(&answer, "count held packets")
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        let sent = self.commands.lock().unwrap_or_else(std::sync::PoisonError::into_inner).send(command);
        if sent.is_err() {
            return Err(stopped());
        }
        // A full pipe already holds a wake-up.
        let _ = (&self.wake).write(&[1]);
        Ok(())
    }

    fn wait<T>(&self, answer: &mpsc::Receiver<T>, what: &str) -> Result<T, Error> {
        answer.recv_timeout(REPLY_TIMEOUT).map_err(|e| match e {
            mpsc::RecvTimeoutError::Disconnected => stopped(),
            mpsc::RecvTimeoutError::Timeout => Error::Delay {
                what: what.to_owned(),
                reason: format!("the kernel did not answer within {REPLY_TIMEOUT:?}"),
                hint: BUG_HINT.to_owned(),
            },
        })
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        // A closed channel tells the thread to let everything go and stop.
        drop(std::mem::replace(
            self.commands.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner),
            mpsc::channel().0,
        ));
        let _ = (&self.wake).write(&[1]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a kernel needs to delay packets at all.
pub(crate) const UNSUPPORTED_HINT: &str = "this kernel can delay packets neither with tc netem nor with a \
    queue: it needs sch_netem (`modprobe sch_netem`, CONFIG_NET_SCH_NETEM), or NFQUEUE \
    (CONFIG_NETFILTER_NETLINK_QUEUE with CONFIG_NETFILTER_XT_TARGET_NFQUEUE and the physdev match)";

const BUG_HINT: &str = "this is a bug in hearth's delay line; the daemon's log has details";

fn stopped() -> Error {
    Error::Delay {
        what: "reach the delay line".to_owned(),
        reason: "its thread has stopped".to_owned(),
        hint: "restart the daemon; its log says why the thread stopped".to_owned(),
    }
}

fn io_error(what: &str, error: std::io::Error) -> Error {
    Error::Delay { what: what.to_owned(), reason: error.to_string(), hint: BUG_HINT.to_owned() }
}

fn bind_error(queue: u16, errno: Errno) -> Error {
    let (what, reason) = (format!("bind queue {queue}"), errno.to_string());
    match errno {
        Errno::EPROTONOSUPPORT | Errno::EOPNOTSUPP | Errno::EINVAL => {
            Error::DelayUnsupported { what, reason, hint: UNSUPPORTED_HINT.to_owned() }
        }
        Errno::EACCES => {
            Error::Delay { what, reason, hint: "run hearth as root (it needs CAP_NET_ADMIN)".to_owned() }
        }
        _ => Error::Delay { what, reason, hint: BUG_HINT.to_owned() },
    }
}

/// A netlink socket for nfnetlink in `ns`, bound, with a large buffer.
fn open_socket(ns: &Netns) -> Result<OwnedFd, Error> {
    if let Netns::Named(name) = ns {
        // This thread does nothing else, so it can stay in the namespace.
        let path = format!("/run/netns/{name}");
        let file = std::fs::File::open(&path).map_err(|e| Error::Delay {
            what: format!("open the network namespace {path}"),
            reason: e.to_string(),
            hint: "`ip netns list` shows the namespaces that exist".to_owned(),
        })?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| Error::Delay {
            what: format!("enter the network namespace {name}"),
            reason: e.to_string(),
            hint: "run hearth as root (it needs CAP_SYS_ADMIN to enter a namespace)".to_owned(),
        })?;
    }
    let failed = |what: &str, errno: Errno| {
        let (what, reason) = (what.to_owned(), errno.to_string());
        if errno == Errno::EPROTONOSUPPORT {
            Error::DelayUnsupported { what, reason, hint: UNSUPPORTED_HINT.to_owned() }
        } else {
            Error::Delay { what, reason, hint: "run hearth as root (it needs CAP_NET_ADMIN)".to_owned() }
        }
    };
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| failed("open an nfnetlink socket", e))?;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
        .map_err(|e| failed("bind an nfnetlink socket", e))?;
    // Without CAP_NET_ADMIN the forced size is refused; the default still works.
    if socket::setsockopt(&fd, socket::sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
        let _ = socket::setsockopt(&fd, socket::sockopt::RcvBuf, &RECV_BUFFER);
    }
    Ok(fd)
}

/// A packet waiting for its verdict, ordered by when it is due.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    due: Instant,
    queue: u16,
    id: u32,
}

struct Worker {
    socket: OwnedFd,
    commands: mpsc::Receiver<Command>,
    wake: UnixStream,
    shapes: HashMap<u16, Shape>,
    /// Earliest due first.
    held: BinaryHeap<std::cmp::Reverse<Held>>,
    /// Binds and unbinds waiting for the kernel's answer, by sequence
    /// number, with the queue a bind is for.
    pending: HashMap<u32, (Reply, Option<u16>)>,
    seq: u32,
    out: Vec<u8>,
    rng: rand::rngs::ThreadRng,
}

impl Worker {
    fn new(socket: OwnedFd, commands: mpsc::Receiver<Command>, wake: UnixStream) -> Self {
        Worker {
            socket,
            commands,
            wake,
            shapes: HashMap::new(),
            held: BinaryHeap::new(),
            pending: HashMap::new(),
            seq: 0,
            out: Vec::with_capacity(64 << 10),
            rng: rand::rng(),
        }
    }

    fn run(mut self) {
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            let timeout = match self.held.peek() {
                None => PollTimeout::NONE,
                Some(first) => {
                    // Round up, so that we do not wake a little early and spin.
                    let wait =
                        first.0.due.saturating_duration_since(Instant::now()) + Duration::from_micros(999);
                    PollTimeout::try_from(Duration::from_millis(wait.as_millis() as u64))
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [
                PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            if let Err(errno) = poll(&mut fds, timeout)
                && errno != Errno::EINTR
            {
                tracing::error!(error = %errno, "The delay line cannot wait for packets; it stops.");
                break;
            }
            if !self.take_commands() {
                break;
            }
            self.receive(&mut buffer);
            self.release_due();
        }
        // Let everything go, and give the queues back.
        self.release_all(None);
        let queues: Vec<u16> = self.shapes.keys().copied().collect();
        for queue in queues {
            let seq = self.next_seq();
            nfqueue::unbind(&mut self.out, seq, queue);
        }
        self.flush();
    }

    /// Handles the commands waiting; `false` once the handle is gone.
    fn take_commands(&mut self) -> bool {
        let mut drain = [0u8; 64];
        while matches!((&self.wake).read(&mut drain), Ok(n) if n > 0) {}
        loop {
            match self.commands.try_recv() {
                Ok(Command::Bind { queue, shape, reply }) => {
                    self.shapes.insert(queue, shape);
                    let seq = self.next_seq();
                    self.pending.insert(seq, (reply, Some(queue)));
                    nfqueue::bind(
                        &mut self.out,
                        seq,
                        queue,
                        QUEUE_LEN,
                        nfqueue::F_FAIL_OPEN | nfqueue::F_GSO,
                    );
                }
                Ok(Command::Set { queue, shape }) => {
                    self.shapes.insert(queue, shape);
                }
                Ok(Command::Unbind { queue, reply }) => {
                    self.release_all(Some(queue));
                    self.shapes.remove(&queue);
                    let seq = self.next_seq();
                    self.pending.insert(seq, (reply, None));
                    nfqueue::unbind(&mut self.out, seq, queue);
                }
                Ok(Command::Held { reply }) => {
                    let mut counts = HashMap::new();
                    for held in &self.held {
                        *counts.entry(held.0.queue).or_default() += 1;
                    }
                    let _ = reply.send(counts);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
        self.flush();
        true
    }

    /// Reads every datagram waiting on the socket.
    fn receive(&mut self, buffer: &mut [u8]) {
        loop {
            let len = match socket::recv(self.socket.as_raw_fd(), buffer, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => len,
                Err(Errno::EAGAIN | Errno::EINTR) => return,
                // The socket overflowed: the kernel let those packets pass
                // undelayed (the queue fails open), and the socket goes on.
                Err(Errno::ENOBUFS) => {
                    tracing::debug!("The delay line fell behind; some packets passed undelayed.");
                    continue;
                }
                Err(errno) => {
                    tracing::warn!(error = %errno, "The delay line cannot read from its socket.");
                    return;
                }
            };
            let events = match nfqueue::parse(&buffer[..len]) {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(error = %error, "The delay line skipped a message.");
                    continue;
                }
            };
            let now = Instant::now();
            for event in events {
                match event {
                    Event::Packet { queue, id } => match self.shapes.get(&queue) {
                        Some(shape) => {
                            let due = now + shape.draw(&mut self.rng);
                            self.held.push(std::cmp::Reverse(Held { due, queue, id }));
                        }
                        None => self.accept(queue, id),
                    },
                    Event::Ack { seq, errno } => match self.pending.remove(&seq) {
                        Some((reply, bound)) => {
                            if errno != 0
                                && let Some(queue) = bound
                            {
                                // The queue is not ours: its packets are not either.
                                self.shapes.remove(&queue);
                            }
                            let _ = reply.send(if errno == 0 { Ok(()) } else { Err(Errno::from_raw(errno)) });
                        }
                        // A verdict for a packet the kernel no longer holds
                        // (its queue was unbound): nothing to do.
                        None => tracing::debug!(seq, errno, "The kernel refused a delay line request."),
                    },
                }
            }
            self.flush();
        }
    }

    /// Accepts the packets that are due.
    fn release_due(&mut self) {
        let now = Instant::now();
        while self.held.peek().is_some_and(|first| first.0.due <= now) {
            if let Some(std::cmp::Reverse(held)) = self.held.pop() {
                self.accept(held.queue, held.id);
            }
        }
        self.flush();
    }

    /// Accepts every packet held for `queue` (all of them for `None`), due or not.
    fn release_all(&mut self, queue: Option<u16>) {
        let (go, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| queue.is_none_or(|q| h.0.queue == q));
        self.held = keep.into_iter().collect();
        for std::cmp::Reverse(held) in go {
            self.accept(held.queue, held.id);
        }
        self.flush();
    }

    fn accept(&mut self, queue: u16, id: u32) {
        nfqueue::accept(&mut self.out, queue, id);
        // Keep datagrams well under the socket's send limit.
        if self.out.len() > 60 << 10 {
            self.flush();
        }
    }

    fn next_seq(&mut self) -> u32 {
        // 0 is what the kernel answers unacknowledged verdicts with.
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends what `out` holds. Several messages go in one datagram.
    fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if let Err(errno) = socket::send(self.socket.as_raw_fd(), &self.out, MsgFlags::empty()) {
            tracing::warn!(error = %errno, "The delay line could not send to the kernel.");
            // Binds and unbinds in this batch will get no answer.
            for (_, (reply, bound)) in self.pending.drain() {
                if let Some(queue) = bound {
                    self.shapes.remove(&queue);
                }
                let _ = reply.send(Err(errno));
            }
        }
        self.out.clear();
    }
}

/// A tap whose incoming traffic goes through `queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tap: String,
    /// The bridge the tap is a port of.
    pub bridge: String,
    /// The guest's address behind the tap.
    pub ip: Ipv4Addr,
    pub queue: u16,
}

/// The longest iptables chain name.
const CHAIN_MAX: usize = 28;

/// The `iptables-restore` input that makes `chain` hold exactly the rules
/// for `targets` (declaring the chain flushes it), with `jump` adding the
/// jump into it from `POSTROUTING`.
pub fn render_rules(chain: &str, targets: &[Target], jump: bool) -> String {
    let mut s = format!("*mangle\n:{chain} - [0:0]\n");
    for t in targets {
        let queue = format!("-j NFQUEUE --queue-num {} --queue-bypass", t.queue);
        let _ = writeln!(
            s,
            "-A {chain} -m physdev --physdev-out {tap} -m comment --comment \"hearth delay {tap}: bridged\" {queue}",
            tap = t.tap
        );
        let _ = writeln!(
            s,
            "-A {chain} -o {bridge} -d {ip}/32 -m physdev ! --physdev-is-bridged -m comment --comment \"hearth delay {tap}: from the host\" {queue}",
            bridge = t.bridge,
            ip = t.ip,
            tap = t.tap
        );
    }
    if jump {
        let _ = writeln!(s, "-I POSTROUTING 1 -j {chain}");
    }
    s.push_str("COMMIT\n");
    s
}

/// Makes `chain` in `ns` hold the rules for `targets`, jumped to from
/// `mangle POSTROUTING`, in one transaction; with no targets, removes the
/// chain and its jump (but not the table: [`remove_mangle_if_empty`]).
/// Absent is fine either way.
pub fn apply_rules(ns: &Netns, chain: &str, targets: &[Target]) -> Result<(), Error> {
    check_chain(chain)?;
    for t in targets {
        check_ifname(&t.tap)?;
        check_ifname(&t.bridge)?;
    }
    let (exists, jumped) = chain_state(ns, chain)?;
    let script = if targets.is_empty() {
        if !exists {
            return Ok(());
        }
        let mut s = "*mangle\n".to_owned();
        if jumped {
            let _ = writeln!(s, "-D POSTROUTING -j {chain}");
        }
        let _ = writeln!(s, "-F {chain}\n-X {chain}\nCOMMIT");
        s
    } else {
        render_rules(chain, targets, !jumped)
    };
    Cmd::new(ns, "iptables-restore").args(["-w", "--noflush"]).run_with_stdin(Some(&script))?;
    Ok(())
}

/// Deletes `ns`'s `table ip mangle` if nothing is left in it but an empty
/// `POSTROUTING` chain, atomically (see [`nfqueue::delete_table_if_empty`]):
/// iptables makes that table for hearth's chain and leaves it when the
/// chain goes. Returns whether it did.
///
/// Call it only once no packet is queued: the kernel drops every packet
/// held in the namespace's queues when a hook goes away.
pub fn remove_mangle_if_empty(ns: &Netns) -> Result<bool, Error> {
    // Entering a namespace changes the calling thread's, so do it on a
    // thread of its own.
    std::thread::scope(|scope| {
        scope.spawn(|| delete_if_empty_here(ns)).join().unwrap_or_else(|_| {
            Err(Error::Delay {
                what: "remove the empty mangle table".to_owned(),
                reason: "its thread panicked".to_owned(),
                hint: BUG_HINT.to_owned(),
            })
        })
    })
}

fn delete_if_empty_here(ns: &Netns) -> Result<bool, Error> {
    let socket = open_socket(ns)?;
    let failed = |reason: String| Error::Delay {
        what: "remove the empty mangle table".to_owned(),
        reason,
        hint: "`nft list table ip mangle` shows what is in it".to_owned(),
    };
    let seq = 1;
    let mut out = Vec::new();
    nfqueue::delete_table_if_empty(&mut out, seq, "mangle", "POSTROUTING");
    socket::send(socket.as_raw_fd(), &out, MsgFlags::empty()).map_err(|e| failed(e.to_string()))?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut answers: HashMap<u32, i32> = HashMap::new();
    let mut buffer = vec![0u8; 16 << 10];
    while !(answers.contains_key(&(seq + 1)) && answers.contains_key(&(seq + 2))) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failed(format!("the kernel did not answer within {REPLY_TIMEOUT:?}")));
        }
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(failed(errno.to_string())),
        }
        let len = match socket::recv(socket.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
            Ok(len) => len,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(errno) => return Err(failed(errno.to_string())),
        };
        for event in nfqueue::parse(&buffer[..len]).map_err(|e| failed(e.to_string()))? {
            if let Event::Ack { seq, errno } = event {
                answers.insert(seq, errno);
            }
        }
    }
    let errors: Vec<i32> = answers.values().copied().filter(|e| *e != 0).collect();
    match errors.as_slice() {
        [] => Ok(true),
        // Something is in the table (EBUSY), or there is no table (ENOENT).
        e if e.iter().all(|&e| [Errno::EBUSY as i32, Errno::ENOENT as i32].contains(&e)) => Ok(false),
        e => Err(failed(Errno::from_raw(e[0]).to_string())),
    }
}

/// Whether `chain` exists in `ns`'s mangle table, and whether
/// `POSTROUTING` jumps to it.
pub fn chain_state(ns: &Netns, chain: &str) -> Result<(bool, bool), Error> {
    let saved = Cmd::new(ns, "iptables-save").args(["-t", "mangle"]).run()?;
    let exists =
        saved.lines().any(|l| l.strip_prefix(':').and_then(|l| l.split_whitespace().next()) == Some(chain));
    let jump = format!("-A POSTROUTING -j {chain}");
    Ok((exists, saved.lines().any(|l| l.trim_end() == jump)))
}

/// A chain name goes into the script unquoted.
fn check_chain(chain: &str) -> Result<(), Error> {
    let ok = !chain.is_empty()
        && chain.len() <= CHAIN_MAX
        && chain.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && chain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        return Ok(());
    }
    Err(Error::Invalid {
        what: "chain name",
        reason: format!(
            "`{chain}` must be 1 to {CHAIN_MAX} ASCII letters, digits, `-` or `_`, starting with a letter"
        ),
    })
}

/// Whether the kernel lets bridged IPv4 through iptables for `bridge`:
/// the bridge's own `nf_call_iptables`, which the delay rules need when the
/// namespace-wide `net.bridge.bridge-nf-call-iptables` is off.
pub fn set_bridge_netfilter(ns: &Netns, bridge: &str, on: bool) -> Result<(), Error> {
    check_ifname(bridge)?;
    let value = if on { "1" } else { "0" };
    let cmd =
        Cmd::new(ns, "ip").args(["link", "set", "dev", bridge, "type", "bridge", "nf_call_iptables", value]);
    let output = cmd.output(None)?;
    // A bridge that is gone has nothing left to switch.
    if output.status.success() || (!on && stderr(&output).contains("Cannot find device")) {
        return Ok(());
    }
    Err(cmd.failed(&output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_send_bridged_and_host_traffic_to_the_tap_through_its_queue() {
        let targets = [Target {
            tap: "ht-b".into(),
            bridge: "hb-lab".into(),
            ip: Ipv4Addr::new(10, 0, 0, 5),
            queue: 700,
        }];
        let expect = "*mangle\n:hearth-h-delay - [0:0]\n\
            -A hearth-h-delay -m physdev --physdev-out ht-b -m comment --comment \"hearth delay ht-b: bridged\" -j NFQUEUE --queue-num 700 --queue-bypass\n\
            -A hearth-h-delay -o hb-lab -d 10.0.0.5/32 -m physdev ! --physdev-is-bridged -m comment --comment \"hearth delay ht-b: from the host\" -j NFQUEUE --queue-num 700 --queue-bypass\n\
            -I POSTROUTING 1 -j hearth-h-delay\nCOMMIT\n";
        assert_eq!(render_rules("hearth-h-delay", &targets, true), expect);
        assert!(!render_rules("hearth-h-delay", &targets, false).contains("POSTROUTING"));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_spreads() {
        let shape = Shape { delay: Duration::from_millis(100), jitter: Duration::from_millis(10) };
        let mut rng = rand::rng();
        let draws: Vec<Duration> = (0..2000).map(|_| shape.draw(&mut rng)).collect();
        assert!(draws.iter().all(|d| (90..=110).contains(&d.as_millis())), "{draws:?}");
        assert!(draws.iter().any(|d| d.as_millis() < 95) && draws.iter().any(|d| d.as_millis() > 105));
        let wide = Shape { delay: Duration::from_millis(1), jitter: Duration::from_millis(5) };
        assert!((0..200).all(|_| wide.draw(&mut rng) <= Duration::from_millis(6)), "never negative");
        let exact = Shape { delay: Duration::from_millis(7), jitter: Duration::ZERO };
        assert_eq!(exact.draw(&mut rng), Duration::from_millis(7));
    }

    #[test]
    fn a_kernel_without_queues_is_told_what_it_lacks() {
        let error = bind_error(33000, Errno::EINVAL);
        assert_eq!(error.code(), "unsupported");
        let hint = error.hint().unwrap_or_default();
        assert!(hint.contains("sch_netem") && hint.contains("CONFIG_NETFILTER_NETLINK_QUEUE"), "{hint}");
        assert!(error.to_string().starts_with("cannot bind queue 33000: EINVAL"), "{error}");
        assert_eq!(bind_error(33000, Errno::EACCES).code(), "command_failed");
    }

    #[test]
    fn chain_names_are_checked() {
        assert!(check_chain("hearth-h-delay").is_ok());
        for bad in ["", "1abc", "a b", "a;b", &"x".repeat(29)] {
            assert!(matches!(check_chain(bad), Err(Error::Invalid { .. })), "{bad}");
        }
    }
}
