//! `hearth alert`: rules over events, logs and metrics; alerts, silences
//! and the history of notifications.

use std::path::PathBuf;

use anyhow::{Context, bail};
use hearth_client::Client;
use hearth_client::types::{AlertRulesApplied, ApplyAlertRules, NewSilence, SetAlertRule};

use crate::output::{Table, cell};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Put a rules file in force (TOML: [[receiver]], [[rule]], [[inhibit]]); one that does not check changes nothing.
    Apply { file: PathBuf },
    /// The rules in force, with their receivers and how many of their alerts are active.
    Rules {
        /// Print the rules file as applied.
        #[arg(long, conflicts_with = "builtin")]
        show: bool,
        /// Print the built-in rules (a rule of the same name in your file replaces one).
        #[arg(long)]
        builtin: bool,
        #[arg(long)]
        json: bool,
    },
    /// Add, replace or remove one rule.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// The alerts pending, firing or recently resolved.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Mute the alerts that meet every --match for a while; `silence ls`, `silence expire ID`.
    #[command(args_conflicts_with_subcommands = true)]
    Silence {
        #[command(subcommand)]
        command: Option<SilenceCommand>,
        /// A label matcher: rule=NAME, app!=web, machine=~"db-.*", severity!~"info|debug".
        #[arg(long = "match", value_name = "MATCHER")]
        matchers: Vec<String>,
        /// How long: 30m, 2h, 1d.
        #[arg(long = "for", value_name = "DURATION", default_value = "2h")]
        duration: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Notifications handed to their receivers, and hearth's own acts, newest first.
    History {
        /// Only this rule's.
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RuleCommand {
    /// Add or replace rule NAME: one of --event, --log or --metric, or its whole table with --toml.
    Add(Box<RuleArgs>),
    /// Remove rule NAME from the rules file.
    Rm { name: String },
}

#[derive(Debug, clap::Args)]
pub(crate) struct RuleArgs {
    name: String,
    /// Store events under this key prefix.
    #[arg(long, value_name = "PREFIX", conflicts_with_all = ["log", "metric"])]
    event: Option<String>,
    /// Only puts or only deletes (with --event).
    #[arg(long, value_name = "put|delete", requires = "event")]
    kind: Option<String>,
    /// A condition on the event's JSON value: status.state=failed, code=500 (the value is TOML; a bare word is a string).
    #[arg(long = "match", value_name = "PATH=VALUE", requires = "event")]
    matches: Vec<String>,
    /// Log lines of app:NAME, workflow:NAME, machine:NAME, service:NAME, or a prefix with * (app:*).
    #[arg(long, value_name = "SOURCE", conflicts_with = "metric", requires = "regex")]
    log: Option<String>,
    /// The regular expression a counted line matches (with --log).
    #[arg(long, requires = "log")]
    regex: Option<String>,
    /// How many lines in the window fire it: "> 5" (with --log; default "> 0").
    #[arg(long, requires = "log")]
    count: Option<String>,
    /// The sliding window lines are counted in: 1m (with --log).
    #[arg(long, requires = "log")]
    window: Option<String>,
    /// A metric (`hearth metrics ls`), with --op and --value.
    #[arg(long, value_name = "NAME", requires_all = ["op", "value"])]
    metric: Option<String>,
    /// A label the metric's series must have: app=shop (with --metric).
    #[arg(long = "where", value_name = "LABEL=VALUE", requires = "metric")]
    series: Vec<String>,
    /// The comparison: >, >=, <, <=, ==, != (with --metric).
    #[arg(long, requires = "metric")]
    op: Option<String>,
    /// The threshold (with --metric).
    #[arg(long, requires = "metric", allow_hyphen_values = true)]
    value: Option<f64>,
    /// How long the condition holds before the alert fires (with --log or --metric): 1m.
    #[arg(long = "for", value_name = "DURATION", conflicts_with = "event")]
    pending_for: Option<String>,
    /// A receiver to notify (repeat for several).
    #[arg(long, value_name = "RECEIVER")]
    notify: Vec<String>,
    /// The summary: `machine {{ key }} failed: {{ value.status.reason }}`.
    #[arg(long)]
    summary: Option<String>,
    /// A label added to the rule's alerts: severity=critical.
    #[arg(long, value_name = "NAME=VALUE")]
    label: Vec<String>,
    /// Group notifications by these labels.
    #[arg(long, value_name = "LABEL")]
    group_by: Vec<String>,
    /// The rule's whole table as TOML instead of the options above.
    #[arg(long, conflicts_with_all = ["event", "log", "metric"])]
    toml: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SilenceCommand {
    /// The silences, active and recently ended.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// End a silence now.
    Expire { id: String },
}

fn split_pair<'a>(text: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    text.split_once('=')
        .filter(|(k, _)| !k.trim().is_empty())
        .map(|(k, v)| (k.trim(), v.trim()))
        .with_context(|| format!("{what} {text:?} is not NAME=VALUE"))
}

/// A value as typed: TOML (5, true, "text"), or a bare word as a string.
fn typed(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn labels(pairs: &[String], what: &str) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for pair in pairs {
        let (k, v) = split_pair(pair, what)?;
        table.insert(k.to_owned(), toml::Value::String(v.to_owned()));
    }
    Ok(table)
}

/// The rule's table from the options.
fn rule_table(args: &RuleArgs) -> anyhow::Result<String> {
    if let Some(text) = &args.toml {
        return Ok(text.clone());
    }
    let mut rule = toml::Table::new();
    let string = |s: &str| toml::Value::String(s.to_owned());
    if let Some(prefix) = &args.event {
        let mut event = toml::Table::new();
        event.insert("prefix".into(), string(prefix));
        if let Some(kind) = &args.kind {
            event.insert("kind".into(), string(kind));
        }
        if !args.matches.is_empty() {
            let mut conditions = toml::Table::new();
            for m in &args.matches {
                let (path, value) = split_pair(m, "--match")?;
                conditions.insert(path.to_owned(), typed(value));
            }
            event.insert("match".into(), toml::Value::Table(conditions));
        }
        rule.insert("event".into(), toml::Value::Table(event));
    } else if let Some(source) = &args.log {
        let mut log = toml::Table::new();
        log.insert("source".into(), string(source));
        for (name, value) in [
            ("regex", &args.regex),
            ("count", &args.count),
            ("window", &args.window),
            ("for", &args.pending_for),
        ] {
            if let Some(value) = value {
                log.insert(name.into(), string(value));
            }
        }
        rule.insert("log".into(), toml::Value::Table(log));
    } else if let Some(name) = &args.metric {
        let mut metric = toml::Table::new();
        metric.insert("name".into(), string(name));
        if !args.series.is_empty() {
            metric.insert("labels".into(), toml::Value::Table(labels(&args.series, "--where")?));
        }
        metric.insert("op".into(), string(args.op.as_deref().unwrap_or(">")));
        metric.insert("value".into(), toml::Value::Float(args.value.unwrap_or_default()));
        if let Some(pending) = &args.pending_for {
            metric.insert("for".into(), string(pending));
        }
        rule.insert("metric".into(), toml::Value::Table(metric));
    } else {
        bail!(
            "say what the rule watches: --event PREFIX, --log SOURCE --regex RE, --metric NAME --op OP --value N, or --toml"
        );
    }
    if !args.notify.is_empty() {
        rule.insert("notify".into(), toml::Value::Array(args.notify.iter().map(|n| string(n)).collect()));
    }
    if let Some(summary) = &args.summary {
        rule.insert("summary".into(), string(summary));
    }
    if !args.label.is_empty() {
        rule.insert("labels".into(), toml::Value::Table(labels(&args.label, "--label")?));
    }
    if !args.group_by.is_empty() {
        rule.insert("group_by".into(), toml::Value::Array(args.group_by.iter().map(|n| string(n)).collect()));
    }
    Ok(toml::to_string(&rule)?)
}

fn print_applied(applied: &AlertRulesApplied) {
    let list = |names: &[String]| if names.is_empty() { "-".to_owned() } else { names.join(", ") };
    println!(
        "rules in force at revision {}: added {}; removed {}; {} kept",
        applied.revision,
        list(&applied.added),
        list(&applied.removed),
        applied.kept.len()
    );
}

fn when(at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn label_text(labels: &std::collections::BTreeMap<String, String>, skip: &[&str]) -> String {
    let text: Vec<String> =
        labels.iter().filter(|(k, _)| !skip.contains(&k.as_str())).map(|(k, v)| format!("{k}={v}")).collect();
    if text.is_empty() { "-".into() } else { text.join(" ") }
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the rules file {}", file.display()))?;
            print_applied(&client.apply_alert_rules(&ApplyAlertRules { text }).await?);
        }
        Command::Rules { show, builtin, json } => {
            let rules = client.alert_rules().await?;
            if json {
                return crate::output::print_json(&rules);
            }
            if show {
                print!("{}", rules.text);
                return Ok(());
            }
            if builtin {
                print!("{}", rules.builtin);
                return Ok(());
            }
            let mut table = Table::new(vec!["RULE", "INPUT", "NOTIFY", "ACTIVE", "FROM"]);
            for rule in &rules.rules {
                table.row(vec![
                    rule.name.clone(),
                    rule.input.clone(),
                    if rule.notify.is_empty() { "-".into() } else { rule.notify.join(",") },
                    rule.active.to_string(),
                    if rule.builtin { "built-in".into() } else { "rules file".into() },
                ]);
            }
            print!("{}", table.render());
            let receivers: Vec<String> =
                rules.receivers.iter().map(|r| format!("{} ({})", r.name, r.kind)).collect();
            println!("receivers: {}", receivers.join(", "));
        }
        Command::Rule(RuleCommand::Add(args)) => {
            let toml = rule_table(&args)?;
            print_applied(&client.set_alert_rule(&args.name, &SetAlertRule { toml }).await?);
        }
        Command::Rule(RuleCommand::Rm { name }) => print_applied(&client.remove_alert_rule(&name).await?),
        Command::Ls { json } => {
            let list = client.alerts().await?;
            if json {
                return crate::output::print_json(&list);
            }
            let mut table = Table::new(vec!["RULE", "STATE", "SINCE", "LABELS", "SUMMARY"]);
            for alert in &list.alerts {
                let state =
                    if alert.muted { format!("{} (muted)", alert.phase) } else { alert.phase.to_string() };
                let since = alert.starts_at.or(alert.active_since).map_or_else(|| "-".into(), when);
                table.row(vec![
                    alert.rule.clone(),
                    state,
                    since,
                    cell(&label_text(&alert.labels, &["rule"]), 40),
                    cell(alert.annotations.get("summary").map_or("-", String::as_str), 60),
                ]);
            }
            print!("{}", table.render());
            if list.undelivered > 0 {
                println!("{} notification(s) waiting to be delivered", list.undelivered);
            }
        }
        Command::Silence { command: None, matchers, duration, comment } => {
            if matchers.is_empty() {
                bail!("say what to mute with --match, e.g. --match rule=disk-full --for 2h");
            }
            let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let made = client
                .add_silence(&NewSilence { matchers, duration, comment, created_by: Some(user) })
                .await?;
            println!("silence {} mutes {} until {}", made.id, made.matchers.join(" "), when(made.ends_at));
        }
        Command::Silence { command: Some(SilenceCommand::Ls { json }), .. } => {
            let list = client.silences().await?;
            if json {
                return crate::output::print_json(&list);
            }
            let mut table = Table::new(vec!["ID", "MATCHERS", "ENDS", "STATE", "BY", "COMMENT"]);
            for s in &list.silences {
                table.row(vec![
                    s.id.clone(),
                    cell(&s.matchers.join(" "), 40),
                    when(s.ends_at),
                    if s.active { "active".into() } else { "ended".into() },
                    s.created_by.clone(),
                    cell(&s.comment, 40),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Silence { command: Some(SilenceCommand::Expire { id }), .. } => {
            let ended = client.expire_silence(&id).await?;
            println!("silence {} ended at {}", ended.id, when(ended.ends_at));
        }
        Command::History { rule, limit, json } => {
            let history = client.alert_history(rule.as_deref(), limit).await?;
            if json {
                return crate::output::print_json(&history);
            }
            let mut table = Table::new(vec!["WHEN", "RULE", "STATUS", "RECEIVER", "ALERTS", "SUMMARY"]);
            for entry in &history.entries {
                let status = match &entry.error {
                    Some(error) => format!("{} (not delivered: {error})", entry.status),
                    None => entry.status.to_string(),
                };
                let summary = entry
                    .alerts
                    .iter()
                    .find_map(|a| a.summary.clone())
                    .unwrap_or_else(|| label_text(&entry.group_labels, &[]));
                table.row(vec![
                    when(entry.at),
                    entry.rule.clone(),
                    cell(&status, 40),
                    format!("{} ({})", entry.receiver, entry.kind),
                    entry.alerts.len().to_string(),
                    cell(&summary, 70),
                ]);
            }
            print!("{}", table.render());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RuleArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: RuleArgs,
        }
        let mut argv = vec!["x", "machine-failed"];
        argv.extend(extra);
        <Cli as clap::Parser>::parse_from(argv).args
    }

    #[test]
    fn an_event_rule_from_options_is_the_table_the_rules_file_would_hold() {
        let text = rule_table(&args(&[
            "--event",
            "machines/",
            "--match",
            "status.state=failed",
            "--match",
            "code=500",
            "--notify",
            "ops",
        ]))
        .unwrap();
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["event"]["prefix"].as_str(), Some("machines/"));
        assert_eq!(table["event"]["match"]["status.state"].as_str(), Some("failed"));
        assert_eq!(table["event"]["match"]["code"].as_integer(), Some(500));
        assert_eq!(table["notify"].as_array().unwrap()[0].as_str(), Some("ops"));
    }

    #[test]
    fn a_metric_rule_from_options_keeps_its_threshold_and_period() {
        let text = rule_table(&args(&[
            "--metric",
            "app_error_ratio",
            "--where",
            "app=shop",
            "--op",
            ">",
            "--value",
            "0.2",
            "--for",
            "1m",
        ]))
        .unwrap();
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["metric"]["value"].as_float(), Some(0.2));
        assert_eq!(table["metric"]["labels"]["app"].as_str(), Some("shop"));
        assert_eq!(table["metric"]["for"].as_str(), Some("1m"));
    }

    #[test]
    fn an_event_rule_refuses_a_pending_period() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: RuleArgs,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["x", "r", "--event", "kv/", "--for", "1m"]);
        assert!(parsed.is_err(), "an event rule fires at its event");
    }

    #[test]
    fn a_rule_that_watches_nothing_says_what_to_give() {
        let error = rule_table(&args(&["--notify", "ops"])).unwrap_err().to_string();
        assert!(error.contains("--event PREFIX"), "{error}");
    }
}
