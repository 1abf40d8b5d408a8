//! Issue 13, item 8: what the API takes is bounded and checked before the
//! store is touched, and answered in the error shape: path parameters
//! (length, UTF-8), deploy bodies in flight, and what the CLI reads to
//! deploy.

use std::time::Duration;

use hearth_client::Error;
use hearth_testkit::{Daemon, failure, wait_until};
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// Every route family the issue names, with a 5,000-byte name where a name
/// goes: each is a 400 `invalid_path` in the error shape, not a 500.
#[tokio::test(flavor = "multi_thread")]
async fn long_path_parameters_are_refused_before_the_store_is_touched() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let revision = client.status().await.expect("status").store.revision;
    let long = "x".repeat(5000);
    let signal = br#"{"name": "go"}"#.as_slice();
    let trigger = br#"{"kind": "cron", "schedule": "@daily"}"#.as_slice();
    let cases: Vec<(Method, String, Option<&[u8]>)> = vec![
        (Method::GET, format!("/v1/workflows/{long}"), None),
        (Method::DELETE, format!("/v1/workflows/{long}"), None),
        (Method::POST, format!("/v1/workflows/{long}/runs"), Some(b"{}".as_slice())),
        (Method::GET, format!("/v1/runs/{long}"), None),
        (Method::GET, format!("/v1/runs/{long}/logs"), None),
        (Method::GET, format!("/v1/runs/{long}/result?timeout_ms=1"), None),
        (Method::POST, format!("/v1/runs/{long}/cancel"), None),
        (Method::POST, format!("/v1/runs/{long}/signals"), Some(signal)),
        (Method::GET, format!("/v1/workflows/{long}/triggers"), None),
        (Method::POST, format!("/v1/workflows/{long}/triggers"), Some(trigger)),
        (Method::DELETE, format!("/v1/workflows/w/triggers/{long}"), None),
        (Method::GET, format!("/v1/apps/{long}"), None),
        (Method::GET, format!("/v1/apps/{long}/logs"), None),
        (Method::GET, format!("/v1/apps/{long}/triggers"), None),
        (Method::DELETE, format!("/v1/apps/a/triggers/{long}"), None),
        (Method::PUT, format!("/v1/apps/a/secrets/{long}"), Some(br#"{"value": "v"}"#.as_slice())),
    ];
    for (method, path, body) in cases {
        match client.send(method.clone(), &path, body.map(<[u8]>::to_vec)).await {
            Err(Error::Api { status, detail }) => {
                assert_eq!(
                    (status.as_u16(), detail.code.as_str()),
                    (400, "invalid_path"),
                    "{method} {detail:?}"
                );
                assert!(detail.message.contains("5000 bytes"), "{method}: {detail:?}");
                assert!(!detail.hint.is_empty());
            }
            other => panic!("{method} {}…: expected a 400, got {other:?}", &path[..40]),
        }
    }
    assert_eq!(client.status().await.expect("status").store.revision, revision, "nothing was written");
}

/// A path that is not UTF-8 once percent-decoded is a 400 in the error
/// shape on every endpoint, not axum's plain-text rejection.
#[tokio::test(flavor = "multi_thread")]
async fn a_path_that_is_not_utf8_gets_the_error_shape() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    for path in [
        "/v1/apps/%FF",
        "/v1/apps/a/secrets/%C3%28",
        "/v1/workflows/%FF/triggers",
        "/v1/runs/%E2%82/logs",
        "/v1/kv/a%FFb",
        "/v1/machines/%FF",
        "/v1/networks/%FF",
        "/v1/labs/%FF",
        "/v1/nothing/%FF",
    ] {
        match client.send(Method::GET, path, None).await {
            Err(Error::Api { status, detail }) => {
                assert_eq!((status.as_u16(), detail.code.as_str()), (400, "invalid_path"), "{path}");
                assert!(detail.message.contains("UTF-8"), "{path}: {detail:?}");
            }
            other => panic!("{path}: expected a 400, got {other:?}"),
        }
    }
    // A name that decodes to UTF-8 is not refused by this check.
    match client.send(Method::GET, "/v1/kv/caf%C3%A9", None).await {
        Err(Error::Api { status, .. }) => assert_eq!(status.as_u16(), 404),
        other => panic!("expected a 404, got {other:?}"),
    }
}

/// Opens a deploy on the socket that declares `length` bytes and sends
/// one: the daemon reserves the declared length while it waits for the rest.
async fn open_deploy(daemon: &Daemon, app: &str, length: usize) -> tokio::net::UnixStream {
    let mut stream =
        tokio::net::UnixStream::connect(daemon.data_dir().join("hearth.sock")).await.expect("connect");
    let head = format!(
        "PUT /v1/apps/{app} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.expect("send the head");
    stream
}

/// What the daemon answered on `stream` within `within`, if anything.
async fn answer(stream: &mut tokio::net::UnixStream, within: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// Deploy bodies in flight are bounded in bytes across all deploys: with
/// two of the largest deploys being received, a third gets a 503 `busy`
/// with Retry-After at once, and is taken again once they are done.
#[tokio::test(flavor = "multi_thread")]
async fn deploy_bodies_in_flight_are_bounded() {
    let daemon = Daemon::start(BIN).await;
    let largest = 90 << 20;
    let mut first = open_deploy(&daemon, "one", largest).await;
    let mut second = open_deploy(&daemon, "two", largest).await;
    // The two reserve their bytes when their heads are read; a third is
    // refused once they have. The daemon reads the three heads on
    // connections of their own, so a third may come first and one of the
    // two be refused: that one is sent again.
    let mut refused = String::new();
    let got = wait_until(Duration::from_secs(20), async || {
        for (stream, app) in [(&mut first, "one"), (&mut second, "two")] {
            if answer(stream, Duration::from_millis(10)).await.is_some() {
                *stream = open_deploy(&daemon, app, largest).await;
            }
        }
        let mut third = open_deploy(&daemon, "three", 20 << 20).await;
        match answer(&mut third, Duration::from_millis(500)).await {
            Some(text) => {
                refused = text;
                true
            }
            None => false,
        }
    })
    .await;
    assert!(got, "a third deploy was answered within 20 s");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert!(refused.contains("\"busy\""), "{refused}");

    // A body over the limit is refused from its declared length alone.
    let mut huge = open_deploy(&daemon, "four", largest + 1).await;
    let text = answer(&mut huge, Duration::from_secs(10)).await.expect("an answer");
    assert!(text.starts_with("HTTP/1.1 413") && text.contains("payload_too_large"), "{text}");

    // Dropping a deploy gives its bytes back.
    first.shutdown().await.expect("close");
    drop(first);
    let client = daemon.client();
    let taken = wait_until(Duration::from_secs(20), async || {
        let body = br#"{"component_base64": "!"}"#.to_vec();
        match client.send(Method::PUT, "/v1/apps/five", Some(body)).await {
            Err(Error::Api { detail, .. }) => detail.code == "invalid_field",
            _ => false,
        }
    })
    .await;
    assert!(taken, "a small deploy is read again once the first one is gone");
}

/// `hearth app deploy x /dev/zero` refuses before it reads, and so does a
/// component over the daemon's limit.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_refuses_what_it_cannot_deploy_before_reading_it() {
    let daemon = Daemon::start(BIN).await;
    let started = std::time::Instant::now();
    let out = failure(&daemon.cli(&["app", "deploy", "x", "/dev/zero"]));
    assert!(out.contains("not a regular file"), "{out}");
    let out = failure(&daemon.cli(&["workflow", "deploy", "x", "/dev/zero"]));
    assert!(out.contains("not a regular file"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.wasm");
    // Sparse: no disk is used, and the CLI must not read it to know.
    std::fs::File::create(&big).and_then(|f| f.set_len((64 << 20) + 1)).expect("a big file");
    let out = failure(&daemon.cli(&["app", "deploy", "x", big.to_str().expect("UTF-8")]));
    assert!(out.contains("over the daemon's limit of 64 MiB"), "{out}");
    let out = failure(&daemon.cli(&["workflow", "deploy", "x", big.to_str().expect("UTF-8")]));
    assert!(out.contains("over the daemon's limit of 32 MiB"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30), "refused without reading");
}
