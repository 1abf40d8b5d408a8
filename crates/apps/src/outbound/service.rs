//! Outgoing HTTP to a service by name: `http://NAME.service.hearth/...`
//! goes to one of the service's passing instances, never through DNS.
//!
//! The instance is picked by the ingress's own balancer for that
//! service (least outstanding requests, ejection of failing instances),
//! whose state is shared: a request from an app and a request through the
//! ingress count against the same instances. A connection that fails is
//! tried on another instance, as the ingress does; a request that reached
//! an instance is not.
//!
//! Permission is the manifest's `service:NAME`, and only that: `*` or
//! `*.service.hearth` do not reach a service. The addresses of instances
//! are hearth's own (a guest bridge, or loopback for an instance
//! registered from the host), so they are not checked against the
//! loopback and host-address guard ([`super::check`]): declaring the
//! service is the permission to reach where it runs.
//!

use std::time::Instant;

use hearth_routing::Outcome;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, WasiBody};

use super::{Sent, Timeouts, send_over};

use crate::ingress::{ATTEMPTS, CONNECT_TIMEOUT, Endpoint, Upstreams};
use crate::manifest::{OutboundRule, default_port};
use crate::service::lock;

pub(crate) use hearth_routing::{SERVICE_DOMAIN as DOMAIN, service_named as named};

/// Why a request to a service was not sent, or failed before an answer.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The host is under `service.hearth` but names no service.
    NotAName,
    /// The manifest does not declare `service:NAME`.
    Undeclared,
    /// `https://`: hearth holds no certificate for `NAME.service.hearth`.
    Tls,
    /// The URL gives a port; instances have their own.
    Port(u16),
    /// The service has no passing instance (or is not registered at all).
    NoInstance,
    /// No instance tried took the connection.
    Unreachable { tried: Vec<String>, error: String },
    /// An instance took the request and failed before answering.
    Failed { instance: String, error: Error },
}

impl Refused {
    /// The line for the app's log about a request to the service `name`.
    pub(crate) fn note(&self, name: &str) -> String {
        let target = format!("http://{name}.{DOMAIN}");
        match self {
            Refused::NotAName => format!(
                "Denied an outgoing request to {name}.{DOMAIN}: {name:?} is not a service name; \
                 call http://NAME.{DOMAIN}/ with the name of a service (see `hearth service ls`)."
            ),
            Refused::Undeclared => format!(
                "Denied an outgoing request to {target}: hearth.toml does not declare the service; \
                 add \"service:{name}\" to `outbound` and deploy again."
            ),
            Refused::Tls => format!(
                "Denied an outgoing request to https://{name}.{DOMAIN}: services are reached over http \
                 only (hearth holds no certificate for {name}.{DOMAIN}); call {target}/ instead."
            ),
            Refused::Port(port) => format!(
                "Denied an outgoing request to {target}:{port}: a service's instances have their own \
                 ports, which hearth picks; call {target}/ without a port."
            ),
            Refused::NoInstance => format!(
                "An outgoing request to {target} failed: the service {name:?} has no passing instance; \
                 see `hearth service inspect {name}`."
            ),
            Refused::Unreachable { tried, error } => format!(
                "An outgoing request to {target} failed: no instance of the service {name:?} could be \
                 reached (tried {}; the last: {error}); see `hearth service inspect {name}`.",
                tried.join(", ")
            ),
            Refused::Failed { instance, error } => format!(
                "An outgoing request to {target} failed: the instance {instance:?} failed before \
                 answering ({error}); it was not retried, since the request had reached it."
            ),
        }
    }

    /// What the guest sees.
    pub(crate) fn into_error(self) -> Error {
        match self {
            Refused::NotAName | Refused::Undeclared | Refused::Tls | Refused::Port(_) => {
                Error::HttpRequestDenied
            }
            Refused::NoInstance => Error::DestinationUnavailable,
            Refused::Unreachable { .. } => Error::ConnectionRefused,
            Refused::Failed { error, .. } => error,
        }
    }
}

/// Whether `rules` let an app call the service `name` on `scheme` and
/// `port` (those of its URL).
pub(crate) fn admit(rules: &[OutboundRule], name: &str, scheme: &str, port: u16) -> Result<(), Refused> {
    if hearth_store::names::check_label("service", name, 63).is_err() {
        return Err(Refused::NotAName);
    }
    if !rules.iter().any(|rule| rule.service() == Some(name)) {
        return Err(Refused::Undeclared);
    }
    if scheme != "http" {
        return Err(Refused::Tls);
    }
    if port != default_port(scheme) {
        return Err(Refused::Port(port));
    }
    Ok(())
}

/// Sends `request`, whose host is `host` (`NAME.service.hearth`), to one of
/// the service `name`'s passing instances, after [`admit`]. `Host` is the
/// URL's, as the guest's request has it.
pub(crate) async fn send(
    upstreams: &Upstreams,
    name: &str,
    request: http::Request<WasiBody>,
    timeouts: Timeouts,
) -> Result<Sent, Refused> {
    let upstream = upstreams.for_host(&format!("{name}.{DOMAIN}"), DOMAIN).ok_or(Refused::NoInstance)?;
    let mut tried: Vec<Endpoint> = Vec::new();
    let mut last_error = String::new();
    let connect = timeouts.connect.min(CONNECT_TIMEOUT);
    while tried.len() < ATTEMPTS {
        let (endpoint, outstanding) = match upstream.pick_and_pass(upstreams.activity(), &tried).await {
            None => break,
            Some(Ok(outstanding)) => (outstanding.endpoint.clone(), outstanding),
            Some(Err((endpoint, error))) => {
                last_error = error;
                tried.push(endpoint);
                continue;
            }
        };
        let stream = match tokio::time::timeout(connect, TcpStream::connect(endpoint.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                last_error = format!("connecting to {}: {e}", endpoint.addr);
                lock(&upstream.balancer).record(&endpoint, Outcome::Failed, Instant::now());
                tried.push(endpoint);
                continue;
            }
            Err(_) => {
                last_error = format!("connecting to {}: no answer within {connect:?}", endpoint.addr);
                lock(&upstream.balancer).record(&endpoint, Outcome::Failed, Instant::now());
                tried.push(endpoint);
                continue;
            }
        };
        let host = format!("{name}.{DOMAIN}");
        return match send_over(stream, request, timeouts, &host, false).await {
            Ok((response, io)) => {
                let failed = response.status().is_server_error();
                let outcome = if failed { Outcome::Failed } else { Outcome::Answered };
                lock(&upstream.balancer).record(&endpoint, outcome, Instant::now());
                // Outstanding on its instance until the connection is done:
                // the answer's body has been read, or dropped.
                let io = Box::pin(async move {
                    let _outstanding = outstanding;
                    io.await
                });
                Ok((response, io))
            }
            Err(error) => {
                lock(&upstream.balancer).record(&endpoint, Outcome::Failed, Instant::now());
                Err(Refused::Failed { instance: endpoint.id, error })
            }
        };
    }
    if tried.is_empty() {
        return Err(Refused::NoInstance);
    }
    Err(Refused::Unreachable { tried: tried.into_iter().map(|e| e.id).collect(), error: last_error })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn rules(entries: &[&str]) -> Vec<OutboundRule> {
        entries.iter().map(|e| OutboundRule::parse(e).expect("a rule")).collect()
    }

    #[test]
    fn a_host_under_the_domain_names_a_service() {
        assert_eq!(named("backend.service.hearth"), Some("backend"));
        assert_eq!(named("backend.service.hearth."), Some("backend"));
        assert_eq!(named("a.b.service.hearth"), Some("a.b"));
        assert_eq!(named("service.hearth"), Some(""));
        for other in ["backend.service.hearth.evil", "backendservice.hearth", "example.com", "hearth"] {
            assert_eq!(named(other), None, "{other}");
        }
    }

    #[test]
    fn only_service_name_in_the_manifest_admits_a_call_on_plain_http() {
        let declared = rules(&["service:backend"]);
        assert!(admit(&declared, "backend", "http", 80).is_ok());
        for (rules, name, scheme, port, want) in [
            (rules(&["service:other"]), "backend", "http", 80, "Undeclared"),
            (rules(&["*", "*:*", "*.service.hearth"]), "backend", "http", 80, "Undeclared"),
            (rules(&["http://backend.service.hearth"]), "backend", "http", 80, "Undeclared"),
            (declared.clone(), "backend", "https", 443, "Tls"),
            (declared.clone(), "backend", "http", 8080, "Port(8080)"),
            (declared.clone(), "a.b", "http", 80, "NotAName"),
            (declared.clone(), "", "http", 80, "NotAName"),
        ] {
            let refused = admit(&rules, name, scheme, port).expect_err(name);
            assert_eq!(format!("{refused:?}"), want, "{name} {scheme} {port}");
        }
    }

    #[test]
    fn an_undeclared_service_is_refused_with_the_entry_that_allows_it() {
        let note = Refused::Undeclared.note("backend");
        assert!(note.contains("add \"service:backend\" to `outbound`"), "{note}");
        assert!(matches!(Refused::Undeclared.into_error(), Error::HttpRequestDenied));
        let note = Refused::NoInstance.note("backend");
        assert!(note.contains("no passing instance") && note.contains("hearth service inspect backend"));
        assert!(matches!(Refused::NoInstance.into_error(), Error::DestinationUnavailable));
    }

    /// A server on loopback that answers each request with its name and
    /// the `Host` it was sent.
    async fn backend(name: &'static str, hits: Arc<AtomicUsize>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                let host = head.lines().find_map(|l| l.strip_prefix("host: ")).unwrap_or("-").to_owned();
                let body = format!("{name} {host}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    fn publish(upstreams: &Upstreams, name: &str, instances: &[(&str, u16)]) {
        let instances: Vec<_> = instances
            .iter()
            .map(|(id, port)| serde_json::json!({"id": id, "address": "127.0.0.1", "port": port}))
            .collect();
        let record = serde_json::json!({"name": name, "instances": instances}).to_string();
        upstreams.apply(name, Some(record.as_bytes()));
    }

    fn request() -> http::Request<WasiBody> {
        let body = Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync();
        http::Request::builder()
            .uri("http://backend.service.hearth/hello")
            .header(http::header::HOST, "backend.service.hearth")
            .body(body)
            .expect("a request")
    }

    async fn call(upstreams: &Upstreams) -> Result<String, Refused> {
        let (response, io) = send(upstreams, "backend", request(), Timeouts::new(None)).await?;
        let io = tokio::spawn(io);
        let body = response.into_body().collect().await.expect("a body").to_bytes();
        io.await.expect("io").expect("the connection ends cleanly");
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_call_is_balanced_over_the_passing_instances_and_keeps_its_host() {
        let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let upstreams = Upstreams::default();
        publish(
            &upstreams,
            "backend",
            &[("b-1", backend("a", a.clone()).await), ("b-2", backend("b", b.clone()).await)],
        );
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(call(&upstreams).await.expect("an answer"));
        }
        assert_eq!(
            answers,
            [
                "a backend.service.hearth",
                "b backend.service.hearth",
                "a backend.service.hearth",
                "b backend.service.hearth"
            ]
        );
        assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (2, 2));
    }

    #[tokio::test]
    async fn a_refused_connection_is_tried_on_another_instance() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = closed.local_addr().expect("addr").port();
        drop(closed);
        let hits = Arc::new(AtomicUsize::new(0));
        let upstreams = Upstreams::default();
        publish(&upstreams, "backend", &[("dead", dead), ("live", backend("live", hits.clone()).await)]);
        for _ in 0..3 {
            assert_eq!(call(&upstreams).await.expect("an answer"), "live backend.service.hearth");
        }
        publish(&upstreams, "backend", &[("dead", dead)]);
        match call(&upstreams).await {
            Err(Refused::Unreachable { tried, .. }) => assert_eq!(tried, ["dead"]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_service_with_no_passing_instance_or_no_record_is_unavailable() {
        let upstreams = Upstreams::default();
        assert!(matches!(call(&upstreams).await, Err(Refused::NoInstance)), "no record");
        publish(&upstreams, "backend", &[]);
        assert!(matches!(call(&upstreams).await, Err(Refused::NoInstance)), "no instance");
    }
}
