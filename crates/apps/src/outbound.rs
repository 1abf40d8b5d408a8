//! Outgoing HTTP from apps, checked against the address it goes to.
//!
//! The allow-list of `hearth.toml` is matched on the host name first (see
//! [`OutboundRule`]). Then the name is resolved once, every address it
//! resolves to is checked ([`check`]), and the connection goes to those
//! checked addresses: there is no second lookup, so a name cannot be made
//! to resolve elsewhere between the check and the connect (DNS rebinding).
//! With TLS the certificate is still verified against the host name.
//!
//! A host under `service.hearth` is never looked up: [`service`] sends
//! the request to one of the named service's passing instances.
//!
//! [`send`] is hearth's version of `wasmtime_wasi_http::default_send_request`
//! with the same timeouts, TLS stack (rustls with the webpki roots) and
//! HTTP/1 handshake; only where it connects differs.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::manifest::OutboundRule;

pub(crate) mod service;

/// Resolves a host name to the addresses an outgoing request may go to.
/// The daemon uses the system's resolver ([`SystemResolver`]); tests put a
/// map here to make a name resolve where they need it to.
pub trait Resolve: fmt::Debug + Send + Sync {
    /// The addresses `host` resolves to, each with `port`.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (`getaddrinfo`, through `tokio::net::lookup_host`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    }
}

/// A kind of address an app is kept from unless its manifest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guarded {
    /// 127.0.0.0/8 and ::1: the daemon's own API and every local service.
    Loopback,
    /// 0.0.0.0/8 and ::, which Linux connects to the host itself.
    Unspecified,
    /// 169.254.0.0/16 (cloud metadata services) and fe80::/10.
    LinkLocal,
    /// An address on one of the host's interfaces (a LAN address, a VM
    /// network's bridge): services bound to it or to 0.0.0.0.
    HostOwn,
}

impl Guarded {
    /// What kind of guarded address `ip` is, given the host's own
    /// addresses; `None` for an address apps may reach by name.
    pub(crate) fn of(ip: IpAddr, host_addresses: &[IpAddr]) -> Option<Guarded> {
        let ip = ip.to_canonical();
        let guarded = match ip {
            IpAddr::V4(v4) if v4.is_loopback() => Guarded::Loopback,
            IpAddr::V4(v4) if v4.octets()[0] == 0 => Guarded::Unspecified,
            IpAddr::V4(v4) if v4.is_link_local() => Guarded::LinkLocal,
            IpAddr::V6(v6) if v6.is_loopback() => Guarded::Loopback,
            IpAddr::V6(v6) if v6.is_unspecified() => Guarded::Unspecified,
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Guarded::LinkLocal,
            _ if host_addresses.iter().any(|own| own.to_canonical() == ip) => Guarded::HostOwn,
            _ => return None,
        };
        Some(guarded)
    }

    fn describe(self) -> &'static str {
        match self {
            Guarded::Loopback => "a loopback address",
            Guarded::Unspecified => "an unspecified address (it reaches the host itself)",
            Guarded::LinkLocal => "a link-local address",
            Guarded::HostOwn => "one of this host's own addresses",
        }
    }
}

/// Whether a request that the allow-list let through by name, on `scheme`
/// and `port`, may connect to `addresses` (all that its host resolved to);
/// if not, the first address it may not connect to, and why.
///
/// Policy: an app reaches whatever its allowed names resolve to, private
/// ranges included (a service on the home LAN is a normal target for a
/// self-hoster), except loopback, unspecified and link-local addresses and
/// the host's own addresses. Those it reaches only when a rule of its
/// manifest names the address itself: an IP literal (`http://127.0.0.1:8080`),
/// or `localhost` for the loopback addresses. A wildcard names nothing.
/// Every address is checked, not only the first, so that an allowed address
/// cannot smuggle a guarded one in behind it.
pub(crate) fn check(
    rules: &[OutboundRule],
    scheme: &str,
    port: u16,
    addresses: &[SocketAddr],
    host_addresses: &[IpAddr],
) -> Result<(), (IpAddr, Guarded)> {
    for address in addresses {
        let ip = address.ip().to_canonical();
        let Some(guarded) = Guarded::of(ip, host_addresses) else { continue };
        if !rules.iter().any(|rule| rule.names_address(scheme, ip, port)) {
            return Err((ip, guarded));
        }
    }
    Ok(())
}

/// Every address on the host's interfaces, read afresh for each request:
/// addresses come and go while hearth runs (a VM network's bridge, a VPN,
/// a new DHCP lease).
pub(crate) fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let interfaces = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            address
                .as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect())
}

/// Why a request that the allow-list let through by name was not sent.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The name did not resolve, or resolved to nothing.
    Unresolved { error: Option<io::Error> },
    /// Resolving took longer than the connect timeout.
    ResolveTimeout,
    /// The host's own addresses could not be read, so nothing is sent.
    HostAddresses(io::Error),
    /// The name resolved to an address the manifest does not name.
    Guarded { address: IpAddr, guarded: Guarded },
}

impl Refused {
    /// The line for the app's log about a request to `scheme://host:port`.
    pub(crate) fn note(&self, scheme: &str, host: &str, port: u16) -> String {
        let target = format!("{scheme}://{}:{port}", bracketed(host));
        match self {
            Refused::Unresolved { error: Some(e) } => {
                format!(
                    "An outgoing request to {target} failed: {host} did not resolve ({e}); check the name."
                )
            }
            Refused::Unresolved { error: None } => {
                format!(
                    "An outgoing request to {target} failed: {host} resolved to no address; check the name."
                )
            }
            Refused::ResolveTimeout => format!(
                "An outgoing request to {target} failed: resolving {host} timed out; check the host's DNS."
            ),
            Refused::HostAddresses(e) => format!(
                "Refused an outgoing request to {target}: hearth could not list this host's addresses to \
                 check it against ({e}); this is a fault of the host, see the daemon's log."
            ),
            Refused::Guarded { address, guarded } => {
                let what = guarded.describe();
                let resolved = if host.parse::<IpAddr>().is_ok() {
                    format!("{host} is {what}")
                } else {
                    format!("{host} resolved to {address}, {what}")
                };
                let allow = format!("{scheme}://{}:{port}", bracketed(&address.to_string()));
                format!(
                    "Refused an outgoing request to {target}: {resolved}, which an app reaches only when \
                     hearth.toml names that address; to allow it, add \"{allow}\" to `outbound` and deploy again."
                )
            }
        }
    }

    /// What the guest sees.
    pub(crate) fn error(&self) -> Error {
        match self {
            Refused::Unresolved { .. } => {
                Error::DnsError { rcode: Some("address not available".into()), info_code: None }
            }
            Refused::ResolveTimeout => Error::DnsTimeout,
            Refused::HostAddresses(e) => {
                Error::InternalError(Some(format!("listing the host's addresses: {e}")))
            }
            Refused::Guarded { .. } => Error::DestinationIpProhibited,
        }
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// Resolves `host` once with `resolver` and checks every address against
/// the policy ([`check`]): the addresses to connect to, or why not.
pub(crate) async fn resolve_checked(
    resolver: &dyn Resolve,
    rules: &[OutboundRule],
    scheme: &str,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Refused> {
    let addresses = match tokio::time::timeout(timeout, resolver.resolve(host, port)).await {
        Err(_) => return Err(Refused::ResolveTimeout),
        Ok(Err(e)) => return Err(Refused::Unresolved { error: Some(e) }),
        Ok(Ok(addresses)) if addresses.is_empty() => return Err(Refused::Unresolved { error: None }),
        Ok(Ok(addresses)) => addresses,
    };
    let own = host_addresses().map_err(Refused::HostAddresses)?;
    check(rules, scheme, port, &addresses, &own)
        .map_err(|(address, guarded)| Refused::Guarded { address, guarded })?;
    Ok(addresses)
}

/// The timeouts of one request: the guest's, or wasmtime's defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Timeouts {
    pub(crate) fn new(options: Option<RequestOptions>) -> Timeouts {
        // The defaults of `default_send_request`; the app's wall-clock
        // timeout bounds a request well before these.
        const DEFAULT: Duration = Duration::from_secs(600);
        let options = options.unwrap_or_default();
        Timeouts {
            connect: options.connect_timeout.unwrap_or(DEFAULT),
            first_byte: options.first_byte_timeout.unwrap_or(DEFAULT),
            between_bytes: options.between_bytes_timeout.unwrap_or(DEFAULT),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// rustls with the webpki roots, as wasmtime's default sender has it, built
/// once.
static TLS: LazyLock<Result<tokio_rustls::TlsConnector, rustls::Error>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
});

/// The name TLS verifies the certificate against: the request's host, as
/// the app wrote it, never the address it resolved to.
fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    Ok(ServerName::try_from(host.to_owned())?)
}

/// What [`send`] returns: the response, and the connection's remaining
/// I/O, which the caller drives while the body is read.
pub(crate) type Sent = (http::Response<TimedBody>, BoxFuture<'static, Result<(), Error>>);

/// Sends `request` over a new connection to `addresses` (checked, tried in
/// order), speaking TLS when `tls`, with `host` as the TLS server name.
pub(crate) async fn send(
    request: http::Request<WasiBody>,
    timeouts: Timeouts,
    host: &str,
    tls: bool,
    addresses: &[SocketAddr],
) -> Result<Sent, Error> {
    let stream = tokio::time::timeout(timeouts.connect, TcpStream::connect(addresses))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    send_over(stream, request, timeouts, host, tls).await
}

/// Sends `request` over `stream`, a connection just made, speaking TLS when
/// `tls`, with `host` as the TLS server name.
pub(crate) async fn send_over(
    stream: TcpStream,
    mut request: http::Request<WasiBody>,
    timeouts: Timeouts,
    host: &str,
    tls: bool,
) -> Result<Sent, Error> {
    let stream: Box<dyn Stream> = if tls {
        let connector = TLS.as_ref().map_err(|e| Error::InternalError(Some(format!("TLS setup: {e}"))))?;
        let name = server_name(host)?;
        let stream = tokio::time::timeout(timeouts.connect, connector.connect(name, stream))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        Box::new(stream)
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) = tokio::time::timeout(
        timeouts.connect,
        hyper::client::conn::http1::Builder::new().handshake::<_, WasiBody>(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // The request carries the scheme and authority, but on the wire they
    // belong only in a request to a proxy: send the path and query alone.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;

    let response = async move {
        let response = tokio::time::timeout(timeouts.first_byte, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        Ok::<_, Error>(response.map(|incoming| TimedBody::new(incoming, timeouts.between_bytes)))
    };
    // An HTTP/1 connection does its I/O only when polled: drive it while
    // waiting for the response, then hand what is left to the caller.
    let mut response = pin!(response);
    let mut conn = Some(conn);
    let response = poll_fn(|cx| {
        if let Poll::Ready(result) = response.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        let Some(io) = conn.as_mut() else { return Poll::Pending };
        match ready!(Pin::new(io).poll(cx)) {
            Ok(()) => {
                conn = None;
                response.as_mut().poll(cx)
            }
            Err(e) => Poll::Ready(Err(Error::from(e))),
        }
    })
    .await?;
    let io = Box::pin(async move {
        let Some(conn) = conn else { return Ok(()) };
        conn.await.map_err(|e| if e.is_timeout() { Error::HttpResponseTimeout } else { Error::from(e) })
    });
    Ok((response, io))
}

/// A response body that fails when no frame comes for the guest's
/// between-bytes timeout.
#[derive(Debug)]
pub(crate) struct TimedBody {
    incoming: hyper::body::Incoming,
    between_bytes: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(incoming: hyper::body::Incoming, between_bytes: Duration) -> TimedBody {
        TimedBody { incoming, between_bytes, idle: Box::pin(tokio::time::sleep(between_bytes)) }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.between_bytes;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(e)
            }))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.idle.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's own addresses in these tests: a LAN address and a VM
    /// network's bridge.
    const OWN: [&str; 2] = ["192.168.1.10", "10.88.0.1"];

    /// Checks a request on http port 8080 whose host resolved to
    /// `resolved`, under the `rules` of a manifest.
    fn check_http(rules: &[&str], resolved: &[&str]) -> Result<(), (IpAddr, Guarded)> {
        let rules: Vec<_> = rules.iter().map(|r| OutboundRule::parse(r).unwrap()).collect();
        let addresses: Vec<SocketAddr> =
            resolved.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), 8080)).collect();
        let own: Vec<IpAddr> = OWN.iter().map(|ip| ip.parse().unwrap()).collect();
        check(&rules, "http", 8080, &addresses, &own)
    }

    fn refused(ip: &str, guarded: Guarded) -> Result<(), (IpAddr, Guarded)> {
        Err((ip.parse().unwrap(), guarded))
    }

    #[test]
    fn an_allowed_name_that_resolves_to_loopback_is_refused() {
        let rules = ["http://api.example.test:*"];
        assert_eq!(check_http(&rules, &["127.0.0.1"]), refused("127.0.0.1", Guarded::Loopback));
        assert_eq!(check_http(&rules, &["127.3.2.1"]), refused("127.3.2.1", Guarded::Loopback));
        assert_eq!(check_http(&rules, &["::1"]), refused("::1", Guarded::Loopback));
    }

    #[test]
    fn a_rule_naming_the_address_lets_an_allowed_name_reach_it() {
        let rules = ["http://api.example.test:*", "http://127.0.0.1:8080"];
        assert_eq!(check_http(&rules, &["127.0.0.1"]), Ok(()));
        let rules = ["http://api.example.test:*", "http://127.0.0.1:9000"];
        assert_eq!(
            check_http(&rules, &["127.0.0.1"]),
            refused("127.0.0.1", Guarded::Loopback),
            "on its port"
        );
    }

    #[test]
    fn localhost_in_a_rule_names_the_loopback_addresses_only() {
        let rules = ["localhost:*"];
        assert_eq!(check_http(&rules, &["127.0.0.1", "::1"]), Ok(()));
        assert_eq!(check_http(&rules, &["192.168.1.10"]), refused("192.168.1.10", Guarded::HostOwn));
    }

    #[test]
    fn a_wildcard_rule_names_no_guarded_address() {
        assert_eq!(check_http(&["*"], &["127.0.0.1"]), refused("127.0.0.1", Guarded::Loopback));
        assert_eq!(check_http(&["*.example.test"], &["::1"]), refused("::1", Guarded::Loopback));
    }

    #[test]
    fn unspecified_and_link_local_addresses_are_guarded_like_loopback() {
        let rules = ["*"];
        assert_eq!(check_http(&rules, &["0.0.0.0"]), refused("0.0.0.0", Guarded::Unspecified));
        assert_eq!(check_http(&rules, &["0.1.2.3"]), refused("0.1.2.3", Guarded::Unspecified));
        assert_eq!(check_http(&rules, &["::"]), refused("::", Guarded::Unspecified));
        assert_eq!(check_http(&rules, &["169.254.169.254"]), refused("169.254.169.254", Guarded::LinkLocal));
        assert_eq!(check_http(&rules, &["fe80::1"]), refused("fe80::1", Guarded::LinkLocal));
        assert_eq!(check_http(&["*", "http://169.254.169.254:8080"], &["169.254.169.254"]), Ok(()));
    }

    #[test]
    fn the_hosts_own_addresses_are_guarded_even_in_private_ranges() {
        assert_eq!(check_http(&["*"], &["192.168.1.10"]), refused("192.168.1.10", Guarded::HostOwn));
        assert_eq!(check_http(&["*"], &["10.88.0.1"]), refused("10.88.0.1", Guarded::HostOwn));
        assert_eq!(check_http(&["*", "http://10.88.0.1:8080"], &["10.88.0.1"]), Ok(()));
    }

    #[test]
    fn private_ranges_are_reached_by_name() {
        let rules = ["http://nas.home.test:*"];
        assert_eq!(check_http(&rules, &["192.168.1.20", "10.0.0.5", "172.16.3.4", "fd00::5"]), Ok(()));
    }

    #[test]
    fn every_resolved_address_is_checked_not_only_the_first() {
        let rules = ["*"];
        assert_eq!(check_http(&rules, &["192.0.2.7", "127.0.0.1"]), refused("127.0.0.1", Guarded::Loopback));
    }

    #[test]
    fn a_v4_mapped_v6_address_is_checked_as_its_v4_address() {
        let rules = ["*"];
        assert_eq!(check_http(&rules, &["::ffff:127.0.0.1"]), refused("127.0.0.1", Guarded::Loopback));
        assert_eq!(check_http(&rules, &["::ffff:192.168.1.10"]), refused("192.168.1.10", Guarded::HostOwn));
    }

    #[test]
    fn the_host_addresses_include_loopback() {
        let own = host_addresses().unwrap();
        assert!(own.contains(&IpAddr::from([127, 0, 0, 1])), "{own:?}");
    }

    #[test]
    fn the_log_line_says_which_name_resolved_where_and_how_to_allow_it() {
        let refusal = Refused::Guarded { address: "127.0.0.1".parse().unwrap(), guarded: Guarded::Loopback };
        assert_eq!(
            refusal.note("http", "api.example.test", 8080),
            "Refused an outgoing request to http://api.example.test:8080: api.example.test resolved to \
             127.0.0.1, a loopback address, which an app reaches only when hearth.toml names that address; \
             to allow it, add \"http://127.0.0.1:8080\" to `outbound` and deploy again."
        );
        let refusal = Refused::Guarded { address: "::1".parse().unwrap(), guarded: Guarded::Loopback };
        assert!(refusal.note("https", "::1", 443).contains("https://[::1]:443: ::1 is a loopback address"));
    }

    #[test]
    fn tls_verifies_the_host_name_not_the_address() {
        assert_eq!(
            server_name("api.example.test").unwrap(),
            ServerName::try_from("api.example.test").unwrap()
        );
        assert_eq!(server_name("::1").unwrap(), ServerName::from(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])));
    }
}
