//! `hearth cluster`: several hosts on one Linux machine, each a `hearth
//! serve` in a network namespace of its own on a member of one etcd
//! cluster, that a person breaks on purpose (kill, partition) to learn how
//! a cluster fails.
//!
//! Unlike every other client command it talks to no daemon to do its work:
//! it makes the underlay (a bridge in the root netns, a netns and a veth
//! pair per host) with `ip`, starts etcd and the daemons inside the netns
//! with `nsenter --net`, detached so that they outlive it, and keeps what
//! it made in a state file, written before anything is made, so that
//! `down` can take apart even a cluster whose `up` failed half-way. The
//! names, addresses and paths are one pure function, [`plan::plan`].

mod plan;

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hearth_client::types::HostState;
use hearth_client::{Client, Endpoint};
use serde::Serialize;

use self::plan::{Host, State, Subnet};
use crate::output::{Spinner, Table, print_json};

/// Where each cluster's directory is noted, by name, while its netns
/// exist: netns and interface names are the machine's, so a name is one
/// cluster's at a time, and any command finds it by name alone, whatever
/// `--dir` or data dir it was made with. `/run` goes at a reboot, as the
/// netns do.
const REGISTRY: &str = "/run/hearth/clusters";
/// The state file in a cluster's directory.
const STATE_FILE: &str = "cluster.json";
/// How long etcd members get to elect a leader.
const ETCD_START: Duration = Duration::from_secs(30);
/// How long daemons get to answer and to see every host ready.
const DAEMON_START: Duration = Duration::from_secs(120);
/// How long a daemon gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long processes get to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Lines of a log shown with an error.
const LOG_TAIL: usize = 20;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Start a cluster on this machine: hosts in network namespaces on a bridge, an etcd member and a daemon each.
    /// Running it again starts only what is not running.
    Up(UpArgs),
    /// List the clusters on this machine.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a cluster's hosts: their netns, address, daemon and etcd processes, and link.
    Status {
        /// The cluster [default: lab].
        name: Option<String>,
        #[command(flatten)]
        at: At,
        #[arg(long)]
        json: bool,
    },
    /// Print the shell line that points the CLI at one host: `eval "$(hearth cluster env h1)"`.
    Env {
        host: String,
        #[command(flatten)]
        which: Which,
    },
    /// Kill a host as a machine dies: SIGKILL to every process in its netns (daemon, etcd member, VMs, and a shell you opened there with `ip netns exec`).
    Kill {
        host: String,
        #[command(flatten)]
        which: Which,
    },
    /// Start a killed host's etcd member and daemon again, on their data, and wait until it is ready.
    Revive {
        host: String,
        #[command(flatten)]
        which: Which,
    },
    /// Cut a host off the cluster's network (its link goes down); its processes keep running.
    Partition {
        host: String,
        #[command(flatten)]
        which: Which,
    },
    /// Connect a partitioned host again.
    Heal {
        host: String,
        #[command(flatten)]
        which: Which,
    },
    /// Stop a cluster and remove its namespaces, links, state and (without --keep-data) its data.
    Down {
        /// The cluster [default: lab].
        name: Option<String>,
        #[command(flatten)]
        at: At,
        /// Keep the hosts' data dirs and logs (`up` starts from them again).
        #[arg(long)]
        keep_data: bool,
    },
}

/// Which cluster, by name, for commands about one of its hosts.
#[derive(Debug, clap::Args)]
pub(crate) struct Which {
    /// The cluster.
    #[arg(long, default_value = "lab")]
    name: String,
    #[command(flatten)]
    at: At,
}

#[derive(Debug, clap::Args)]
pub(crate) struct At {
    /// The cluster's directory [default: where `up` made it].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// The cluster's name: in its namespaces' and links' names.
    #[arg(long, default_value = "lab")]
    name: String,
    /// How many hosts (1 to 9).
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// The underlay's subnet: the bridge takes .1, host hN takes .1N.
    #[arg(long, default_value = "10.77.0.0/24")]
    subnet: Subnet,
    /// The cluster's directory: its state file and each host's data, etcd data and logs [default: DATA_DIR/clusters/NAME].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The cache of kernels and images the hosts share [default: DATA_DIR/cache, your own daemon's].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

pub(crate) async fn run(data_dir: &Path, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => up(data_dir, args).await,
        Command::Ls { json } => ls(data_dir, json),
        Command::Status { name, at, json } => {
            let state = load(data_dir, name.as_deref().unwrap_or("lab"), at.dir.as_deref())?;
            let status = status(&state);
            if json {
                return print_json(&status);
            }
            print!("{}", table(&status));
            Ok(())
        }
        Command::Env { host, which } => {
            let state = load(data_dir, &which.name, which.at.dir.as_deref())?;
            let host = find_host(&state, &host)?;
            // A daemon named elsewhere (HEARTH_HOST) would win over the
            // data dir's socket.
            println!("unset HEARTH_HOST HEARTH_TOKEN");
            println!("export HEARTH_DATA_DIR={}", quote(&host.data_dir));
            println!("# then: hearth host ls   (or: hearth --data-dir {} host ls)", quote(&host.data_dir));
            Ok(())
        }
        Command::Kill { host, which } => {
            need_root()?;
            let state = load(data_dir, &which.name, which.at.dir.as_deref())?;
            kill(&state, find_host(&state, &host)?)
        }
        Command::Revive { host, which } => {
            need_root()?;
            let mut state = load(data_dir, &which.name, which.at.dir.as_deref())?;
            let name = find_host(&state, &host)?.name.clone();
            revive(&mut state, &name).await
        }
        Command::Partition { host, which } => {
            need_root()?;
            let state = load(data_dir, &which.name, which.at.dir.as_deref())?;
            let host = find_host(&state, &host)?;
            need_link(&state, host)?;
            ip(&["link", "set", &host.veth, "down"])?;
            println!(
                "host {} is cut off: its link {} is down. The others see it lost once its lease lapses (10 s): `hearth --data-dir {} host ls`; `hearth cluster heal {}{}` connects it again",
                host.name,
                host.veth,
                quote(&other_host(&state, host).data_dir),
                host.name,
                name_flag(&state)
            );
            Ok(())
        }
        Command::Heal { host, which } => {
            need_root()?;
            let state = load(data_dir, &which.name, which.at.dir.as_deref())?;
            let host = find_host(&state, &host)?;
            need_link(&state, host)?;
            ip(&["link", "set", &host.veth, "up"])?;
            println!(
                "host {} is connected again: its etcd member catches up and its daemon joins again within a few seconds (`hearth --data-dir {} host ls`)",
                host.name,
                quote(&host.data_dir)
            );
            Ok(())
        }
        Command::Down { name, at, keep_data } => {
            need_root()?;
            down(data_dir, name.as_deref().unwrap_or("lab"), at.dir.as_deref(), keep_data)
        }
    }
}

// ---------------------------------------------------------------- up

async fn up(data_dir: &Path, args: UpArgs) -> anyhow::Result<()> {
    need_root()?;
    for (tool, package) in [("ip", "iproute2"), ("etcd", "etcd-server")] {
        if !on_path(tool) {
            bail!("`{tool}` is not on PATH: install Debian's {package} (`make setup` does)");
        }
    }
    plan::check_name(&args.name).map_err(|e| anyhow!(e))?;
    let dir = match &args.dir {
        Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        None => registered(&args.name).unwrap_or_else(|| default_dir(data_dir, &args.name)),
    };
    if let Some(other) = registered(&args.name).filter(|other| *other != dir) {
        bail!(
            "a cluster named {} is already up from {}: take it down with `hearth cluster down {}`, or pick another --name",
            args.name,
            other.display(),
            args.name
        );
    }
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| data_dir.join("cache"));
    let cache_dir = std::path::absolute(&cache_dir).unwrap_or(cache_dir);
    let planned =
        plan::plan(&args.name, args.hosts, args.subnet, &dir, &cache_dir).map_err(|e| anyhow!(e))?;
    let mut state = match read_state(&dir)? {
        Some(state) => {
            if state.subnet != planned.subnet || state.hosts.len() != planned.hosts.len() {
                bail!(
                    "cluster {} in {} has {} hosts on {}, not {} on {}: take it down first (`hearth cluster down {}`), or run `up` with its own --hosts and --subnet",
                    state.name,
                    dir.display(),
                    state.hosts.len(),
                    state.subnet,
                    planned.hosts.len(),
                    planned.subnet,
                    state.name
                );
            }
            state
        }
        None => planned,
    };
    let status = status(&state);
    if status.hosts.iter().all(HostStatus::whole) {
        println!("cluster {} is already up", state.name);
        print!("{}", table(&status));
        return Ok(());
    }
    check_routes(args.subnet, &state.bridge)?;

    let spinner = Spinner::new(format!("starting cluster {}", state.name));
    let started = Instant::now();
    let result = bring_up(&mut state, &spinner).await;
    spinner.finish();
    result.with_context(|| {
        format!(
            "cluster {} did not come up; `hearth cluster down {}` removes what was made (`--keep-data` keeps the logs in {})",
            state.name,
            state.name,
            dir.display()
        )
    })?;
    println!(
        "cluster {} is up in {:.1} s: {} hosts on {} (bridge {}), in {}",
        state.name,
        started.elapsed().as_secs_f64(),
        state.hosts.len(),
        state.subnet,
        state.bridge,
        dir.display()
    );
    print!("{}", table(&self::status(&state)));
    let first = &state.hosts[0];
    let flag = name_flag(&state);
    println!();
    println!("talk to a host:  eval \"$(hearth cluster env {}{flag})\"; hearth host ls", first.name);
    println!("             or: hearth --data-dir {} host ls", quote(&first.data_dir));
    let victim = state.hosts.get(1).unwrap_or(first);
    println!(
        "break it:        hearth cluster kill {0}{flag}   (then revive {0}, partition {0}, heal {0}); down{1} ends it",
        victim.name,
        if state.name == "lab" { String::new() } else { format!(" {}", state.name) }
    );
    Ok(())
}

/// Makes what is missing and starts what is not running, writing the state
/// before each thing is made or started.
async fn bring_up(state: &mut State, spinner: &Spinner) -> anyhow::Result<()> {
    for host in &state.hosts {
        for dir in [&host.data_dir, &host.etcd_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // etcd warns about a data dir that others may read.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&host.etcd_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", host.etcd_dir.display()))?;
    }
    std::fs::create_dir_all(&state.cache_dir)
        .with_context(|| format!("cannot create the cache dir {}", state.cache_dir.display()))?;
    write_state(state)?;
    register(state)?;

    spinner.set(format!("making the underlay: bridge {} and {} namespaces", state.bridge, state.hosts.len()));
    make_underlay(state)?;

    spinner.set("starting etcd".to_owned());
    for i in 0..state.hosts.len() {
        if running(state.hosts[i].etcd_pid, &state.hosts[i].etcd_dir).is_none() {
            let pid = start_etcd(state, &state.hosts[i])?;
            state.hosts[i].etcd_pid = Some(pid);
            write_state(state)?;
        }
    }
    let waits = state.hosts.iter().map(|h| wait_etcd(h, ETCD_START));
    for result in futures::future::join_all(waits).await {
        result?;
    }

    spinner.set("starting the daemons".to_owned());
    for i in 0..state.hosts.len() {
        if running(state.hosts[i].daemon_pid, &state.hosts[i].data_dir).is_none() {
            let pid = start_daemon(state, &state.hosts[i])?;
            state.hosts[i].daemon_pid = Some(pid);
            write_state(state)?;
        }
    }
    let deadline = Instant::now() + DAEMON_START;
    let waits = state.hosts.iter().map(|h| wait_daemon(h, deadline));
    for result in futures::future::join_all(waits).await {
        result?;
    }
    spinner.set("waiting for every host to be ready".to_owned());
    let names: Vec<&str> = state.hosts.iter().map(|h| h.name.as_str()).collect();
    wait_ready(&state.hosts[0], &names, deadline).await
}

/// The bridge, and per host a netns with `lo` and `eth0` up, its address
/// and a default route via the bridge; each made only if missing.
fn make_underlay(state: &State) -> anyhow::Result<()> {
    let prefix = state.subnet.split_once('/').map(|(_, p)| p).unwrap_or("24");
    if !link_exists(&state.bridge) {
        ip(&["link", "add", &state.bridge, "type", "bridge"])?;
    }
    ip(&["addr", "replace", &format!("{}/{prefix}", state.gateway), "dev", &state.bridge])?;
    ip(&["link", "set", &state.bridge, "up"])?;
    let mtu = plan::MTU.to_string();
    for host in &state.hosts {
        if !netns_exists(&host.netns) {
            ip(&["netns", "add", &host.netns])?;
        }
        if !link_exists(&host.veth) {
            ip(&[
                "link",
                "add",
                &host.veth,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ])?;
        }
        ip(&["link", "set", &host.veth, "master", &state.bridge, "mtu", &mtu, "up"])?;
        let ns = ["-n", host.netns.as_str()];
        ip(&[&ns[..], &["link", "set", "lo", "up"]].concat())?;
        ip(&[&ns[..], &["link", "set", "eth0", "mtu", &mtu, "up"]].concat())?;
        ip(&[&ns[..], &["addr", "replace", &format!("{}/{prefix}", host.address), "dev", "eth0"]].concat())?;
        ip(&[&ns[..], &["route", "replace", "default", "via", &state.gateway.to_string()]].concat())?;
    }
    Ok(())
}

/// Refuses a subnet that overlaps a route of this machine's (but for the
/// cluster's own bridge's).
fn check_routes(subnet: Subnet, bridge: &str) -> anyhow::Result<()> {
    let routes: Vec<plan::Route> = serde_json::from_str(&ip(&["-j", "-4", "route", "show"])?)
        .context("cannot read `ip -j route`'s answer")?;
    if let Some(route) = plan::overlapping_route(subnet, &routes, bridge) {
        bail!(
            "the subnet {subnet} overlaps this machine's route to {} (dev {}): pick a free one with --subnet, e.g. --subnet 10.78.0.0/24",
            route.dst,
            route.dev
        );
    }
    Ok(())
}

fn start_etcd(state: &State, host: &Host) -> anyhow::Result<u32> {
    let client = format!("http://{}:{}", host.address, plan::ETCD_CLIENT_PORT);
    let peer = format!("http://{}:{}", host.address, plan::ETCD_PEER_PORT);
    // A member that has its data rejoins from it (etcd then ignores the
    // initial cluster); `existing` says so for one that comes back.
    let existing = host.etcd_dir.join("member").exists();
    let args: Vec<std::ffi::OsString> = [
        "--name",
        &host.name,
        "--listen-client-urls",
        &format!("{client},http://127.0.0.1:{}", plan::ETCD_CLIENT_PORT),
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &state.initial_cluster,
        "--initial-cluster-token",
        &format!("hearth-{}", state.name),
        "--initial-cluster-state",
        if existing { "existing" } else { "new" },
        // hearth's largest value (1.5 MiB) with its key in one request.
        "--max-request-bytes",
        "2097152",
        "--logger",
        "zap",
        "--log-level",
        "warn",
        "--data-dir",
    ]
    .iter()
    .map(Into::into)
    .chain([host.etcd_dir.clone().into_os_string()])
    .collect();
    spawn_in(&host.netns, Path::new("etcd"), &args, &[], &host.etcd_log)
}

/// The cluster's config key file, in its directory: every host's
/// `--config-key`.
const CONFIG_KEY: &str = "config.key";

fn start_daemon(state: &State, host: &Host) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("cannot find the hearth binary that runs this command")?;
    let address = host.address.to_string();
    let args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--data-dir".into(),
        host.data_dir.clone().into(),
        "--host-name".into(),
        host.name.clone().into(),
        "--store".into(),
        state.store.clone().into(),
        "--cache-dir".into(),
        state.cache_dir.clone().into(),
        "--ingress".into(),
        format!("{address}:{}", plan::INGRESS_PORT).into(),
        // One key for the cluster's secrets: a secret set through one host
        // is read on every host.
        "--config-key".into(),
        state.dir.join(CONFIG_KEY).into(),
    ];
    spawn_in(&host.netns, &exe, &args, &[("HEARTH_ADVERTISE_ADDRESS", &address)], &host.daemon_log)
}

/// Starts `program` in `netns`, detached (its own process group, stdin
/// null, output appended to `log`) so that it outlives this command, and
/// returns its pid (`nsenter` executes the program in its place).
///
/// `nsenter --net`, not `ip netns exec`: the latter also mounts a `/sys`
/// of the namespace's own, without the cgroup file system under it, where
/// Firecracker's jailer puts a VM's limits. Only the network is the host's.
fn spawn_in(
    netns: &str,
    program: &Path,
    args: &[std::ffi::OsString],
    env: &[(&str, &str)],
    log: &Path,
) -> anyhow::Result<u32> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let err = file.try_clone().with_context(|| format!("cannot open the log {}", log.display()))?;
    let mut command = std::process::Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{netns}")).arg("--").arg(program).args(args);
    // The user's settings (data dir, store, ports, prefixes) are not the
    // hosts': each gets exactly what its command line and `env` say.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HEARTH_") {
            command.env_remove(key);
        }
    }
    let child = command
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {} in netns {netns}", program.display()))?;
    Ok(child.id())
}

/// Waits until the host's etcd member says it is healthy (it has a leader).
async fn wait_etcd(host: &Host, within: Duration) -> anyhow::Result<()> {
    let late = format!(
        "was not healthy within {within:?} (a member needs a majority of the others to elect a leader)"
    );
    let member =
        Started { what: "the etcd member", pid: host.etcd_pid, needle: &host.etcd_dir, log: &host.etcd_log };
    member.wait(host, Instant::now() + within, &late, async || etcd_healthy(host.address).await).await
}

/// A process `up` started for a host: what it is, its pid, what its
/// command line names (to tell it from another under a reused pid), its log.
struct Started<'a> {
    what: &'a str,
    pid: Option<u32>,
    needle: &'a Path,
    log: &'a Path,
}

impl Started<'_> {
    /// Waits until `ready` holds; fails with the end of the log when the
    /// process exits first, or when `deadline` passes (`late` says how).
    async fn wait(
        &self,
        host: &Host,
        deadline: Instant,
        late: &str,
        ready: impl AsyncFn() -> bool,
    ) -> anyhow::Result<()> {
        let (what, name, log) = (self.what, &host.name, self.log.display());
        loop {
            if ready().await {
                return Ok(());
            }
            if running(self.pid, self.needle).is_none() {
                bail!("{what} of host {name} exited; the end of {log}:\n{}", tail(self.log));
            }
            if Instant::now() > deadline {
                bail!("{what} of host {name} {late}; the end of {log}:\n{}", tail(self.log));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether etcd's `/health` on `address` says it has a leader and answers.
async fn etcd_healthy(address: Ipv4Addr) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect((address, plan::ETCD_CLIENT_PORT)).await.ok()?;
        stream.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n").await.ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        Some(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten();
    answer.is_some_and(|a| a.contains("\"health\":\"true\""))
}

fn client(host: &Host) -> Client {
    Client::new(Endpoint::Unix(crate::paths::socket(&host.data_dir)))
}

/// Waits until the host's daemon answers on its socket.
async fn wait_daemon(host: &Host, deadline: Instant) -> anyhow::Result<()> {
    let daemon =
        Started { what: "the daemon", pid: host.daemon_pid, needle: &host.data_dir, log: &host.daemon_log };
    let late = "did not answer on its socket in time";
    daemon.wait(host, deadline, late, async || client(host).status().await.is_ok()).await
}

/// Waits until `host` lists every one of `names` as ready.
async fn wait_ready(host: &Host, names: &[&str], deadline: Instant) -> anyhow::Result<()> {
    loop {
        let list = client(host).hosts().await;
        let not_ready: Vec<String> = match &list {
            Ok(list) => names
                .iter()
                .filter(|name| !list.hosts.iter().any(|h| h.name == **name && h.state == HostState::Ready))
                .map(|name| (*name).to_owned())
                .collect(),
            Err(error) => vec![format!("(host ls on {} failed: {error})", host.name)],
        };
        if not_ready.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "host {} does not see {} ready in time: see their daemon.log and etcd.log (`hearth --data-dir {} host ls` shows what it sees)",
                host.name,
                not_ready.join(", "),
                quote(&host.data_dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------- breaking

fn kill(state: &State, host: &Host) -> anyhow::Result<()> {
    if !netns_exists(&host.netns) {
        bail!(
            "host {}'s netns {} is not there: is cluster {} up? (`hearth cluster up{}`)",
            host.name,
            host.netns,
            state.name,
            name_flag(state)
        );
    }
    let daemon = running(host.daemon_pid, &host.data_dir);
    let etcd = running(host.etcd_pid, &host.etcd_dir);
    let pids = kill_netns(&host.netns)?;
    let others = pids.iter().filter(|p| Some(**p) != daemon && Some(**p) != etcd).count();
    let said = |what: &str, pid: Option<u32>| match pid {
        Some(pid) => format!("{what} (pid {pid})"),
        None => format!("{what} (not running)"),
    };
    println!(
        "killed host {}: {}, {}, and {others} other processes (its machines)",
        host.name,
        said("its daemon", daemon),
        said("its etcd member", etcd)
    );
    println!(
        "the others see it lost once its lease lapses (10 s): `hearth --data-dir {} host ls`; `hearth cluster revive {}{}` starts it again",
        quote(&other_host(state, host).data_dir),
        host.name,
        name_flag(state)
    );
    Ok(())
}

async fn revive(state: &mut State, name: &str) -> anyhow::Result<()> {
    let host = state.host(name).cloned().ok_or_else(|| anyhow!("no host {name}"))?;
    if !netns_exists(&host.netns) || !link_exists(&host.veth) {
        bail!(
            "host {}'s netns or link is not there: bring the cluster up again with `hearth cluster up{}`",
            host.name,
            name_flag(state)
        );
    }
    let partitioned = !link_up(&host.veth);
    let spinner = Spinner::new(format!("reviving host {}", host.name));
    let started = Instant::now();
    let result = async {
        if running(host.etcd_pid, &host.etcd_dir).is_none() {
            spinner.set(format!("starting host {}'s etcd member", host.name));
            let pid = start_etcd(state, &host)?;
            state.host_mut(name).expect("the host").etcd_pid = Some(pid);
            write_state(state)?;
        }
        let host = state.host(name).cloned().expect("the host");
        if !partitioned {
            wait_etcd(&host, ETCD_START).await?;
        }
        if running(host.daemon_pid, &host.data_dir).is_none() {
            spinner.set(format!("starting host {}'s daemon", host.name));
            let pid = start_daemon(state, &host)?;
            state.host_mut(name).expect("the host").daemon_pid = Some(pid);
            write_state(state)?;
        }
        let host = state.host(name).cloned().expect("the host");
        let deadline = Instant::now() + DAEMON_START;
        wait_daemon(&host, deadline).await?;
        if !partitioned {
            spinner.set(format!("waiting for host {} to be ready", host.name));
            wait_ready(&host, &[&host.name], deadline).await?;
        }
        anyhow::Ok(())
    }
    .await;
    spinner.finish();
    result.with_context(|| format!("host {name} did not come back"))?;
    if partitioned {
        println!(
            "host {name}'s processes run again, but it is partitioned: `hearth cluster heal {name}{}` connects it",
            name_flag(state)
        );
    } else {
        println!("host {name} is back and ready in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

// ---------------------------------------------------------------- down

fn down(data_dir: &Path, name: &str, dir: Option<&Path>, keep_data: bool) -> anyhow::Result<()> {
    plan::check_name(name).map_err(|e| anyhow!(e))?;
    let dir = locate(data_dir, name, dir);
    let stated = read_state(&dir)?;
    // Without a state file, nothing says the directories under the names
    // are the cluster's: they are never deleted then.
    let keep_data = keep_data || stated.is_none();
    let state = match stated {
        Some(state) => state,
        // Nothing is made before the state file is written, so there is
        // nothing to find; but its names do not depend on the subnet or on
        // how many hosts it had, so whatever is left under them goes too.
        None => {
            let any = "10.77.0.0/24".parse().expect("a subnet");
            plan::plan(name, plan::MAX_HOSTS, any, &dir, &dir).map_err(|e| anyhow!(e))?
        }
    };
    let spinner = Spinner::new(format!("taking cluster {name} down"));
    let result = take_apart(&state, &spinner);
    spinner.finish();
    result
        .with_context(|| format!("cluster {name} is not all gone: run `hearth cluster down {name}` again"))?;
    let _ = std::fs::remove_file(Path::new(REGISTRY).join(name));
    // Left only while some cluster is up (it fails while one is).
    let _ = std::fs::remove_dir(REGISTRY);
    let _ = std::fs::remove_file(dir.join(STATE_FILE));
    if keep_data {
        println!("cluster {name} is down; its data and logs are kept in {}", dir.display());
        return Ok(());
    }
    // Only what `up` made goes: --dir may name a directory that held
    // other things before.
    for host in &state.hosts {
        let home = dir.join(&host.name);
        if home.exists() {
            std::fs::remove_dir_all(&home).with_context(|| format!("cannot remove {}", home.display()))?;
        }
    }
    let _ = std::fs::remove_file(dir.join(CONFIG_KEY));
    let _ = std::fs::remove_dir(&dir);
    println!("cluster {name} is down and its data removed");
    Ok(())
}

fn take_apart(state: &State, spinner: &Spinner) -> anyhow::Result<()> {
    // The daemons first and gently, while etcd is there to take their
    // leases back; then everything that is left, as `kill` does.
    spinner.set("stopping the daemons".to_owned());
    let daemons: Vec<(u32, &Host)> =
        state.hosts.iter().filter_map(|h| running(h.daemon_pid, &h.data_dir).map(|pid| (pid, h))).collect();
    for (pid, _) in &daemons {
        signal(*pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while daemons.iter().any(|(pid, h)| running(Some(*pid), &h.data_dir).is_some())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    spinner.set("killing what is left".to_owned());
    for host in &state.hosts {
        if netns_exists(&host.netns) {
            kill_netns(&host.netns)?;
        }
        // Outside its netns only if someone moved it; checked by its
        // command line, so a reused pid is left alone.
        for pid in [running(host.daemon_pid, &host.data_dir), running(host.etcd_pid, &host.etcd_dir)]
            .into_iter()
            .flatten()
        {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    spinner.set("removing the namespaces and links".to_owned());
    for host in &state.hosts {
        if link_exists(&host.veth) {
            ip(&["link", "del", &host.veth])?;
        }
        if netns_exists(&host.netns) {
            ip(&["netns", "del", &host.netns])?;
        }
    }
    if link_exists(&state.bridge) {
        ip(&["link", "del", &state.bridge])?;
    }
    Ok(())
}

// ---------------------------------------------------------------- status

#[derive(Debug, Serialize)]
struct Status {
    name: String,
    dir: PathBuf,
    subnet: String,
    bridge: String,
    hosts: Vec<HostStatus>,
}

#[derive(Debug, Serialize)]
struct HostStatus {
    name: String,
    netns: String,
    /// Whether the netns exists.
    netns_up: bool,
    address: Ipv4Addr,
    daemon: Process,
    etcd: Process,
    /// `connected`, `partitioned` (its link is down) or `missing`.
    link: &'static str,
    veth: String,
    data_dir: PathBuf,
}

impl HostStatus {
    fn whole(&self) -> bool {
        self.netns_up && self.daemon.up && self.etcd.up && self.link == "connected"
    }
}

#[derive(Debug, Serialize)]
struct Process {
    up: bool,
    pid: Option<u32>,
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.up, self.pid) {
            (true, Some(pid)) => write!(f, "up (pid {pid})"),
            _ => f.write_str("down"),
        }
    }
}

fn status(state: &State) -> Status {
    let process = |pid: Option<u32>, needle: &Path| {
        let pid = running(pid, needle);
        Process { up: pid.is_some(), pid }
    };
    Status {
        name: state.name.clone(),
        dir: state.dir.clone(),
        subnet: state.subnet.clone(),
        bridge: state.bridge.clone(),
        hosts: state
            .hosts
            .iter()
            .map(|h| HostStatus {
                name: h.name.clone(),
                netns: h.netns.clone(),
                netns_up: netns_exists(&h.netns),
                address: h.address,
                daemon: process(h.daemon_pid, &h.data_dir),
                etcd: process(h.etcd_pid, &h.etcd_dir),
                link: if !link_exists(&h.veth) {
                    "missing"
                } else if link_up(&h.veth) {
                    "connected"
                } else {
                    "partitioned"
                },
                veth: h.veth.clone(),
                data_dir: h.data_dir.clone(),
            })
            .collect(),
    }
}

fn table(status: &Status) -> String {
    let mut table = Table::new(vec!["HOST", "NETNS", "ADDRESS", "DAEMON", "ETCD", "LINK"]);
    for h in &status.hosts {
        table.row(vec![
            h.name.clone(),
            if h.netns_up { h.netns.clone() } else { format!("{} (missing)", h.netns) },
            h.address.to_string(),
            h.daemon.to_string(),
            h.etcd.to_string(),
            h.link.to_owned(),
        ]);
    }
    table.render()
}

#[derive(Debug, Serialize)]
struct ClusterList {
    clusters: Vec<ClusterRow>,
}

#[derive(Debug, Serialize)]
struct ClusterRow {
    name: String,
    dir: PathBuf,
    subnet: String,
    hosts: usize,
    /// Hosts whose daemon runs.
    daemons_up: usize,
    /// Hosts whose etcd member runs.
    etcd_up: usize,
    partitioned: Vec<String>,
}

fn ls(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for parent in [PathBuf::from(REGISTRY), data_dir.join("clusters")] {
        let Ok(entries) = std::fs::read_dir(&parent) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let dir = if parent == Path::new(REGISTRY) {
                match std::fs::read_to_string(entry.path()) {
                    Ok(text) => PathBuf::from(text.trim()),
                    Err(_) => continue,
                }
            } else {
                entry.path()
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    let mut clusters: Vec<ClusterRow> = dirs
        .iter()
        .filter_map(|dir| read_state(dir).ok().flatten())
        .map(|state| {
            let status = status(&state);
            ClusterRow {
                daemons_up: status.hosts.iter().filter(|h| h.daemon.up).count(),
                etcd_up: status.hosts.iter().filter(|h| h.etcd.up).count(),
                partitioned: status
                    .hosts
                    .iter()
                    .filter(|h| h.link == "partitioned")
                    .map(|h| h.name.clone())
                    .collect(),
                hosts: status.hosts.len(),
                name: state.name,
                dir: state.dir,
                subnet: state.subnet,
            }
        })
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    if json {
        return print_json(&ClusterList { clusters });
    }
    let mut table = Table::new(vec!["NAME", "HOSTS", "SUBNET", "DAEMONS", "ETCD", "PARTITIONED", "DIR"]);
    for c in &clusters {
        table.row(vec![
            c.name.clone(),
            c.hosts.to_string(),
            c.subnet.clone(),
            format!("{}/{} up", c.daemons_up, c.hosts),
            format!("{}/{} up", c.etcd_up, c.hosts),
            c.partitioned.join(","),
            c.dir.display().to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

// ---------------------------------------------------------------- state

fn default_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("clusters").join(name)
}

/// The directory a cluster named `name` was made in, while it is up.
fn registered(name: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(Path::new(REGISTRY).join(name)).ok()?;
    let dir = PathBuf::from(text.trim());
    dir.join(STATE_FILE).exists().then_some(dir)
}

fn register(state: &State) -> anyhow::Result<()> {
    std::fs::create_dir_all(REGISTRY).with_context(|| format!("cannot create {REGISTRY}"))?;
    let path = Path::new(REGISTRY).join(&state.name);
    std::fs::write(&path, format!("{}\n", state.dir.display()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `--dir`, else where the registry says, else the default.
fn locate(data_dir: &Path, name: &str, dir: Option<&Path>) -> PathBuf {
    match dir {
        Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()),
        None => registered(name).unwrap_or_else(|| default_dir(data_dir, name)),
    }
}

fn load(data_dir: &Path, name: &str, dir: Option<&Path>) -> anyhow::Result<State> {
    plan::check_name(name).map_err(|e| anyhow!(e))?;
    let dir = locate(data_dir, name, dir);
    read_state(&dir)?.ok_or_else(|| {
        anyhow!(
            "there is no cluster {name} (no {} in {}): start one with `hearth cluster up{}`, or name it with --name or --dir (`hearth cluster ls` lists them)",
            STATE_FILE,
            dir.display(),
            if name == "lab" { String::new() } else { format!(" --name {name}") }
        )
    })
}

fn read_state(dir: &Path) -> anyhow::Result<Option<State>> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not a cluster's state file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the state file whole or not at all (a temporary file renamed).
fn write_state(state: &State) -> anyhow::Result<()> {
    let path = state.dir.join(STATE_FILE);
    let temp = state.dir.join(format!(".{STATE_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

fn find_host<'a>(state: &'a State, name: &str) -> anyhow::Result<&'a Host> {
    state.host(name).ok_or_else(|| {
        let names: Vec<&str> = state.hosts.iter().map(|h| h.name.as_str()).collect();
        anyhow!("cluster {} has no host {name}: its hosts are {}", state.name, names.join(", "))
    })
}

/// Fails, saying what to do, when the host's veth is not there.
fn need_link(state: &State, host: &Host) -> anyhow::Result<()> {
    if !link_exists(&host.veth) {
        bail!(
            "host {}'s link {} is not there: bring cluster {} up again with `hearth cluster up{}`",
            host.name,
            host.veth,
            state.name,
            name_flag(state)
        );
    }
    Ok(())
}

/// A host other than `host`, to ask about it.
fn other_host<'a>(state: &'a State, host: &Host) -> &'a Host {
    state.hosts.iter().find(|h| h.name != host.name).unwrap_or(&state.hosts[0])
}

/// ` --name NAME` for hints, unless the cluster has the default name.
fn name_flag(state: &State) -> String {
    if state.name == "lab" { String::new() } else { format!(" --name {}", state.name) }
}

// ---------------------------------------------------------------- the system

fn need_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "hearth cluster makes network namespaces, links and bridges, which takes root: run it with sudo (`sudo hearth cluster ...`)"
        );
    }
    Ok(())
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// Runs `ip ARGS`, returning its output, or an error naming the command and what it said.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip`: install iproute2")?;
    if !output.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether the link is administratively up (`ip link set NAME up`).
fn link_up(name: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("flags"))
        .ok()
        .and_then(|flags| u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 1 != 0)
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// SIGKILLs every process in `netns` and waits (bounded) until none is
/// left; returns the pids it killed.
fn kill_netns(netns: &str) -> anyhow::Result<Vec<u32>> {
    let pids = |ns: &str| -> anyhow::Result<Vec<u32>> {
        Ok(ip(&["netns", "pids", ns])?.split_whitespace().filter_map(|p| p.parse().ok()).collect())
    };
    let killed = pids(netns)?;
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let left = pids(netns)?;
        if left.is_empty() {
            return Ok(killed);
        }
        if Instant::now() > deadline {
            bail!("processes {left:?} in netns {netns} outlived SIGKILL for {KILL_WAIT:?}");
        }
        for pid in left {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// `pid`, if it is a live process (not a zombie) whose command line names
/// `needle` (its data dir): a pid reused by another process is not ours.
fn running(pid: Option<u32>, needle: &Path) -> Option<u32> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    if matches!(state, 'Z' | 'X') {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // Empty for an instant while `nsenter` executes the program in
    // its place: still ours, if it is `ip` in the middle of that. (A kernel
    // thread, under a pid reused after a reboot, has no cmdline either.)
    if cmdline.is_empty() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let starting = ["nsenter", "hearth", "etcd"].contains(&comm.trim());
        return starting.then_some(pid);
    }
    let needle = needle.to_string_lossy();
    cmdline.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg) == needle).then_some(pid)
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
}

/// A path quoted for a POSIX shell, when it needs it.
fn quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%".contains(&b)) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
