//! The DNS side of `hearth bench services`: asking a name over UDP, a
//! closed-loop load of concurrent clients, and the peer the daemon's host
//! listener is measured against.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde::Serialize;
use tokio::net::UdpSocket;

/// How long one lookup of the load waits for its answer before it counts
/// as a timeout (and the client asks again).
pub(super) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// A name as a DNS name, fully qualified.
pub(super) fn fqdn(name: &str) -> anyhow::Result<Name> {
    let text = if name.ends_with('.') { name.to_owned() } else { format!("{name}.") };
    Name::from_ascii(&text).with_context(|| format!("{text:?} is not a DNS name"))
}

/// The encoded A query for `name` with message id `id`.
pub(super) fn query(name: &Name, id: u16) -> anyhow::Result<Vec<u8>> {
    let mut request = Message::new(id, MessageType::Query, OpCode::Query);
    request.add_query(Query::query(name.clone(), RecordType::A));
    Ok(request.to_vec()?)
}

/// A UDP socket of its own, connected to `server`: each client of the load
/// has one, as separate programs would.
pub(super) async fn client_socket(server: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.context("cannot bind a UDP socket")?;
    socket.connect(server).await.with_context(|| format!("cannot reach {server} over UDP"))?;
    Ok(socket)
}

/// Sends one A query and waits up to `limit` for the answer with its id
/// (stray answers to earlier queries, which timed out, are skipped);
/// `None` if none came in time.
pub(super) async fn ask(
    socket: &UdpSocket,
    name: &Name,
    id: u16,
    limit: Duration,
    buf: &mut [u8],
) -> anyhow::Result<Option<Message>> {
    socket.send(&query(name, id)?).await?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(buf)).await else {
            return Ok(None);
        };
        let Ok(answer) = Message::from_vec(&buf[..received?]) else { continue };
        if answer.metadata.id == id && answer.metadata.message_type == MessageType::Response {
            return Ok(Some(answer));
        }
    }
}

/// The IPv4 addresses in an answer, sorted.
pub(super) fn addresses(answer: &Message) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// One server's figure under the load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Lookups {
    pub(super) server: String,
    pub(super) addr: SocketAddr,
    /// Answers with the expected records, per second of load.
    pub(super) per_sec: f64,
    pub(super) answers: u64,
    /// Lookups with no answer within a second.
    pub(super) timeouts: u64,
    /// Answers without the expected records.
    pub(super) wrong: u64,
    /// Every round's lookups per second, in the order they ran.
    pub(super) rounds_per_sec: Vec<f64>,
}

/// The round with the median lookups per second (the lower middle one of
/// an even count), with every round's figure beside it.
pub(super) fn median_round(rounds: Vec<Lookups>) -> Option<Lookups> {
    let per_round: Vec<f64> = rounds.iter().map(|l| l.per_sec).collect();
    let mut sorted = rounds;
    sorted.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    let mut median = sorted.get(sorted.len().checked_sub(1)? / 2).cloned()?;
    median.rounds_per_sec = per_round;
    Some(median)
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    answers: u64,
    timeouts: u64,
    wrong: u64,
}

/// How an answer's header reads, for the load: the load checks only the
/// header (id, response flag, response code, answer count), as dnsperf
/// does, so that the load generator spends its time asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// NOERROR with the expected number of answers.
    Expected,
    /// An answer to this query, but not the expected one.
    Other,
    /// Not an answer to this query (an earlier one's, late, or garbage).
    Stray,
}

/// Reads the header of `packet` as an answer to query `id`.
pub(super) fn classify(packet: &[u8], id: u16, expected: usize) -> Reply {
    // A header is 12 bytes; the answer count is its fourth 16-bit field.
    let [id_hi, id_lo, flags, codes, _, _, an_hi, an_lo, _, _, _, _, ..] = *packet else {
        return Reply::Stray;
    };
    if u16::from_be_bytes([id_hi, id_lo]) != id || flags & 0x80 == 0 {
        return Reply::Stray;
    }
    let no_error = codes & 0x0f == 0;
    if no_error && usize::from(u16::from_be_bytes([an_hi, an_lo])) == expected {
        Reply::Expected
    } else {
        Reply::Other
    }
}

/// `clients` concurrent clients, each asking `name` (A) and waiting for the
/// answer before asking again, for `duration`. An answer counts if it is
/// NOERROR with `expected` answer records.
pub(super) async fn load(
    server: SocketAddr,
    label: &str,
    name: &Name,
    expected: usize,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Lookups> {
    let started = Instant::now();
    let deadline = started + duration;
    let template = query(name, 0)?;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let mut packet = template.clone();
        tasks.spawn(async move {
            let socket = client_socket(server).await?;
            let mut buf = vec![0u8; 4096];
            let mut tally = Tally::default();
            // Ids differ between clients, so a stray answer is never taken for another's.
            let mut id = (client as u16).wrapping_mul(7919);
            while Instant::now() < deadline {
                id = id.wrapping_add(1);
                packet[..2].copy_from_slice(&id.to_be_bytes());
                socket.send(&packet).await?;
                let limit = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
                loop {
                    let Ok(received) = tokio::time::timeout_at(limit, socket.recv(&mut buf)).await else {
                        tally.timeouts += 1;
                        break;
                    };
                    match classify(&buf[..received?], id, expected) {
                        Reply::Stray => continue,
                        Reply::Expected => tally.answers += 1,
                        Reply::Other => tally.wrong += 1,
                    }
                    break;
                }
            }
            anyhow::Ok(tally)
        });
    }
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        let tally = joined.context("a load client panicked")??;
        total.answers += tally.answers;
        total.timeouts += tally.timeouts;
        total.wrong += tally.wrong;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Lookups {
        server: label.to_owned(),
        addr: server,
        per_sec: total.answers as f64 / elapsed,
        answers: total.answers,
        timeouts: total.timeouts,
        wrong: total.wrong,
        rounds_per_sec: vec![],
    })
}

/// The peer: a plain authoritative responder that answers one name's A
/// records from memory, on one UDP socket (one task receiving and
/// answering in turn, as the daemon's listener does), on a runtime of its
/// own. It is the floor: what answering costs with no registry, no zone
/// and no store behind it. Any other name is NXDOMAIN, any other type of
/// the name NOERROR with no records.
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Peer {
    /// Answers `records` (A records of `name`) on a free loopback port.
    pub(super) fn start(name: Name, records: Vec<Record>) -> anyhow::Result<Peer> {
        // A multi-threaded runtime with one worker per core, as the daemon's:
        // under a closed-loop load the figure is mostly how soon a parked
        // server wakes, which depends on the runtime's flavour.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("bench-dns-peer")
            .build()
            .context("cannot start a runtime for the DNS peer")?;
        let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .context("cannot bind a loopback UDP port for the DNS peer")?;
        socket.set_nonblocking(true)?;
        let addr = socket.local_addr()?;
        let zone = Arc::new(PeerZone { name, records });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("bench-dns-peer".into()).spawn(move || {
            // On a worker, as the daemon's listener is: `block_on` would run it on this thread.
            let served = runtime.spawn(async move {
                let socket = match UdpSocket::from_std(socket) {
                    Ok(socket) => socket,
                    Err(e) => return eprintln!("      the DNS peer cannot listen: {e}"),
                };
                let mut buf = vec![0u8; 4096];
                loop {
                    tokio::select! {
                        received = socket.recv_from(&mut buf) => {
                            let Ok((len, client)) = received else { continue };
                            if let Some(answer) = zone.answer(&buf[..len]) {
                                let _ = socket.send_to(&answer, client).await;
                            }
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
            let _ = runtime.block_on(served);
            runtime.shutdown_background();
        })?;
        Ok(Peer { addr, stop, thread })
    }

    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// What the peer knows: one name and its records.
struct PeerZone {
    name: Name,
    records: Vec<Record>,
}

impl PeerZone {
    /// The encoded answer to `packet`; `None` for what is not a query.
    fn answer(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(packet).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
        response.metadata = Metadata::response_from_request(&request.metadata);
        response.metadata.authoritative = true;
        response.add_queries(request.queries.iter().cloned());
        response.metadata.response_code = match request.queries.as_slice() {
            _ if request.metadata.op_code != OpCode::Query => ResponseCode::NotImp,
            [q] if q.name() == &self.name => {
                if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                    response.add_answers(self.records.iter().cloned());
                }
                ResponseCode::NoError
            }
            [_] => ResponseCode::NXDomain,
            _ => ResponseCode::FormErr,
        };
        response.to_vec().ok()
    }
}

/// Bails unless `answer` is NOERROR with A records.
pub(super) fn a_records(answer: &Message, name: &Name) -> anyhow::Result<Vec<Record>> {
    let records: Vec<Record> =
        answer.answers.iter().filter(|r| matches!(r.data, RData::A(_))).cloned().collect();
    if answer.metadata.response_code != ResponseCode::NoError || records.is_empty() {
        bail!(
            "the host's DNS listener answered {:?} with {} A record(s) for {name}",
            answer.metadata.response_code,
            records.len()
        );
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::A;

    fn a(name: &Name, ip: [u8; 4]) -> Record {
        Record::from_rdata(name.clone(), 0, RData::A(A(Ipv4Addr::from(ip))))
    }

    #[tokio::test]
    async fn the_peer_answers_its_name_over_udp_and_nothing_else() {
        let name = fqdn("web.service.hearth").unwrap();
        let records = vec![a(&name, [127, 0, 0, 11]), a(&name, [127, 0, 0, 12]), a(&name, [127, 0, 0, 13])];
        let peer = Peer::start(name.clone(), records).expect("start the peer");
        let socket = client_socket(peer.addr).await.unwrap();
        let mut buf = vec![0u8; 4096];

        let answer =
            ask(&socket, &name, 7, Duration::from_secs(5), &mut buf).await.unwrap().expect("an answer");
        assert_eq!(answer.metadata.id, 7);
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(answer.metadata.authoritative);
        assert_eq!(answer.queries.len(), 1, "the question is echoed");
        let expected: Vec<Ipv4Addr> =
            ["127.0.0.11", "127.0.0.12", "127.0.0.13"].map(|a| a.parse().unwrap()).into();
        assert_eq!(addresses(&answer), expected);
        assert_eq!(a_records(&answer, &name).unwrap().len(), 3);

        // Names compare without regard to case, as DNS says.
        let upper = fqdn("WEB.Service.hearth").unwrap();
        let answer =
            ask(&socket, &upper, 8, Duration::from_secs(5), &mut buf).await.unwrap().expect("an answer");
        assert_eq!(addresses(&answer).len(), 3);

        let other = fqdn("nosuch.service.hearth").unwrap();
        let answer =
            ask(&socket, &other, 9, Duration::from_secs(5), &mut buf).await.unwrap().expect("an answer");
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
        assert!(answer.answers.is_empty());
        assert!(a_records(&answer, &other).is_err());

        let load = load(peer.addr, "peer", &name, 3, 2, Duration::from_millis(200)).await.unwrap();
        assert!(load.answers > 0 && load.wrong == 0, "{load:?}");
        // Expecting 4 records, every answer of 3 is wrong.
        let load = super::load(peer.addr, "peer", &name, 4, 1, Duration::from_millis(100)).await.unwrap();
        assert!(load.answers == 0 && load.wrong > 0, "{load:?}");
        peer.stop().await;
    }

    #[test]
    fn a_servers_figure_is_its_median_round() {
        let round = |per_sec: f64| Lookups {
            server: "s".into(),
            addr: "127.0.0.1:53".parse().unwrap(),
            per_sec,
            answers: per_sec as u64,
            timeouts: 0,
            wrong: 0,
            rounds_per_sec: vec![],
        };
        let median = median_round(vec![round(300.0), round(100.0), round(200.0)]).unwrap();
        assert_eq!((median.per_sec, median.answers), (200.0, 200));
        assert_eq!(median.rounds_per_sec, [300.0, 100.0, 200.0], "in the order they ran");
        assert_eq!(median_round(vec![round(4.0), round(1.0)]).unwrap().per_sec, 1.0);
        assert_eq!(median_round(vec![]), None);
    }

    #[test]
    fn the_load_reads_an_answers_header() {
        let name = fqdn("web.service.hearth").unwrap();
        let records = vec![a(&name, [127, 0, 0, 11]), a(&name, [127, 0, 0, 12])];
        let zone = PeerZone { name: name.clone(), records };
        let answer = zone.answer(&query(&name, 42).unwrap()).unwrap();
        assert_eq!(classify(&answer, 42, 2), Reply::Expected);
        assert_eq!(classify(&answer, 42, 3), Reply::Other);
        assert_eq!(classify(&answer, 41, 2), Reply::Stray, "another query's answer");
        assert_eq!(classify(&query(&name, 42).unwrap(), 42, 0), Reply::Stray, "a query is no answer");
        assert_eq!(classify(&answer[..11], 42, 2), Reply::Stray, "shorter than a header");
        let other = fqdn("other.service.hearth").unwrap();
        let nxdomain = zone.answer(&query(&other, 42).unwrap()).unwrap();
        assert_eq!(classify(&nxdomain, 42, 0), Reply::Other, "NXDOMAIN is not NOERROR");
    }

    #[tokio::test]
    async fn a_lookup_with_no_answer_is_a_timeout() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let name = fqdn("web.service.hearth").unwrap();
        let socket = client_socket(silent.local_addr().unwrap()).await.unwrap();
        let mut buf = vec![0u8; 512];
        let answer = ask(&socket, &name, 1, Duration::from_millis(50), &mut buf).await.unwrap();
        assert!(answer.is_none());
    }
}
