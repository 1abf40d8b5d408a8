//! `hearth bench workflows`: durable workflows through the running daemon,
//! and the same work on Restate when it is installed.
//!
//! Two figures, each for both: workflows per second for a workflow of three
//! activities (each an HTTP POST to a loopback server, recorded before the
//! next step), with `concurrency` clients each starting a run and waiting
//! for its result; and signal-to-resume latency, from sending the signal to
//! a waiting run until its result can be read. hearth's clients wait on
//! `GET /v1/runs/{id}/result`, which follows the run in the store, as
//! Restate's clients wait on its ingress.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use hearth_client::Client;
use hearth_client::types::{DeployWorkflow, SendSignal, StartRun};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::output::{Table, print_json};
use crate::{millis, percentile};

const POLL: Duration = Duration::from_millis(2);
const COMPONENT: &str = "bench/workflows/three-steps/target/wasm32-wasip2/release/three_steps.wasm";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Three-step workflows to run.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Clients starting workflows at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Signal-to-resume measurements.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    resumes: u32,
    /// The benchmark's workflow component (`make bench-workflows` builds it).
    #[arg(long, value_name = "PATH", default_value = COMPONENT)]
    component: PathBuf,
    /// Skip the Restate peer.
    #[arg(long)]
    no_restate: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Figures {
    peer: String,
    workflows_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    resume_p50_ms: f64,
    resume_p99_ms: f64,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    runs: u32,
    concurrency: u32,
    resumes: u32,
    activities: u64,
    peers: Vec<Figures>,
    /// hearth's workflows/s over Restate's, when both ran.
    throughput_ratio: Option<f64>,
    /// hearth's resume p50 over Restate's.
    resume_ratio: Option<f64>,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.component).with_context(|| {
        format!(
            "cannot read the benchmark workflow {}: build it with `make bench-workflows`",
            args.component.display()
        )
    })?;
    let steps = StepServer::start().await?;
    let name = format!("bench-{}", std::process::id());
    eprintln!("Deploying the three-step workflow as {name} ...");
    client
        .deploy_workflow(
            &name,
            &DeployWorkflow {
                component_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
                manifest: None,
            },
        )
        .await?;
    let result = measure_hearth(client, &name, &steps.url, &args).await;
    let _ = client.remove_workflow(&name).await;
    let mut peers = vec![result?];
    if !args.no_restate {
        eprintln!("Restate: {} three-step workflows, {} resumes ...", args.runs, args.resumes);
        if let Some(figures) = restate(&steps.url, &args).await {
            peers.push(figures);
        }
    }
    let restate = peers.iter().find(|p| p.peer == "Restate");
    let report = Report {
        runs: args.runs,
        concurrency: args.concurrency,
        resumes: args.resumes,
        activities: steps.count.load(Ordering::Relaxed),
        throughput_ratio: restate.map(|r| peers[0].workflows_per_sec / r.workflows_per_sec),
        resume_ratio: restate.map(|r| peers[0].resume_p50_ms / r.resume_p50_ms),
        peers,
    };
    steps.stop();
    if args.json {
        return print_json(&report);
    }
    let mut table =
        Table::new(vec!["PEER", "WORKFLOWS/S", "P50", "P99", "RESUME P50", "RESUME P99", "DETAIL"]);
    for p in &report.peers {
        table.row(vec![
            p.peer.clone(),
            format!("{:.1}", p.workflows_per_sec),
            format!("{:.1} ms", p.p50_ms),
            format!("{:.1} ms", p.p99_ms),
            format!("{:.1} ms", p.resume_p50_ms),
            format!("{:.1} ms", p.resume_p99_ms),
            p.detail.clone(),
        ]);
    }
    print!("{}", table.render());
    match (report.throughput_ratio, report.resume_ratio) {
        (Some(t), Some(r)) => {
            println!("hearth/Restate: {t:.2}x the workflows per second; resume p50 {r:.2}x Restate's")
        }
        _ => println!("no Restate figures in this run: `make bench-workflows-peer` installs the peer"),
    }
    Ok(())
}

async fn measure_hearth(client: &Client, name: &str, step_url: &str, args: &Args) -> anyhow::Result<Figures> {
    eprintln!("hearth: {} three-step workflows, {} at a time ...", args.runs, args.concurrency);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, next, name, input) =
            (client.clone(), next.clone(), name.to_owned(), format!("three|{step_url}"));
        let runs = u64::from(args.runs);
        clients.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= runs {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t0 = Instant::now();
                let body = StartRun { input: input.clone(), id: Some(format!("{name}-{i}")) };
                let run = client.start_run(&name, &body).await?;
                let output = wait_for_output(&client, &run.run.id).await?;
                if output != "ok+ok+ok" {
                    bail!("run {} answered {output:?}", run.run.id);
                }
                latencies.push(millis(t0.elapsed()));
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = clients.join_next().await {
        latencies.extend(joined.context("a benchmark client panicked")??);
    }
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);

    eprintln!("hearth: {} signal-to-resume round trips ...", args.resumes);
    let mut resumes = Vec::new();
    for i in 0..args.resumes {
        let id = format!("{name}-resume-{i}");
        client.start_run(name, &StartRun { input: "resume".into(), id: Some(id.clone()) }).await?;
        // Excluded from the timing: the run reaching its wait.
        loop {
            let run = client.run_detail(&id).await?.run;
            if run.status == "waiting" {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let t0 = Instant::now();
        client.signal_run(&id, &SendSignal { name: "go".into(), data: i.to_string() }).await?;
        let output = wait_for_output(client, &id).await?;
        resumes.push(millis(t0.elapsed()));
        if output != i.to_string() {
            bail!("run {id} resumed with {output:?}");
        }
    }
    resumes.sort_by(f64::total_cmp);
    Ok(Figures {
        peer: "hearth".into(),
        workflows_per_sec: f64::from(args.runs) / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        resume_p50_ms: percentile(&resumes, 50.0),
        resume_p99_ms: percentile(&resumes, 99.0),
        detail: format!("hearth {}, redb store, fsync per journal step", env!("CARGO_PKG_VERSION")),
    })
}

async fn wait_for_output(client: &Client, id: &str) -> anyhow::Result<String> {
    loop {
        let run = client.run_result(id, 60_000).await?;
        match run.status.as_str() {
            "completed" => return Ok(run.output.unwrap_or_default()),
            "failed" | "cancelled" => bail!("run {id} {}: {}", run.status, run.error.unwrap_or_default()),
            _ => {}
        }
    }
}

/// The activities' server: answers `ok` to every request, and counts them.
struct StepServer {
    url: String,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StepServer {
    async fn start() -> anyhow::Result<StepServer> {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on loopback")?;
        let url = format!("http://{}", listener.local_addr()?);
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        async {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(StepServer { url, count, task })
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// The same work on Restate, if it is installed.
async fn restate(step_url: &str, args: &Args) -> Option<Figures> {
    let measured = crate::restate::measure(
        step_url,
        args.runs as usize,
        args.concurrency as usize,
        args.resumes as usize,
    )
    .await;
    match measured {
        Ok(Some(f)) => Some(Figures {
            peer: "Restate".into(),
            workflows_per_sec: f.workflows_per_sec,
            p50_ms: f.p50_ms,
            p99_ms: f.p99_ms,
            resume_p50_ms: f.resume_p50_ms,
            resume_p99_ms: f.resume_p99_ms,
            detail: f.detail,
        }),
        Ok(None) => None,
        Err(e) => {
            eprintln!("Restate could not be measured: {e:#}");
            None
        }
    }
}
