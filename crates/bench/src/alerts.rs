//! `hearth bench alerts`: from a store event to its webhook delivered,
//! through the running daemon, and the alert engine's throughput with 100
//! rules, in this process.
//!
//! The delay, over `runs` puts of new keys under `kv/bench-alerts-PID/`,
//! each timed from the moment the put is sent (so the write and its fsync
//! count) to two consumers of the same put at once:
//! - the floor: the daemon's events stream handing the change out, the
//!   least any notification driven by the store can take;
//! - a webhook: a sink on loopback in this process receiving the POST whose
//!   `alerts[0].labels.key` is the key. The rule has `group_wait = "0s"`
//!   and `group_by = ["key"]`, so each put is a new group, notified at
//!   once. On the way the alerting service evaluates, acknowledges and
//!   persists its state (another write and fsync) before it delivers.
//!
//! The throughput, with no daemon: 100 event rules (prefixes, exact keys,
//! `anything_but`, numeric ranges), 100 log rules (regexes) and 100 metric
//! rules fed inputs one at a time as the alerting service does (observe,
//! evaluate, plan, acknowledge, delivered), on a clock that moves 1 ms per
//! input. The peer, the same inputs through matching alone (what each
//! rule's pattern, regex or threshold says of the input), shows what the
//! engine's bookkeeping costs on top.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use hearth_alerts::rules::Input;
use hearth_alerts::{EventInput, Labels, Rules, Sample, State, pattern};
use hearth_client::Client;
use hearth_client::types::{ApplyAlertRules, Encoding, PutKv};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::output::Table;
use crate::{millis, percentile};

/// How long one notification may take before the run gives up.
const DEADLINE: Duration = Duration::from_secs(30);
/// Where the engine's clock starts (2026-01-01), in ms since the epoch.
const EPOCH_MS: u64 = 1_767_225_600_000;
/// Rules of each input kind in the throughput figures.
const RULES: usize = 100;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Puts to time from the event to its webhook.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Inputs fed to the engine for each throughput figure.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    inputs: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Figure {
    consumer: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    input: &'static str,
    rules: usize,
    inputs: u32,
    /// Observe, evaluate, plan, acknowledge and delivered, per input.
    engine_per_s: f64,
    /// Every rule's matching alone, per input: the peer.
    matching_per_s: f64,
    /// Alerts the engine held at the end.
    alerts: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    runs: u32,
    delay: Vec<Figure>,
    /// The webhook's p50 less the floor's.
    over_floor_p50_ms: f64,
    over_floor_p99_ms: f64,
    throughput: Vec<Throughput>,
}

fn figure(consumer: &'static str, mut samples: Vec<f64>) -> Figure {
    samples.sort_by(f64::total_cmp);
    Figure {
        consumer,
        p50_ms: percentile(&samples, 50.0),
        p99_ms: percentile(&samples, 99.0),
        max_ms: samples.last().copied().unwrap_or(f64::NAN),
    }
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    let prefix = format!("bench-alerts-{}/", std::process::id());
    // Read before anything changes, to put back whatever happens.
    let previous = client.alert_rules().await.context("cannot read the alert rules in force")?.text;
    let written = std::sync::Mutex::new(Vec::<String>::new());
    let measure = async {
        let (floor, hook) = to_webhook(client, &prefix, &previous, args.runs, &written).await?;
        eprintln!("[2/2] The engine with {RULES} rules of each kind, {} inputs each ...", args.inputs);
        let throughput = vec![events(args.inputs)?, logs(args.inputs)?, metrics(args.inputs)?];
        let floor = figure("store event (floor)", floor);
        let hook = figure("webhook delivered", hook);
        Ok(Report {
            runs: args.runs,
            over_floor_p50_ms: hook.p50_ms - floor.p50_ms,
            over_floor_p99_ms: hook.p99_ms - floor.p99_ms,
            delay: vec![floor, hook],
            throughput,
        })
    };
    let outcome = tokio::select! {
        report = measure => report,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // The rules first: deleting the keys would otherwise be events too.
    if let Err(e) = client.apply_alert_rules(&ApplyAlertRules { text: previous }).await {
        eprintln!("warning: cannot put the alert rules back ({e}); `hearth alert rules --show` has them");
    }
    let written = std::mem::take(&mut *written.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for key in written {
        if let Err(e) = client.kv_delete(&key).await {
            eprintln!("warning: cannot remove the key {key} ({e}); run `hearth kv rm {key}`");
        }
    }
    let report = outcome?;
    if args.json {
        crate::output::print_json(&report)
    } else {
        print!("{}", render(&report));
        Ok(())
    }
}

fn render(report: &Report) -> String {
    let mut delay = Table::new(vec!["FROM A PUT TO", "P50", "P99", "MAX"]);
    for f in &report.delay {
        delay.row(vec![
            f.consumer.to_owned(),
            format!("{:.2} ms", f.p50_ms),
            format!("{:.2} ms", f.p99_ms),
            format!("{:.2} ms", f.max_ms),
        ]);
    }
    let mut engine = Table::new(vec!["INPUT", "RULES", "ENGINE", "MATCHING ALONE", "ALERTS HELD"]);
    for t in &report.throughput {
        engine.row(vec![
            t.input.to_owned(),
            t.rules.to_string(),
            format!("{:.0}/s", t.engine_per_s),
            format!("{:.0}/s", t.matching_per_s),
            t.alerts.to_string(),
        ]);
    }
    format!(
        "event to webhook, {} puts:\n{}the webhook over the floor: {:+.2} ms at p50, {:+.2} ms at p99\n\n\
         rule evaluation, inputs per second:\n{}",
        report.runs,
        delay.render(),
        report.over_floor_p50_ms,
        report.over_floor_p99_ms,
        engine.render()
    )
}

/// Puts new keys that an event rule notifies a webhook of: for each, the
/// time to the events stream (the floor) and to the webhook.
async fn to_webhook(
    client: &Client,
    prefix: &str,
    previous: &str,
    runs: u32,
    written: &std::sync::Mutex<Vec<String>>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    eprintln!("[1/2] {runs} kv puts, each until the events stream and a webhook have it ...");
    let (url, mut hooks) = sink().await?;
    let name = prefix.trim_end_matches('/');
    // Appended, so the rules in force stay in force meanwhile.
    let text = format!(
        "{previous}\n\n[[receiver]]\nname = \"{name}\"\nwebhook = {{ url = \"{url}\" }}\n\n\
         [[rule]]\nname = \"{name}\"\nevent = {{ prefix = \"kv/{prefix}\", kind = \"put\" }}\n\
         notify = [\"{name}\"]\ngroup_by = [\"key\"]\ngroup_wait = \"0s\"\n"
    );
    client.apply_alert_rules(&ApplyAlertRules { text }).await.context("cannot apply the bench's rule")?;
    let mut events = Box::pin(client.follow_events(None, Some(&format!("kv/{prefix}"))).await?);
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, Instant)>();
    let follower = tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            if seen_tx.send((event.key, Instant::now())).is_err() {
                return;
            }
        }
    });
    let put = async |i: u32| -> anyhow::Result<(String, Instant)> {
        let key = format!("{prefix}k{i}");
        written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(key.clone());
        let body = PutKv {
            value: format!("{{\"n\":{i}}}"),
            encoding: Encoding::Utf8,
            lease: None,
            if_mod_revision: None,
        };
        let started = Instant::now();
        client.kv_put(&key, &body).await?;
        Ok((format!("kv/{key}"), started))
    };
    // One put first, untimed: the stream and the service are flowing.
    let (key, _) = put(runs).await?;
    until(&mut seen, &key, "the events stream").await?;
    until(&mut hooks, &key, "the webhook").await?;
    let (mut floor, mut hook) = (Vec::with_capacity(runs as usize), Vec::with_capacity(runs as usize));
    for i in 0..runs {
        let (key, started) = put(i).await?;
        floor.push(millis(until(&mut seen, &key, "the events stream").await? - started));
        hook.push(millis(until(&mut hooks, &key, "the webhook").await? - started));
    }
    follower.abort();
    Ok((floor, hook))
}

/// When `key` came through `got`, skipping anything else.
async fn until(
    got: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    key: &str,
    what: &str,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, got.recv()).await {
            Err(_) => bail!("{what} did not have {key} within 30 s"),
            Ok(None) => bail!("{what} ended before {key}"),
            Ok(Some((k, at))) if k == key => return Ok(at),
            Ok(Some(_)) => {}
        }
    }
}

/// A webhook receiver on loopback: its URL, and for each POST the key of
/// its first alert and when its body was in.
async fn sink() -> anyhow::Result<(String, mpsc::UnboundedReceiver<(String, Instant)>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on loopback")?;
    let url = format!("http://{}/alerts", listener.local_addr()?);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            if let Ok(body) = req.into_body().collect().await {
                                let at = Instant::now();
                                let json: serde_json::Value =
                                    serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
                                if let Some(key) = json["alerts"][0]["labels"]["key"].as_str() {
                                    let _ = tx.send((key.to_owned(), at));
                                }
                            }
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((url, rx))
}

/// The rules file of `rules` (each a rule's table without `name`), all
/// notifying a `record` receiver: no I/O on the way.
fn rules_file(rules: impl Iterator<Item = String>) -> anyhow::Result<Rules> {
    let mut text = String::from("[[receiver]]\nname = \"book\"\nrecord = {}\n");
    for (j, rule) in rules.enumerate() {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"r{j}\"\n{rule}\nnotify = [\"book\"]\ngroup_wait = \"0s\"\n"
        ));
    }
    Rules::parse(&text).map_err(|e| anyhow::anyhow!("the bench's rules do not parse: {e}"))
}

/// Plans and acknowledges at `at`, and marks the notifications delivered,
/// as the alerting service does after each input.
fn tick(state: &mut State, rules: &Rules, at: u64) {
    state.evaluate(rules, at);
    let plan = state.plan(rules, at);
    for notification in &plan.notifications {
        state.acknowledge(notification);
        state.delivered(&notification.id);
    }
}

/// Inputs per second of `n` inputs taking `elapsed`.
fn rate(n: u32, elapsed: Duration) -> f64 {
    f64::from(n) / elapsed.as_secs_f64()
}

fn events(n: u32) -> anyhow::Result<Throughput> {
    let quarter = RULES / 4;
    let rules = rules_file((0..RULES).map(|j| {
        let k = j % quarter;
        match j / quarter {
            0 => format!("event = {{ prefix = \"kv/svc{k}/\", kind = \"put\" }}"),
            1 => format!("event = {{ exact = \"kv/cfg/{k}\" }}"),
            2 => format!(
                "event = {{ prefix = \"kv/jobs/\", match = {{ team = \"t{k}\", state = {{ anything_but = [\"ok\", \"running\"] }} }} }}"
            ),
            _ => format!(
                "event = {{ prefix = \"machines/\", match = {{ \"status.cpu\" = {{ \">=\" = {}, \"<\" = {} }} }} }}",
                k * 4,
                k * 4 + 4
            ),
        }
    }))?;
    // Bounded key spaces, most keys under some rule, most values matching
    // none: alerts come and go, their number levels off.
    let inputs: Vec<EventInput> = (0..n as usize)
        .map(|i| {
            let m = i / 4;
            match i % 4 {
                0 => EventInput::put(
                    &format!("kv/svc{}/x{}", m % 30, i % 7),
                    format!("{{\"n\":{i}}}").as_bytes(),
                ),
                1 => EventInput::put(&format!("kv/cfg/{}", m % 40), b"on"),
                2 => {
                    let state = ["ok", "running", "failed"][m % 3];
                    let value = format!("{{\"team\":\"t{}\",\"state\":\"{state}\"}}", m % 30);
                    EventInput::put(&format!("kv/jobs/j{}", m % 50), value.as_bytes())
                }
                _ => {
                    let value = format!("{{\"status\":{{\"cpu\":{}}}}}", (i * 7) % 110);
                    EventInput::put(&format!("machines/m{}", m % 50), value.as_bytes())
                }
            }
        })
        .collect();
    let patterns: Vec<&pattern::Pattern> = rules
        .rules
        .iter()
        .filter_map(|r| match &r.input {
            Input::Event(e) => Some(&e.pattern),
            _ => None,
        })
        .collect();
    let started = Instant::now();
    for input in &inputs {
        black_box(patterns.iter().filter(|p| pattern::matches(p, input)).count());
    }
    let matching = started.elapsed();
    let mut state = State::default();
    let started = Instant::now();
    for (i, input) in inputs.iter().enumerate() {
        let at = EPOCH_MS + i as u64;
        state.observe_event(&rules, input, at);
        tick(&mut state, &rules, at);
    }
    let engine = started.elapsed();
    Ok(Throughput {
        input: "store events",
        rules: patterns.len(),
        inputs: n,
        engine_per_s: rate(n, engine),
        matching_per_s: rate(n, matching),
        alerts: state.alerts.len(),
    })
}

fn logs(n: u32) -> anyhow::Result<Throughput> {
    let rules = rules_file((0..RULES).map(|j| {
        let (source, regex) = match j % 4 {
            0 => (format!("app:shop{}", j % 10), format!(r"error {j}\b")),
            1 => ("app:*".to_owned(), format!(r"timeout after \d+ ms in svc{j}$")),
            2 => (format!("app:shop{}", j % 10), format!("(?i)out of stock: item {j}")),
            _ => ("*".to_owned(), format!(r"panicked at .*src/m{j}\.rs")),
        };
        format!("log = {{ source = \"{source}\", regex = '{regex}', count = \"> 2\", window = \"1m\" }}")
    }))?;
    let lines: Vec<(String, String)> = (0..n as usize)
        .map(|i| {
            let source = format!("app:shop{}", i % 12);
            let line = match i % 10 {
                0 => format!("error {} in the handler", i % 120),
                1 => format!("timeout after 300 ms in svc{}", i % 120),
                _ => format!("GET /items/{i} 200 in 3 ms"),
            };
            (source, line)
        })
        .collect();
    let log_rules: Vec<_> = rules
        .rules
        .iter()
        .filter_map(|r| match &r.input {
            Input::Log(l) => Some(l),
            _ => None,
        })
        .collect();
    let started = Instant::now();
    for (source, line) in &lines {
        black_box(log_rules.iter().filter(|r| r.counts(source, line)).count());
    }
    let matching = started.elapsed();
    let mut state = State::default();
    let started = Instant::now();
    for (i, (source, line)) in lines.iter().enumerate() {
        let at = EPOCH_MS + i as u64;
        state.observe_log(&rules, source, line, at);
        tick(&mut state, &rules, at);
    }
    let engine = started.elapsed();
    Ok(Throughput {
        input: "log lines",
        rules: log_rules.len(),
        inputs: n,
        engine_per_s: rate(n, engine),
        matching_per_s: rate(n, matching),
        alerts: state.alerts.len(),
    })
}

fn metrics(n: u32) -> anyhow::Result<Throughput> {
    let half = RULES / 2;
    let rules = rules_file((0..RULES).map(|j| {
        if j < half {
            format!("metric = {{ name = \"cpu_ratio\", labels = {{ machine = \"m{j}\" }}, op = \">\", value = 0.9 }}")
        } else {
            let app = j - half;
            format!("metric = {{ name = \"app_error_ratio\", labels = {{ app = \"a{app}\" }}, op = \">\", value = 0.2, for = \"10s\" }}")
        }
    }))?;
    let samples: Vec<Sample> = (0..n as usize)
        .map(|i| {
            let (name, label, value) = if i % 2 == 0 {
                ("cpu_ratio", ("machine", format!("m{}", (i / 2) % 60)), (i % 100) as f64 / 100.0)
            } else {
                ("app_error_ratio", ("app", format!("a{}", (i / 2) % 60)), (i % 30) as f64 / 100.0)
            };
            Sample { name: name.into(), labels: Labels::from([(label.0.into(), label.1)]), value }
        })
        .collect();
    let metric_rules: Vec<_> = rules
        .rules
        .iter()
        .filter_map(|r| match &r.input {
            Input::Metric(m) => Some(m),
            _ => None,
        })
        .collect();
    let started = Instant::now();
    for sample in &samples {
        black_box(
            metric_rules
                .iter()
                .filter(|m| {
                    m.name == sample.name
                        && m.labels.iter().all(|(k, v)| sample.labels.get(k) == Some(v))
                        && m.op.holds(sample.value, m.value)
                })
                .count(),
        );
    }
    let matching = started.elapsed();
    let mut state = State::default();
    let started = Instant::now();
    for (i, sample) in samples.iter().enumerate() {
        let at = EPOCH_MS + i as u64;
        state.observe_sample(&rules, sample, at);
        tick(&mut state, &rules, at);
    }
    let engine = started.elapsed();
    Ok(Throughput {
        input: "metric samples",
        rules: metric_rules.len(),
        inputs: n,
        engine_per_s: rate(n, engine),
        matching_per_s: rate(n, matching),
        alerts: state.alerts.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The workloads parse and do what they are meant to: alerts come, and
    // their number stays bounded by the key spaces.
    #[test]
    fn the_engine_workloads_raise_alerts() {
        for t in [events(400).unwrap(), logs(400).unwrap(), metrics(400).unwrap()] {
            assert_eq!(t.rules, RULES, "{t:?}");
            assert!(t.alerts > 0 && t.alerts < 1000, "{t:?}");
        }
    }

    #[test]
    fn a_report_renders_both_tables() {
        let report = Report {
            runs: 2,
            delay: vec![
                figure("store event (floor)", vec![1.0, 2.0]),
                figure("webhook delivered", vec![3.0, 5.0]),
            ],
            over_floor_p50_ms: 2.0,
            over_floor_p99_ms: 3.0,
            throughput: vec![metrics(10).unwrap()],
        };
        let text = render(&report);
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(words.contains("webhook delivered 3.00 ms 5.00 ms 5.00 ms"), "{text}");
        assert!(words.contains("+2.00 ms at p50") && words.contains("metric samples 100"), "{text}");
    }
}
