//! The checker: one task per instance that runs its checks on their
//! intervals, folds the results through each check's [`Tracker`], and
//! writes the instance's health when it changes. The supervisor starts and
//! stops these tasks (`supervise.rs`); an `exec` check runs in the machine
//! through its agent.

use std::time::{Duration, Instant};

use hearth_machines::Machines;
use hearth_store::{Compare, Op, Txn};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::check::{self, CheckKind, CheckSpec, Tracker};
use crate::record::{self, HealthRecord, InstanceRecord, Status};
use crate::service::{Services, parse, to_json};

/// Writes an instance's health if its status changed; returns the record
/// now stored.
pub(crate) async fn write_health(
    services: &Services,
    instance: &InstanceRecord,
    previous: Option<&HealthRecord>,
    status: Status,
    output: &str,
) -> Option<HealthRecord> {
    let next = HealthRecord::changed(previous, status, output, record::now_ms())?;
    let instance_key = record::instance_key(&instance.service, &instance.id);
    let lease = match services.writer().get(&instance_key).await {
        Ok(Some(kv)) => kv.lease,
        _ => return None,
    };
    let txn = Txn::new().when(Compare::exists(&instance_key)).and_then(Op::Put {
        key: record::health_key(&instance.service, &instance.id),
        value: to_json(&next),
        lease,
    });
    match services.writer().txn(txn).await {
        Ok(r) if r.succeeded => Some(next),
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(instance = instance.id, error = %error, "Cannot write an instance's health.");
            None
        }
    }
}

/// Runs an instance's checks for as long as the task lives, and writes its
/// health when it changes. With no checks, a running machine is passing.
pub(crate) async fn checker(services: Services, instance: InstanceRecord, checks: Vec<CheckSpec>) {
    let health_key = record::health_key(&instance.service, &instance.id);
    let mut current = match services.writer().get(&health_key).await {
        Ok(Some(kv)) => parse::<HealthRecord>(&kv).ok(),
        _ => None,
    };
    let Some(address) = instance.address else { return };
    if checks.is_empty() {
        let output = match &instance.machine {
            Some(machine) => format!("machine {machine} is running (the service has no checks)"),
            None => "registered".to_string(),
        };
        write_health(&services, &instance, current.as_ref(), Status::Passing, &output).await;
        return;
    }
    let (tx, mut rx) = mpsc::channel::<(usize, Status, String)>(checks.len() * 2);
    let mut probes = JoinSet::new();
    for (i, check) in checks.iter().enumerate() {
        let (tx, check, services) = (tx.clone(), check.clone(), services.clone());
        let (port, machine) = (instance.port, instance.machine.clone());
        probes.spawn(async move {
            let mut every = tokio::time::interval(check.interval());
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let (status, output) = match &check.kind {
                    CheckKind::Http { path, status } => {
                        check::http(address, port, path, *status, check.timeout()).await
                    }
                    CheckKind::Tcp => check::tcp(address, port, check.timeout()).await,
                    CheckKind::Exec { command } => match &machine {
                        Some(machine) => {
                            exec(&services.inner.machines, machine, command, check.timeout()).await
                        }
                        None => (Status::Critical, "an exec check needs a machine".into()),
                    },
                    CheckKind::Ttl { .. } => (Status::Critical, "ttl checks are passed by heartbeats".into()),
                };
                if tx.send((i, status, output)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    // A machine that slept was passing when it fell asleep: its checks go
    // on from there, as after a restart of the checker.
    let known = match current.as_ref().map_or(Status::Critical, |h| h.status) {
        Status::Sleeping => Status::Passing,
        known => known,
    };
    let mut trackers = vec![Tracker::resume(known); checks.len()];
    let mut outputs = vec![String::new(); checks.len()];
    while let Some((i, result, output)) = rx.recv().await {
        trackers[i].observe(result, checks[i].passes, checks[i].failures);
        outputs[i] = format!("{}: {output}", checks[i].kind.name());
        // The instance is as healthy as its least healthy check; a check
        // that has not answered yet counts as critical.
        let worst =
            (0..checks.len()).max_by_key(|&j| (trackers[j].status(), std::cmp::Reverse(j))).unwrap_or(0);
        let status = trackers[worst].status();
        let said =
            if outputs[worst].is_empty() { "not checked yet".to_string() } else { outputs[worst].clone() };
        if let Some(next) = write_health(&services, &instance, current.as_ref(), status, &said).await {
            current = Some(next);
        }
    }
}

/// An exec check: `sh -c COMMAND` in the machine, killed past `timeout`.
async fn exec(machines: &Machines, machine: &str, command: &str, timeout: Duration) -> (Status, String) {
    let agent = match machines.agent(machine).await {
        Ok(agent) => agent,
        Err(error) => return (Status::Critical, format!("cannot reach machine {machine}'s agent: {error}")),
    };
    let command = command.to_string();
    let outcome = tokio::task::spawn_blocking(move || {
        use hearth_agent::client::{ExecRequest, Output};
        let mut handle = agent.exec(ExecRequest::new(["sh", "-c", &command]))?;
        let deadline = Instant::now() + timeout;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match handle.recv_timeout(left) {
                Ok(Some(Output::Stdout(b) | Output::Stderr(b))) => {
                    said.extend_from_slice(&b[..b.len().min(4096)])
                }
                Ok(Some(Output::Exited(status))) => return Ok(check::exec_verdict(status.code, &said)),
                Ok(Some(Output::Error(_))) => {}
                Ok(None) => return Ok((Status::Critical, "the agent went away".to_string())),
                Err(hearth_agent::client::Error::Timeout(_)) => {
                    let _ = handle.signal(9);
                    return Ok((Status::Critical, format!("did not finish within {timeout:?}")));
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(error)) => (Status::Critical, format!("cannot run the check: {error}")),
        Err(error) => (Status::Critical, format!("the check panicked: {error}")),
    }
}
