//! `hearth bench apps`: hearth's WebAssembly apps against a native hyper
//! server and `wasmtime serve`.
//!
//! A client of a running daemon, because what it measures is hearth itself:
//! deploys go through the API exactly as `hearth app deploy` does, and are
//! timed until the ingress answers 200 from the new version. Throughput is
//! measured with one load generator (`wrk`) against three servers in turn,
//! each answering "Hello from hearth!": the daemon's ingress serving the
//! component, a native Rust hyper server that this process starts on a
//! runtime of its own, and `wasmtime serve` serving the very same component.
//! The app it deploys is removed again, also when it fails or is interrupted.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use hearth_client::Client;
use hearth_client::types::DeployApp;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::output::Table;
use crate::{Created, Kind, measured, millis, percentile};

pub(crate) mod peers;
pub(crate) mod tiers;
#[cfg(test)]
use peers::wrk_millis;
use peers::{NativeServer, WasmtimeServe, Wrk, parse_wrk};

/// What the apps issue asks of a cold deploy, at the median.
const TARGET_COLD_MS: f64 = 150.0;
/// hearth's throughput over native hyper's, at least.
const TARGET_OVER_NATIVE: f64 = 0.5;
/// hearth's throughput over `wasmtime serve`'s, at least.
const TARGET_OVER_WASMTIME: f64 = 1.0;
/// The wasmtime the workspace builds on; `wasmtime serve` should match it.
const WASMTIME_MAJOR: &str = "48";
/// What every server answers, as examples/apps/hello does.
const HELLO: &[u8] = b"Hello from hearth!\n";
/// The component `make examples` builds.
const DEFAULT_COMPONENT: &str = "examples/apps/hello/target/wasm32-wasip2/release/hello.wasm";
/// Load before the measured runs, so that every server (and the CPU) starts warm.
const WARM_UP: Duration = Duration::from_secs(2);
/// Longest wait for a new version's first 200, or for a server to listen.
const READY_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The component to deploy and serve [default: examples/apps/hello as `make examples` builds it].
    #[arg(long, value_name = "PATH")]
    component: Option<PathBuf>,
    /// Deploys per measurement (cold and warm each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Rounds of load: each round loads every server in turn, and each
    /// server's figure is its median round, so that other work on the
    /// machine weighs on every server alike.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Seconds of load per server and round (after a 2 s warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Connections the load generator keeps open.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// The load generator's threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// The `wasmtime` binary [default: `wasmtime` on PATH, else ~/.cargo/bin/wasmtime].
    #[arg(long, value_name = "PATH")]
    wasmtime: Option<PathBuf>,
    /// Cold deploys per component in the tiers section (hello, wstd-echo,
    /// the JavaScript hello).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    tier_runs: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
struct Report {
    component: PathBuf,
    component_bytes: usize,
    cores: usize,
    deploy: DeployLatency,
    /// Cold deploys of each example by tier: first 200 from Winch's code,
    /// then Cranelift's, and each one's requests per second.
    tiers: Vec<Figure<tiers::TierRun>>,
    throughput: Throughput,
}

/// A figure, or why this run could not take it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Figure<T> {
    Measured(T),
    Unavailable { unavailable: String },
}

impl<T> Figure<T> {
    fn measured(&self) -> Option<&T> {
        match self {
            Figure::Measured(t) => Some(t),
            Figure::Unavailable { .. } => None,
        }
    }
}

#[derive(Debug, Serialize)]
struct DeployLatency {
    runs: usize,
    /// New bytes each time (the component with a random custom section):
    /// validate, compile, cache, swap, until the first 200 from the new version.
    cold: Latency,
    /// The daemon's own `duration_ms` of the cold deploys (request to swap).
    cold_in_daemon: Latency,
    /// The same bytes again: the compiled code comes from the cache.
    warm: Latency,
    warm_in_daemon: Latency,
    /// Deploys that did not go the expected way (a cold one served from the
    /// cache, a warm one compiled), if any.
    surprises: Vec<String>,
    target_cold_median_ms: f64,
}

/// Milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Latency {
    median_ms: f64,
    p90_ms: f64,
    min_ms: f64,
    max_ms: f64,
    samples_ms: Vec<f64>,
}

impl Latency {
    fn of(samples: Vec<f64>) -> Latency {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        Latency {
            median_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            min_ms: sorted.first().copied().unwrap_or(f64::NAN),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
            samples_ms: samples,
        }
    }
}

#[derive(Debug, Serialize)]
struct Throughput {
    load_generator: String,
    threads: u32,
    connections: u32,
    rounds: usize,
    /// Per server and round.
    duration_secs: u64,
    hearth: Figure<Load>,
    native_hyper: Figure<Load>,
    wasmtime_serve: Figure<Load>,
    /// hearth's requests per second over native hyper's.
    hearth_over_native: Option<f64>,
    /// hearth's requests per second over `wasmtime serve`'s.
    hearth_over_wasmtime_serve: Option<f64>,
    target_over_native: f64,
    target_over_wasmtime_serve: f64,
}

/// One server under load, as wrk saw it: the round with the median
/// requests per second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Load {
    pub(crate) server: String,
    pub(crate) requests_per_sec: f64,
    /// Every round's requests per second, in the order they ran.
    pub(crate) rounds_requests_per_sec: Vec<f64>,
    pub(crate) requests: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Non-2xx answers plus socket errors: a run with any is suspect.
    pub(crate) errors: u64,
}

/// Runs the bench against the daemon `client` talks to, whose data dir is
/// `data_dir` (where the JavaScript hello's built component is read from).
pub async fn run(client: &Client, data_dir: &Path, args: Args) -> anyhow::Result<()> {
    let name = format!("bench-apps-{}", std::process::id());
    let created = Created::new(Kind::App);
    created.add(&name);
    measured(client, &created, args.json, measure(client, data_dir, &args, &name), render).await
}

async fn measure(client: &Client, data_dir: &Path, args: &Args, name: &str) -> anyhow::Result<Report> {
    let path = args.component.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_COMPONENT));
    let component = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read the component {}: build the examples with `make examples`, or pass --component",
            path.display()
        )
    })?;
    let status = client.status().await?;
    let ingress: SocketAddr = status
        .ingress
        .as_deref()
        .context("the daemon reports no apps ingress")?
        .parse()
        .context("the daemon reports an ingress address that is not HOST:PORT")?;
    let host = format!("{name}.localhost");
    let runs = args.runs as usize;

    eprintln!(
        "[1/4] Deploy latency: {runs} cold deploys (new bytes each) of {} as {name} ...",
        path.display()
    );
    let mut deploys = Deploys::new(client, ingress, &host, name);
    // Untimed, as the throughput runs' warm-up: on this kind of virtual
    // machine the first seconds of work after idling ran at about half speed
    // (a fresh daemon's first cold deploys took 150 ms, 65 ms once the CPUs
    // had been busy for a few seconds, whatever had kept them busy).
    let warm_up = Instant::now();
    let mut warm_ups = 0;
    while warm_ups == 0 || warm_up.elapsed() < WARM_UP {
        deploys.timed(&append_random_section(&component)).await?;
        warm_ups += 1;
    }
    eprintln!("      (after {warm_ups} untimed cold deploys to warm up)");
    let mut last = Vec::new();
    for i in 0..runs {
        last = append_random_section(&component);
        let (total, daemon, compiled) = deploys.timed(&last).await?;
        eprintln!("      cold {i}: {total:.1} ms to the first 200 (daemon {daemon:.1} ms)");
        deploys.record(Phase::Cold, total, daemon, compiled);
    }
    eprintln!(
        "[2/4] Deploy latency: {runs} warm deploys (the last bytes again, from the compiled cache) ..."
    );
    for i in 0..runs {
        let (total, daemon, compiled) = deploys.timed(&last).await?;
        eprintln!("      warm {i}: {total:.1} ms to the first 200 (daemon {daemon:.1} ms)");
        deploys.record(Phase::Warm, total, daemon, compiled);
    }
    let deploy = deploys.finish();

    eprintln!(
        "[+] Tiers: {} cold deploys of each example, then load across a swap from Winch's code to Cranelift's ...",
        args.tier_runs
    );
    let mut tier_runs = Vec::new();
    let tier_run = |component: &tiers::Component, run: anyhow::Result<tiers::TierRun>| match run {
        Ok(run) => Figure::Measured(run),
        Err(e) => {
            eprintln!("      {}: {e:#}", component.label);
            Figure::Unavailable { unavailable: format!("{}: {e:#}", component.label) }
        }
    };
    let (runs, connections) = (args.tier_runs as usize, args.connections);
    for component in tiers::COMPONENTS {
        let run = async {
            tiers::measure(client, ingress, name, component, tiers::example(component)?, runs, connections)
                .await
        };
        tier_runs.push(tier_run(component, run.await));
    }
    eprintln!("      building the JavaScript hello on the daemon, and waiting for its engine's compile ...");
    let javascript = async {
        let built = tiers::javascript(client, ingress, data_dir, name).await?;
        tiers::measure(client, ingress, name, &tiers::JAVASCRIPT, built, runs, connections).await
    };
    tier_runs.push(tier_run(&tiers::JAVASCRIPT, javascript.await));

    // The component exactly as built, for the throughput runs.
    deploys_plain(client, ingress, &host, name, &component).await?;
    eprintln!(
        "[3/4] Starting the peers: native hyper in this process, `wasmtime serve` of the same component ..."
    );
    let native = NativeServer::start();
    let wasmtime = WasmtimeServe::start(args.wasmtime.as_deref(), &path).await;
    if let Err(e) = &wasmtime {
        eprintln!("      wasmtime serve is unavailable: {e:#}");
    }
    let mut peers = [
        Peer::new(format!("hearth ingress ({})", file_name(&path)), Ok(ingress)),
        Peer::new(
            "native hyper (in-process, own runtime)".into(),
            native.as_ref().map(|n| n.addr).map_err(|e| format!("{e:#}")),
        ),
        Peer::new(
            wasmtime
                .as_ref()
                .map_or_else(|_| "wasmtime serve".into(), |w| format!("wasmtime serve {}", w.version)),
            wasmtime.as_ref().map(|w| w.addr).map_err(|e| format!("{e:#}")),
        ),
    ];
    let wrk = Wrk::find(args).await;
    let rounds = args.rounds as usize;
    let duration = Duration::from_secs(args.duration);
    eprintln!(
        "[4/4] Throughput: {rounds} round(s) of {} s per server, the servers in turn, after a {} s warm-up each ...",
        duration.as_secs(),
        WARM_UP.as_secs()
    );
    match &wrk {
        Ok(wrk) => {
            for peer in &mut peers {
                peer.warm_up(wrk, &host).await;
            }
            for round in 1..=rounds {
                for peer in &mut peers {
                    peer.round(wrk, &host, duration, round).await;
                }
            }
        }
        Err(why) => {
            for peer in &mut peers {
                peer.addr = Err(why.clone());
            }
        }
    }
    if let Ok(native) = native {
        native.stop().await;
    }
    if let Ok(mut wasmtime) = wasmtime {
        wasmtime.stop().await;
    }

    let [hearth, native, wasmtime] = peers.map(Peer::figure);
    let ratio = |peer: &Figure<Load>| match (hearth.measured(), peer.measured()) {
        (Some(h), Some(p)) if p.requests_per_sec > 0.0 => Some(h.requests_per_sec / p.requests_per_sec),
        _ => None,
    };
    let throughput = Throughput {
        load_generator: wrk.as_ref().map_or_else(|_| "wrk (missing)".to_owned(), |w| w.version.clone()),
        threads: args.threads,
        connections: args.connections,
        rounds,
        duration_secs: args.duration,
        hearth_over_native: ratio(&native),
        hearth_over_wasmtime_serve: ratio(&wasmtime),
        hearth,
        native_hyper: native,
        wasmtime_serve: wasmtime,
        target_over_native: TARGET_OVER_NATIVE,
        target_over_wasmtime_serve: TARGET_OVER_WASMTIME,
    };
    Ok(Report {
        component: path,
        component_bytes: component.len(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        deploy,
        tiers: tier_runs,
        throughput,
    })
}

/// One server under load, round after round.
struct Peer {
    label: String,
    /// Where it listens, or why it is not measured (any more).
    addr: Result<SocketAddr, String>,
    rounds: Vec<Load>,
}

impl Peer {
    fn new(label: String, addr: Result<SocketAddr, String>) -> Peer {
        Peer { label, addr, rounds: vec![] }
    }

    async fn warm_up(&mut self, wrk: &Wrk, host: &str) {
        let Ok(addr) = self.addr else { return };
        if let Err(e) = wrk.run(addr, host, WARM_UP).await {
            eprintln!("      {}: the warm-up failed: {e:#}", self.label);
            self.addr = Err(format!("the warm-up failed: {e:#}"));
        }
    }

    async fn round(&mut self, wrk: &Wrk, host: &str, duration: Duration, round: usize) {
        let Ok(addr) = self.addr else { return };
        let measured = wrk
            .run(addr, host, duration)
            .await
            .and_then(|text| parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}")));
        match measured {
            Ok(mut load) => {
                eprintln!(
                    "      round {round}: {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms{}",
                    self.label,
                    load.requests_per_sec,
                    load.p50_ms,
                    load.p99_ms,
                    if load.errors > 0 { format!(", {} errors", load.errors) } else { String::new() }
                );
                load.server = self.label.clone();
                self.rounds.push(load);
            }
            Err(e) => {
                eprintln!("      round {round}: {}: failed: {e:#}", self.label);
                self.addr = Err(format!("round {round} failed: {e:#}"));
            }
        }
    }

    /// The round with the median requests per second, with every round's
    /// figure beside it.
    fn figure(self) -> Figure<Load> {
        if let Err(why) = self.addr {
            return Figure::Unavailable { unavailable: why };
        }
        match median_round(self.rounds) {
            Some(median) => Figure::Measured(median),
            None => Figure::Unavailable { unavailable: "no round was measured".into() },
        }
    }
}

/// The round with the median requests per second (the lower middle one
/// for an even count), with every round's figure, in run order, beside it.
pub(crate) fn median_round(rounds: Vec<Load>) -> Option<Load> {
    let per_round: Vec<f64> = rounds.iter().map(|l| l.requests_per_sec).collect();
    let mut sorted = rounds;
    sorted.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
    let mut median = sorted.get(sorted.len().saturating_sub(1) / 2).cloned()?;
    median.rounds_requests_per_sec = per_round;
    Some(median)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The component with a custom section of 16 random bytes appended: the
/// same program, a different hash, so the daemon must compile it.
fn append_random_section(component: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16);
    for i in 0..2 {
        // Each `RandomState` has keys of its own, random per process.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_usize(i);
        payload.extend_from_slice(&hasher.finish().to_le_bytes());
    }
    hearth_apps::append_custom_section(component, "hearth-bench", &payload)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Cold,
    Warm,
}

/// Deploys through the API and times them to the first 200.
struct Deploys<'a> {
    client: &'a Client,
    ingress: SocketAddr,
    host: &'a str,
    name: &'a str,
    cold: (Vec<f64>, Vec<f64>),
    warm: (Vec<f64>, Vec<f64>),
    surprises: Vec<String>,
}

impl<'a> Deploys<'a> {
    fn new(client: &'a Client, ingress: SocketAddr, host: &'a str, name: &'a str) -> Self {
        Deploys {
            client,
            ingress,
            host,
            name,
            cold: Default::default(),
            warm: Default::default(),
            surprises: vec![],
        }
    }

    /// Deploys `bytes`; returns the milliseconds from the API call to the
    /// first 200 from the new version, the daemon's own milliseconds, and
    /// whether it compiled.
    async fn timed(&self, bytes: &[u8]) -> anyhow::Result<(f64, f64, bool)> {
        let started = Instant::now();
        let body = DeployApp {
            component_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            manifest: None,
            routes: vec![],
        };
        let deployed = self.client.deploy_app(self.name, &body).await?;
        first_ok(self.ingress, self.host, deployed.version.number).await?;
        let total = millis(started.elapsed());
        // Untimed: Cranelift's code, which the compiled cache keeps, serves
        // before the next deploy, so that no background compile overlaps it
        // and a warm deploy of these bytes finds them cached.
        tiers::wait_optimized(self.client, self.name).await?;
        Ok((total, deployed.duration_ms, deployed.compiled))
    }

    fn record(&mut self, phase: Phase, total: f64, daemon: f64, compiled: bool) {
        let (samples, expected) = match phase {
            Phase::Cold => (&mut self.cold, true),
            Phase::Warm => (&mut self.warm, false),
        };
        samples.0.push(total);
        samples.1.push(daemon);
        if compiled != expected {
            self.surprises.push(format!(
                "a {} deploy {}",
                if phase == Phase::Cold { "cold" } else { "warm" },
                if compiled { "compiled" } else { "was served from the compiled cache" }
            ));
        }
    }

    fn finish(self) -> DeployLatency {
        DeployLatency {
            runs: self.cold.0.len(),
            cold: Latency::of(self.cold.0),
            cold_in_daemon: Latency::of(self.cold.1),
            warm: Latency::of(self.warm.0),
            warm_in_daemon: Latency::of(self.warm.1),
            surprises: self.surprises,
            target_cold_median_ms: TARGET_COLD_MS,
        }
    }
}

async fn deploys_plain(
    client: &Client,
    ingress: SocketAddr,
    host: &str,
    name: &str,
    component: &[u8],
) -> anyhow::Result<()> {
    let body = DeployApp {
        component_base64: base64::engine::general_purpose::STANDARD.encode(component),
        manifest: None,
        routes: vec![],
    };
    let deployed = client.deploy_app(name, &body).await?;
    first_ok(ingress, host, deployed.version.number).await?;
    // The throughput runs measure Cranelift's code.
    tiers::wait_optimized(client, name).await
}

/// Waits until the ingress answers 200 for `host` from `version`. Each try
/// is a new connection, as a new client's first request would be.
async fn first_ok(ingress: SocketAddr, host: &str, version: u32) -> anyhow::Result<()> {
    first_ok_within(ingress, host, version, READY_LIMIT).await
}

/// As [`first_ok`], waiting at most `limit`.
pub(crate) async fn first_ok_within(
    ingress: SocketAddr,
    host: &str,
    version: u32,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match get(ingress, host).await {
            Ok((StatusCode::OK, Some(v))) if v == version => return Ok(()),
            Ok((status, v)) => last = format!("{status} from version {v:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("version {version} of {host} did not answer 200 within {} s (last: {last})", limit.as_secs())
}

/// One GET / on a new connection: the status and `x-hearth-version`.
pub(crate) async fn get(addr: SocketAddr, host: &str) -> anyhow::Result<(StatusCode, Option<u32>)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get("/").header(HOST, host).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let version =
        response.headers().get("x-hearth-version").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    response.into_body().collect().await?;
    drop(sender);
    conn.abort();
    Ok((status, version))
}

fn render_tiers(runs: &[Figure<tiers::TierRun>]) -> String {
    let mut table = Table::new(vec![
        "COLD DEPLOY BY TIER",
        "SIZE",
        "FIRST 200 (MEDIAN, P90)",
        "GOAL",
        "CRANELIFT SERVING AFTER",
        "REQ/S WINCH",
        "REQ/S CRANELIFT",
    ]);
    let rate = |figure: &Figure<tiers::Rate>| match figure {
        Figure::Measured(r) => format!("{:.0} ({:.0} ms)", r.requests_per_sec, r.window_ms),
        Figure::Unavailable { unavailable } => format!("- ({})", crate::output::cell(unavailable, 60)),
    };
    let mut notes = Vec::new();
    for run in runs {
        match run {
            Figure::Measured(t) => {
                table.row(vec![
                    t.component.clone(),
                    format!("{:.0} KiB", t.bytes as f64 / 1024.0),
                    format!("{:.1} ms, {:.1} ms", t.first_200.median_ms, t.first_200.p90_ms),
                    t.goal_ms.map_or_else(
                        || "—".to_owned(),
                        |goal| format!("≤ {goal} ms: {}", verdict(t.first_200.median_ms <= goal)),
                    ),
                    format!("{:.0} ms", t.optimized_serving.median_ms),
                    rate(&t.baseline),
                    rate(&t.optimized),
                ]);
                if t.not_baseline > 0 {
                    notes.push(format!(
                        "note: {} of {}'s cold deploys did not serve Winch's code first (see `hearth app inspect`: \
                         a shared engine, a refusal or the compiled cache)\n",
                        t.not_baseline, t.component
                    ));
                }
            }
            Figure::Unavailable { unavailable } => notes.push(format!("unavailable: {unavailable}\n")),
        }
    }
    let mut out = table.render();
    out.push_str(
        "(REQ/S WINCH is over the window from a new version's first answer to Cranelift's code taking over, \
         while Cranelift compiles on the same cores; REQ/S CRANELIFT over the seconds after.)\n",
    );
    for note in notes {
        out.push_str(&note);
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn render(r: &Report) -> String {
    let t = &r.throughput;
    let mut out = format!(
        "hearth bench apps: {} ({:.1} KiB), {} deploys each; {}, {} thread(s), {} connections, \
         {} round(s) of {} s per server; {} cores\n\n",
        r.component.display(),
        r.component_bytes as f64 / 1024.0,
        r.deploy.runs,
        t.load_generator,
        t.threads,
        t.connections,
        t.rounds,
        t.duration_secs,
        r.cores
    );
    let d = &r.deploy;
    let mut table = Table::new(vec![
        "DEPLOY (API call → first 200 from the new version)",
        "MEDIAN",
        "P90",
        "IN THE DAEMON",
    ]);
    table.row(vec![
        "cold: new bytes (Winch compiles, swap)".into(),
        format!("{:.1} ms", d.cold.median_ms),
        format!("{:.1} ms", d.cold.p90_ms),
        format!("median {:.1} ms", d.cold_in_daemon.median_ms),
    ]);
    table.row(vec![
        "warm: same bytes (compiled cache)".into(),
        format!("{:.1} ms", d.warm.median_ms),
        format!("{:.1} ms", d.warm.p90_ms),
        format!("median {:.1} ms", d.warm_in_daemon.median_ms),
    ]);
    out.push_str(&table.render());
    out.push_str(&format!(
        "cold median < {} ms: {}\n",
        d.target_cold_median_ms,
        verdict(d.cold.median_ms < d.target_cold_median_ms)
    ));
    for surprise in &d.surprises {
        out.push_str(&format!("note: {surprise}\n"));
    }

    out.push('\n');
    out.push_str(&render_tiers(&r.tiers));

    out.push('\n');
    let mut table = Table::new(vec![
        "HELLO WORLD UNDER LOAD (MEDIAN ROUND)",
        "REQ/S",
        "P50",
        "P99",
        "ERRORS",
        "EACH ROUND",
    ]);
    for (label, figure) in [
        ("hearth ingress", &t.hearth),
        ("native hyper", &t.native_hyper),
        ("wasmtime serve", &t.wasmtime_serve),
    ] {
        match figure {
            Figure::Measured(l) => table.row(vec![
                l.server.clone(),
                format!("{:.0}", l.requests_per_sec),
                format!("{:.2} ms", l.p50_ms),
                format!("{:.2} ms", l.p99_ms),
                l.errors.to_string(),
                l.rounds_requests_per_sec.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" "),
            ]),
            Figure::Unavailable { unavailable } => table.row(vec![
                label.into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("unavailable: {}", crate::output::cell(unavailable, 160)),
            ]),
        }
    }
    out.push_str(&table.render());
    for (label, ratio, target) in [
        ("hearth / native hyper", t.hearth_over_native, t.target_over_native),
        ("hearth / wasmtime serve", t.hearth_over_wasmtime_serve, t.target_over_wasmtime_serve),
    ] {
        match ratio {
            Some(ratio) => out.push_str(&format!(
                "{label}: {ratio:.2} (target ≥ {target}: {})\n",
                verdict(ratio >= target)
            )),
            None => out.push_str(&format!("{label}: not measured\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "\
Running 5s test @ http://127.0.0.1:18080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.17ms  674.37us  12.04ms   79.17%
    Req/Sec    13.98k     1.77k   15.42k    86.00%
  Latency Distribution
     50%  786.00us
     75%    1.48ms
     90%    1.81ms
     99%    1.02s
  69574 requests in 5.00s, 11.68MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  13904.49
Transfer/sec:      2.33MB
";

    #[test]
    fn wrk_reports_are_read() {
        let load = parse_wrk(WRK).expect("parsed");
        assert_eq!(load.requests, 69574);
        assert_eq!(load.requests_per_sec, 13904.49);
        assert!((load.p50_ms - 0.786).abs() < 1e-9, "{}", load.p50_ms);
        assert_eq!(load.p99_ms, 1020.0);
        assert_eq!(load.errors, 7);
        assert!(parse_wrk("wrk: command failed").is_none());
    }

    #[test]
    fn wrk_durations_have_units() {
        assert_eq!(wrk_millis("1.50ms"), Some(1.5));
        assert_eq!(wrk_millis("2.00s"), Some(2000.0));
        assert_eq!(wrk_millis("1.00m"), Some(60000.0));
        assert_eq!(wrk_millis("12"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 5.0);
        assert_eq!(percentile(&sorted, 90.0), 9.0);
        assert!(percentile(&[], 50.0).is_nan());
        let latency = Latency::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((latency.min_ms, latency.median_ms, latency.max_ms), (1.0, 2.0, 3.0));
        assert_eq!(latency.samples_ms, vec![3.0, 1.0, 2.0]);
    }

    #[test]
    fn random_sections_change_the_bytes_each_time() {
        let base = b"\0asm\x0d\0\x01\0".to_vec();
        let (a, b) = (append_random_section(&base), append_random_section(&base));
        assert_eq!(&a[..8], &base[..]);
        assert_ne!(a, b);
    }
}
