//! `hearth workflow`: durable workflows that wait for days and survive
//! restarts.

use std::path::PathBuf;

use base64::Engine as _;
use hearth_client::Client;
use hearth_client::types::{DeployWorkflow, RunStatus, RunSummary, RunsQuery, SendSignal, StartRun};

use crate::output::{Spinner, Table, cell, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Deploy a workflow component; a `hearth.toml` beside it declares its triggers.
    Deploy {
        name: String,
        /// The component, e.g. target/wasm32-wasip2/release/approval.wasm.
        file: PathBuf,
        /// The manifest (default: the nearest hearth.toml from the component's
        /// directory up to its cargo project, if there is one).
        #[arg(long, value_name = "PATH")]
        manifest: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Start a run of NAME; with --id, starting twice starts one run.
    Start {
        name: String,
        /// The run's input, JSON by convention.
        #[arg(long, default_value = "")]
        input: String,
        #[arg(long)]
        id: Option<String>,
        /// Wait until the run ends, print its output, and exit 1 if it failed.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// List runs (newest first), or the deployed workflows with --defs.
    #[command(alias = "list")]
    Ls {
        /// running, waiting, completed, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// List the deployed workflows and their triggers instead of runs.
        #[arg(long)]
        defs: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show a run: status, input, output, and its journal as a history.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send a signal to a run.
    Signal {
        id: String,
        name: String,
        /// The signal's data, JSON by convention.
        #[arg(long, default_value = "")]
        data: String,
    },
    /// Cancel a run that has not ended.
    Cancel { id: String },
    /// Cron schedules, store events and webhooks that start or signal runs.
    #[command(subcommand)]
    Trigger(crate::cmd::trigger::Command),
    /// What a run logged and printed.
    Logs {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a run to another version of its workflow (to ship a fix to a run
    /// that waits); the next replay checks the new code against the journal.
    Migrate {
        id: String,
        #[arg(long, value_name = "VERSION")]
        to: u32,
    },
    /// Remove workflows: no new runs start; runs under way go on.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Deploy { name, file, manifest, json } => {
            let manifest_path = manifest.or_else(|| super::app::find_manifest(&file));
            let (bytes, manifest) = super::read_deploy(
                &file,
                hearth_client::types::MAX_WORKFLOW_COMPONENT,
                manifest_path.as_deref(),
            )?;
            let body = DeployWorkflow {
                component_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
                manifest,
            };
            let deployed = client.deploy_workflow(&name, &body).await?;
            if json {
                print_json(&deployed)?;
                return Ok(0);
            }
            println!(
                "deployed workflow {} version {} in {:.0} ms ({})",
                deployed.workflow,
                deployed.version.number,
                deployed.duration_ms,
                if deployed.compiled { "compiled" } else { "from the compiled cache" }
            );
            let def = client.workflow(&name).await?;
            for url in def.webhooks {
                println!("  webhook  POST {url}");
            }
            for cron in def.crons {
                println!("  cron     {cron}");
            }
            for prefix in def.events {
                println!("  event    changes under {prefix}");
            }
            println!("start a run with `hearth workflow start {name} --input '...'`");
        }
        Command::Start { name, input, id, wait, json } => {
            let started = client.start_run(&name, &StartRun { input, id }).await?;
            if !wait {
                if json {
                    print_json(&started)?;
                } else if started.created {
                    println!("{}", started.run.id);
                } else {
                    eprintln!(
                        "run {} already existed ({}); not started again",
                        started.run.id, started.run.status
                    );
                    println!("{}", started.run.id);
                }
                return Ok(0);
            }
            let run = wait_for_end(client, &started.run.id).await?;
            if json {
                print_json(&run)?;
            } else if let Some(output) = &run.output {
                println!("{output}");
            }
            if run.status != "completed" {
                eprintln!(
                    "run {} {}: {}",
                    run.id,
                    run.status,
                    run.error.as_deref().unwrap_or("(no message)")
                );
                eprintln!("hint: `hearth workflow show {}` shows its history", run.id);
                return Ok(1);
            }
        }
        Command::Ls { status, workflow, defs, json } => {
            if defs {
                let list = client.workflows().await?;
                if json {
                    print_json(&list)?;
                    return Ok(0);
                }
                let mut table = Table::new(vec!["NAME", "VERSION", "VERSIONS", "TRIGGERS", "UPDATED"]);
                for w in list.workflows {
                    let mut triggers = Vec::new();
                    if !w.webhooks.is_empty() {
                        triggers.push(format!("{} webhook(s)", w.webhooks.len()));
                    }
                    triggers.extend(w.crons.iter().map(|c| format!("cron {c}")));
                    triggers.extend(w.events.iter().map(|e| format!("event {e}")));
                    table.row(vec![
                        w.name,
                        w.active.to_string(),
                        w.versions.len().to_string(),
                        cell(&triggers.join(", "), 50),
                        ago(w.updated_at),
                    ]);
                }
                print!("{}", table.render());
                return Ok(0);
            }
            let list = client.runs(&RunsQuery { status, workflow }).await?;
            if json {
                print_json(&list)?;
                return Ok(0);
            }
            let mut table = Table::new(vec![
                "ID",
                "WORKFLOW",
                "VERSION",
                "STATUS",
                "WAITING FOR / RESULT",
                "STARTED",
                "BY",
            ]);
            for r in list.runs {
                let detail = match r.status {
                    RunStatus::Waiting => r.waiting_for.clone().unwrap_or_default(),
                    RunStatus::Completed => r.output.clone().unwrap_or_default(),
                    RunStatus::Failed | RunStatus::Cancelled => r.error.clone().unwrap_or_default(),
                    RunStatus::Running => String::new(),
                };
                table.row(vec![
                    r.id,
                    r.workflow,
                    r.version.to_string(),
                    r.status.to_string(),
                    cell(&detail, 48),
                    ago(r.created_at),
                    r.started_by.to_string(),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Show { id, json } => {
            let detail = client.run_detail(&id).await?;
            if json {
                print_json(&detail)?;
                return Ok(0);
            }
            let r = &detail.run;
            println!("id          {}", r.id);
            println!("workflow    {} (version {})", r.workflow, r.version);
            println!("status      {}", r.status);
            if let Some(waiting) = &r.waiting_for {
                println!("waiting for {waiting}");
            }
            println!("started     {} by {}", ago(r.created_at), r.started_by);
            if let Some(parent) = &r.parent {
                println!("parent      {parent}");
            }
            println!("executions  {}", r.executions);
            println!("input       {}", r.input);
            if let Some(output) = &r.output {
                println!("output      {output}");
            }
            if let Some(error) = &r.error {
                println!("error       {error}");
            }
            println!("history");
            if detail.journal.is_empty() {
                println!("  (no step recorded yet)");
            }
            let start = r.created_at;
            for step in &detail.journal {
                println!(
                    "  {:>3}  +{:<8} {:<44} -> {}",
                    step.seq,
                    hearth_workflows::human_duration(step.at.saturating_sub(start)),
                    cell(&step.call, 44),
                    step.outcome
                );
            }
            for s in &detail.pending_signals {
                println!("  pending signal {:?}: {}", s.name, cell(&s.data, 60));
            }
        }
        Command::Signal { id, name, data } => {
            client.signal_run(&id, &SendSignal { name: name.clone(), data }).await?;
            println!("sent {name:?} to {id}");
        }
        Command::Trigger(command) => {
            crate::cmd::trigger::run(client, "workflows", command).await?;
        }
        Command::Cancel { id } => {
            let run = client.cancel_run(&id).await?;
            println!("cancelled {}", run.id);
        }
        Command::Logs { id, json } => {
            let logs = client.run_logs(&id).await?;
            if json {
                print_json(&logs)?;
                return Ok(0);
            }
            for line in logs.lines {
                for text in line.text.lines() {
                    println!("{:<6} {text}", line.source);
                }
            }
        }
        Command::Migrate { id, to } => {
            let run = client.migrate_run(&id, to).await?;
            println!(
                "run {} is on version {} now; its next step replays its history on that code",
                run.id, run.version
            );
        }
        Command::Rm { names } => {
            for name in names {
                client.remove_workflow(&name).await?;
                println!("removed workflow {name}");
            }
        }
    }
    Ok(0)
}

/// Waits for a run to end, with a spinner that says what it waits for.
async fn wait_for_end(client: &Client, id: &str) -> anyhow::Result<RunSummary> {
    let spinner = Spinner::new(format!("run {id} started"));
    loop {
        let run = client.run_result(id, 1000).await?;
        if matches!(run.status, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled) {
            spinner.finish();
            return Ok(run);
        }
        let what =
            run.waiting_for.clone().map_or_else(|| run.status.to_string(), |w| format!("waiting for {w}"));
        spinner.set(format!("run {id}: {what}"));
    }
}

/// `5s ago`, `3m ago`, from Unix milliseconds.
pub(crate) fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!("{} ago", hearth_workflows::human_duration(now.saturating_sub(ms) / 1000 * 1000))
}
