//! The alert rules' inputs: the log lines of apps, workflows and
//! machines (a service's machines count for the service too), and the
//! metric samples.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_machines::vmm::console;
use hearth_monitor::Monitor;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

/// Forwards every app's and workflow's log lines to the alert rules.
pub(crate) fn tap_logs(monitor: &Monitor, apps: &hearth_apps::Apps, workflows: &hearth_workflows::Workflows) {
    let mut apps_rx = apps.tap_logs();
    let to = monitor.clone();
    tokio::spawn(async move {
        loop {
            match apps_rx.recv().await {
                Ok((app, line)) => to.log(&format!("app:{app}"), &line.text),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "Log rules fell behind the apps' logs and skipped some lines.");
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    let mut workflows_rx = workflows.tap_logs();
    let to = monitor.clone();
    tokio::spawn(async move {
        loop {
            match workflows_rx.recv().await {
                Ok((workflow, line)) => to.log(&format!("workflow:{workflow}"), &line),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "Log rules fell behind the workflows' logs and skipped some lines."
                    );
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
}

/// Hands every batch of metric samples to the metric rules.
pub(crate) fn feed_samples(monitor: &Monitor, metrics: &hearth_metrics::TimeSeries) {
    let mut batches = metrics.subscribe();
    let to = monitor.clone();
    tokio::spawn(async move {
        loop {
            match batches.recv().await {
                Ok(batch) => {
                    let samples = batch
                        .samples
                        .iter()
                        .map(|s| hearth_alerts::Sample {
                            name: s.name.clone(),
                            labels: s.labels.clone(),
                            value: s.value,
                        })
                        .collect();
                    to.samples(batch.at, samples);
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "Metric rules fell behind and skipped some batches of samples.");
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
}

/// How often the machines' logs are read for the log rules.
const MACHINE_LOG_POLL: Duration = Duration::from_millis(500);

/// Reads what every machine of this host writes to its console and
/// main-process logs and hands each line to the log rules, as
/// `machine:NAME` and, for a service's machine, as `service:NAME` too. A line reads as `hearth
/// machine logs` shows it: `console| ...` or `main out| ...`.
///
/// Every machine's logs are followed, running or not, so a machine that
/// starts later is read from its first line. Those present when the
/// daemon starts are read from their end: what they wrote while no daemon
/// watched is not counted. Lines arrive within [`MACHINE_LOG_POLL`].
pub(crate) fn tail_machine_logs(
    monitor: &Monitor,
    machines: &hearth_machines::Machines,
    services: &hearth_services::Services,
    mut stop: watch::Receiver<bool>,
) {
    let (monitor, machines, services) = (monitor.clone(), machines.clone(), services.clone());
    tokio::spawn(async move {
        let mut tails: HashMap<String, MachineTail> = HashMap::new();
        let mut first = true;
        let mut tick = tokio::time::interval(MACHINE_LOG_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => {}
            }
            let Ok(records) = machines.list().await else { continue };
            // Another host's machines' logs are on that host, read by its daemon.
            let files: Vec<(String, u64, PathBuf, PathBuf)> = records
                .iter()
                .filter(|r| machines.runs_here(r))
                .map(|r| {
                    (r.name.clone(), r.created_at, machines.console_log(&r.name), machines.main_log(&r.name))
                })
                .collect();
            let from_end = std::mem::take(&mut first);
            let read = tokio::task::spawn_blocking({
                let mut tails = std::mem::take(&mut tails);
                move || {
                    tails.retain(|name, tail| files.iter().any(|f| f.0 == *name && f.1 == tail.created_at));
                    let mut lines = Vec::new();
                    for (name, created_at, console, main) in files {
                        if !tails.contains_key(&name) {
                            match MachineTail::new(created_at, &console, &main, from_end) {
                                Ok(tail) => tails.insert(name.clone(), tail),
                                Err(error) => {
                                    tracing::debug!(machine = name, %error, "Cannot open a machine's logs for the log rules.");
                                    continue;
                                }
                            };
                        }
                        let Some(tail) = tails.get_mut(&name) else { continue };
                        for line in tail.read(&name) {
                            lines.push((name.clone(), line));
                        }
                    }
                    (tails, lines)
                }
            })
            .await;
            let Ok((kept, lines)) = read else { continue };
            tails = kept;
            if lines.is_empty() {
                continue;
            }
            let owners = services.machine_owners().await.unwrap_or_default();
            for (machine, line) in lines {
                monitor.log(&format!("machine:{machine}"), &line);
                if let Some(service) = owners.get(&machine) {
                    monitor.log(&format!("service:{service}"), &line);
                }
            }
        }
    });
}

/// Where one machine's two logs have been read to.
struct MachineTail {
    /// Tells a machine from another of the same name made after it.
    created_at: u64,
    console: (console::Follower, console::Lines),
    main: (console::Follower, console::Lines),
}

impl MachineTail {
    /// Following both logs from their end (`from_end`) or from their start.
    fn new(created_at: u64, console_log: &Path, main_log: &Path, from_end: bool) -> std::io::Result<Self> {
        let follow = |path: &Path| -> std::io::Result<_> {
            let (_, mut follower) = console::read_end(path, Some(0))?;
            if !from_end {
                follower = follower.from_start();
            }
            Ok((follower, console::Lines::default()))
        };
        Ok(Self { created_at, console: follow(console_log)?, main: follow(main_log)? })
    }

    /// The whole lines written since the last read, labelled as `hearth
    /// machine logs` labels them.
    fn read(&mut self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (from_console, (follower, lines)) in [(true, &mut self.console), (false, &mut self.main)] {
            let chunk = match follower.read_new() {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::debug!(machine = name, %error, "Cannot read a machine's log for the log rules.");
                    continue;
                }
            };
            if chunk.is_empty() {
                continue;
            }
            let whole = lines.push(&chunk);
            let rendered = console::render(console::Source::All, from_console, &whole);
            out.extend(String::from_utf8_lossy(&rendered).lines().map(str::to_owned));
        }
        out
    }
}
