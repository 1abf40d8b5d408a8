//! `hearth serve --store etcd://...`: a daemon whose state is on a real
//! etcd answers as one on the embedded store does, and says where its
//! store is; an etcd that does not answer stops it at start, saying so.

use std::ffi::OsStr;
use std::process::Command;

use hearth_testkit::etcd::Etcd;
use hearth_testkit::{Daemon, failure, free_port, success};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_on_etcd_answers_kv_and_shows_its_store() {
    let etcd = Etcd::start();
    let daemon = Daemon::start_with_env(BIN, &[("HEARTH_STORE", OsStr::new(&etcd.url()))]).await;
    success(&daemon.cli(&["kv", "put", "greeting", "hello"]));
    let got = success(&daemon.cli(&["kv", "get", "greeting"]));
    assert!(got.contains("hello"), "{got}");
    let status = success(&daemon.cli(&["status"]));
    let url = etcd.url();
    assert!(status.contains(&format!("etcd at {url} under /hearth/")), "{status}");
    assert!(!daemon.data_dir().join("state.redb").exists(), "no embedded store was made");
}

#[tokio::test]
async fn an_etcd_that_does_not_answer_stops_the_daemon_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("etcd://{}", free_port());
    let output = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--store", &url, "--ingress", "127.0.0.1:0", "--ui", "off", "--dns", "off"])
        .args(["--default-network", "false"])
        .output()
        .unwrap();
    let stderr = failure(&output);
    assert!(
        stderr.contains("cannot reach etcd at") && stderr.contains("check that it is running"),
        "{stderr}"
    );
}
