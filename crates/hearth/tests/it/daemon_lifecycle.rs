//! Starting, stopping and restarting the daemon.

use std::time::Duration;

use futures::StreamExt;
use hearth_client::types::{Encoding, PutKv};
use hearth_testkit::Daemon;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_even_with_a_follower_attached() {
    let mut daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let mut follower = Box::pin(client.follow_events(None, None).await.expect("follow"));
    let status = daemon.terminate(Duration::from_secs(15)).expect("exits within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status}; log:\n{}", daemon.log());
    // The follower sees its stream end rather than hang.
    let end = tokio::time::timeout(Duration::from_secs(5), follower.next()).await.expect("stream ends");
    assert!(end.is_none() || end.is_some_and(|e| e.is_err()));
    assert!(!daemon.data_dir().join("hearth.sock").exists(), "socket removed on exit");
    assert!(daemon.log().contains("Stopped."), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let daemon = Daemon::start(BIN).await;
    let output = std::process::Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(daemon.data_dir())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    // The first daemon is unharmed.
    daemon.client().status().await.expect("first daemon still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn state_and_token_survive_a_restart() {
    let mut daemon = Daemon::start(BIN).await;
    let token = daemon.token();
    let put = PutKv { value: "v".into(), encoding: Encoding::Utf8, lease: None, if_mod_revision: None };
    daemon.client().kv_put("k", &put).await.expect("put");
    daemon.terminate(Duration::from_secs(15)).expect("clean stop");
    daemon.restart().await;
    assert_eq!(daemon.client().kv_get("k").await.expect("get").value, "v");
    assert_eq!(daemon.client().status().await.expect("status").store.revision, 1);
    assert_eq!(daemon.token(), token);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--log-format", "json", "--data-dir"])
        .arg(dir.path())
        // Nothing on the host beyond its own data dir: no default network
        // (a bridge, NAT and forwarding), no fixed ingress port.
        .args(["--default-network", "false", "--ingress", "127.0.0.1:0", "--net-prefix", "tjl"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Stopped only once it said it is ready (its socket appears earlier,
    // and on a busy machine the rest of the start can take a while), so
    // that its log holds a whole start and a stop.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("Daemon ready.") {
                let _ = tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    let _ = rx.recv_timeout(Duration::from_secs(30));
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    child.wait().expect("wait");
    let text = reader.join().expect("stderr reader").join("\n");
    // The firewall tables outlive a daemon (its machines keep running);
    // this one ran none, so its tables go, as the testkit's do.
    for family in ["inet", "bridge"] {
        let _ = std::process::Command::new("nft").args(["delete", "table", family, "hearth-tjl"]).output();
    }
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.contains("Daemon ready.")), "{text}");
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string() && value["message"].is_string(), "{line}");
    }
}

/// Issue 13, item 8: an existing token file that others may read is
/// refused at start, as sshd refuses such a key, rather than used.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_others_can_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut daemon = Daemon::start(BIN).await;
    daemon.kill9();
    let token = daemon.data_dir().join("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = std::process::Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(daemon.data_dir())
        .output()
        .expect("run");
    assert!(!output.status.success(), "the daemon started with a 0644 token");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mode 0644") && stderr.contains("chmod 600"), "{stderr}");
    // Made private again, it is the same token and the daemon starts.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    daemon.restart().await;
    daemon.client().status().await.expect("serving");
}
