//! A small authoritative DNS server for `MACHINE.NETWORK.DOMAIN` (the domain
//! is `hearth`), and for the short name `MACHINE` asked from inside a network.
//!
//! The daemon keeps a [`Zone`] up to date as machines come and go and runs
//! one [`Server`] on each address guests use as their resolver:
//!
//! ```no_run
//! # async fn example() -> Result<(), hearth_net::dns::Error> {
//! use hearth_net::dns::{self, Zone};
//! let zone = Zone::new("hearth");
//! zone.set(vec![("web".into(), "lab".into(), "10.0.0.2".parse().unwrap())]);
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
//! - Any other name in the domain: NXDOMAIN, with the zone's SOA in the
//!   authority section so that resolvers cache the miss for [`TTL`] seconds.
//! - Names outside the domain: relayed over UDP to the first upstream that
//!   answers within [`UPSTREAM_TIMEOUT`] (SERVFAIL if none does), or REFUSED
//!   when the server has no upstreams. A client that asked over TCP gets an
//!   answer the upstream truncated over UDP asked again over TCP.
//!
//! Packets that do not parse are dropped (logged at debug): a resolver on a
//! shared network must not be crashable, or chatty, by junk.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// The TTL of every answer, and of the negative answers (the SOA minimum).
/// Short, because machines come and go in seconds.
pub const TTL: u32 = 5;

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

/// The names the server answers for: a snapshot that the daemon replaces as
/// machines come and go. Cheap to clone; clones share the snapshot.
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
}

#[derive(Debug, Default)]
struct Records {
    /// Bumped by every [`Zone::set`], so that the SOA says the zone changed.
    serial: u32,
    /// (machine, network), lowercase → address.
    machines: HashMap<(String, String), Ipv4Addr>,
    /// A machine's address → its network (lowercase), for short names.
    network_of: HashMap<Ipv4Addr, String>,
    /// Networks with at least one machine: `NETWORK.DOMAIN` exists (NODATA,
    /// not NXDOMAIN) because names exist below it.
    networks: HashSet<String>,
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
        Zone { inner: Arc::new(ZoneInner { labels, apex, records: RwLock::default() }) }
    }

    /// Replaces all records with `records`: (machine, network, address).
    /// Names are case-insensitive. If one (machine, network) is listed twice,
    /// the last address wins.
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
        let serial = current.serial.wrapping_add(1);
        *current = Records { serial, machines, network_of, networks };
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
            let found = match &labels[..labels.len() - domain.len()] {
                [] => Found::Apex,
                [network] if records.networks.contains(network) => Found::Network,
                [machine, network] => match records.machines.get(&(machine.clone(), network.clone())) {
                    Some(ip) => Found::Machine(*ip),
                    None => Found::Missing,
                },
                _ => Found::Missing,
            };
            return Lookup::InDomain { found, serial };
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
                Lookup::Short(found.copied())
            }
            _ => Lookup::Outside,
        }
    }

    /// The zone's SOA record, whose minimum makes resolvers cache misses briefly.
    fn soa(&self, serial: u32) -> Record {
        let apex = &self.inner.apex;
        // Neither name needs to resolve: nobody transfers or mails this zone.
        let mname =
            Name::from_ascii("ns").and_then(|ns| ns.append_domain(apex)).unwrap_or_else(|_| apex.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(apex))
            .unwrap_or_else(|_| apex.clone());
        let soa = SOA::new(mname, rname, serial, 60, 10, 600, TTL);
        Record::from_rdata(apex.clone(), TTL, RData::SOA(soa))
    }
}

/// What the zone knows about a name.
#[derive(Debug)]
enum Lookup {
    /// A name under the domain.
    InDomain { found: Found, serial: u32 },
    /// A one-label name, resolved in the client's network.
    Short(Option<Ipv4Addr>),
    /// Someone else's name.
    Outside,
}

#[derive(Debug)]
enum Found {
    Machine(Ipv4Addr),
    /// The domain itself: it has the SOA.
    Apex,
    /// A network with machines: the name exists (names exist below it) but
    /// has no records.
    Network,
    Missing,
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
    match decide(context, packet, client) {
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
        let response = match decide(context, &packet, client) {
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

/// Answers `packet` from the zone, or says it is for the upstreams.
fn decide(context: &Context, packet: &[u8], client: SocketAddr) -> Outcome {
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
        Lookup::InDomain { found, serial } => {
            response.metadata.authoritative = true;
            match found {
                Found::Machine(ip) => {
                    if answers_a(query) {
                        response.add_answer(a_record(query, ip));
                    } else {
                        response.add_authority(context.zone.soa(serial));
                    }
                    answer(response, ResponseCode::NoError)
                }
                Found::Apex if matches!(query.query_type(), RecordType::SOA | RecordType::ANY) => {
                    response.add_answer(context.zone.soa(serial));
                    answer(response, ResponseCode::NoError)
                }
                Found::Apex | Found::Network => {
                    response.add_authority(context.zone.soa(serial));
                    answer(response, ResponseCode::NoError)
                }
                Found::Missing => {
                    response.add_authority(context.zone.soa(serial));
                    answer(response, ResponseCode::NXDomain)
                }
            }
        }
        // A short name is not in the zone, so it gets no SOA: a resolver would
        // not accept the domain's SOA as an authority for it.
        Lookup::Short(Some(ip)) => {
            if answers_a(query) {
                response.add_answer(a_record(query, ip));
            }
            answer(response, ResponseCode::NoError)
        }
        Lookup::Short(None) => answer(response, ResponseCode::NXDomain),
    }
}

fn answers_a(query: &Query) -> bool {
    matches!(query.query_type(), RecordType::A | RecordType::ANY)
}

/// The answer's owner is the name as asked, so that its case matches the question.
fn a_record(query: &Query, ip: Ipv4Addr) -> Record {
    Record::from_rdata(query.name().clone(), TTL, RData::A(A(ip)))
}

/// A response to `request`: its ID, flags and question, no records yet.
fn response_to(request: &Message, recursion_available: bool) -> Message {
    let mut response = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.recursion_available = recursion_available;
    response.add_queries(request.queries.iter().cloned());
    response
}

fn answer(response: Message, code: ResponseCode) -> Outcome {
    encode(response, code).map_or(Outcome::Ignore, Outcome::Answer)
}

fn encode(mut response: Message, code: ResponseCode) -> Option<Vec<u8>> {
    response.metadata.response_code = code;
    response.to_vec().inspect_err(|error| tracing::debug!(%error, "Could not encode a DNS answer.")).ok()
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
    encode(response_to(request, true), ResponseCode::ServFail)
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
        match decide(&context, packet, client) {
            Outcome::Ignore => None,
            Outcome::Answer(answer) => Some(answer),
            Outcome::Relay(request) => encode(response_to(&request, true), ResponseCode::ServFail),
        }
    }
}
