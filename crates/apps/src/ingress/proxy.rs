//! Proxying a request to a service's instances over HTTP/1.1: the
//! [`Balancer`](hearth_routing::Balancer) picks the instance; a connection
//! that fails before the request was written is tried on another; bodies
//! stream both ways.
//!
//! An upgrade (a WebSocket handshake, or any HTTP/1.1 `Upgrade`) goes the
//! same way with its `Upgrade` and `Connection: upgrade` kept: an instance
//! that answers `101 Switching Protocols` has its answer passed on, and the
//! two connections are then joined byte for byte until either side closes
//! (the listener no longer times an upgraded connection: see
//! `hearth_listen`). Any other answer is passed on as it is.
//!
//! An instance of a service of machines passes each request through the
//! host's [`Activity`](hearth_routing::activity::Activity): the request
//! counts as its machine's activity until its response has gone, and one
//! to a machine that sleeps waits for it to wake. A machine that cannot be
//! woken is passed over for another instance, as one that refuses.
//!
//! A connection per request, for now: loopback and bridge connects cost
//! tens of microseconds, and no pooled connection can then be stale.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HOST, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use hearth_routing::Outcome;

use super::upstream::{Counted, Endpoint, Outstanding, Upstream};
use super::{Body, text};
use crate::service::{Apps, lock};

/// How long a connection to an instance may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Instances a request is tried on, at most.
pub(crate) const ATTEMPTS: usize = 3;

/// Headers that belong to one connection, not to the request or response.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Sends `req` to one of `upstream`'s instances and answers with what it
/// answers.
pub(crate) async fn proxy(apps: &Apps, upstream: Arc<Upstream>, req: Request<Incoming>) -> Response<Body> {
    let upstreams = &apps.inner.upstreams;
    let name = upstream.name.as_str();
    let mut req = req;
    // The client's side of an upgrade, ready once its 101 has been sent.
    let client_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let mut req = forwarded(req, client_upgrade.is_some());
    let mut tried: Vec<Endpoint> = Vec::new();
    let mut last_error = String::new();
    while tried.len() < ATTEMPTS {
        let (endpoint, outstanding) = match upstream.pick_and_pass(upstreams.activity(), &tried).await {
            None => break,
            Some(Ok(outstanding)) => (outstanding.endpoint.clone(), outstanding),
            Some(Err((endpoint, error))) => {
                tracing::warn!(
                    service = name,
                    instance = endpoint.id,
                    error,
                    "An instance's machine did not wake; trying another."
                );
                last_error = error;
                tried.push(endpoint);
                continue;
            }
        };
        match send(endpoint.addr, req).await {
            Ok(mut response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let Some(client_upgrade) = client_upgrade else {
                    lock(&upstream.balancer).record(&endpoint, Outcome::Failed, Instant::now());
                    upstreams.count(name, Counted::Failed);
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "The instance {:?} of the service {name:?} switched protocols on a request that \
                             asked for no upgrade. See `hearth service inspect {name}`.\n",
                            endpoint.id
                        ),
                    );
                };
                lock(&upstream.balancer).record(&endpoint, Outcome::Answered, Instant::now());
                upstreams.count(name, Counted::Upgraded);
                let instance_upgrade = hyper::upgrade::on(&mut response);
                let (mut parts, _) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers, true);
                parts.extensions = http::Extensions::new();
                tokio::spawn(tunnel(client_upgrade, instance_upgrade, outstanding));
                let empty = Empty::new().map_err(|never| match never {}).boxed_unsync();
                return Response::from_parts(parts, empty);
            }
            Ok(response) => {
                let failed = response.status().is_server_error();
                let outcome = if failed { Outcome::Failed } else { Outcome::Answered };
                lock(&upstream.balancer).record(&endpoint, outcome, Instant::now());
                upstreams.count(name, if failed { Counted::ServerError } else { Counted::Answered });
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers, false);
                // The request stays outstanding until its response's body
                // has gone to the client (or the client has gone).
                let body = body
                    .map_err(move |e| {
                        let _ = &outstanding;
                        wasmtime_wasi_http::Error::from(e)
                    })
                    .boxed_unsync();
                return Response::from_parts(parts, body);
            }
            Err(Failure::Unsent(back, error)) => {
                lock(&upstream.balancer).record(&endpoint, Outcome::Failed, Instant::now());
                tracing::debug!(service = name, instance = endpoint.id, %error, "An instance could not take a request; trying another.");
                req = *back;
                last_error = error;
                tried.push(endpoint);
            }
            Err(Failure::Sent(error)) => {
                lock(&upstream.balancer).record(&endpoint, Outcome::Failed, Instant::now());
                upstreams.count(name, Counted::Failed);
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "The instance {:?} of the service {name:?} failed before answering: {error}.\n\
                         It was not retried, since the request had reached it. See `hearth service inspect {name}`.\n",
                        endpoint.id
                    ),
                );
            }
        }
    }
    if tried.is_empty() {
        upstreams.count(name, Counted::NoInstance);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "The service {name:?} has no passing instance to take this request.\n\
                 See its instances and why they are not passing with `hearth service inspect {name}`.\n"
            ),
        );
    }
    upstreams.count(name, Counted::Failed);
    let ids: Vec<&str> = tried.iter().map(|e| e.id.as_str()).collect();
    text(
        StatusCode::BAD_GATEWAY,
        format!(
            "No instance of the service {name:?} could be reached (tried {}; the last: {last_error}).\n\
             See `hearth service inspect {name}` for their health.\n",
            ids.join(", ")
        ),
    )
}

/// Joins a client's upgraded connection to its instance's, once the client
/// has its 101, until either side closes; the instance counts the tunnel as
/// outstanding until then.
async fn tunnel(client: OnUpgrade, instance: OnUpgrade, outstanding: Outstanding) {
    let (service, id) = (outstanding.upstream.name.as_str(), outstanding.endpoint.id.as_str());
    let (client, instance) = match tokio::try_join!(client, instance) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(service, instance = id, %error, "An upgraded connection could not be joined to its instance.");
            return;
        }
    };
    let (mut client, mut instance) = (TokioIo::new(client), TokioIo::new(instance));
    match tokio::io::copy_bidirectional(&mut client, &mut instance).await {
        Ok((up, down)) => {
            tracing::debug!(
                service,
                instance = id,
                up,
                down,
                "An upgraded connection to an instance closed."
            );
        }
        Err(error) => {
            tracing::debug!(service, instance = id, %error, "An upgraded connection to an instance ended with an error.");
        }
    }
}

/// Why an attempt got no response.
enum Failure {
    /// Nothing of the request reached the instance: here it is back, to try
    /// on another.
    Unsent(Box<Request<Incoming>>, String),
    /// The request was (perhaps partly) written: it is not tried again.
    Sent(String),
}

async fn send(addr: SocketAddr, req: Request<Incoming>) -> Result<Response<Incoming>, Failure> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::Unsent(Box::new(req), format!("connecting to {addr}: {e}"))),
        Err(_) => {
            return Err(Failure::Unsent(
                Box::new(req),
                format!("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}"),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(handshaken) => handshaken,
        Err(e) => return Err(Failure::Unsent(Box::new(req), format!("connecting to {addr}: {e}"))),
    };
    tokio::spawn(async move {
        // An upgrade hands the connection to its response's `OnUpgrade`.
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%addr, %error, "A connection to a service instance ended with an error.");
        }
    });
    sender.try_send_request(req).await.map_err(|mut e| match e.take_message() {
        Some(req) => Failure::Unsent(Box::new(req), e.into_error().to_string()),
        None => Failure::Sent(e.into_error().to_string()),
    })
}

/// The request as an instance gets it: origin-form, HTTP/1.1, hop-by-hop
/// headers dropped (but for an `upgrade`, its `Upgrade` and `Connection:
/// upgrade`), `Host` as the client sent it, and `X-Forwarded-*`.
fn forwarded<B>(req: Request<B>, upgrade: bool) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    let peer = parts.extensions.get::<hearth_listen::Peer>().map(|p| p.0);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if !upgrade {
        parts.headers.remove(header::UPGRADE);
    }
    if !parts.headers.contains_key(HOST)
        && let Some(authority) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(HOST, authority);
    }
    if let Some(host) = parts.headers.get(HOST).cloned() {
        parts.headers.insert(X_FORWARDED_HOST, host);
    }
    if let Some(peer) = peer {
        let chain = match parts.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {peer}"),
            None => peer.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            parts.headers.insert(X_FORWARDED_FOR, value);
        }
    }
    parts.headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    parts.uri =
        Uri::from(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    Request::from_parts(parts, body)
}

/// Drops the hop-by-hop headers, and those the `Connection` header names;
/// for an `upgrade`, keeps `Upgrade` and sets `Connection: upgrade`, the
/// one hop-by-hop request the next hop must see.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let upgrades: Vec<HeaderValue> =
        if upgrade { headers.get_all(header::UPGRADE).iter().cloned().collect() } else { Vec::new() };
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if !upgrades.is_empty() {
        headers.remove(header::UPGRADE);
        for value in upgrades {
            headers.append(header::UPGRADE, value);
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a request asks to switch protocols (a WebSocket handshake,
/// `h2c`, any other): HTTP/1.1, an `Upgrade` header, and `upgrade` among the
/// `Connection` header's tokens.
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-secret", "1"),
            ("accept", "text/plain"),
            ("host", "api.localhost:8080"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers, false);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept", "host"]);
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_and_connection_upgrade_and_drops_the_rest() {
        let mut req = Request::builder()
            .method("GET")
            .uri("http://chat.localhost:8080/ws?room=1")
            .header("host", "chat.localhost:8080")
            .header("connection", "keep-alive, Upgrade, x-secret")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-secret", "1")
            .body(())
            .expect("a request");
        req.extensions_mut().insert(hearth_listen::Peer("127.0.0.1".parse().expect("an address")));
        assert!(wants_upgrade(&req));
        let forwarded = forwarded(req, true);
        let headers = forwarded.headers();
        let names: BTreeSet<&str> = headers.keys().map(|k| k.as_str()).collect();
        let expected = BTreeSet::from([
            "connection",
            "upgrade",
            "host",
            "sec-websocket-key",
            "sec-websocket-version",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
        ]);
        assert_eq!(names, expected);
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(headers[X_FORWARDED_HOST], "chat.localhost:8080");
        assert_eq!(forwarded.uri(), "/ws?room=1");

        // An instance's 101 keeps them too on its way back.
        let mut answer = HeaderMap::new();
        for (name, value) in [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("keep-alive", "timeout=5"),
        ] {
            answer.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut answer, true);
        let names: BTreeSet<&str> = answer.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["connection", "upgrade", "sec-websocket-accept"]));
    }

    #[test]
    fn a_request_that_is_no_upgrade_loses_its_upgrade_header() {
        let req = Request::builder()
            .header("host", "chat.localhost")
            .header("connection", "keep-alive")
            .header("upgrade", "h2c")
            .body(())
            .expect("a request");
        assert!(!wants_upgrade(&req), "an Upgrade that Connection does not name is no upgrade");
        let forwarded = forwarded(req, false);
        assert!(!forwarded.headers().contains_key(header::UPGRADE));
        assert!(!forwarded.headers().contains_key(header::CONNECTION));

        let http10 = Request::builder()
            .version(Version::HTTP_10)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .expect("a request");
        assert!(!wants_upgrade(&http10), "HTTP/1.0 has no upgrades");
    }
}
