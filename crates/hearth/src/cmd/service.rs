//! `hearth service`: the registry of everything that serves.

use std::time::{Duration, Instant};

use std::io::Write as _;

use anyhow::bail;
use futures::StreamExt as _;
use hearth_client::Client;
use hearth_client::types::{
    CreateService, DeployService, EndpointsQuery, Health, Heartbeat, LogSource, RegisterInstance,
    RolloutState, ServiceDetail,
};

use super::workflow::ago;
use crate::output::{Spinner, Table, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Keep COUNT machines of an image running, checked and registered as NAME.
    ///
    /// Instances are machines NAME-1 ... NAME-COUNT; one that stops, fails
    /// or stays critical is replaced, with backoff. They answer as
    /// NAME.service.hearth in DNS.
    Create {
        name: String,
        #[arg(long)]
        image: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// The port the instances answer on.
        #[arg(long)]
        port: u16,
        /// A health check: http[:PATH], tcp or exec:COMMAND, with options like
        /// ,interval=2s,timeout=1s,passes=1,failures=1 (http: ,status=204). Repeatable.
        #[arg(long = "check")]
        checks: Vec<String>,
        /// HOST:PORT (or HOST for --port): a loopback port on this host
        /// balanced over the passing instances. Repeatable.
        #[arg(long = "publish", short = 'p', value_name = "HOST:PORT")]
        ports: Vec<String>,
        /// HOST[/PATH]: the ingress routes it to the passing instances, as an
        /// app's route (the longest prefix on the exact host wins), besides
        /// NAME.localhost. Repeatable.
        #[arg(long = "route", value_name = "HOST[/PATH]")]
        routes: Vec<String>,
        /// The network the instances join (default: the default network).
        #[arg(long)]
        network: Option<String>,
        /// KEY=VALUE for the instances' main process. Repeatable.
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory per instance, in MiB.
        #[arg(long)]
        memory: Option<u32>,
        /// After an instance's config changed (scope service:NAME, then
        /// machine:NAME): send this signal to its main process (SIGHUP), or
        /// run this command with /bin/sh -c ('nginx -s reload').
        #[arg(long, value_name = "SIGNAL|CMD")]
        on_config_change: Option<String>,
        /// Each instance's machine sleeps after this long without a request
        /// or connection (5m), saved to disk with no CPU or memory held; the
        /// next request through the service's routes or ports wakes it.
        #[arg(long, value_name = "DURATION")]
        sleep_after: Option<String>,
        /// A tag for the application dictionary. Repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// NAME=URL: a runbook, a repository, a dashboard. Repeatable.
        #[arg(long = "link")]
        links: Vec<String>,
        /// Return at once instead of waiting for the instances to pass.
        #[arg(long, short = 'd')]
        detach: bool,
        /// The command instead of the image's.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List services: of machines, registered, and apps.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a service, its instances and their health.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Roll a service to a new image, environment or command, one instance
    /// at a time; a new instance that never passes puts the old version back.
    /// New routes apply at once, with no new instance.
    Deploy {
        name: String,
        #[arg(long)]
        image: Option<String>,
        /// HOST[/PATH], replacing the service's routes. Repeatable.
        #[arg(long = "route", value_name = "HOST[/PATH]")]
        routes: Vec<String>,
        /// Remove every route the service declares (NAME.localhost stays).
        #[arg(long, conflicts_with = "routes")]
        no_routes: bool,
        /// KEY=VALUE, replacing the whole environment. Repeatable.
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory per instance, in MiB.
        #[arg(long)]
        memory: Option<u32>,
        /// The instances' reload action from this version on: a signal or a command.
        #[arg(long, value_name = "SIGNAL|CMD")]
        on_config_change: Option<String>,
        /// From this version on, each machine sleeps after this long idle
        /// (5m), or `never`.
        #[arg(long, value_name = "DURATION|never")]
        sleep_after: Option<String>,
        /// Return at once instead of following the rollout.
        #[arg(long, short = 'd')]
        detach: bool,
        /// The command instead of the image's.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Set how many machines a service keeps.
    Scale { name: String, count: u32 },
    /// Remove services, their machines and records.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// The output of every instance's main process, each line prefixed with
    /// its instance.
    Logs {
        name: String,
        /// Keep printing as they grow (instances made later are not followed).
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each instance.
        #[arg(long)]
        tail: Option<usize>,
        /// The consoles too, not only the main processes.
        #[arg(long)]
        all: bool,
    },
    /// Print the passing instances each time they change (a blocking query).
    Watch {
        name: String,
        /// Print once and return.
        #[arg(long)]
        once: bool,
        #[arg(long)]
        json: bool,
    },
    /// Register an instance that runs elsewhere; it is gone when heartbeats
    /// stop for its TTL.
    Register {
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        port: u16,
        /// e.g. 30s.
        #[arg(long, default_value = "30s")]
        ttl: String,
        /// Default: made up from NAME.
        #[arg(long)]
        id: Option<String>,
        /// http[:PATH] or tcp, run by the daemon. Repeatable.
        #[arg(long = "check")]
        checks: Vec<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// HOST[/PATH]: replaces the service's routes on the ingress.
        /// Repeatable.
        #[arg(long = "route", value_name = "HOST[/PATH]")]
        routes: Vec<String>,
    },
    /// Renew a registration's TTL, and set its health.
    Heartbeat {
        name: String,
        id: String,
        #[arg(long, value_parser = ["passing", "warning", "critical"])]
        health: Option<String>,
        #[arg(long)]
        output: Option<String>,
    },
    /// Remove a registered instance at once.
    Deregister { name: String, id: String },
    /// What the platform did by itself: replacements, restarts, failures.
    History {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create {
            name,
            image,
            count,
            port,
            checks,
            ports,
            routes,
            network,
            env,
            cpus,
            memory,
            on_config_change,
            sleep_after,
            tags,
            description,
            links,
            detach,
            command,
        } => {
            let links = links
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => Ok((k.to_string(), v.to_string())),
                    None => bail!("--link {l:?} is not NAME=URL, e.g. --link runbook=https://wiki/web"),
                })
                .collect::<anyhow::Result<_>>()?;
            super::machine::ensure_image(client, &image).await?;
            let body = CreateService {
                name: name.clone(),
                image,
                count: Some(count),
                port,
                checks,
                ports,
                routes,
                network,
                env,
                command: (!command.is_empty()).then_some(command),
                cpus,
                memory_mib: memory,
                on_config_change,
                sleep_after,
                tags,
                description,
                links,
            };
            let service = client.create_service(&body).await?;
            println!("created service {} ({} × {}, port {})", service.name, count, body.image, port);
            if !detach && count > 0 {
                wait_passing(client, &name, count, Duration::from_secs(600)).await?;
            }
        }
        Command::Ls { json } => {
            let list = client.services().await?;
            if json {
                return print_json(&list);
            }
            let mut table = Table::new(vec!["NAME", "KIND", "PASSING", "WHAT", "PORT", "CHECKS"]);
            for s in list.services {
                let what = match (&s.image, s.routes.is_empty()) {
                    (Some(image), _) => image.clone(),
                    (None, false) => s.routes.join(" "),
                    _ => String::new(),
                };
                table.row(vec![
                    s.name,
                    s.kind.to_string(),
                    format!(
                        "{}/{}{}",
                        s.passing,
                        s.count.unwrap_or(s.instances),
                        asleep(s.sleeping as usize)
                    ),
                    what,
                    s.port.map(|p| p.to_string()).unwrap_or_default(),
                    s.checks.join(" "),
                ]);
            }
            print!("{}", table.render());
        }
        Command::Inspect { name, json } => {
            let detail = client.service(&name).await?;
            if json {
                return print_json(&detail);
            }
            print_detail(&detail);
        }
        Command::Deploy {
            name,
            image,
            routes,
            no_routes,
            env,
            cpus,
            memory,
            on_config_change,
            sleep_after,
            detach,
            command,
        } => {
            if let Some(image) = &image {
                super::machine::ensure_image(client, image).await?;
            }
            let body = DeployService {
                image,
                env: (!env.is_empty()).then_some(env),
                command: (!command.is_empty()).then_some(command),
                cpus,
                memory_mib: memory,
                routes: (no_routes || !routes.is_empty()).then_some(routes),
                on_config_change,
                sleep_after,
            };
            let routes_only = body.image.is_none()
                && body.env.is_none()
                && body.command.is_none()
                && body.cpus.is_none()
                && body.memory_mib.is_none()
                && body.on_config_change.is_none()
                && body.sleep_after.is_none();
            let s = client.deploy_service(&name, &body).await?;
            if routes_only {
                let shown = if s.routes.is_empty() { "none".to_string() } else { s.routes.join(" ") };
                println!("service {name}: routes are now {shown} (and {name}.localhost)");
                return Ok(());
            }
            let version = s.version.unwrap_or_default();
            println!("service {name}: rolling to version {version}");
            if !detach {
                follow_rollout(client, &name, version, Duration::from_secs(1800)).await?;
            }
        }
        Command::Scale { name, count } => {
            let s = client.scale_service(&name, count).await?;
            println!("service {} keeps {count} instances ({} passing now)", s.name, s.passing);
        }
        Command::Rm { names } => {
            for name in names {
                client.remove_service(&name).await?;
                println!("removed service {name}");
            }
        }
        Command::Logs { name, follow, tail, all } => {
            let detail = client.service(&name).await?;
            let machines: Vec<String> = detail.instances.iter().filter_map(|i| i.machine.clone()).collect();
            if machines.is_empty() {
                bail!(
                    "service {name} has no machines to show logs of; `hearth service inspect {name}` lists its instances"
                );
            }
            let source = if all { LogSource::All } else { LogSource::Main };
            let width = machines.iter().map(String::len).max().unwrap_or(0);
            let mut streams = Vec::new();
            for machine in machines {
                let stream = client.machine_logs(&machine, follow, tail, source).await?;
                let prefix = format!("{machine:<width$} | ");
                streams.push(Box::pin(stream.map(move |chunk| (prefix.clone(), chunk))));
            }
            let mut merged = futures::stream::select_all(streams);
            // Each instance's partial last line, until its newline comes.
            let mut partial: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
            let mut out = std::io::stdout();
            loop {
                let next = tokio::select! {
                    next = merged.next() => next,
                    _ = tokio::signal::ctrl_c() => break,
                };
                let Some((prefix, chunk)) = next else { break };
                let buffer = partial.entry(prefix.clone()).or_default();
                buffer.extend_from_slice(&chunk?);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    out.write_all(prefix.as_bytes())?;
                    out.write_all(&line)?;
                }
                out.flush()?;
            }
            for (prefix, rest) in partial {
                if !rest.is_empty() {
                    out.write_all(prefix.as_bytes())?;
                    out.write_all(&rest)?;
                    out.write_all(b"\n")?;
                }
            }
        }
        Command::Watch { name, once, json } => {
            let mut index = 0;
            loop {
                let q = EndpointsQuery { index: (index > 0).then_some(index), wait: Some("300s".into()) };
                let e = client.service_endpoints(&name, &q).await?;
                if e.index != index || index == 0 {
                    if json {
                        println!("{}", serde_json::to_string(&e)?);
                    } else {
                        let list: Vec<String> = e
                            .instances
                            .iter()
                            .map(|i| format!("{}={}:{}", i.id, i.address, i.port))
                            .collect();
                        let shown = if list.is_empty() { "none".to_string() } else { list.join(" ") };
                        println!("{name} passing ({} at revision {}): {shown}", e.instances.len(), e.index);
                    }
                }
                if once {
                    return Ok(());
                }
                index = e.index.max(1);
            }
        }
        Command::Register { name, address, port, ttl, id, checks, tags, routes } => {
            let ttl = humantime::parse_duration(&ttl)
                .map_err(|_| anyhow::anyhow!("--ttl {ttl:?} is not a duration like 30s"))?;
            let body = RegisterInstance {
                id,
                address,
                port,
                ttl_s: ttl.as_secs().max(1),
                checks,
                tags,
                routes: (!routes.is_empty()).then_some(routes),
            };
            let i = client.register_instance(&name, &body).await?;
            println!(
                "registered {} in {name} ({}:{}); send `hearth service heartbeat {name} {}` at least every {}s",
                i.id,
                i.address.unwrap_or_default(),
                i.port,
                i.id,
                body.ttl_s
            );
        }
        Command::Heartbeat { name, id, health, output } => {
            let health =
                health.map(|h| h.parse::<Health>()).transpose().map_err(|e| anyhow::anyhow!("{e}"))?;
            client.heartbeat(&name, &id, &Heartbeat { health, output }).await?;
        }
        Command::Deregister { name, id } => {
            client.deregister_instance(&name, &id).await?;
            println!("deregistered {id} from {name}");
        }
        Command::History { name, json } => {
            let history = client.service_history(&name).await?;
            if json {
                return print_json(&history);
            }
            let mut table = Table::new(vec!["WHEN", "INSTANCE", "ACTION", "WHY"]);
            for e in history.entries {
                table.row(vec![ago(e.at_ms), e.instance.unwrap_or_default(), e.action, e.reason]);
            }
            print!("{}", table.render());
        }
    }
    Ok(())
}

fn print_detail(detail: &ServiceDetail) {
    let s = &detail.service;
    println!("name:        {}", s.name);
    println!("kind:        {}", s.kind);
    if let Some(image) = &s.image {
        println!("image:       {image}");
    }
    if let Some(count) = s.count {
        let asleep = if s.sleeping > 0 { format!(", {} asleep", s.sleeping) } else { String::new() };
        println!("count:       {count} ({} passing{asleep})", s.passing);
    }
    if let Some(port) = s.port {
        println!("port:        {port}");
    }
    if let Some(secs) = s.sleep_after_secs {
        let after = humantime::format_duration(Duration::from_secs(secs));
        println!("sleeps:      after {after} idle; the next request wakes an instance");
    }
    if !s.ports.is_empty() {
        println!("published:   {} (127.0.0.1)", s.ports.join(" "));
    }
    if let Some(problem) = &s.problem {
        println!("problem:     {problem}");
    }
    if let Some(version) = s.version.filter(|_| s.image.is_some()) {
        println!("version:     {version}");
    }
    if let Some(r) = &s.rollout {
        let why = r.reason.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
        println!("rollout:     {} → {} {}{why}", r.from, r.to, r.state);
    }
    if !s.checks.is_empty() {
        println!("checks:      {}", s.checks.join(" "));
    }
    if !s.routes.is_empty() {
        println!("routes:      {}", s.routes.join(" "));
    }
    if !s.tags.is_empty() {
        println!("tags:        {}", s.tags.join(", "));
    }
    if let Some(d) = &s.description {
        println!("description: {d}");
    }
    for (name, url) in &s.links {
        println!("link:        {name} {url}");
    }
    println!("dns:         {}.service.hearth", s.name);
    if detail.instances.is_empty() {
        return;
    }
    println!();
    let mut table = Table::new(vec!["INSTANCE", "ADDRESS", "VERSION", "HEALTH", "SINCE", "OUTPUT"]);
    for i in &detail.instances {
        let health = if i.draining { format!("{} (draining)", i.health) } else { i.health.to_string() };
        table.row(vec![
            i.id.clone(),
            i.address.as_ref().map(|a| format!("{a}:{}", i.port)).unwrap_or_else(|| "-".into()),
            i.version.map(|v| v.to_string()).unwrap_or_default(),
            health,
            i.since_ms.map(ago).unwrap_or_default(),
            i.output.clone(),
        ]);
    }
    print!("{}", table.render());
}

/// Waits until `count` instances pass, showing how many do.
async fn wait_passing(client: &Client, name: &str, count: u32, limit: Duration) -> anyhow::Result<()> {
    let spinner = Spinner::new(format!("{name}: 0/{count} passing"));
    let started = Instant::now();
    let mut index = 0;
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            spinner.finish();
            bail!(
                "service {name} has fewer than {count} passing instances after {}s; `hearth service inspect {name}` shows why, and `hearth service history {name}` what was done",
                limit.as_secs()
            );
        }
        let wait = left.min(Duration::from_secs(30));
        let q = EndpointsQuery { index: Some(index), wait: Some(format!("{}ms", wait.as_millis().max(1))) };
        let e = client.service_endpoints(name, &q).await?;
        index = e.index;
        // A sleeping instance passed before it fell asleep.
        let asleep = asleep(e.instances.iter().filter(|i| i.sleeping).count());
        spinner.set(format!("{name}: {}/{count} passing{asleep}", e.instances.len()));
        if e.instances.len() as u32 >= count {
            spinner.finish();
            println!("{name}: {count}/{count} passing{asleep}, in {:.1}s", started.elapsed().as_secs_f64());
            return Ok(());
        }
    }
}

/// ` (N asleep)` after a count of passing instances, if any sleep.
fn asleep(n: usize) -> String {
    if n > 0 { format!(" ({n} asleep)") } else { String::new() }
}

/// Follows a rollout to its end, showing how many instances run the new
/// version and pass; an error if it was rolled back.
async fn follow_rollout(client: &Client, name: &str, version: u32, limit: Duration) -> anyhow::Result<()> {
    let spinner = Spinner::new(format!("{name}: rolling to version {version}"));
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        every.tick().await;
        let detail = client.service(name).await?;
        let Some(rollout) = detail.service.rollout.clone().filter(|r| r.to == version) else {
            spinner.finish();
            bail!(
                "another deploy of {name} replaced this one; `hearth service inspect {name}` shows where it is"
            );
        };
        let count = detail.service.count.unwrap_or(0);
        let updated = detail
            .instances
            .iter()
            .filter(|i| {
                let ready = matches!(i.health, Health::Passing | Health::Sleeping);
                i.version == Some(version) && ready && !i.draining
            })
            .count();
        match rollout.state {
            RolloutState::Done => {
                spinner.finish();
                println!(
                    "{name}: version {version} on {count}/{count}, in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            RolloutState::RolledBack => {
                spinner.finish();
                bail!(
                    "{name} was rolled back to version {}: {}; `hearth service history {name}` shows each step",
                    rollout.from,
                    rollout.reason.unwrap_or_default()
                );
            }
            RolloutState::Rolling => {
                spinner.set(format!("{name}: version {version} on {updated}/{count} passing"));
            }
        }
        if started.elapsed() > limit {
            spinner.finish();
            bail!(
                "the rollout of {name} is still going after {}s; `hearth service inspect {name}` shows where it is",
                limit.as_secs()
            );
        }
    }
}
