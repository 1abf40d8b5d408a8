//! The config the host pushes: files replaced whole, a reload only for a
//! change after the first config, reload commands and signals, the main
//! process held until its first config.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{Agent, WAIT};
use hearth_agent::client::{AgentClient, ConfigApplied, Error, MAX_CONFIG};
use hearth_agent::cmdline::encode_main;
use hearth_agent::main_process::MainSpec;

/// An agent keeping its config in `SCRATCH/cfg`, with `extra` options.
fn agent_with(scratch: &Path, extra: &[&str]) -> (Agent, PathBuf) {
    let cfg = scratch.join("cfg");
    let mut args = vec!["--config-dir", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Agent::start_with(&args), cfg)
}

fn main_arg(script: &str) -> String {
    encode_main(&MainSpec::command(vec!["sh".into(), "-c".into(), script.into()]))
}

fn apply(client: &AgentClient, json: &str, env: &str, revision: u64) -> ConfigApplied {
    client.apply_config(json.as_bytes(), env.as_bytes(), revision).expect("the config is applied")
}

/// Waits for `path` to hold something, and returns it.
fn wait_for_file(path: &Path, within: Duration) -> Option<String> {
    let started = Instant::now();
    loop {
        match fs::read_to_string(path) {
            Ok(text) if !text.is_empty() => return Some(text),
            _ if started.elapsed() > within => return None,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn a_changed_config_is_written_and_reloaded_and_the_same_again_is_not() {
    let scratch = tempfile::tempdir().unwrap();
    let count = scratch.path().join("reloads");
    let command = format!("cat \"$HEARTH_CONFIG_JSON\" >> {}; echo >> {}", count.display(), count.display());
    let (agent, cfg) = agent_with(scratch.path(), &["--config-reload", &command]);
    let client = agent.client();
    let reloads = || fs::read_to_string(&count).unwrap_or_default();

    // The first config after boot is written, never reloaded.
    let first = apply(&client, r#"{"a":1}"#, "A=1\n", 7);
    assert_eq!(first, ConfigApplied { revision: 7, changed: true, reload: None });
    assert_eq!(fs::read_to_string(cfg.join("config.json")).unwrap(), r#"{"a":1}"#);
    assert_eq!(fs::read_to_string(cfg.join("config.env")).unwrap(), "A=1\n");

    // The same bytes again (a reconnecting host): nothing happens.
    let again = apply(&client, r#"{"a":1}"#, "A=1\n", 8);
    assert_eq!(again, ConfigApplied { revision: 8, changed: false, reload: None });
    assert_eq!(reloads(), "", "no reload for the first config or an unchanged one");

    // A change is written first, then reloaded, with the new file in place.
    let changed = apply(&client, r#"{"a":2}"#, "A=2\n", 9);
    assert!(changed.changed);
    let reload = changed.reload.expect("a reload ran");
    assert_eq!((reload.error, reload.code), (None, Some(0)), "{}", String::from_utf8_lossy(&reload.output));
    assert_eq!(reloads(), "{\"a\":2}\n");
    assert_eq!(fs::read_to_string(cfg.join("config.env")).unwrap(), "A=2\n");

    // A new connection that re-sends the same config reloads nothing either.
    drop(client);
    let client = agent.client();
    assert!(!apply(&client, r#"{"a":2}"#, "A=2\n", 9).changed);
    assert_eq!(reloads(), "{\"a\":2}\n");
}

#[test]
fn a_failing_reload_command_reports_its_exit_and_the_end_of_its_output() {
    let script = "i=0; while [ $i -lt 300 ]; do echo line-$i-of-output-that-is-long; i=$((i+1)); done; echo oops >&2; exit 3";
    let scratch = tempfile::tempdir().unwrap();
    let (agent, _cfg) = agent_with(scratch.path(), &["--config-reload", script]);
    let client = agent.client();
    apply(&client, "{}", "", 1);
    let reload = apply(&client, r#"{"b":1}"#, "", 2).reload.expect("a reload ran");
    assert_eq!(reload.error.as_deref(), Some("the reload command exited with code 3"));
    assert_eq!(reload.code, Some(3));
    assert_eq!(reload.output.len(), 4096, "the last 4 KiB");
    let output = String::from_utf8_lossy(&reload.output);
    assert!(output.ends_with("line-299-of-output-that-is-long\noops\n"), "{output}");
    assert!(!output.contains("line-0-of"), "only the end is kept");
}

#[test]
fn a_reload_command_that_runs_too_long_is_killed() {
    let scratch = tempfile::tempdir().unwrap();
    let (agent, _cfg) = agent_with(
        scratch.path(),
        &["--config-reload", "echo started; exec sleep 60", "--reload-timeout", "300"],
    );
    let client = agent.client();
    apply(&client, "{}", "", 1);
    let started = Instant::now();
    let reload = apply(&client, r#"{"c":1}"#, "", 2).reload.expect("a reload ran");
    assert!(started.elapsed() < WAIT, "killed at its timeout, not at its end");
    assert_eq!(
        reload.error.as_deref(),
        Some("the reload command did not finish within 0.3 s and was killed")
    );
    assert_eq!(reload.signal, Some(9));
    assert_eq!(reload.output, b"started\n");
    // The agent still serves.
    assert!(client.run(["true"]).unwrap().status.success());
}

#[test]
fn a_signal_reload_goes_to_the_main_process() {
    let scratch = tempfile::tempdir().unwrap();
    let (ready, hups) = (scratch.path().join("ready"), scratch.path().join("hups"));
    let script = format!(
        "trap 'echo hup >> {}' HUP; echo yes > {}; while :; do sleep 0.05; done",
        hups.display(),
        ready.display()
    );
    let (agent, _cfg) =
        agent_with(scratch.path(), &["--main", &main_arg(&script), "--config-reload", "SIGHUP"]);
    let client = agent.client();
    assert!(wait_for_file(&ready, WAIT).is_some(), "the main process set its trap");
    apply(&client, "{}", "", 1);
    let reload = apply(&client, r#"{"d":1}"#, "", 2).reload.expect("a reload ran");
    assert_eq!(reload.error, None, "{reload:?}");
    assert!(reload.action.starts_with("SIGHUP to the main process (pid "), "{}", reload.action);
    assert_eq!(wait_for_file(&hups, WAIT).as_deref(), Some("hup\n"));
}

#[test]
fn a_signal_reload_without_a_main_process_says_so() {
    let scratch = tempfile::tempdir().unwrap();
    let (agent, _cfg) = agent_with(scratch.path(), &["--config-reload", "SIGUSR1"]);
    let client = agent.client();
    apply(&client, "{}", "", 1);
    let reload = apply(&client, r#"{"e":1}"#, "", 2).reload.expect("a reload was due");
    assert_eq!(reload.error.as_deref(), Some("no main process runs; SIGUSR1 was not sent"));
}

#[test]
fn the_main_process_waits_for_its_first_config() {
    let scratch = tempfile::tempdir().unwrap();
    let seen = scratch.path().join("seen");
    let cfg = scratch.path().join("cfg");
    let script =
        format!("cat {0}/config.json > {1} 2>/dev/null || echo missing > {1}", cfg.display(), seen.display());
    let (agent, _) = agent_with(scratch.path(), &["--main", &main_arg(&script), "--config-hold", "20000"]);
    let client = agent.client();
    apply(&client, r#"{"port":8080}"#, "PORT=8080\n", 1);
    assert_eq!(wait_for_file(&seen, WAIT).as_deref(), Some(r#"{"port":8080}"#));
    assert!(cfg.join("config.env").is_file());
}

#[test]
fn the_main_process_starts_without_config_once_the_hold_is_up() {
    let scratch = tempfile::tempdir().unwrap();
    let seen = scratch.path().join("seen");
    let script = format!("echo started > {}", seen.display());
    let started = Instant::now();
    let (_agent, _cfg) = agent_with(scratch.path(), &["--main", &main_arg(&script), "--config-hold", "500"]);
    assert_eq!(wait_for_file(&seen, WAIT).as_deref(), Some("started\n"), "it started after all");
    assert!(started.elapsed() >= Duration::from_millis(500), "it waited: {:?}", started.elapsed());
}

#[test]
fn a_config_larger_than_a_frame_is_refused_before_sending() {
    let scratch = tempfile::tempdir().unwrap();
    let (agent, cfg) = agent_with(scratch.path(), &[]);
    let client = agent.client();
    let json = vec![b' '; MAX_CONFIG];
    match client.apply_config(&json, b"X=1\n", 1) {
        Err(Error::ConfigTooLarge { size, limit }) => assert_eq!((size, limit), (MAX_CONFIG + 4, MAX_CONFIG)),
        other => panic!("expected ConfigTooLarge, got {other:?}"),
    }
    assert!(!cfg.exists(), "nothing was written");
    // The largest that fits goes through, in one frame.
    let fits = client.apply_config(&json[..MAX_CONFIG - 4], b"X=1\n", 2).expect("the largest config fits");
    assert!(fits.changed);
    assert_eq!(fs::metadata(cfg.join("config.json")).unwrap().len(), (MAX_CONFIG - 4) as u64);
}
