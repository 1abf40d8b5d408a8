//! `hearth bench fn`: handlers from source, end to end, against the Rust
//! `hello` app.
//!
//! A client of a running daemon. It deploys a JavaScript handler from
//! source, then changes one line of it and deploys it again `--runs` times,
//! timing each from the API call to the first 200 from the new version,
//! and how much of that was the build (the rest is compiling the component
//! and swapping it in). Each changed deploy starts once the version before
//! it serves Cranelift's code, as when a person edits between deploys; the
//! first deploy's wait for Cranelift (which compiles a JavaScript handler's
//! engine, once) is reported on its own. The same for a Python handler, fewer times. Then,
//! once each serves Cranelift's code, one load generator (wrk) loads the
//! JavaScript hello, the Python hello and
//! the Rust `hello` component (`make examples`), in rounds, each answering
//! "Hello from hearth!". The apps it deploys are removed again, also when
//! it fails or is interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use hearth_client::Client;
use hearth_client::types::{CodeTier, DeployApp, DeploySource};
use serde::Serialize;

use crate::apps::peers::{Wrk, parse_wrk};
use crate::apps::tiers::wait_optimized;
use crate::apps::{Load, first_ok_within, median_round};
use crate::output::Table;
use crate::{Created, Kind, Stats, measured, millis};

/// What the issue asks of a changed JavaScript handler: deploy to first 200
/// (handlers from source), and the same for deploys that do not wait for
/// the optimizer.
const TARGET_CHANGED_JS_MS: f64 = 3000.0;
const TARGET_CHANGED_JS_FAST_MS: f64 = 1000.0;
/// The Rust component `make examples` builds.
const HELLO_COMPONENT: &str = "examples/apps/hello/target/wasm32-wasip2/release/hello.wasm";
/// Longest wait for a new version's first 200 (a cold build and compile
/// of a Python handler on a busy machine takes a minute).
const READY_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Deploys of a changed JavaScript handler (after the first one).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Deploys of a changed Python handler (after the first one).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    python_runs: u32,
    /// Rounds of load: each loads every app in turn; each app's figure is
    /// its median round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Seconds of load per app and round (after a 2 s warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Connections the load generator keeps open.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// The Rust hello component [default: examples/apps/hello as `make examples` builds it].
    #[arg(long, value_name = "PATH")]
    component: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    cores: usize,
    javascript: Deploys,
    python: Deploys,
    target_changed_js_median_ms: f64,
    target_changed_js_fast_ms: f64,
    throughput: Vec<Load>,
    load_generator: String,
    rounds: u32,
    duration_secs: u64,
}

/// One language's deploys from source.
#[derive(Debug, Serialize)]
struct Deploys {
    /// The first deploy: a cold build, and new code to compile.
    first_ms: f64,
    first_build_ms: f64,
    /// From the first deploy's API call until Cranelift's code serves.
    first_optimized_ms: f64,
    /// Deploys with one line changed: API call to the first 200.
    changed: Stats,
    /// Of those, the ones that served Cranelift's code from the start.
    changed_optimized_at_once: u32,
    /// Of which the build (the rest: compile, swap, first request).
    changed_build: Stats,
    component_bytes: u64,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    let pid = std::process::id();
    let names = [format!("bench-fn-js-{pid}"), format!("bench-fn-py-{pid}"), format!("bench-fn-rs-{pid}")];
    let created = Created::new(Kind::App);
    for name in &names {
        created.add(name);
    }
    measured(client, &created, args.json, measure(client, &args, &names), render).await
}

/// A JavaScript hello whose `n` changes one line.
fn javascript(n: u32) -> String {
    format!(
        "const deploy = {n};\nexport default {{\n  fetch() {{\n    return new Response(\"Hello from hearth!\\n\");\n  }},\n}};\n"
    )
}

/// A Python hello whose `n` changes one line.
fn python(n: u32) -> String {
    format!(
        "from hearth import Response\n\nDEPLOY = {n}\n\n\ndef handle(request):\n    return Response(\"Hello from hearth!\\n\")\n"
    )
}

async fn measure(client: &Client, args: &Args, names: &[String; 3]) -> anyhow::Result<Report> {
    let status = client.status().await?;
    let ingress: SocketAddr = status
        .ingress
        .as_deref()
        .context("the daemon reports no apps ingress")?
        .parse()
        .context("the daemon reports an ingress address that is not HOST:PORT")?;
    let path = args.component.clone().unwrap_or_else(|| PathBuf::from(HELLO_COMPONENT));
    let component = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read the component {}: build the examples with `make examples`, or pass --component",
            path.display()
        )
    })?;

    eprintln!("[1/3] JavaScript: a first deploy, then {} with one line changed ...", args.runs);
    let javascript = deploys(client, ingress, &names[0], "js", javascript, args.runs).await?;
    eprintln!("[2/3] Python: a first deploy, then {} with one line changed ...", args.python_runs);
    let python = deploys(client, ingress, &names[1], "py", python, args.python_runs).await?;

    let body = DeployApp {
        component_base64: base64::engine::general_purpose::STANDARD.encode(&component),
        manifest: None,
        routes: vec![],
    };
    let deployed = client.deploy_app(&names[2], &body).await?;
    first_ok_within(ingress, &format!("{}.localhost", names[2]), deployed.version.number, READY_LIMIT)
        .await?;
    // Each app is loaded on Cranelift's code, as it serves for good, and
    // with no background compile running beside the load.
    eprintln!("      waiting for each app to serve Cranelift's code ...");
    for name in names {
        wait_optimized(client, name).await?;
    }
    eprintln!(
        "[3/3] Requests per second: {} rounds of {} s each on the JavaScript, Python and Rust hellos ...",
        args.rounds, args.duration
    );
    let wrk = Wrk::with(1, args.connections).await.map_err(anyhow::Error::msg)?;
    let servers = [("javascript", &names[0]), ("python", &names[1]), ("rust hello", &names[2])];
    let mut rounds: Vec<Vec<Load>> = vec![Vec::new(); servers.len()];
    for (_, name) in &servers {
        wrk.run(ingress, &format!("{name}.localhost"), Duration::from_secs(2)).await?;
    }
    for round in 1..=args.rounds {
        for (i, (server, name)) in servers.iter().enumerate() {
            let text =
                wrk.run(ingress, &format!("{name}.localhost"), Duration::from_secs(args.duration)).await?;
            let mut load = parse_wrk(&text).with_context(|| format!("cannot read wrk's report:\n{text}"))?;
            load.server = (*server).to_owned();
            eprintln!("      round {round}: {server} {:.0} requests/s", load.requests_per_sec);
            rounds[i].push(load);
        }
    }
    let throughput = rounds.into_iter().filter_map(median_round).collect();
    Ok(Report {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        javascript,
        python,
        target_changed_js_median_ms: TARGET_CHANGED_JS_MS,
        target_changed_js_fast_ms: TARGET_CHANGED_JS_FAST_MS,
        throughput,
        load_generator: wrk.version,
        rounds: args.rounds,
        duration_secs: args.duration,
    })
}

async fn deploys(
    client: &Client,
    ingress: SocketAddr,
    name: &str,
    lang: &str,
    source: fn(u32) -> String,
    runs: u32,
) -> anyhow::Result<Deploys> {
    let host = format!("{name}.localhost");
    let deploy = |n: u32| {
        let body = DeploySource { lang: lang.into(), source: source(n), manifest: None, routes: vec![] };
        let host = host.clone();
        async move {
            let started = Instant::now();
            let deployed = client.deploy_source(name, &body).await?;
            first_ok_within(ingress, &host, deployed.version.number, READY_LIMIT).await?;
            anyhow::Ok(Deployed {
                started,
                ms: millis(started.elapsed()),
                build_ms: deployed.build_ms.unwrap_or(f64::NAN),
                bytes: deployed.version.size,
                optimized: deployed.tier == Some(CodeTier::Optimized),
            })
        }
    };
    let first = deploy(0).await?;
    wait_optimized(client, name).await?;
    let first_optimized_ms = millis(first.started.elapsed());
    eprintln!(
        "      first: {:.0} ms to the first 200 (build {:.0} ms); Cranelift's code serves after {first_optimized_ms:.0} ms",
        first.ms, first.build_ms
    );
    let (mut changed, mut changed_build, mut at_once) = (Vec::new(), Vec::new(), 0);
    for n in 1..=runs {
        let d = deploy(n).await?;
        eprintln!(
            "      changed {n}: {:.0} ms to the first 200 (build {:.0} ms; {})",
            d.ms,
            d.build_ms,
            if d.optimized { "Cranelift's code at once" } else { "Winch's code first" }
        );
        changed.push(d.ms);
        changed_build.push(d.build_ms);
        at_once += u32::from(d.optimized);
        wait_optimized(client, name).await?;
    }
    Ok(Deploys {
        first_ms: first.ms,
        first_build_ms: first.build_ms,
        first_optimized_ms,
        changed: Stats::of(changed),
        changed_optimized_at_once: at_once,
        changed_build: Stats::of(changed_build),
        component_bytes: first.bytes,
    })
}

/// One deploy from source, timed.
struct Deployed {
    started: Instant,
    ms: f64,
    build_ms: f64,
    bytes: u64,
    /// Whether Cranelift's code served from the deploy on.
    optimized: bool,
}

fn render(r: &Report) -> String {
    let mut out = format!("Handlers from source ({} cores)\n\n", r.cores);
    let mut table = Table::new(vec![
        "DEPLOY",
        "TO FIRST 200 (median)",
        "OF WHICH BUILD",
        "RANGE",
        "CRANELIFT SERVES",
        "COMPONENT",
    ]);
    for (what, d) in [("javascript", &r.javascript), ("python", &r.python)] {
        table.row(vec![
            format!("{what}, first"),
            format!("{:.0} ms", d.first_ms),
            format!("{:.0} ms", d.first_build_ms),
            String::new(),
            format!("after {:.0} ms", d.first_optimized_ms),
            format!("{:.1} MB", d.component_bytes as f64 / 1e6),
        ]);
        table.row(vec![
            format!("{what}, one line changed"),
            format!("{:.0} ms", d.changed.median_ms),
            format!("{:.0} ms", d.changed_build.median_ms),
            format!("{:.0}–{:.0} ms", d.changed.min_ms, d.changed.max_ms),
            format!("at once in {} of {}", d.changed_optimized_at_once, d.changed.samples_ms.len()),
            String::new(),
        ]);
    }
    out.push_str(&table.render());
    for target in [r.target_changed_js_median_ms, r.target_changed_js_fast_ms] {
        let met = r.javascript.changed.median_ms <= target;
        out.push_str(&format!(
            "changed JavaScript handler, deploy to first 200: goal at most {target:.0} ms: {}\n",
            if met { "met" } else { "NOT met" }
        ));
    }
    out.push('\n');
    let mut table = Table::new(vec!["APP", "REQUESTS/S", "P50", "P99", "ERRORS", "ROUNDS"]);
    let rust = r.throughput.iter().find(|l| l.server == "rust hello").map(|l| l.requests_per_sec);
    for load in &r.throughput {
        let ratio =
            rust.map(|rust| format!(" ({:.2}× rust)", load.requests_per_sec / rust)).unwrap_or_default();
        table.row(vec![
            load.server.clone(),
            format!(
                "{:.0}{}",
                load.requests_per_sec,
                if load.server == "rust hello" { String::new() } else { ratio }
            ),
            format!("{:.2} ms", load.p50_ms),
            format!("{:.2} ms", load.p99_ms),
            load.errors.to_string(),
            load.rounds_requests_per_sec.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
        ]);
    }
    out.push_str(&table.render());
    out.push_str(&format!(
        "{} with {} rounds of {} s per app; each app's median round\n",
        r.load_generator, r.rounds, r.duration_secs
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_changed_handler_differs_from_the_last_by_one_line() {
        for source in [javascript as fn(u32) -> String, python] {
            let (a, b) = (source(1), source(2));
            let differ = a.lines().zip(b.lines()).filter(|(x, y)| x != y).count();
            assert_eq!((differ, a.lines().count()), (1, b.lines().count()));
        }
    }

    #[test]
    fn the_median_round_keeps_every_rounds_figure() {
        let load = |rps: f64| Load {
            server: "x".into(),
            requests_per_sec: rps,
            rounds_requests_per_sec: vec![],
            requests: 1,
            p50_ms: 1.0,
            p99_ms: 2.0,
            errors: 0,
        };
        let median = median_round(vec![load(30.0), load(10.0), load(20.0)]).unwrap();
        assert_eq!(median.requests_per_sec, 20.0);
        assert_eq!(median.rounds_requests_per_sec, [30.0, 10.0, 20.0]);
    }
}
