//! Webhook deliveries to a hyper server on loopback that records what it
//! receives.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hearth_notify::{Error, webhook};
use hearth_triggers::signature;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const SECRET: &str = "s3cret";
const BODY: &[u8] = br#"{"version":"4","status":"firing","alerts":[]}"#;

/// A request as the endpoint saw it.
struct Seen {
    headers: HeaderMap,
    body: Bytes,
}

/// An HTTP endpoint on loopback answering its Nth request with
/// `answers[N]` (status, `Location`), then 200.
struct Endpoint {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    async fn start(answers: &[(u16, &'static str)]) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/alerts?team=ops", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = answers.to_vec();
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (seen, answers) = (recorded.clone(), answers.clone());
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (seen, answers) = (seen.clone(), answers.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push(Seen { headers: parts.headers, body });
                            seen.len() - 1
                        };
                        let (status, extra) = answers.get(n).copied().unwrap_or((200, ""));
                        let mut response = Response::builder().status(status);
                        if (300..400).contains(&status) {
                            response = response.header("location", extra);
                        }
                        Ok::<_, Infallible>(response.body(Full::new(Bytes::from(extra))).unwrap())
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Endpoint { url, seen, task }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        self.seen.lock().unwrap()
    }
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_delivery_is_a_signed_post_with_the_idempotency_key_and_the_body() {
    let endpoint = Endpoint::start(&[]).await;
    webhook::send(&endpoint.url, Some(SECRET), "0123456789abcdef-1-2", BODY).await.unwrap();
    let seen = endpoint.seen();
    let [request] = seen.as_slice() else { panic!("{} requests", seen.len()) };
    assert_eq!(request.body.as_ref(), BODY);
    assert!(signature::verify(SECRET, &request.body, header(request, signature::HEADER)));
    assert_eq!(header(request, "idempotency-key"), Some("0123456789abcdef-1-2"));
    assert_eq!(header(request, "content-type"), Some("application/json"));
    assert_eq!(header(request, "user-agent"), Some(concat!("hearth/", env!("CARGO_PKG_VERSION"))));
}

#[tokio::test]
async fn without_a_secret_nothing_is_signed() {
    let endpoint = Endpoint::start(&[]).await;
    webhook::send(&endpoint.url, None, "k", BODY).await.unwrap();
    assert_eq!(header(&endpoint.seen()[0], signature::HEADER), None);
}

#[tokio::test]
async fn a_500_is_retryable_and_the_retry_is_the_same_request() {
    let endpoint = Endpoint::start(&[(500, "overloaded\nstack trace")]).await;
    let e = webhook::send(&endpoint.url, Some(SECRET), "k-1", BODY).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(matches!(e, Error::Status { status: 500, .. }), "{e:?}");
    assert!(e.to_string().ends_with("answered 500: overloaded; a later attempt may succeed"), "{e}");

    webhook::send(&endpoint.url, Some(SECRET), "k-1", BODY).await.unwrap();
    let seen = endpoint.seen();
    assert_eq!(seen.len(), 2);
    for name in ["idempotency-key", signature::HEADER] {
        assert_eq!(header(&seen[0], name), header(&seen[1], name), "{name}");
    }
    assert_eq!(seen[0].body, seen[1].body);
}

#[tokio::test]
async fn a_400_is_permanent() {
    let endpoint = Endpoint::start(&[(400, "unknown field"), (408, ""), (429, "")]).await;
    let e = webhook::send(&endpoint.url, None, "k", BODY).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("answered 400: unknown field; the endpoint refused"), "{e}");
    // But a request timeout and too many requests are worth another try.
    for status in [408, 429] {
        let e = webhook::send(&endpoint.url, None, "k", BODY).await.unwrap_err();
        assert!(matches!(e, Error::Status { status: s, .. } if s == status) && e.is_retryable(), "{e:?}");
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let endpoint = Endpoint::start(&[(302, "http://127.0.0.1:1/elsewhere")]).await;
    let e = webhook::send(&endpoint.url, Some(SECRET), "k", BODY).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(
        e.to_string().contains(
            r#"answered 302, a redirect to "http://127.0.0.1:1/elsewhere"; hearth does not follow redirects"#
        ),
        "{e}"
    );
    assert_eq!(endpoint.seen().len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let e = webhook::send(&url, None, "k", BODY).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }) && e.is_retryable(), "{e:?}");
    assert!(e.to_string().starts_with(&format!("could not talk to {url}; check that it is up")), "{e}");
}

#[tokio::test]
async fn https_to_a_server_that_does_not_speak_tls_is_a_permanent_tls_error() {
    let endpoint = Endpoint::start(&[]).await;
    let url = endpoint.url.replacen("http://", "https://", 1);
    let e = webhook::send(&url, None, "k", BODY).await.unwrap_err();
    assert!(matches!(e, Error::Tls { .. }) && !e.is_retryable(), "{e:?}");
}
