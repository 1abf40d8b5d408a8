//! `hearth machine`: Linux microVMs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use hearth_client::types::{
    CreateMachine, ExecControl, ExecEnd, ExecStart, LogSource, MAX_FILE_BYTES, Machine, NetworkAttachment,
    PullImage, TermSize,
};
use hearth_client::{Client, Error as ClientError};
use tokio_tungstenite::tungstenite::Message;

use crate::output::{Table, print_json};

mod ssh;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create and start a machine from an image; its main process is the
    /// image's entrypoint and command, or `-- CMD`.
    Run(Box<RunArgs>),
    /// List machines.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show everything about one machine.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped machine.
    Start { name: String },
    /// Power a machine off (its disk is kept).
    Stop { name: String },
    /// Stop, then start a machine.
    Restart { name: String },
    /// Put a running machine to sleep now: its memory is saved to disk and
    /// its VM stops; the next connection through its ports wakes it.
    Sleep { name: String },
    /// Wake a sleeping machine where it was.
    Wake { name: String },
    /// Triggers that wake a sleeping machine: cron schedules and store
    /// events (--cron, --event; a request to its port needs none).
    #[command(subcommand)]
    Trigger(crate::cmd::trigger::WakeCommand),
    /// Remove machines, their VMs and their disks.
    Rm {
        /// Remove even if running (the VM is killed).
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run a command in a running machine; its exit code becomes yours.
    Exec(ExecArgs),
    /// SSH into a machine whose image has an SSH server (openssh-server), as
    /// root, with hearth's own key; with `-- CMD`, run CMD there as ssh does.
    Ssh {
        name: String,
        /// A command for the machine's shell (after `--`); its exit code becomes yours.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Copy a file into or out of a machine: `cp ./f n1:/root/f` or `cp n1:/etc/hostname .`.
    Cp { source: String, destination: String },
    /// Pause a running machine to disk (memory, devices, disk); it is stopped afterwards.
    Snapshot { name: String, snapshot: String },
    /// Create a machine from a snapshot, resumed where it was.
    Restore {
        snapshot: String,
        /// The new machine's name (default: the machine the snapshot came from).
        #[arg(long)]
        name: Option<String>,
    },
    /// Show the machine's serial console and its main process's output,
    /// each line labelled `console| ` or `main out| ` / `main err| `.
    Logs {
        name: String,
        /// Keep printing as they grow.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines (of each).
        #[arg(long)]
        tail: Option<usize>,
        /// Only the main process's output (`out| ` and `err| ` lines).
        #[arg(long, conflicts_with = "console")]
        main: bool,
        /// Only the serial console, as it is.
        #[arg(long)]
        console: bool,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The machine's name (default: generated).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory, e.g. 512M or 1G.
    #[arg(long, default_value = "512M", value_parser = parse_mib)]
    memory: u32,
    /// The root disk's size, e.g. 4G or 512M, at least the image's; the root
    /// file system grows to fill it [default: the image's size].
    #[arg(long, value_name = "SIZE", value_parser = parse_disk_mib)]
    disk_size: Option<u64>,
    /// NAME:PORT: join service NAME (made if missing) as an instance on
    /// PORT, found as NAME.service.hearth, for as long as the machine exists.
    #[arg(long, value_name = "NAME:PORT")]
    service: Option<String>,
    /// qemu-tcg, qemu-kvm or firecracker (default: the best this host can run).
    #[arg(long)]
    backend: Option<String>,
    /// Run it on this host (the name its daemon was started with, `hearth
    /// serve --host-name`), which keeps its disk [default: the daemon's own].
    #[arg(long, value_name = "HOST")]
    on: Option<String>,
    /// Boot this bzImage instead of Debian's cloud kernel.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Remove the machine when it stops.
    #[arg(long)]
    rm: bool,
    /// Restart the main process when it ends: no, on-failure or always.
    /// The machine keeps running either way.
    #[arg(long, value_name = "POLICY", default_value = "no")]
    restart: String,
    /// After the machine's config changed (and its /run/hearth/config.json
    /// was replaced): send this signal to the main process (SIGHUP), or run
    /// this command with /bin/sh -c ('nginx -s reload').
    #[arg(long, value_name = "SIGNAL|CMD")]
    on_config_change: Option<String>,
    /// Set an environment variable for the main process (and exec), over
    /// the image's: KEY=VALUE (repeatable).
    #[arg(short, long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The main process's working directory, instead of the image's.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// Run the main process as this user of the guest (name or uid[:gid]),
    /// instead of the image's.
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Join this network (repeatable; NAME or NAME:IP); `none` for no network [default: default].
    #[arg(long = "network", value_name = "NAME[:IP]")]
    networks: Vec<String>,
    /// The machine's address on its (first) network.
    #[arg(long, value_name = "ADDR")]
    ip: Option<String>,
    /// Forward a port from the host's loopback: HOSTPORT:GUESTPORT[/udp] (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "HOST:GUEST")]
    ports: Vec<String>,
    /// Sleep after this long without a connection through its ports (30s,
    /// 5m, 1h): memory saved to disk, VM stopped; the next connection is
    /// held while it wakes.
    #[arg(long, value_name = "DURATION")]
    sleep_after: Option<String>,
    /// Return as soon as the machine is created; do not wait for it to boot.
    #[arg(short, long)]
    detach: bool,
    /// Print the machine as JSON when it is up.
    #[arg(long)]
    json: bool,
    /// An image from `hearth image ls`; pulled from its registry if missing.
    image: String,
    /// The main process, instead of the image's entrypoint and command (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    /// Keep stdin open and send it to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable, KEY=VALUE.
    #[arg(short, long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The working directory in the machine.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    name: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Memory in MiB: `512M`, `1G`, `256` (MiB).
fn parse_mib(text: &str) -> Result<u32, String> {
    let mib = parse_size_mib(text, "512M or 2G")?;
    if !(1.0..=1_048_576.0).contains(&mib) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(mib as u32)
}

/// A disk size in MiB: `4G`, `512M`, `1T`, `2048` (MiB).
fn parse_disk_mib(text: &str) -> Result<u64, String> {
    let mib = parse_size_mib(text, "4G or 512M")?;
    if !(1.0..=f64::from(u32::MAX)).contains(&mib) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(mib.ceil() as u64)
}

/// A size with an optional unit (M, G or T, binary; MiB without one).
fn parse_size_mib(text: &str, example: &str) -> Result<f64, String> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], t[i..].to_ascii_lowercase()),
        None => (t, "m".to_owned()),
    };
    let bad = || format!("{text:?} is not a size like {example}");
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() {
        return Err(bad());
    }
    match unit.as_str() {
        "m" | "mb" | "mib" => Ok(n),
        "g" | "gb" | "gib" => Ok(n * 1024.0),
        "t" | "tb" | "tib" => Ok(n * 1024.0 * 1024.0),
        _ => Err(bad()),
    }
}

pub(crate) async fn run(client: &Client, data_dir: &Path, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Run(args) => run_machine(client, *args).await,
        Command::Ls { json } => {
            let list = client.machines().await?;
            if json {
                print_json(&list)?;
            } else {
                let mut table = Table::new(vec![
                    "NAME", "STATE", "HOST", "IMAGE", "ADDRESS", "BACKEND", "CPUS", "MEMORY", "BOOT", "INFO",
                ]);
                for m in list.machines {
                    table.row(vec![
                        m.name.clone(),
                        m.state.to_string(),
                        m.host.clone().unwrap_or_else(|| "-".into()),
                        m.image.clone(),
                        m.nics.first().map(|n| n.ip.clone()).unwrap_or_else(|| "-".into()),
                        m.backend.to_string(),
                        m.cpus.to_string(),
                        format!("{}M", m.memory_mib),
                        m.boot_ms
                            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                            .unwrap_or_else(|| "-".into()),
                        m.phase.clone().or(m.reason.clone()).unwrap_or_default(),
                    ]);
                }
                print!("{}", table.render());
            }
            Ok(0)
        }
        Command::Inspect { name, json } => {
            let m = client.machine(&name).await?;
            if json {
                print_json(&m)?;
            } else {
                print!("{}", describe(&m));
            }
            Ok(0)
        }
        Command::Start { name } => {
            client.start_machine(&name).await?;
            let m = wait_until_settled(client, &name, Duration::from_secs(180)).await?;
            report_up(&m)
        }
        Command::Stop { name } => {
            client.stop_machine(&name).await?;
            let m = wait_stopped(client, &name).await?;
            if m.state == "lost" {
                println!("{name} is lost with its host; it stops when the host is back");
            } else {
                println!("{name} is stopped");
            }
            Ok(0)
        }
        Command::Restart { name } => {
            client.stop_machine(&name).await?;
            wait_stopped(client, &name).await?;
            client.start_machine(&name).await?;
            let m = wait_until_settled(client, &name, Duration::from_secs(180)).await?;
            report_up(&m)
        }
        Command::Sleep { name } => {
            client.sleep_machine(&name).await?;
            let m = wait_asleep(client, &name).await?;
            if m.state != "sleeping" {
                bail!(
                    "machine {name} did not sleep: {}",
                    m.reason.unwrap_or_else(|| format!("it is {}", m.state))
                );
            }
            println!("{name} is asleep; `hearth machine wake {name}` or a connection to its ports wakes it");
            Ok(0)
        }
        Command::Wake { name } => {
            let progress = crate::output::Spinner::new(format!("{name}: waking"));
            let m = client.wake_machine(&name).await;
            progress.finish();
            let m = m?;
            let took = m.boot_ms.map(|ms| format!(" in {:.1}s", ms as f64 / 1000.0)).unwrap_or_default();
            println!("{name} is awake{took}");
            Ok(0)
        }
        Command::Trigger(command) => {
            crate::cmd::trigger::run(client, "machines", command.into()).await.map(|()| 0)
        }
        Command::Rm { force, names } => {
            let mut failed = false;
            for name in names {
                match client.remove_machine(&name, force).await {
                    Ok(()) => println!("removed {name}"),
                    Err(e) => {
                        crate::output::print_error(&anyhow::Error::new(e));
                        failed = true;
                    }
                }
            }
            Ok(i32::from(failed))
        }
        Command::Exec(args) => exec(client, args).await,
        Command::Ssh { name, command } => ssh::ssh(client, data_dir, &name, command).await,
        Command::Snapshot { name, snapshot } => {
            let progress = crate::output::Spinner::new(format!("{name}: saving to {snapshot}"));
            let snap = client.snapshot_machine(&name, &snapshot).await;
            progress.finish();
            let snap = snap?;
            println!(
                "saved {name} to snapshot {} ({:.0} MiB); resume it with `hearth machine restore {}`",
                snap.name,
                snap.size_bytes as f64 / 1048576.0,
                snap.name
            );
            Ok(0)
        }
        Command::Restore { snapshot, name } => {
            let progress = crate::output::Spinner::new(format!("restoring {snapshot}"));
            let m = client.restore_snapshot(&snapshot, name).await;
            progress.finish();
            report_up(&m?)
        }
        Command::Cp { source, destination } => copy(client, &source, &destination).await.map(|()| 0),
        Command::Logs { name, follow, tail, main, console } => {
            let source = match (main, console) {
                (true, _) => LogSource::Main,
                (_, true) => LogSource::Console,
                _ => LogSource::All,
            };
            let mut stream = Box::pin(client.machine_logs(&name, follow, tail, source).await?);
            let mut out = std::io::stdout();
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tokio::signal::ctrl_c() => break,
                };
                match next {
                    Some(chunk) => {
                        out.write_all(&chunk?)?;
                        out.flush()?;
                    }
                    None => break,
                }
            }
            Ok(0)
        }
    }
}

async fn run_machine(client: &Client, args: RunArgs) -> anyhow::Result<i32> {
    ensure_image(client, &args.image).await?;
    let no_network = args.networks.iter().any(|n| n == "none");
    let mut networks: Vec<NetworkAttachment> = args
        .networks
        .iter()
        .filter(|n| n.as_str() != "none")
        .map(|n| match n.split_once(':') {
            Some((network, ip)) => NetworkAttachment { network: network.into(), ip: Some(ip.into()) },
            None => NetworkAttachment { network: n.clone(), ip: None },
        })
        .collect();
    if let Some(ip) = &args.ip {
        if networks.is_empty() {
            networks.push(NetworkAttachment { network: "default".into(), ip: None });
        }
        networks[0].ip = Some(ip.clone());
    }
    let created = client
        .create_machine(&CreateMachine {
            name: args.name.clone(),
            image: args.image.clone(),
            cpus: Some(args.cpus),
            memory_mib: Some(args.memory),
            command: (!args.command.is_empty()).then(|| args.command.clone()),
            backend: args.backend.clone(),
            kernel: args.kernel.as_ref().map(|k| k.display().to_string()),
            auto_remove: args.rm,
            no_start: false,
            networks,
            no_network,
            ports: args.ports.clone(),
            disk_mib: args.disk_size,
            service: args.service.clone(),
            env: args.env.clone(),
            workdir: args.workdir.clone(),
            user: args.user.clone(),
            restart: Some(args.restart.clone()),
            on_config_change: args.on_config_change.clone(),
            on: args.on.clone(),
            sleep_after: args.sleep_after.clone(),
        })
        .await?;
    let name = created.name.clone();
    if args.detach {
        println!("{name}");
        return Ok(0);
    }
    let m = wait_until_settled(client, &name, Duration::from_secs(180)).await?;
    if args.json {
        print_json(&m)?;
        return Ok(0);
    }
    report_up(&m)
}

/// Pulls the image through the daemon if it is not there yet.
pub(crate) async fn ensure_image(client: &Client, image: &str) -> anyhow::Result<()> {
    match client.image(image).await {
        Ok(_) => return Ok(()),
        Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {}
        Err(e) => return Err(e.into()),
    }
    eprintln!("Image {image} is not here; pulling it.");
    let stream =
        client.pull_image(&PullImage { reference: image.to_owned(), username: None, password: None }).await?;
    super::image::follow_long_operation(stream).await.map(drop)
}

/// Waits for a machine to be running (or to fail, or to be lost with its
/// host), showing its boot phases.
async fn wait_until_settled(client: &Client, name: &str, limit: Duration) -> anyhow::Result<Machine> {
    let m =
        wait_for_state(client, name, &["running", "failed", "stopped", "lost"], "starting", limit).await?;
    if m.state != "running" {
        bail!("machine {name} did not start: {}", m.reason.unwrap_or_else(|| format!("it is {}", m.state)));
    }
    Ok(m)
}

/// Waits until a machine asked to sleep is asleep, or is not going to be
/// (its save failed and it runs on, or it stopped).
async fn wait_asleep(client: &Client, name: &str) -> anyhow::Result<Machine> {
    let settled = |m: &Machine| match m.state.as_str() {
        "sleeping" | "stopped" | "failed" | "lost" => true,
        "running" => m.desired.as_str() != "sleeping",
        _ => false,
    };
    wait_for(client, name, settled, "going to sleep", Duration::from_secs(120)).await
}

/// Waits until a machine asked to stop has: stopped, failed, or lost with
/// its host (it stops when the host is back).
async fn wait_stopped(client: &Client, name: &str) -> anyhow::Result<Machine> {
    wait_for_state(client, name, &["stopped", "failed", "lost"], "stopping", Duration::from_secs(60)).await
}

/// Waits until the machine is in one of the states `done`.
async fn wait_for_state(
    client: &Client,
    name: &str,
    done: &[&str],
    verb: &str,
    limit: Duration,
) -> anyhow::Result<Machine> {
    wait_for(client, name, |m| done.contains(&m.state.as_str()), verb, limit).await
}

/// Waits until `done` says so of the machine, showing its phases.
async fn wait_for(
    client: &Client,
    name: &str,
    done: impl Fn(&Machine) -> bool,
    verb: &str,
    limit: Duration,
) -> anyhow::Result<Machine> {
    let progress = crate::output::Spinner::new(format!("{name}: {verb}"));
    let started = Instant::now();
    loop {
        let m = client.machine(name).await?;
        if done(&m) {
            progress.finish();
            return Ok(m);
        }
        if started.elapsed() > limit {
            progress.finish();
            bail!(
                "machine {name} is still {} after {}s; `hearth machine logs {name}` shows its console",
                m.state,
                limit.as_secs()
            );
        }
        let phase = m.phase.clone().unwrap_or_else(|| m.state.to_string());
        progress.set(format!("{name}: {phase} ({:.1}s)", started.elapsed().as_secs_f64()));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn report_up(m: &Machine) -> anyhow::Result<i32> {
    let boot = m.boot_ms.map(|ms| format!(", booted in {:.1}s", ms as f64 / 1000.0)).unwrap_or_default();
    println!("{} is running ({}{boot})", m.name, m.backend);
    println!("  hearth machine exec {} -- uname -a", m.name);
    println!("  hearth machine exec -it {} -- bash", m.name);
    Ok(0)
}

fn describe(m: &Machine) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12}{v}\n"));
    line("name", m.name.clone());
    line("host", m.host.clone().unwrap_or_else(|| "none yet (made before hosts shared a store)".into()));
    line("state", format!("{} (wanted: {})", m.state, m.desired));
    if let Some(phase) = &m.phase {
        line("phase", phase.clone());
    }
    if let Some(reason) = &m.reason {
        line("reason", reason.clone());
    }
    line("image", format!("{} ({})", m.image, m.image_digest));
    line("backend", m.backend.to_string());
    line("resources", format!("{} CPU, {} MiB", m.cpus, m.memory_mib));
    line("disk", m.disk_mib.map(|mib| format!("{mib} MiB")).unwrap_or_else(|| "the image's size".into()));
    if let Some(secs) = m.sleep_after_secs {
        let after = humantime::format_duration(Duration::from_secs(secs));
        line("sleeps", format!("after {after} without a connection"));
    }
    if !m.entrypoint.is_empty() {
        line("main", m.entrypoint.join(" "));
        line("restart", m.restart.to_string());
        if let Some(user) = &m.user {
            line("user", user.clone());
        }
        if let Some(workdir) = &m.workdir {
            line("workdir", workdir.clone());
        }
        match &m.main {
            Some(p) => {
                let mut state = p.state.to_string();
                if let Some(pid) = p.pid {
                    state.push_str(&format!(", pid {pid} in the guest"));
                }
                match (p.exit_code, p.signal) {
                    (Some(code), _) if p.state != "running" => state.push_str(&format!(", exit code {code}")),
                    (_, Some(signal)) if p.state != "running" => {
                        state.push_str(&format!(", signal {signal}"))
                    }
                    _ => {}
                }
                state.push_str(&format!(", {} restarts", p.restarts));
                line("main state", state);
                if let Some(error) = &p.error {
                    line("main error", error.clone());
                }
                if let Some(at) = p.started_at {
                    line("main start", format!("{at} (unix seconds)"));
                }
            }
            None => line("main state", "not reported yet".into()),
        }
    }
    for pair in &m.env {
        line("env", pair.clone());
    }
    if let Some(action) = &m.on_config_change {
        line("on config", action.clone());
    }
    if let Some(config) = &m.config {
        line(
            "config",
            format!("revision {}, in place since {} (unix seconds)", config.revision, config.applied_at),
        );
        if let Some(error) = &config.reload_error {
            line("reload", format!("failed: {error}"));
        }
    }
    if let Some(pid) = m.pid {
        line("vm pid", pid.to_string());
    }
    if let Some(kernel) = &m.kernel {
        line("kernel", kernel.clone());
    }
    if let Some(ms) = m.boot_ms {
        line("boot", format!("{ms} ms to agent-ready"));
    }
    for nic in &m.nics {
        line("network", format!("{} {} ({}, {})", nic.network, nic.ip, nic.dns_name, nic.mac));
    }
    if !m.ports.is_empty() {
        line("ports", m.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(", "));
    }
    if let Some(problem) = &m.ports_problem {
        line(
            "forwarding",
            format!(
                "{problem} (tried again every second: free the port, or remove the machine and run it with another -p)"
            ),
        );
    }
    line("remove", if m.auto_remove { "when stopped".into() } else { "by hand".into() });
    out
}

async fn exec(client: &Client, args: ExecArgs) -> anyhow::Result<i32> {
    let mut socket = client.exec_socket(&args.name).await?;
    let tty = if args.tty {
        let (cols, rows) = terminal_size::terminal_size().map(|(w, h)| (w.0, h.0)).unwrap_or((80, 24));
        Some(TermSize { rows, cols })
    } else {
        None
    };
    let start =
        ExecStart { argv: args.command, env: args.env, cwd: args.workdir, tty, stdin: args.interactive };
    socket.send(Message::Text(serde_json::to_string(&start)?.into())).await?;
    let _raw = if args.tty && args.interactive { crate::output::RawMode::enable() } else { None };
    let (mut sink, mut stream) = socket.split();
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    if args.interactive {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = stdin_tx.blocking_send(None);
                        break;
                    }
                    Ok(n) => {
                        if stdin_tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    } else {
        drop(stdin_tx);
    }
    let mut stdin_open = args.interactive;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                    let target: &mut dyn std::io::Write = if data[0] == hearth_client::types::EXEC_STDERR { &mut err } else { &mut out };
                    target.write_all(&data[1..])?;
                    target.flush()?;
                }
                Some(Ok(Message::Text(text))) => return exit_code(&text),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the exec session broke off: {e}"),
                None => bail!("the daemon ended the exec session without an exit code"),
            },
            chunk = stdin_rx.recv(), if stdin_open => match chunk {
                Some(Some(data)) => sink.send(Message::Binary(data.into())).await?,
                Some(None) | None => {
                    stdin_open = false;
                    sink.send(Message::Text(serde_json::to_string(&ExecControl::CloseStdin)?.into())).await?;
                }
            },
            Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } }, if args.tty => {
                if let Some((w, h)) = terminal_size::terminal_size() {
                    let resize = ExecControl::Resize(TermSize { rows: h.0, cols: w.0 });
                    sink.send(Message::Text(serde_json::to_string(&resize)?.into())).await?;
                }
            }
        }
    }
}

/// The exit code in the session's closing message (128 + N for signal N).
fn exit_code(end: &str) -> anyhow::Result<i32> {
    match serde_json::from_str::<ExecEnd>(end)? {
        ExecEnd::Exit { code: Some(code), .. } => Ok(code),
        ExecEnd::Exit { signal, .. } => Ok(128 + signal.unwrap_or(0)),
        ExecEnd::Error(detail) => Err(ClientError::Api { status: hyper::StatusCode::OK, detail }.into()),
    }
}

/// `NAME:/path` names a file in a machine; anything else is local.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (name, path) = spec.split_once(':')?;
    (!name.is_empty() && !name.contains('/') && path.starts_with('/')).then_some((name, path))
}

async fn copy(client: &Client, source: &str, destination: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match (remote(source), remote(destination)) {
        (None, Some((name, path))) => {
            let local = Path::new(source);
            if local.is_dir() {
                bail!("{source} is a directory; cp copies single files (pack it with tar first)");
            }
            let file = tokio::fs::File::open(local).await.with_context(|| format!("cannot read {source}"))?;
            let meta = file.metadata().await.with_context(|| format!("cannot read {source}"))?;
            let size = meta.len();
            if size > MAX_FILE_BYTES {
                bail!(
                    "{source} is {} MiB, over the {} MiB limit for one copy; compress it or split it (`split -b 512M {source} {source}.part`) and copy the parts",
                    size >> 20,
                    MAX_FILE_BYTES >> 20
                );
            }
            let mode = meta.permissions().mode() & 0o7777;
            let path = if path.ends_with('/') {
                format!("{path}{}", local.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
            } else {
                path.to_owned()
            };
            client.put_file(name, &path, mode, file, size).await?;
            eprintln!("copied {size} bytes to {name}:{path}");
        }
        (Some((name, path)), None) => {
            let mut target = PathBuf::from(destination);
            if target.is_dir() {
                target.push(Path::new(path).file_name().unwrap_or_default());
            }
            let size = download(client, name, path, &target).await?;
            eprintln!("copied {size} bytes to {}", target.display());
        }
        (Some(_), Some(_)) => {
            bail!("copy between two machines through your host: cp a:/f ./f, then cp ./f b:/f")
        }
        (None, None) => bail!("one side must be in a machine, written NAME:/absolute/path"),
    }
    Ok(())
}

/// Streams a guest's file into a temporary file beside `target`, then
/// renames it into place: an interrupted copy never leaves a partial file
/// under the destination's name. What the guest says its mode is never
/// brings set-ID or sticky bits to this host.
async fn download(client: &Client, name: &str, path: &str, target: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let base = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{base}."))
        .suffix(".part")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let mut file = tokio::fs::File::from_std(temp.as_file().try_clone()?);
    let (size, mode) = client.get_file(name, path, &mut file).await?;
    file.sync_all().await.with_context(|| format!("cannot write {}", temp.path().display()))?;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode & 0o777))
        .with_context(|| format!("cannot set the mode of {}", temp.path().display()))?;
    temp.persist(target).with_context(|| format!("cannot write {}", target.display()))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_to_mib() {
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("1G"), Ok(1024));
        assert_eq!(parse_mib("256"), Ok(256));
        assert_eq!(parse_mib("1.5g"), Ok(1536));
        assert!(parse_mib("lots").is_err());
        assert!(parse_mib("5T").is_err());
    }

    #[test]
    fn disk_sizes_parse_to_mib() {
        assert_eq!(parse_disk_mib("4G"), Ok(4096));
        assert_eq!(parse_disk_mib("512M"), Ok(512));
        assert_eq!(parse_disk_mib("1T"), Ok(1 << 20));
        assert_eq!(parse_disk_mib("1.5G"), Ok(1536));
        assert_eq!(parse_disk_mib("2048"), Ok(2048));
        for bad in ["", "big", "4X", "-1G", "0", "inf", "NaN"] {
            assert!(parse_disk_mib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remote_paths_need_a_name_and_an_absolute_path() {
        assert_eq!(remote("n1:/etc/hostname"), Some(("n1", "/etc/hostname")));
        assert_eq!(remote("./n1:/x"), None);
        assert_eq!(remote("n1:rel"), None);
        assert_eq!(remote("/tmp/file"), None);
    }
}
