//! Issue 13: an app's outbound allow-list is checked against the address a
//! request goes to, so that even `outbound = ["*:*"]` does not reach the
//! daemon's own TCP API or its apps ingress on loopback, through the real
//! binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use hearth_testkit::{Daemon, success};

use crate::apps_triggers::kitchen;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// One HTTP/1.0 request to the ingress: (status, body).
fn get(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn deploy(daemon: &Daemon, dir: &Path, name: &str, outbound: &str) {
    let wasm = dir.join("kitchen.wasm");
    std::fs::copy(kitchen(), &wasm).expect("copy the guest");
    let manifest =
        format!("key_value = [\"default\"]\noutbound = [{outbound}]\n[config]\ngreeting = \"hi\"\n");
    std::fs::write(dir.join("hearth.toml"), manifest).expect("write hearth.toml");
    success(&daemon.cli(&["app", "deploy", name, wasm.to_str().expect("a UTF-8 path")]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_allowed_every_host_does_not_reach_the_daemons_own_listeners() {
    let daemon = Daemon::start_with_tcp(BIN).await;
    let status = daemon.client().status().await.expect("status");
    let ingress: u16 =
        status.ingress.and_then(|a| a.rsplit(':').next()?.parse().ok()).expect("an ingress port");
    let api = daemon.tcp().expect("a TCP API").port();
    let dir = tempfile::tempdir().expect("tempdir");
    deploy(&daemon, dir.path(), "nosy", "\"*:*\"");

    for (what, port) in [("the TCP API", api), ("the apps ingress", ingress)] {
        let path = format!("/fetch?url=http://127.0.0.1:{port}/v1/status");
        let (code, body) = get(ingress, "nosy.localhost", &path).expect("the ingress answers");
        assert_eq!(
            (code, body.as_str()),
            (502, "outbound request failed: ErrorCode::DestinationIpProhibited"),
            "{what} was reached"
        );
    }
    let lines: Vec<String> = daemon
        .client()
        .app_logs("nosy", None)
        .await
        .expect("app logs")
        .lines
        .into_iter()
        .map(|l| l.text)
        .collect();
    let said = format!(
        "127.0.0.1 is a loopback address, which an app reaches only when hearth.toml names that address; to allow it, add \"http://127.0.0.1:{api}\" to `outbound`"
    );
    assert!(lines.iter().any(|l| l.contains(&said)), "{lines:#?}");
}
