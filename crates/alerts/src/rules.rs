//! The rules file: receivers, rules and inhibitions, parsed and checked
//! into one [`Rules`] value.
//!
//! ```toml
//! [[receiver]]
//! name = "hook"
//! webhook = { url = "http://127.0.0.1:9000/alerts", secret = "config:alerts.hook_secret" }
//!
//! [[rule]]
//! name = "error-rate"
//! metric = { name = "app_error_ratio", labels = { app = "shop" }, op = ">", value = 0.2, for = "1m" }
//! keep_firing_for = "2m"
//! notify = ["hook"]
//! group_by = ["rule", "app"]
//!
//! [[inhibit]]
//! source = { severity = "critical" }
//! target = { severity = "warning" }
//! equal = ["machine"]
//! ```
//!
//! Every table refuses fields it does not know. Every problem is reported
//! at once, each after the path of its field: `rule[1].log.regex` (rules
//! and receivers counted from 0, as written) while the file is read, then
//! `rule "name".notify` once the rule's name is known to be good.
//!
//! A rule has exactly one input:
//!
//! - `event = { prefix | exact, kind, match, include_alerts, resolve_after }`:
//!   a [`Pattern`] over store events. Its alert (one per key) fires at a
//!   matching event and resolves `resolve_after` (default `5m`) after the
//!   last one, or at once when a later event for the key no longer
//!   matches; `resolve_after = "never"` leaves only the latter. Labels:
//!   `rule`, `key` and the rule's. Summary names: `key`, `kind`,
//!   `value.PATH`, `labels.NAME`, `rule`.
//! - `log = { source, regex, count = "> 0", window = "1m", for }`: lines
//!   counted per source (`app:shop`, or a prefix and `*`) in a sliding
//!   window ([`crate::logs`]). Labels: `rule`, `source` and the rule's.
//!   Summary names: `source`, `line` (the latest matching line),
//!   `labels.NAME`, `rule`.
//! - `metric = { name, labels, op, value, for, stale_after = "5m" }`: each
//!   series of the metric whose labels include `labels` compares its
//!   latest sample with `value` (`>`, `>=`, `<`, `<=`, `==`, `!=`); a series
//!   with no sample for `stale_after` no longer holds. Labels: the
//!   series', the rule's, `rule`. Summary names: `metric`, `value`,
//!   `labels.NAME`, `rule`.
//!
//! And these, all optional: `labels`, `summary` (a [`Template`]), `notify`
//! (receiver names), `group_by` (label names; default none: one group per
//! receiver and rule), `group_wait` (`30s`), `group_interval` (`5m`),
//! `repeat_interval` (`4h`), `keep_firing_for` (`0s`), `rate_limit`
//! (`N/h`, `N/m` or `N/d`; default none).
//!
//! A receiver is one of `email = { to, from, smtp = "HOST:PORT", tls,
//! user, password = "config:KEY" }`, `webhook = { url, secret =
//! "config:KEY" }` (a secret is named, never written here: the rules are
//! shown back), `workflow = { name, input = "alert" }` (the run starts
//! with the payload under that input field), `record = {}` (only kept in
//! the alert history).
//!
//! An email receiver's `tls` ([`Tls`]) is `none`, `starttls` (required),
//! `opportunistic` or `tls` (from the first byte, SMTPS). Unless written it
//! is `tls` on port 465, `none` when the host is loopback (`localhost`,
//! `127.0.0.0/8`, `[::1]`: the mail never leaves the machine, so a local
//! relay or test sink works as written), and `starttls` everywhere else.
//! `user` and `password` come together; the password is a config key, as
//! a webhook's secret, and is only sent encrypted (`starttls` or `tls`)
//! unless the host is loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

use regex::RegexBuilder;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::Labels;
use crate::logs::{self, LogRule, Source};
use crate::pattern::{Op, Pattern, RawEvent};
use crate::template::Template;

/// The rules file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// It is not TOML, or not in the shape of a rules file.
    #[error("{0}")]
    Parse(String),
    /// It parses, but these are wrong, one a line.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

const SECOND: u64 = 1000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

/// Alertmanager's defaults.
pub const GROUP_WAIT: u64 = 30 * SECOND;
pub const GROUP_INTERVAL: u64 = 5 * MINUTE;
pub const REPEAT_INTERVAL: u64 = 4 * HOUR;
/// An event rule's alert resolves this long after its last matching event.
pub const RESOLVE_AFTER: u64 = 5 * MINUTE;
/// A metric series with no sample for this long no longer holds
/// (Prometheus's lookback).
pub const STALE_AFTER: u64 = 5 * MINUTE;
/// A log rule's window unless set.
pub const WINDOW: u64 = MINUTE;

/// A checked rules file.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub receivers: Vec<Receiver>,
    pub rules: Vec<Rule>,
    pub inhibits: Vec<Inhibit>,
}

impl Rules {
    /// Parses and checks a rules file.
    pub fn parse(text: &str) -> Result<Rules, Error> {
        let raw: RawFile = deserialize(text)?;
        let mut problems = Vec::new();
        let rules = check_file(&raw, &mut problems);
        if problems.is_empty() { Ok(rules) } else { Err(Error::Invalid(problems)) }
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    pub fn receiver(&self, name: &str) -> Option<&Receiver> {
        self.receivers.iter().find(|r| r.name == name)
    }
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    pub name: String,
    pub kind: ReceiverKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverKind {
    Email {
        to: Vec<String>,
        from: String,
        /// `HOST:PORT` (`[V6]:PORT`).
        smtp: String,
        /// As written, or the default for `smtp` ([`Tls::default_for`]).
        tls: Tls,
        /// Set together with `password`.
        user: Option<String>,
        /// A config key (`config:alerts.smtp_password`), without
        /// `config:`.
        password: Option<String>,
    },
    /// `secret` is a config key (`config:alerts.hook_secret`), without
    /// `config:`.
    Webhook { url: String, secret: Option<String> },
    /// Starts a run of workflow `name` with the payload as input field
    /// `input`.
    Workflow { name: String, input: String },
    /// Kept in the alert history only.
    Record,
}

/// How an email receiver's mail reaches its SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain SMTP: the mail, and the login if any, cross the network in
    /// clear.
    None,
    /// STARTTLS, required: nothing is sent unless the server offers it
    /// and its certificate is valid for its name.
    StartTls,
    /// STARTTLS when the server offers it, else in clear.
    Opportunistic,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

impl Tls {
    /// The rules file's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::None => "none",
            Tls::StartTls => "starttls",
            Tls::Opportunistic => "opportunistic",
            Tls::Tls => "tls",
        }
    }

    pub fn parse(written: &str) -> Option<Tls> {
        [Tls::None, Tls::StartTls, Tls::Opportunistic, Tls::Tls].into_iter().find(|t| t.as_str() == written)
    }

    /// Unless written: `tls` on port 465, `none` on a loopback host (the
    /// mail never leaves the machine), `starttls` everywhere else.
    pub fn default_for(host: &str, port: u16) -> Tls {
        if port == 465 {
            Tls::Tls
        } else if is_loopback(host) {
            Tls::None
        } else {
            Tls::StartTls
        }
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (with or without brackets).
pub fn is_loopback(host: &str) -> bool {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub input: Input,
    /// Added to every alert of the rule.
    pub labels: Labels,
    /// Rendered into the `summary` annotation.
    pub summary: Option<Template>,
    pub notify: Vec<String>,
    pub group_by: Vec<String>,
    pub timing: Timing,
    /// How long the condition must hold before the alert fires (`for`),
    /// in milliseconds; 0 for event rules.
    pub pending_for: u64,
    /// How long a firing alert keeps firing after its condition stops
    /// holding, in milliseconds.
    pub keep_firing_for: u64,
    pub rate_limit: Option<RateLimit>,
}

/// What a rule watches.
#[derive(Debug, Clone)]
pub enum Input {
    Event(EventRule),
    Log(LogRule),
    Metric(MetricRule),
}

#[derive(Debug, Clone)]
pub struct EventRule {
    pub pattern: Pattern,
    /// Milliseconds; `None` is `never`.
    pub resolve_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricRule {
    pub name: String,
    /// The series' labels must include these.
    pub labels: Labels,
    pub op: Op,
    pub value: f64,
    /// Milliseconds.
    pub stale_after: u64,
}

/// A group's notification timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub group_wait: u64,
    pub group_interval: u64,
    pub repeat_interval: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing { group_wait: GROUP_WAIT, group_interval: GROUP_INTERVAL, repeat_interval: REPEAT_INTERVAL }
    }
}

/// At most `count` notifications per `per` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: u64,
}

/// Target alerts are muted while a firing source alert has the same
/// values of the `equal` labels (a label both lack counts as equal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibit {
    pub source: Labels,
    pub target: Labels,
    pub equal: Vec<String>,
}

impl Inhibit {
    pub fn is_source(&self, labels: &Labels) -> bool {
        self.source.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    pub fn is_target(&self, labels: &Labels) -> bool {
        self.target.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Whether `source`'s alert inhibits `target`'s, when it fires.
    pub fn inhibits(&self, source: &Labels, target: &Labels) -> bool {
        self.is_source(source)
            && self.is_target(target)
            && self.equal.iter().all(|name| source.get(name) == target.get(name))
    }
}

// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    receiver: Vec<RawReceiver>,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    inhibit: Vec<RawInhibit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    name: String,
    email: Option<RawEmail>,
    webhook: Option<RawWebhook>,
    workflow: Option<RawWorkflow>,
    record: Option<RawRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    to: OneOrMany,
    from: String,
    smtp: String,
    tls: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: String,
    input: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    event: Option<RawEvent>,
    log: Option<RawLog>,
    metric: Option<RawMetric>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    summary: Option<String>,
    #[serde(default)]
    notify: Vec<String>,
    #[serde(default)]
    group_by: Vec<String>,
    group_wait: Option<String>,
    group_interval: Option<String>,
    repeat_interval: Option<String>,
    keep_firing_for: Option<String>,
    rate_limit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    source: String,
    regex: String,
    count: Option<String>,
    window: Option<String>,
    #[serde(rename = "for")]
    pending_for: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    op: String,
    value: f64,
    #[serde(rename = "for")]
    pending_for: Option<String>,
    stale_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInhibit {
    source: BTreeMap<String, String>,
    target: BTreeMap<String, String>,
    #[serde(default)]
    equal: Vec<String>,
}

/// Reads `text` as a `T`; an error names the field's path and line.
pub(crate) fn deserialize<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| Error::Parse(describe(text, &e, None)))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        Error::Parse(describe(text, e.inner(), Some(&path)))
    })
}

/// `PATH (line L): MESSAGE`, or `line L, column C: MESSAGE` for syntax.
fn describe(text: &str, e: &toml::de::Error, path: Option<&str>) -> String {
    let message = e.message().trim().replace('\n', "; ");
    let position = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    });
    match (path, position) {
        (Some(path), Some((line, _))) if path != "." => format!("{path} (line {line}): {message}"),
        (Some(path), None) if path != "." => format!("{path}: {message}"),
        (_, Some((line, column))) => format!("line {line}, column {column}: {message}"),
        (_, None) => message,
    }
}

/// What is wrong, collected; each problem after its field's path.
struct Problems<'a>(&'a mut Vec<String>);

impl Problems<'_> {
    fn at(&mut self, path: impl Display, message: impl Display) {
        self.0.push(format!("{path}: {message}"));
    }
}

/// A rule or receiver name: 1 to 63 ASCII letters, digits, `-`, `_` or
/// `.`, starting with a letter or digit. Names become label values and
/// store key segments.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a name: 1 to 63 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit"
        ))
    }
}

/// A label name, as in Prometheus: `[A-Za-z_][A-Za-z0-9_]*`, at most 128.
pub(crate) fn check_label_name(name: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a label name: ASCII letters, digits and `_`, not starting with a digit"))
    }
}

/// A duration like `30s`, `5m`, `1h30m`, in milliseconds.
fn duration(written: &str) -> Result<u64, String> {
    humantime::parse_duration(written.trim())
        .map_err(|e| format!("\"{written}\" is not a duration like 30s, 5m or 4h: {e}"))
        .and_then(|d| u64::try_from(d.as_millis()).map_err(|_| format!("\"{written}\" is too long")))
}

/// `field`'s duration, `default` when absent; `positive` refuses zero.
fn duration_field(
    problems: &mut Problems<'_>,
    path: &str,
    field: &str,
    written: Option<&String>,
    default: u64,
    positive: bool,
) -> u64 {
    let Some(written) = written else { return default };
    match duration(written) {
        Ok(0) if positive => {
            problems.at(format_args!("{path}.{field}"), "must be longer than 0s");
            default
        }
        Ok(ms) => ms,
        Err(e) => {
            problems.at(format_args!("{path}.{field}"), e);
            default
        }
    }
}

/// `N/h`, `N/m` or `N/d`.
fn rate_limit(written: &str) -> Result<RateLimit, String> {
    let bad = || format!("\"{written}\" is not a rate like 10/h, 2/m or 50/d");
    let (count, per) = written.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let per = match per.trim() {
        "m" => MINUTE,
        "h" => HOUR,
        "d" => 24 * HOUR,
        _ => return Err(bad()),
    };
    match count {
        0 => Err(format!("\"{written}\" would send nothing; remove `notify` instead")),
        10_001.. => Err(format!("\"{written}\": at most 10000 per period")),
        count => Ok(RateLimit { count, per }),
    }
}

fn check_labels(
    problems: &mut Problems<'_>,
    path: &str,
    labels: &BTreeMap<String, String>,
    reserved: &[&str],
) {
    for name in labels.keys() {
        if let Err(e) = check_label_name(name) {
            problems.at(format_args!("{path}.\"{name}\""), e);
        } else if reserved.contains(&name.as_str()) {
            problems.at(format_args!("{path}.{name}"), "the engine sets this label; choose another name");
        }
    }
}

fn check_file(raw: &RawFile, problems: &mut Vec<String>) -> Rules {
    let mut problems = Problems(problems);
    let mut receivers = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in raw.receiver.iter().enumerate() {
        let path = match check_name(&r.name) {
            Ok(()) => format!("receiver \"{}\"", r.name),
            Err(e) => {
                problems.at(format_args!("receiver[{i}].name"), e);
                format!("receiver[{i}]")
            }
        };
        if !seen.insert(r.name.as_str()) {
            problems.at(&path, "the name is used by an earlier receiver");
        }
        if let Some(kind) = check_receiver(&mut problems, &path, r) {
            receivers.push(Receiver { name: r.name.clone(), kind });
        }
    }

    let mut rules = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in raw.rule.iter().enumerate() {
        let path = match check_name(&r.name) {
            Ok(()) => format!("rule \"{}\"", r.name),
            Err(e) => {
                problems.at(format_args!("rule[{i}].name"), e);
                format!("rule[{i}]")
            }
        };
        if !seen.insert(r.name.as_str()) {
            problems.at(&path, "the name is used by an earlier rule");
        }
        if let Some(rule) = check_rule(&mut problems, &path, r, &raw.receiver) {
            rules.push(rule);
        }
    }

    let mut inhibits = Vec::new();
    for (i, r) in raw.inhibit.iter().enumerate() {
        let path = format!("inhibit[{i}]");
        for (side, labels) in [("source", &r.source), ("target", &r.target)] {
            if labels.is_empty() {
                problems.at(
                    format_args!("{path}.{side}"),
                    "name at least one label, e.g. { severity = \"critical\" }",
                );
            }
            check_labels(&mut problems, &format!("{path}.{side}"), labels, &[]);
        }
        for name in &r.equal {
            if let Err(e) = check_label_name(name) {
                problems.at(format_args!("{path}.equal"), e);
            }
        }
        inhibits.push(Inhibit { source: r.source.clone(), target: r.target.clone(), equal: r.equal.clone() });
    }
    Rules { receivers, rules, inhibits }
}

fn check_receiver(problems: &mut Problems<'_>, path: &str, r: &RawReceiver) -> Option<ReceiverKind> {
    let given: Vec<&str> = [
        r.email.as_ref().map(|_| "email"),
        r.webhook.as_ref().map(|_| "webhook"),
        r.workflow.as_ref().map(|_| "workflow"),
        r.record.as_ref().map(|_| "record"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() != 1 {
        let what = if given.is_empty() { "none".to_owned() } else { given.join(" and ") };
        problems
            .at(path, format_args!("a receiver is one of email, webhook, workflow or record, not {what}"));
        return None;
    }
    if let Some(email) = &r.email {
        let to = match &email.to {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        };
        if to.is_empty() {
            problems.at(format_args!("{path}.email.to"), "name at least one address");
        }
        for address in to.iter().chain([&email.from]) {
            let (user, domain) = address.split_once('@').unwrap_or(("", ""));
            if user.is_empty() || domain.is_empty() || address.contains([' ', ',', '<', '>', '\n', '\r']) {
                problems.at(
                    format_args!("{path}.email"),
                    format_args!("\"{address}\" is not an address like ops@example.com"),
                );
            }
        }
        let (tls, user, password) = check_smtp(problems, path, email);
        return Some(ReceiverKind::Email {
            to,
            from: email.from.clone(),
            smtp: email.smtp.clone(),
            tls,
            user,
            password,
        });
    }
    if let Some(webhook) = &r.webhook {
        let rest = webhook.url.strip_prefix("http://").or_else(|| webhook.url.strip_prefix("https://"));
        if rest
            .is_none_or(|rest| rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace))
        {
            problems.at(
                format_args!("{path}.webhook.url"),
                format_args!("\"{}\" is not an http:// or https:// URL", webhook.url),
            );
        }
        let secret = match webhook.secret.as_deref().map(|s| s.strip_prefix("config:")) {
            None => None,
            Some(Some(key)) if !key.is_empty() => Some(key.to_owned()),
            Some(_) => {
                problems.at(
                    format_args!("{path}.webhook.secret"),
                    "name the secret's config key, like \"config:alerts.hook_secret\"; the rules file is shown back, so it holds no secrets",
                );
                None
            }
        };
        return Some(ReceiverKind::Webhook { url: webhook.url.clone(), secret });
    }
    if let Some(workflow) = &r.workflow {
        if let Err(e) = check_name(&workflow.name) {
            problems.at(format_args!("{path}.workflow.name"), e);
        }
        let input = workflow.input.clone().unwrap_or_else(|| "alert".to_owned());
        if let Err(e) = check_label_name(&input) {
            problems.at(format_args!("{path}.workflow.input"), e);
        }
        return Some(ReceiverKind::Workflow { name: workflow.name.clone(), input });
    }
    Some(ReceiverKind::Record)
}

/// An email receiver's `smtp`, `tls`, `user` and `password`.
fn check_smtp(
    problems: &mut Problems<'_>,
    path: &str,
    email: &RawEmail,
) -> (Tls, Option<String>, Option<String>) {
    let address = email.smtp.rsplit_once(':').filter(|(host, _)| !host.is_empty());
    let address = address.and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
    if address.is_none() {
        problems.at(format_args!("{path}.email.smtp"), format_args!("\"{}\" is not HOST:PORT", email.smtp));
    }
    let (host, port) = address.unwrap_or(("", 0));
    let tls = match email.tls.as_deref() {
        None => Tls::default_for(host, port),
        Some(written) => Tls::parse(written).unwrap_or_else(|| {
            problems.at(
                format_args!("{path}.email.tls"),
                format_args!("\"{written}\" is not one of none, starttls, opportunistic or tls"),
            );
            Tls::default_for(host, port)
        }),
    };
    let password = match email.password.as_deref().map(|s| s.strip_prefix("config:")) {
        None => None,
        Some(Some(key)) if !key.is_empty() => Some(key.to_owned()),
        Some(_) => {
            problems.at(
                format_args!("{path}.email.password"),
                "name the password's config key, like \"config:alerts.smtp_password\" (set it with `hearth config set KEY --secret`); the rules file is shown back, so it holds no secrets",
            );
            None
        }
    };
    match (&email.user, &email.password) {
        (Some(user), _) if user.is_empty() || user.contains(['\n', '\r']) => {
            problems.at(format_args!("{path}.email.user"), "name the SMTP login, on one line");
        }
        (Some(_), None) => problems.at(format_args!("{path}.email.password"), "a user needs a password"),
        (None, Some(_)) => problems.at(format_args!("{path}.email.user"), "a password needs a user"),
        _ => {}
    }
    let in_clear = matches!(tls, Tls::None | Tls::Opportunistic);
    if email.password.is_some() && address.is_some() && !is_loopback(host) && in_clear {
        problems.at(
            format_args!("{path}.email.tls"),
            format_args!(
                "\"{}\" could send the password in clear to {host}; use \"starttls\" or \"tls\"",
                tls.as_str()
            ),
        );
    }
    (tls, email.user.clone(), password)
}

fn check_rule(
    problems: &mut Problems<'_>,
    path: &str,
    r: &RawRule,
    receivers: &[RawReceiver],
) -> Option<Rule> {
    let before = problems.0.len();
    let given: Vec<&str> = [
        r.event.as_ref().map(|_| "event"),
        r.log.as_ref().map(|_| "log"),
        r.metric.as_ref().map(|_| "metric"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut pending_for = 0;
    let (input, reserved, names): (Option<Input>, &[&str], &[&str]) = match given.as_slice() {
        ["event"] => {
            let raw = r.event.as_ref()?;
            let pattern = Pattern::from_raw(raw, &format!("{path}.event"), problems.0);
            let resolve_after = match raw.resolve_after.as_deref() {
                Some("never") => None,
                written => Some(duration_field(
                    problems,
                    path,
                    "event.resolve_after",
                    written.map(str::to_owned).as_ref(),
                    RESOLVE_AFTER,
                    true,
                )),
            };
            let input = pattern.map(|pattern| Input::Event(EventRule { pattern, resolve_after }));
            (input, &["rule", "key"], &["rule", "key", "kind", "value", "labels"])
        }
        ["log"] => {
            let raw = r.log.as_ref()?;
            if raw.source.is_empty() {
                problems.at(
                    format_args!("{path}.log.source"),
                    "name a source like app:shop, or app:* for several",
                );
            }
            let regex = RegexBuilder::new(&raw.regex)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| problems.at(format_args!("{path}.log.regex"), e.to_string().replace('\n', " ")))
                .ok();
            let at_least = logs::parse_count(raw.count.as_deref().unwrap_or("> 0"))
                .map_err(|e| problems.at(format_args!("{path}.log.count"), e))
                .unwrap_or(1);
            let window = duration_field(problems, path, "log.window", raw.window.as_ref(), WINDOW, true);
            pending_for = duration_field(problems, path, "log.for", raw.pending_for.as_ref(), 0, false);
            let input = regex.map(|regex| {
                Input::Log(LogRule { source: Source::parse(&raw.source), regex, at_least, window })
            });
            (input, &["rule", "source"], &["rule", "source", "line", "labels"])
        }
        ["metric"] => {
            let raw = r.metric.as_ref()?;
            let name_ok = !raw.name.is_empty()
                && !raw.name.starts_with(|c: char| c.is_ascii_digit())
                && raw.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
            if !name_ok {
                problems.at(
                    format_args!("{path}.metric.name"),
                    format_args!("`{}` is not a metric name", raw.name),
                );
            }
            check_labels(problems, &format!("{path}.metric.labels"), &raw.labels, &[]);
            let op = Op::parse(&raw.op);
            if op.is_none() {
                problems.at(
                    format_args!("{path}.metric.op"),
                    format_args!("`{}` is not one of >, >=, <, <=, ==, !=", raw.op),
                );
            }
            if !raw.value.is_finite() {
                problems.at(format_args!("{path}.metric.value"), "must be a finite number");
            }
            pending_for = duration_field(problems, path, "metric.for", raw.pending_for.as_ref(), 0, false);
            let stale_after = duration_field(
                problems,
                path,
                "metric.stale_after",
                raw.stale_after.as_ref(),
                STALE_AFTER,
                true,
            );
            let input = op.map(|op| {
                Input::Metric(MetricRule {
                    name: raw.name.clone(),
                    labels: raw.labels.clone(),
                    op,
                    value: raw.value,
                    stale_after,
                })
            });
            (input, &["rule"], &["rule", "metric", "value", "labels"])
        }
        [] => {
            problems.at(path, "a rule needs an input: event, log or metric");
            (None, &["rule"], &[])
        }
        several => {
            problems.at(path, format_args!("a rule has one input, not {}", several.join(" and ")));
            (None, &["rule"], &[])
        }
    };

    check_labels(problems, &format!("{path}.labels"), &r.labels, reserved);

    let summary = r.summary.as_deref().and_then(|text| match Template::parse(text) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.at(format_args!("{path}.summary"), e);
            None
        }
    });
    if let (Some(summary), Some(input)) = (&summary, &input) {
        check_template(problems, &format!("{path}.summary"), summary, input, names, reserved, &r.labels);
    }

    let mut notify = Vec::new();
    for name in &r.notify {
        if !receivers.iter().any(|rc| rc.name == *name) {
            problems.at(format_args!("{path}.notify"), format_args!("unknown receiver \"{name}\""));
        } else if notify.contains(name) {
            problems.at(format_args!("{path}.notify"), format_args!("\"{name}\" is listed twice"));
        } else {
            notify.push(name.clone());
        }
    }
    let mut group_by = Vec::new();
    for name in &r.group_by {
        if let Err(e) = check_label_name(name) {
            problems.at(format_args!("{path}.group_by"), e);
        } else if group_by.contains(name) {
            problems.at(format_args!("{path}.group_by"), format_args!("\"{name}\" is listed twice"));
        } else {
            group_by.push(name.clone());
        }
    }
    let timing = Timing {
        group_wait: duration_field(problems, path, "group_wait", r.group_wait.as_ref(), GROUP_WAIT, false),
        group_interval: duration_field(
            problems,
            path,
            "group_interval",
            r.group_interval.as_ref(),
            GROUP_INTERVAL,
            true,
        ),
        repeat_interval: duration_field(
            problems,
            path,
            "repeat_interval",
            r.repeat_interval.as_ref(),
            REPEAT_INTERVAL,
            true,
        ),
    };
    let keep_firing_for =
        duration_field(problems, path, "keep_firing_for", r.keep_firing_for.as_ref(), 0, false);
    let rate_limit = r.rate_limit.as_deref().and_then(|written| {
        rate_limit(written).map_err(|e| problems.at(format_args!("{path}.rate_limit"), e)).ok()
    });

    let input = input?;
    (problems.0.len() == before).then(|| Rule {
        name: r.name.clone(),
        input,
        labels: r.labels.clone(),
        summary,
        notify,
        group_by,
        timing,
        pending_for,
        keep_firing_for,
        rate_limit,
    })
}

/// Reports the names `template` uses that can be known to lead nowhere:
/// a top-level name the input does not give, a field of a plain value,
/// or a label an event or log rule's alerts never have.
fn check_template(
    problems: &mut Problems<'_>,
    path: &str,
    template: &Template,
    input: &Input,
    names: &[&str],
    engine_labels: &[&str],
    labels: &BTreeMap<String, String>,
) {
    for name in template.names() {
        let written = name.join(".");
        let first = name[0].as_str();
        let problem = if !names.contains(&first) {
            Some(format!(
                "{{{{ {written} }}}} names nothing; this rule's summary may use {}",
                names.join(", ")
            ))
        } else if first == "labels" {
            let known = !matches!(input, Input::Metric(_));
            match name.get(1) {
                Some(label) if name.len() == 2 => {
                    (known && !labels.contains_key(label) && !engine_labels.contains(&label.as_str()))
                        .then(|| format!("{{{{ {written} }}}}: this rule's alerts have no label \"{label}\""))
                }
                Some(_) => Some(format!("{{{{ {written} }}}}: a label is a plain value")),
                None => None,
            }
        } else if name.len() > 1 && !(first == "value" && matches!(input, Input::Event(_))) {
            Some(format!("{{{{ {written} }}}}: `{first}` is a plain value, with no fields"))
        } else {
            None
        };
        if let Some(problem) = problem {
            problems.at(path, problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules file of the brief, as a user would write it.
    pub(crate) const EXAMPLE: &str = r#"
[[receiver]]
name = "ops"
email = { to = "ops@example.test", from = "hearth@example.test", smtp = "127.0.0.1:2525" }
[[receiver]]
name = "hook"
webhook = { url = "http://127.0.0.1:9000/alerts", secret = "config:alerts.hook_secret" }
[[receiver]]
name = "runbook"
workflow = { name = "incident", input = "alert" }
[[receiver]]
name = "history"
record = {}

[[rule]]
name = "machine-failed"
event = { prefix = "machines/", match = { "status.state" = "failed" } }
labels = { severity = "critical" }
summary = "machine {{ key }} failed: {{ value.status.reason }}"
notify = ["ops"]

[[rule]]
name = "app-errors"
log = { source = "app:shop", regex = "panicked|ERROR", count = "> 5", window = "1m" }
notify = ["hook"]

[[rule]]
name = "error-rate"
metric = { name = "app_error_ratio", labels = { app = "shop" }, op = ">", value = 0.2, for = "1m" }
keep_firing_for = "2m"
notify = ["hook"]
group_by = ["rule", "app"]
group_wait = "30s"
repeat_interval = "4h"
rate_limit = "10/h"

[[inhibit]]
source = { severity = "critical" }
target = { severity = "warning" }
equal = ["machine"]
"#;

    #[test]
    fn the_example_file_parses_into_one_value() {
        let rules = Rules::parse(EXAMPLE).unwrap();
        assert_eq!(rules.receivers.len(), 4);
        assert_eq!(
            rules.receiver("hook").unwrap().kind,
            ReceiverKind::Webhook {
                url: "http://127.0.0.1:9000/alerts".into(),
                secret: Some("alerts.hook_secret".into())
            }
        );
        assert_eq!(rules.receiver("history").unwrap().kind, ReceiverKind::Record);
        let names: Vec<&str> = rules.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["machine-failed", "app-errors", "error-rate"]);

        let failed = rules.rule("machine-failed").unwrap();
        let Input::Event(event) = &failed.input else { panic!("{:?}", failed.input) };
        assert_eq!(event.resolve_after, Some(RESOLVE_AFTER));
        assert_eq!(failed.timing, Timing::default());
        assert_eq!(failed.group_by, Vec::<String>::new());

        let errors = rules.rule("app-errors").unwrap();
        let Input::Log(log) = &errors.input else { panic!() };
        assert_eq!((log.at_least, log.window), (6, MINUTE));

        let rate = rules.rule("error-rate").unwrap();
        let Input::Metric(metric) = &rate.input else { panic!() };
        assert_eq!((metric.op, metric.value, metric.stale_after), (Op::Gt, 0.2, STALE_AFTER));
        assert_eq!((rate.pending_for, rate.keep_firing_for), (MINUTE, 2 * MINUTE));
        assert_eq!(rate.rate_limit, Some(RateLimit { count: 10, per: HOUR }));
        assert_eq!(rate.group_by, ["rule", "app"]);
        assert_eq!(rules.inhibits[0].equal, ["machine"]);
    }

    /// Each case: a change to the example (`old` replaced by `new`), and a
    /// piece of the error it must give.
    fn check_refused(cases: &[(&str, &str, &str)]) {
        for (old, new, want) in cases {
            assert!(EXAMPLE.contains(old), "{old}");
            let text = EXAMPLE.replacen(old, new, 1);
            let err = Rules::parse(&text).err().unwrap_or_else(|| panic!("{new}: accepted"));
            let err = err.to_string();
            assert!(err.contains(want), "{new}:\n{err}\nwant: {want}");
        }
    }

    #[test]
    fn a_rule_that_does_not_parse_is_named_by_its_path() {
        check_refused(&[
            (
                r#"regex = "panicked|ERROR""#,
                r#"regx = "x""#,
                "rule[1].log.regx (line 24): unknown field `regx`",
            ),
            (r#"regex = "panicked|ERROR""#, r#"regex = "x", regx = "x""#, "unknown field `regx`"),
            (r#"value = 0.2"#, r#"value = "high""#, "rule[2].metric.value (line 29): invalid type"),
            (r#"notify = ["ops"]"#, r#"notify = "ops""#, "rule[0].notify"),
            ("[[inhibit]]", "[[inhibit]]\nsorce = {}", "inhibit[0]"),
            ("record = {}", "record = { keep = true }", "receiver[3].record"),
            ("[[rule]]\nname = \"app-errors\"", "[[rule]]\nname = \"app-errors\"\nname = \"x\"", "line"),
            ("[[receiver]]", "[[receivers]]", "unknown field `receivers`"),
        ]);
    }

    #[test]
    fn a_regex_that_does_not_compile_is_refused() {
        check_refused(&[(r#""panicked|ERROR""#, r#""panicked|(ERROR""#, "rule \"app-errors\".log.regex: ")]);
    }

    #[test]
    fn an_unknown_receiver_is_refused() {
        check_refused(&[
            (
                r#"notify = ["ops"]"#,
                r#"notify = ["ops", "pager"]"#,
                r#"rule "machine-failed".notify: unknown receiver "pager""#,
            ),
            (r#"notify = ["ops"]"#, r#"notify = ["ops", "ops"]"#, r#""ops" is listed twice"#),
        ]);
    }

    #[test]
    fn bad_durations_are_refused() {
        check_refused(&[
            (
                r#"window = "1m""#,
                r#"window = "1x""#,
                r#"rule "app-errors".log.window: "1x" is not a duration"#,
            ),
            (r#"window = "1m""#, r#"window = "0s""#, "log.window: must be longer than 0s"),
            (r#"keep_firing_for = "2m""#, r#"keep_firing_for = "soon""#, "keep_firing_for:"),
            (r#"group_wait = "30s""#, r#"group_interval = "0m""#, "group_interval: must be longer"),
            (r#"for = "1m""#, r#"for = "1""#, "metric.for:"),
            (r#"for = "1m""#, r#"stale_after = "-1m""#, "metric.stale_after:"),
            (r#"match = { "#, r#"resolve_after = "always", match = { "#, "event.resolve_after:"),
            (
                r#"rate_limit = "10/h""#,
                r#"rate_limit = "10 per hour""#,
                "rate_limit: \"10 per hour\" is not a rate",
            ),
            (r#"rate_limit = "10/h""#, r#"rate_limit = "0/h""#, "would send nothing"),
        ]);
    }

    #[test]
    fn a_rule_with_zero_or_several_inputs_is_refused() {
        check_refused(&[
            (
                r#"event = { prefix = "machines/", match = { "status.state" = "failed" } }"#,
                "",
                r#"rule "machine-failed": a rule needs an input"#,
            ),
            (
                r#"notify = ["hook"]"#,
                "notify = [\"hook\"]\nevent = { prefix = \"apps/\" }",
                r#"rule "app-errors": a rule has one input, not event and log"#,
            ),
        ]);
    }

    #[test]
    fn duplicate_names_are_refused() {
        check_refused(&[
            (
                r#"name = "hook""#,
                r#"name = "ops""#,
                r#"receiver "ops": the name is used by an earlier receiver"#,
            ),
            (r#"name = "app-errors""#, r#"name = "machine-failed""#, "the name is used by an earlier rule"),
        ]);
    }

    #[test]
    fn names_labels_and_receivers_are_checked() {
        check_refused(&[
            (r#"name = "app-errors""#, r#"name = "app errors""#, "rule[1].name: `app errors` is not a name"),
            (r#"severity = "critical" }"#, r#""sev-erity" = "critical" }"#, "labels.\"sev-erity\": "),
            (
                r#"labels = { severity"#,
                r#"labels = { key = "x", severity"#,
                "labels.key: the engine sets this label",
            ),
            (
                r#"group_by = ["rule", "app"]"#,
                r#"group_by = ["rule", "rule"]"#,
                "group_by: \"rule\" is listed twice",
            ),
            (r#"op = ">""#, r#"op = "=>""#, "metric.op: `=>` is not one of"),
            (r#"count = "> 5""#, r#"count = "5""#, "log.count:"),
            (
                r#"smtp = "127.0.0.1:2525""#,
                r#"smtp = "127.0.0.1""#,
                "email.smtp: \"127.0.0.1\" is not HOST:PORT",
            ),
            (r#"to = "ops@example.test""#, r#"to = "ops""#, "\"ops\" is not an address"),
            (
                r#"secret = "config:alerts.hook_secret""#,
                r#"secret = "hunter2""#,
                "webhook.secret: name the secret's config key",
            ),
            (r#"url = "http://127.0.0.1:9000/alerts""#, r#"url = "ftp://x""#, "webhook.url"),
            ("record = {}", "record = {}\nwebhook = { url = \"http://x\" }", "not webhook and record"),
            (
                r#"target = { severity = "warning" }"#,
                "target = {}",
                "inhibit[0].target: name at least one label",
            ),
            (r#"prefix = "machines/""#, r#"prefix = "alerts/""#, "include_alerts"),
        ]);
    }

    /// The example's email receiver with `fields` in place of its smtp.
    fn email_receiver(fields: &str) -> Result<ReceiverKind, Error> {
        let text = EXAMPLE.replacen(r#"smtp = "127.0.0.1:2525""#, fields, 1);
        Rules::parse(&text).map(|rules| rules.receiver("ops").unwrap().kind.clone())
    }

    #[test]
    fn tls_defaults_to_tls_on_465_none_on_loopback_and_starttls_elsewhere() {
        let tls = |smtp: &str| match email_receiver(&format!("smtp = \"{smtp}\"")).unwrap() {
            ReceiverKind::Email { tls, .. } => tls,
            other => panic!("{other:?}"),
        };
        assert_eq!(tls("127.0.0.1:2525"), Tls::None);
        assert_eq!(tls("127.0.0.2:25"), Tls::None);
        assert_eq!(tls("localhost:1025"), Tls::None);
        assert_eq!(tls("[::1]:25"), Tls::None);
        assert_eq!(tls("mail.example.test:587"), Tls::StartTls);
        assert_eq!(tls("10.0.0.1:25"), Tls::StartTls);
        assert_eq!(tls("mail.example.test:465"), Tls::Tls);
        assert_eq!(tls("127.0.0.1:465"), Tls::Tls);
    }

    #[test]
    fn an_email_receiver_names_its_tls_user_and_password_key() {
        let kind = email_receiver(
            r#"smtp = "mail.example.test:587", tls = "starttls", user = "hearth", password = "config:alerts.smtp_password""#,
        )
        .unwrap();
        assert_eq!(
            kind,
            ReceiverKind::Email {
                to: vec!["ops@example.test".into()],
                from: "hearth@example.test".into(),
                smtp: "mail.example.test:587".into(),
                tls: Tls::StartTls,
                user: Some("hearth".into()),
                password: Some("alerts.smtp_password".into()),
            }
        );
        // On loopback a login may go in clear: it never leaves the machine.
        let kind = email_receiver(r#"smtp = "127.0.0.1:25", user = "u", password = "config:k""#).unwrap();
        assert!(matches!(kind, ReceiverKind::Email { tls: Tls::None, .. }), "{kind:?}");
        for tls in ["none", "starttls", "opportunistic", "tls"] {
            let kind = email_receiver(&format!("smtp = \"127.0.0.1:25\", tls = \"{tls}\"")).unwrap();
            assert!(matches!(kind, ReceiverKind::Email { tls: t, .. } if t.as_str() == tls), "{kind:?}");
        }
    }

    #[test]
    fn bad_email_tls_user_and_password_are_refused() {
        let smtp = r#"smtp = "127.0.0.1:2525""#;
        check_refused(&[
            (
                smtp,
                r#"smtp = "127.0.0.1:2525", tls = "ssl""#,
                r#"receiver "ops".email.tls: "ssl" is not one of none, starttls, opportunistic or tls"#,
            ),
            (
                smtp,
                r#"smtp = "127.0.0.1:2525", user = "u", password = "hunter2""#,
                r#"receiver "ops".email.password: name the password's config key"#,
            ),
            (smtp, r#"smtp = "127.0.0.1:2525", password = "config:""#, "email.password: name the password's"),
            (
                smtp,
                r#"smtp = "127.0.0.1:2525", user = "u""#,
                r#"receiver "ops".email.password: a user needs a password"#,
            ),
            (
                smtp,
                r#"smtp = "127.0.0.1:2525", password = "config:k""#,
                r#"receiver "ops".email.user: a password needs a user"#,
            ),
            (
                smtp,
                r#"smtp = "127.0.0.1:2525", user = "", password = "config:k""#,
                "email.user: name the SMTP login",
            ),
            (
                smtp,
                r#"smtp = "mail.example.test:25", tls = "none", user = "u", password = "config:k""#,
                r#"receiver "ops".email.tls: "none" could send the password in clear to mail.example.test"#,
            ),
            (
                smtp,
                r#"smtp = "mail.example.test:25", tls = "opportunistic", user = "u", password = "config:k""#,
                r#""opportunistic" could send the password in clear"#,
            ),
            (smtp, r#"smtp = "127.0.0.1:2525", tsl = "none""#, "receiver[0].email.tsl"),
        ]);
        // A literal password is never repeated in the error.
        let err = email_receiver(r#"smtp = "127.0.0.1:2525", user = "u", password = "hunter2""#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn summary_names_that_lead_nowhere_are_refused() {
        check_refused(&[
            ("{{ key }} failed", "{{ machine }} failed", "summary: {{ machine }} names nothing"),
            ("{{ key }} failed", "{{ labels.region }} failed", "no label \"region\""),
            ("{{ key }} failed", "{{ key.name }} failed", "`key` is a plain value"),
            ("{{ key }} failed", "{{ key failed", "is not closed"),
        ]);
        // What can be known to exist passes; a metric's labels cannot be known.
        let ok = EXAMPLE
            .replace("{{ key }} failed", "{{ labels.severity }} {{ labels.rule }} {{ kind }} {{ value.a.b }}")
            .replace(
                "keep_firing_for = \"2m\"",
                "keep_firing_for = \"2m\"\nsummary = \"{{ labels.instance }} at {{ value }}\"",
            );
        Rules::parse(&ok).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = EXAMPLE.replacen(r#"window = "1m""#, r#"window = "1x""#, 1).replacen(
            r#"notify = ["ops"]"#,
            r#"notify = ["pager"]"#,
            1,
        );
        let Err(Error::Invalid(problems)) = Rules::parse(&text) else { panic!() };
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let err = Rules::parse("[[rule]\nname = 1").unwrap_err().to_string();
        assert!(err.starts_with("line 1, column"), "{err}");
    }
}
