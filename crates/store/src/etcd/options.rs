//! How to reach etcd: endpoints (from an `etcd://` address), the
//! namespace every key lives under, TLS, credentials and timeouts.

use std::time::Duration;

/// The namespace keys live under unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "/hearth/";

/// How to reach etcd.
#[derive(Clone)]
pub struct Options {
    /// `HOST:PORT` of each member (or full `http://`/`https://` URLs).
    pub endpoints: Vec<String>,
    /// The prefix every key is stored under.
    pub namespace: String,
    /// TLS, when etcd serves it: the endpoints are then `https://`.
    pub tls: Option<Tls>,
    /// User name and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// How long connecting may take before [`EtcdStore::connect`](super::EtcdStore::connect) gives up.
    pub connect_timeout: Duration,
    /// How long one request may take before it fails as unavailable.
    pub request_timeout: Duration,
    /// How long a broken watch keeps trying to open again before its stream
    /// hands out the error and ends.
    pub reconnect_for: Duration,
}

/// TLS material, as PEM.
#[derive(Clone, Default)]
pub struct Tls {
    /// The certificate authority that signed etcd's certificates. The
    /// client is built without the system's roots, so without it no
    /// server certificate is trusted.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key, when etcd asks for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key material and no password in logs.
        f.debug_struct("Options")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Plain-text connections to `endpoints` under the default namespace.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Options {
        Options {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            tls: None,
            user: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            reconnect_for: Duration::from_secs(60),
        }
    }

    /// Parses `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn from_url(url: &str) -> Result<Options, InvalidUrl> {
        let invalid = |reason: &'static str| InvalidUrl { url: url.to_owned(), reason };
        let rest = url.strip_prefix("etcd://").ok_or(invalid("it does not start with etcd://"))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Err(invalid("it names no endpoint"));
        }
        let mut endpoints = Vec::new();
        for endpoint in rest.split(',') {
            let (host, port) = endpoint.rsplit_once(':').ok_or(invalid("an endpoint has no :PORT"))?;
            if host.is_empty() || host.contains('/') {
                return Err(invalid("an endpoint has no host, or a path"));
            }
            port.parse::<u16>().map_err(|_| invalid("a port is not a number from 1 to 65535"))?;
            endpoints.push(endpoint.to_owned());
        }
        Ok(Options::new(endpoints))
    }
}

/// `text` as a namespace: not empty, and ending in `/` (added when
/// missing), so that the namespace is a key prefix of its own: `/hearth`
/// would also take the keys of `/hearth2/`, and an empty one every key of
/// the cluster.
pub fn namespace(text: &str) -> Result<String, EmptyNamespace> {
    match text {
        "" => Err(EmptyNamespace),
        _ if text.ends_with('/') => Ok(text.to_owned()),
        _ => Ok(format!("{text}/")),
    }
}

/// An empty namespace.
#[derive(Debug, thiserror::Error)]
#[error(
    "the etcd namespace is empty, which would take every key of the etcd cluster; give a prefix such as /hearth/"
)]
pub struct EmptyNamespace;

/// An `etcd://` address that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid etcd address {url:?}: {reason}; write etcd://HOST:PORT[,HOST:PORT...]")]
pub struct InvalidUrl {
    pub url: String,
    pub reason: &'static str,
}
