//! The Restate peer of `hearth bench workflows`.
//!
//! Starts `restate-server` (from npm: `make bench-workflows-peer` installs
//! `@restatedev/restate-server` under target/restate) on a temporary base
//! directory with its three ports (ingress, admin, node-to-node) on free
//! loopback ports and its default configuration otherwise, so fsync stays
//! on; starts the Restate SDK endpoint of bench/restate-peer and registers
//! it; then measures through Restate's HTTP ingress:
//!
//! - `ThreeSteps`: workflows whose three steps each are a `ctx.run` that
//!   POSTs to the caller's step server, `concurrency` clients at a time,
//!   each request (`POST /ThreeSteps/{key}/run`) waiting for the result;
//! - `Resume`: a workflow awaiting the durable promise `go`; once its
//!   journal holds the promise wait, the time from `POST /Resume/{key}/go`
//!   until `GET /restate/workflow/Resume/{key}/attach` answers the value.
//!
//! Both processes are killed on every path: explicitly when done or on an
//! error, and by `kill_on_drop` if the future is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{millis, percentile};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;

/// What the Restate peer measured.
#[derive(Debug, Clone)]
pub(crate) struct PeerFigures {
    pub(crate) workflows_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) resume_p50_ms: f64,
    pub(crate) resume_p99_ms: f64,
    /// Which Restate and SDK ran, and how.
    pub(crate) detail: String,
}

/// Where `make bench-workflows-peer` installs the npm package.
const NPM_PREFIX: &str = "target/restate";
/// Where `make bench-workflows-peer` builds the peer.
const PEER_BINARY: &str = "bench/restate-peer/target/release/restate-peer";
/// Longest wait for a process to answer, or for the new deployment to serve.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for one request to Restate.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// Starts restate-server and the peer, measures, stops both. Ok(None) with a
/// printed reason (on stderr) if Restate is not installed.
pub(crate) async fn measure(
    step_url: &str,
    runs: usize,
    concurrency: usize,
    resumes: usize,
) -> anyhow::Result<Option<PeerFigures>> {
    let Some(server) = find_restate_server() else {
        eprintln!(
            "Restate peer skipped: no restate-server under {NPM_PREFIX}/node_modules, \
             $HEARTH_RESTATE_SERVER or PATH (make bench-workflows-peer installs it)"
        );
        return Ok(None);
    };
    let Some(peer) = find_peer() else {
        eprintln!("Restate peer skipped: {PEER_BINARY} is not built (make bench-workflows-peer builds it)");
        return Ok(None);
    };
    let dir = tempfile::Builder::new().prefix("hearth-bench-restate-").tempdir()?;
    let mut procs = Processes::start(&server, &peer, dir.path()).await?;
    let result = procs.measure(step_url, runs.max(1), concurrency.max(1), resumes).await;
    procs.stop().await;
    let figures = result.map_err(|e| {
        let log = std::fs::read_to_string(dir.path().join("restate.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        e.context(format!(
            "the Restate peer failed; the end of restate-server's log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    })?;
    Ok(Some(figures))
}

fn find_restate_server() -> Option<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    // The platform package's binary itself, rather than the node wrapper in
    // node_modules/.bin, so that killing the child kills the server.
    let platform =
        format!("node_modules/@restatedev/restate-server-{}-{arch}/bin/restate-server", std::env::consts::OS);
    let mut candidates: Vec<PathBuf> = Vec::new();
    candidates.extend(std::env::var_os("HEARTH_RESTATE_SERVER").map(PathBuf::from));
    for root in roots() {
        candidates.push(root.join(NPM_PREFIX).join(&platform));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|dir| dir.join("restate-server")));
    }
    candidates.into_iter().find(|path| path.is_file())
}

fn find_peer() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    candidates.extend(std::env::var_os("HEARTH_RESTATE_PEER").map(PathBuf::from));
    candidates.extend(roots().into_iter().map(|root| root.join(PEER_BINARY)));
    candidates.into_iter().find(|path| path.is_file())
}

/// The current directory, then the source tree this binary was built from.
fn roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(".")];
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    roots
}

/// A free loopback port (free when asked; nothing else should take it in the
/// moment before the child binds it).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

struct Processes {
    server: tokio::process::Child,
    peer: tokio::process::Child,
    ingress: SocketAddr,
    admin: SocketAddr,
    peer_addr: SocketAddr,
}

impl Processes {
    async fn start(server_bin: &Path, peer_bin: &Path, dir: &Path) -> anyhow::Result<Processes> {
        let (ingress, admin, fabric, peer_addr) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let log = std::fs::File::create(dir.join("restate.log"))?;
        let server = tokio::process::Command::new(server_bin)
            .arg("--base-dir")
            .arg(dir.join("restate-data"))
            .args(["--no-logo", "--node-name", "bench", "--listen-mode", "tcp"])
            .env("RESTATE_INGRESS__BIND_ADDRESS", ingress.to_string())
            .env("RESTATE_ADMIN__BIND_ADDRESS", admin.to_string())
            .env("RESTATE_BIND_ADDRESS", fabric.to_string())
            .env("RESTATE_ADVERTISED_ADDRESS", format!("http://{fabric}/"))
            .env("RESTATE_LOG_FORMAT", "compact")
            .env("RESTATE_LOG_DISABLE_ANSI_CODES", "true")
            .env_remove("RESTATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", server_bin.display()))?;
        let peer_log = std::fs::File::create(dir.join("peer.log"))?;
        let peer = tokio::process::Command::new(peer_bin)
            .args(["--port", &peer_addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(peer_log.try_clone()?)
            .stderr(peer_log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", peer_bin.display()))?;
        Ok(Processes { server, peer, ingress, admin, peer_addr })
    }

    async fn stop(&mut self) {
        for child in [&mut self.server, &mut self.peer] {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    async fn measure(
        &mut self,
        step_url: &str,
        runs: usize,
        concurrency: usize,
        resumes: usize,
    ) -> anyhow::Result<PeerFigures> {
        let version = self.wait_ready().await?;
        let sdk = self.register().await?;
        let step_url = step_url.trim_end_matches('/').to_owned();

        // Warm-up, also until the new deployment's services are routable.
        let started = Instant::now();
        let mut ingress = Conn::new(self.ingress);
        loop {
            let key = format!("warm-{}", started.elapsed().as_micros());
            match run_three_steps(&mut ingress, &step_url, &key).await {
                Ok(()) => break,
                Err(e) if started.elapsed() > READY_LIMIT => {
                    return Err(e.context("ThreeSteps never succeeded after registration"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }

        // ThreeSteps: `concurrency` clients take keys until `runs` are done.
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..concurrency.min(runs) {
            let (next, step_url, addr) = (next.clone(), step_url.clone(), self.ingress);
            clients.spawn(async move {
                let mut conn = Conn::new(addr);
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= runs {
                        return anyhow::Ok(latencies);
                    }
                    let t = Instant::now();
                    run_three_steps(&mut conn, &step_url, &format!("wf-{i}")).await?;
                    latencies.push(millis(t.elapsed()));
                }
            });
        }
        let mut latencies = Vec::with_capacity(runs);
        while let Some(joined) = clients.join_next().await {
            latencies.extend(joined??);
        }
        let elapsed = started.elapsed();
        latencies.sort_by(f64::total_cmp);

        // Resume, one at a time.
        let mut admin = Conn::new(self.admin);
        let mut resume = Vec::with_capacity(resumes);
        for i in 0..resumes {
            let key = format!("resume-{i}");
            let (status, body) =
                ingress.request(Method::POST, &format!("/Resume/{key}/run/send"), Some("\"\"")).await?;
            if !status.is_success() {
                bail!("POST /Resume/{key}/run/send: {status} {}", String::from_utf8_lossy(&body));
            }
            let accepted: serde_json::Value = serde_json::from_slice(&body)?;
            let id = accepted["invocationId"]
                .as_str()
                .ok_or_else(|| anyhow!("no invocationId in {}", String::from_utf8_lossy(&body)))?
                .to_owned();
            wait_for_promise_wait(&mut admin, &id).await?;
            let value = format!("\"go-{i}\"");
            let t = Instant::now();
            let (status, body) =
                ingress.request(Method::POST, &format!("/Resume/{key}/go"), Some(&value)).await?;
            if !status.is_success() {
                bail!("POST /Resume/{key}/go: {status} {}", String::from_utf8_lossy(&body));
            }
            let path = format!("/restate/workflow/Resume/{key}/attach");
            let (status, body) = ingress.request(Method::GET, &path, None).await?;
            let took = t.elapsed();
            if status != StatusCode::OK || body != value.as_bytes() {
                bail!("GET {path}: {status} {}, not {value}", String::from_utf8_lossy(&body));
            }
            resume.push(millis(took));
        }
        resume.sort_by(f64::total_cmp);

        Ok(PeerFigures {
            workflows_per_sec: runs as f64 / elapsed.as_secs_f64(),
            p50_ms: percentile(&latencies, 50.0),
            p99_ms: percentile(&latencies, 99.0),
            resume_p50_ms: percentile(&resume, 50.0),
            resume_p99_ms: percentile(&resume, 99.0),
            detail: format!(
                "Restate {version} (restate-server from npm, single node, default configuration: \
                 RocksDB WAL fsync on, 24 partitions) with a {sdk} endpoint over h2c; \
                 each step a ctx.run doing an HTTP/1.1 POST; {runs} workflows from {concurrency} \
                 clients through the ingress (POST /ThreeSteps/KEY/run waits for the result); \
                 resume: POST /Resume/KEY/go then GET /restate/workflow/Resume/KEY/attach, \
                 once the promise wait is journaled, {resumes} times"
            ),
        })
    }

    /// Waits until the admin API and the ingress answer and the peer listens;
    /// returns Restate's version.
    async fn wait_ready(&mut self) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.server.try_wait()? {
                bail!("restate-server exited ({status}) before answering");
            }
            if let Some(status) = self.peer.try_wait()? {
                bail!("restate-peer exited ({status}) before answering");
            }
            let admin = Conn::new(self.admin).request(Method::GET, "/health", None).await;
            let ingress = Conn::new(self.ingress).request(Method::GET, "/restate/health", None).await;
            let peer = tokio::net::TcpStream::connect(self.peer_addr).await;
            if let (Ok((StatusCode::OK, _)), Ok((StatusCode::OK, _)), Ok(_)) = (admin, ingress, peer) {
                break;
            }
            if started.elapsed() > READY_LIMIT {
                bail!("restate-server or the peer did not answer within {} s", READY_LIMIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = Conn::new(self.admin).request(Method::GET, "/version", None).await?;
        if status != StatusCode::OK {
            bail!("GET /version: {status}");
        }
        let version: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(version["version"].as_str().unwrap_or("(unknown version)").to_owned())
    }

    /// Registers the peer; returns the SDK's version as the peer reports it.
    async fn register(&mut self) -> anyhow::Result<String> {
        let deployment = serde_json::json!({ "uri": format!("http://{}", self.peer_addr) }).to_string();
        let (status, body) =
            Conn::new(self.admin).request(Method::POST, "/deployments", Some(&deployment)).await?;
        if !status.is_success() {
            bail!("registering the peer: {status} {}", String::from_utf8_lossy(&body));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(answer["sdk_version"].as_str().unwrap_or("restate-sdk-rust").to_owned())
    }
}

/// One ThreeSteps workflow, waiting for its result.
async fn run_three_steps(conn: &mut Conn, step_url: &str, key: &str) -> anyhow::Result<()> {
    let input = serde_json::to_string(&format!("{step_url}|{key}"))?;
    let path = format!("/ThreeSteps/{key}/run");
    let (status, body) = conn.request(Method::POST, &path, Some(&input)).await?;
    if status != StatusCode::OK {
        bail!("POST {path}: {status} {}", String::from_utf8_lossy(&body));
    }
    let result: String = serde_json::from_slice(&body)
        .with_context(|| format!("POST {path}: {}", String::from_utf8_lossy(&body)))?;
    if result.split('+').count() != 3 {
        bail!("POST {path}: {result:?} is not three step answers joined by +");
    }
    Ok(())
}

/// Waits until invocation `id` has journaled its wait on the promise (Restate
/// keeps such an invocation running, not suspended, for its inactivity
/// timeout of a minute, so the resume measured is not a replay).
async fn wait_for_promise_wait(admin: &mut Conn, id: &str) -> anyhow::Result<()> {
    let query = serde_json::json!({
        "query": format!(
            "SELECT count(*) AS n FROM sys_journal WHERE id = '{id}' AND entry_type = 'Command: GetPromise'"
        )
    })
    .to_string();
    let started = Instant::now();
    loop {
        let (status, body) = admin.request(Method::POST, "/query", Some(&query)).await?;
        if !status.is_success() {
            bail!("POST /query: {status} {}", String::from_utf8_lossy(&body));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        if answer["rows"][0]["n"].as_u64().unwrap_or(0) > 0 {
            return Ok(());
        }
        if started.elapsed() > READY_LIMIT {
            bail!("invocation {id} did not reach its promise within {} s", READY_LIMIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One HTTP/1.1 keep-alive connection, reopened when the server closes it.
struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, sender: None }
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        json: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        tokio::time::timeout(REQUEST_LIMIT, self.request_inner(method, path, json))
            .await
            .map_err(|_| anyhow!("{path}: no answer within {} s", REQUEST_LIMIT.as_secs()))?
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path: &str,
        json: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let reusable = match self.sender.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        let mut sender = match self.sender.take() {
            Some(sender) if reusable => sender,
            _ => {
                let stream = tokio::net::TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender
            }
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string())
            .header(ACCEPT, "application/json");
        if json.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let body = Full::new(Bytes::from(json.unwrap_or_default().to_owned()));
        let response = sender.send_request(request.body(body)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        self.sender = Some(sender);
        Ok((status, body))
    }
}
