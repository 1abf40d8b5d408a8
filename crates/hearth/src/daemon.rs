//! `hearth serve`: open the store, bind the API, run until a signal.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hearth_api::server::{self, AppState, DaemonInfo, Token};
use hearth_listen::TowerToHyperService;
use tokio::sync::watch;

use crate::paths;

mod host_name;
mod store;

use store::{OpenedStore, StoreArgs, open_store};

/// How long in-flight requests get to finish after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Also serve the API on this TCP address (bearer token required), e.g. 127.0.0.1:7070.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Where apps answer HTTP (`NAME.localhost:PORT`); port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", env = "HEARTH_INGRESS")]
    ingress: SocketAddr,

    /// Where the host's DNS listener answers `.hearth` names (NAME.service.hearth, MACHINE.NETWORK.hearth) over UDP and TCP, on a loopback address; `off` disables it. Without this option, 127.0.0.1:8600 is used if it is free.
    #[arg(long, value_name = "ADDR|off", env = "HEARTH_DNS", value_parser = parse_dns)]
    dns: Option<DnsListen>,

    /// Where the web dashboard answers, on a loopback address (`hearth ui` prints a sign-in link); `off` disables it. Without this option, 127.0.0.1:7777 is used if it is free.
    #[arg(long, value_name = "ADDR|off", env = "HEARTH_UI", value_parser = parse_ui)]
    ui: Option<UiListen>,

    /// Where kernels, initramfs and images are cached [default: DATA_DIR/cache]. Several daemons may share one.
    #[arg(long, value_name = "DIR", env = "HEARTH_CACHE_DIR")]
    cache_dir: Option<std::path::PathBuf>,

    /// The static guest agent binary [default: hearth-agent next to this binary, or $HEARTH_AGENT].
    #[arg(long, value_name = "PATH")]
    agent: Option<std::path::PathBuf>,

    /// Prefix of the host interfaces and firewall tables this daemon makes (at most 4 characters), so that several daemons can share a host.
    #[arg(long, value_name = "PREFIX", default_value = "h", value_parser = parse_prefix)]
    net_prefix: String,

    /// Whether to create the `default` network that machines join unless told otherwise.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    default_network: bool,

    /// Whether the default network reaches the outside through NAT.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    default_network_nat: bool,

    /// The name this host goes by among the hosts that share a store (a DNS label) [default: the system's hostname]. Kept in the data dir at the first start.
    #[arg(long, value_name = "NAME", env = "HEARTH_HOST_NAME", value_parser = host_name::parse)]
    host_name: Option<String>,

    /// This host's address for the other hosts sharing the store: networks span hosts through VXLAN tunnels to it (UDP 4789) [default: the address this host reaches etcd from]. Only with --store etcd://.
    #[arg(long, value_name = "IP", env = "HEARTH_ADVERTISE_ADDRESS")]
    advertise_address: Option<std::net::Ipv4Addr>,

    /// The key file that config secrets are encrypted with [default: DATA_DIR/config.key, made at the first start]. Hosts sharing a store must share one: give each the same file (a copy), or a secret set through one host cannot be read on the others.
    #[arg(long, value_name = "FILE", env = "HEARTH_CONFIG_KEY")]
    config_key: Option<std::path::PathBuf>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, env = "HEARTH_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(flatten)]
    store: StoreArgs,
}

/// The address other hosts tunnel to for networks that span hosts: the
/// one given, else the address this host reaches etcd from (the kernel's
/// choice of source for the first endpoint). None alone on the embedded
/// store, or when etcd is on loopback: hosts that reach each other only on
/// loopback are one machine's processes, whose networks cannot tunnel to
/// each other (the log says how to change that).
async fn overlay_address(
    opened: &OpenedStore,
    given: Option<std::net::Ipv4Addr>,
) -> anyhow::Result<Option<std::net::Ipv4Addr>> {
    let endpoints = match opened {
        OpenedStore::Redb(_) if given.is_some() => bail!(
            "--advertise-address (HEARTH_ADVERTISE_ADDRESS) is for hosts sharing a store on etcd (--store etcd://HOST:PORT); remove it, or give --store etcd://..."
        ),
        OpenedStore::Redb(_) => return Ok(None),
        OpenedStore::Etcd(etcd) => etcd.endpoints().to_owned(),
    };
    if let Some(address) = given {
        if address.is_unspecified() || address.is_multicast() || address.is_broadcast() {
            bail!(
                "--advertise-address {address} is not an address other hosts can reach; give this host's address on the network the hosts share"
            );
        }
        // The tunnels' packets leave from it: it must be this host's.
        if let Err(error) = std::net::UdpSocket::bind((address, 0)) {
            bail!(
                "--advertise-address {address} is not an address of this host ({error}); give one that `ip -4 addr` lists, on the network the hosts share"
            );
        }
        return Ok(Some(address));
    }
    let first = endpoints.split(',').next().unwrap_or_default();
    let first = first.split_once("://").map_or(first, |(_, rest)| rest);
    let source = async {
        let target = tokio::net::lookup_host(first).await.ok()?.find(SocketAddr::is_ipv4)?;
        // Connecting a UDP socket sends nothing: it asks the kernel which
        // source address it would use.
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
        socket.connect(target).await.ok()?;
        match socket.local_addr().ok()?.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        }
    };
    match source.await {
        Some(ip) if !ip.is_loopback() => {
            tracing::info!(address = %ip, "Networks span the hosts: other hosts tunnel to this address (UDP 4789).");
            Ok(Some(ip))
        }
        found => {
            tracing::warn!(
                endpoint = first,
                source = ?found,
                "Networks stay on this host: it reaches etcd over loopback (or not at all), so no other host could tunnel to it; give --advertise-address IP to span hosts."
            );
            Ok(None)
        }
    }
}

/// `--dns`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
enum DnsListen {
    At(SocketAddr),
    Off,
}

/// Where the host's DNS listener answers unless told otherwise (Consul's DNS port).
const DEFAULT_DNS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8600);

fn parse_dns(text: &str) -> Result<DnsListen, String> {
    if text == "off" {
        return Ok(DnsListen::Off);
    }
    let addr: SocketAddr =
        text.parse().map_err(|_| format!("{text:?} is not an address like 127.0.0.1:8600, or off"))?;
    // It answers anyone who can reach it, without a token: keep it on the host.
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the host's DNS listener answers without a token, so it listens only on loopback, e.g. 127.0.0.1:8600"
        ));
    }
    Ok(DnsListen::At(addr))
}

/// Binds the host's DNS listener: an address given with `--dns` must bind,
/// or the daemon does not start; the default may be taken (by another
/// daemon, or a Consul agent), and then the daemon starts without it and
/// says why, in its log and in `hearth status`.
async fn bind_host_dns(choice: Option<DnsListen>) -> anyhow::Result<Result<hearth_net::dns::Server, String>> {
    match choice {
        Some(DnsListen::Off) => Ok(Err("switched off with --dns off".to_owned())),
        Some(DnsListen::At(addr)) => {
            let server = hearth_net::dns::bind(addr).await.with_context(|| {
                format!("cannot serve DNS on {addr}: is another program using that port? pick another --dns, or --dns off")
            })?;
            Ok(Ok(server))
        }
        None => match hearth_net::dns::bind(DEFAULT_DNS).await {
            Ok(server) => Ok(Ok(server)),
            Err(error) => {
                let error = anyhow::Error::from(error);
                tracing::warn!(
                    error = format!("{error:#}"),
                    "The host's DNS listener is off: its default address is taken; pick a free one with --dns."
                );
                Ok(Err(format!("{error:#}; pick a free address with --dns")))
            }
        },
    }
}

/// `--ui`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
enum UiListen {
    At(SocketAddr),
    Off,
}

/// Where the dashboard answers unless told otherwise.
const DEFAULT_UI: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7777);

fn parse_ui(text: &str) -> Result<UiListen, String> {
    if text == "off" {
        return Ok(UiListen::Off);
    }
    let addr: SocketAddr =
        text.parse().map_err(|_| format!("{text:?} is not an address like 127.0.0.1:7777, or off"))?;
    // Its sessions are tied to a loopback origin, and it speaks plain HTTP:
    // a cookie must never cross a network. Reach it from elsewhere through
    // an SSH tunnel (`ssh -L 7777:127.0.0.1:7777 HOST`).
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the dashboard speaks plain HTTP with a session cookie, so it listens only on loopback, e.g. 127.0.0.1:7777 (from another machine, use `ssh -L 7777:127.0.0.1:7777 HOST`)"
        ));
    }
    Ok(UiListen::At(addr))
}

/// Binds the dashboard's listener: an address given with `--ui` must
/// bind, or the daemon does not start; the default may be taken (by
/// another daemon), and then the daemon starts without a dashboard and
/// says why, in its log and to `hearth ui`.
async fn bind_ui(choice: Option<UiListen>) -> anyhow::Result<Result<tokio::net::TcpListener, String>> {
    match choice {
        Some(UiListen::Off) => Ok(Err("it was switched off with --ui off".to_owned())),
        Some(UiListen::At(addr)) => Ok(Ok(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot serve the dashboard on {addr}: is another program using that port? pick another --ui, or --ui off")
        })?)),
        None => match tokio::net::TcpListener::bind(DEFAULT_UI).await {
            Ok(listener) => Ok(Ok(listener)),
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    "The dashboard is off: its default address {DEFAULT_UI} is taken; pick a free one with --ui."
                );
                Ok(Err(format!("its default address {DEFAULT_UI} was taken ({error}) when the daemon started")))
            }
        },
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HEARTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (only possible in tests) is harmless, so its error is ignored.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// What the daemon breaks on purpose when `HEARTH_TEST_BREAK_WATCHES=N`:
/// every store watch ends after 1 to N events. A watch that breaks (a lost
/// etcd connection, a leader change) cannot be produced on purpose with the
/// embedded store, so this fault lets the daemon's tests prove that every
/// subsystem, following the store through `hearth_store::Follower`, misses
/// nothing. Said in the log at start; never set outside tests.
const BREAK_WATCHES: &str = "HEARTH_TEST_BREAK_WATCHES";

fn store_for_subsystems(opened: &OpenedStore) -> Arc<dyn hearth_store::Store> {
    let store = opened.store();
    match std::env::var(BREAK_WATCHES).ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(every) if every > 0 => {
            tracing::warn!(every, "{BREAK_WATCHES} is set: every store watch breaks after a few events.");
            let breaking = hearth_store::testing::Breaking::new(store);
            breaking.break_every(every);
            breaking
        }
        _ => store,
    }
}

pub(crate) async fn serve(data_dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    // Before anything answers: a SIGTERM that arrives as soon as the
    // socket does must stop the daemon cleanly, not kill it.
    let signals = Signals::install()?;
    prepare_data_dir(data_dir)?;
    let (host_name, fresh_name) = host_name::resolve(data_dir, args.host_name)?;
    let budget = connection_budget()?;

    let opened = open_store(data_dir, args.store).await?;
    let overlay = overlay_address(&opened, args.advertise_address).await?;
    // Tunnels need root, as networks do: a host that makes none must not
    // tell the others to send it any.
    let overlay = overlay.filter(|address| {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            tracing::warn!(%address, "Networks do not span hosts: this daemon does not run as root, so it makes no networks.");
        }
        root
    });
    if fresh_name {
        let machines = machine_hosts(&*opened.store()).await?;
        host_name::check_fresh_name(data_dir, &host_name, &machines)?;
    }
    let token = ensure_token(data_dir)?;

    let socket_path = paths::socket(data_dir);
    let unix = bind_socket(&socket_path)?;
    let tcp = match args.listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr}: is another program using that port? pick another --listen")
        })?),
        None => None,
    };
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let ui = bind_ui(args.ui).await?;
    let ui_addr = match &ui {
        Ok(listener) => listener.local_addr().map_err(|e| format!("its address cannot be read: {e}")),
        Err(problem) => Err(problem.clone()),
    };
    let host_dns = bind_host_dns(args.dns).await?;
    let dns_addr = host_dns.as_ref().map(hearth_net::dns::Server::local_addr).map_err(Clone::clone);

    let host = tokio::task::spawn_blocking(hearth_machines::probe::probe_host)
        .await
        .context("the host probe failed")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let store = store_for_subsystems(&opened);
    let cache_dir = args.cache_dir.unwrap_or_else(|| data_dir.join("cache"));
    let key_file = args.config_key.clone().unwrap_or_else(|| data_dir.join(hearth_config::secret::KEY_FILE));
    let config =
        hearth_config::Config::open_with_key(store.clone(), &key_file).context("cannot open config")?;
    let config_loop = tokio::spawn(config.clone().run(stop_rx.clone()));
    let networks = hearth_net::Networks::new(
        store.clone(),
        hearth_net::Options {
            prefix: args.net_prefix,
            default_nat: args.default_network_nat,
            enabled: nix::unistd::geteuid().is_root(),
            default_network: args.default_network,
            host: host_name.clone(),
            overlay,
        },
    );
    // The default network is made before the API answers, so that a
    // `machine run` or `lab up` right after start finds it (the loop makes
    // its bridge; it would make the network too, later).
    if args.default_network
        && nix::unistd::geteuid().is_root()
        && let Err(error) = networks.ensure_default().await
    {
        tracing::warn!(error = %error, "Cannot create the default network; retrying in the background.");
    }
    let networks_loop = tokio::spawn(networks.clone().run(stop_rx.clone()));
    // The same zone as every network's DNS server, for the host; names
    // outside it are refused (the host has its own resolvers).
    let host_dns_loop = host_dns.ok().map(|server| {
        let mut stop = stop_rx.clone();
        tokio::spawn(server.run(networks.zone(), None, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    let machines = hearth_machines::Machines::new(
        store.clone(),
        networks.clone(),
        hearth_machines::Options {
            data_dir: data_dir.to_owned(),
            cache_dir: cache_dir.clone(),
            agent: args.agent,
            host: host_name.clone(),
        },
        host,
    )
    .context("cannot start the machines service")?;
    machines.set_config_feed(Arc::new(crate::feed::MachineConfig {
        config: config.clone(),
        store: store.clone(),
    }));
    let machines_loop = tokio::spawn(machines.clone().run(stop_rx.clone()));
    let machine_triggers = tokio::spawn(machines.clone().run_triggers(stop_rx.clone()));
    let ingress = tokio::net::TcpListener::bind(args.ingress).await.with_context(|| {
        format!(
            "cannot listen for apps on {}: is another program using that port? pick another with --ingress",
            args.ingress
        )
    })?;
    let ingress_addr = ingress.local_addr().ok();
    // On etcd, other hosts may share the store: component bytes go through
    // it too, so that every host can serve every app and run every run.
    let shared = matches!(opened, OpenedStore::Etcd(_));
    // Whether this host leads, for what only the leader does that is not
    // started with its term (apps' event triggers); set once hosts join.
    let (leading_tx, leading_rx) = watch::channel(false);
    let apps = hearth_apps::Apps::new(
        store.clone(),
        config.clone(),
        hearth_apps::Options {
            shared,
            // On a shared store, event triggers fire on the leader only.
            events_leading: shared.then(|| leading_rx.clone()),
            // Requests the ingress passes to a service's machines keep
            // them awake, and wake one that sleeps.
            activity: networks.activity(),
            ..hearth_apps::Options::new(data_dir, &cache_dir)
        },
    )
    .context("cannot start the apps service")?;
    let apps_loop = tokio::spawn(apps.clone().run(stop_rx.clone()));
    let workflows = hearth_workflows::Workflows::new(
        store.clone(),
        config.clone(),
        // Its claims name this host, so that another host's executor never
        // takes them for its own last life's.
        hearth_workflows::Options {
            shared,
            executor: host_name.clone(),
            // A call to a service's sleeping machine wakes it first.
            activity: networks.activity(),
            ..hearth_workflows::Options::new(data_dir, &cache_dir)
        },
    )
    .context("cannot start the workflows service")?;
    apps.set_hook("hooks.localhost", webhooks(workflows.clone()));
    let workflows_loop = tokio::spawn({
        let (workflows, stop) = (workflows.clone(), stop_rx.clone());
        async move {
            if let Err(error) = workflows.run(stop).await {
                tracing::error!(error = %error, "The workflows service stopped.");
            }
        }
    });
    let ingress_loop = tokio::spawn({
        let (apps, stop) = (apps.clone(), stop_rx.clone());
        async move {
            if let Err(error) = apps.serve_ingress(ingress, budget.ingress(), stop).await {
                tracing::error!(error = %error, "The apps ingress stopped.");
            }
        }
    });
    let host_record =
        crate::cluster::record(&host_name, &machines.host(), data_dir, tcp_addr, ingress_addr, overlay);
    let hosts = match &opened {
        // No other daemon can open the embedded store: this host is alone.
        OpenedStore::Redb(_) => hearth_hosts::Hosts::alone(store.clone(), host_record),
        OpenedStore::Etcd(_) => hearth_hosts::Hosts::join(store.clone(), data_dir, host_record)
            .await
            .context("cannot join the hosts sharing the store")?,
    };
    tokio::spawn({
        let mut term = hosts.term();
        async move {
            loop {
                let leads = term.borrow_and_update().is_some();
                leading_tx.send_replace(leads);
                if term.changed().await.is_err() {
                    return;
                }
            }
        }
    });
    let hosts_loop = tokio::spawn(hosts.clone().run(
        crate::cluster::fence(store.clone()),
        Arc::new(crate::cluster::Failover),
        stop_rx.clone(),
    ));
    // KVM present is not KVM working: find out in the background, and
    // tell the other hosts what this one can run then.
    tokio::spawn({
        let (machines, hosts) = (machines.clone(), hosts.clone());
        async move {
            machines.probe_kvm().await;
            let backends = crate::cluster::backends(&machines.host());
            if let Err(error) = hosts.update(|record| record.backends = backends).await {
                tracing::warn!(error = %error, "Cannot update this host's record after the KVM probe.");
            }
        }
    });
    let services = hearth_services::Services::new(store.clone(), machines.clone());
    services.set_placer(Arc::new(crate::cluster::Placer {
        hosts: hosts.clone(),
        machines: machines.clone(),
        networks: networks.clone(),
    }));
    // One supervisor for the whole cloud: the leader's.
    let services_loop =
        tokio::spawn(crate::cluster::while_leading(hosts.term(), stop_rx.clone(), "services", {
            let (services, fence) = (services.clone(), crate::cluster::fence(store.clone()));
            move |stop, term| services.clone().run_fenced(fence(term), stop)
        }));
    let external_url = match tcp_addr {
        Some(addr) => format!("http://{addr}/v1/alerts"),
        None => format!("unix://{}/v1/alerts", socket_path.display()),
    };
    let receivers = crate::alerting::Receivers {
        config: config.clone(),
        workflows: workflows.clone(),
        external_url: external_url.clone(),
    };
    let monitor = hearth_monitor::Monitor::open(
        store.clone(),
        Arc::new(receivers),
        hearth_monitor::Options { external_url, shared },
    )
    .await
    .context("cannot start the alerting service")?;
    crate::alerting::tap_logs(&monitor, &apps, &workflows);
    crate::alerting::tail_machine_logs(&monitor, &machines, &services, stop_rx.clone());
    // Alone, the loop runs from the start; on a shared store, one for the
    // whole cloud: the leader's, so that each notification goes once.
    let monitor_loop = if shared {
        tokio::spawn(crate::cluster::while_leading(hosts.term(), stop_rx.clone(), "alerts", {
            let (monitor, fence) = (monitor.clone(), crate::cluster::fence(store.clone()));
            move |stop, term| monitor.clone().run_fenced(fence(term), stop)
        }))
    } else {
        tokio::spawn(monitor.clone().run(stop_rx.clone()))
    };
    let metrics = crate::metrics::open(data_dir)?;
    crate::alerting::feed_samples(&monitor, &metrics);
    let metrics_loop = tokio::spawn(metrics.clone().run(
        crate::metrics::collectors(crate::metrics::Sources {
            store: store.clone(),
            store_file: match &opened {
                OpenedStore::Redb(redb) => Some(redb.path().to_owned()),
                OpenedStore::Etcd(_) => None,
            },
            apps: apps.clone(),
            machines: machines.clone(),
            workflows: workflows.clone(),
        }),
        stop_rx.clone(),
    ));
    let (store_backend, store_location) = opened.describe();
    let state = AppState::new(
        store,
        hearth_api::server::Subsystems {
            machines,
            networks,
            apps,
            workflows,
            services,
            config,
            monitor,
            metrics,
            hosts,
        },
        DaemonInfo {
            data_dir: data_dir.to_owned(),
            socket: socket_path.clone(),
            tcp: tcp_addr,
            store_backend,
            store_location,
            ingress: ingress_addr,
            dns: dns_addr.clone(),
            ui: ui_addr.clone(),
        },
        stop_rx,
    );
    if let Some(lifetime) = test_millis(EVENT_STREAM_LIFETIME_ENV) {
        tracing::warn!(?lifetime, "A test lifetime is set for event streams.");
        state.set_event_stream_lifetime(lifetime);
    }

    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(hearth_listen::serve(
        unix,
        budget.api_unix(),
        TowerToHyperService::new(server::router(state.clone())),
        stop_tx.subscribe(),
    ));
    if let Some(listener) = tcp {
        servers.spawn(hearth_listen::serve(
            listener,
            budget.api_tcp(),
            TowerToHyperService::new(server::router_with_token(state.clone(), Token::new(token.clone()))),
            stop_tx.subscribe(),
        ));
    }
    if let (Ok(listener), Ok(addr)) = (ui, &ui_addr) {
        servers.spawn(hearth_listen::serve(
            listener,
            budget.ui(),
            TowerToHyperService::new(hearth_api::ui::router(state.clone(), Token::new(token), *addr)),
            stop_tx.subscribe(),
        ));
    }
    tracing::info!(
        version = hearth_api::VERSION,
        host = %host_name,
        data_dir = %data_dir.display(),
        socket = %socket_path.display(),
        tcp = tcp_addr.map(|a| a.to_string()),
        ingress = ingress_addr.map(|a| a.to_string()),
        dns = dns_addr.as_ref().map_or_else(|problem| format!("off ({problem})"), ToString::to_string),
        ui = ui_addr.as_ref().map_or_else(|problem| format!("off ({problem})"), |a| format!("http://{a}/ui/")),
        nofile = budget.nofile(),
        "Daemon ready."
    );

    let signal = signals.wait().await;
    tracing::info!(signal, "Shutting down.");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(result) = servers.join_next().await {
            if let Err(error) = result {
                tracing::warn!(%error, "API listener task failed.");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            timeout_secs = DRAIN_TIMEOUT.as_secs(),
            "Requests still running at the drain deadline were cut off."
        );
        servers.abort_all();
    }
    let _ = services_loop.await;
    let _ = hosts_loop.await;
    let _ = metrics_loop.await;
    let _ = monitor_loop.await;
    let _ = config_loop.await;
    let _ = machines_loop.await;
    let _ = machine_triggers.await;
    let _ = apps_loop.await;
    let _ = workflows_loop.await;
    let _ = ingress_loop.await;
    let _ = networks_loop.await;
    if let Some(host_dns_loop) = host_dns_loop {
        let _ = host_dns_loop.await;
    }
    drop(state);
    opened.shutdown().await;
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("Stopped.");
    Ok(())
}

/// The machines in the store, as (name, host), read without the machines
/// service (it starts later, under the host's name).
async fn machine_hosts(store: &dyn hearth_store::Store) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let range = store.range(hearth_machines::record::PREFIX).await.context("cannot read the machines")?;
    Ok(range
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<hearth_machines::record::MachineRecord>(&kv.value).ok())
        .map(|m| (m.name, m.host))
        .collect())
}

/// Test overrides of the listeners' timeouts, in milliseconds, so that
/// tests of the timeouts take a moment; never set outside tests.
const HEADER_TIMEOUT_ENV: &str = "HEARTH_TEST_HEADER_TIMEOUT_MS";
const IDLE_TIMEOUT_ENV: &str = "HEARTH_TEST_IDLE_TIMEOUT_MS";
const STALL_TIMEOUT_ENV: &str = "HEARTH_TEST_STALL_TIMEOUT_MS";
/// The same for how long an event stream lasts.
const EVENT_STREAM_LIFETIME_ENV: &str = "HEARTH_TEST_EVENT_STREAM_LIFETIME_MS";

/// A test override in milliseconds, if set.
fn test_millis(name: &str) -> Option<Duration> {
    std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis)
}

/// Raises the descriptor limit to its hard limit and shares it out between
/// the listeners (see `hearth_listen::Budget`).
fn connection_budget() -> anyhow::Result<hearth_listen::Budget> {
    let budget = hearth_listen::Budget::raise_nofile()
        .context("cannot read the file-descriptor limit (RLIMIT_NOFILE)")?;
    let (header, idle, stall) =
        (test_millis(HEADER_TIMEOUT_ENV), test_millis(IDLE_TIMEOUT_ENV), test_millis(STALL_TIMEOUT_ENV));
    if header.is_none() && idle.is_none() && stall.is_none() {
        return Ok(budget);
    }
    tracing::warn!(?header, ?idle, ?stall, "Test timeouts are set for the listeners.");
    Ok(budget
        .with_timeouts(
            header.unwrap_or(hearth_listen::HEADER_READ_TIMEOUT),
            idle.unwrap_or(hearth_listen::IDLE_TIMEOUT),
        )
        .with_stall_timeout(stall.unwrap_or(hearth_listen::STALL_TIMEOUT)))
}

/// The signals that stop the daemon, caught from the moment they are
/// installed (one that arrives before [`Signals::wait`] is kept).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        })
    }

    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Creates the data dir, private to the user: the socket in it is the API
/// without a token.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!("cannot create the data directory {}: choose another with --data-dir", dir.display())
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
    Ok(())
}

/// Returns the API token, creating it (mode 0600) on first start.
fn ensure_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = paths::token(data_dir);
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(mut file) => {
            let token = random_token().context("cannot generate an API token")?;
            file.write_all(token.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write the API token to {}", path.display()))?;
            tracing::info!(path = %path.display(), "Created an API token.");
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            check_token_mode(&path)?;
            let token = paths::read_token(data_dir)?;
            if token.len() < 32 {
                bail!(
                    "the API token in {} is too short to be safe: delete the file and restart to get a new one",
                    path.display()
                );
            }
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot create the API token file {}", path.display())),
    }
}

/// Refuses a token file that another user owns or that group or others
/// may read or write, as sshd refuses such a key file: the token may
/// already have leaked, which quietly tightening the mode would hide.
fn check_token_mode(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mode = meta.mode() & 0o777;
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        bail!(
            "the API token file {} belongs to uid {}, not to this daemon's user (uid {uid}): delete it to get a new token on restart",
            path.display(),
            meta.uid()
        );
    }
    if mode & 0o077 != 0 {
        bail!(
            "the API token file {} has mode {mode:04o}, so other users may have read it: delete it to get a new token on restart (clients then need the new one), or `chmod 600` it if you are sure it has not leaked",
            path.display()
        );
    }
    Ok(())
}

fn parse_prefix(text: &str) -> Result<String, String> {
    if (1..=4).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?}: use 1 to 4 lowercase letters or digits"))
    }
}

fn random_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Binds the API socket, replacing a stale one. A live one means another
/// daemon is running: the store lock has normally said so already.
fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another hearth daemon is already serving {}: stop it first, or use another --data-dir",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot create the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make the API socket {} private", path.display()))?;
    Ok(listener)
}

/// The workflows' webhooks, served on the ingress at `hooks.localhost`.
fn webhooks(workflows: hearth_workflows::Workflows) -> hearth_apps::hooks::HookHandler {
    std::sync::Arc::new(move |request: hearth_apps::hooks::HookRequest| {
        let workflows = workflows.clone();
        Box::pin(async move {
            let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
            let reply = workflows
                .webhook(
                    &request.method,
                    &request.path,
                    request.query.as_deref(),
                    header("x-hearth-signature"),
                    header("idempotency-key"),
                    &request.body,
                )
                .await;
            hearth_apps::hooks::HookResponse {
                status: reply.status,
                content_type: "application/json",
                body: reply.body,
            }
        })
    })
}
