//! Issue 16, the dashboard's terminal: the exec WebSocket on the
//! dashboard's listener. A browser's WebSocket carries the session cookie
//! but no CSRF header, so a session's upgrade is accepted only from the
//! dashboard's own `Origin` (Cross-Site WebSocket Hijacking); the bearer
//! token works as for the CLI. Only the handshake's status is checked: the
//! machine does not exist, so an accepted upgrade answers 404.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use hearth_testkit::{Daemon, success};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// A WebSocket handshake for `/v1/machines/nothing-here/exec`: the
/// status, and the body of a refusal.
fn handshake(authority: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(authority).expect("connect to the dashboard");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let mut request = String::from(
        "GET /v1/machines/nothing-here/exec HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {authority}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send the handshake");
    // The head, then as much body as it says it has: the connection may
    // stay open after an answer that is not a 101.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read the answer's head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read the answer's body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Signs in through `hearth ui`'s link: the session cookie and the
/// dashboard's `HOST:PORT`.
fn session_cookie(daemon: &Daemon) -> (String, String) {
    let url = success(&daemon.cli(&["ui", "--no-open"])).trim().to_owned();
    let rest = url.strip_prefix("http://").expect("an http link");
    let (authority, path) = rest.split_once('/').expect("a path");
    let mut stream = TcpStream::connect(authority).expect("connect to the dashboard");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the response");
    let text = String::from_utf8_lossy(&response);
    let cookie = text
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .unwrap_or_else(|| panic!("no Set-Cookie in:\n{text}"));
    (cookie.split(';').next().expect("NAME=VALUE").to_owned(), authority.to_owned())
}

#[tokio::test]
async fn a_sessions_exec_upgrade_needs_the_dashboards_own_origin() {
    let daemon = Daemon::start(BIN).await;
    let (cookie, authority) = session_cookie(&daemon);
    let own = format!("http://{authority}");

    // Another site's page (another port of loopback is another origin).
    let other_port =
        format!("http://127.0.0.1:{}", authority.rsplit(':').next().unwrap().parse::<u16>().unwrap() ^ 1);
    for origin in ["http://evil.example", "null", other_port.as_str()] {
        let (status, body) = handshake(&authority, &[("Cookie", &cookie), ("Origin", origin)]);
        assert_eq!(status, 403, "{origin}: {body}");
        assert!(body.contains("\"cross_origin\"") && body.contains("\"hint\""), "{origin}: {body}");
    }
    // No Origin at all: not a browser, which sends one on every handshake.
    let (status, body) = handshake(&authority, &[("Cookie", &cookie)]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"origin_required\"") && body.contains("bearer token"), "{body}");
    // From another host name (DNS rebinding), even with our Origin.
    let (status, body) =
        handshake(&authority, &[("Host", "evil.example"), ("Cookie", &cookie), ("Origin", &own)]);
    assert_eq!(status, 421, "{body}");

    // The dashboard's own page: past authentication, to the handler,
    // which finds no such machine.
    let (status, body) = handshake(&authority, &[("Cookie", &cookie), ("Origin", &own)]);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nothing-here"), "{body}");
    // The bearer token, as `hearth machine exec` sends it, needs no Origin.
    let bearer = format!("Bearer {}", daemon.token());
    let (status, body) = handshake(&authority, &[("Authorization", &bearer)]);
    assert_eq!(status, 404, "{body}");
    // And no cookie, no token: 401.
    let (status, body) = handshake(&authority, &[("Origin", &own)]);
    assert_eq!(status, 401, "{body}");
}

/// Reads an exec session until its text message (the ExecEnd), or, if
/// `ready`, until its output says `ready` (then None).
async fn read_until(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ready: bool,
) -> Option<String> {
    use futures::StreamExt as _;
    let mut out = Vec::new();
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(data))) => {
                out.extend_from_slice(data.get(1..).unwrap_or_default());
                if ready && String::from_utf8_lossy(&out).contains("ready") {
                    return None;
                }
            }
            Some(Ok(Message::Text(text))) => return Some(text.to_string()),
            Some(Ok(_)) => {}
            other => panic!("the session broke off: {other:?}; output {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

/// The commands running in machine `term`, one a line (each's argv
/// joined with spaces), read from `/proc` (the image need not have `ps`).
fn commands(daemon: &Daemon) -> Vec<String> {
    let script = r#"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f"; echo; done 2>/dev/null"#;
    let listed = success(&daemon.cli(&["machine", "exec", "term", "--", "sh", "-c", script]));
    listed.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

/// Waits, 10 s at most, until `done` holds of the commands running in `term`.
async fn until(daemon: &Daemon, what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let running = commands(daemon);
        if done(&running) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "waited 10 s for {what}; running: {running:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The dashboard's terminal, as the browser opens it (the session cookie
/// and the dashboard's Origin): accepted, and ended by the daemon once the
/// session is revoked, as the session's event streams are, with every
/// process it started: the shell's background jobs (each in a process
/// group of its own, job control being on) and a `nohup` one too.
#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_terminal_ends_when_its_session_is_revoked() {
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&["machine", "run", "--name", "term", "--memory", "256M", &image]));
    let (cookie, authority) = session_cookie(&daemon);
    let listed: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["ui", "sessions", "--json"]))).expect("JSON");
    let id = listed["sessions"][0]["id"].as_str().expect("a session id").to_owned();

    let mut request =
        format!("ws://{authority}/v1/machines/term/exec").into_client_request().expect("a request");
    request.headers_mut().insert("cookie", cookie.parse().expect("a header"));
    request.headers_mut().insert("origin", format!("http://{authority}").parse().expect("a header"));
    let stream = tokio::net::TcpStream::connect(&authority).await.expect("connect to the dashboard");
    let (mut socket, response) =
        tokio_tungstenite::client_async(request, stream).await.expect("the upgrade is accepted");
    assert_eq!(response.status(), 101);
    // What the dashboard runs: a login shell on a tty, typed into.
    let start = r#"{"argv":["bash","-l"],"tty":{"rows":24,"cols":80},"stdin":true}"#;
    socket.send(Message::Text(start.into())).await.expect("send the ExecStart");
    // The terminal echoes the line as typed, which does not say `ready`.
    let line = "sleep 613 & nohup sleep 614 >/dev/null 2>&1 & echo rea''dy\n";
    socket.send(Message::Binary(line.as_bytes().to_vec().into())).await.expect("type a line");

    let ready = tokio::time::timeout(Duration::from_secs(30), read_until(&mut socket, true)).await;
    assert_eq!(ready.expect("the shell says ready"), None);
    let jobs = ["sleep 613", "sleep 614"];
    // Forked before `ready`, but each may not have become `sleep` yet.
    until(&daemon, "the jobs to run", |running| jobs.iter().all(|job| running.iter().any(|c| c == job)))
        .await;

    success(&daemon.cli(&["ui", "revoke", &id]));
    let end = tokio::time::timeout(Duration::from_secs(10), read_until(&mut socket, false))
        .await
        .expect("the terminal ends once its session is revoked")
        .expect("an ExecEnd");
    assert!(end.contains("\"session_ended\"") && end.contains("hearth ui"), "{end}");

    // Its processes go with it, the shell's jobs included.
    until(&daemon, "the shell and its jobs to end with the session", |running| {
        !running.iter().any(|c| jobs.contains(&c.as_str()) || c == "bash -l")
    })
    .await;
    success(&daemon.cli(&["machine", "rm", "-f", "term"]));
}
