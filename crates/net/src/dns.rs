//! A small authoritative DNS server for `MACHINE.NETWORK.DOMAIN` (the domain
//! is `hearth`), for the short name `MACHINE` asked from inside a network,
//! and for services: `NAME.service.DOMAIN` and `_NAME._tcp.service.DOMAIN`.
//!
//! The daemon keeps a [`Zone`] up to date as machines and services' passing
//! instances come and go, and runs one [`Server`] on each address guests use
//! as their resolver, and one on loopback for the host:
//!
//! ```no_run
//! # async fn example() -> Result<(), hearth_net::dns::Error> {
//! use hearth_net::dns::{self, ServiceInstance, Zone};
//! let zone = Zone::new("hearth");
//! zone.set(vec![("web".into(), "lab".into(), "10.0.0.2".parse().unwrap())]);
//! let instance = ServiceInstance { id: "web-1".into(), address: "10.0.0.2".parse().unwrap(), port: 80 };
//! zone.set_services(vec![("web".into(), vec![instance])]);
//! let server = dns::bind("10.0.0.1:53".parse().unwrap()).await?;
//! server.run(zone, None, std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! What it answers:
//! - `A` for `NAME.NETWORK.DOMAIN.` (any case), TTL [`TTL`]; any other type
//!   for a machine's name is an empty answer (NODATA).
//! - `NAME.` (one label) from a client whose address is a machine's: the
//!   machine `NAME` in that client's network. From anyone else: NXDOMAIN.
//! - `A` and `AAAA` for `NAME.service.DOMAIN.`: the addresses of the service's
//!   passing instances, each once, whatever network they are on.
//!   `SRV` for `_NAME._tcp.service.DOMAIN.`: one per instance (priority 1,
//!   weight 1, its port), whose target `ID.NAME.service.DOMAIN.` has its
//!   address in the additional section, and answers `A`/`AAAA` itself.
//!   A service with no passing instance is an empty answer (NODATA); a
//!   service that does not exist is NXDOMAIN. Service answers, positive and
//!   negative, have TTL [`SERVICE_TTL`] (0). A network cannot be named
//!   `service` ([`SERVICE_LABEL`]), so these names never hide a machine's.
//! - Any other name in the domain: NXDOMAIN, with the zone's SOA in the
//!   authority section so that resolvers cache the miss for [`TTL`] seconds
//!   (not at all under `service.DOMAIN`).
//! - Names outside the domain: relayed over UDP to the first upstream that
//!   answers within [`UPSTREAM_TIMEOUT`] (SERVFAIL if none does), or REFUSED
//!   when the server has no upstreams (the host's listener has none). A
//!   client that asked over TCP gets an answer the upstream truncated over
//!   UDP asked again over TCP.
//! - An answer too long for UDP (512 bytes, or the client's EDNS size up to
//!   1232) loses its additional section first, then its records, flagged
//!   truncated (TC) so that the client asks again over TCP.
//!
//! Packets that do not parse are dropped (logged at debug): a resolver on a
//! shared network must not be crashable, or chatty, by junk.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// The TTL of machines' answers, and of the negative answers (the SOA minimum).
/// Short, because machines come and go in seconds.
pub const TTL: u32 = 5;

/// The TTL of every answer under `service.DOMAIN`, negative ones too: none,
/// as Consul's default. An instance that fails its checks must leave every
/// client's view within a check interval (2 s by default), which any cache
/// longer than that would defeat; and not caching costs little, since the
/// server is on the client's own host or gateway.
pub const SERVICE_TTL: u32 = 0;

/// The label under the domain that holds services: `NAME.service.DOMAIN`.
/// No network may have this name, or `X.service.DOMAIN` would be ambiguous.
pub const SERVICE_LABEL: &str = "service";

/// How long an upstream has to answer a relayed query before the next one is asked.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many relayed UDP queries wait for upstreams at once; beyond
/// that, queries are dropped and the clients retry.
const MAX_RELAYS_IN_FLIGHT: usize = 256;

/// At most this many TCP connections are served at once; beyond that, new
/// connections wait in the listen backlog.
const MAX_TCP_CONNECTIONS: usize = 128;

/// A TCP connection that sends no query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest UDP payload this server advertises with EDNS (the DNS flag day
/// 2020 value, which avoids fragmentation on any sane path).
const EDNS_PAYLOAD: u16 = 1232;

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the UDP or TCP socket failed.
    #[error("cannot listen for DNS on {protocol} {addr}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// One passing instance of a service, as the zone answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInstance {
    /// The instance's id, e.g. `web-1`: its SRV target is
    /// `ID.NAME.service.DOMAIN`. An id that is not a DNS label gets no SRV
    /// record and no name of its own, only its share of the service's `A`.
    pub id: String,
    pub address: IpAddr,
    pub port: u16,
}

/// The names the server answers for: a snapshot that the daemon replaces as
/// machines and services come and go. Cheap to clone; clones share the snapshot.
#[derive(Clone, Debug)]
pub struct Zone {
    inner: Arc<ZoneInner>,
}

#[derive(Debug)]
struct ZoneInner {
    /// The domain's labels, lowercase, e.g. `["hearth"]`.
    labels: Vec<String>,
    /// The domain as a name, for the SOA.
    apex: Name,
    records: RwLock<Records>,
    /// Told the name of each machine looked up (the networks service
    /// counts it as the machine's activity, and wakes it if it sleeps).
    on_machine: std::sync::OnceLock<MachineHook>,
}

struct MachineHook(Box<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for MachineHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MachineHook")
    }
}

#[derive(Debug, Default)]
struct Records {
    /// Bumped by every [`Zone::set`] and [`Zone::set_services`], so that the
    /// SOA says the zone changed.
    serial: u32,
    /// (machine, network), lowercase → address.
    machines: HashMap<(String, String), Ipv4Addr>,
    /// A machine's address → its network (lowercase), for short names.
    network_of: HashMap<Ipv4Addr, String>,
    /// Networks with at least one machine: `NETWORK.DOMAIN` exists (NODATA,
    /// not NXDOMAIN) because names exist below it.
    networks: HashSet<String>,
    /// Services by name (lowercase) → their passing instances, maybe none.
    services: HashMap<String, Vec<Instance>>,
}

/// A service's instance as stored: its id lowercase, its SRV target made once.
#[derive(Debug)]
struct Instance {
    id: String,
    address: IpAddr,
    port: u16,
    /// `ID.NAME.service.DOMAIN.`, or `None` if the id is not a DNS label.
    target: Option<Name>,
}

impl Zone {
    /// An empty zone for `domain` (e.g. `"hearth"`).
    ///
    /// # Panics
    ///
    /// If `domain` is not a valid DNS name; it is a constant of the daemon,
    /// not user input.
    pub fn new(domain: &str) -> Zone {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let apex = Name::from_ascii(format!("{domain}."))
            .unwrap_or_else(|error| panic!("{domain:?} is not a valid DNS domain: {error}"));
        let labels = domain.split('.').map(str::to_owned).collect();
        Zone {
            inner: Arc::new(ZoneInner {
                labels,
                apex,
                records: RwLock::default(),
                on_machine: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Calls `hook` with the name of each machine a query finds; the first
    /// hook set stays.
    pub fn on_machine_lookup(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.inner.on_machine.set(MachineHook(Box::new(hook)));
    }

    fn looked_up(&self, machine: &str) {
        if let Some(MachineHook(hook)) = self.inner.on_machine.get() {
            hook(machine);
        }
    }

    /// Replaces all machine records with `records`: (machine, network,
    /// address). Names are case-insensitive. If one (machine, network) is
    /// listed twice, the last address wins. Services are left as they are.
    pub fn set(&self, records: Vec<(String, String, Ipv4Addr)>) {
        let mut machines = HashMap::with_capacity(records.len());
        let mut network_of = HashMap::with_capacity(records.len());
        let mut networks = HashSet::new();
        for (machine, network, ip) in records {
            let network = network.to_ascii_lowercase();
            network_of.insert(ip, network.clone());
            networks.insert(network.clone());
            machines.insert((machine.to_ascii_lowercase(), network), ip);
        }
        let mut current = self.inner.records.write().unwrap_or_else(PoisonError::into_inner);
        current.serial = current.serial.wrapping_add(1);
        current.machines = machines;
        current.network_of = network_of;
        current.networks = networks;
    }

    /// Replaces all services with `services`: (service name, its passing
    /// instances, maybe none). Names and ids are case-insensitive. If one
    /// service is listed twice, the last list wins. Machines are left as
    /// they are.
    pub fn set_services(&self, services: Vec<(String, Vec<ServiceInstance>)>) {
        let services = services
            .into_iter()
            .map(|(name, instances)| {
                let name = name.to_ascii_lowercase();
                let instances = instances
                    .into_iter()
                    .map(|instance| {
                        let id = instance.id.to_ascii_lowercase();
                        let target = self.instance_name(&id, &name);
                        Instance { id, address: instance.address, port: instance.port, target }
                    })
                    .collect();
                (name, instances)
            })
            .collect();
        let mut current = self.inner.records.write().unwrap_or_else(PoisonError::into_inner);
        current.serial = current.serial.wrapping_add(1);
        current.services = services;
    }

    /// `ID.SERVICE.service.DOMAIN.`, if `id` and `service` are DNS labels.
    fn instance_name(&self, id: &str, service: &str) -> Option<Name> {
        let labels_ok =
            [id, service].iter().all(|label| hearth_store::names::check_label("service", label, 63).is_ok());
        if !labels_ok {
            tracing::debug!(
                id,
                service,
                "A service instance whose id is not a DNS label gets no SRV record."
            );
            return None;
        }
        Name::from_ascii(format!("{id}.{service}.{SERVICE_LABEL}"))
            .and_then(|name| name.append_domain(&self.inner.apex))
            .ok()
    }

    /// Looks up `name` asked by `client`.
    fn lookup(&self, name: &Name, client: IpAddr) -> Lookup {
        let labels: Vec<String> =
            name.iter().map(|label| String::from_utf8_lossy(label).to_ascii_lowercase()).collect();
        let domain = &self.inner.labels;
        let records = self.inner.records.read().unwrap_or_else(PoisonError::into_inner);
        let serial = records.serial;
        let in_domain = labels.len() >= domain.len() && labels[labels.len() - domain.len()..] == domain[..];
        if in_domain {
            let (found, ttl) = match &labels[..labels.len() - domain.len()] {
                [] => (Found::Apex, TTL),
                [below @ .., service] if service == SERVICE_LABEL => {
                    (lookup_service(&records.services, below), SERVICE_TTL)
                }
                [network] if records.networks.contains(network) => (Found::Empty, TTL),
                [machine, network] => match records.machines.get(&(machine.clone(), network.clone())) {
                    Some(ip) => {
                        self.looked_up(machine);
                        (Found::Addresses(vec![IpAddr::V4(*ip)]), TTL)
                    }
                    None => (Found::Missing, TTL),
                },
                _ => (Found::Missing, TTL),
            };
            return Lookup::InDomain { found, serial, ttl };
        }
        match labels.as_slice() {
            [short] => {
                let client = match client.to_canonical() {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                };
                let network = client.and_then(|ip| records.network_of.get(&ip));
                let found =
                    network.and_then(|network| records.machines.get(&(short.clone(), network.clone())));
                if found.is_some() {
                    self.looked_up(short);
                }
                Lookup::Short(found.copied())
            }
            _ => Lookup::Outside,
        }
    }

    /// The zone's SOA record, whose minimum makes resolvers cache misses
    /// briefly; as a record of TTL `ttl`, so that a resolver caches a miss
    /// for at most `ttl` seconds (RFC 2308, section 5).
    fn soa(&self, serial: u32, ttl: u32) -> Record {
        let apex = &self.inner.apex;
        // Neither name needs to resolve: nobody transfers or mails this zone.
        let mname =
            Name::from_ascii("ns").and_then(|ns| ns.append_domain(apex)).unwrap_or_else(|_| apex.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(apex))
            .unwrap_or_else(|_| apex.clone());
        let soa = SOA::new(mname, rname, serial, 60, 10, 600, TTL);
        Record::from_rdata(apex.clone(), ttl, RData::SOA(soa))
    }
}

/// A name under `service.DOMAIN`, given by its labels above that (`below`).
fn lookup_service(services: &HashMap<String, Vec<Instance>>, below: &[String]) -> Found {
    const TCP: &str = "_tcp";
    match below {
        // Names exist below these two, whether or not a service does yet.
        [] => Found::Empty,
        [tcp] if tcp == TCP => Found::Empty,
        [name] => match services.get(name) {
            Some(instances) => {
                let mut addresses: Vec<IpAddr> = Vec::with_capacity(instances.len());
                for instance in instances {
                    if !addresses.contains(&instance.address) {
                        addresses.push(instance.address);
                    }
                }
                Found::Addresses(addresses)
            }
            None => Found::Missing,
        },
        [srv, tcp] if tcp == TCP => match srv.strip_prefix('_').and_then(|name| services.get(name)) {
            Some(instances) => Found::Srv(
                instances
                    .iter()
                    .filter_map(|i| {
                        Some(SrvTarget { target: i.target.clone()?, address: i.address, port: i.port })
                    })
                    .collect(),
            ),
            None => Found::Missing,
        },
        [id, name] => {
            let instance = services
                .get(name)
                .and_then(|instances| instances.iter().find(|i| i.target.is_some() && i.id == *id));
            instance.map_or(Found::Missing, |i| Found::Addresses(vec![i.address]))
        }
        _ => Found::Missing,
    }
}

/// What the zone knows about a name.
#[derive(Debug)]
enum Lookup {
    /// A name under the domain, whose answers have TTL `ttl`.
    InDomain { found: Found, serial: u32, ttl: u32 },
    /// A one-label name, resolved in the client's network.
    Short(Option<Ipv4Addr>),
    /// Someone else's name.
    Outside,
}

#[derive(Debug)]
enum Found {
    /// A machine's, a service's or a service instance's name: its addresses,
    /// each once (none for a service with no passing instance).
    Addresses(Vec<IpAddr>),
    /// `_NAME._tcp.service`: the service's instances (maybe none).
    Srv(Vec<SrvTarget>),
    /// The domain itself: it has the SOA.
    Apex,
    /// A name that exists because names exist below it (a network with
    /// machines, `service.DOMAIN`), with no records of its own.
    Empty,
    Missing,
}

/// One SRV answer and the address of its target, for the additional section.
#[derive(Debug)]
struct SrvTarget {
    target: Name,
    address: IpAddr,
    port: u16,
}

/// A DNS server bound to its UDP and TCP sockets, not yet answering.
#[derive(Debug)]
pub struct Server {
    udp: UdpSocket,
    tcp: TcpListener,
}

/// Binds UDP and TCP on `addr`. With port 0, both get the same free port.
pub async fn bind(addr: SocketAddr) -> Result<Server, Error> {
    // With port 0, the port the kernel picks for UDP may be taken for TCP: try a few.
    let attempts = if addr.port() == 0 { 8 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp =
            UdpSocket::bind(addr).await.map_err(|source| Error::Bind { protocol: "UDP", addr, source })?;
        let udp_addr = udp.local_addr().map_err(|source| Error::Bind { protocol: "UDP", addr, source })?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok(Server { udp, tcp }),
            Err(source) => last_error = Some(Error::Bind { protocol: "TCP", addr: udp_addr, source }),
        }
    }
    Err(last_error.expect("at least one attempt was made"))
}

/// Serves UDP and TCP DNS on `addr` until `shutdown` resolves: [`bind`], then [`Server::run`].
pub async fn serve(
    addr: SocketAddr,
    zone: Zone,
    upstream: Option<Vec<SocketAddr>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    bind(addr).await?.run(zone, upstream, shutdown).await;
    Ok(())
}

/// What a server needs to answer a query.
#[derive(Debug)]
struct Context {
    zone: Zone,
    /// Empty: names outside the zone are refused.
    upstreams: Vec<SocketAddr>,
}

impl Server {
    /// The address the server listens on (UDP and TCP share it).
    pub fn local_addr(&self) -> SocketAddr {
        self.udp.local_addr().expect("a bound UDP socket has an address")
    }

    /// Answers queries until `shutdown` resolves. Queries being relayed and
    /// TCP connections are dropped at shutdown.
    pub async fn run(
        self,
        zone: Zone,
        upstream: Option<Vec<SocketAddr>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let context = Arc::new(Context { zone, upstreams: upstream.unwrap_or_default() });
        let udp = Arc::new(self.udp);
        let tcp = self.tcp;
        let mut relays = JoinSet::new();
        let mut connections = JoinSet::new();
        let mut buf = vec![0u8; 65535];
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                received = udp.recv_from(&mut buf) => match received {
                    Ok((len, client)) => answer_udp(&context, &udp, &mut relays, &buf[..len], client).await,
                    // Linux reports some ICMP errors for earlier sends here; they concern one client.
                    Err(error) => tracing::debug!(%error, "Receiving a DNS query over UDP failed."),
                },
                accepted = tcp.accept(), if connections.len() < MAX_TCP_CONNECTIONS => match accepted {
                    Ok((stream, client)) => {
                        let context = context.clone();
                        connections.spawn(async move {
                            if let Err(error) = serve_tcp(&context, stream, client).await {
                                tracing::debug!(%client, %error, "DNS connection over TCP failed.");
                            }
                        });
                    }
                    Err(error) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(%error, "Accepting a DNS connection over TCP failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = relays.join_next(), if !relays.is_empty() => {}
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // Dropping the sets aborts what is still running.
    }
}

/// Answers one query received over UDP: at once from the zone, or from a
/// task that relays it, if not too many are in flight already.
async fn answer_udp(
    context: &Arc<Context>,
    udp: &Arc<UdpSocket>,
    relays: &mut JoinSet<()>,
    packet: &[u8],
    client: SocketAddr,
) {
    match decide(context, packet, client, Transport::Udp) {
        Outcome::Ignore => {}
        Outcome::Answer(response) => send_udp(udp, &response, client).await,
        Outcome::Relay(request) if relays.len() < MAX_RELAYS_IN_FLIGHT => {
            let (context, udp, packet) = (context.clone(), udp.clone(), packet.to_vec());
            relays.spawn(async move {
                if let Some(response) = relay(&context.upstreams, &packet, &request, false).await {
                    send_udp(&udp, &response, client).await;
                }
            });
        }
        Outcome::Relay(_) => {
            tracing::debug!(%client, "Dropped a DNS query: too many queries are being relayed.");
        }
    }
}

async fn send_udp(udp: &UdpSocket, response: &[u8], client: SocketAddr) {
    if let Err(error) = udp.send_to(response, client).await {
        tracing::debug!(%client, %error, "Sending a DNS answer over UDP failed.");
    }
}

/// Answers the queries of one TCP connection, each framed by a two-byte
/// length, one after the other, until the client closes or goes idle.
async fn serve_tcp(context: &Context, mut stream: TcpStream, client: SocketAddr) -> io::Result<()> {
    let mut packet = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await {
            Err(_elapsed) => return Ok(()),
            Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(result) => result?,
        };
        packet.resize(usize::from(len), 0);
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut packet)).await {
            Err(_elapsed) => return Ok(()),
            Ok(result) => result?,
        };
        let response = match decide(context, &packet, client, Transport::Tcp) {
            Outcome::Ignore => continue,
            Outcome::Answer(response) => response,
            Outcome::Relay(request) => match relay(&context.upstreams, &packet, &request, true).await {
                Some(response) => response,
                None => continue,
            },
        };
        let Some(framed) = frame(&response) else {
            tracing::debug!(%client, len = response.len(), "Dropped a DNS answer too long for TCP.");
            continue;
        };
        stream.write_all(&framed).await?;
    }
}

/// What to do with a packet.
#[derive(Debug)]
enum Outcome {
    /// Not a query we can answer (malformed, or a response): drop it.
    Ignore,
    /// The encoded answer.
    Answer(Vec<u8>),
    /// A name outside the zone, for the upstreams: the parsed request, to
    /// answer SERVFAIL if no upstream answers.
    Relay(Message),
}

/// How a query came, which bounds the answer's length.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

/// The longest answer TCP can carry (its length prefix is two bytes).
const TCP_MAX: usize = u16::MAX as usize;

/// Answers `packet` from the zone, or says it is for the upstreams.
fn decide(context: &Context, packet: &[u8], client: SocketAddr, transport: Transport) -> Outcome {
    let request = match Message::from_vec(packet) {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(%client, len = packet.len(), %error, "Ignored a malformed DNS packet.");
            return Outcome::Ignore;
        }
    };
    if request.metadata.message_type != MessageType::Query {
        tracing::debug!(%client, "Ignored a DNS response sent as a query.");
        return Outcome::Ignore;
    }
    let limit = match transport {
        // 512 bytes, or what the client's EDNS says, up to what we advertise.
        Transport::Udp => usize::from(request.max_payload().min(EDNS_PAYLOAD)),
        Transport::Tcp => TCP_MAX,
    };
    let answer = |response, code| encode(response, code, limit).map_or(Outcome::Ignore, Outcome::Answer);
    let mut response = response_to(&request, !context.upstreams.is_empty());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    let query = match request.queries.as_slice() {
        [query] if request.metadata.op_code == OpCode::Query => query,
        [_] => return answer(response, ResponseCode::NotImp),
        _ => return answer(response, ResponseCode::FormErr),
    };
    match context.zone.lookup(query.name(), client.ip()) {
        Lookup::Outside if context.upstreams.is_empty() => answer(response, ResponseCode::Refused),
        Lookup::Outside => Outcome::Relay(request),
        _ if query.query_class() != DNSClass::IN => answer(response, ResponseCode::Refused),
        Lookup::InDomain { found, serial, ttl } => {
            response.metadata.authoritative = true;
            let code = match found {
                Found::Addresses(addresses) => {
                    response
                        .add_answers(addresses.into_iter().filter_map(|ip| address_record(query, ip, ttl)));
                    ResponseCode::NoError
                }
                Found::Srv(targets) => {
                    if matches!(query.query_type(), RecordType::SRV | RecordType::ANY) {
                        for SrvTarget { target, address, port } in targets {
                            let srv = SRV::new(1, 1, port, target.clone());
                            response.add_answer(Record::from_rdata(
                                query.name().clone(),
                                ttl,
                                RData::SRV(srv),
                            ));
                            response.add_additional(Record::from_rdata(target, ttl, address_data(address)));
                        }
                    }
                    ResponseCode::NoError
                }
                Found::Apex if matches!(query.query_type(), RecordType::SOA | RecordType::ANY) => {
                    response.add_answer(context.zone.soa(serial, ttl));
                    ResponseCode::NoError
                }
                Found::Apex | Found::Empty => ResponseCode::NoError,
                Found::Missing => ResponseCode::NXDomain,
            };
            // NODATA and NXDOMAIN carry the SOA, for negative caching.
            if response.answers.is_empty() {
                response.add_authority(context.zone.soa(serial, ttl));
            }
            answer(response, code)
        }
        // A short name is not in the zone, so it gets no SOA: a resolver would
        // not accept the domain's SOA as an authority for it.
        Lookup::Short(Some(ip)) => {
            response.add_answers(address_record(query, IpAddr::V4(ip), TTL));
            answer(response, ResponseCode::NoError)
        }
        Lookup::Short(None) => answer(response, ResponseCode::NXDomain),
    }
}

/// `ip` as an answer to `query`, if the query asks for its type (`A` for
/// IPv4, `AAAA` for IPv6, or `ANY`). The answer's owner is the name as
/// asked, so that its case matches the question.
fn address_record(query: &Query, ip: IpAddr, ttl: u32) -> Option<Record> {
    let wanted = match ip {
        IpAddr::V4(_) => RecordType::A,
        IpAddr::V6(_) => RecordType::AAAA,
    };
    let asked = query.query_type();
    (asked == wanted || asked == RecordType::ANY)
        .then(|| Record::from_rdata(query.name().clone(), ttl, address_data(ip)))
}

fn address_data(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(ip) => RData::A(A(ip)),
        IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
    }
}

/// A response to `request`: its ID, flags and question, no records yet.
fn response_to(request: &Message, recursion_available: bool) -> Message {
    let mut response = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.recursion_available = recursion_available;
    response.add_queries(request.queries.iter().cloned());
    response
}

/// `response` with `code`, encoded in at most `limit` bytes: without its
/// additional section if need be (a client can do without it, RFC 2181
/// section 9), else without any record and flagged truncated, for the
/// client to ask again over TCP.
fn encode(mut response: Message, code: ResponseCode, limit: usize) -> Option<Vec<u8>> {
    response.metadata.response_code = code;
    let to_vec = |m: &Message| {
        m.to_vec().inspect_err(|error| tracing::debug!(%error, "Could not encode a DNS answer.")).ok()
    };
    let encoded = to_vec(&response)?;
    if encoded.len() <= limit {
        return Some(encoded);
    }
    response.additionals.clear();
    let encoded = to_vec(&response)?;
    if encoded.len() <= limit {
        return Some(encoded);
    }
    to_vec(&response.truncate())
}

/// Relays `packet` to the upstreams in order and returns the first answer,
/// or SERVFAIL for `request` if none answers.
///
/// An answer truncated over UDP goes to a UDP client as it is (it was sized
/// for that client), whose retry over TCP comes back here; for a TCP client,
/// the upstream is asked again over TCP.
async fn relay(
    upstreams: &[SocketAddr],
    packet: &[u8],
    request: &Message,
    over_tcp: bool,
) -> Option<Vec<u8>> {
    for &upstream in upstreams {
        let answer = match tokio::time::timeout(UPSTREAM_TIMEOUT, ask_udp(upstream, packet)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                tracing::debug!(%upstream, %error, "DNS upstream failed.");
                continue;
            }
            Err(_elapsed) => {
                tracing::debug!(%upstream, "DNS upstream did not answer in time.");
                continue;
            }
        };
        if !(over_tcp && is_truncated(&answer)) {
            return Some(answer);
        }
        match tokio::time::timeout(UPSTREAM_TIMEOUT, ask_tcp(upstream, packet)).await {
            Ok(Ok(full)) => return Some(full),
            Ok(Err(error)) => tracing::debug!(%upstream, %error, "DNS upstream failed over TCP."),
            Err(_elapsed) => tracing::debug!(%upstream, "DNS upstream did not answer over TCP in time."),
        }
        return Some(answer);
    }
    encode(response_to(request, true), ResponseCode::ServFail, TCP_MAX)
}

/// Asks one upstream over UDP. The query goes out under a fresh random ID
/// from a fresh socket (so a random port), and only a response with that ID
/// from that upstream is taken: an off-path spoofer has to guess both.
async fn ask_udp(upstream: SocketAddr, packet: &[u8]) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    let id: u16 = rand::random();
    socket.send(&with_id(packet, id)).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buf).await?;
        if is_answer_to(&buf[..len], id) {
            return Ok(with_id(&buf[..len], read_id(packet)));
        }
    }
}

/// Asks one upstream over TCP, under a fresh random ID.
async fn ask_tcp(upstream: SocketAddr, packet: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let id: u16 = rand::random();
    let framed =
        frame(&with_id(packet, id)).ok_or_else(|| io::Error::other("the query is too long for TCP"))?;
    stream.write_all(&framed).await?;
    let mut answer = vec![0u8; usize::from(stream.read_u16().await?)];
    stream.read_exact(&mut answer).await?;
    if !is_answer_to(&answer, id) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the answer does not match the query's ID"));
    }
    Ok(with_id(&answer, read_id(packet)))
}

// A message starts with a 12-byte header: the ID in bytes 0-1, then flags
// with QR (a response) as the high bit of byte 2 and TC (truncated) as bit 1.
// The relay reads and rewrites only these, and passes the rest on untouched.
const HEADER_LEN: usize = 12;

fn read_id(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[0], packet[1]])
}

fn with_id(packet: &[u8], id: u16) -> Vec<u8> {
    let mut packet = packet.to_vec();
    packet[..2].copy_from_slice(&id.to_be_bytes());
    packet
}

fn is_answer_to(packet: &[u8], id: u16) -> bool {
    packet.len() >= HEADER_LEN && read_id(packet) == id && packet[2] & 0x80 != 0
}

fn is_truncated(packet: &[u8]) -> bool {
    packet[2] & 0x02 != 0
}

/// A message with its two-byte length in front, for TCP; `None` if too long.
fn frame(message: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Some(framed)
}

/// Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The bytes the server would send back for `packet` from `client`, or
    /// `None` if it would drop it. With `relay`, names outside the zone are
    /// for upstreams; none is ever asked: they are answered as when no
    /// upstream answers (SERVFAIL), so nothing leaves the process.
    pub fn answer(zone: &Zone, packet: &[u8], client: SocketAddr, relay: bool) -> Option<Vec<u8>> {
        // Never contacted: `decide` only looks at whether there are upstreams.
        let upstreams = if relay { vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))] } else { Vec::new() };
        let context = Context { zone: zone.clone(), upstreams };
        match decide(&context, packet, client, Transport::Udp) {
            Outcome::Ignore => None,
            Outcome::Answer(answer) => Some(answer),
            Outcome::Relay(request) => encode(response_to(&request, true), ResponseCode::ServFail, TCP_MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5300);

    fn instance(id: &str, address: &str, port: u16) -> ServiceInstance {
        ServiceInstance { id: id.into(), address: address.parse().unwrap(), port }
    }

    /// A zone with a machine, a service of three instances (two share an
    /// address, one is on IPv6), a service with none, and one whose
    /// instance id cannot be a DNS label.
    fn zone() -> Zone {
        let zone = Zone::new("hearth");
        zone.set(vec![("web".into(), "lab".into(), Ipv4Addr::new(10, 0, 0, 2))]);
        zone.set_services(vec![
            (
                "web".into(),
                vec![
                    instance("web-1", "10.88.0.5", 80),
                    instance("web-2", "10.88.0.6", 8080),
                    instance("web-3", "10.88.0.5", 81),
                    instance("web-4", "fd00::4", 80),
                ],
            ),
            ("idle".into(), Vec::new()),
            ("odd".into(), vec![instance("Odd_1", "10.88.0.9", 9)]),
        ]);
        zone
    }

    fn ask(zone: &Zone, name: &str, record_type: RecordType, transport: Transport) -> Message {
        let mut request = Message::query();
        request.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        let context = Context { zone: zone.clone(), upstreams: Vec::new() };
        match decide(&context, &request.to_vec().unwrap(), CLIENT, transport) {
            Outcome::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("{name} {record_type}: expected an answer, got {other:?}"),
        }
    }

    /// The answer as one line: its code, `TC` if truncated, each answer,
    /// `+SOA` for an SOA in the authority section, and `| ` before each
    /// additional record. Checks every TTL on the way: none under
    /// `service.hearth`, [`TTL`] elsewhere.
    fn render(response: &Message) -> String {
        let asked = response.queries[0].name().to_ascii().to_ascii_lowercase();
        let ttl =
            if asked.ends_with(".service.hearth.") || asked == "service.hearth." { SERVICE_TTL } else { TTL };
        let mut line = format!("{:?}", response.metadata.response_code);
        if response.metadata.truncation {
            line += " TC";
        }
        let sections = [("", &response.answers), ("| ", &response.additionals)];
        for (prefix, records) in sections {
            for record in records {
                assert_eq!(record.ttl, ttl, "the TTL of {record}");
                line += &match &record.data {
                    RData::A(a) if prefix.is_empty() => format!(" A {a}"),
                    RData::AAAA(aaaa) if prefix.is_empty() => format!(" AAAA {aaaa}"),
                    RData::SRV(srv) => {
                        format!(" SRV {} {} {} {}", srv.priority, srv.weight, srv.port, srv.target)
                    }
                    other => format!(" {prefix}{} {} {other}", record.record_type(), record.name),
                };
            }
        }
        if let Some(soa) = response.authorities.iter().find(|r| r.record_type() == RecordType::SOA) {
            assert_eq!(soa.ttl, ttl, "the SOA's TTL bounds negative caching");
            line += " +SOA";
        }
        line
    }

    /// Each case: a name, a type and the rendered answer, over UDP.
    fn check(zone: &Zone, cases: &[(&str, RecordType, &str)]) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|&(name, record_type, expected)| {
                let actual = render(&ask(zone, name, record_type, Transport::Udp));
                (actual != expected)
                    .then(|| format!("{name} {record_type}: expected {expected:?}, got {actual:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn a_service_name_answers_each_passing_instance_address_once() {
        check(
            &zone(),
            &[
                ("web.service.hearth.", RecordType::A, "NoError A 10.88.0.5 A 10.88.0.6"),
                ("web.service.hearth.", RecordType::AAAA, "NoError AAAA fd00::4"),
                ("web.service.hearth.", RecordType::ANY, "NoError A 10.88.0.5 A 10.88.0.6 AAAA fd00::4"),
                ("web.service.hearth.", RecordType::MX, "NoError +SOA"),
            ],
        );
    }

    #[test]
    fn an_srv_name_answers_each_instance_with_its_address_as_additional() {
        check(
            &zone(),
            &[(
                "_web._tcp.service.hearth.",
                RecordType::SRV,
                "NoError SRV 1 1 80 web-1.web.service.hearth. SRV 1 1 8080 web-2.web.service.hearth. \
                 SRV 1 1 81 web-3.web.service.hearth. SRV 1 1 80 web-4.web.service.hearth. \
                 | A web-1.web.service.hearth. 10.88.0.5 | A web-2.web.service.hearth. 10.88.0.6 \
                 | A web-3.web.service.hearth. 10.88.0.5 | AAAA web-4.web.service.hearth. fd00::4",
            )],
        );
        check(&zone(), &[("_web._tcp.service.hearth.", RecordType::A, "NoError +SOA")]);
    }

    #[test]
    fn an_instance_name_answers_that_instance_address() {
        check(
            &zone(),
            &[
                ("web-2.web.service.hearth.", RecordType::A, "NoError A 10.88.0.6"),
                ("web-4.web.service.hearth.", RecordType::AAAA, "NoError AAAA fd00::4"),
                ("web-4.web.service.hearth.", RecordType::A, "NoError +SOA"),
                ("web-9.web.service.hearth.", RecordType::A, "NXDomain +SOA"),
                ("web-1.nosuch.service.hearth.", RecordType::A, "NXDomain +SOA"),
            ],
        );
    }

    #[test]
    fn a_service_without_passing_instances_is_empty_and_an_unknown_one_does_not_exist() {
        check(
            &zone(),
            &[
                ("idle.service.hearth.", RecordType::A, "NoError +SOA"),
                ("_idle._tcp.service.hearth.", RecordType::SRV, "NoError +SOA"),
                ("nosuch.service.hearth.", RecordType::A, "NXDomain +SOA"),
                ("_nosuch._tcp.service.hearth.", RecordType::SRV, "NXDomain +SOA"),
                ("_web._udp.service.hearth.", RecordType::SRV, "NXDomain +SOA"),
                ("x.web-1.web.service.hearth.", RecordType::A, "NXDomain +SOA"),
                // Names exist below these, so they are empty, not missing.
                ("service.hearth.", RecordType::A, "NoError +SOA"),
                ("_tcp.service.hearth.", RecordType::A, "NoError +SOA"),
            ],
        );
    }

    #[test]
    fn service_names_are_case_insensitive() {
        check(
            &zone(),
            &[
                ("WeB.SeRvIcE.HeArTh.", RecordType::A, "NoError A 10.88.0.5 A 10.88.0.6"),
                ("WEB-2.Web.SERVICE.hearth.", RecordType::A, "NoError A 10.88.0.6"),
                (
                    "_WEB._TCP.service.hearth.",
                    RecordType::SRV,
                    "NoError SRV 1 1 80 web-1.web.service.hearth. \
                 SRV 1 1 8080 web-2.web.service.hearth. SRV 1 1 81 web-3.web.service.hearth. \
                 SRV 1 1 80 web-4.web.service.hearth. | A web-1.web.service.hearth. 10.88.0.5 \
                 | A web-2.web.service.hearth. 10.88.0.6 | A web-3.web.service.hearth. 10.88.0.5 \
                 | AAAA web-4.web.service.hearth. fd00::4",
                ),
            ],
        );
        let zone = Zone::new("hearth");
        zone.set_services(vec![("API".into(), vec![instance("API-1", "10.88.0.7", 443)])]);
        check(
            &zone,
            &[
                ("api.service.hearth.", RecordType::A, "NoError A 10.88.0.7"),
                (
                    "_api._tcp.service.hearth.",
                    RecordType::SRV,
                    "NoError SRV 1 1 443 api-1.api.service.hearth. | A api-1.api.service.hearth. 10.88.0.7",
                ),
            ],
        );
    }

    #[test]
    fn an_instance_whose_id_is_not_a_dns_label_is_in_the_service_answer_but_has_no_srv() {
        check(
            &zone(),
            &[
                ("odd.service.hearth.", RecordType::A, "NoError A 10.88.0.9"),
                ("_odd._tcp.service.hearth.", RecordType::SRV, "NoError +SOA"),
                ("odd_1.odd.service.hearth.", RecordType::A, "NXDomain +SOA"),
            ],
        );
    }

    #[test]
    fn machines_and_services_are_set_apart_and_neither_clears_the_other() {
        let zone = zone();
        let machine = ("web.lab.hearth.", RecordType::A, "NoError A 10.0.0.2");
        let service = ("web.service.hearth.", RecordType::A, "NoError A 10.88.0.5 A 10.88.0.6");
        check(&zone, &[machine, service]);
        zone.set(vec![("web".into(), "lab".into(), Ipv4Addr::new(10, 0, 0, 2))]);
        check(&zone, &[machine, service]);
        zone.set_services(vec![("web".into(), vec![instance("web-2", "10.88.0.6", 80)])]);
        check(&zone, &[machine, ("web.service.hearth.", RecordType::A, "NoError A 10.88.0.6")]);
        zone.set_services(Vec::new());
        check(&zone, &[machine, ("web.service.hearth.", RecordType::A, "NXDomain +SOA")]);
    }

    #[test]
    fn an_answer_too_long_for_udp_drops_its_additional_records_then_is_truncated() {
        let zone = Zone::new("hearth");
        let many = |count: usize| {
            (1..=count).map(|i| instance(&format!("web-{i}"), &format!("10.88.0.{i}"), 80)).collect()
        };
        // 10 SRV records fit in 512 bytes (483), but not with their 10 addresses (643).
        zone.set_services(vec![("web".into(), many(10))]);
        let response = ask(&zone, "_web._tcp.service.hearth.", RecordType::SRV, Transport::Udp);
        assert!(!response.metadata.truncation);
        assert_eq!((response.answers.len(), response.additionals.len()), (10, 0));
        let response = ask(&zone, "_web._tcp.service.hearth.", RecordType::SRV, Transport::Tcp);
        assert_eq!((response.answers.len(), response.additionals.len()), (10, 10), "TCP has room");

        // 40 do not fit at all: the client is told to ask over TCP.
        zone.set_services(vec![("web".into(), many(40))]);
        let response = ask(&zone, "_web._tcp.service.hearth.", RecordType::SRV, Transport::Udp);
        assert_eq!(render(&response), "NoError TC");
        let response = ask(&zone, "_web._tcp.service.hearth.", RecordType::SRV, Transport::Tcp);
        assert_eq!((response.answers.len(), response.additionals.len()), (40, 40));
    }
}
