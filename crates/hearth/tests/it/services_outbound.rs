//! Issue 14: an app that declares `service:NAME` in its outbound list calls
//! `http://NAME.service.hearth/` and reaches the service's passing
//! instances, balanced, with `Host` as it wrote it; an app that does not
//! declare it is refused with the entry to add; a service that is gone
//! fails the call clearly. A workflow's `http-call` does the same. Through
//! the real binary.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hearth_testkit::{Daemon, failure, success, wait_until};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::apps_triggers::kitchen;
use crate::services_routing::{Backend, ingress_port};
use crate::workflows_support as support;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn deploy(daemon: &Daemon, dir: &Path, name: &str, outbound: &str) {
    let wasm = dir.join("kitchen.wasm");
    std::fs::copy(kitchen(), &wasm).expect("copy the guest");
    std::fs::write(
        dir.join("hearth.toml"),
        format!("key_value = [\"default\"]\noutbound = [{outbound}]\n[config]\ngreeting = \"hi\"\n"),
    )
    .expect("write hearth.toml");
    success(&daemon.cli(&["app", "deploy", name, wasm.to_str().expect("a UTF-8 path")]));
}

/// One HTTP/1.0 request to the ingress (so that the answer is not
/// chunked): (status, body).
async fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the ingress");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn log_lines(daemon: &Daemon, app: &str) -> Vec<String> {
    let logs = daemon.client().app_logs(app, None).await.expect("app logs");
    logs.lines.into_iter().map(|l| l.text).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_calls_a_declared_service_by_name_and_is_balanced_over_its_instances() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let port = ingress_port(&daemon).await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    for (backend, id) in [(&a, "backend-a"), (&b, "backend-b")] {
        client.register_instance("backend", &backend.register(id)).await.expect("register");
    }
    let declared = tempfile::tempdir().expect("tempdir");
    deploy(&daemon, declared.path(), "caller", "\"service:backend\"");
    let undeclared = tempfile::tempdir().expect("tempdir");
    deploy(&daemon, undeclared.path(), "stranger", "\"*:*\", \"*.service.hearth\"");
    let fetch = "/fetch?url=http://backend.service.hearth/hello";

    // Both instances answer, each with the request as the app wrote it.
    let mut seen = BTreeSet::new();
    let reached = wait_until(Duration::from_secs(15), async || {
        let (status, body) = get(port, "caller.localhost", fetch).await;
        if status == 200 && body.starts_with("upstream 200: ") {
            assert!(body.contains("GET /hello HTTP/1.1 host=backend.service.hearth "), "{body}");
            seen.insert(body["upstream 200: ".len()..].split(' ').next().unwrap_or_default().to_owned());
        }
        seen.len() == 2
    })
    .await;
    assert!(
        reached,
        "not both instances were reached: {seen:?}; last: {:?}",
        get(port, "caller.localhost", fetch).await
    );
    let (before_a, before_b) = (a.hits(), b.hits());
    for _ in 0..6 {
        let (status, body) = get(port, "caller.localhost", fetch).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!((a.hits() - before_a, b.hits() - before_b), (3, 3), "calls are not spread evenly");

    // Not declared: refused, though `*` allows every other host, and the
    // app's log names the entry that allows it.
    let (status, body) = get(port, "stranger.localhost", fetch).await;
    assert_eq!((status, body.as_str()), (502, "outbound request failed: ErrorCode::HttpRequestDenied"));
    let lines = log_lines(&daemon, "stranger").await;
    let hint =
        "hearth.toml does not declare the service; add \"service:backend\" to `outbound` and deploy again.";
    assert!(lines.iter().any(|l| l.contains(hint)), "{lines:#?}");

    // https is refused with the way to call it.
    let (status, body) = get(port, "caller.localhost", "/fetch?url=https://backend.service.hearth/").await;
    assert_eq!((status, body.as_str()), (502, "outbound request failed: ErrorCode::HttpRequestDenied"));

    // The service removed: the call fails, saying so.
    success(&daemon.cli(&["service", "rm", "backend"]));
    let gone = wait_until(Duration::from_secs(10), async || {
        get(port, "caller.localhost", fetch).await
            == (502, "outbound request failed: ErrorCode::DestinationUnavailable".to_owned())
    })
    .await;
    assert!(gone, "a removed service is still called: {:?}", get(port, "caller.localhost", fetch).await);
    let lines = log_lines(&daemon, "caller").await;
    let said = "the service \"backend\" has no passing instance; see `hearth service inspect backend`.";
    assert!(lines.iter().any(|l| l.contains(said)), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("services are reached over http only")),
        "the https refusal is not logged: {lines:#?}"
    );
}

/// Deploys the `steps` test workflow as `name`, with `manifest` if any.
fn deploy_steps(daemon: &Daemon, dir: &Path, name: &str, manifest: Option<&str>) {
    let wasm = dir.join("steps.wasm");
    std::fs::write(&wasm, &support::guests().steps).expect("write the guest");
    if let Some(manifest) = manifest {
        std::fs::write(dir.join("hearth.toml"), manifest).expect("write hearth.toml");
    }
    success(&daemon.cli(&["workflow", "deploy", name, wasm.to_str().expect("a UTF-8 path")]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_calls_a_declared_service_by_name_in_turn() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    for (backend, id) in [(&a, "backend-a"), (&b, "backend-b")] {
        client.register_instance("backend", &backend.register(id)).await.expect("register");
    }
    let declared = tempfile::tempdir().expect("tempdir");
    deploy_steps(&daemon, declared.path(), "caller", Some("outbound = [\"service:backend\"]\n"));
    let undeclared = tempfile::tempdir().expect("tempdir");
    deploy_steps(&daemon, undeclared.path(), "stranger", None);
    let input = "three:http://backend.service.hearth";

    // Three activities, taken in turn by the two instances, each with the
    // URL's host.
    let out = success(&daemon.cli(&["workflow", "start", "caller", "--input", input, "--wait"]));
    let answers: Vec<&str> = out.trim().split('+').collect();
    assert_eq!(answers.len(), 3, "{out}");
    for (step, answer) in answers.iter().enumerate() {
        let request = format!("POST /step/{} HTTP/1.1 host=backend.service.hearth ", step + 1);
        assert!(answer.contains(&request), "{answer}");
    }
    let by: BTreeSet<&str> = answers.iter().filter_map(|a| a.split(' ').next()).collect();
    assert_eq!(by, BTreeSet::from(["a", "b"]), "{out}");

    // Not declared: the call fails with the entry to add.
    let out = failure(&daemon.cli(&["workflow", "start", "stranger", "--input", input, "--wait"]));
    assert!(out.contains("add \"service:backend\" to `outbound`"), "{out}");

    // A bad declaration is refused at deploy, saying what to write.
    let bad = tempfile::tempdir().expect("tempdir");
    std::fs::write(bad.path().join("steps.wasm"), &support::guests().steps).expect("write the guest");
    std::fs::write(bad.path().join("hearth.toml"), "outbound = [\"service:Back_end\"]\n").expect("write");
    let wasm = bad.path().join("steps.wasm");
    let out = failure(&daemon.cli(&["workflow", "deploy", "bad", wasm.to_str().expect("a UTF-8 path")]));
    assert!(out.contains("service name \"Back_end\" is not valid"), "{out}");

    // The service removed: the call fails, saying so.
    success(&daemon.cli(&["service", "rm", "backend"]));
    let gone = wait_until(Duration::from_secs(10), async || {
        let out = daemon.cli(&["workflow", "start", "caller", "--input", input, "--wait"]);
        String::from_utf8_lossy(&out.stderr).contains("the service \"backend\" has no passing instance")
    })
    .await;
    assert!(gone, "a removed service is still called");
}
