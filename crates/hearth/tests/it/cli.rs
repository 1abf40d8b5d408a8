//! The CLI, driven as a user would: through the real binary.

use std::process::Command;

use hearth_testkit::{Daemon, failure, success};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_version_data_dir_revision_and_host() {
    let daemon = Daemon::start(BIN).await;
    let text = success(&daemon.cli(&["status"]));
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(text.contains(&daemon.data_dir().display().to_string()), "{text}");
    assert!(text.contains("revision    0"), "{text}");
    assert!(text.contains("kvm"), "{text}");
    assert!(text.contains("qemu"), "{text}");

    let json: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["status", "--json"]))).expect("json");
    assert_eq!(json["store"]["backend"], "redb");
    assert_eq!(json["store"]["revision"], 0);
    assert!(json["host"]["kvm"]["present"].is_boolean());
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_round_trip_with_tables_and_json() {
    let daemon = Daemon::start(BIN).await;
    assert_eq!(success(&daemon.cli(&["kv", "put", "app/color", "blue"])).trim(), "revision 1");
    success(&daemon.cli(&["kv", "put", "app/size", "large"]));
    assert_eq!(success(&daemon.cli(&["kv", "get", "app/color"])).trim(), "blue");

    let table = success(&daemon.cli(&["kv", "ls", "app/"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("KEY"), "{table}");
    assert!(lines[1].starts_with("app/color") && lines[1].ends_with("blue"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");

    let json: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["kv", "ls", "--json"]))).expect("json");
    assert_eq!(json["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["revision"], 2);

    // Compare-and-swap from the CLI: a stale revision is refused with a hint.
    let stderr = failure(&daemon.cli(&["kv", "put", "app/color", "red", "--if-revision", "7"]));
    assert!(stderr.contains("was last written at revision 1"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
    success(&daemon.cli(&["kv", "put", "app/color", "red", "--if-revision", "1"]));

    assert!(success(&daemon.cli(&["kv", "rm", "app/color"])).contains("deleted app/color"));
    let stderr = failure(&daemon.cli(&["kv", "get", "app/color"]));
    assert!(stderr.contains("does not exist") && stderr.contains("hint:"), "{stderr}");
    let stderr = failure(&daemon.cli(&["kv", "rm", "app/color"]));
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_list_shows_changes_in_order() {
    let daemon = Daemon::start(BIN).await;
    success(&daemon.cli(&["kv", "put", "a", "1"]));
    success(&daemon.cli(&["kv", "put", "b", "2"]));
    success(&daemon.cli(&["kv", "rm", "a"]));
    let table = success(&daemon.cli(&["events"]));
    let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        vec![vec!["1", "put", "kv/a", "1"], vec!["2", "put", "kv/b", "2"], vec!["3", "delete", "kv/a"]],
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["events", "--since", "2", "--json"]))).expect("json");
    assert_eq!(json["events"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_private_and_printed() {
    use std::os::unix::fs::PermissionsExt;
    let daemon = Daemon::start(BIN).await;
    let printed = success(&daemon.cli(&["token"]));
    assert_eq!(printed.trim(), daemon.token());
    let mode = |p: &str| std::fs::metadata(daemon.data_dir().join(p)).expect(p).permissions().mode() & 0o777;
    assert_eq!(mode("token"), 0o600);
    assert_eq!(mode("hearth.sock"), 0o600);
    assert_eq!(std::fs::metadata(daemon.data_dir()).expect("dir").permissions().mode() & 0o777, 0o700);
}

#[test]
fn every_client_command_explains_a_missing_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in
        [vec!["status"], vec!["events"], vec!["events", "-f"], vec!["kv", "ls"], vec!["kv", "put", "k", "v"]]
    {
        let output = Command::new(BIN).args(&args).env("HEARTH_DATA_DIR", dir.path()).output().expect("run");
        let stderr = failure(&output);
        assert!(stderr.contains("the hearth daemon is not running"), "{args:?}: {stderr}");
        assert!(stderr.contains("hint: start it with `hearth serve`"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let stderr =
        failure(&Command::new(BIN).arg("token").env("HEARTH_DATA_DIR", dir.path()).output().expect("run"));
    assert!(stderr.contains("no token") && stderr.contains("hearth serve"), "{stderr}");
}

#[test]
fn remote_host_without_token_or_with_bad_url_is_explained() {
    let stderr = failure(
        &Command::new(BIN)
            .args(["--host", "http://127.0.0.1:1", "status"])
            .env_remove("HEARTH_TOKEN")
            .output()
            .expect("run"),
    );
    assert!(stderr.contains("--host needs a token"), "{stderr}");
    let stderr = failure(
        &Command::new(BIN).args(["--host", "ftp://x", "--token", "t", "status"]).output().expect("run"),
    );
    assert!(stderr.contains("not a daemon URL") && stderr.contains("hint:"), "{stderr}");
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = success(&Command::new(BIN).args(["completions", shell]).output().expect("run"));
        assert!(out.contains("hearth") && out.contains("status"), "{shell}");
    }
    let stderr = failure(&Command::new(BIN).args(["completions", "tcsh"]).output().expect("run"));
    assert!(stderr.contains("invalid value"), "{stderr}");
}
