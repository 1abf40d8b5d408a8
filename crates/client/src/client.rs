//! A typed client for the daemon's API, over the Unix socket or TCP.
//!
//! One HTTP/1.1 connection per call: the CLI makes a handful of calls per
//! invocation, and a fresh connection keeps failure modes simple.

use std::path::PathBuf;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{
    BuildImage, ChangeEvent, CreateFault, CreateMachine, CreateNetwork, DeleteResult, ErrorBody, ErrorDetail,
    EventList, EventsQuery, Fault, FaultList, GrantLease, Healed, ImageInfo, ImageList, KvEntry, KvList, Lab,
    LabDown, LabList, LeaseInfo, LeaseList, MAX_FILE_BYTES, MODE_HEADER, Machine, MachineList, Network,
    NetworkList, Progress, PullImage, PutKv, PutLab, RestoreSnapshot, Snapshot, SnapshotList, Status,
    TakeSnapshot, WriteResult,
};

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The daemon's Unix socket (no token needed).
    Unix(PathBuf),
    /// A daemon on TCP, e.g. `http://127.0.0.1:7070`, with its token.
    Tcp { authority: String, token: Option<String> },
}

impl Endpoint {
    /// Parses `http://HOST:PORT` for a remote daemon.
    pub fn tcp(url: &str, token: Option<String>) -> Result<Self, Error> {
        let uri: Uri = url.parse().map_err(|_| Error::BadUrl(url.to_owned()))?;
        match uri.scheme_str() {
            Some("http") => {}
            _ => return Err(Error::BadUrl(url.to_owned())),
        }
        let authority = uri.authority().ok_or_else(|| Error::BadUrl(url.to_owned()))?;
        let authority =
            if authority.port().is_some() { authority.to_string() } else { format!("{authority}:80") };
        Ok(Endpoint::Tcp { authority, token })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp { authority, .. } => write!(f, "http://{authority}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens where the daemon should be.
    #[error("the hearth daemon is not running (nothing listens at {endpoint})")]
    NotRunning { endpoint: String },

    /// The connection failed for another reason.
    #[error("cannot connect to the hearth daemon at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },

    /// `--host` is not an `http://HOST:PORT` URL.
    #[error("{0:?} is not a daemon URL of the form http://HOST:PORT")]
    BadUrl(String),

    /// The daemon answered with an error.
    #[error("{}", .detail.message)]
    Api { status: StatusCode, detail: ErrorDetail },

    /// The exchange broke off or the answer made no sense.
    #[error("the daemon's answer could not be read: {0}")]
    Protocol(String),

    /// What the daemon sent could not be written on this host.
    #[error("cannot write the downloaded file on this host")]
    Local(#[source] std::io::Error),
}

impl Error {
    /// What the user should do next.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::NotRunning { .. } => Some(
                "start it with `hearth serve` (same --data-dir or HEARTH_DATA_DIR), or `make run` from the source tree"
                    .to_owned(),
            ),
            Error::Connect { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => Some(
                "the socket belongs to another user: run as that user, or use --host with a token".to_owned(),
            ),
            Error::Connect { .. } => Some("check that the daemon is running and reachable".to_owned()),
            Error::BadUrl(_) => Some("for example: --host http://127.0.0.1:7070 --token TOKEN".to_owned()),
            Error::Api { detail, .. } => Some(detail.hint.clone()).filter(|h| !h.is_empty()),
            Error::Protocol(_) => Some("check that client and daemon are the same version (`hearth status`)".to_owned()),
            Error::Local(_) => Some("check the destination's free space and permissions".to_owned()),
        }
    }

    /// The API error code, if the daemon answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { detail, .. } => Some(&detail.code),
            _ => None,
        }
    }
}

/// A client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

/// A connection to the daemon: a Unix socket or a TCP stream.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

impl Client {
    /// A client of the daemon at `endpoint`; nothing is connected until a call.
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Where the daemon is.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&self) -> Result<Box<dyn Io>, Error> {
        let endpoint = self.endpoint.to_string();
        let classify = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                Error::NotRunning { endpoint: endpoint.clone() }
            }
            _ => Error::Connect { endpoint: endpoint.clone(), source },
        };
        Ok(match &self.endpoint {
            Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await.map_err(classify)?),
            Endpoint::Tcp { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str()).await.map_err(classify)?;
                stream.set_nodelay(true).ok();
                Box::new(stream)
            }
        })
    }

    /// Sends one request and returns the raw response, failing on non-2xx.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, Error> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            // The connection ends when the response body is done or dropped.
            let _ = conn.await;
        });
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_owned(),
            Endpoint::Tcp { authority, .. } => authority.clone(),
        };
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, host);
        if let Endpoint::Tcp { token: Some(token), .. } = &self.endpoint {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| Error::Protocol(e.to_string()))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = collect(response).await?;
        let detail =
            serde_json::from_slice::<ErrorBody>(&bytes).map(|b| b.error).unwrap_or_else(|_| ErrorDetail {
                code: "http_error".to_owned(),
                message: format!("the daemon answered {status}: {}", String::from_utf8_lossy(&bytes).trim()),
                hint: String::new(),
            });
        Err(Error::Api { status, detail })
    }

    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, Error> {
        let response = self.send(method, path, body).await?;
        let bytes = collect(response).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("unexpected response body: {e}")))
    }

    pub(crate) fn json<B: Serialize>(body: &B) -> Result<Option<Vec<u8>>, Error> {
        serde_json::to_vec(body).map(Some).map_err(|e| Error::Protocol(e.to_string()))
    }

    pub async fn status(&self) -> Result<Status, Error> {
        self.call(Method::GET, "/v1/status", None).await
    }

    /// A one-time sign-in link for the dashboard (only for the socket or a
    /// bearer token, never for a dashboard session).
    pub async fn ui_login_code(&self) -> Result<crate::types::LoginCode, Error> {
        self.call(Method::POST, "/v1/ui/login-codes", None).await
    }

    /// The dashboard's sessions.
    pub async fn ui_sessions(&self) -> Result<crate::types::UiSessionList, Error> {
        self.call(Method::GET, "/v1/ui/sessions", None).await
    }

    /// Revokes one dashboard session by its id.
    pub async fn ui_revoke(&self, id: &str) -> Result<(), Error> {
        self.send(Method::DELETE, &format!("/v1/ui/sessions/{}", encode_segment(id)), None).await.map(drop)
    }

    /// Revokes every dashboard session.
    pub async fn ui_revoke_all(&self) -> Result<crate::types::UiRevoked, Error> {
        self.call(Method::DELETE, "/v1/ui/sessions", None).await
    }

    pub async fn kv_list(&self, prefix: &str) -> Result<KvList, Error> {
        self.call(Method::GET, &format!("/v1/kv?{}", query(&[("prefix", prefix)])), None).await
    }

    pub async fn kv_get(&self, key: &str) -> Result<KvEntry, Error> {
        self.call(Method::GET, &format!("/v1/kv/{}", encode_path(key)), None).await
    }

    pub async fn kv_put(&self, key: &str, body: &PutKv) -> Result<WriteResult, Error> {
        self.call(Method::PUT, &format!("/v1/kv/{}", encode_path(key)), Self::json(body)?).await
    }

    pub async fn kv_delete(&self, key: &str) -> Result<DeleteResult, Error> {
        self.call(Method::DELETE, &format!("/v1/kv/{}", encode_path(key)), None).await
    }

    pub async fn hosts(&self) -> Result<crate::types::HostList, Error> {
        self.call(Method::GET, "/v1/hosts", None).await
    }

    pub async fn host(&self, name: &str) -> Result<crate::types::Host, Error> {
        self.call(Method::GET, &format!("/v1/hosts/{}", encode_segment(name)), None).await
    }

    /// Drains a host (`true`) or ends its draining (`false`).
    pub async fn drain_host(&self, name: &str, drain: bool) -> Result<crate::types::Host, Error> {
        let method = if drain { Method::POST } else { Method::DELETE };
        self.call(method, &format!("/v1/hosts/{}/drain", encode_segment(name)), None).await
    }

    pub async fn forget_host(&self, name: &str) -> Result<(), Error> {
        self.send(Method::DELETE, &format!("/v1/hosts/{}", encode_segment(name)), None).await.map(drop)
    }

    pub async fn lease_grant(&self, ttl_secs: u64) -> Result<LeaseInfo, Error> {
        self.call(Method::POST, "/v1/leases", Self::json(&GrantLease { ttl_secs })?).await
    }

    pub async fn leases(&self) -> Result<LeaseList, Error> {
        self.call(Method::GET, "/v1/leases", None).await
    }

    pub async fn events(&self, q: &EventsQuery) -> Result<EventList, Error> {
        let qs = serde_urlencoded::to_string(q).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call(Method::GET, &format!("/v1/events?{qs}"), None).await
    }

    /// Follows `/v1/events` as server-sent events. A stream the daemon ends
    /// at its lifetime (an `end` event) is opened again from the revision
    /// it was complete through, so the changes go on with no gap; the
    /// stream ends when the daemon ends it otherwise (it is stopping), or
    /// after an error it cannot go on from.
    pub async fn follow_events(
        &self,
        since: Option<u64>,
        prefix: Option<&str>,
    ) -> Result<impl Stream<Item = Result<ChangeEvent, Error>> + Send + 'static, Error> {
        let first = self.event_frames(since, prefix).await?;
        let (client, prefix) = (self.clone(), prefix.map(str::to_owned));
        Ok(futures::stream::unfold(Some(first), move |frames| {
            let (client, prefix) = (client.clone(), prefix.clone());
            async move {
                let mut frames = frames?;
                loop {
                    match frames.next().await? {
                        Followed::Change(change) => return Some((Ok(change), Some(frames))),
                        Followed::Failed(error) => return Some((Err(error), Some(frames))),
                        Followed::End(through) => {
                            match client.event_frames(Some(through + 1), prefix.as_deref()).await {
                                Ok(next) => frames = next,
                                Err(error) => return Some((Err(error), None)),
                            }
                        }
                    }
                }
            }
        }))
    }

    /// One connection's worth of `/v1/events?follow=true`.
    async fn event_frames(
        &self,
        since: Option<u64>,
        prefix: Option<&str>,
    ) -> Result<futures::stream::BoxStream<'static, Followed>, Error> {
        let q = EventsQuery { follow: Some(true), since, prefix: prefix.map(str::to_owned), limit: None };
        let qs = serde_urlencoded::to_string(&q).map_err(|e| Error::Protocol(e.to_string()))?;
        let response = self.send(Method::GET, &format!("/v1/events?{qs}"), None).await?;
        Ok(sse_messages(response.into_body().into_data_stream())
            .filter_map(|message| async move {
                match message {
                    Err(e) => Some(Followed::Failed(e)),
                    Ok(m) if m.event == "error" => Some(Followed::Failed(
                        serde_json::from_str::<ErrorBody>(&m.data)
                            .map(|b| Error::Api { status: StatusCode::OK, detail: b.error })
                            .unwrap_or_else(|_| Error::Protocol(m.data)),
                    )),
                    Ok(m) if m.event == "end" => Some(match m.id.as_deref().map(str::parse::<u64>) {
                        Some(Ok(through)) => Followed::End(through),
                        _ => Followed::Failed(Error::Protocol(format!(
                            "an `end` event without a revision to resume from: {:?}",
                            m.id
                        ))),
                    }),
                    Ok(m) if m.data.is_empty() => None,
                    Ok(m) => Some(match serde_json::from_str(&m.data) {
                        Ok(change) => Followed::Change(change),
                        Err(e) => Followed::Failed(Error::Protocol(e.to_string())),
                    }),
                }
            })
            .boxed())
    }
}

/// What one connection of an event stream says.
enum Followed {
    Change(ChangeEvent),
    Failed(Error),
    /// The stream reached its lifetime, complete through this revision.
    End(u64),
}

/// What a long operation (image pull or build) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LongEvent<T> {
    /// How far it is.
    Progress(Progress),
    /// It finished with this result.
    Done(T),
}

/// A WebSocket to the daemon (exec sessions).
pub type WebSocket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

impl Client {
    pub async fn machines(&self) -> Result<MachineList, Error> {
        self.call(Method::GET, "/v1/machines", None).await
    }

    pub async fn machine(&self, name: &str) -> Result<Machine, Error> {
        self.call(Method::GET, &format!("/v1/machines/{}", encode_path(name)), None).await
    }

    pub async fn create_machine(&self, body: &CreateMachine) -> Result<Machine, Error> {
        self.call(Method::POST, "/v1/machines", Self::json(body)?).await
    }

    pub async fn start_machine(&self, name: &str) -> Result<Machine, Error> {
        self.call(Method::POST, &format!("/v1/machines/{}/start", encode_path(name)), None).await
    }

    pub async fn stop_machine(&self, name: &str) -> Result<Machine, Error> {
        self.call(Method::POST, &format!("/v1/machines/{}/stop", encode_path(name)), None).await
    }

    /// Asks a running machine to sleep; its state becomes `sleeping` once saved.
    pub async fn sleep_machine(&self, name: &str) -> Result<Machine, Error> {
        self.call(Method::POST, &format!("/v1/machines/{}/sleep", encode_path(name)), None).await
    }

    /// Wakes a sleeping machine; answers once it runs.
    pub async fn wake_machine(&self, name: &str) -> Result<Machine, Error> {
        self.call(Method::POST, &format!("/v1/machines/{}/wake", encode_path(name)), None).await
    }

    pub async fn remove_machine(&self, name: &str, force: bool) -> Result<(), Error> {
        let path = format!("/v1/machines/{}?force={force}", encode_path(name));
        self.send(Method::DELETE, &path, None).await.map(drop)
    }

    /// The console log; with `follow`, a stream that grows with it.
    pub async fn machine_logs(
        &self,
        name: &str,
        follow: bool,
        tail: Option<usize>,
        source: crate::types::LogSource,
    ) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'static, Error> {
        let mut path = format!("/v1/machines/{}/logs?follow={follow}&source={source}", encode_path(name));
        if let Some(tail) = tail {
            path.push_str(&format!("&tail={tail}"));
        }
        let response = self.send(Method::GET, &path, None).await?;
        Ok(response.into_body().into_data_stream().map(|r| r.map_err(|e| Error::Protocol(e.to_string()))))
    }

    /// Opens an exec WebSocket; the caller sends the `ExecStart` first.
    pub async fn exec_socket(&self, name: &str) -> Result<WebSocket, Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        // A plain GET first turns "not running" into a proper API error
        // instead of a failed WebSocket handshake.
        self.machine(name).await?;
        let io = self.connect().await?;
        let mut request = format!("ws://localhost/v1/machines/{}/exec", encode_path(name))
            .into_client_request()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if let Endpoint::Tcp { token: Some(token), authority } = &self.endpoint {
            let headers = request.headers_mut();
            if let Ok(value) = format!("Bearer {token}").parse() {
                headers.insert(header::AUTHORIZATION, value);
            }
            if let Ok(value) = authority.parse() {
                headers.insert(header::HOST, value);
            }
        }
        match tokio_tungstenite::client_async(request, io).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response.body().clone().unwrap_or_default();
                Err(serde_json::from_slice::<ErrorBody>(&body)
                    .map(|b| Error::Api { status, detail: b.error })
                    .unwrap_or_else(|_| {
                        Error::Protocol(format!("the daemon refused the exec session: {status}"))
                    }))
            }
            Err(e) => Err(Error::Protocol(e.to_string())),
        }
    }

    /// Uploads `size` bytes from `source` to `path` in the machine,
    /// streaming; the daemon refuses more than [`MAX_FILE_BYTES`].
    pub async fn put_file(
        &self,
        name: &str,
        path: &str,
        mode: u32,
        source: impl tokio::io::AsyncRead + Send + Unpin + 'static,
        size: u64,
    ) -> Result<(), Error> {
        use tokio::io::AsyncReadExt;
        let q = query(&[("path", path), ("mode", &format!("{mode:o}"))]);
        let target = format!("/v1/machines/{}/files?{q}", encode_path(name));
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(Method::PUT)
            .uri(target)
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size);
        if let Endpoint::Tcp { token: Some(token), .. } = &self.endpoint {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        // Streamed in 256 KiB chunks: the file is never all in memory.
        let chunks = futures::stream::unfold(source, |mut source| async move {
            let mut buf = vec![0u8; 256 << 10];
            match source.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), source))
                }
                Err(e) => Some((Err(e), source)),
            }
        });
        let body = http_body_util::StreamBody::new(chunks);
        let request = builder.body(body).map_err(|e| Error::Protocol(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| Error::Protocol(e.to_string()))?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        let bytes = collect(response).await?;
        Err(serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| Error::Api { status, detail: b.error })
            .unwrap_or_else(|_| Error::Protocol(format!("the daemon answered {status}"))))
    }

    /// Downloads a file from the machine into `destination`, streaming:
    /// answers its size and its mode (permission bits, never set-ID or
    /// sticky ones). Refuses more than [`MAX_FILE_BYTES`].
    pub async fn get_file(
        &self,
        name: &str,
        path: &str,
        destination: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<(u64, u32), Error> {
        use tokio::io::AsyncWriteExt;
        let q = query(&[("path", path)]);
        let response =
            self.send(Method::GET, &format!("/v1/machines/{}/files?{q}", encode_path(name)), None).await?;
        let mode = response
            .headers()
            .get(MODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .unwrap_or(0o644)
            & 0o777;
        let mut body = response.into_body();
        let mut size = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Protocol(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            size += data.len() as u64;
            if size > MAX_FILE_BYTES {
                return Err(Error::Protocol(format!(
                    "the daemon sent more than {} MiB for {path}, the limit for one copy",
                    MAX_FILE_BYTES >> 20
                )));
            }
            destination.write_all(&data).await.map_err(Error::Local)?;
        }
        destination.flush().await.map_err(Error::Local)?;
        Ok((size, mode))
    }

    pub async fn snapshot_machine(&self, machine: &str, snapshot: &str) -> Result<Snapshot, Error> {
        let body = Self::json(&TakeSnapshot { name: snapshot.to_owned() })?;
        self.call(Method::POST, &format!("/v1/machines/{}/snapshot", encode_path(machine)), body).await
    }

    pub async fn snapshots(&self) -> Result<SnapshotList, Error> {
        self.call(Method::GET, "/v1/snapshots", None).await
    }

    pub async fn restore_snapshot(&self, snapshot: &str, name: Option<String>) -> Result<Machine, Error> {
        let body = Self::json(&RestoreSnapshot { name })?;
        self.call(Method::POST, &format!("/v1/snapshots/{}/restore", encode_path(snapshot)), body).await
    }

    pub async fn remove_snapshot(&self, snapshot: &str) -> Result<(), Error> {
        self.send(Method::DELETE, &format!("/v1/snapshots/{}", encode_path(snapshot)), None).await.map(drop)
    }

    pub async fn networks(&self) -> Result<NetworkList, Error> {
        self.call(Method::GET, "/v1/networks", None).await
    }

    pub async fn network(&self, name: &str) -> Result<Network, Error> {
        self.call(Method::GET, &format!("/v1/networks/{}", encode_path(name)), None).await
    }

    pub async fn create_network(&self, body: &CreateNetwork) -> Result<Network, Error> {
        self.call(Method::POST, "/v1/networks", Self::json(body)?).await
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), Error> {
        self.send(Method::DELETE, &format!("/v1/networks/{}", encode_path(name)), None).await.map(drop)
    }

    pub async fn services(&self) -> Result<crate::types::ServiceList, Error> {
        self.call(Method::GET, "/v1/services", None).await
    }

    /// A service with every instance, passing or not.
    pub async fn service(&self, name: &str) -> Result<crate::types::ServiceDetail, Error> {
        self.call(Method::GET, &format!("/v1/services/{}", encode_path(name)), None).await
    }

    pub async fn create_service(
        &self,
        body: &crate::types::CreateService,
    ) -> Result<crate::types::Service, Error> {
        self.call(Method::POST, "/v1/services", Self::json(body)?).await
    }

    pub async fn scale_service(&self, name: &str, count: u32) -> Result<crate::types::Service, Error> {
        let body = crate::types::ScaleService { count };
        self.call(Method::PUT, &format!("/v1/services/{}/count", encode_path(name)), Self::json(&body)?).await
    }

    /// Starts a rolling update.
    pub async fn deploy_service(
        &self,
        name: &str,
        body: &crate::types::DeployService,
    ) -> Result<crate::types::Service, Error> {
        self.call(Method::POST, &format!("/v1/services/{}/deploy", encode_path(name)), Self::json(body)?)
            .await
    }

    pub async fn remove_service(&self, name: &str) -> Result<(), Error> {
        self.send(Method::DELETE, &format!("/v1/services/{}", encode_path(name)), None).await.map(drop)
    }

    /// The passing instances; with `index`, waits up to `wait` for a change after it.
    pub async fn service_endpoints(
        &self,
        name: &str,
        q: &crate::types::EndpointsQuery,
    ) -> Result<crate::types::Endpoints, Error> {
        let qs = serde_urlencoded::to_string(q).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call(Method::GET, &format!("/v1/services/{}/endpoints?{qs}", encode_path(name)), None).await
    }

    pub async fn register_instance(
        &self,
        service: &str,
        body: &crate::types::RegisterInstance,
    ) -> Result<crate::types::ServiceInstance, Error> {
        self.call(
            Method::POST,
            &format!("/v1/services/{}/instances", encode_path(service)),
            Self::json(body)?,
        )
        .await
    }

    pub async fn heartbeat(
        &self,
        service: &str,
        id: &str,
        body: &crate::types::Heartbeat,
    ) -> Result<(), Error> {
        let path = format!("/v1/services/{}/instances/{}/heartbeat", encode_path(service), encode_path(id));
        self.send(Method::PUT, &path, Self::json(body)?).await.map(drop)
    }

    pub async fn deregister_instance(&self, service: &str, id: &str) -> Result<(), Error> {
        let path = format!("/v1/services/{}/instances/{}", encode_path(service), encode_path(id));
        self.send(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn service_history(&self, name: &str) -> Result<crate::types::ServiceHistory, Error> {
        self.call(Method::GET, &format!("/v1/services/{}/history", encode_path(name)), None).await
    }

    pub async fn faults(&self) -> Result<FaultList, Error> {
        self.call(Method::GET, "/v1/faults", None).await
    }

    pub async fn create_fault(&self, body: &CreateFault) -> Result<Fault, Error> {
        self.call(Method::POST, "/v1/faults", Self::json(body)?).await
    }

    /// Heals one fault, or all of them.
    pub async fn heal_faults(&self, id: Option<&str>) -> Result<Healed, Error> {
        match id {
            Some(id) => self.call(Method::DELETE, &format!("/v1/faults/{}", encode_path(id)), None).await,
            None => self.call(Method::DELETE, "/v1/faults", None).await,
        }
    }

    pub async fn apps(&self) -> Result<crate::types::AppList, Error> {
        self.call(Method::GET, "/v1/apps", None).await
    }

    pub async fn app(&self, name: &str) -> Result<crate::types::AppDetail, Error> {
        self.call(Method::GET, &format!("/v1/apps/{}", encode_path(name)), None).await
    }

    pub async fn deploy_app(
        &self,
        name: &str,
        body: &crate::types::DeployApp,
    ) -> Result<crate::types::DeployResult, Error> {
        self.call(Method::PUT, &format!("/v1/apps/{}", encode_path(name)), Self::json(body)?).await
    }

    /// Builds a handler from source into the app's next version.
    pub async fn deploy_source(
        &self,
        name: &str,
        body: &crate::types::DeploySource,
    ) -> Result<crate::types::DeployResult, Error> {
        self.call(Method::PUT, &format!("/v1/apps/{}/source", encode_path(name)), Self::json(body)?).await
    }

    /// The source a version was built from (the serving one's by default).
    pub async fn app_source(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<crate::types::AppSource, Error> {
        let mut path = format!("/v1/apps/{}/source", encode_path(name));
        if let Some(version) = version {
            path.push_str(&format!("?version={version}"));
        }
        self.call(Method::GET, &path, None).await
    }

    pub async fn rollback_app(&self, name: &str, to: Option<u32>) -> Result<crate::types::AppVersion, Error> {
        let body = Self::json(&crate::types::Rollback { to })?;
        self.call(Method::POST, &format!("/v1/apps/{}/rollback", encode_path(name)), body).await
    }

    pub async fn remove_app(&self, name: &str) -> Result<(), Error> {
        self.send(Method::DELETE, &format!("/v1/apps/{}", encode_path(name)), None).await.map(drop)
    }

    pub async fn set_app_secret(&self, name: &str, secret: &str, value: String) -> Result<(), Error> {
        let body = Self::json(&crate::types::SetSecret { value })?;
        let path = format!("/v1/apps/{}/secrets/{}", encode_path(name), encode_path(secret));
        self.send(Method::PUT, &path, body).await.map(drop)
    }

    pub async fn app_logs(&self, name: &str, tail: Option<usize>) -> Result<crate::types::AppLogs, Error> {
        let mut path = format!("/v1/apps/{}/logs", encode_path(name));
        if let Some(tail) = tail {
            path.push_str(&format!("?tail={tail}"));
        }
        self.call(Method::GET, &path, None).await
    }

    /// Follows an app's log as it is written.
    pub async fn follow_app_logs(
        &self,
        name: &str,
        tail: Option<usize>,
    ) -> Result<impl Stream<Item = Result<crate::types::AppLogLine, Error>> + Send + 'static, Error> {
        let mut path = format!("/v1/apps/{}/logs?follow=true", encode_path(name));
        if let Some(tail) = tail {
            path.push_str(&format!("&tail={tail}"));
        }
        let response = self.send(Method::GET, &path, None).await?;
        Ok(sse_messages(response.into_body().into_data_stream()).filter_map(|m| async move {
            match m {
                Ok(m) if m.event == "log" => {
                    Some(serde_json::from_str(&m.data).map_err(|e| Error::Protocol(e.to_string())))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        }))
    }

    /// The triggers of an app (`target` = `apps`) or a workflow (`workflows`).
    pub async fn triggers(&self, target: &str, name: &str) -> Result<crate::types::TriggerList, Error> {
        self.call(Method::GET, &format!("/v1/{target}/{}/triggers", encode_path(name)), None).await
    }

    pub async fn add_trigger(
        &self,
        target: &str,
        name: &str,
        body: &crate::types::TriggerBody,
    ) -> Result<crate::types::TriggerInfo, Error> {
        let path = format!("/v1/{target}/{}/triggers", encode_path(name));
        self.call(Method::POST, &path, Self::json(body)?).await
    }

    pub async fn remove_trigger(&self, target: &str, name: &str, id: &str) -> Result<(), Error> {
        let path = format!("/v1/{target}/{}/triggers/{}", encode_path(name), encode_path(id));
        self.send(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn workflows(&self) -> Result<crate::types::WorkflowList, Error> {
        self.call(Method::GET, "/v1/workflows", None).await
    }

    pub async fn workflow(&self, name: &str) -> Result<crate::types::WorkflowSummary, Error> {
        self.call(Method::GET, &format!("/v1/workflows/{}", encode_path(name)), None).await
    }

    pub async fn deploy_workflow(
        &self,
        name: &str,
        body: &crate::types::DeployWorkflow,
    ) -> Result<crate::types::WorkflowDeployed, Error> {
        self.call(Method::PUT, &format!("/v1/workflows/{}", encode_path(name)), Self::json(body)?).await
    }

    pub async fn remove_workflow(&self, name: &str) -> Result<(), Error> {
        self.send(Method::DELETE, &format!("/v1/workflows/{}", encode_path(name)), None).await.map(drop)
    }

    pub async fn start_run(
        &self,
        workflow: &str,
        body: &crate::types::StartRun,
    ) -> Result<crate::types::RunStarted, Error> {
        let path = format!("/v1/workflows/{}/runs", encode_path(workflow));
        self.call(Method::POST, &path, Self::json(body)?).await
    }

    pub async fn runs(&self, q: &crate::types::RunsQuery) -> Result<crate::types::RunList, Error> {
        let qs = serde_urlencoded::to_string(q).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call(Method::GET, &format!("/v1/runs?{qs}"), None).await
    }

    pub async fn run_detail(&self, id: &str) -> Result<crate::types::RunDetail, Error> {
        self.call(Method::GET, &format!("/v1/runs/{}", encode_path(id)), None).await
    }

    pub async fn signal_run(&self, id: &str, body: &crate::types::SendSignal) -> Result<(), Error> {
        let path = format!("/v1/runs/{}/signals", encode_path(id));
        self.send(Method::POST, &path, Self::json(body)?).await.map(drop)
    }

    pub async fn cancel_run(&self, id: &str) -> Result<crate::types::RunSummary, Error> {
        self.call(Method::POST, &format!("/v1/runs/{}/cancel", encode_path(id)), None).await
    }

    pub async fn migrate_run(&self, id: &str, version: u32) -> Result<crate::types::RunSummary, Error> {
        let body = Self::json(&crate::types::MigrateRun { version })?;
        self.call(Method::POST, &format!("/v1/runs/{}/migrate", encode_path(id)), body).await
    }

    /// The run once it has ended, or as it is after `timeout_ms`.
    pub async fn run_result(&self, id: &str, timeout_ms: u64) -> Result<crate::types::RunSummary, Error> {
        self.call(Method::GET, &format!("/v1/runs/{}/result?timeout_ms={timeout_ms}", encode_path(id)), None)
            .await
    }

    pub async fn run_logs(&self, id: &str) -> Result<crate::types::RunLogs, Error> {
        self.call(Method::GET, &format!("/v1/runs/{}/logs", encode_path(id)), None).await
    }

    pub async fn images(&self) -> Result<ImageList, Error> {
        self.call(Method::GET, "/v1/images", None).await
    }

    pub async fn image(&self, name: &str) -> Result<ImageInfo, Error> {
        self.call(Method::GET, &format!("/v1/images/{}", encode_path(name)), None).await
    }

    pub async fn remove_image(&self, name: &str) -> Result<(), Error> {
        self.send(Method::DELETE, &format!("/v1/images/{}", encode_path(name)), None).await.map(drop)
    }

    pub async fn pull_image(
        &self,
        body: &PullImage,
    ) -> Result<impl Stream<Item = Result<LongEvent<ImageInfo>, Error>> + Send + 'static, Error> {
        self.long_operation("/v1/images/pull", Self::json(body)?).await
    }

    pub async fn build_image(
        &self,
        body: &BuildImage,
    ) -> Result<impl Stream<Item = Result<LongEvent<ImageInfo>, Error>> + Send + 'static, Error> {
        self.long_operation("/v1/images/build", Self::json(body)?).await
    }

    async fn long_operation<T: DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<impl Stream<Item = Result<LongEvent<T>, Error>> + Send + 'static, Error> {
        let response = self.send(Method::POST, path, body).await?;
        Ok(sse_messages(response.into_body().into_data_stream()).filter_map(|message| async move {
            let m = match message {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            let parsed = match m.event.as_str() {
                "progress" => serde_json::from_str(&m.data).map(LongEvent::Progress),
                "done" => serde_json::from_str(&m.data).map(LongEvent::Done),
                "error" => {
                    return Some(Err(serde_json::from_str::<ErrorBody>(&m.data)
                        .map(|b| Error::Api { status: StatusCode::OK, detail: b.error })
                        .unwrap_or_else(|_| Error::Protocol(m.data))));
                }
                _ => return None,
            };
            Some(parsed.map_err(|e| Error::Protocol(e.to_string())))
        }))
    }
}

/// The labs endpoints.
impl Client {
    /// A scope's merged config (`scope`: `global`, `app:NAME`, ...).
    pub async fn config(&self, scope: &str, prefix: &str) -> Result<crate::types::ConfigView, Error> {
        self.call(
            Method::GET,
            &format!("/v1/config?{}", query(&[("scope", scope), ("prefix", prefix)])),
            None,
        )
        .await
    }

    /// The leaves of one layer (or all), under a prefix.
    pub async fn config_entries(
        &self,
        layer: Option<&str>,
        prefix: &str,
    ) -> Result<crate::types::ConfigEntryList, Error> {
        let mut pairs = vec![("prefix", prefix)];
        if let Some(layer) = layer {
            pairs.push(("layer", layer));
        }
        self.call(Method::GET, &format!("/v1/config/entries?{}", query(&pairs)), None).await
    }

    pub async fn set_config(
        &self,
        key: &str,
        layer: &str,
        body: &crate::types::SetConfig,
    ) -> Result<crate::types::ConfigWritten, Error> {
        let path = format!("/v1/config/entries/{}?{}", encode_segment(key), query(&[("layer", layer)]));
        self.call(Method::PUT, &path, Self::json(body)?).await
    }

    pub async fn remove_config(&self, key: &str, layer: &str) -> Result<crate::types::ConfigWritten, Error> {
        let path = format!("/v1/config/entries/{}?{}", encode_segment(key), query(&[("layer", layer)]));
        self.call(Method::DELETE, &path, None).await
    }

    pub async fn import_config(
        &self,
        body: &crate::types::ImportConfig,
    ) -> Result<crate::types::ConfigWritten, Error> {
        self.call(Method::PUT, "/v1/config/files", Self::json(body)?).await
    }

    pub async fn config_history(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<crate::types::ConfigHistory, Error> {
        let limit = limit.to_string();
        self.call(
            Method::GET,
            &format!("/v1/config/history?{}", query(&[("prefix", prefix), ("limit", &limit)])),
            None,
        )
        .await
    }

    pub async fn config_diff(&self, from: u64, to: Option<u64>) -> Result<crate::types::ConfigDiff, Error> {
        let q = crate::types::ConfigDiffQuery { from, to };
        let qs = serde_urlencoded::to_string(&q).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call(Method::GET, &format!("/v1/config/diff?{qs}"), None).await
    }

    pub async fn rollback_config(
        &self,
        body: &crate::types::RollbackConfig,
    ) -> Result<crate::types::ConfigWritten, Error> {
        self.call(Method::POST, "/v1/config/rollback", Self::json(body)?).await
    }

    pub async fn config_schemas(&self) -> Result<crate::types::ConfigSchemaList, Error> {
        self.call(Method::GET, "/v1/config/schemas", None).await
    }

    pub async fn set_config_schema(
        &self,
        body: &crate::types::ConfigSchema,
    ) -> Result<crate::types::ConfigWritten, Error> {
        self.call(Method::PUT, "/v1/config/schemas", Self::json(body)?).await
    }

    pub async fn remove_config_schema(&self, prefix: &str) -> Result<crate::types::ConfigWritten, Error> {
        self.call(Method::DELETE, &format!("/v1/config/schemas?{}", query(&[("prefix", prefix)])), None).await
    }

    pub async fn config_key(&self) -> Result<crate::types::ConfigKey, Error> {
        self.call(Method::GET, "/v1/config/key", None).await
    }

    pub async fn rekey_config(&self, forget: bool) -> Result<crate::types::Rekeyed, Error> {
        self.call(Method::POST, "/v1/config/rekey", Self::json(&crate::types::Rekey { forget })?).await
    }

    /// Follows config changes under `prefix` from `since` (the next change
    /// when `None`): each SSE message as it comes (`set`, `removed`,
    /// `reset`, `end`, `error`).
    pub async fn watch_config(
        &self,
        prefix: &str,
        since: Option<u64>,
    ) -> Result<impl Stream<Item = Result<SseMessage, Error>> + Send + 'static, Error> {
        let q = crate::types::ConfigWatchQuery { prefix: Some(prefix.to_owned()), since };
        let qs = serde_urlencoded::to_string(&q).map_err(|e| Error::Protocol(e.to_string()))?;
        let response = self.send(Method::GET, &format!("/v1/config/watch?{qs}"), None).await?;
        Ok(sse_messages(response.into_body().into_data_stream()))
    }

    pub async fn labs(&self) -> Result<LabList, Error> {
        self.call(Method::GET, "/v1/labs", None).await
    }

    pub async fn lab(&self, name: &str) -> Result<Lab, Error> {
        self.call(Method::GET, &format!("/v1/labs/{}", encode_segment(name)), None).await
    }

    pub async fn put_lab(&self, body: &PutLab) -> Result<Lab, Error> {
        self.call(Method::PUT, &format!("/v1/labs/{}", encode_segment(&body.name)), Self::json(body)?).await
    }

    /// Forgets a lab; with `down`, removes its machines and networks first.
    pub async fn remove_lab(&self, name: &str, down: bool) -> Result<LabDown, Error> {
        self.call(Method::DELETE, &format!("/v1/labs/{}?down={down}", encode_segment(name)), None).await
    }
}

/// The metrics endpoints: hearth's own time series.
impl Client {
    /// The metric names there are, with their series counts.
    pub async fn metrics(&self) -> Result<crate::types::MetricList, Error> {
        self.call(Method::GET, "/v1/metrics", None).await
    }

    /// The series of a metric over a span (each `match` repeated).
    pub async fn query_metric(
        &self,
        query: &crate::types::MetricQuery,
    ) -> Result<crate::types::MetricQueryResult, Error> {
        let mut pairs = vec![("name", query.name.as_str())];
        for (key, value) in [("since", &query.since), ("until", &query.until), ("step", &query.step)] {
            if let Some(value) = value {
                pairs.push((key, value.as_str()));
            }
        }
        pairs.extend(query.matchers.iter().map(|m| ("match", m.as_str())));
        self.call(Method::GET, &format!("/v1/metrics/query?{}", self::query(&pairs)), None).await
    }
}

async fn collect(response: Response<Incoming>) -> Result<Bytes, Error> {
    response.into_body().collect().await.map(|c| c.to_bytes()).map_err(|e| Error::Protocol(e.to_string()))
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event` field; `message` when there was none.
    pub event: String,
    /// The `id` field, if any.
    pub id: Option<String>,
    /// The `data` lines, joined by newlines.
    pub data: String,
}

/// Splits a byte stream into server-sent events (the `text/event-stream`
/// framing: fields per line, a blank line ends an event, `:` lines are
/// comments).
pub fn sse_messages<S, E>(bytes: S) -> impl Stream<Item = Result<SseMessage, Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let state = (Box::pin(bytes), Vec::<u8>::new(), SseMessage::default(), false);
    futures::stream::unfold(state, |(mut bytes, mut buf, mut current, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if current.event.is_empty() && current.data.is_empty() && current.id.is_none() {
                        continue;
                    }
                    let mut message = std::mem::take(&mut current);
                    if message.event.is_empty() {
                        message.event = "message".to_owned();
                    }
                    return Some((Ok(message), (bytes, buf, current, false)));
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => current.event = value.to_owned(),
                    "id" => current.id = Some(value.to_owned()),
                    "data" => {
                        if !current.data.is_empty() {
                            current.data.push('\n');
                        }
                        current.data.push_str(value);
                    }
                    _ => {}
                }
                continue;
            }
            match bytes.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Some((Err(Error::Protocol(e.to_string())), (bytes, buf, current, true)));
                }
                None => return None,
            }
        }
    })
}

pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// Percent-encodes a key for use in a path, keeping `/` as a separator.
fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-encodes a name for one path segment (`/` too).
pub(crate) fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_but_keep_slashes() {
        assert_eq!(encode_path("a/b c?d#é"), "a/b%20c%3Fd%23%C3%A9");
    }

    #[test]
    fn names_are_encoded_for_paths() {
        assert_eq!(encode_segment("etcd"), "etcd");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn tcp_endpoints_parse_or_explain() {
        assert!(
            matches!(Endpoint::tcp("http://127.0.0.1:7070", None), Ok(Endpoint::Tcp { authority, .. }) if authority == "127.0.0.1:7070")
        );
        assert!(
            matches!(Endpoint::tcp("http://localhost", None), Ok(Endpoint::Tcp { authority, .. }) if authority == "localhost:80")
        );
        assert!(matches!(Endpoint::tcp("https://x:1", None), Err(Error::BadUrl(_))));
        assert!(matches!(Endpoint::tcp("not a url", None), Err(Error::BadUrl(_))));
    }

    #[tokio::test]
    async fn sse_frames_split_across_chunks_are_reassembled() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b": keep-alive\n\nid: 7\nevent: pu")),
            Ok(Bytes::from_static(b"t\ndata: {\"a\":\n")),
            Ok(Bytes::from_static(b"data: 1}\n\nevent: delete\r\ndata: x\r\n\r\n")),
        ];
        let messages: Vec<_> = sse_messages(futures::stream::iter(chunks)).collect().await;
        let messages: Vec<SseMessage> = messages.into_iter().map(|m| m.expect("ok")).collect();
        assert_eq!(
            messages,
            vec![
                SseMessage { event: "put".into(), id: Some("7".into()), data: "{\"a\":\n1}".into() },
                SseMessage { event: "delete".into(), id: None, data: "x".into() },
            ]
        );
    }
}
