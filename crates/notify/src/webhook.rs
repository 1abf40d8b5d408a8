//! One POST of a notification's JSON to a webhook receiver.
//!
//! The request carries `Content-Type: application/json`, the notification's
//! id as `Idempotency-Key` (the same on every attempt, so the endpoint can
//! drop a repeat), `X-Hearth-Signature: sha256=HEX` when the receiver has a
//! secret (the HMAC of the body, as hearth's own webhooks check it:
//! [`hearth_triggers::signature`]), and `User-Agent: hearth/VERSION`.
//!
//! A 2xx answer is success. A redirect is not followed: the signed body is
//! not replayed to an address the rules file does not name. HTTP/1.1 over
//! a new connection, TLS for `https://` with rustls and the webpki roots
//! (the stack apps' outgoing requests use), the whole exchange within
//! [`TIMEOUT`].

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::Error;

/// How long one attempt may take, from connecting to the answer's status.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What every request says it is.
pub const USER_AGENT_VALUE: &str = concat!("hearth/", env!("CARGO_PKG_VERSION"));

/// At most this much of an error answer's body is read, for its message.
const ERROR_BODY_LIMIT: usize = 4096;

/// POSTs `body` to `url`, signed with `secret` if given, once.
pub async fn send(url: &str, secret: Option<&str>, idempotency_key: &str, body: &[u8]) -> Result<(), Error> {
    send_within(url, secret, idempotency_key, body, TIMEOUT).await
}

/// [`send`], giving up after `timeout`.
pub async fn send_within(
    url: &str,
    secret: Option<&str>,
    idempotency_key: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(), Error> {
    let target = Target::parse(url)?;
    let request = request(&target, secret, idempotency_key, body)?;
    tokio::time::timeout(timeout, exchange(&target, request))
        .await
        .map_err(|_| Error::Timeout { target: url.to_owned(), after: timeout })?
}

/// Where a webhook URL points.
#[derive(Debug)]
struct Target {
    url: String,
    tls: bool,
    /// As written, without brackets for IPv6.
    host: String,
    port: u16,
    /// `host[:port]` as the `Host` header says it.
    authority: String,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, Error> {
        let bad = |problem| Error::Url { url: url.to_owned(), problem };
        let uri: Uri = url.parse().map_err(|_| bad("it is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("only http:// and https:// are supported")),
        };
        let authority = uri.authority().ok_or_else(|| bad("it names no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not sent; use the receiver's secret"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("it names no host"));
        }
        Ok(Target {
            url: url.to_owned(),
            tls,
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        })
    }
}

fn request(
    target: &Target,
    secret: Option<&str>,
    idempotency_key: &str,
    body: &[u8],
) -> Result<Request<Full<Bytes>>, Error> {
    let header = |name: &'static str, value: &str| {
        HeaderValue::from_str(value).map_err(|_| Error::Header { name, value: value.to_owned() })
    };
    let mut builder = Request::post(target.path_and_query.as_str())
        .header(HOST, header("Host", &target.authority)?)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header("idempotency-key", header("Idempotency-Key", idempotency_key)?);
    if let Some(secret) = secret {
        builder = builder
            .header(hearth_triggers::signature::HEADER, hearth_triggers::signature::sign(secret, body));
    }
    builder
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|_| Error::Url { url: target.url.clone(), problem: "its path is not valid in a request" })
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// rustls with the webpki roots and the ring provider, as apps' outgoing
/// requests have it, built once.
static TLS: LazyLock<Result<tokio_rustls::TlsConnector, rustls::Error>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
});

/// Stops the connection's task when the exchange is over or given up.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange(target: &Target, request: Request<Full<Bytes>>) -> Result<(), Error> {
    let url = target.url.as_str();
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| Error::io(url, Box::new(e)))?;
    let stream: Box<dyn Stream> = if target.tls {
        let connector = TLS.as_ref().map_err(|e| Error::Tls { target: url.to_owned(), source: e.clone() })?;
        let name = ServerName::try_from(target.host.clone()).map_err(|_| Error::Url {
            url: url.to_owned(),
            problem: "its host is not a valid TLS server name",
        })?;
        Box::new(connector.connect(name, tcp).await.map_err(|e| Error::io(url, Box::new(e)))?)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| Error::io(url, Box::new(e)))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        // Its errors are the request's too, and reported there.
        let _ = conn.await;
    }));
    let response = sender.send_request(request).await.map_err(|e| Error::io(url, Box::new(e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    if status.is_redirection() {
        let location = response.headers().get(LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("");
        return Err(Error::Redirect {
            url: url.to_owned(),
            status: status.as_u16(),
            location: location.to_owned(),
        });
    }
    // The body only explains the status: a body that fails to arrive
    // leaves the message without it.
    let body = Limited::new(response.into_body(), ERROR_BODY_LIMIT).collect().await;
    let body = body.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
    Err(Error::Status { url: url.to_owned(), status: status.as_u16(), body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_http_or_https_with_a_host() {
        let t = Target::parse("https://hooks.example.test/a/b?c=d").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "hooks.example.test", 443));
        assert_eq!((t.authority.as_str(), t.path_and_query.as_str()), ("hooks.example.test", "/a/b?c=d"));
        let t = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port, t.path_and_query.as_str()), (false, "::1", 9000, "/"));
        for (url, want) in [
            ("ftp://x/", "only http:// and https://"),
            ("x/y", "not a URL"),
            ("mailto://x/", "only http:// and https://"),
            ("http://u:p@x/", "credentials in the URL"),
            ("http:// x/", "not a URL"),
        ] {
            let e = Target::parse(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn an_endpoint_that_does_not_answer_in_time_is_retryable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        // Accepted, and never answered.
        let _held = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let e = send_within(&url, None, "k", b"{}", Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }) && e.is_retryable(), "{e:?}");
        assert!(e.to_string().contains("did not answer within 0.3s"), "{e}");
    }
}
