//! Issue 16, the dashboard: signing in through `hearth ui`, sessions listed
//! and revoked from the CLI, what the dashboard's listener refuses, and the
//! dashboard itself in a real browser (`ui/tests/browser.mjs`: Debian's
//! chromium driven by playwright-core, with an axe-core audit of each view).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hearth_testkit::{Daemon, failure, success};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");
/// How long the browser script may run, all checks included.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(270);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A sign-in link from `hearth ui`, and the dashboard's `HOST:PORT`.
fn sign_in_link(daemon: &Daemon) -> (String, String) {
    let out = daemon.cli(&["ui", "--no-open"]);
    let stdout = success(&out);
    let url = stdout.trim().to_owned();
    assert!(!url.contains('\n'), "hearth ui prints the link alone on stdout: {stdout:?}");
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http link: {url}"));
    let (authority, path) = rest.split_once('/').expect("a path");
    assert!(path.starts_with("ui/login?code="), "{url}");
    (url.clone(), authority.to_owned())
}

/// One HTTP/1.1 request on a fresh connection: status, headers, body.
fn http(authority: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(authority).expect("connect to the dashboard");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {authority}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// Opens `GET /v1/events?follow=true` with a session, and reads its head.
fn open_event_stream(authority: &str, cookie: &str) -> TcpStream {
    let mut stream = TcpStream::connect(authority).expect("connect to the dashboard");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let request = format!(
        "GET /v1/events?follow=true HTTP/1.1\r\nHost: {authority}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read the stream's head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
    stream
}

/// Follows a sign-in link and returns the session cookie it set.
fn redeem(authority: &str, url: &str) -> String {
    let path = &url[url.find("/ui/login").expect("a login path")..];
    let (status, head, body) = http(authority, "GET", path, &[]);
    assert_eq!(status, 200, "{head}\n{body}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .unwrap_or_else(|| panic!("no Set-Cookie in:\n{head}"));
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    cookie.split(';').next().expect("NAME=VALUE").to_owned()
}

fn sessions(daemon: &Daemon) -> Vec<serde_json::Value> {
    let out = success(&daemon.cli(&["ui", "sessions", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    list["sessions"].as_array().expect("a list").clone()
}

#[tokio::test]
async fn sessions_are_signed_in_listed_and_revoked_from_the_cli() {
    let mut daemon = Daemon::start(BIN).await;
    let (url, authority) = sign_in_link(&daemon);
    let status = success(&daemon.cli(&["status"]));
    assert!(status.contains(&format!("dashboard   http://{authority}/ui/")), "{status}");
    let host =
        status.lines().find(|l| l.starts_with("host ")).unwrap_or_else(|| panic!("no host line:\n{status}"));
    assert!(host.contains("CPU") && host.contains("GiB free"), "{host}");

    // Without a session: 401 from the API, the sign-in page for the UI.
    let (status, _, body) = http(&authority, "GET", "/v1/status", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("hearth ui"), "the 401 says how to get a session: {body}");
    let (status, _, body) = http(&authority, "GET", "/ui/", &[]);
    assert_eq!(status, 401);
    assert!(body.contains("hearth ui") && !body.contains("id=\"app\""), "{body}");

    // The link signs in once.
    let cookie = redeem(&authority, &url);
    let path = &url[url.find("/ui/login").unwrap()..];
    let (status, _, body) = http(&authority, "GET", path, &[]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("already used") && body.contains("hearth ui"), "{body}");
    let (status, _, body) = http(&authority, "GET", "/v1/status", &[("Cookie", &cookie)]);
    assert_eq!(status, 200, "{body}");
    // Any view's address loads the dashboard, names with dots included; a
    // file that does not exist is not found.
    for view in ["/ui/machines", "/ui/runs/nightly.2", "/ui/apps/my.app"] {
        let (status, _, body) = http(&authority, "GET", view, &[("Cookie", &cookie)]);
        assert!(status == 200 && body.contains("id=\"app\""), "{view}: {status}\n{body}");
    }
    let (status, _, _) = http(&authority, "GET", "/ui/assets/nothing.js", &[("Cookie", &cookie)]);
    assert_eq!(status, 404);

    // What the listener refuses: another host name (DNS rebinding), a
    // session asking for more sessions, a write without the CSRF token.
    let (status, _, _) =
        http(&authority, "GET", "/v1/status", &[("Host", "evil.example"), ("Cookie", &cookie)]);
    assert_eq!(status, 421);
    let (status, _, body) = http(&authority, "POST", "/v1/ui/login-codes", &[("Cookie", &cookie)]);
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = http(&authority, "DELETE", "/v1/kv/anything", &[("Cookie", &cookie)]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"csrf\""), "{body}");
    // The bearer token works here too, as on the TCP API.
    let bearer = format!("Bearer {}", daemon.token());
    let (status, _, body) = http(&authority, "GET", "/v1/ui/sessions", &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");

    // Listed, with an id and no secret.
    let listed = sessions(&daemon);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().expect("an id").to_owned();
    assert_eq!(id.len(), 16, "{id}");
    assert!(!cookie.contains(&id), "the id is not part of the secret");
    let table = success(&daemon.cli(&["ui", "sessions"]));
    assert!(table.starts_with("ID") && table.contains(&id), "{table}");

    // A session survives a restart of the daemon (on a new port here).
    daemon.restart().await;
    let (_, authority) = sign_in_link(&daemon);
    let (status, _, body) = http(&authority, "GET", "/v1/status", &[("Cookie", &cookie)]);
    assert_eq!(status, 200, "after a restart: {body}");

    // Revoked: refused at once, and its open event stream is cut off
    // (the daemon's streams otherwise last an hour).
    let mut stream = open_event_stream(&authority, &cookie);
    success(&daemon.cli(&["ui", "revoke", &id]));
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the stream ends within its read timeout once the session is revoked");
    let (status, _, _) = http(&authority, "GET", "/v1/status", &[("Cookie", &cookie)]);
    assert_eq!(status, 401);
    let (status, head, _) = http(&authority, "GET", "/ui/", &[("Cookie", &cookie)]);
    assert_eq!(status, 401);
    assert!(head.to_ascii_lowercase().contains("max-age=0"), "the stale cookie is cleared: {head}");
    let again = failure(&daemon.cli(&["ui", "revoke", &id]));
    assert!(again.contains("no dashboard session") && again.contains("hint:"), "{again}");
    let neither = failure(&daemon.cli(&["ui", "revoke"]));
    assert!(neither.contains("--all"), "{neither}");

    // --all revokes every session.
    let (url_a, _) = sign_in_link(&daemon);
    let (url_b, _) = sign_in_link(&daemon);
    let (a, b) = (redeem(&authority, &url_a), redeem(&authority, &url_b));
    assert_eq!(sessions(&daemon).len(), 2);
    let out = success(&daemon.cli(&["ui", "revoke", "--all"]));
    assert_eq!(out.trim(), "revoked 2 sessions");
    for cookie in [a, b] {
        assert_eq!(http(&authority, "GET", "/v1/status", &[("Cookie", &cookie)]).0, 401);
    }
    assert!(sessions(&daemon).is_empty());
}

/// What the browser test needs, or why it cannot run: a failure, never a
/// skip, since `make setup` installs all of it.
fn browser_tools() -> Result<PathBuf, String> {
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node (Node.js) is not on PATH".to_owned());
    }
    if !chromium.is_file() {
        return Err(format!("{} is missing (Debian's chromium package)", chromium.display()));
    }
    for package in ["playwright-core", "axe-core"] {
        if !repo().join("ui/node_modules").join(package).is_dir() {
            return Err(format!("ui/node_modules/{package} is missing (npm ci in ui/)"));
        }
    }
    Ok(chromium)
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    let chromium = browser_tools().unwrap_or_else(|problem| {
        panic!("the browser test cannot run: {problem}; run `make setup` (it installs chromium, Node.js's packages for ui/) and `make ui`")
    });
    // Streams end every 2 s, so the test sees the dashboard resume one.
    let lifetime = std::ffi::OsString::from("2000");
    let daemon =
        Daemon::start_with_env(BIN, &[("HEARTH_TEST_EVENT_STREAM_LIFETIME_MS", lifetime.as_os_str())]).await;
    // The browser deploys the hello app by upload; the approval workflow
    // is deployed here, and the browser starts, signals and migrates runs.
    let hello = hello_example();
    // Twice: two versions, so that a run can be migrated from one to the other.
    let approval = crate::workflows_cli::approval_example();
    for _ in 0..2 {
        success(&daemon.cli(&["workflow", "deploy", "approval", &approval]));
    }
    // A machine for its page to show, stop, start and remove.
    let image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&["machine", "run", "--name", "web", "--memory", "256M", &image]));
    // A network with two machines, for the networks page to draw and the
    // browser to partition, break and heal (ui/tests/networks.mjs). A
    // subnet of its own, as in networks_faults.rs. They boot side by side.
    success(&daemon.cli(&["network", "create", "lab", "--subnet", "10.246.16.0/24", "--no-nat"]));
    let booted: Vec<(&str, Duration)> = std::thread::scope(|s| {
        let boots: Vec<_> = ["a", "b"]
            .map(|name| {
                let (daemon, image) = (&daemon, &image);
                s.spawn(move || {
                    let started = std::time::Instant::now();
                    let args =
                        ["machine", "run", "--name", name, "--network", "lab", "--memory", "256M", image];
                    success(&daemon.cli(&args));
                    (name, started.elapsed())
                })
            })
            .into_iter()
            .collect();
        boots.into_iter().map(|b| b.join().expect("a boot thread")).collect()
    });
    println!("network lab: machines booted side by side: {booted:?}");
    let (url, authority) = sign_in_link(&daemon);
    let (status, _, body) = http(&authority, "GET", "/ui/", &[]);
    assert!(
        status != 503,
        "this hearth binary was built without the dashboard (ui/dist was missing): run `make ui`, then the test again\n{body}"
    );

    let screenshots =
        Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target dir").join("ui-screenshots");
    let mut child = tokio::process::Command::new("node")
        .arg("tests/browser.mjs")
        .current_dir(repo().join("ui"))
        .env("HEARTH_UI_BASE", format!("http://{authority}"))
        .env("HEARTH_UI_LINK", &url)
        .env("HEARTH_UI_SCREENSHOTS", &screenshots)
        .env("HEARTH_UI_HELLO_WASM", &hello)
        .env("HEARTH_UI_APPROVAL", "approval")
        .env("HEARTH_UI_MACHINE", "web")
        .env("HEARTH_UI_NETWORK", "lab")
        .env("HEARTH_UI_NET_MACHINES", "a b")
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let (mut stdout, mut stderr) =
        (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let read = async {
        use tokio::io::AsyncReadExt as _;
        let (mut out, mut err) = (String::new(), String::new());
        let _ = tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err));
        (out, err, child.wait().await)
    };
    let (out, err, status) = match tokio::time::timeout(BROWSER_TIMEOUT, read).await {
        Ok(done) => done,
        Err(_) => {
            panic!("the browser test ran longer than {BROWSER_TIMEOUT:?}; daemon log:\n{}", daemon.log())
        }
    };
    let status = status.expect("wait for node");
    assert!(
        status.success(),
        "ui/tests/browser.mjs failed ({status})\nstdout:\n{out}\nstderr:\n{err}\ndaemon log (last 4000 bytes):\n{}",
        tail(&daemon.log(), 4000)
    );
    println!("{out}screenshots: {}", screenshots.display());
}

/// The example from `examples/apps/hello`, built by `make examples`.
fn hello_example() -> String {
    let path = repo().join("examples/apps/hello/target/wasm32-wasip2/release/hello.wasm");
    assert!(path.is_file(), "{} is missing: run `make examples`", path.display());
    path.display().to_string()
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
