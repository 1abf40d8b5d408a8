//! Issue 15, alerts: rules over store events, app logs and metrics; a
//! signed webhook, silences, inhibition, a rate limit, mail exactly once
//! across kill -9, bad input, through the binary's CLI.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_testkit::{Daemon, failure, success, wait_until};

use super::apps_triggers::{deploy, get, ingress_port};
use super::config_cli::cli_with_stdin;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");
const HOOK_SECRET: &str = "hook-secret-5b1e";

/// One request the webhook sink received.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A webhook receiver on loopback that answers 200 to every POST and keeps
/// what it got.
struct Sink {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        let url = format!("http://{}/alerts", listener.local_addr().expect("its address"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let keep = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let keep = keep.clone();
                std::thread::spawn(move || serve(stream, &keep));
            }
        });
        Sink { url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn for_rule(&self, rule: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.json()["groupKey"].as_str().is_some_and(|k| k.contains(&format!("/{rule}{{"))))
            .collect()
    }
}

/// Reads HTTP/1.1 requests off one connection until it closes.
fn serve(stream: std::net::TcpStream, keep: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        keep.lock().unwrap().push(Received { headers, body });
        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }
}

fn apply(daemon: &Daemon, dir: &std::path::Path, text: &str) -> std::process::Output {
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).expect("write the rules file");
    daemon.cli(&["alert", "apply", path.to_str().expect("UTF-8")])
}

fn history(daemon: &Daemon, rule: &str) -> Vec<serde_json::Value> {
    let text = success(&daemon.cli(&["alert", "history", "--rule", rule, "--json"]));
    let history: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    history["entries"].as_array().cloned().unwrap_or_default()
}

fn hook_rules(url: &str) -> String {
    format!(
        r#"
[[receiver]]
name = "hook"
webhook = {{ url = "{url}", secret = "config:alerts.hook_secret" }}

[[rule]]
name = "job-failed"
event = {{ prefix = "kv/jobs/", match = {{ state = "failed" }}, resolve_after = "never" }}
summary = "job {{{{ key }}}} failed: {{{{ value.error }}}}"
notify = ["hook"]
group_wait = "0s"
group_interval = "1s"

[[rule]]
name = "job-slow"
event = {{ prefix = "kv/jobs/", match = {{ seconds = {{ ">" = 60 }} }} }}
notify = ["hook"]
group_wait = "0s"

[[rule]]
name = "job-done"
event = {{ prefix = "kv/jobs/", match = {{ state = "done" }} }}
notify = ["hook"]
group_wait = "0s"
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_gets_each_notification_once_signed_and_a_silence_mutes_a_rule() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Sink::start();
    success(&cli_with_stdin(&daemon, &["config", "set", "alerts.hook_secret", "--secret"], HOOK_SECRET));
    success(&apply(&daemon, dir.path(), &hook_rules(&sink.url)));

    success(&daemon.cli(&["kv", "put", "jobs/a", r#"{"state":"failed","error":"disk full"}"#]));
    assert!(wait_until(Duration::from_secs(10), async || sink.for_rule("job-failed").len() == 1).await);
    let got = &sink.for_rule("job-failed")[0];
    let signature = got.header("x-hearth-signature");
    assert!(
        hearth_triggers::signature::verify(HOOK_SECRET, &got.body, signature),
        "signed with the config secret: {signature:?}"
    );
    let body = got.json();
    assert_eq!(body["version"], "4", "Alertmanager's payload: {body}");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["alerts"][0]["labels"]["key"], "kv/jobs/a");
    assert_eq!(body["alerts"][0]["annotations"]["summary"], "job kv/jobs/a failed: disk full");
    let id = got.header("idempotency-key").expect("an Idempotency-Key").to_owned();

    // A silence of one rule: an event that fires it and another rule at
    // once; the other rule's notification comes, the silenced one's never.
    let silenced = success(&daemon.cli(&["alert", "silence", "--match", "rule=job-slow", "--for", "1h"]));
    assert!(silenced.contains("mutes rule=job-slow"), "{silenced}");
    success(&daemon.cli(&["kv", "put", "jobs/b", r#"{"state":"done","seconds":120}"#]));
    assert!(wait_until(Duration::from_secs(10), async || sink.for_rule("job-done").len() == 1).await);
    let alerts = success(&daemon.cli(&["alert", "ls", "--json"]));
    let alerts: serde_json::Value = serde_json::from_str(&alerts).expect("JSON");
    let slow = alerts["alerts"].as_array().unwrap().iter().find(|a| a["rule"] == "job-slow").cloned();
    assert_eq!(slow.as_ref().map(|a| a["muted"].clone()), Some(true.into()), "{alerts}");
    assert!(sink.for_rule("job-slow").is_empty(), "silenced");
    let silences = success(&daemon.cli(&["alert", "silence", "ls"]));
    assert!(silences.contains("rule=job-slow") && silences.contains("active"), "{silences}");

    // Resolved once, under its own id; the history has both.
    success(&daemon.cli(&["kv", "put", "jobs/a", r#"{"state":"retrying"}"#]));
    assert!(wait_until(Duration::from_secs(10), async || sink.for_rule("job-failed").len() == 2).await);
    let resolved = &sink.for_rule("job-failed")[1];
    assert_eq!(resolved.json()["status"], "resolved");
    assert_ne!(resolved.header("idempotency-key"), Some(id.as_str()));
    let entries = history(&daemon, "job-failed");
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(
        (entries[0]["status"].as_str(), entries[0]["kind"].as_str()),
        (Some("resolved"), Some("webhook"))
    );
    let table = success(&daemon.cli(&["alert", "history"]));
    assert!(table.contains("job-failed") && table.contains("hook (webhook)"), "{table}");

    // The secret was never written in clear where the hook is named.
    let rules = success(&daemon.cli(&["alert", "rules", "--show"]));
    assert!(!rules.contains(HOOK_SECRET) && rules.contains("config:alerts.hook_secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_rule_fires_from_an_app_s_output() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    deploy(&daemon, dir.path(), "shop", "");
    let port = ingress_port(&daemon).await;
    let rules = r#"
[[receiver]]
name = "book"
record = {}

[[rule]]
name = "out-of-stock"
log = { source = "app:shop", regex = "out of stock", count = "> 2", window = "1m" }
summary = "{{ source }}: {{ line }}"
notify = ["book"]
group_wait = "0s"
"#;
    success(&apply(&daemon, dir.path(), rules));
    for _ in 0..3 {
        assert_eq!(get(port, "shop.localhost", "/print?text=item%2042%20out%20of%20stock").0, 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), async || !history(&daemon, "out-of-stock").is_empty()).await,
        "a log rule's record: {}",
        success(&daemon.cli(&["alert", "ls"]))
    );
    let entry = &history(&daemon, "out-of-stock")[0];
    assert_eq!(entry["kind"], "record");
    let summary = entry["alerts"][0]["summary"].as_str().unwrap_or_default();
    assert!(summary.starts_with("app:shop: ") && summary.contains("item 42 out of stock"), "{summary}");
    let rules = success(&daemon.cli(&["alert", "rules"]));
    assert!(
        rules.contains("out-of-stock") && rules.contains("hearth-restarted") && rules.contains("built-in"),
        "{rules}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inhibited_alert_waits_for_its_source_to_resolve_and_a_rate_limit_holds_the_rest() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = r#"
[[receiver]]
name = "book"
record = {}

[[rule]]
name = "site-down"
event = { prefix = "kv/probe/down", match = { state = "down" }, resolve_after = "never" }
labels = { severity = "critical", site = "a" }
notify = ["book"]
group_wait = "0s"
group_interval = "1s"

[[rule]]
name = "site-slow"
event = { prefix = "kv/probe/slow", match = { state = "slow" }, resolve_after = "never" }
labels = { severity = "warning", site = "a" }
notify = ["book"]
group_wait = "0s"

[[rule]]
name = "flappy"
event = { prefix = "kv/flap/" }
notify = ["book"]
group_by = ["key"]
group_wait = "0s"
rate_limit = "2/h"

[[rule]]
name = "marker"
event = { prefix = "kv/marker/" }
notify = ["book"]
group_wait = "0s"
group_interval = "1s"

[[inhibit]]
source = { severity = "critical" }
target = { severity = "warning" }
equal = ["site"]
"#;
    success(&apply(&daemon, dir.path(), rules));
    let alerts = || {
        let text = success(&daemon.cli(&["alert", "ls", "--json"]));
        let list: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        list["alerts"].as_array().cloned().unwrap_or_default()
    };
    let marked = async |n: usize| {
        success(&daemon.cli(&["kv", "put", &format!("marker/{n}"), "{}"]));
        wait_until(Duration::from_secs(10), async || history(&daemon, "marker").len() == n).await
    };

    // The site is down: its alert fires; the warning for the same site
    // fires too, but is held back while the critical one fires.
    success(&daemon.cli(&["kv", "put", "probe/down", r#"{"state":"down"}"#]));
    assert!(
        wait_until(Duration::from_secs(10), async || history(&daemon, "site-down").len() == 1).await,
        "{}\n{}\n{}",
        success(&daemon.cli(&["alert", "ls"])),
        success(&daemon.cli(&["alert", "history"])),
        daemon.log()
    );
    success(&daemon.cli(&["kv", "put", "probe/slow", r#"{"state":"slow"}"#]));
    // Everything before the marker has been judged once its record is in.
    assert!(marked(1).await);
    let slow = alerts().into_iter().find(|a| a["rule"] == "site-slow");
    let slow = slow.unwrap_or_else(|| panic!("site-slow is not listed: {:?}", alerts()));
    assert_eq!((slow["phase"].as_str(), slow["muted"].as_bool()), (Some("firing"), Some(true)), "{slow}");
    assert!(history(&daemon, "site-slow").is_empty(), "an inhibited alert was notified");

    // The site is back: the critical alert resolves, and the warning,
    // still firing, is told at last.
    success(&daemon.cli(&["kv", "put", "probe/down", r#"{"state":"up"}"#]));
    assert!(
        wait_until(Duration::from_secs(10), async || history(&daemon, "site-slow").len() == 1).await,
        "{}",
        success(&daemon.cli(&["alert", "ls"]))
    );
    // A record receiver keeps no "resolved" entry: the alert is gone.
    let alerts_now = alerts();
    assert!(!alerts_now.iter().any(|a| a["rule"] == "site-down" && a["phase"] == "firing"), "{alerts_now:?}");

    // Four groups fire at once under a limit of two an hour: two are told
    // now, the others wait for a slot.
    for i in 0..4 {
        success(&daemon.cli(&["kv", "put", &format!("flap/{i}"), "{}"]));
    }
    assert!(wait_until(Duration::from_secs(10), async || history(&daemon, "flappy").len() == 2).await);
    assert!(marked(2).await);
    assert_eq!(history(&daemon, "flappy").len(), 2, "the rate limit let more through");
    let flapping = alerts().iter().filter(|a| a["rule"] == "flappy" && a["phase"] == "firing").count();
    assert_eq!(flapping, 4, "{:?}", alerts());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rules_are_refused_naming_the_field_and_change_nothing() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let good = hook_rules("http://127.0.0.1:9/alerts");
    success(&apply(&daemon, dir.path(), &good));
    let cases: [(&str, &str); 5] = [
        ("[[rule]\nname = \"x\"\n", "line 1"),
        (&format!("{good}frobnicate = 1\n"), "frobnicate"),
        (
            &good.replace(
                "notify = [\"hook\"]\ngroup_wait = \"0s\"\n\n[[rule]]\nname = \"job-done\"",
                "notify = [\"pager\"]\ngroup_wait = \"0s\"\n\n[[rule]]\nname = \"job-done\"",
            ),
            "unknown receiver \"pager\"",
        ),
        ("[[rule]]\nname = \"x\"\nlog = { source = \"app:x\", regex = \"(unclosed\" }\n", "log.regex"),
        ("[[rule]]\nname = \"x\"\nmetric = { name = \"m\", op = \"=>\", value = 1 }\n", "metric.op"),
    ];
    for (text, want) in cases {
        let error = failure(&apply(&daemon, dir.path(), text));
        assert!(error.contains(want), "{want:?} in {error}");
        assert!(error.contains("nothing was changed"), "{error}");
        assert_eq!(success(&daemon.cli(&["alert", "rules", "--show"])), good, "unchanged");
    }
    let error = failure(
        &daemon.cli(&["alert", "rule", "add", "x", "--log", "app:x", "--regex", "(", "--notify", "hook"]),
    );
    assert!(error.contains("log.regex"), "{error}");
    let error = failure(&daemon.cli(&["alert", "rule", "add", "x", "--event", "kv/", "--notify", "nobody"]));
    assert!(error.contains("unknown receiver \"nobody\""), "{error}");
    let error = failure(&daemon.cli(&["alert", "silence", "--match", "rule", "--for", "1h"]));
    assert!(error.contains("rule"), "{error}");
    let error = failure(&daemon.cli(&["alert", "silence", "--match", "rule=x", "--for", "soon"]));
    assert!(error.contains("duration"), "{error}");
    let error = failure(&daemon.cli(&["alert", "rule", "rm", "hearth-restarted"]));
    assert!(error.contains("built-in"), "{error}");
    assert_eq!(success(&daemon.cli(&["alert", "rules", "--show"])), good, "unchanged");

    // And a good one by options.
    let added = success(&daemon.cli(&[
        "alert",
        "rule",
        "add",
        "machine-failed",
        "--event",
        "machines/",
        "--match",
        "status.state=failed",
        "--notify",
        "hook",
    ]));
    assert!(added.contains("added machine-failed"), "{added}");
    let rules = success(&daemon.cli(&["alert", "rules", "--json"]));
    assert!(rules.contains("\"machine-failed\""), "{rules}");
}

/// The issue's acceptance: a real SMTP server on loopback gets exactly one
/// mail per alert group across kill -9, and one "resolved".
#[tokio::test(flavor = "multi_thread")]
async fn one_mail_per_group_and_one_resolved_across_kill_9() {
    let sink = hearth_testkit::smtp::SmtpSink::start().await;
    let mut daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = format!(
        r#"
[[receiver]]
name = "ops"
email = {{ to = "ops@example.test", from = "hearth@example.test", smtp = "{smtp}" }}

[[rule]]
name = "job-failed"
event = {{ prefix = "kv/jobs/", match = {{ state = "failed" }}, resolve_after = "never" }}
summary = "job {{{{ key }}}} failed"
notify = ["ops"]
group_wait = "2s"
# Both resolutions below fall in one interval, however slow the machine
# (else the first is told with the other still firing, as Alertmanager
# would).
group_interval = "10s"

[[rule]]
name = "canary"
event = {{ prefix = "kv/canary/" }}
notify = ["ops"]
group_wait = "0s"
"#,
        smtp = sink.address()
    );
    success(&apply(&daemon, dir.path(), &rules));

    // Two alerts of one group, and the daemon killed while the group waits.
    success(&daemon.cli(&["kv", "put", "jobs/a", r#"{"state":"failed"}"#]));
    success(&daemon.cli(&["kv", "put", "jobs/b", r#"{"state":"failed"}"#]));
    daemon.kill9();
    daemon.restart().await;
    let mails = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1, "one mail for the group");
    let subject = mails[0].header("subject").unwrap_or_default().to_owned();
    assert!(subject.starts_with("[FIRING:2] job-failed"), "{subject}");
    assert!(mails[0].body.contains("job kv/jobs/a failed") && mails[0].body.contains("job kv/jobs/b failed"));

    // Killed again once its delivery is recorded (a kill between the
    // mail's sending and that record would send it again, with the same
    // Message-ID: the one duplicate the design allows): nothing is sent
    // again.
    assert!(wait_until(Duration::from_secs(10), async || history(&daemon, "job-failed").len() == 1).await);
    daemon.kill9();
    daemon.restart().await;
    success(&daemon.cli(&["kv", "put", "jobs/a", r#"{"state":"done"}"#]));
    success(&daemon.cli(&["kv", "put", "jobs/b", r#"{"state":"done"}"#]));
    let mails = sink.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 2, "one resolved mail");
    let subject = mails[1].header("subject").unwrap_or_default().to_owned();
    assert!(subject.starts_with("[RESOLVED] job-failed"), "{subject}");

    // After one more kill, a new alert's mail is the only one that comes:
    // nothing before it was repeated.
    assert!(wait_until(Duration::from_secs(10), async || history(&daemon, "job-failed").len() == 2).await);
    daemon.kill9();
    daemon.restart().await;
    success(&daemon.cli(&["kv", "put", "canary/1", "tweet"]));
    let mails = sink.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 3, "{:?}", mails.iter().map(|m| m.header("subject")).collect::<Vec<_>>());
    assert!(mails[2].header("subject").unwrap_or_default().contains("canary"));
    let ids: std::collections::BTreeSet<_> =
        mails.iter().map(|m| m.header("message-id").map(str::to_owned)).collect();
    assert_eq!(ids.len(), 3, "three distinct notifications");
    assert_eq!(history(&daemon, "job-failed").len(), 2);
}

/// hearth's own acts are recorded by built-in rules: a registration that
/// expires is in the alert history; one taken out by hand is not.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_registration_is_recorded_in_the_alert_history() {
    use hearth_client::types::RegisterInstance;
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let register = |id: &str, ttl_s| RegisterInstance {
        id: Some(id.into()),
        address: "127.0.0.1".into(),
        port: 9001,
        ttl_s,
        checks: vec![],
        tags: vec![],
        routes: None,
    };
    client.register_instance("api", &register("api-kept", 60)).await.expect("register");
    client.register_instance("api", &register("api-gone", 1)).await.expect("register");
    client.deregister_instance("api", "api-kept").await.expect("deregister");
    assert!(
        wait_until(Duration::from_secs(15), async || !history(&daemon, "hearth-expired").is_empty()).await,
        "{}",
        success(&daemon.cli(&["alert", "history"]))
    );
    let entries = history(&daemon, "hearth-expired");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["kind"], "record");
    let summary = entries[0]["alerts"][0]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("api-gone") && summary.contains("TTL"), "{summary}");
    let history = success(&daemon.cli(&["service", "history", "api"]));
    assert!(history.contains("expired") && history.contains("deregistered"), "{history}");
}

/// A workflow receiver starts one run per notification, with the alert as
/// its input; what that run writes cannot fire the rule that started it.
#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_receiver_starts_a_run_that_cannot_fire_its_own_rule() {
    use super::workflows_cli::{approval_example, run, runs};
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    success(&daemon.cli(&["workflow", "deploy", "runbook", &approval_example()]));
    // It matches anything that failed: the trigger, and (but for the
    // guard) the runbook's own run, which fails on an alert's input.
    let rules = r#"
[[receiver]]
name = "runbook"
workflow = { name = "runbook", input = "alert" }

[[rule]]
name = "anything-failed"
event = { prefix = "", match = { status = "failed" } }
notify = ["runbook"]
group_by = ["key"]
group_wait = "0s"
"#;
    success(&apply(&daemon, dir.path(), rules));
    success(&daemon.cli(&["kv", "put", "incidents/1", r#"{"status":"failed"}"#]));
    let alert_runs = |daemon: &Daemon| -> Vec<serde_json::Value> {
        runs(daemon)
            .into_iter()
            .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with("alert:")))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), async || {
            alert_runs(&daemon).iter().any(|r| r["status"] == "failed")
        })
        .await,
        "the runbook's run: {:?}",
        runs(&daemon)
    );
    let first = alert_runs(&daemon)[0].clone();
    let id = first["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("alert:anything-failed:"), "{id}");
    let detail = run(&daemon, &id);
    let input: serde_json::Value = serde_json::from_str(detail["input"].as_str().unwrap()).unwrap();
    assert_eq!(input["alert"]["status"], "firing", "{input}");
    assert_eq!(input["alert"]["alerts"][0]["labels"]["key"], "kv/incidents/1");

    // A second incident starts a second run; the first run's failure,
    // written before it, started none.
    success(&daemon.cli(&["kv", "put", "incidents/2", r#"{"status":"failed"}"#]));
    assert!(wait_until(Duration::from_secs(20), async || alert_runs(&daemon).len() >= 2).await);
    let keys: Vec<String> = alert_runs(&daemon)
        .iter()
        .map(|r| {
            let input = run(&daemon, r["id"].as_str().unwrap())["input"].as_str().unwrap().to_owned();
            let input: serde_json::Value = serde_json::from_str(&input).unwrap();
            input["alert"]["alerts"][0]["labels"]["key"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&"kv/incidents/1".to_owned()) && keys.contains(&"kv/incidents/2".to_owned()));
}

/// A metric rule fires when an app's error ratio stays high for its `for`.
#[tokio::test(flavor = "multi_thread")]
async fn a_metric_rule_fires_when_an_app_s_error_ratio_stays_high() {
    let interval = std::ffi::OsString::from("200");
    let daemon =
        Daemon::start_with_env(BIN, &[("HEARTH_TEST_METRICS_INTERVAL_MS", interval.as_os_str())]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    deploy(&daemon, dir.path(), "shop", "");
    let port = ingress_port(&daemon).await;
    let rules = r#"
[[receiver]]
name = "book"
record = {}

[[rule]]
name = "shop-errors"
metric = { name = "app_error_ratio", labels = { app = "shop" }, op = ">", value = 0.5, for = "1s" }
summary = "shop fails {{ value }} of its requests"
notify = ["book"]
group_wait = "0s"
"#;
    success(&apply(&daemon, dir.path(), rules));
    // Healthy traffic first.
    for _ in 0..5 {
        assert_eq!(get(port, "shop.localhost", "/").0, 200);
    }
    // Then every request fails, for as long as it takes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = get(port, "shop.localhost", "/trap");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let fired =
        wait_until(Duration::from_secs(30), async || !history(&daemon, "shop-errors").is_empty()).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("the load thread");
    assert!(fired, "{}", success(&daemon.cli(&["alert", "ls"])));
    let entry = &history(&daemon, "shop-errors")[0];
    assert_eq!(entry["alerts"][0]["labels"]["app"], "shop");
    let summary = entry["alerts"][0]["summary"].as_str().unwrap_or_default();
    assert!(summary.starts_with("shop fails 1"), "{summary}");
}

/// Issue 17: hosts on one etcd keep one alerting service, the leader's.
/// Each notification is sent once, not once per host; a silence asked
/// through the host that does not lead mutes; when the leader dies, the
/// next one goes on from what it saved.
#[tokio::test(flavor = "multi_thread")]
async fn hosts_sharing_a_store_send_each_notification_once_and_the_next_leader_goes_on() {
    let etcd = hearth_testkit::etcd::Etcd::start();
    // One key for the hosts' secrets (the hook's), as hosts must share.
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("config.key");
    let shared_key = [("HEARTH_CONFIG_KEY", key.as_os_str())];
    let on = |host: &'static str| Daemon::start_on_etcd(BIN, &etcd, host, &shared_key);
    let one = on("one").await;
    let two = on("two").await;
    let leader = || async {
        let hosts = one.client().hosts().await.expect("hosts");
        hosts.hosts.into_iter().find(|h| h.leader).map(|h| h.name)
    };
    assert!(wait_until(Duration::from_secs(20), async || leader().await.is_some()).await, "a leader");
    let (mut leading, following) =
        if leader().await.as_deref() == Some("one") { (one, two) } else { (two, one) };

    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Sink::start();
    success(&cli_with_stdin(&following, &["config", "set", "alerts.hook_secret", "--secret"], HOOK_SECRET));
    // Applied through the host that does not lead: the leader takes it.
    success(&apply(&following, dir.path(), &hook_rules(&sink.url)));
    assert!(
        wait_until(Duration::from_secs(10), async || {
            success(&leading.cli(&["alert", "rules"])).contains("job-failed")
        })
        .await
    );
    success(&following.cli(&["kv", "put", "jobs/a", r#"{"state":"failed","error":"disk full"}"#]));
    assert!(
        wait_until(Duration::from_secs(10), async || sink.for_rule("job-failed").len() == 1).await,
        "{}\n{}\n{}",
        success(&leading.cli(&["alert", "ls"])),
        leading.log(),
        following.log()
    );
    // ...and not once more by the other host.
    let twice = wait_until(Duration::from_secs(3), async || sink.for_rule("job-failed").len() > 1).await;
    assert!(!twice, "sent twice: {:?}", sink.for_rule("job-failed"));

    // A silence through the follower mutes the leader's rule, and both list it.
    success(&following.cli(&["alert", "silence", "--match", "rule=job-slow", "--for", "1h"]));
    for host in [&leading, &following] {
        let listed = wait_until(Duration::from_secs(10), async || {
            success(&host.cli(&["alert", "silence", "ls"])).contains("rule=job-slow")
        })
        .await;
        assert!(listed, "{}", success(&host.cli(&["alert", "silence", "ls"])));
    }
    success(&following.cli(&["kv", "put", "jobs/b", r#"{"state":"done","seconds":120}"#]));
    assert!(wait_until(Duration::from_secs(10), async || sink.for_rule("job-done").len() == 1).await);
    assert!(sink.for_rule("job-slow").is_empty(), "silenced");

    // The leader dies: the other host leads, and goes on from its state.
    leading.kill9();
    success(&following.cli(&["kv", "put", "jobs/c", r#"{"state":"failed","error":"oom"}"#]));
    assert!(
        wait_until(Duration::from_secs(40), async || sink.for_rule("job-failed").len() == 2).await,
        "the new leader's notification: {:?}\n{}",
        sink.for_rule("job-failed"),
        following.log()
    );
    let twice = wait_until(Duration::from_secs(3), async || sink.for_rule("job-failed").len() > 2).await;
    assert!(!twice, "the first firing was told again: {:?}", sink.for_rule("job-failed"));
    assert!(sink.for_rule("job-slow").is_empty(), "the silence holds under the new leader");
}
