//! `hearth lab`: images, networks and machines brought up together from a
//! lab file (see [`file`] for the format).
//!
//! `lab up` is orchestration through the API and nothing else: it checks the
//! whole file and the daemon's state first, builds the images that are
//! missing, records the lab (before creating anything, so that a lab that
//! fails half-way can still be taken down), creates the missing networks and
//! machines, waits for every machine to run, runs each one's `setup` once per
//! boot, and waits for each one's `ready` check. Running it again on a lab
//! that is up creates nothing and runs no setup twice.

mod file;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use hearth_client::types::{
    BuildImage, CreateMachine, CreateNetwork, CreateService, DeployService, EndpointsQuery, ExecEnd,
    ExecStart, Machine, MachineState, PullImage, PutLab, ServiceKind,
};
use hearth_client::{Client, Error as ClientError};
use tokio_tungstenite::tungstenite::Message;

use crate::output::{Table, print_json};

/// How long machines get to boot, together.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one run of a `ready` check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Present in a machine once its setup has run, until it reboots (`/run` is a tmpfs).
const SETUP_MARKER: &str = "/run/hearth-lab/setup-done";

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Bring a lab up from its file: images, networks, machines, setup, readiness.
    /// Running it again creates only what is missing.
    Up(UpArgs),
    /// Remove a lab's machines and the networks it created: `lab down NAME` or `lab down FILE`.
    Down {
        /// The lab's name, or its file.
        lab: String,
    },
    /// List labs.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// The lab file (TOML).
    file: PathBuf,
    /// The lab's name [default: `name` in the file; else the directory of a lab.toml, or the file's stem].
    #[arg(long)]
    name: Option<String>,
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Up(args) => up(client, args).await,
        Command::Down { lab } => down(client, &lab).await.map(|()| 0),
        Command::Ls { json } => ls(client, json).await.map(|()| 0),
    }
}

async fn ls(client: &Client, json: bool) -> anyhow::Result<()> {
    let list = client.labs().await?;
    if json {
        return print_json(&list);
    }
    let mut table = Table::new(vec!["NAME", "MACHINES", "NETWORKS", "FILE"]);
    for lab in list.labs {
        let running = lab.machines.iter().filter(|m| m.state == "running").count();
        let networks = if lab.networks.is_empty() { "-".to_owned() } else { lab.networks.join(",") };
        table.row(vec![
            lab.name,
            format!("{running}/{} running", lab.machines.len()),
            networks,
            lab.file.unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

async fn down(client: &Client, lab: &str) -> anyhow::Result<()> {
    let path = Path::new(lab);
    let name = if path.is_file() {
        let source = std::fs::read_to_string(path).with_context(|| format!("cannot read {lab}"))?;
        file::name_of(path, &source)
    } else {
        lab.to_owned()
    };
    let spinner = crate::output::Spinner::new(format!("taking lab {name} down"));
    let result = client.remove_lab(&name, true).await;
    spinner.finish();
    let down = result?;
    let list = |items: &[String]| if items.is_empty() { "none".to_owned() } else { items.join(", ") };
    println!(
        "lab {name} is down: removed services {}; removed machines {}; removed networks {}",
        list(&down.removed_services),
        list(&down.removed_machines),
        list(&down.removed_networks)
    );
    for note in down.notes {
        println!("  note: {note}");
    }
    Ok(())
}

/// What the daemon has before `up` changes anything.
struct Before {
    /// The machines the lab's record owns (from an earlier `up`).
    owned_machines: Vec<String>,
    owned_networks: Vec<String>,
    owned_services: Vec<String>,
    services: HashMap<String, hearth_client::types::Service>,
    machines: HashMap<String, Machine>,
    networks: HashMap<String, hearth_client::types::Network>,
}

async fn up(client: &Client, args: UpArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let label = args.file.display().to_string();
    let source =
        std::fs::read_to_string(&args.file).with_context(|| format!("cannot read the lab file {label}"))?;
    let lab = file::parse(&label, &source, args.name.as_deref(), &file::default_name(&args.file))?;
    let before = preflight(client, &lab).await?;
    ensure_images(client, &lab).await?;

    // Record first: from here on, `lab down` can undo whatever happens.
    let mut owned_machines: BTreeSet<String> = before.owned_machines.iter().cloned().collect();
    owned_machines.extend(lab.machines.iter().map(|m| m.name.clone()));
    let new_networks: Vec<&file::Network> =
        lab.networks.iter().filter(|n| !before.networks.contains_key(&n.name)).collect();
    let mut owned_networks: BTreeSet<String> = before.owned_networks.iter().cloned().collect();
    owned_networks.extend(new_networks.iter().map(|n| n.name.clone()));
    let mut owned_services: BTreeSet<String> = before.owned_services.iter().cloned().collect();
    owned_services.extend(lab.services.iter().map(|s| s.name.clone()));
    let path = std::fs::canonicalize(&args.file).unwrap_or_else(|_| args.file.clone());
    client
        .put_lab(&PutLab {
            name: lab.name.clone(),
            file: Some(path.display().to_string()),
            source,
            machines: owned_machines.into_iter().collect(),
            networks: owned_networks.into_iter().collect(),
            services: owned_services.into_iter().collect(),
        })
        .await?;

    let result = async {
        for n in new_networks {
            let created = client
                .create_network(&CreateNetwork {
                    name: n.name.clone(),
                    subnet: n.subnet.map(|s| s.to_string()),
                    nat: Some(n.nat),
                })
                .await
                .with_context(|| format!("cannot create network {}", n.name))?;
            eprintln!("created network {} ({})", created.name, created.subnet);
        }
        // Services boot their machines beside the lab's own.
        services_up(client, &lab, &before).await?;
        let machines = machines_up(client, &lab, &before, started).await?;
        wait_services(client, &lab, started).await?;
        Ok::<_, anyhow::Error>(machines)
    }
    .await;
    match result {
        Ok(machines) => {
            print!("{}", summary(&machines));
            let services = if lab.services.is_empty() {
                String::new()
            } else {
                let n = lab.services.len();
                format!(" and {n} service{}", if n == 1 { "" } else { "s" })
            };
            println!(
                "lab {} is up: {} machine{}{services} in {:.1}s. Tear it down with `hearth lab down {}`.",
                lab.name,
                machines.len(),
                if machines.len() == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64(),
                lab.name
            );
            Ok(0)
        }
        Err(error) => {
            crate::output::print_error(&error);
            let first = lab.machines.first().map_or("NAME", |m| m.name.as_str());
            eprintln!(
                "hint: the lab is left as it is for inspection (`hearth machine logs {first}`, `hearth machine exec {first} -- sh`); \
                 `hearth lab up {label}` again retries what is not done, `hearth lab down {}` tears it down",
                lab.name
            );
            Ok(1)
        }
    }
}

/// Checks what the file asks for against what the daemon has, before
/// anything is created.
async fn preflight(client: &Client, lab: &file::Lab) -> anyhow::Result<Before> {
    let record = match client.lab(&lab.name).await {
        Ok(record) => Some(record),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(e.into()),
    };
    let owned_machines: Vec<String> =
        record.as_ref().map(|r| r.machines.iter().map(|m| m.name.clone()).collect()).unwrap_or_default();
    let owned_networks = record.as_ref().map(|r| r.networks.clone()).unwrap_or_default();
    let owned_services = record.as_ref().map(|r| r.services.clone()).unwrap_or_default();
    let services: HashMap<String, hearth_client::types::Service> =
        client.services().await?.services.into_iter().map(|s| (s.name.clone(), s)).collect();
    let machines: HashMap<String, Machine> =
        client.machines().await?.machines.into_iter().map(|m| (m.name.clone(), m)).collect();
    let networks: HashMap<String, hearth_client::types::Network> =
        client.networks().await?.networks.into_iter().map(|n| (n.name.clone(), n)).collect();
    let declared: HashMap<&str, &file::Network> = lab.networks.iter().map(|n| (n.name.as_str(), n)).collect();
    let mine: HashSet<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
    let mut problems = Vec::new();
    for m in &lab.machines {
        if machines.contains_key(&m.name) && !owned_machines.contains(&m.name) {
            problems.push(format!(
                "machine {} already exists and is not part of lab {}; remove it (`hearth machine rm -f {}`) or rename the lab's machine",
                m.name, lab.name, m.name
            ));
        }
        if m.networks.is_empty() && !networks.contains_key("default") {
            problems.push(format!(
                "machine {} joins no network, and the daemon has no `default` network; give it `networks = [\"NAME\"]`",
                m.name
            ));
        }
        for a in &m.networks {
            let Some(existing) = networks.get(&a.network) else {
                if !declared.contains_key(a.network.as_str()) {
                    problems.push(format!(
                        "machine {} joins network {:?}, which the lab file does not declare ([[network]]) and which does not exist (`hearth network ls`)",
                        m.name, a.network
                    ));
                }
                continue;
            };
            if let Some(ip) = &a.ip
                && let Some(holder) =
                    existing.machines.iter().find(|h| &h.ip == ip && !mine.contains(h.machine.as_str()))
            {
                problems.push(format!(
                    "machine {}: address {ip} on network {} is taken by machine {}, which is not in the lab",
                    m.name, a.network, holder.machine
                ));
            }
        }
    }
    for s in &lab.services {
        match services.get(&s.name) {
            Some(found) if found.kind == ServiceKind::App => problems.push(format!(
                "service {} has the name of an app; rename the lab's service",
                s.name
            )),
            Some(_) if !owned_services.contains(&s.name) => problems.push(format!(
                "service {} already exists and is not part of lab {}; remove it (`hearth service rm {}`) or rename the lab's service",
                s.name, lab.name, s.name
            )),
            _ => {}
        }
        for i in 1..=s.count {
            let machine = format!("{}-{i}", s.name);
            if machines.contains_key(&machine) && !services.contains_key(&s.name) {
                problems.push(format!(
                    "service {}: a machine named {machine} already exists; remove it or rename the lab's service",
                    s.name
                ));
            }
        }
        let network = s.network.as_deref().unwrap_or("default");
        if !networks.contains_key(network) && !declared.contains_key(network) {
            problems.push(format!(
                "service {} joins network {network:?}, which the lab file does not declare ([[network]]) and which does not exist (`hearth network ls`)",
                s.name
            ));
        }
    }
    for n in &lab.networks {
        let Some(subnet) = n.subnet else { continue };
        match networks.get(&n.name) {
            Some(existing) if existing.subnet != subnet.to_string() => problems.push(format!(
                "network {} exists with subnet {}, but the lab file asks for {subnet}; change the file, or remove the network",
                n.name, existing.subnet
            )),
            Some(_) => {}
            None => {
                let other = networks.values().find(|o| {
                    o.subnet.parse::<hearth_net::record::Subnet>().is_ok_and(|s| s.overlaps(&subnet))
                });
                if let Some(other) = other {
                    problems.push(format!(
                        "network {}: subnet {subnet} overlaps network {:?} ({}); pick another subnet",
                        n.name, other.name, other.subnet
                    ));
                }
            }
        }
    }
    match problems.len() {
        0 => {}
        1 => bail!("{}", problems[0]),
        n => bail!("lab {} cannot come up ({n} problems):\n  {}", lab.name, problems.join("\n  ")),
    }
    Ok(Before { owned_machines, owned_networks, owned_services, services, machines, networks })
}

fn is_not_found(error: &ClientError) -> bool {
    matches!(error, ClientError::Api { status, .. } if *status == hyper::StatusCode::NOT_FOUND)
}

/// Builds the declared images that are missing, and pulls the other images
/// machines name, as `machine run` would.
async fn ensure_images(client: &Client, lab: &file::Lab) -> anyhow::Result<()> {
    let mut wanted: Vec<&str> = lab.images.iter().map(|i| i.name.as_str()).collect();
    for image in lab.machines.iter().map(|m| &m.image).chain(lab.services.iter().map(|s| &s.image)) {
        if !wanted.contains(&image.as_str()) {
            wanted.push(image);
        }
    }
    for name in wanted {
        match client.image(name).await {
            Ok(_) => continue,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let started = Instant::now();
        let made = match lab.images.iter().find(|i| i.name == name) {
            Some(image) => {
                eprintln!(
                    "building image {name} ({} {}{}); this takes a minute or two, once",
                    image.distro,
                    image.suite.as_deref().unwrap_or("bookworm"),
                    if image.packages.is_empty() {
                        String::new()
                    } else {
                        format!(" with {}", image.packages.join(", "))
                    }
                );
                let build = BuildImage {
                    distro: image.distro.clone(),
                    suite: image.suite.clone(),
                    packages: image.packages.clone(),
                    name: Some(name.to_owned()),
                };
                super::image::follow_long_operation(client.build_image(&build).await?).await
            }
            None => {
                eprintln!("image {name} is not here; pulling it");
                let pull = PullImage { reference: name.to_owned(), username: None, password: None };
                super::image::follow_long_operation(client.pull_image(&pull).await?).await
            }
        };
        let image = made.with_context(|| format!("cannot make image {name}"))?;
        eprintln!(
            "image {} is ready ({:.0} MiB, {:.0}s)",
            image.name,
            image.size_bytes as f64 / 1048576.0,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Creates the lab's services that do not exist yet, and sets the count
/// and the routes of those that do.
async fn services_up(client: &Client, lab: &file::Lab, before: &Before) -> anyhow::Result<()> {
    for s in &lab.services {
        match before.services.get(&s.name) {
            Some(found) => {
                if found.count != Some(s.count) {
                    client.scale_service(&s.name, s.count).await?;
                    eprintln!("service {} now keeps {} instances", s.name, s.count);
                }
                // As the API writes them back: parsed already, so they parse.
                let routes: Vec<String> = s
                    .routes
                    .iter()
                    .filter_map(|r| hearth_services::record::Route::parse(r).ok())
                    .map(|r| r.to_string())
                    .collect();
                if found.routes != routes {
                    let body = DeployService { routes: Some(routes), ..Default::default() };
                    client
                        .deploy_service(&s.name, &body)
                        .await
                        .with_context(|| format!("cannot set the routes of service {}", s.name))?;
                    eprintln!("service {} now routes {}", s.name, s.routes.join(" "));
                }
            }
            None => {
                let body = CreateService {
                    name: s.name.clone(),
                    image: s.image.clone(),
                    count: Some(s.count),
                    port: s.port,
                    checks: s.checks.clone(),
                    ports: s.ports.clone(),
                    routes: s.routes.clone(),
                    network: s.network.clone(),
                    env: s.env.clone(),
                    command: s.command.clone(),
                    cpus: Some(s.cpus),
                    memory_mib: Some(s.memory_mib),
                    on_config_change: s.on_config_change.clone(),
                    sleep_after: s.sleep_after.clone(),
                    ..Default::default()
                };
                client
                    .create_service(&body)
                    .await
                    .with_context(|| format!("cannot create service {}", s.name))?;
                eprintln!("created service {} ({} × {}, port {})", s.name, s.count, s.image, s.port);
            }
        }
    }
    Ok(())
}

/// Waits until every service of the lab has its count of passing instances.
async fn wait_services(client: &Client, lab: &file::Lab, started: Instant) -> anyhow::Result<()> {
    let waits = lab.services.iter().map(|s| async move {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut index = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "service {} has fewer than {} passing instances after {}s; `hearth service inspect {}` shows why",
                    s.name,
                    s.count,
                    BOOT_TIMEOUT.as_secs(),
                    s.name
                );
            }
            let wait = format!("{}ms", left.min(Duration::from_secs(30)).as_millis().max(1));
            let q = EndpointsQuery { index: Some(index), wait: Some(wait) };
            let e = client.service_endpoints(&s.name, &q).await?;
            index = e.index;
            if e.instances.len() as u32 >= s.count {
                eprintln!(
                    "service {}: {}/{} passing ({:.1}s)",
                    s.name,
                    s.count,
                    s.count,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
        }
    });
    combine(futures::future::join_all(waits).await)
}

/// Creates and starts the machines, waits for them, runs setup and the
/// readiness checks; returns every machine of the lab as it is then.
async fn machines_up(
    client: &Client,
    lab: &file::Lab,
    before: &Before,
    started: Instant,
) -> anyhow::Result<Vec<Machine>> {
    let board = Board::new(lab.machines.iter().map(|m| m.name.as_str()), started);
    let result = machines_up_with(client, lab, before, &board).await;
    board.close();
    result
}

async fn machines_up_with(
    client: &Client,
    lab: &file::Lab,
    before: &Before,
    board: &Board,
) -> anyhow::Result<Vec<Machine>> {
    // The daemon answers a create at once and boots the machine in the
    // background, so the machines boot in parallel although they are
    // created one after the other; in order, addresses follow the indexes.
    let mut created = Vec::new();
    for m in &lab.machines {
        created.push(create_or_start(client, m, before, board).await);
    }
    combine(created)?;

    let machines = wait_running(client, lab, board).await?;
    let ips: HashMap<String, String> = machines
        .iter()
        .map(|m| (m.name.clone(), m.nics.first().map(|n| n.ip.clone()).unwrap_or_default()))
        .collect();

    // Setup, then readiness, for each machine in parallel.
    let prepare = lab.machines.iter().map(|m| {
        let vars = lab.vars(m, &ips);
        async move {
            let value = |p: &str| vars.get(p).cloned();
            let result = async {
                if let Some(setup) = &m.setup {
                    let script = file::render(setup, value).map_err(|e| anyhow!(e))?;
                    run_setup(client, m, &script, board).await?;
                }
                if let Some(ready) = &m.ready {
                    let script = file::render(ready, value).map_err(|e| anyhow!(e))?;
                    wait_ready(client, m, &script, board).await?;
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            match &result {
                Ok(()) => board.done(&m.name, "ready"),
                Err(_) => board.fail(&m.name, "failed"),
            }
            result.with_context(|| format!("machine {}", m.name))
        }
    });
    combine(futures::future::join_all(prepare).await)?;
    let all = client.machines().await?.machines;
    Ok(lab.machines.iter().filter_map(|m| all.iter().find(|a| a.name == m.name).cloned()).collect())
}

/// Creates a machine, starts it if it is stopped, or leaves it be.
async fn create_or_start(
    client: &Client,
    m: &file::Machine,
    before: &Before,
    board: &Board,
) -> anyhow::Result<()> {
    let result = match before.machines.get(&m.name) {
        None => {
            board.phase(&m.name, "creating");
            client.create_machine(&create_request(m)).await.map(drop)
        }
        Some(existing) if matches!(existing.state, MachineState::Stopped | MachineState::Failed) => {
            board.phase(&m.name, "starting again");
            client.start_machine(&m.name).await.map(drop)
        }
        Some(existing) => {
            if existing.image != m.image {
                board.note(&format!(
                    "{} runs image {}, not {} as the file says; `hearth lab down` and up again to recreate it",
                    m.name, existing.image, m.image
                ));
            }
            board.phase(&m.name, "exists");
            Ok(())
        }
    };
    result.map_err(|e| {
        board.fail(&m.name, "cannot create");
        anyhow::Error::new(e).context(format!("machine {}", m.name))
    })
}

fn create_request(m: &file::Machine) -> CreateMachine {
    CreateMachine {
        name: Some(m.name.clone()),
        image: m.image.clone(),
        cpus: Some(m.cpus),
        memory_mib: Some(m.memory_mib),
        command: None,
        backend: m.backend.clone(),
        kernel: None,
        auto_remove: false,
        no_start: false,
        networks: m.networks.clone(),
        no_network: false,
        ports: m.ports.clone(),
        disk_mib: None,
        sleep_after: m.sleep_after.clone(),
        ..CreateMachine::default()
    }
}

/// Waits until every machine of the lab runs, showing each one's boot phase.
async fn wait_running(client: &Client, lab: &file::Lab, board: &Board) -> anyhow::Result<Vec<Machine>> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let all: HashMap<String, Machine> =
            client.machines().await?.machines.into_iter().map(|m| (m.name.clone(), m)).collect();
        let mut pending = 0;
        let mut failures = Vec::new();
        for m in &lab.machines {
            match all.get(&m.name) {
                None => failures.push(anyhow!("machine {} was removed while the lab came up", m.name)),
                Some(found) if found.state == "running" => {
                    let boot = found.boot_ms.map(|ms| format!(", booted in {:.1}s", ms as f64 / 1000.0));
                    board.phase(&m.name, &format!("running{}", boot.unwrap_or_default()));
                }
                Some(found) if matches!(found.state, MachineState::Failed | MachineState::Stopped) => {
                    board.fail(&m.name, found.state.as_str());
                    let why = found.reason.clone().unwrap_or_else(|| format!("it is {}", found.state));
                    failures.push(anyhow!(
                        "machine {} did not start: {why}; `hearth machine logs {}` shows its console",
                        m.name,
                        m.name
                    ));
                }
                Some(found) => {
                    pending += 1;
                    board.phase(&m.name, found.phase.as_deref().unwrap_or(found.state.as_str()));
                }
            }
        }
        if pending == 0 {
            combine(failures.into_iter().map(Err).collect())?;
            return Ok(lab.machines.iter().filter_map(|m| all.get(&m.name).cloned()).collect());
        }
        if Instant::now() > deadline {
            let slow: Vec<&str> = lab
                .machines
                .iter()
                .filter(|m| all.get(&m.name).is_some_and(|f| f.state != "running"))
                .map(|m| m.name.as_str())
                .collect();
            bail!(
                "machines {} did not boot within {}s; `hearth machine logs NAME` shows a console",
                slow.join(", "),
                BOOT_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs a machine's setup, unless it already ran since the machine booted.
async fn run_setup(client: &Client, m: &file::Machine, script: &str, board: &Board) -> anyhow::Result<()> {
    if exec_capture(client, &m.name, &format!("test -e {SETUP_MARKER}")).await?.0 == 0 {
        board.phase(&m.name, "setup already done since boot");
        return Ok(());
    }
    board.phase(&m.name, "setting up");
    let (code, output) = tokio::time::timeout(m.setup_timeout, exec_capture(client, &m.name, script))
        .await
        .map_err(|_| {
            anyhow!(
                "setup did not finish within {}s; a program meant to keep running must go to the background \
                 (`setsid CMD >LOG 2>&1 </dev/null &`), or raise setup_timeout",
                m.setup_timeout.as_secs()
            )
        })??;
    if code != 0 {
        bail!("setup exited with code {code}{}", last_lines(&output));
    }
    let dir = SETUP_MARKER.rsplit_once('/').map_or("/run", |(d, _)| d);
    exec_capture(client, &m.name, &format!("mkdir -p {dir} && touch {SETUP_MARKER}")).await?;
    Ok(())
}

/// Runs the ready check every second until it exits 0 or time is up.
async fn wait_ready(client: &Client, m: &file::Machine, script: &str, board: &Board) -> anyhow::Result<()> {
    board.phase(&m.name, "checking readiness");
    let started = Instant::now();
    let mut checks = 0;
    loop {
        checks += 1;
        let last = match tokio::time::timeout(CHECK_TIMEOUT, exec_capture(client, &m.name, script)).await {
            Ok(Ok((0, _))) => return Ok(()),
            Ok(Ok((code, output))) => format!("exit code {code}{}", last_lines(&output)),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
        };
        if started.elapsed() >= m.ready_timeout {
            bail!(
                "not ready after {}s ({checks} checks of `{}`); the last one gave {last}",
                m.ready_timeout.as_secs(),
                script.trim()
            );
        }
        board.phase(&m.name, &format!("waiting for ready (check {checks})"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs `sh -c SCRIPT` in a machine; returns its exit code and its output
/// (stdout and stderr together, the last 16 KiB).
async fn exec_capture(client: &Client, name: &str, script: &str) -> anyhow::Result<(i32, String)> {
    const KEEP: usize = 16 * 1024;
    let mut socket = client.exec_socket(name).await?;
    let start = ExecStart {
        argv: vec!["sh".into(), "-c".into(), script.to_owned()],
        env: vec![],
        cwd: None,
        tty: None,
        stdin: false,
    };
    socket.send(Message::Text(serde_json::to_string(&start)?.into())).await?;
    let mut output = Vec::new();
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Binary(data)) if !data.is_empty() => {
                output.extend_from_slice(&data[1..]);
                if output.len() > 2 * KEEP {
                    output.drain(..output.len() - KEEP);
                }
            }
            Ok(Message::Text(text)) => {
                let code = match serde_json::from_str::<ExecEnd>(&text)? {
                    ExecEnd::Exit { code: Some(code), .. } => code,
                    ExecEnd::Exit { signal, .. } => 128 + signal.unwrap_or(0),
                    ExecEnd::Error(detail) => bail!("{}", detail.message),
                };
                let start = output.len().saturating_sub(KEEP);
                return Ok((code, String::from_utf8_lossy(&output[start..]).into_owned()));
            }
            Ok(_) => {}
            Err(e) => bail!("the exec session broke off: {e}"),
        }
    }
    bail!("the daemon ended the exec session without an exit code")
}

/// The end of a command's output, indented, for an error message.
fn last_lines(output: &str) -> String {
    let lines: Vec<&str> = output.trim_end().lines().collect();
    if lines.is_empty() {
        return " and no output".to_owned();
    }
    let tail = &lines[lines.len().saturating_sub(10)..];
    format!("; its last output:\n    {}", tail.join("\n    "))
}

/// One error for several, one line each.
fn combine(results: Vec<anyhow::Result<()>>) -> anyhow::Result<()> {
    let errors: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().unwrap_or_else(|| anyhow!("unreachable"))),
        n => bail!(
            "{n} machines failed:\n  {}",
            errors.iter().map(|e| format!("{e:#}").replace('\n', "\n  ")).collect::<Vec<_>>().join("\n  ")
        ),
    }
}

/// The lab's machines as a table.
fn summary(machines: &[Machine]) -> String {
    let mut table = Table::new(vec!["MACHINE", "STATE", "ADDRESSES", "DNS NAME", "PORTS"]);
    for m in machines {
        let addresses: Vec<String> = m.nics.iter().map(|n| format!("{}:{}", n.network, n.ip)).collect();
        let dns: Vec<&str> = m.nics.iter().map(|n| n.dns_name.as_str()).collect();
        let ports: Vec<String> = m
            .ports
            .iter()
            .map(|p| match p.split_once(':') {
                Some((host, guest)) => format!("127.0.0.1:{host}->{guest}"),
                None => p.clone(),
            })
            .collect();
        let dash = |v: String| if v.is_empty() { "-".to_owned() } else { v };
        table.row(vec![
            m.name.clone(),
            m.state.to_string(),
            dash(addresses.join(", ")),
            dash(dns.join(", ")),
            dash(ports.join(", ")),
        ]);
    }
    table.render()
}

/// The live display: one line per machine with its phase and the seconds
/// since `up` began. On a terminal the lines redraw in place; otherwise each
/// change of phase is printed once, so logs show the same story.
struct Board {
    multi: indicatif::MultiProgress,
    lines: HashMap<String, indicatif::ProgressBar>,
    last: Mutex<HashMap<String, String>>,
    started: Instant,
    terminal: bool,
    width: usize,
    ticker: Option<tokio::task::JoinHandle<()>>,
    phases: Arc<Mutex<HashMap<String, String>>>,
}

impl Board {
    fn new<'a>(names: impl Iterator<Item = &'a str>, started: Instant) -> Self {
        let names: Vec<&str> = names.collect();
        let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
        let terminal = std::io::stderr().is_terminal();
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let mut lines = HashMap::new();
        for name in &names {
            let bar = multi.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(format!("{name:<width$}"));
            bar.set_message("waiting");
            if terminal {
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            lines.insert((*name).to_owned(), bar);
        }
        let phases: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(HashMap::new()));
        // On a terminal, keep the seconds counting between phase changes.
        let ticker = terminal.then(|| {
            let lines = lines.clone();
            let phases = phases.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let secs = started.elapsed().as_secs_f64();
                    let phases = phases.lock().map(|p| p.clone()).unwrap_or_default();
                    for (name, bar) in &lines {
                        if let Some(phase) = phases.get(name)
                            && !bar.is_finished()
                        {
                            bar.set_message(format!("{phase} ({secs:.0}s)"));
                        }
                    }
                }
            })
        });
        Self { multi, lines, last: Mutex::new(HashMap::new()), started, terminal, width, ticker, phases }
    }

    fn phase(&self, name: &str, phase: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        if let Ok(mut phases) = self.phases.lock() {
            phases.insert(name.to_owned(), phase.to_owned());
        }
        if let Some(bar) = self.lines.get(name) {
            bar.set_message(format!("{phase} ({secs:.0}s)"));
        }
        let changed = self
            .last
            .lock()
            .map(|mut last| last.insert(name.to_owned(), phase.to_owned()).as_deref() != Some(phase))
            .unwrap_or(true);
        if !self.terminal && changed {
            eprintln!("{name:<w$}  {phase} ({secs:.1}s)", w = self.width);
        }
    }

    fn finish(&self, name: &str, text: &str, mark: &str) {
        self.phase(name, text);
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(bar) = self.lines.get(name) {
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!("{mark} {{prefix}} {{msg}}"))
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.finish_with_message(format!("{text} ({secs:.1}s)"));
        }
    }

    fn done(&self, name: &str, text: &str) {
        self.finish(name, text, "✓");
    }

    fn fail(&self, name: &str, text: &str) {
        self.finish(name, text, "✗");
    }

    /// A line above the board.
    fn note(&self, text: &str) {
        if self.terminal {
            let _ = self.multi.println(format!("note: {text}"));
        } else {
            eprintln!("note: {text}");
        }
    }

    fn close(self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
        for bar in self.lines.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
    }
}
