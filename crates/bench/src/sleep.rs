//! `hearth bench sleep`: what a sleeping machine costs, how long a held
//! connection waits for it to wake, and whether any request is lost across
//! sleep/wake cycles under intermittent load.
//!
//! A client of a running daemon on this host: it runs one machine serving
//! HTTP (busybox httpd) with a forwarded port and `sleep_after`, reads its
//! VM process in `/proc` awake and asleep, and times requests through the
//! forward from connect to the first byte of the answer. The machine is
//! removed again, also when the run fails or is interrupted.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hearth_client::Client;
use hearth_client::types::{CreateMachine, Machine, NetworkAttachment};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::output::Table;
use crate::{Created, Kind, Stats, measured, millis};

/// The machine's main process: an HTTP server on port 8080.
const SERVER: &str = "mkdir -p /www && echo awake > /www/index.html && exec busybox httpd -f -p 8080 -h /www";
/// Idle time before the machine sleeps by itself, in the lost-requests part.
const SLEEP_AFTER: &str = "2s";
/// The machine slept by hand does not sleep by itself meanwhile.
const MANUAL_SLEEP_AFTER: &str = "1h";
/// Requests in each burst of the intermittent load.
const BURST: usize = 5;
/// How long a request may wait for its answer (a wake included).
const REQUEST_LIMIT: Duration = Duration::from_secs(90);
/// How long the awake machine's CPU is sampled.
const CPU_WINDOW: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Wake latencies measured (each after a sleep by hand).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Sleep/wake cycles under intermittent load, counting lost requests.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    cycles: u32,
    /// An image with busybox (`hearth image build debian --packages busybox
    /// --name bench-sleep` makes one).
    #[arg(long, default_value = "bench-sleep")]
    image: String,
    /// The network the machine joins.
    #[arg(long, default_value = "default")]
    network: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    backend: String,
    awake_rss_mib: f64,
    awake_cpu_percent: f64,
    /// VM processes left while the machine sleeps (the goal is none).
    asleep_vm_processes: usize,
    asleep_rss_mib: f64,
    /// The saved memory and devices on disk.
    saved_mib: f64,
    /// From `machine sleep` to the state `sleeping`.
    sleep: Stats,
    /// From a connection to the sleeping machine's port to the answer's first byte.
    wake_to_first_byte: Stats,
    /// The same for a request to the machine awake.
    awake_first_byte: Stats,
    cycles: u32,
    requests: usize,
    lost: usize,
}

pub async fn run(client: &Client, data_dir: &Path, args: Args) -> anyhow::Result<()> {
    let created = Created::new(Kind::Machine);
    let json = args.json;
    measured(client, &created, json, measure(client, data_dir, &created, &args), render).await
}

async fn measure(client: &Client, data_dir: &Path, created: &Created, args: &Args) -> anyhow::Result<Report> {
    client.image(&args.image).await.with_context(|| {
        format!(
            "image {} is not here; make one with `hearth image build debian --packages busybox --name {}`",
            args.image, args.image
        )
    })?;
    // Slept by hand first (the costs, the wake latency), then a machine of
    // its own that sleeps by itself between bursts.
    let name = format!("bench-sleep-{}", std::process::id());
    let (machine, port) =
        boot(client, created, &name, MANUAL_SLEEP_AFTER, &args.image, &args.network).await?;
    let pid = machine.pid.context("a running machine has a VM process")?;
    let awake_rss_mib = rss_mib(pid);
    let cpu_before = cpu_ticks(pid);
    tokio::time::sleep(CPU_WINDOW).await;
    let awake_cpu_percent = cpu_percent(cpu_ticks(pid).saturating_sub(cpu_before), CPU_WINDOW);

    let mut sleeps = Vec::new();
    let mut wakes = Vec::new();
    let mut awake = Vec::new();
    let (mut asleep_vm_processes, mut asleep_rss_mib, mut saved_mib) = (0, 0.0, 0.0);
    for run in 1..=args.runs {
        eprintln!("Run {run}/{}: sleep, then wake by a request.", args.runs);
        let started = Instant::now();
        client.sleep_machine(&name).await?;
        wait_for(client, &name, |m| m.state == "sleeping", Duration::from_secs(120)).await?;
        sleeps.push(millis(started.elapsed()));
        if run == 1 {
            let left = vm_processes(&name);
            asleep_vm_processes = left.len();
            asleep_rss_mib = left.iter().map(|&p| rss_mib(p)).fold(0.0, |a, b| a + b);
            saved_mib = dir_mib(&data_dir.join("machines").join(&name).join("sleep"));
        }
        wakes.push(millis(get(port).await.context("a request to the sleeping machine")?));
        awake.push(millis(get(port).await.context("a request to the woken machine")?));
    }

    created.remove(client, &name).await?;

    // Intermittent load: a burst, then silence until it sleeps by itself.
    let name = format!("bench-sleep-{}-idle", std::process::id());
    let (_, port) = boot(client, created, &name, SLEEP_AFTER, &args.image, &args.network).await?;
    let mut lost = 0;
    for cycle in 1..=args.cycles {
        eprintln!("Cycle {cycle}/{}: waiting for it to fall asleep, then a burst of {BURST}.", args.cycles);
        wait_for(client, &name, |m| m.state == "sleeping", Duration::from_secs(120)).await?;
        let burst = (0..BURST).map(|_| get(port));
        lost += futures::future::join_all(burst).await.iter().filter(|r| r.is_err()).count();
    }
    Ok(Report {
        backend: machine.backend.to_string(),
        awake_rss_mib,
        awake_cpu_percent,
        asleep_vm_processes,
        asleep_rss_mib,
        saved_mib,
        sleep: Stats::of(sleeps),
        wake_to_first_byte: Stats::of(wakes),
        awake_first_byte: Stats::of(awake),
        cycles: args.cycles,
        requests: args.cycles as usize * BURST,
        lost,
    })
}

/// Runs a machine serving HTTP on a free forwarded port and waits until
/// it answers.
async fn boot(
    client: &Client,
    created: &Created,
    name: &str,
    sleep_after: &str,
    image: &str,
    network: &str,
) -> anyhow::Result<(Machine, u16)> {
    let port = free_port()?;
    created.add(name);
    client
        .create_machine(&CreateMachine {
            name: Some(name.to_owned()),
            image: image.to_owned(),
            command: Some(vec!["sh".into(), "-c".into(), SERVER.into()]),
            networks: vec![NetworkAttachment { network: network.to_owned(), ip: None }],
            ports: vec![format!("{port}:8080")],
            sleep_after: Some(sleep_after.into()),
            ..CreateMachine::default()
        })
        .await?;
    eprintln!("Booting {name}.");
    let machine = wait_for(client, name, |m| m.state == "running", Duration::from_secs(180)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port).await.is_err() {
        if Instant::now() > deadline {
            bail!("{name}'s server never answered on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((machine, port))
}

fn render(r: &Report) -> String {
    let mut costs = Table::new(vec!["MACHINE", "RSS", "CPU"]);
    costs.row(vec![
        format!("awake ({})", r.backend),
        format!("{:.0} MiB", r.awake_rss_mib),
        format!("{:.1}%", r.awake_cpu_percent),
    ]);
    costs.row(vec![
        format!("asleep ({} VM processes, {:.0} MiB saved)", r.asleep_vm_processes, r.saved_mib),
        format!("{:.0} MiB", r.asleep_rss_mib),
        "0%".into(),
    ]);
    let mut times = Table::new(vec!["MEASURE", "MEDIAN", "MIN", "MAX"]);
    for (what, stats) in [
        ("sleep (machine sleep to sleeping)", &r.sleep),
        ("wake (connect to first byte)", &r.wake_to_first_byte),
        ("awake (connect to first byte)", &r.awake_first_byte),
    ] {
        times.row(vec![
            what.into(),
            format!("{:.0} ms", stats.median_ms),
            format!("{:.0} ms", stats.min_ms),
            format!("{:.0} ms", stats.max_ms),
        ]);
    }
    format!(
        "{}\n{}\nLost requests across {} sleep/wake cycles under intermittent load: {} of {}\n",
        costs.render(),
        times.render(),
        r.cycles,
        r.lost,
        r.requests
    )
}

/// One `GET /` through the forwarded port; the time from connect to the
/// answer's first byte, once the whole answer came and was right.
async fn get(port: u16) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n").await?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await?;
        let first_byte = started.elapsed();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await?;
        Ok::<_, std::io::Error>((first_byte, rest))
    };
    let (first_byte, rest) = tokio::time::timeout(REQUEST_LIMIT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {}s", REQUEST_LIMIT.as_secs()))??;
    if !String::from_utf8_lossy(&rest).trim_end().ends_with("awake") {
        bail!("a wrong answer: {}", String::from_utf8_lossy(&rest));
    }
    Ok(first_byte)
}

async fn wait_for(
    client: &Client,
    name: &str,
    done: impl Fn(&Machine) -> bool,
    limit: Duration,
) -> anyhow::Result<Machine> {
    let started = Instant::now();
    loop {
        let m = client.machine(name).await?;
        if done(&m) {
            return Ok(m);
        }
        if matches!(m.state.as_str(), "failed" | "stopped") {
            bail!("{name} is {}: {}", m.state, m.reason.unwrap_or_default());
        }
        if started.elapsed() > limit {
            bail!("{name} is still {} after {}s", m.state, limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The machine's VM processes (found by the name hearth gives them).
fn vm_processes(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| hearth_machines::vmm::is_vm_process(pid, name))
        .collect()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// User and system clock ticks the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime
    // are the 12th and 13th of them.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn cpu_percent(ticks: u64, window: Duration) -> f64 {
    let per_second =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as f64;
    ticks as f64 / per_second / window.as_secs_f64() * 100.0
}

fn dir_mib(dir: &Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
        })
        .unwrap_or(0);
    bytes as f64 / 1048576.0
}
