use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::*;

const SHORT: Duration = Duration::from_millis(300);

fn limits(header: Duration, idle: Duration, max: usize, per_peer: usize) -> Limits {
    Limits {
        name: "test",
        header_read_timeout: header,
        idle_timeout: idle,
        stall_timeout: Duration::from_secs(30),
        max_connections: max,
        max_per_peer: per_peer,
        json_errors: false,
    }
}

type TestBody = BoxBody<Bytes, Infallible>;

/// Limits whose only short bound is the stall timeout.
fn stalling(stall: Duration) -> Limits {
    Limits { stall_timeout: stall, ..limits(Duration::from_secs(30), Duration::from_secs(30), 16, 16) }
}

/// `/slow` answers after 3 × SHORT; `/stream` sends a chunk, waits
/// 3 × SHORT, sends another; `/upload` reads the whole body and answers
/// its length; `/big` sends 64 MiB; anything else answers at once.
async fn handler(request: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let body = match request.uri().path() {
        "/upload" => {
            let body = request.into_body().collect().await.map(|b| b.to_bytes().len());
            Full::new(Bytes::from(format!("got {}", body.unwrap_or(0)))).boxed()
        }
        "/big" => {
            let chunks =
                futures::stream::iter((0..1024).map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))));
            StreamBody::new(chunks).boxed()
        }
        "/wait" => {
            // A handler at work that reads nothing: waiting on no one.
            tokio::time::sleep(SHORT * 4).await;
            Full::new(Bytes::from_static(b"waited")).boxed()
        }
        "/slow" => {
            tokio::time::sleep(SHORT * 3).await;
            Full::new(Bytes::from_static(b"slow")).boxed()
        }
        "/stream" => {
            let chunks = futures::stream::unfold(0, |n| async move {
                match n {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"one "))), 1)),
                    1 => {
                        tokio::time::sleep(SHORT * 3).await;
                        Some((Ok(Frame::data(Bytes::from_static(b"two"))), 2))
                    }
                    _ => None,
                }
            });
            StreamBody::new(chunks).boxed()
        }
        "/peer" => {
            let peer = request.extensions().get::<Peer>().map(|p| p.0.to_string());
            Full::new(Bytes::from(format!("peer {} ok", peer.as_deref().unwrap_or("unknown")))).boxed()
        }
        _ => Full::new(Bytes::from_static(b"ok")).boxed(),
    };
    Ok(Response::new(body))
}

struct Server {
    addr: SocketAddr,
    _stop: watch::Sender<bool>,
}

async fn server(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(serve(listener, limits, hyper::service::service_fn(handler), stopped));
    Server { addr, _stop: stop }
}

/// Reads until the server closes; returns what it sent, or None if it was
/// still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&seen).into_owned())
}

async fn get(stream: &mut TcpStream, path: &str) -> String {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.expect("send");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&seen).ends_with(match path {
        "/slow" => "slow",
        "/stream" => "two\r\n0\r\n\r\n",
        _ => "ok",
    }) {
        assert!(
            Instant::now() < deadline,
            "no full answer to {path}; got {:?}",
            String::from_utf8_lossy(&seen)
        );
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before answering {path}; got {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_request_carries_its_peer_address() {
    let server = server(limits(SHORT, SHORT * 10, 8, 8)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let answer = get(&mut stream, "/peer").await;
    assert!(answer.ends_with("peer 127.0.0.1 ok"), "{answer}");
}

#[tokio::test]
async fn a_slow_loris_header_is_closed_at_the_header_timeout() {
    let server = server(limits(SHORT, Duration::from_secs(30), 16, 16)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    let header = b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for byte in header {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        if started.elapsed() > SHORT * 4 {
            break;
        }
    }
    let closed = closed || read_until_closed(&mut stream, SHORT * 2).await.is_some();
    assert!(closed, "a header trickled a byte every 30 ms was still open after {:?}", started.elapsed());
    assert!(started.elapsed() < SHORT * 6, "closed only after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_idle_timeout() {
    let server = server(limits(Duration::from_secs(30), SHORT, 16, 16)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    assert!(
        read_until_closed(&mut stream, SHORT * 5).await.is_some(),
        "still open after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= SHORT, "closed before the idle timeout");
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_when_idle_after_its_request() {
    let server = server(limits(Duration::from_secs(30), SHORT, 16, 16)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    get(&mut stream, "/").await;
    get(&mut stream, "/").await;
    assert!(
        read_until_closed(&mut stream, SHORT * 5).await.is_some(),
        "an idle kept-alive connection stayed open"
    );
}

#[tokio::test]
async fn slow_handlers_and_long_responses_are_not_idle() {
    let server = server(limits(Duration::from_secs(30), SHORT, 16, 16)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let answer = get(&mut stream, "/slow").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = get(&mut stream, "/stream").await;
    assert!(answer.contains("one ") && answer.ends_with("two\r\n0\r\n\r\n"), "{answer}");
}

#[tokio::test]
async fn connections_over_the_per_peer_cap_are_refused_at_once_and_counted_back() {
    let server = server(limits(Duration::from_secs(30), Duration::from_secs(30), 16, 2)).await;
    let mut first = TcpStream::connect(server.addr).await.expect("connect");
    let mut second = TcpStream::connect(server.addr).await.expect("connect");
    get(&mut first, "/").await;
    get(&mut second, "/").await;
    let mut third = TcpStream::connect(server.addr).await.expect("connect");
    let refusal =
        read_until_closed(&mut third, Duration::from_secs(2)).await.expect("the third is closed at once");
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("too many connections"), "{refusal}");
    drop(first);
    // The slot comes back once the server has seen the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = TcpStream::connect(server.addr).await.expect("connect");
        again.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
        let mut buf = [0u8; 1024];
        let n = again.read(&mut buf).await.unwrap_or(0);
        if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the closed connection's slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_global_cap_holds_on_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("hearth-listen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("api.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let (_stop, stopped) = watch::channel(false);
    tokio::spawn(serve(
        listener,
        limits(Duration::from_secs(30), Duration::from_secs(30), 2, 2),
        hyper::service::service_fn(handler),
        stopped,
    ));
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::UnixStream::connect(&path).await.expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(stream);
    }
    let mut third = tokio::net::UnixStream::connect(&path).await.expect("connect");
    let mut refusal = String::new();
    tokio::time::timeout(Duration::from_secs(2), third.read_to_string(&mut refusal))
        .await
        .expect("the third is closed at once")
        .expect("read");
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_then_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = watch::channel(false);
    let served = tokio::spawn(serve(
        listener,
        limits(Duration::from_secs(30), Duration::from_secs(30), 16, 16),
        hyper::service::service_fn(handler),
        stopped,
    ));
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
    tokio::time::sleep(SHORT).await;
    stop.send(true).expect("stop");
    let answer =
        read_until_closed(&mut stream, Duration::from_secs(5)).await.expect("closed after answering");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("slow"), "{answer}");
    tokio::time::timeout(Duration::from_secs(5), served).await.expect("serve returns").expect("no panic");
}

/// Sends an upload's head promising `length` bytes of body.
async fn upload_head(stream: &mut TcpStream, length: usize) {
    let head = format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send the head");
}

#[tokio::test]
async fn a_body_trickled_then_stopped_is_cut_at_the_stall_timeout() {
    let server = server(stalling(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    upload_head(&mut stream, 100).await;
    stream.write_all(b"x").await.expect("one byte of body");
    let started = Instant::now();
    let said = read_until_closed(&mut stream, SHORT * 10).await;
    assert!(said.is_some(), "a body stopped after one byte was still open after {:?}", started.elapsed());
    assert!(started.elapsed() >= SHORT, "cut after {:?}, before the stall timeout", started.elapsed());
    assert_eq!(said.as_deref(), Some(""), "the handler answered a body it never got whole");
}

#[tokio::test]
async fn a_body_trickled_steadily_is_not_cut_however_long_it_takes() {
    let server = server(stalling(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // 40 bytes, one every SHORT / 4: ten stall timeouts in all, never one
    // without a byte.
    let length = 40;
    upload_head(&mut stream, length).await;
    let started = Instant::now();
    for _ in 0..length {
        tokio::time::sleep(SHORT / 4).await;
        stream.write_all(b"x").await.expect("the server keeps reading a body that moves");
    }
    assert!(started.elapsed() >= SHORT * 10);
    let answer = read_until_answered(&mut stream, "got 40").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_handler_at_work_is_not_stalled() {
    let server = server(stalling(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(b"POST /wait HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi").await.expect("send");
    let answer = read_until_answered(&mut stream, "waited").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_response_the_client_does_not_read_is_cut_at_the_stall_timeout() {
    let server = server(stalling(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
    // Read nothing while the socket's buffers fill, then let the server
    // wait on it for some stall timeouts.
    tokio::time::sleep(SHORT * 5).await;
    let mut read = 0;
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection was still open after reading {read} bytes");
    assert!(read < 64 << 20, "the whole response arrived: the stalled writer was never cut");
}

#[tokio::test]
async fn a_response_read_slowly_but_steadily_is_not_cut() {
    let server = server(stalling(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
    let mut read = 0;
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    // 64 MiB read a MiB at a time, a pause of SHORT / 4 between reads:
    // a quarter of the stall timeout, many times over.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a read in time")
            .expect("read");
        read += n;
        if n == 0 || read >= 64 << 20 {
            break;
        }
        if read < 16 << 20 {
            tokio::time::sleep(SHORT / 4).await;
        }
    }
    assert!(read >= 64 << 20, "cut after {read} bytes and {:?}", started.elapsed());
    assert!(started.elapsed() > SHORT * 2, "the read was not slow: {:?}", started.elapsed());
}

/// Tells the test when it is dropped.
struct Dropped(tokio::sync::mpsc::Sender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_ends_its_request() {
    let (dropped, mut ended) = tokio::sync::mpsc::channel::<()>(1);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let (_stop, stopped) = watch::channel(false);
    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
        let dropped = Dropped(dropped.clone());
        async move {
            // A stream that sends nothing, ever: only its client leaving
            // ends it.
            let chunks = futures::stream::once(async move {
                let _dropped = dropped;
                std::future::pending::<Result<Frame<Bytes>, Infallible>>().await
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(chunks).boxed()))
        }
    });
    let limits = limits(Duration::from_secs(30), Duration::from_secs(30), 16, 16);
    tokio::spawn(serve(listener, limits, service, stopped));
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send");
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).await.expect("the head");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    drop(stream);
    let gone = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await;
    assert!(gone.is_ok(), "the response of a client that hung up was still running after 5 s");
}

/// Reads an answer until it ends with `end`, within 5 s.
async fn read_until_answered(stream: &mut TcpStream, end: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&seen).ends_with(end) {
        assert!(Instant::now() < deadline, "no full answer; got {:?}", String::from_utf8_lossy(&seen));
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before answering; got {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn shares_leave_most_descriptors_to_the_daemon() {
    let budget = Budget::new(256);
    let (tcp, unix, ingress) = (budget.api_tcp(), budget.api_unix(), budget.ingress());
    assert_eq!((tcp.max_connections, tcp.max_per_peer), (32, 16));
    assert_eq!(unix.max_connections, 16);
    assert_eq!(ingress.max_connections, 64);
    assert!(tcp.max_connections + unix.max_connections + ingress.max_connections <= 256 / 2);
    let big = Budget::new(1 << 20);
    assert_eq!((big.api_tcp().max_connections, big.api_tcp().max_per_peer), (1024, budget::MAX_PER_PEER));
    assert_eq!(big.api_unix().max_connections, 256);
}
