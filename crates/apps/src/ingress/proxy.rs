//! Proxying a request to a service's instances over HTTP/1.1: the
//! [`Balancer`](hearth_routing::Balancer) picks the instance; a connection
//! that fails before the request was written is tried on another; bodies
//! stream both ways.
//!
//! A connection per request, for now: loopback and bridge connects cost
//! tens of microseconds, and no pooled connection can then be stale.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HOST, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use hearth_routing::Outcome;

use super::upstream::{Counted, Endpoint, Upstream};
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
    if wants_websocket(req.headers()) {
        upstreams.count(name, Counted::Upgrade);
        return text(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "hearth's ingress does not proxy WebSocket connections to services yet; reach the service \
                 {name:?} directly (its instances are listed by `hearth service inspect {name}`).\n"
            ),
        );
    }
    let mut req = forwarded(req);
    let mut tried: Vec<Endpoint> = Vec::new();
    let mut last_error = String::new();
    while tried.len() < ATTEMPTS {
        let Some(endpoint) = lock(&upstream.balancer).pick(Instant::now(), &tried) else { break };
        let outstanding = Outstanding { upstream: upstream.clone(), endpoint: endpoint.clone() };
        match send(endpoint.addr, req).await {
            Ok(response) => {
                let failed = response.status().is_server_error();
                let outcome = if failed { Outcome::Failed } else { Outcome::Answered };
                lock(&upstream.balancer).record(&endpoint, outcome, Instant::now());
                upstreams.count(name, if failed { Counted::ServerError } else { Counted::Answered });
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
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

/// A request counted as outstanding on an instance until dropped.
struct Outstanding {
    upstream: Arc<Upstream>,
    endpoint: Endpoint,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        lock(&self.upstream.balancer).finish(&self.endpoint);
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
        if let Err(error) = connection.await {
            tracing::debug!(%addr, %error, "A connection to a service instance ended with an error.");
        }
    });
    sender.try_send_request(req).await.map_err(|mut e| match e.take_message() {
        Some(req) => Failure::Unsent(Box::new(req), e.into_error().to_string()),
        None => Failure::Sent(e.into_error().to_string()),
    })
}

/// The request as an instance gets it: origin-form, HTTP/1.1, hop-by-hop
/// headers dropped, `Host` as the client sent it, and `X-Forwarded-*`.
fn forwarded(req: Request<Incoming>) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let peer = parts.extensions.get::<hearth_listen::Peer>().map(|p| p.0);
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::UPGRADE);
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

/// Drops the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
}

/// A WebSocket handshake, which the ingress does not proxy. (Other
/// upgrades, such as `h2c`, are optional for the server: the `Upgrade`
/// header is dropped and the request proxied as it is.)
fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
}

#[cfg(test)]
mod tests {
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
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept", "host"]);
    }

    #[test]
    fn only_a_websocket_upgrade_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!wants_websocket(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(wants_websocket(&headers));
    }
}
