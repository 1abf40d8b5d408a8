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
        max_connections: max,
        max_per_peer: per_peer,
        json_errors: false,
    }
}

type TestBody = BoxBody<Bytes, Infallible>;

/// `/slow` answers after 3 × SHORT; `/stream` sends a chunk, waits
/// 3 × SHORT, sends another; anything else answers at once.
async fn handler(request: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let body = match request.uri().path() {
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
