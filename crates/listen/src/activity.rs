//! What a connection is doing: when a byte last moved on it, how many of its
//! requests are in flight, and whether it is waiting on its client (to send
//! a request body's next bytes, or to take a response's next bytes).

use std::io::IoSlice;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Conn;

/// A wait that has not begun.
const NOT_WAITING: u64 = u64::MAX;

/// Which way a stalled connection was waiting on its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stall {
    /// For a request body's next bytes.
    Reading,
    /// For the client to take a response's next bytes.
    Writing,
}

/// One connection's activity, shared by its IO, its service and the task
/// that serves it.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds from `start` to when a byte last moved, or a request
    /// was last answered.
    last: AtomicU64,
    /// Requests in flight: handlers running or responses being sent.
    in_flight: AtomicUsize,
    /// Milliseconds from `start` to when the server began waiting for the
    /// client to send (a read found nothing), or [`NOT_WAITING`].
    read_wait: AtomicU64,
    /// The same for the client to take bytes (a write found the socket's
    /// buffer full).
    write_wait: AtomicU64,
    /// Wakes [`Activity::stalled`] when a wait begins or a request starts.
    changed: Notify,
    /// Wakes [`Activity::hung_up`] when the server has read bytes.
    read: Notify,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            read_wait: AtomicU64::new(NOT_WAITING),
            write_wait: AtomicU64::new(NOT_WAITING),
            changed: Notify::new(),
            read: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.start + Duration::from_millis(millis)
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    fn wait_begins(&self, wait: &AtomicU64) {
        let began =
            wait.compare_exchange(NOT_WAITING, self.now(), Ordering::Relaxed, Ordering::Relaxed).is_ok();
        if began {
            self.changed.notify_one();
        }
    }

    fn read_done(&self, bytes: usize) {
        self.read_wait.store(NOT_WAITING, Ordering::Relaxed);
        if bytes > 0 {
            self.touch();
            self.read.notify_one();
        }
    }

    fn write_done(&self, bytes: usize) {
        self.write_wait.store(NOT_WAITING, Ordering::Relaxed);
        if bytes > 0 {
            self.touch();
        }
    }

    /// Resolves once no byte has moved for `timeout` while no request was
    /// in flight.
    pub(crate) async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.last.load(Ordering::Relaxed);
            tokio::time::sleep_until(self.at(last) + timeout).await;
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                // A request in flight is not idleness; it touches when it ends.
                tokio::time::sleep(timeout).await;
                continue;
            }
            if self.last.load(Ordering::Relaxed) == last {
                return;
            }
        }
    }

    /// Resolves once a request in flight has waited on its client for
    /// `bound` with no byte moving either way: a body trickled then
    /// stopped, or a response the client no longer reads. Progress, not
    /// total time: each byte that moves starts the bound again, and a
    /// handler at work (the server neither reading nor writing) is not
    /// waiting on anyone.
    pub(crate) async fn stalled(&self, bound: Duration) -> Stall {
        loop {
            let changed = self.changed.notified();
            let Some((since, stall)) = self.waiting_since() else {
                changed.await;
                continue;
            };
            tokio::select! {
                () = tokio::time::sleep_until(self.at(since) + bound) => {
                    if self.waiting_since() == Some((since, stall)) {
                        return stall;
                    }
                }
                () = changed => {}
            }
        }
    }

    /// Since when a request in flight has waited on its client with no
    /// byte moving, and which way; the earlier wait if both.
    fn waiting_since(&self) -> Option<(u64, Stall)> {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            // Waiting for the next request is the idle timeout's business.
            return None;
        }
        let last = self.last.load(Ordering::Relaxed);
        [(&self.read_wait, Stall::Reading), (&self.write_wait, Stall::Writing)]
            .into_iter()
            .map(|(wait, stall)| (wait.load(Ordering::Relaxed), stall))
            .filter(|(since, _)| *since != NOT_WAITING)
            .map(|(since, stall)| (since.max(last), stall))
            .min_by_key(|(since, _)| *since)
    }

    /// Resolves when the client has closed its end (or reset it). The
    /// server reads a connection only for a request's head and body (hyper
    /// runs with half-close allowed, so that a read pending while a request
    /// is in flight always means a body is wanted); this notices a client
    /// gone while its handler works or its response streams, without
    /// taking bytes that are the server's to read.
    pub(crate) async fn hung_up<C: Conn>(&self, conn: &C) {
        loop {
            let read = self.read.notified();
            match conn.ready(tokio::io::Interest::READABLE).await {
                Ok(ready) if !ready.is_read_closed() => {}
                _ => return,
            }
            match conn.try_peek() {
                // Bytes the server has not read yet (a body it is not
                // reading now, a next request): look again once it has.
                Ok(1..) => read.await,
                // Readiness left over from bytes the server has read: now
                // cleared, so the next wait is for something new.
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(0) | Err(_) => return,
            }
        }
    }
}

/// A connection's IO, noting every byte that moves and every wait on the
/// client. It shares the connection with [`Activity::hung_up`], which looks
/// at its readiness without reading.
#[derive(Debug)]
pub(crate) struct Watched<C> {
    conn: Arc<C>,
    activity: Arc<Activity>,
}

impl<C> Watched<C> {
    pub(crate) fn new(conn: Arc<C>, activity: Arc<Activity>) -> Watched<C> {
        Watched { conn, activity }
    }
}

impl<C: Conn> Watched<C> {
    /// Runs `io` once the connection is ready for it, as tokio's own
    /// streams do; a wait is noted as a wait on the client.
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        stall: Stall,
        mut io: impl FnMut(&C) -> std::io::Result<T>,
    ) -> Poll<std::io::Result<T>> {
        loop {
            let ready = match stall {
                Stall::Reading => self.conn.poll_read_ready(cx),
                Stall::Writing => self.conn.poll_write_ready(cx),
            };
            if ready.is_pending() {
                let wait = match stall {
                    Stall::Reading => &self.activity.read_wait,
                    Stall::Writing => &self.activity.write_wait,
                };
                self.activity.wait_begins(wait);
                return Poll::Pending;
            }
            ready!(ready)?;
            match io(&self.conn) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl<C: Conn> AsyncRead for Watched<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let read = ready!(self.poll_io(cx, Stall::Reading, |conn| conn.try_read(buf.initialize_unfilled())))?;
        buf.advance(read);
        self.activity.read_done(read);
        Poll::Ready(Ok(()))
    }
}

impl<C: Conn> AsyncWrite for Watched<C> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let written = ready!(self.poll_io(cx, Stall::Writing, |conn| conn.try_write(buf)))?;
        self.activity.write_done(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(self.poll_io(cx, Stall::Writing, |conn| conn.try_write_vectored(bufs)))?;
        self.activity.write_done(written);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Sockets have no buffer of their own to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.conn.shutdown_write())
    }
}

/// A service that counts its requests in flight in the connection's
/// activity: from when its handler starts to when its response's body ends.
#[derive(Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Put in each request's extensions as [`crate::Peer`].
    peer: Option<IpAddr>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>, peer: Option<IpAddr>) -> Counted<S> {
        Counted { inner, activity, peer }
    }
}

/// A request in flight; the connection is active again when it ends.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.changed.notify_one();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(crate::Peer(peer));
        }
        let in_flight = InFlight::start(&self.activity);
        let handler = self.inner.call(request);
        Box::pin(async move {
            let response = handler.await?;
            Ok(response.map(|body| Tracked { body: Box::pin(body), in_flight: Some(in_flight) }))
        })
    }
}

/// A response body that keeps its request in flight until it ends (an
/// event stream, a followed log: long, but not idle).
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    body: Pin<Box<B>>,
    in_flight: Option<InFlight>,
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = self.body.as_mut().poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
