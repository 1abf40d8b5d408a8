//! The HTTP ingress: one server for every app, routing by host name and
//! the longest path prefix, running each request in a fresh instance under
//! the app's limits. A host no app route matches may be a hook's
//! ([`crate::hooks`]) or a service's, `NAME.DOMAIN`, proxied to its
//! passing instances ([`upstream`], [`proxy`], balanced by
//! [`hearth_routing::balance`]).

mod proxy;
mod table;
mod upstream;

pub(crate) use proxy::{ATTEMPTS, CONNECT_TIMEOUT};
pub(crate) use table::{Entry, Table};
pub(crate) use upstream::{Endpoint, Upstreams, follow as follow_services};

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_triggers::delivery::Claim;
use hearth_triggers::guard::{Guard, Verdict};
use http::header::{CONTENT_TYPE, HOST, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use wasmtime::Store;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use crate::Error;
use crate::host::{self, AppCtx, HostState};
use crate::logs::LogStream;
use crate::manifest::split_host_port;
use crate::service::{Apps, Loaded};

/// Time requests in flight get to finish once shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);
/// Lines of a trap's message and backtrace kept in the app's log.
const TRAP_LINES: usize = 24;

type Body = HyperOutgoingBody;

pub(crate) async fn serve(
    apps: Apps,
    listener: TcpListener,
    limits: hearth_listen::Limits,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("the ingress socket has no address: {e}")))?;
    *apps.inner.ingress_port.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr.port());
    tracing::info!(%addr, max_connections = limits.max_connections, "Apps ingress listening.");
    let service = hyper::service::service_fn(move |req| {
        let apps = apps.clone();
        async move { Ok::<_, Infallible>(dispatch(&apps, req).await) }
    });
    let mut stopping = shutdown.clone();
    let served = hearth_listen::serve(listener, limits, service, shutdown);
    tokio::pin!(served);
    tokio::select! {
        () = &mut served => return Ok(()),
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    if tokio::time::timeout(DRAIN, served).await.is_err() {
        tracing::warn!("Some ingress requests were still running after {DRAIN:?}; dropping them.");
    }
    Ok(())
}

async fn dispatch(apps: &Apps, req: Request<Incoming>) -> Response<Body> {
    if !apps.is_ready() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "hearth is loading its apps; try again in a moment.\n".into(),
        );
    }
    let host = request_host(&req);
    let target = {
        let table = apps.inner.table.load();
        let path = req.uri().path();
        let app = table.route(&host, path);
        if app.is_none()
            && let Some(hook) = apps.inner.hooks.load().get(&host).cloned()
        {
            return run_hook(hook, req).await;
        }
        // Apps and services route the same way: the exact host, then the
        // longest prefix over both (an app on a tie, which only a race of
        // two declarations can make: each refuses a route taken).
        let service = apps.inner.upstreams.route(&host, path, &apps.inner.options.domain);
        match (app, service) {
            (app, Some((matched, upstream))) if app.is_none_or(|(prefix, _, _)| prefix.len() < matched) => {
                drop(table);
                return proxy::proxy(apps, upstream, req).await;
            }
            (Some((_, target, counters)), _) => (target.clone(), counters.clone()),
            (None, _) => return not_found(apps, &table, &host, path),
        }
    };
    let (target, counters) = target;
    let started = Instant::now();
    let response = answer(apps, &target, req).await;
    counters.record(response.status(), started.elapsed());
    response
}

/// What the app a request was routed to answers (or why it cannot).
async fn answer(apps: &Apps, target: &table::Target, req: Request<Incoming>) -> Response<Body> {
    match &target.serving {
        Ok(loaded) => {
            // An app's webhooks: requests under their paths are checked
            // (signed, once per Idempotency-Key).
            match hearth_triggers::guard::guard_for(&target.guards, req.uri().path()) {
                Verdict::Open => run(apps, loaded.clone(), req).await,
                Verdict::Guarded(guard) => {
                    let guard = guard.clone();
                    run_webhook(apps, &target.name, loaded.clone(), &guard, req).await
                }
                Verdict::Ambiguous => text(
                    StatusCode::BAD_REQUEST,
                    "This path is written so that it falls under two of the app's webhooks; send it in its plain \
                     form (no dot segments or escapes).\n"
                        .into(),
                ),
            }
        }
        Err(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "The app {:?} cannot serve: {reason}\nSee `hearth app logs {}`.\n",
                target.name, target.name
            ),
        ),
    }
}

/// A request body held whole in memory.
pub(crate) fn full_body(bytes: Bytes) -> Full<Bytes> {
    Full::new(bytes)
}

/// A delivery to one of the app's webhooks: its body read whole, its
/// signature checked if the webhook has a secret (a 401, logged, if it is
/// wrong), and, when it carries an `Idempotency-Key`, handled once: a
/// redelivery of a handled key is answered with the first answer's status
/// and does not reach the app.
async fn run_webhook(
    apps: &Apps,
    name: &str,
    loaded: Arc<Loaded>,
    guard: &Guard,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, crate::hooks::MAX_HOOK_BODY);
    let body = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {} KiB, the webhook limit\n", crate::hooks::MAX_HOOK_BODY >> 10),
            );
        }
    };
    let ctx = loaded.ctx.clone();
    let what = format!("{} {}", parts.method, parts.uri.path());
    if let Some(secret) = guard.secret.as_deref() {
        let header = parts.headers.get(hearth_triggers::signature::HEADER).and_then(|v| v.to_str().ok());
        if !hearth_triggers::signature::verify(secret, &body, header) {
            ctx.log.push(
                ctx.version,
                LogStream::Hearth,
                format!("{what}: refused, the webhook signature is missing or wrong."),
            );
            return text(StatusCode::UNAUTHORIZED, format!("{}\n", hearth_triggers::signature::REFUSED));
        }
    }
    let key = parts.headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let claimed = match &key {
        None => None,
        Some(key) => match apps
            .claim_delivery(name, &guard.path, key, Duration::from_millis(ctx.limits.timeout_ms))
            .await
        {
            Ok(Claim::New(pending)) => Some(pending),
            Ok(Claim::Done(status)) => {
                ctx.log.push(
                    ctx.version,
                    LogStream::Hearth,
                    format!("{what}: a redelivery of Idempotency-Key {key:?}, already answered {status}; not passed on."),
                );
                let mut response = text(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    format!(
                        "This delivery (Idempotency-Key {key:?}) was handled before: the app answered {status}.\n"
                    ),
                );
                response.headers_mut().insert("x-hearth-duplicate", HeaderValue::from_static("true"));
                return response;
            }
            Ok(Claim::InFlight) => {
                return text(
                    StatusCode::CONFLICT,
                    format!(
                        "A delivery with Idempotency-Key {key:?} is being handled right now; retry later.\n"
                    ),
                );
            }
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("hearth cannot record this delivery ({e}); retry later.\n"),
                );
            }
        },
    };
    let request = Request::from_parts(parts, full_body(body));
    let Some(pending) = claimed else { return run(apps, loaded, request).await };
    // Claimed: the app's answer is recorded even if the sender goes away
    // before it, so that its retry finds it rather than running again.
    let apps = apps.clone();
    let settled = tokio::spawn(async move {
        let response = run(&apps, loaded, request).await;
        pending.settle(response.status().as_u16()).await;
        response
    });
    match settled.await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(app = name, error = %e, "A webhook delivery's task failed.");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "hearth failed handling this delivery; retry it.\n".into(),
            )
        }
    }
}

/// Runs one request in a fresh instance and answers with what it sets.
pub(crate) async fn run<B>(apps: &Apps, loaded: Arc<Loaded>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let started = Instant::now();
    apps.inner.requests.fetch_add(1, Ordering::Relaxed);
    let ctx = loaded.ctx.clone();
    let what = format!("{} {}", req.method(), req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let mut store = host::new_store(&loaded.code.engine, &ctx);
    let (tx, rx) = oneshot::channel();
    let resources = (|| {
        let incoming = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(tx)?;
        Ok::<_, wasmtime::Error>((incoming, out))
    })();
    let (incoming, out) = match resources {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("The request cannot be passed to the app: {e:#}\n"),
            );
        }
    };
    // The instance runs right here, on the connection's task, while it
    // works towards an answer: most handlers set the response and write the
    // whole body without waiting on anything, so the answer goes out in one
    // write with no hop to another task. One that answers and then keeps
    // going (streaming a body, waiting on I/O) finishes on a task of its
    // own, as does one whose client goes away: an instance never stops half
    // way because of the connection.
    let mut instance =
        Detachable::new(execute(store, loaded.code.pre.clone(), incoming, out, ctx.clone(), what.clone()));
    let mut head = Some(rx);
    let answer = loop {
        let event = match head.as_mut() {
            Some(rx) => tokio::select! {
                biased;
                outcome = &mut instance => Event::Ended(outcome),
                answer = rx => Event::Head(answer.ok()),
            },
            None => Event::Ended((&mut instance).await),
        };
        match event {
            Event::Ended(Outcome::Returned) => {
                break match head.as_mut().map(|rx| rx.try_recv()) {
                    Some(Ok(Ok(response))) => Ok(response),
                    Some(Ok(Err(code))) => Err(Failure::Code(code)),
                    _ => Err(Failure::Ended(Outcome::Returned)),
                };
            }
            Event::Ended(failed) => break Err(Failure::Ended(failed)),
            Event::Head(Some(answer)) => {
                instance.detach();
                break answer.map_err(Failure::Code);
            }
            // The app dropped the response outparam unset: its outcome says why.
            Event::Head(None) => head = None,
        }
    };
    let response = match answer {
        Ok(mut response) => {
            let headers = response.headers_mut();
            headers.insert("x-hearth-version", HeaderValue::from(ctx.version));
            // Which compiler's code answered: tests and benchmarks tell the
            // tiers apart by it.
            headers.insert("x-hearth-tier", HeaderValue::from_static(loaded.code.tier.as_str()));
            response
        }
        Err(failure) => {
            apps.inner.failures.fetch_add(1, Ordering::Relaxed);
            match failure {
                Failure::Code(code) => {
                    ctx.log.push(
                        ctx.version,
                        LogStream::Hearth,
                        format!("{what}: the app answered with the error {code:?}."),
                    );
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("The app answered with an error: {code:?}.\n"),
                    )
                }
                Failure::Ended(outcome) => outcome.response(&ctx),
            }
        }
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    ctx.log.push(ctx.version, LogStream::Request, format!("{what} {} {ms:.1}ms", response.status().as_u16()));
    response
}

/// What `run` waits for first.
enum Event {
    /// The instance ended.
    Ended(Outcome),
    /// The app set its response (or dropped the outparam unset: `None`).
    Head(Option<Result<Response<Body>, ErrorCode>>),
}

/// Why a request got no response from its app.
enum Failure {
    /// The app answered with an error code instead of a response.
    Code(ErrorCode),
    /// The instance ended without a response: it failed, or returned unset.
    Ended(Outcome),
}

/// A future polled in place until [`Detachable::detach`], or until it is
/// dropped unfinished: then it runs to its end on a task of its own.
struct Detachable<F: Future<Output = Outcome> + Send + 'static> {
    future: Option<Pin<Box<F>>>,
}

impl<F: Future<Output = Outcome> + Send + 'static> Detachable<F> {
    fn new(future: F) -> Self {
        Detachable { future: Some(Box::pin(future)) }
    }

    fn detach(&mut self) {
        if let Some(future) = self.future.take() {
            // Without a runtime the process is ending, and the instance with it.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(future);
            }
        }
    }
}

impl<F: Future<Output = Outcome> + Send + 'static> Future for Detachable<F> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Ready(Outcome::Instantiate("the instance was polled after it ended".into()));
        };
        let outcome = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(outcome)
    }
}

impl<F: Future<Output = Outcome> + Send + 'static> Drop for Detachable<F> {
    fn drop(&mut self) {
        self.detach();
    }
}

/// How a request's instance ended.
#[derive(Debug)]
enum Outcome {
    /// The handler returned (with or without setting a response).
    Returned,
    Trap(String),
    Cpu,
    Memory(usize),
    Timeout,
    Instantiate(String),
}

async fn execute(
    mut store: Store<HostState>,
    pre: ProxyPre<HostState>,
    incoming: Resource<HostIncomingRequest>,
    out: Resource<HostResponseOutparam>,
    ctx: Arc<AppCtx>,
    what: String,
) -> Outcome {
    let timeout = Duration::from_millis(ctx.limits.timeout_ms);
    let result = {
        let call = async {
            let proxy = pre.instantiate_async(&mut store).await.map_err(|e| (true, e))?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out)
                .await
                .map_err(|e| (false, e))
        };
        tokio::time::timeout(timeout, call).await
    };
    let overrun = store.data().overrun();
    // Dropping the store ends the response body if the app was still
    // writing it, and flushes the app's last partial line of output.
    drop(store);
    let outcome = match result {
        Ok(Ok(())) => return Outcome::Returned,
        Err(_) => Outcome::Timeout,
        Ok(Err(_)) if overrun.cpu => Outcome::Cpu,
        Ok(Err(_)) if overrun.memory.is_some() => Outcome::Memory(overrun.memory.unwrap_or(0)),
        Ok(Err((true, e))) => Outcome::Instantiate(format!("{e:#}")),
        Ok(Err((false, e))) => Outcome::Trap(trap_report(&e)),
    };
    let limits = ctx.limits;
    let note = match &outcome {
        Outcome::Returned => unreachable!(),
        Outcome::Timeout => format!("{what}: stopped after the request timeout of {} ms.", limits.timeout_ms),
        Outcome::Cpu => format!("{what}: stopped after using its CPU time budget of {} ms.", limits.cpu_ms),
        Outcome::Memory(asked) => format!(
            "{what}: failed after asking for {} MiB of memory, over its limit of {} MiB.",
            asked >> 20,
            limits.memory_bytes >> 20
        ),
        Outcome::Instantiate(e) => format!("{what}: could not start an instance: {e}"),
        Outcome::Trap(e) => {
            let mut lines = e.lines().filter(|l| !l.trim().is_empty());
            let mut text = format!("{what}: the app trapped: {}", lines.next().unwrap_or("(no message)"));
            for line in lines.take(TRAP_LINES) {
                text.push('\n');
                text.push_str(line);
            }
            text
        }
    };
    tracing::warn!(app = ctx.name, version = ctx.version, outcome = ?outcome_kind(&outcome), "{}", note.lines().next().unwrap_or(""));
    for line in note.lines() {
        ctx.log.push(ctx.version, LogStream::Hearth, line);
    }
    outcome
}

/// What trapped, then the guest's backtrace (hearth's own stack is no help
/// to the app's author).
fn trap_report(e: &wasmtime::Error) -> String {
    let mut text = e.root_cause().to_string();
    if let Some(backtrace) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
        // Its text starts "error while executing at wasm backtrace:".
        text.push('\n');
        text.push_str(&backtrace.to_string());
    }
    text
}

fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Returned => "returned",
        Outcome::Trap(_) => "trap",
        Outcome::Cpu => "cpu",
        Outcome::Memory(_) => "memory",
        Outcome::Timeout => "timeout",
        Outcome::Instantiate(_) => "instantiate",
    }
}

impl Outcome {
    fn response(&self, ctx: &AppCtx) -> Response<Body> {
        let logs = format!("See `hearth app logs {}`.", ctx.name);
        let (status, text) = match self {
            Outcome::Returned => {
                ctx.log.push(ctx.version, LogStream::Hearth, "The app returned without sending a response.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("The app returned without sending a response. {logs}"),
                )
            }
            Outcome::Trap(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The app failed while handling this request. {logs}"),
            ),
            Outcome::Cpu => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The app used up its CPU time budget of {} ms. {logs}", ctx.limits.cpu_ms),
            ),
            Outcome::Memory(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "The app ran out of memory (its limit is {} MiB). {logs}",
                    ctx.limits.memory_bytes >> 20
                ),
            ),
            Outcome::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("The app did not answer within {} ms. {logs}", ctx.limits.timeout_ms),
            ),
            Outcome::Instantiate(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("hearth cannot start an instance of the app right now; try again. {logs}"),
            ),
        };
        self::text(status, format!("{text}\n"))
    }
}

/// The request's host, lowercase, without port or trailing dot.
fn request_host<B>(req: &Request<B>) -> String {
    let host = match req.uri().host() {
        Some(host) => host,
        None => req.headers().get(HOST).and_then(|h| h.to_str().ok()).map_or("", |h| split_host_port(h).0),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Hands a request for a hook host (webhooks) to its handler.
async fn run_hook(hook: crate::hooks::HookHandler, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, crate::hooks::MAX_HOOK_BODY);
    let body = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {} KiB, the webhook limit\n", crate::hooks::MAX_HOOK_BODY >> 10),
            );
        }
    };
    let request = crate::hooks::HookRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    let answer = hook(request).await;
    let mut response =
        text(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), answer.body);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    response
}

/// A 404 that says how to get an app here.
fn not_found(apps: &Apps, table: &Table, host: &str, path: &str) -> Response<Body> {
    let port = apps.inner.ingress_port.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(80);
    let port = if port == 80 { String::new() } else { format!(":{port}") };
    let domain = &apps.inner.options.domain;
    let mut text = if table.has_host(host) {
        format!("No app on {host} answers under {path}.\n")
    } else if host.is_empty() {
        "The request has no Host header, so hearth cannot tell which app it is for.\n".to_owned()
    } else {
        format!("No app is deployed at {host}.\n")
    };
    text.push_str(&format!(
        "\nDeploy one with:\n    hearth app deploy NAME app.wasm\nand it answers at http://NAME.{domain}{port}/ \
         (add --route HOST/PATH for other hosts and paths).\n"
    ));
    if table.apps.is_empty() {
        text.push_str("\nNo apps are deployed yet.\n");
    } else {
        text.push_str("\nApps here:\n");
        for (name, routes) in &table.apps {
            let urls: Vec<String> =
                routes.iter().map(|r| format!("http://{}{port}{}", r.host, r.path)).collect();
            text.push_str(&format!("    {name:<20} {}\n", urls.join("  ")));
        }
    }
    self::text(StatusCode::NOT_FOUND, text)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
