//! Issue 15, config: layers, secrets, schemas, history and live delivery to
//! apps, through the binary's CLI and API.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use hearth_testkit::{Daemon, failure, success, wait_until};

use super::apps_triggers::{deploy, get, ingress_port};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");
const SECRET: &str = "db-password-in-clear-7f3a";

/// The body of an ingress answer.
fn body(port: u16, host: &str, path: &str) -> String {
    let (_, response) = get(port, host, path);
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// `hearth ARGS` with `stdin` piped in.
pub(crate) fn cli_with_stdin(daemon: &Daemon, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("HEARTH_DATA_DIR", daemon.data_dir())
        .env_remove("HEARTH_HOST")
        .env_remove("HEARTH_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the hearth CLI");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("the CLI ends")
}

async fn wait_for_body(port: u16, host: &str, path: &str, want: &str) {
    let mut got = String::new();
    let reached = wait_until(Duration::from_secs(10), async || {
        got = body(port, host, path);
        got == want
    })
    .await;
    assert!(reached, "{host}{path} answers {got:?}, not {want:?}, after 10 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_layers_reach_a_running_app_and_explain_where_each_key_came_from() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    deploy(&daemon, dir.path(), "shop", "");
    let port = ingress_port(&daemon).await;
    assert_eq!(body(port, "shop.localhost", "/config?key=greeting"), "hi", "the manifest's [config]");

    // Global wins over the manifest; the app's scope over global; the app
    // sees each change on a next request, with no redeploy.
    success(&daemon.cli(&["config", "set", "greeting", "hello"]));
    wait_for_body(port, "shop.localhost", "/config?key=greeting", "hello").await;
    success(&daemon.cli(&["config", "set", "db", "{ host = \"db.internal\", port = 5432 }"]));
    success(&daemon.cli(&["config", "set", "db.port", "6432", "--scope", "app:shop"]));
    wait_for_body(port, "shop.localhost", "/config?key=db.port", "6432").await;
    assert_eq!(body(port, "shop.localhost", "/config?key=db.host"), "db.internal");
    assert_eq!(success(&daemon.cli(&["config", "get", "db.port"])).trim(), "5432", "global's view");
    let toml = success(&daemon.cli(&["config", "get", "db", "--scope", "app:shop"]));
    assert!(toml.contains("host = \"db.internal\"") && toml.contains("port = 6432"), "{toml}");

    let explained = success(&daemon.cli(&["config", "get", "--scope", "app:shop", "--explain", "--json"]));
    let view: serde_json::Value = serde_json::from_str(&explained).expect("JSON");
    let layer_of = |key: &str| {
        view["keys"].as_array().unwrap().iter().find(|k| k["key"] == key).map(|k| k["layer"].clone())
    };
    assert_eq!(layer_of("db.port"), Some("app:shop".into()), "{explained}");
    assert_eq!(layer_of("db.host"), Some("global".into()), "{explained}");
    assert_eq!(layer_of("greeting"), Some("global".into()), "{explained}");
    let table = success(&daemon.cli(&["config", "get", "--scope", "app:shop", "--explain"]));
    assert!(table.contains("LAYER") && table.contains("app:shop"), "{table}");

    // History, diff and rollback by revision.
    let history = success(&daemon.cli(&["config", "history", "greeting", "--json"]));
    let history: serde_json::Value = serde_json::from_str(&history).expect("JSON");
    let set_at = history["entries"][0]["revision"].as_u64().expect("a revision");
    success(&daemon.cli(&["config", "set", "greeting", "howdy"]));
    wait_for_body(port, "shop.localhost", "/config?key=greeting", "howdy").await;
    let diff = success(&daemon.cli(&["config", "diff", &set_at.to_string()]));
    assert!(diff.contains("greeting") && diff.contains("hello") && diff.contains("howdy"), "{diff}");
    success(&daemon.cli(&["config", "rollback", "greeting", "--to", &set_at.to_string()]));
    wait_for_body(port, "shop.localhost", "/config?key=greeting", "hello").await;
    success(&daemon.cli(&["config", "rm", "greeting"]));
    wait_for_body(port, "shop.localhost", "/config?key=greeting", "hi").await;
    let versions = daemon.client().app("shop").await.expect("the app").versions.len();
    assert_eq!(versions, 1, "no change redeployed the app");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_is_delivered_to_its_app_and_shown_nowhere_else() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    deploy(&daemon, dir.path(), "shop", "");
    let port = ingress_port(&daemon).await;

    let refused = failure(&daemon.cli(&["config", "set", "db.password", SECRET, "--secret"]));
    assert!(refused.contains("never given on the command line"), "{refused}");
    let out =
        cli_with_stdin(&daemon, &["config", "set", "db.password", "--secret", "--scope", "app:shop"], SECRET);
    success(&out);
    wait_for_body(port, "shop.localhost", "/config?key=db.password", SECRET).await;
    // The old command sets a config secret in the app's scope.
    let out = cli_with_stdin(&daemon, &["app", "secret", "shop", "api_token"], "token-in-clear-91\n");
    success(&out);
    wait_for_body(port, "shop.localhost", "/config?key=api_token", "token-in-clear-91").await;

    let mut shown = String::new();
    for args in [
        &["config", "ls", "--json"][..],
        &["config", "get", "--scope", "app:shop", "--explain", "--json"],
        &["config", "get", "db", "--scope", "app:shop"],
        &["config", "history", "--json"],
        &["events", "--since", "0", "--limit", "10000", "--json"],
    ] {
        shown.push_str(&success(&daemon.cli(args)));
    }
    assert!(shown.contains("(secret)"), "listings say there is a secret: {shown}");
    assert!(!shown.contains(SECRET) && !shown.contains("token-in-clear-91"), "a secret in clear: {shown}");
    assert!(!daemon.log().contains(SECRET), "the daemon's log holds the secret");
    let mut daemon = daemon;
    daemon.terminate(Duration::from_secs(10));
    let raw = std::fs::read(daemon.data_dir().join("store.redb")).expect("the store file");
    assert!(
        !raw.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the store file holds the secret in clear"
    );
    let key = std::fs::metadata(daemon.data_dir().join("config.key")).expect("the key file");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_that_breaks_a_schema_is_refused_and_bad_input_changes_nothing() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    success(&daemon.cli(&["config", "set", "db.port", "5432"]));
    let schema = dir.path().join("db.schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"port": {"type": "integer", "maximum": 65535}}}"#,
    )
    .expect("write the schema");
    success(&daemon.cli(&["config", "schema", "set", "db", schema.to_str().unwrap()]));
    let before = success(&daemon.cli(&["config", "history", "--json"]));

    let refused = failure(&daemon.cli(&["config", "set", "db.port", "70000", "--scope", "app:shop"]));
    assert!(
        refused.contains("db.port") && refused.contains("app:shop") && refused.contains("65535"),
        "{refused}"
    );
    for (args, says) in [
        (&["config", "set", "x", "{ a = "][..], "not a TOML value"),
        (&["config", "set", "bad key", "1"], "not valid"),
        (&["config", "set", "x", "1", "--scope", "cluster:x"], "not a kind of scope"),
        (&["config", "rm", "nothing.here"], "not set"),
        (&["config", "rollback", "db.port", "--to", "999999"], "has not happened yet"),
    ] {
        let out = failure(&daemon.cli(args));
        assert!(out.contains(says) && out.contains("hint:"), "{args:?}: {out}");
    }
    let bad_schema = dir.path().join("bad.json");
    std::fs::write(&bad_schema, r#"{"type": "nonsense"}"#).expect("write");
    let out = failure(&daemon.cli(&["config", "schema", "set", "db", bad_schema.to_str().unwrap()]));
    assert!(out.contains("Schema for \"db\" is not valid"), "{out}");
    assert_eq!(success(&daemon.cli(&["config", "history", "--json"])), before, "nothing refused was written");
    assert_eq!(success(&daemon.cli(&["config", "get", "db.port"])).trim(), "5432");
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_files_import_into_the_files_layer_and_a_watch_follows_changes() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).expect("mkdir");
    std::fs::write(config_dir.join("10-base.toml"), "[db]\nhost = \"files-host\"\npool = 4\n")
        .expect("write");
    let secrets = config_dir.join("20-secrets.toml");
    std::fs::write(&secrets, format!("[db]\npassword = \"{SECRET}\"\n")).expect("write");
    success(&daemon.cli(&["config", "encrypt", secrets.to_str().unwrap(), "-i"]));
    let encrypted = std::fs::read_to_string(&secrets).expect("read");
    assert!(encrypted.contains("password = \"age:") && !encrypted.contains(SECRET), "{encrypted}");
    // YAML too, read and encrypted the same way.
    std::fs::write(config_dir.join("15-replica.yaml"), "db:\n  replica: r1\n").expect("write");
    let yaml_secrets = config_dir.join("25-token.yml");
    std::fs::write(&yaml_secrets, format!("db:\n  token: {SECRET}\n")).expect("write");
    success(&daemon.cli(&["config", "encrypt", yaml_secrets.to_str().unwrap(), "-i"]));
    let encrypted = std::fs::read_to_string(&yaml_secrets).expect("read");
    assert!(encrypted.contains("token: age:") && !encrypted.contains(SECRET), "{encrypted}");

    let client = daemon.client();
    let mut watch = Box::pin(client.watch_config("db", None).await.expect("watch"));
    success(&daemon.cli(&["config", "import", config_dir.to_str().unwrap()]));
    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while seen.len() < 3 {
            let message = watch.next().await.expect("the watch stays open").expect("a message");
            if message.event == "set" {
                seen.push(message.data);
            }
        }
    })
    .await;
    assert!(got.is_ok(), "three changes under db within 10 s: {seen:?}");
    let all = seen.join("\n");
    assert!(all.contains("db.password") && all.contains("(secret)") && !all.contains(SECRET), "{all}");

    let explained = success(&daemon.cli(&["config", "get", "db", "--explain"]));
    assert!(explained.contains("files") && explained.contains("20-secrets.toml"), "{explained}");
    assert!(explained.contains("25-token.yml") && explained.contains("15-replica.yaml"), "{explained}");
    let resolved = client.config("global", "db.pool").await.expect("config");
    assert_eq!(resolved.value, Some(serde_json::json!(4)));
    let resolved = client.config("global", "db.replica").await.expect("config");
    assert_eq!(resolved.value, Some(serde_json::json!("r1")));
    // A file encrypted to another key is refused, naming the file.
    let foreign = dir.path().join("foreign.toml");
    std::fs::write(&foreign, "x = 1\n").expect("write");
    let other = hearth_config::secret::Keyring::open(dir.path()).expect("a key");
    success(&daemon.cli(&[
        "config",
        "encrypt",
        foreign.to_str().unwrap(),
        "-i",
        "--recipient",
        &other.recipient().to_string(),
    ]));
    let out = failure(&daemon.cli(&["config", "import", foreign.to_str().unwrap()]));
    assert!(out.contains("foreign.toml") && out.contains("cannot be decrypted"), "{out}");
}

/// `cat FILE` in a machine, or "" when it cannot be read yet.
fn machine_file(daemon: &Daemon, machine: &str, path: &str) -> String {
    let out = daemon.cli(&["machine", "exec", machine, "--", "cat", path]);
    if out.status.success() { String::from_utf8_lossy(&out.stdout).into_owned() } else { String::new() }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_change_reaches_a_running_machine_and_reloads_it_without_a_restart() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    success(&daemon.cli(&["config", "set", "greeting", "hello"]));
    success(&daemon.cli(&["config", "set", "port", "8080", "--scope", "machine:cfg"]));
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "cfg",
        "--memory",
        "256M",
        "--on-config-change",
        "echo reloaded >> /tmp/reloads",
        // Not root: the files are its own.
        "--user",
        "nobody",
        &image,
        "--",
        "sh",
        "-c",
        "cat /run/hearth/config.json > /tmp/start 2>&1; mv /tmp/start /tmp/at-start; exec sleep 100000",
    ]));
    let limit = Duration::from_secs(180);
    let mut file = String::new();
    let arrived = wait_until(limit, async || {
        file = machine_file(&daemon, "cfg", "/run/hearth/config.json");
        file.contains("hello")
    })
    .await;
    assert!(arrived, "config.json never held the config: {file:?}\n{}", daemon.log());
    let json: serde_json::Value = serde_json::from_str(&file).expect("config.json is JSON");
    assert_eq!(json, serde_json::json!({"greeting": "hello", "port": 8080}));
    // What the main process read as it started (it writes it whole, once).
    let mut at_start = String::new();
    wait_until(Duration::from_secs(30), async || {
        at_start = machine_file(&daemon, "cfg", "/tmp/at-start");
        !at_start.is_empty()
    })
    .await;
    let main_log =
        String::from_utf8_lossy(&daemon.cli(&["machine", "logs", "--main", "cfg"]).stdout).into_owned();
    assert!(
        at_start.contains("hello"),
        "the main process started before its config: {at_start:?}\n{main_log}"
    );
    let env = machine_file(&daemon, "cfg", "/run/hearth/config.env");
    assert!(env.contains("GREETING='hello'") && env.contains("PORT='8080'"), "{env}");
    let started = daemon.client().machine("cfg").await.expect("the machine").main.and_then(|m| m.started_at);

    success(&daemon.cli(&["config", "set", "greeting", "changed"]));
    let changed = wait_until(Duration::from_secs(30), async || {
        machine_file(&daemon, "cfg", "/run/hearth/config.json").contains("changed")
            && machine_file(&daemon, "cfg", "/tmp/reloads").contains("reloaded")
    })
    .await;
    assert!(changed, "the change or its reload did not reach the machine\n{}", daemon.log());
    let machine = daemon.client().machine("cfg").await.expect("the machine");
    assert_eq!(machine.main.and_then(|m| m.started_at), started, "the main process was not restarted");
    let inspect = success(&daemon.cli(&["machine", "inspect", "cfg"]));
    assert!(inspect.lines().any(|l| l.starts_with("config") && l.contains("revision")), "{inspect}");
    assert_eq!(machine_file(&daemon, "cfg", "/tmp/reloads").lines().count(), 1, "one change, one reload");
}
