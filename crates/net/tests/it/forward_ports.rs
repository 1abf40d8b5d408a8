//! Port forwarding, TCP and UDP, on loopback: echo servers stand in for the
//! machines' services.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hearth_net::forward::{self, Bound, Error, Forward, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const WAIT: Duration = Duration::from_secs(3);

/// A running forward, stopped when dropped.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn start(bound: Bound) -> Running {
        let addr = bound.local_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(bound.run(async move {
            let _ = stopped.await;
        }));
        Running { addr, stop: Some(stop), task: Some(task) }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("not stopped yet").send(());
        let task = self.task.take().expect("not stopped yet");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the forward stops promptly")
            .expect("the forward task");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn forward_to(protocol: Protocol, target: SocketAddr) -> Running {
    let bound = forward::bind(&Forward { protocol, listen: (LOCALHOST, 0).into(), target })
        .await
        .expect("bind the forward");
    assert_ne!(bound.local_addr().port(), 0);
    Running::start(bound)
}

/// Serves TCP on `listener`: reads each connection to its end, then sends
/// everything back and closes. Only a half-close from the client gets it an answer.
fn tcp_echo_at_eof(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut data = Vec::new();
                stream.read_to_end(&mut data).await.unwrap();
                stream.write_all(&data).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    })
}

async fn tcp_echo() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    (listener.local_addr().unwrap(), tcp_echo_at_eof(listener))
}

/// Sends `data`, closes the sending side, and returns all that comes back.
async fn round_trip(forward: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(forward).await.expect("connect to the forward");
    stream.write_all(data).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut reply)).await.expect("a reply in time").unwrap();
    reply
}

/// A TCP address on loopback where nothing listens.
async fn free_tcp_addr() -> SocketAddr {
    TcpListener::bind((LOCALHOST, 0)).await.unwrap().local_addr().unwrap()
}

#[tokio::test]
async fn forward_tcp_round_trip_with_half_close() {
    let (target, _echo) = tcp_echo().await;
    let forward = forward_to(Protocol::Tcp, target).await;

    assert_eq!(round_trip(forward.addr, b"hello").await, b"hello");
    // Bigger than any socket buffer, so the copy loops in both directions.
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    assert!(round_trip(forward.addr, &big).await == big, "4 MiB come back intact");
    // Several connections at once.
    let replies = concurrent_round_trips(forward.addr).await;
    assert_eq!(replies, vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
    forward.stop().await;
}

async fn concurrent_round_trips(forward: SocketAddr) -> Vec<Vec<u8>> {
    let tasks: Vec<_> = (0..4)
        .map(|i| tokio::spawn(async move { round_trip(forward, i.to_string().as_bytes()).await }))
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

#[tokio::test]
async fn forward_tcp_target_down_closes_the_client_and_keeps_serving() {
    let target = free_tcp_addr().await;
    let forward = forward_to(Protocol::Tcp, target).await;

    let mut stream = TcpStream::connect(forward.addr).await.expect("the forward accepts");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "the client sees a closed connection, got {read:?}");

    // The target comes up: the same forward now relays.
    let listener = TcpListener::bind(target).await.expect("the target port is still free");
    let _echo = tcp_echo_at_eof(listener);
    assert_eq!(round_trip(forward.addr, b"back").await, b"back");
    forward.stop().await;
}

#[tokio::test]
async fn forward_reports_a_port_in_use() {
    let target: SocketAddr = (LOCALHOST, 9).into();

    let taken = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let listen = taken.local_addr().unwrap();
    let error = forward::bind(&Forward { protocol: Protocol::Tcp, listen, target }).await.unwrap_err();
    assert!(matches!(error, Error::InUse { protocol: Protocol::Tcp, addr } if addr == listen), "{error:?}");
    assert_eq!(error.to_string(), format!("TCP port {} on 127.0.0.1 is in use", listen.port()));

    let taken = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let listen = taken.local_addr().unwrap();
    let error = forward::bind(&Forward { protocol: Protocol::Udp, listen, target }).await.unwrap_err();
    assert_eq!(error.to_string(), format!("UDP port {} on 127.0.0.1 is in use", listen.port()));
}

#[tokio::test]
async fn forward_shutdown_stops_accepting_and_closes_connections() {
    let (target, _echo) = tcp_echo().await;
    let forward = forward_to(Protocol::Tcp, target).await;
    let addr = forward.addr;
    assert_eq!(round_trip(addr, b"before").await, b"before");
    // An open connection: the echo server waits for its end.
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"pending").await.unwrap();
    // Most likely relayed by now; if not, the connection must close all the same.
    tokio::time::sleep(Duration::from_millis(50)).await;

    forward.stop().await;
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the port is closed after shutdown");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, open.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "the open connection is closed, got {read:?}");
    // And the port is free again.
    TcpListener::bind(addr).await.expect("the port is released");
}

/// Serves UDP: answers each datagram with `reply(datagram, sender)`.
async fn udp_server(reply: fn(&[u8], SocketAddr) -> Vec<u8>) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (len, from) = socket.recv_from(&mut buf).await.unwrap();
            socket.send_to(&reply(&buf[..len], from), from).await.unwrap();
        }
    });
    (addr, task)
}

/// Sends `data` to the forward from `socket` and returns the reply.
async fn udp_round_trip(socket: &UdpSocket, forward: SocketAddr, data: &[u8]) -> Vec<u8> {
    socket.send_to(data, forward).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, from) =
        tokio::time::timeout(WAIT, socket.recv_from(&mut buf)).await.expect("a reply in time").unwrap();
    assert_eq!(from, forward, "replies come from the forward's address");
    buf.truncate(len);
    buf
}

#[tokio::test]
async fn forward_udp_two_clients_at_once_get_their_own_replies() {
    let (target, _echo) = udp_server(|data, _| data.to_vec()).await;
    let forward = forward_to(Protocol::Udp, target).await;
    let addr = forward.addr;

    let client = move |name: &'static str| async move {
        let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        for i in 0..100 {
            let data = format!("{name}-{i}");
            let reply = udp_round_trip(&socket, addr, data.as_bytes()).await;
            assert_eq!(String::from_utf8_lossy(&reply), data);
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(client("a")), tokio::spawn(client("b")));
    a.unwrap();
    b.unwrap();
    // A full-size datagram passes whole.
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let big = vec![7u8; 60_000];
    assert!(udp_round_trip(&socket, addr, &big).await == big);
    forward.stop().await;
    UdpSocket::bind(addr).await.expect("the port is released");
}

/// The target's view of a client: the session's source port.
fn sender_port(_: &[u8], from: SocketAddr) -> Vec<u8> {
    from.port().to_string().into_bytes()
}

#[tokio::test]
async fn forward_udp_sessions_expire_when_idle() {
    let (target, _server) = udp_server(sender_port).await;
    let bound = forward::bind(&Forward { protocol: Protocol::Udp, listen: (LOCALHOST, 0).into(), target })
        .await
        .unwrap()
        .with_udp_sessions(Duration::from_millis(300), 16);
    let forward = Running::start(bound);
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();

    let first = udp_round_trip(&socket, forward.addr, b"x").await;
    // Deliberate durations: well inside the 300 ms idle time, then well past it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(udp_round_trip(&socket, forward.addr, b"x").await, first, "a busy session lives on");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_ne!(udp_round_trip(&socket, forward.addr, b"x").await, first, "an idle session ends");
    forward.stop().await;
}

#[tokio::test]
async fn forward_udp_sessions_are_bounded() {
    let (target, _server) = udp_server(sender_port).await;
    let bound = forward::bind(&Forward { protocol: Protocol::Udp, listen: (LOCALHOST, 0).into(), target })
        .await
        .unwrap()
        .with_udp_sessions(Duration::from_secs(60), 2);
    let forward = Running::start(bound);
    let [a, b, c] = [
        UdpSocket::bind((LOCALHOST, 0)).await.unwrap(),
        UdpSocket::bind((LOCALHOST, 0)).await.unwrap(),
        UdpSocket::bind((LOCALHOST, 0)).await.unwrap(),
    ];

    let a_first = udp_round_trip(&a, forward.addr, b"x").await;
    // Apart in time, so that "least recently used" is a, then b.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b_first = udp_round_trip(&b, forward.addr, b"x").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A third client ends the least recently used session, a's.
    udp_round_trip(&c, forward.addr, b"x").await;
    assert_eq!(udp_round_trip(&b, forward.addr, b"x").await, b_first, "b's session survives");
    assert_ne!(udp_round_trip(&a, forward.addr, b"x").await, a_first, "a gets a new session");
    forward.stop().await;
}

/// Stands in for the machines service: waking starts the machine's server
/// on its address (nothing listens there while it sleeps, so a connection
/// passed through too early is refused), a little later, or fails.
struct Waking {
    activity: hearth_net::activity::Activity,
    target: SocketAddr,
    wakes: std::sync::atomic::AtomicUsize,
    fails: bool,
}

impl hearth_net::activity::Waker for Waking {
    fn wake(
        &self,
        machine: &str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>> {
        self.wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (activity, machine, fails, target) =
            (self.activity.clone(), machine.to_owned(), self.fails, self.target);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if fails {
                return Err("its saved state is gone".into());
            }
            tcp_echo_at_eof(TcpListener::bind(target).await.expect("the target's port"));
            activity.woke(&machine);
            Ok(())
        })
    }
}

/// A gated forward to "m", whose server runs only once woken.
async fn gated(fails: bool) -> (Running, std::sync::Arc<Waking>, hearth_net::activity::Activity) {
    let activity = hearth_net::activity::Activity::default();
    let target = free_tcp_addr().await;
    let waking =
        std::sync::Arc::new(Waking { activity: activity.clone(), target, wakes: Default::default(), fails });
    // Weak, as the machines service's: the Arc<Waking> returned keeps it.
    let waker: std::sync::Arc<dyn hearth_net::activity::Waker> = waking.clone();
    activity.set_waker(std::sync::Arc::downgrade(&waker));
    let bound = forward::bind(&Forward { protocol: Protocol::Tcp, listen: (LOCALHOST, 0).into(), target })
        .await
        .expect("bind the forward")
        .with_gate(forward::Gate { machine: "m".into(), activity: activity.clone() });
    (Running::start(bound), waking, activity)
}

#[tokio::test]
async fn a_connection_to_a_sleeping_machine_is_held_while_it_wakes_then_passed_through() {
    let (forward, waking, activity) = gated(false).await;
    activity.doze("m");
    assert_eq!(round_trip(forward.addr, b"hello").await, b"hello");
    assert_eq!(waking.wakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(!activity.is_dozing("m"));
    // Awake: the next connection passes straight through.
    assert_eq!(round_trip(forward.addr, b"again").await, b"again");
    assert_eq!(waking.wakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    forward.stop().await;
}

#[tokio::test]
async fn a_connection_open_through_a_gated_forward_keeps_its_machine_awake() {
    let (forward, waking, activity) = gated(false).await;
    // Awake from the start: its server runs.
    tcp_echo_at_eof(TcpListener::bind(waking.target).await.expect("the target's port"));
    activity.woke("m");
    let mut stream = TcpStream::connect(forward.addr).await.expect("connect");
    stream.write_all(b"x").await.unwrap();
    let counted = async {
        while activity.try_doze("m", Duration::ZERO) {
            activity.woke("m");
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, counted).await.expect("the connection counts as activity");
    assert!(!activity.try_doze("m", Duration::ZERO), "idle with a connection open");
    drop(stream);
    let idle = async {
        while !activity.try_doze("m", Duration::ZERO) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, idle).await.expect("idle once the connection closed");
    forward.stop().await;
}

#[tokio::test]
async fn a_connection_to_a_machine_that_cannot_wake_is_closed() {
    let (forward, waking, activity) = gated(true).await;
    activity.doze("m");
    let mut stream = TcpStream::connect(forward.addr).await.expect("connect to the forward");
    stream.write_all(b"hello").await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut reply)).await.expect("closed in time");
    // Closed, or reset for the bytes it never read: either way, no answer.
    assert!(read.is_ok_and(|n| n == 0) || reply.is_empty(), "{reply:?}");
    assert_eq!(waking.wakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    forward.stop().await;
}
