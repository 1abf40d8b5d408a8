//! `hearth bench services`: failure detection, DNS lookups and a rolling
//! deploy under load, through a running daemon.
//!
//! A client of a running daemon on this host, because what it measures is
//! the registry itself:
//!
//! 1. **DNS lookups per second** of the daemon's host listener for a
//!    registered service with three instances (no VM needed), against a
//!    plain responder of the same three records written here with
//!    `hickory-proto` (the floor: answering with nothing behind it), with
//!    the same closed-loop load of concurrent UDP clients, the two servers
//!    in turn for a few rounds, each one's figure its median round.
//! 2. **Failure detection**: a service of `--count` machines running a
//!    busybox httpd, checked with `http:/` at the default interval. Each
//!    run kills one instance's VM process with SIGKILL and times, from the
//!    kill, its leaving the passing endpoints (a blocking query), its
//!    address leaving the host DNS answer (asked every 10 ms), and a
//!    replacement passing.
//! 3. **A rolling deploy under load**: a steady rate of HTTP requests through
//!    the ingress (`NAME.localhost`), each on a new connection, for a few
//!    seconds and then while the service rolls to a new command, counting
//!    failed requests in each phase (the steady phase says what the service
//!    fails when nothing changes). Not measured, and said so, on a daemon
//!    whose ingress does not route services.
//!
//! Everything it creates (two services, and with them their machines) is
//! removed again, also when it fails or is interrupted.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hearth_client::types::{
    CreateService, DeployService, Endpoints, EndpointsQuery, Heartbeat, RegisterInstance, RolloutState,
};
use hearth_client::{Client, Endpoint};
use hearth_machines::vmm;
use hickory_proto::op::ResponseCode;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::output::Table;
use crate::{Created, Kind, Stats, measured, millis};

mod dns;

/// The port the HTTP server listens on in each instance.
const PORT: u16 = 8080;
/// The check the service gets: an HTTP GET of `/`, at the default interval.
const CHECK: &str = "http:/";
/// What the issue asks of failure detection: one check interval and half a second.
const GOAL_SLACK: Duration = Duration::from_millis(500);
/// How often the host DNS listener is asked while an instance dies.
const DNS_POLL: Duration = Duration::from_millis(10);
/// How long one of those polls waits for its answer.
const DNS_POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest wait for a killed instance to leave the endpoints and DNS.
const LEAVE_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for a service to have its count passing: machines boot
/// slowly under software emulation, three at a time slower still.
const PASSING_LIMIT: Duration = Duration::from_secs(900);
/// Longest a rolling deploy may take.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(1800);
/// Steady load before the deploy starts, counted apart: what the service
/// fails when nothing changes.
const STEADY: Duration = Duration::from_secs(5);
/// How long the ingress gets to answer a 2xx for the service before the deploy.
const PROBE_LIMIT: Duration = Duration::from_secs(10);
/// One request through the ingress, at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The registered instances' TTL; a heartbeat renews it every third of it.
const TTL: Duration = Duration::from_secs(30);
/// Load before each measured DNS load, so that both servers start warm.
const DNS_WARM_UP: Duration = Duration::from_secs(1);
/// Failed requests whose reasons the report keeps.
const FAILURES_KEPT: usize = 5;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image of the service's machines. It must have `sh` and busybox
    /// (for its httpd); make one with `hearth image build debian --packages
    /// busybox --name bench-services`.
    #[arg(long, default_value = "bench-services")]
    image: String,
    /// Machines in the service.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    count: u32,
    /// VMs killed, one after the other (each replaced before the next).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// The network the machines join [default: the daemon's default network].
    #[arg(long)]
    network: Option<String>,
    /// Concurrent UDP clients of the DNS load.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: u32,
    /// Seconds of DNS load per server and round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Rounds of DNS load: each loads both servers in turn, and each
    /// server's figure is its median round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Concurrent HTTP clients through the ingress during the rolling deploy.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    http_clients: u32,
    /// Requests per second of those clients together: a steady load, each
    /// client starting a request at most every CLIENTS/RATE seconds (a
    /// failure does not make it ask sooner). Under software emulation an
    /// instance sustains some tens of requests a second, hence the low
    /// default.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    http_rate: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
struct Report {
    image: String,
    count: u32,
    /// The backend new machines get, from `hearth status`.
    default_backend: String,
    cores: usize,
    failure: FailureDetection,
    dns: DnsLoad,
    deploy: Figure<RollingDeploy>,
}

/// A figure, or why this run could not take it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Figure<T> {
    Measured(T),
    Unavailable { unavailable: String },
}

/// From a VM's SIGKILL to each of these.
#[derive(Debug, Serialize)]
struct FailureDetection {
    runs: usize,
    /// The service's check.
    check: String,
    check_interval_ms: f64,
    /// Leaving the passing endpoints (the blocking query wakes).
    endpoints: Stats,
    /// Its address leaving the host listener's answer for NAME.service.hearth.
    dns: Stats,
    /// The count passing again, a new machine in the dead one's place.
    replaced: Stats,
    /// One check interval and half a second, for `endpoints` and `dns`.
    goal_ms: f64,
}

impl FailureDetection {
    /// Whether every run left the endpoints and DNS within the goal.
    fn goal_met(&self) -> bool {
        self.endpoints.max_ms < self.goal_ms && self.dns.max_ms < self.goal_ms
    }
}

#[derive(Debug, Serialize)]
struct DnsLoad {
    name: String,
    records: usize,
    clients: u32,
    /// Per server and round.
    duration_secs: u64,
    rounds: u32,
    hearth: dns::Lookups,
    peer: dns::Lookups,
    /// hearth's lookups per second over the peer's.
    hearth_over_peer: f64,
}

#[derive(Debug, Serialize)]
struct RollingDeploy {
    /// Where the load went, and as which host.
    url: String,
    host: String,
    clients: u32,
    /// Requests per second asked for, all clients together.
    rate: u32,
    from_version: u32,
    to_version: u32,
    /// `done`, or `rolled back: why`.
    outcome: String,
    /// From the deploy call to the end of the rollout.
    duration_ms: f64,
    /// The requests started in the seconds before the deploy.
    steady: Tally,
    steady_secs: u64,
    /// The requests started from the deploy call to the end of the rollout.
    rollout: Tally,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    let created = Created::new(Kind::Service);
    measured(client, &created, args.json, measure(client, &args, &created), render).await
}

async fn measure(client: &Client, args: &Args, created: &Created) -> anyhow::Result<Report> {
    if matches!(client.endpoint(), Endpoint::Tcp { .. }) {
        bail!(
            "hearth bench services kills VM processes and asks the DNS listener on loopback, so it runs on the daemon's host: drop --host and talk to the daemon over its socket"
        );
    }
    let status = client.status().await?;
    let dns_addr: SocketAddr = match &status.dns.listen {
        Some(listen) => listen.parse().context("the daemon reports a DNS address that is not HOST:PORT")?,
        None => bail!(
            "the daemon's host DNS listener is off ({}): start it with --dns 127.0.0.1:0 (as `make bench-services` does) or free port 8600",
            status.dns.problem.as_deref().unwrap_or("no reason given")
        ),
    };
    client.image(&args.image).await.with_context(|| {
        format!(
            "the benchmark runs busybox httpd in machines of {}: build it with `hearth image build debian --packages busybox --name bench-services`, or name another image with sh and busybox with --image",
            args.image
        )
    })?;
    let pid = std::process::id();

    let dns_name = format!("bench-dns-{pid}");
    eprintln!(
        "[1/3] DNS lookups: {} clients, {} s each, the host listener {dns_addr} and a plain hickory-proto responder ...",
        args.clients, args.duration
    );
    let dns = dns_load(client, dns_addr, &dns_name, args, created).await?;
    created.remove(client, &dns_name).await?;

    let name = format!("bench-svc-{pid}");
    let count = args.count as usize;
    eprintln!(
        "[2/3] Failure detection: service {name}, {count} × {} (check {CHECK}), {} run(s) ...",
        args.image, args.runs
    );
    let failure = failure_detection(client, dns_addr, &name, args, created).await?;

    let deploy = match &status.ingress {
        None => Figure::Unavailable { unavailable: "the daemon has no ingress".into() },
        Some(ingress) => {
            let ingress: SocketAddr =
                ingress.parse().context("the daemon reports an ingress address that is not HOST:PORT")?;
            eprintln!("[3/3] Rolling deploy of {name} under load through the ingress {ingress} ...");
            rolling_deploy(client, ingress, &name, args.http_clients, args.http_rate).await?
        }
    };
    if let Figure::Unavailable { unavailable } = &deploy {
        eprintln!("      not measured: {unavailable}");
    }
    created.remove(client, &name).await?;
    Ok(Report {
        image: args.image.clone(),
        count: args.count,
        default_backend: status.host.default_backend.to_string(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        failure,
        dns,
        deploy,
    })
}

// ---------------------------------------------------------------------------
// DNS lookups per second.

async fn dns_load(
    client: &Client,
    server: SocketAddr,
    name: &str,
    args: &Args,
    created: &Created,
) -> anyhow::Result<DnsLoad> {
    let addresses: Vec<Ipv4Addr> = (11..14).map(|last| Ipv4Addr::new(127, 0, 0, last)).collect();
    created.add(name);
    for (i, address) in addresses.iter().enumerate() {
        let body = RegisterInstance {
            id: Some(format!("{name}-{}", i + 1)),
            address: address.to_string(),
            port: PORT,
            ttl_s: TTL.as_secs(),
            ..Default::default()
        };
        client.register_instance(name, &body).await?;
    }
    let heartbeats = {
        let (client, name, count) = (client.clone(), name.to_owned(), addresses.len());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TTL / 3);
            loop {
                every.tick().await;
                for i in 1..=count {
                    let _ = client.heartbeat(&name, &format!("{name}-{i}"), &Heartbeat::default()).await;
                }
            }
        })
    };
    let outcome = dns_load_registered(server, name, &addresses, args).await;
    heartbeats.abort();
    outcome
}

async fn dns_load_registered(
    server: SocketAddr,
    name: &str,
    addresses: &[Ipv4Addr],
    args: &Args,
) -> anyhow::Result<DnsLoad> {
    let fqdn = dns::fqdn(&format!("{name}.service.hearth"))?;
    // The listener learns of the registrations a moment later.
    let answer = dns_until(server, &fqdn, Duration::from_secs(10), |found| found == addresses)
        .await
        .with_context(|| format!("the host DNS listener never answered {fqdn} with {addresses:?}"))?;
    let records = dns::a_records(&answer, &fqdn)?;
    let peer = dns::Peer::start(fqdn.clone(), records.clone())?;
    let clients = args.clients as usize;
    let duration = Duration::from_secs(args.duration);
    let hearth_label = format!("hearth host listener {server}");
    let peer_label = format!("plain hickory-proto responder {}", peer.addr);
    let measured = async {
        dns::load(server, &hearth_label, &fqdn, records.len(), clients, DNS_WARM_UP).await?;
        dns::load(peer.addr, &peer_label, &fqdn, records.len(), clients, DNS_WARM_UP).await?;
        let (mut hearth_rounds, mut peer_rounds) = (vec![], vec![]);
        // The servers in turn, round after round, so that other work on the
        // machine weighs on both alike.
        for round in 1..=args.rounds {
            let h = dns::load(server, &hearth_label, &fqdn, records.len(), clients, duration).await?;
            let p = dns::load(peer.addr, &peer_label, &fqdn, records.len(), clients, duration).await?;
            eprintln!(
                "      round {round}: hearth {:.0} lookups/s ({} timeouts), peer {:.0} lookups/s ({} timeouts)",
                h.per_sec, h.timeouts, p.per_sec, p.timeouts
            );
            hearth_rounds.push(h);
            peer_rounds.push(p);
        }
        anyhow::Ok((dns::median_round(hearth_rounds), dns::median_round(peer_rounds)))
    }
    .await;
    peer.stop().await;
    let (hearth, peer) = measured?;
    let (hearth, peer) = (hearth.context("no round was measured")?, peer.context("no round was measured")?);
    Ok(DnsLoad {
        name: fqdn.to_string(),
        records: records.len(),
        clients: args.clients,
        duration_secs: args.duration,
        rounds: args.rounds,
        hearth_over_peer: hearth.per_sec / peer.per_sec,
        hearth,
        peer,
    })
}

/// Asks `server` for `name` every [`DNS_POLL`] until a NOERROR answer's
/// sorted addresses satisfy `wanted`, for up to `limit`; returns it.
async fn dns_until(
    server: SocketAddr,
    name: &hickory_proto::rr::Name,
    limit: Duration,
    wanted: impl Fn(&[Ipv4Addr]) -> bool,
) -> anyhow::Result<hickory_proto::op::Message> {
    let socket = dns::client_socket(server).await?;
    let mut buf = vec![0u8; 4096];
    let started = Instant::now();
    let mut last = "no answer".to_owned();
    let mut id = 0u16;
    loop {
        id = id.wrapping_add(1);
        if let Some(answer) = dns::ask(&socket, name, id, DNS_POLL_TIMEOUT, &mut buf).await? {
            let found = dns::addresses(&answer);
            if answer.metadata.response_code == ResponseCode::NoError && wanted(&found) {
                return Ok(answer);
            }
            last = format!("{:?} {found:?}", answer.metadata.response_code);
        }
        if started.elapsed() > limit {
            bail!("no fitting answer within {} s (last: {last})", limit.as_secs());
        }
        tokio::time::sleep(DNS_POLL).await;
    }
}

// ---------------------------------------------------------------------------
// Failure detection.

/// The HTTP server the instances run: busybox's httpd, answering `body`
/// at `/`, a process per connection, so that concurrent requests and the
/// health check never wait on each other.
fn server(body: &str) -> Vec<String> {
    let script =
        format!("mkdir -p /www && echo {body} > /www/index.html && exec busybox httpd -f -p {PORT} -h /www");
    vec!["sh".into(), "-c".into(), script]
}

async fn failure_detection(
    client: &Client,
    dns_addr: SocketAddr,
    name: &str,
    args: &Args,
    created: &Created,
) -> anyhow::Result<FailureDetection> {
    let count = args.count as usize;
    created.add(name);
    let service = client
        .create_service(&CreateService {
            name: name.to_owned(),
            image: args.image.clone(),
            count: Some(args.count),
            port: PORT,
            checks: vec![CHECK.into()],
            network: args.network.clone(),
            command: Some(server("v1")),
            description: Some("hearth bench services; removed when the benchmark ends".into()),
            ..Default::default()
        })
        .await?;
    let check = service.checks.first().cloned().unwrap_or_else(|| CHECK.into());
    let interval = hearth_services::check::DEFAULT_INTERVAL;
    let started = Instant::now();
    wait_count(client, name, count, PASSING_LIMIT).await?;
    eprintln!("      {count}/{count} passing after {:.1} s", started.elapsed().as_secs_f64());

    let fqdn = dns::fqdn(&format!("{name}.service.hearth"))?;
    let (mut left, mut gone, mut replaced) = (vec![], vec![], vec![]);
    for run in 0..args.runs as usize {
        let (endpoints, dns, back) = kill_one(client, dns_addr, &fqdn, name, count, run).await?;
        eprintln!(
            "      run {}: out of the endpoints after {:.0} ms, out of DNS after {:.0} ms, replaced and passing after {:.1} s",
            run + 1,
            endpoints,
            dns,
            back / 1000.0
        );
        left.push(endpoints);
        gone.push(dns);
        replaced.push(back);
    }
    Ok(FailureDetection {
        runs: left.len(),
        check,
        check_interval_ms: millis(interval),
        endpoints: Stats::of(left),
        dns: Stats::of(gone),
        replaced: Stats::of(replaced),
        goal_ms: millis(interval + GOAL_SLACK),
    })
}

/// Waits with blocking queries until `count` instances pass; returns the
/// endpoints then.
async fn wait_count(client: &Client, name: &str, count: usize, limit: Duration) -> anyhow::Result<Endpoints> {
    let started = Instant::now();
    let mut index = 0;
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            bail!(
                "service {name} has fewer than {count} passing instances after {} s; `hearth service inspect {name}` shows why",
                limit.as_secs()
            );
        }
        let wait = left.min(Duration::from_secs(30));
        let q = EndpointsQuery { index: Some(index), wait: Some(format!("{}ms", wait.as_millis().max(1))) };
        let e = client.service_endpoints(name, &q).await?;
        if e.instances.len() >= count {
            return Ok(e);
        }
        index = e.index;
    }
}

/// Kills the VM of one instance (the `run`-th, round the instances) and
/// returns the milliseconds from the kill to its leaving the endpoints, to
/// its address leaving DNS, and to the count passing again.
async fn kill_one(
    client: &Client,
    dns_addr: SocketAddr,
    fqdn: &hickory_proto::rr::Name,
    name: &str,
    count: usize,
    run: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let before = wait_count(client, name, count, PASSING_LIMIT).await?;
    let mut instances = before.instances.clone();
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    let victim = instances[run % instances.len()].clone();
    let victim_ip: Ipv4Addr = victim
        .address
        .parse()
        .with_context(|| format!("instance {} has the address {:?}, not IPv4", victim.id, victim.address))?;
    let mut all: Vec<Ipv4Addr> = instances.iter().filter_map(|i| i.address.parse().ok()).collect();
    all.sort();
    // DNS follows the endpoints a moment later: start from a full answer.
    dns_until(dns_addr, fqdn, Duration::from_secs(30), |found| found == all)
        .await
        .with_context(|| format!("the host DNS listener did not answer {fqdn} with all of {all:?}"))?;
    let detail = client.service(name).await?;
    let machine = detail
        .instances
        .iter()
        .find(|i| i.id == victim.id)
        .and_then(|i| i.machine.clone())
        .with_context(|| format!("instance {} of {name} has no machine", victim.id))?;
    let pid = client
        .machine(&machine)
        .await?
        .pid
        .with_context(|| format!("the daemon reports no VM process for {machine}"))?;
    if !vmm::is_vm_process(pid, &machine) {
        bail!(
            "process {pid} is not the VM of {machine} on this host: the benchmark kills only VMs it can tell"
        );
    }

    let watcher = {
        let fqdn = fqdn.clone();
        tokio::spawn(async move {
            dns_until(dns_addr, &fqdn, LEAVE_LIMIT, |found| !found.contains(&victim_ip)).await?;
            anyhow::Ok(Instant::now())
        })
    };
    let killed = Instant::now();
    if !vmm::signal(pid, nix::sys::signal::Signal::SIGKILL) {
        watcher.abort();
        bail!("cannot kill the VM process {pid} of {machine}: run the benchmark as the daemon's user");
    }
    let mut index = before.index;
    let mut left = None;
    let back = loop {
        let limit = if left.is_none() { LEAVE_LIMIT } else { PASSING_LIMIT };
        if killed.elapsed() > limit {
            watcher.abort();
            match left {
                None => bail!(
                    "{} was still a passing endpoint of {name} {} s after its VM was killed",
                    victim.id,
                    limit.as_secs()
                ),
                Some(_) => bail!(
                    "{name} did not have {count} passing instances again {} s after a VM was killed; `hearth service history {name}` shows what was done",
                    limit.as_secs()
                ),
            }
        }
        let q = EndpointsQuery { index: Some(index), wait: Some("5s".into()) };
        let e = client.service_endpoints(name, &q).await?;
        let now = Instant::now();
        index = e.index;
        if left.is_none() && !e.instances.iter().any(|i| i.id == victim.id) {
            left = Some(now);
        }
        if left.is_some() && e.instances.len() >= count {
            break now;
        }
    };
    let dns_gone = watcher
        .await
        .context("the DNS watcher panicked")?
        .with_context(|| format!("{victim_ip} of {} stayed in the DNS answer for {fqdn}", victim.id))?;
    let left = left.unwrap_or(back);
    Ok((millis(left - killed), millis(dns_gone.saturating_duration_since(killed)), millis(back - killed)))
}

// ---------------------------------------------------------------------------
// A rolling deploy under load.

/// What one request through the ingress got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// A 2xx, with its body.
    Ok(String),
    /// Another status, with the start of its body.
    Status(StatusCode, String),
    /// No answer: the connection failed, or the time ran out.
    Failed(String),
}

impl Answer {
    /// Why a request failed, in a line; `None` for a 2xx.
    fn failure(&self) -> Option<String> {
        match self {
            Answer::Ok(_) => None,
            Answer::Status(status, body) => Some(format!("{status}: {body}")),
            Answer::Failed(why) => Some(why.clone()),
        }
    }
}

/// One GET / with `Host: host` on a new connection, as a new client's would be.
async fn get(ingress: SocketAddr, host: &str) -> Answer {
    let request = async {
        let stream = tokio::net::TcpStream::connect(ingress).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get("/").header(HOST, host).body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        drop(sender);
        conn.abort();
        anyhow::Ok((status, body))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Err(_) => Answer::Failed(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
        Ok(Err(e)) => Answer::Failed(format!("{e:#}")),
        Ok(Ok((status, body))) if status.is_success() => {
            Answer::Ok(String::from_utf8_lossy(&body).trim().to_owned())
        }
        Ok(Ok((status, body))) => {
            Answer::Status(status, crate::output::cell(String::from_utf8_lossy(&body).trim(), 200))
        }
    }
}

/// Requests, failures (non-2xx answers and connection errors) and answers
/// by version.
#[derive(Debug, Default, Serialize)]
struct Tally {
    requests: u64,
    failures: u64,
    answered_old: u64,
    answered_new: u64,
    /// The first few failures, as they were.
    first_failures: Vec<String>,
}

impl Tally {
    fn count(&mut self, answer: Answer) {
        self.requests += 1;
        match answer {
            Answer::Ok(body) if body == "v2" => self.answered_new += 1,
            Answer::Ok(_) => self.answered_old += 1,
            failed => {
                self.failures += 1;
                if self.first_failures.len() < FAILURES_KEPT {
                    self.first_failures.extend(failed.failure());
                }
            }
        }
    }

    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.answered_old += other.answered_old;
        self.answered_new += other.answered_new;
        for why in other.first_failures {
            if self.first_failures.len() < FAILURES_KEPT {
                self.first_failures.push(why);
            }
        }
    }
}

/// Whether the ingress routes `host` to the service: a 2xx within
/// [`PROBE_LIMIT`] (an instance may still be coming up, so one failure
/// proves nothing), or why not. A 404 is the
/// ingress saying it has no route.
async fn probe(ingress: SocketAddr, host: &str) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let answer = get(ingress, host).await;
        match answer {
            Answer::Ok(_) => return Ok(()),
            Answer::Status(StatusCode::NOT_FOUND, body) => {
                return Err(format!("the ingress does not route services on this daemon: 404: {body}"));
            }
            _ if started.elapsed() > PROBE_LIMIT => {
                return Err(format!(
                    "the ingress answered no 2xx for {host} within {} s: {}",
                    PROBE_LIMIT.as_secs(),
                    answer.failure().unwrap_or_default()
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn rolling_deploy(
    client: &Client,
    ingress: SocketAddr,
    name: &str,
    clients: u32,
    rate: u32,
) -> anyhow::Result<Figure<RollingDeploy>> {
    let host = format!("{name}.localhost");
    let url = format!("http://{ingress}/");
    if let Err(why) = probe(ingress, &host).await {
        return Ok(Figure::Unavailable { unavailable: format!("{why} (GET {url} with Host: {host})") });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rolling = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    let every = Duration::from_secs_f64(f64::from(clients) / f64::from(rate));
    for i in 0..clients {
        let (stop, rolling, host) = (stop.clone(), rolling.clone(), host.clone());
        load.spawn(async move {
            // Spread over the interval, so that the clients do not ask in step.
            tokio::time::sleep(every * i / clients).await;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut steady, mut during) = (Tally::default(), Tally::default());
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let tally = if rolling.load(Ordering::Relaxed) { &mut during } else { &mut steady };
                tally.count(get(ingress, &host).await);
            }
            (steady, during)
        });
    }
    let rolled = async {
        tokio::time::sleep(STEADY).await;
        rolling.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let deploy = DeployService { command: Some(server("v2")), ..Default::default() };
        let service = client.deploy_service(name, &deploy).await?;
        let to = service.version.context("the daemon gave the deploy no version")?;
        let mut every = tokio::time::interval(Duration::from_millis(250));
        loop {
            every.tick().await;
            let detail = client.service(name).await?;
            let rollout = detail
                .service
                .rollout
                .filter(|r| r.to == to)
                .with_context(|| format!("another deploy of {name} replaced the benchmark's"))?;
            match rollout.state {
                RolloutState::Rolling if started.elapsed() > ROLLOUT_LIMIT => {
                    bail!("the rollout of {name} was still going after {} s", ROLLOUT_LIMIT.as_secs())
                }
                RolloutState::Rolling => {}
                RolloutState::Done => return Ok((rollout.from, to, "done".to_owned(), started.elapsed())),
                RolloutState::RolledBack => {
                    let why = rollout.reason.unwrap_or_else(|| "no reason given".into());
                    return Ok((rollout.from, to, format!("rolled back: {why}"), started.elapsed()));
                }
            }
        }
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut steady, mut during) = (Tally::default(), Tally::default());
    while let Some(joined) = load.join_next().await {
        let (s, d) = joined.context("a load client panicked")?;
        steady.add(s);
        during.add(d);
    }
    let (from_version, to_version, outcome, took) = rolled?;
    eprintln!(
        "      steady for {} s: {} requests, {} failed; {outcome} in {:.1} s: {} requests, {} failed",
        STEADY.as_secs(),
        steady.requests,
        steady.failures,
        took.as_secs_f64(),
        during.requests,
        during.failures
    );
    Ok(Figure::Measured(RollingDeploy {
        url,
        host,
        clients,
        rate,
        from_version,
        to_version,
        outcome,
        duration_ms: millis(took),
        steady,
        steady_secs: STEADY.as_secs(),
        rollout: during,
    }))
}

// ---------------------------------------------------------------------------
// The report.

fn seconds(ms: f64) -> String {
    format!("{:.3} s", ms / 1000.0)
}

fn render(r: &Report) -> String {
    let f = &r.failure;
    let mut out = format!(
        "hearth bench services: {} × {}, machines on {}, {} cores\n\n",
        r.count, r.image, r.default_backend, r.cores
    );
    let mut table = Table::new(vec!["FAILURE DETECTION (from a VM's SIGKILL)", "MEDIAN", "MAX", "GOAL"]);
    let goal = format!("< {}", seconds(f.goal_ms));
    table.row(vec![
        "out of the passing endpoints".into(),
        seconds(f.endpoints.median_ms),
        seconds(f.endpoints.max_ms),
        goal.clone(),
    ]);
    table.row(vec![
        "out of the host DNS answer".into(),
        seconds(f.dns.median_ms),
        seconds(f.dns.max_ms),
        goal,
    ]);
    table.row(vec![
        format!("a replacement passing ({}/{} again)", r.count, r.count),
        seconds(f.replaced.median_ms),
        seconds(f.replaced.max_ms),
        "-".into(),
    ]);
    out.push_str(&table.render());
    out.push_str(&format!(
        "{} run(s), check {} every {} s; out of endpoints and DNS within one interval + 0.5 s in every run: {}\n\n",
        f.runs,
        f.check,
        f.check_interval_ms / 1000.0,
        if f.goal_met() { "met" } else { "NOT met" }
    ));

    let d = &r.dns;
    let mut table = Table::new(vec![
        "DNS LOOKUPS (A, closed loop, median round)",
        "LOOKUPS/S",
        "ANSWERS",
        "TIMEOUTS",
        "WRONG",
        "EACH ROUND",
    ]);
    for l in [&d.hearth, &d.peer] {
        let rounds: Vec<String> = l.rounds_per_sec.iter().map(|r| format!("{r:.0}")).collect();
        table.row(vec![
            l.server.clone(),
            format!("{:.0}", l.per_sec),
            l.answers.to_string(),
            l.timeouts.to_string(),
            l.wrong.to_string(),
            rounds.join(" · "),
        ]);
    }
    out.push_str(&table.render());
    out.push_str(&format!(
        "{} with {} A records, {} UDP clients, {} round(s) of {} s per server; hearth / peer: {:.2}\n\n",
        d.name, d.records, d.clients, d.rounds, d.duration_secs, d.hearth_over_peer
    ));

    match &r.deploy {
        Figure::Measured(deploy) => {
            out.push_str(&format!(
                "ROLLING DEPLOY UNDER LOAD ({} clients, {} requests/s, a new connection each, {} as {})\n",
                deploy.clients, deploy.rate, deploy.url, deploy.host
            ));
            let mut table = Table::new(vec!["PHASE", "REQUESTS", "FAILED", "OLD VERSION", "NEW VERSION"]);
            let row = |table: &mut Table, phase: String, t: &Tally| {
                table.row(vec![
                    phase,
                    t.requests.to_string(),
                    t.failures.to_string(),
                    t.answered_old.to_string(),
                    t.answered_new.to_string(),
                ])
            };
            row(&mut table, format!("steady, {} s before the deploy", deploy.steady_secs), &deploy.steady);
            row(
                &mut table,
                format!("rollout, version {} → {}", deploy.from_version, deploy.to_version),
                &deploy.rollout,
            );
            out.push_str(&table.render());
            let failed = deploy.rollout.failures;
            out.push_str(&format!(
                "the rollout: {} in {}; failed requests during it: {failed} (goal 0: {})\n",
                deploy.outcome,
                seconds(deploy.duration_ms),
                if failed == 0 { "met" } else { "NOT met" }
            ));
            for (phase, t) in [("steady", &deploy.steady), ("rollout", &deploy.rollout)] {
                for why in &t.first_failures {
                    out.push_str(&format!("  {phase}: {why}\n"));
                }
            }
        }
        Figure::Unavailable { unavailable } => {
            out.push_str(&format!("ROLLING DEPLOY UNDER LOAD: not measured: {unavailable}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookups(server: &str, per_sec: f64) -> dns::Lookups {
        dns::Lookups {
            server: server.into(),
            addr: "127.0.0.1:8600".parse().unwrap(),
            per_sec,
            answers: (per_sec * 5.0) as u64,
            timeouts: 0,
            wrong: 0,
            rounds_per_sec: vec![per_sec - 1000.0, per_sec, per_sec + 500.0],
        }
    }

    fn report(deploy: Figure<RollingDeploy>, dns_ms: Vec<f64>) -> Report {
        Report {
            image: "bench-services".into(),
            count: 3,
            default_backend: "qemu-tcg".into(),
            cores: 2,
            failure: FailureDetection {
                runs: 3,
                check: "http:/".into(),
                check_interval_ms: 2000.0,
                endpoints: Stats::of(vec![900.0, 1100.0, 1000.0]),
                dns: Stats::of(dns_ms),
                replaced: Stats::of(vec![30_000.0, 32_000.0, 31_000.0]),
                goal_ms: 2500.0,
            },
            dns: DnsLoad {
                name: "bench-dns-1.service.hearth.".into(),
                records: 3,
                clients: 8,
                duration_secs: 5,
                rounds: 3,
                hearth: lookups("hearth host listener", 20_000.0),
                peer: lookups("plain hickory-proto responder", 40_000.0),
                hearth_over_peer: 0.5,
            },
            deploy,
        }
    }

    #[test]
    fn the_goal_holds_only_if_every_run_met_it() {
        let deploy = || Figure::Unavailable { unavailable: "x".into() };
        assert!(report(deploy(), vec![1000.0, 1200.0, 2400.0]).failure.goal_met());
        assert!(!report(deploy(), vec![1000.0, 1200.0, 2600.0]).failure.goal_met());
    }

    #[test]
    fn the_report_shows_each_figure_and_verdict() {
        let tally = |requests, old, new| Tally {
            requests,
            failures: requests - old - new,
            answered_old: old,
            answered_new: new,
            first_failures: vec![],
        };
        let deploy = Figure::Measured(RollingDeploy {
            url: "http://127.0.0.1:8080/".into(),
            host: "bench-svc-1.localhost".into(),
            clients: 4,
            rate: 20,
            from_version: 1,
            to_version: 2,
            outcome: "done".into(),
            duration_ms: 45_000.0,
            steady: Tally { first_failures: vec!["502 Bad Gateway: refused".into()], ..tally(100, 99, 0) },
            steady_secs: 5,
            rollout: tally(900, 500, 400),
        });
        let text = render(&report(deploy, vec![1100.0, 1300.0, 1200.0]));
        let expected = "\
hearth bench services: 3 × bench-services, machines on qemu-tcg, 2 cores

FAILURE DETECTION (from a VM's SIGKILL)   MEDIAN     MAX        GOAL
out of the passing endpoints              1.000 s    1.100 s    < 2.500 s
out of the host DNS answer                1.200 s    1.300 s    < 2.500 s
a replacement passing (3/3 again)         31.000 s   32.000 s   -
3 run(s), check http:/ every 2 s; out of endpoints and DNS within one interval + 0.5 s in every run: met

DNS LOOKUPS (A, closed loop, median round)   LOOKUPS/S   ANSWERS   TIMEOUTS   WRONG   EACH ROUND
hearth host listener                         20000       100000    0          0       19000 · 20000 · 20500
plain hickory-proto responder                40000       200000    0          0       39000 · 40000 · 40500
bench-dns-1.service.hearth. with 3 A records, 8 UDP clients, 3 round(s) of 5 s per server; hearth / peer: 0.50

ROLLING DEPLOY UNDER LOAD (4 clients, 20 requests/s, a new connection each, http://127.0.0.1:8080/ as bench-svc-1.localhost)
PHASE                           REQUESTS   FAILED   OLD VERSION   NEW VERSION
steady, 5 s before the deploy   100        1        99            0
rollout, version 1 → 2          900        0        500           400
the rollout: done in 45.000 s; failed requests during it: 0 (goal 0: met)
  steady: 502 Bad Gateway: refused
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_deploy_not_measured_says_why_and_failures_are_listed() {
        let text = render(&report(
            Figure::Unavailable { unavailable: "the ingress does not route services on this daemon".into() },
            vec![3000.0],
        ));
        assert!(text.contains("in every run: NOT met"), "{text}");
        assert!(
            text.ends_with(
                "ROLLING DEPLOY UNDER LOAD: not measured: the ingress does not route services on this daemon\n"
            ),
            "{text}"
        );
        let mut tally = Tally::default();
        tally.count(Answer::Ok("v1".into()));
        tally.count(Answer::Ok("v2".into()));
        tally.count(Answer::Status(StatusCode::BAD_GATEWAY, "no instance".into()));
        for i in 0..7 {
            tally.count(Answer::Failed(format!("refused {i}")));
        }
        assert_eq!((tally.requests, tally.answered_old, tally.answered_new, tally.failures), (10, 1, 1, 8));
        assert_eq!(tally.first_failures.len(), FAILURES_KEPT);
        assert_eq!(tally.first_failures[..2], ["502 Bad Gateway: no instance", "refused 0"]);
    }

    /// A server like the instances' netcat loop: one answer per connection,
    /// then close; 200 with `v2` for `Host: web.localhost`, 404 otherwise.
    async fn netcat_like() -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let len = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..len]).to_lowercase();
                let response = if request.contains("host: web.localhost\r\n") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nv2"
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno app"
                };
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_request_through_the_ingress_is_an_answer_or_a_failure_with_why() {
        let server = netcat_like().await;
        assert_eq!(get(server, "web.localhost").await, Answer::Ok("v2".into()));
        let not_found = get(server, "other.localhost").await;
        assert_eq!(not_found, Answer::Status(StatusCode::NOT_FOUND, "no app".into()));
        assert_eq!(not_found.failure().as_deref(), Some("404 Not Found: no app"));
        assert_eq!(probe(server, "web.localhost").await, Ok(()));
        let no_route = probe(server, "other.localhost").await.unwrap_err();
        assert!(
            no_route.starts_with("the ingress does not route services on this daemon: 404"),
            "{no_route}"
        );
        // A port nobody listens on: refused, said as such.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        match get(closed, "web.localhost").await {
            Answer::Failed(why) => assert!(why.to_lowercase().contains("refused"), "{why}"),
            answer => panic!("{answer:?}"),
        }
    }

    #[test]
    fn the_server_serves_its_body_at_the_root_on_the_port() {
        let argv = server("v2");
        assert_eq!(&argv[..2], ["sh", "-c"]);
        assert!(argv[2].contains("echo v2 > /www/index.html"), "{argv:?}");
        assert!(argv[2].contains("exec busybox httpd -f -p 8080 -h /www"), "{argv:?}");
    }
}
