//! `hearth bench machines`: hearth's machines against a bare QEMU boot.
//!
//! A client of a running daemon, because what it measures is hearth itself:
//! boots go through the API exactly as `hearth machine run` does, exec round
//! trips go through the API's WebSocket, and the peer is QEMU started by hand
//! with the arguments, kernel and initramfs hearth uses, timed to the moment
//! the guest agent starts as `/init`. Every machine it creates is removed
//! again, also when it fails or is interrupted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use hearth_client::types::{CreateMachine, ExecEnd, ExecStart, Machine};
use hearth_client::{Client, Endpoint, Error as ClientError};
use hearth_machines::vmm::{self, Backend, VmConfig, VmFiles, qemu};
use hearth_machines::{guest, kernel};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::output::Table;
use crate::{Created, Kind, Stats, measured, millis, percentile};

/// The overhead ratio the machines issue asks for.
const TARGET_RATIO: f64 = 1.3;
/// Exec round trips per run.
const EXECS_PER_RUN: usize = 20;
/// How long the memory figure's machine sits idle first.
const IDLE: Duration = Duration::from_secs(3);
/// How often a booting machine's state is read. Short, because it bounds
/// how late the wall time can notice `running`.
const POLL: Duration = Duration::from_millis(20);
/// How often the bare guest's console is read.
const CONSOLE_POLL: Duration = Duration::from_millis(5);
/// Longest a boot may take (software emulation on a busy host is slow).
const BOOT_LIMIT: Duration = Duration::from_secs(180);
/// The agent's first console line: `/init` is running.
const AGENT_STARTED: &str = "hearth-agent: starting";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Boots per measurement; the exec round trips are 20 per run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// The image the machines boot (it must be there: `hearth image ls`).
    #[arg(long, default_value = "debian:bookworm")]
    image: String,
    /// Take the bare boot's kernel and initramfs from this cache dir, as
    /// `hearth serve --cache-dir` does [default: the files the daemon's own VM
    /// process booted, else DATA_DIR/cache].
    #[arg(long, value_name = "DIR", env = "HEARTH_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// The guest agent for the initramfs with --cache-dir [default: found as `hearth serve` finds it].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
struct Report {
    image: String,
    runs: usize,
    /// The backend new machines get, from `hearth status`.
    default_backend: String,
    /// What the daemon found out about KVM.
    kvm: String,
    hearth_boot: HearthBoot,
    bare_boot: Figure<BareBoot>,
    overhead: Option<Overhead>,
    exec: ExecLatency,
    memory: Figure<IdleMemory>,
}

/// A figure, or why this run could not take it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Figure<T> {
    Measured(T),
    Unavailable { unavailable: String },
}

/// Boot to agent-ready through hearth's API.
#[derive(Debug, Serialize)]
struct HearthBoot {
    backend: String,
    /// From the create call until the API says `running`.
    wall: Stats,
    /// The daemon's own `boot_ms`: from launching the VMM to the agent's first answer.
    daemon_boot: Stats,
}

/// QEMU started by hand with hearth's arguments, timed to `/init`.
#[derive(Debug, Serialize)]
struct BareBoot {
    backend: String,
    until: &'static str,
    kernel: PathBuf,
    initrd: PathBuf,
    /// Where the kernel and initramfs paths came from.
    payload_from: String,
    boot: Stats,
}

#[derive(Debug, Serialize)]
struct Overhead {
    /// Median hearth wall time over median bare boot.
    wall_over_bare: f64,
    /// Median daemon `boot_ms` over median bare boot.
    daemon_boot_over_bare: f64,
    target: f64,
}

#[derive(Debug, Serialize)]
struct ExecLatency {
    backend: String,
    command: &'static str,
    /// Timed round trips, after one untimed warm-up.
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct IdleMemory {
    backend: String,
    pid: u32,
    /// `pss` from smaps_rollup, or `rss` where that is unreadable.
    measure: &'static str,
    mib: f64,
    configured_mib: u32,
    idle_secs: u64,
}

impl Stats {
    fn seconds(&self) -> String {
        format!(
            "median {:.2} s (min {:.2} s, max {:.2} s)",
            self.median_ms / 1000.0,
            self.min_ms / 1000.0,
            self.max_ms / 1000.0
        )
    }
}

pub async fn run(client: &Client, data_dir: &Path, args: Args) -> anyhow::Result<()> {
    let created = Created::new(Kind::Machine);
    measured(client, &created, args.json, measure(client, data_dir, &args, &created), render).await
}

async fn measure(client: &Client, data_dir: &Path, args: &Args, created: &Created) -> anyhow::Result<Report> {
    let status = client.status().await?;
    client.image(&args.image).await.with_context(|| {
        format!(
            "the benchmark boots {}: build it with `hearth image build debian` or name another with --image",
            args.image
        )
    })?;
    let remote = matches!(client.endpoint(), Endpoint::Tcp { .. });
    let runs = args.runs as usize;

    eprintln!(
        "[1/4] Booting {runs} machine(s) from {} through hearth (default backend {}) ...",
        args.image, status.host.default_backend
    );
    let mut walls = Vec::with_capacity(runs);
    let mut daemon_boots = Vec::with_capacity(runs);
    let mut kept = None;
    for i in 0..runs {
        let name = format!("bench-{}-{i}", std::process::id());
        let (wall, machine) = boot_through_hearth(client, &name, &args.image, created).await?;
        let daemon_ms = machine.boot_ms.map_or(f64::NAN, |ms| ms as f64);
        eprintln!(
            "      {name}: running after {:.2} s (daemon boot_ms {daemon_ms:.0}) on {}",
            wall.as_secs_f64(),
            machine.backend
        );
        walls.push(millis(wall));
        daemon_boots.push(daemon_ms);
        if i + 1 == runs {
            kept = Some(machine);
        } else {
            created.remove(client, &name).await?;
        }
    }
    let machine = kept.context("no run kept a machine")?;
    let hearth_boot = HearthBoot {
        backend: machine.backend.to_string(),
        wall: Stats::of(walls),
        daemon_boot: Stats::of(daemon_boots),
    };
    let daemon_payload = if remote { None } else { machine.pid.and_then(vm_payload) };

    let count = runs * EXECS_PER_RUN;
    eprintln!("[2/4] Exec round trips: {count} sequential `true` in {} ...", machine.name);
    let exec = exec_latency(client, &machine, count).await?;
    eprintln!("      p50 {:.1} ms, p99 {:.1} ms", exec.p50_ms, exec.p99_ms);

    eprintln!("[3/4] Memory: {} idles for {} s ...", machine.name, IDLE.as_secs());
    tokio::time::sleep(IDLE).await;
    let memory = idle_memory(&machine, remote);
    created.remove(client, &machine.name).await?;

    // Last, with no machine of ours running, so it competes with nothing.
    eprintln!("[4/4] Booting the same kernel and initramfs with bare QEMU, {runs} time(s) ...");
    let bare_boot = match bare_boots(&machine, args, data_dir, daemon_payload, runs).await {
        Ok(bare) => Figure::Measured(bare),
        Err(error) => {
            let reason = format!("{error:#}");
            eprintln!("      unavailable: {reason}");
            Figure::Unavailable { unavailable: reason }
        }
    };
    let overhead = match &bare_boot {
        Figure::Measured(bare) => Some(Overhead {
            wall_over_bare: hearth_boot.wall.median_ms / bare.boot.median_ms,
            daemon_boot_over_bare: hearth_boot.daemon_boot.median_ms / bare.boot.median_ms,
            target: TARGET_RATIO,
        }),
        Figure::Unavailable { .. } => None,
    };
    Ok(Report {
        image: args.image.clone(),
        runs,
        default_backend: status.host.default_backend.to_string(),
        kvm: status.host.kvm.detail,
        hearth_boot,
        bare_boot,
        overhead,
        exec,
        memory,
    })
}

/// Creates `name` with the daemon's defaults and waits for `running`;
/// returns the time from the create call and the machine as it is then.
async fn boot_through_hearth(
    client: &Client,
    name: &str,
    image: &str,
    created: &Created,
) -> anyhow::Result<(Duration, Machine)> {
    // Recorded first: a create that fails half-way is still cleaned up.
    created.add(name);
    let started = Instant::now();
    client
        .create_machine(&CreateMachine {
            name: Some(name.to_owned()),
            image: image.to_owned(),
            cpus: None,
            memory_mib: None,
            command: None,
            backend: None,
            kernel: None,
            auto_remove: false,
            no_start: false,
            // The bare peer boots without a NIC: so does this machine.
            networks: vec![],
            no_network: true,
            ports: vec![],
            disk_mib: None,
            ..CreateMachine::default()
        })
        .await?;
    loop {
        let machine = client.machine(name).await?;
        match machine.state.as_str() {
            "running" => return Ok((started.elapsed(), machine)),
            "failed" | "stopped" => bail!(
                "{name} did not boot: {}",
                machine.reason.unwrap_or_else(|| format!("it is {}", machine.state))
            ),
            _ if started.elapsed() > BOOT_LIMIT => {
                bail!("{name} is still {} after {} s", machine.state, BOOT_LIMIT.as_secs())
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

async fn exec_latency(client: &Client, machine: &Machine, count: usize) -> anyhow::Result<ExecLatency> {
    let argv = vec!["true".to_owned()];
    // The first session may set up what later ones reuse; it is not timed.
    exec_quiet(client, &machine.name, argv.clone()).await?;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let code = exec_quiet(client, &machine.name, argv.clone()).await?;
        samples.push(millis(started.elapsed()));
        if code != 0 {
            bail!("`true` exited with {code} in {}", machine.name);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(ExecLatency {
        backend: machine.backend.to_string(),
        command: "true",
        count,
        p50_ms: percentile(&samples, 50.0),
        p99_ms: percentile(&samples, 99.0),
        max_ms: samples.last().copied().unwrap_or(f64::NAN),
    })
}

/// Runs `argv` in a running machine with no stdin and no terminal, throws
/// its output away and returns its exit code (`hearth bench` times this).
async fn exec_quiet(client: &Client, name: &str, argv: Vec<String>) -> anyhow::Result<i32> {
    let mut socket = client.exec_socket(name).await?;
    let start = ExecStart { argv, env: vec![], cwd: None, tty: None, stdin: false };
    socket.send(Message::Text(serde_json::to_string(&start)?.into())).await?;
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Text(text)) => return exit_code(&text),
            Ok(_) => {}
            Err(e) => bail!("the exec session broke off: {e}"),
        }
    }
    bail!("the daemon ended the exec session without an exit code")
}

/// The exit code in the session's closing message (128 + N for signal N), as
/// `hearth machine exec` reads it.
fn exit_code(end: &str) -> anyhow::Result<i32> {
    match serde_json::from_str::<ExecEnd>(end)? {
        ExecEnd::Exit { code: Some(code), .. } => Ok(code),
        ExecEnd::Exit { signal, .. } => Ok(128 + signal.unwrap_or(0)),
        ExecEnd::Error(detail) => Err(ClientError::Api { status: hyper::StatusCode::OK, detail }.into()),
    }
}

fn idle_memory(machine: &Machine, remote: bool) -> Figure<IdleMemory> {
    let unavailable = |why: &str| Figure::Unavailable { unavailable: why.to_owned() };
    if remote {
        return unavailable(
            "the daemon is on another host (--host); its VM processes cannot be read from here",
        );
    }
    let Some(pid) = machine.pid else { return unavailable("the daemon reported no VM process id") };
    if !vmm::is_vm_process(pid, &machine.name) {
        return unavailable("the VM process the daemon reported is not running on this host");
    }
    let Some((measure, kib)) = process_memory_kib(pid) else {
        return unavailable("neither /proc/PID/smaps_rollup nor /proc/PID/status could be read");
    };
    Figure::Measured(IdleMemory {
        backend: machine.backend.to_string(),
        pid,
        measure,
        mib: kib as f64 / 1024.0,
        configured_mib: machine.memory_mib,
        idle_secs: IDLE.as_secs(),
    })
}

/// The process's proportional set size, or its resident set where the
/// rollup is unreadable (older kernels, other users' processes).
fn process_memory_kib(pid: u32) -> Option<(&'static str, u64)> {
    let read = |file: &str| std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok();
    if let Some(kib) = read("smaps_rollup").as_deref().and_then(|t| kib_field(t, "Pss:")) {
        return Some(("pss", kib));
    }
    read("status").as_deref().and_then(|t| kib_field(t, "VmRSS:")).map(|kib| ("rss", kib))
}

/// The value of a `Field:   1234 kB` line in a /proc file.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
}

/// The `-kernel` and `-initrd` a running VM process was started with: the
/// files themselves where a confined QEMU got them as descriptors
/// (`/proc/self/fd/N`, its own).
fn vm_payload(pid: u32) -> Option<(PathBuf, PathBuf)> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let (kernel, initrd) = payload_in_argv(&argv)?;
    let resolve = |path: PathBuf| match path.strip_prefix("/proc/self/fd") {
        Ok(fd) => std::fs::read_link(Path::new(&format!("/proc/{pid}/fd")).join(fd)).ok(),
        Err(_) => Some(path),
    };
    Some((resolve(kernel)?, resolve(initrd)?))
}

fn payload_in_argv(argv: &[String]) -> Option<(PathBuf, PathBuf)> {
    let after =
        |flag: &str| argv.iter().position(|a| a == flag).and_then(|i| argv.get(i + 1)).map(PathBuf::from);
    Some((after("-kernel")?, after("-initrd")?))
}

/// The kernel and initramfs for the bare boot, and where they came from.
async fn bare_payload(
    args: &Args,
    data_dir: &Path,
    daemon: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let cache = match (&args.cache_dir, daemon) {
        (Some(dir), _) => dir.clone(),
        (None, Some((kernel, initrd))) => {
            return Ok((kernel, initrd, "the command line of the daemon's VM process".to_owned()));
        }
        (None, None) => data_dir.join("cache"),
    };
    let agent = match &args.agent {
        Some(path) => path.clone(),
        None => guest::find_agent().context("cannot find the static guest agent; pass --agent PATH")?,
    };
    let from = format!("the cache {} (agent {})", cache.display(), agent.display());
    let (kernel, initrd) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let kernel = kernel::debian_cloud_kernel(&cache.join("kernels"))?;
        let initrd = guest::initramfs(&cache.join("initramfs"), &kernel, &agent)?;
        Ok((kernel.vmlinuz, initrd))
    })
    .await??;
    Ok((kernel, initrd, from))
}

async fn bare_boots(
    machine: &Machine,
    args: &Args,
    data_dir: &Path,
    daemon_payload: Option<(PathBuf, PathBuf)>,
    runs: usize,
) -> anyhow::Result<BareBoot> {
    let backend: Backend = machine.backend.as_str().parse().map_err(|e: String| anyhow!(e))?;
    if backend == Backend::Firecracker {
        bail!("the machines ran on Firecracker; the bare peer is QEMU only");
    }
    let (kernel, initrd, payload_from) = bare_payload(args, data_dir, daemon_payload).await?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let name = format!("bench-bare-{}-{i}", std::process::id());
        let config = VmConfig {
            name: name.clone(),
            dir: PathBuf::new(),
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            // The daemon's command line, less the root disk and entrypoint this guest has not got.
            cmdline: format!("console=ttyS0 quiet panic=-1 hearth.hostname={name}"),
            disk: None,
            disk_base: None,
            cpus: machine.cpus,
            memory_mib: machine.memory_mib,
            nics: vec![],
        };
        let took = bare_boot(backend, config).await?;
        eprintln!("      {name}: /init after {:.2} s", took.as_secs_f64());
        samples.push(millis(took));
    }
    Ok(BareBoot {
        backend: backend.to_string(),
        until: AGENT_STARTED,
        kernel,
        initrd,
        payload_from,
        boot: Stats::of(samples),
    })
}

/// Starts QEMU in the foreground with hearth's arguments and times it from
/// spawn to the agent's first console line.
async fn bare_boot(backend: Backend, mut config: VmConfig) -> anyhow::Result<Duration> {
    let dir = tempfile::Builder::new().prefix("hearth-bench-").tempdir()?;
    config.dir = dir.path().to_owned();
    let console = VmFiles::in_dir(dir.path()).console;
    // hearth's own arguments, but no user to drop to: bare QEMU as it is run by hand.
    let argv = qemu::args(backend, &config, None)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(qemu::BINARY)
        .args(&argv)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", qemu::BINARY))?;
    let outcome = loop {
        let text = std::fs::read(&console).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(AGENT_STARTED) {
            break Ok(started.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            break Err(anyhow!("{} exited ({status}) before /init ran: {}", qemu::BINARY, stderr.trim()));
        }
        if started.elapsed() > BOOT_LIMIT {
            break Err(anyhow!("the bare guest did not reach /init within {} s", BOOT_LIMIT.as_secs()));
        }
        tokio::time::sleep(CONSOLE_POLL).await;
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    outcome
}

fn render(r: &Report) -> String {
    let mut out = format!(
        "hearth bench machines: {}, {} run(s); machines run on {} by default (KVM: {})\n\n",
        r.image,
        r.runs,
        r.default_backend,
        crate::output::cell(r.kvm.lines().next().unwrap_or_default(), 100)
    );
    let mut table = Table::new(vec!["MEASURE", "BACKEND", "RESULT"]);
    let hb = &r.hearth_boot;
    table.row(vec!["boot to agent-ready through hearth".into(), hb.backend.clone(), hb.wall.seconds()]);
    table.row(vec![
        "  of which daemon boot_ms (launch→agent)".into(),
        hb.backend.clone(),
        hb.daemon_boot.seconds(),
    ]);
    match &r.bare_boot {
        Figure::Measured(b) => {
            table.row(vec!["bare QEMU boot to /init".into(), b.backend.clone(), b.boot.seconds()])
        }
        Figure::Unavailable { unavailable } => table.row(vec![
            "bare QEMU boot to /init".into(),
            "-".into(),
            format!("unavailable: {unavailable}"),
        ]),
    }
    if let Some(o) = &r.overhead {
        let verdict = if o.wall_over_bare <= o.target { "meets" } else { "misses" };
        table.row(vec![
            format!("hearth / bare, medians (target ≤ {})", o.target),
            "-".into(),
            format!(
                "{:.2} ({verdict} the target); daemon boot_ms / bare {:.2}",
                o.wall_over_bare, o.daemon_boot_over_bare
            ),
        ]);
    }
    let e = &r.exec;
    table.row(vec![
        format!("exec round trip (`{}`, {} sequential)", e.command, e.count),
        e.backend.clone(),
        format!("p50 {:.1} ms, p99 {:.1} ms (max {:.1} ms)", e.p50_ms, e.p99_ms, e.max_ms),
    ]);
    match &r.memory {
        Figure::Measured(m) => table.row(vec![
            format!("memory per idle machine (VMM {})", m.measure.to_uppercase()),
            m.backend.clone(),
            format!("{:.1} MiB ({} MiB configured, after {} s idle)", m.mib, m.configured_mib, m.idle_secs),
        ]),
        Figure::Unavailable { unavailable } => table.row(vec![
            "memory per idle machine".into(),
            "-".into(),
            format!("unavailable: {unavailable}"),
        ]),
    }
    out.push_str(&table.render());
    if let Figure::Measured(b) = &r.bare_boot {
        out.push_str(&format!(
            "\nbare QEMU: hearth's {} arguments, by path as an unprivileged daemon's, without a disk, timed from spawn to {:?} on the console;\n  kernel {}\n  initrd {}\n  from {}\n",
            b.backend,
            b.until,
            b.kernel.display(),
            b.initrd.display(),
            b.payload_from
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_fields_are_read_from_proc_files() {
        let rollup = "55d0c0a00000-7ffd5e1fe000 ---p 00000000 00:00 0    [rollup]\n\
                      Rss:              187304 kB\n\
                      Pss:              181022 kB\n\
                      Pss_Anon:         170000 kB\n";
        assert_eq!(kib_field(rollup, "Pss:"), Some(181022));
        assert_eq!(kib_field(rollup, "Rss:"), Some(187304));
        assert_eq!(kib_field("Name:\tqemu\nVmRSS:\t  4096 kB\n", "VmRSS:"), Some(4096));
        assert_eq!(kib_field(rollup, "Swap:"), None);
    }

    #[test]
    fn the_bare_qemu_runs_in_the_foreground_with_hearths_arguments() {
        let config = VmConfig {
            name: "b".into(),
            dir: "/t".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd".into(),
            cmdline: "console=ttyS0".into(),
            disk: None,
            disk_base: None,
            cpus: 1,
            memory_mib: 512,
            nics: vec![],
        };
        let bare = qemu::args(Backend::QemuTcg, &config, None).expect("args");
        assert!(!bare.iter().any(|a| a == "-daemonize" || a == "-runas"), "{bare:?}");
        assert_eq!(payload_in_argv(&bare), Some(("/k/vmlinuz".into(), "/k/initrd".into())));
        assert_eq!(payload_in_argv(&["qemu".to_owned(), "-kernel".to_owned()]), None);
    }
}
