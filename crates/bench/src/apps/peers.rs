//! The peers and the load generator of `hearth bench apps`: `wrk` and its
//! report, a native hyper server on a runtime of its own, and `wasmtime
//! serve`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

use super::{Args, HELLO, Load, READY_LIMIT, WASMTIME_MAJOR, get};

/// Waits until `addr` answers 200, or `child` exits.
pub(super) async fn wait_listening(
    addr: SocketAddr,
    child: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok((StatusCode::OK, _)) = get(addr, "localhost").await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            bail!("it exited ({status}) before answering: {}", stderr.trim());
        }
        if started.elapsed() > READY_LIMIT {
            bail!("it did not answer 200 on {addr} within {} s", READY_LIMIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port, for a server that is told its address.
pub(super) fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

// ---------------------------------------------------------------------------
// The load generator.

pub(crate) struct Wrk {
    pub(crate) version: String,
    pub(crate) threads: u32,
    pub(crate) connections: u32,
}

impl Wrk {
    /// `wrk`, or what to do to get it.
    pub(super) async fn find(args: &Args) -> Result<Wrk, String> {
        Wrk::with(args.threads, args.connections).await
    }

    /// `wrk` with `threads` and `connections`, or what to do to get it.
    pub(crate) async fn with(threads: u32, connections: u32) -> Result<Wrk, String> {
        // `wrk -v` prints its version and exits 1.
        let output = tokio::process::Command::new("wrk").arg("-v").stdin(Stdio::null()).output().await;
        match output {
            Ok(out) => {
                let text =
                    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
                let version =
                    text.lines().next().unwrap_or("wrk").split(" Copyright").next().unwrap_or("wrk");
                Ok(Wrk { version: version.trim().to_owned(), threads, connections })
            }
            Err(e) => {
                let why = format!(
                    "the load generator wrk cannot run ({e}): install it with `apt-get install wrk` (or `make setup`)"
                );
                eprintln!("      {why}");
                Err(why)
            }
        }
    }

    /// `duration` of load on `addr`: wrk's report.
    pub(crate) async fn run(
        &self,
        addr: SocketAddr,
        host: &str,
        duration: Duration,
    ) -> anyhow::Result<String> {
        let connections = self.connections.max(self.threads);
        let output = tokio::process::Command::new("wrk")
            .args(["-t", &self.threads.to_string(), "-c", &connections.to_string()])
            .args(["-d", &format!("{}s", duration.as_secs().max(1)), "--latency"])
            .args(["-H", &format!("Host: {host}"), &format!("http://{addr}/")])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("cannot start wrk")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!("wrk failed ({}): {}{}", output.status, text, String::from_utf8_lossy(&output.stderr));
        }
        Ok(text)
    }
}

/// Reads wrk's `--latency` report.
pub(crate) fn parse_wrk(text: &str) -> Option<Load> {
    let mut load = Load {
        server: String::new(),
        requests_per_sec: f64::NAN,
        rounds_requests_per_sec: vec![],
        requests: 0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => load.p50_ms = wrk_millis(v)?,
            (Some("99%"), Some(v)) => load.p99_ms = wrk_millis(v)?,
            (Some("Requests/sec:"), Some(v)) => load.requests_per_sec = v.parse().ok()?,
            (Some(n), Some("requests")) => load.requests = n.parse().ok()?,
            _ if line.starts_with("Non-2xx or 3xx responses:") => {
                load.errors += line.rsplit(' ').next()?.parse::<u64>().ok()?;
            }
            _ if line.starts_with("Socket errors:") => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                for count in line.split(',').filter_map(|part| part.split_whitespace().last()) {
                    load.errors += count.parse::<u64>().ok()?;
                }
            }
            _ => {}
        }
    }
    let parsed = !load.requests_per_sec.is_nan() && !load.p50_ms.is_nan() && !load.p99_ms.is_nan();
    parsed.then_some(load)
}

/// wrk's durations: `786.00us`, `1.12ms`, `1.02s`, `1.50m`.
pub(super) fn wrk_millis(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e3)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

// ---------------------------------------------------------------------------
// The peers.

/// A native hyper hello server, configured as hearth's ingress is (HTTP/1.1,
/// keep-alive, no Nagle), on a multi-threaded tokio runtime of its own with
/// one worker per core, as the daemon's. It runs in this process, which is
/// otherwise idle while wrk runs.
pub(super) struct NativeServer {
    pub(super) addr: SocketAddr,
    pub(super) stop: tokio::sync::oneshot::Sender<()>,
    pub(super) thread: std::thread::JoinHandle<()>,
}

impl NativeServer {
    pub(super) fn start() -> anyhow::Result<NativeServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("bench-native")
            .build()
            .context("cannot start a runtime for the native server")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("bench-native".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => return eprintln!("      the native server cannot listen: {e}"),
                };
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(|_req| async {
                                    let mut response = hyper::Response::new(Full::new(Bytes::from_static(HELLO)));
                                    response.headers_mut().insert(
                                        CONTENT_TYPE,
                                        HeaderValue::from_static("text/plain; charset=utf-8"),
                                    );
                                    Ok::<_, Infallible>(response)
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .keep_alive(true)
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
            // Connections still open end with the runtime, here, off the caller's runtime.
            runtime.shutdown_background();
        })?;
        Ok(NativeServer { addr, stop, thread })
    }

    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// `wasmtime serve` (crates.io's wasmtime-cli) on a free loopback port.
pub(super) struct WasmtimeServe {
    pub(super) addr: SocketAddr,
    pub(super) version: String,
    pub(super) child: tokio::process::Child,
}

impl WasmtimeServe {
    pub(super) async fn start(binary: Option<&Path>, component: &Path) -> anyhow::Result<WasmtimeServe> {
        let binary = match binary {
            Some(path) => path.to_owned(),
            None => find_wasmtime().with_context(|| {
                format!(
                    "`wasmtime` is not on PATH nor in ~/.cargo/bin: install it with \
                     `cargo install wasmtime-cli --version '^{WASMTIME_MAJOR}' --locked` \
                     (or run `make bench-apps`, which does), or pass --wasmtime PATH"
                )
            })?,
        };
        let out = tokio::process::Command::new(&binary)
            .arg("--version")
            .output()
            .await
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let number = version.split_whitespace().nth(1).unwrap_or("");
        if number.split('.').next() != Some(WASMTIME_MAJOR) {
            eprintln!(
                "      warning: {} is {version:?}, not {WASMTIME_MAJOR}.x as hearth's runtime",
                binary.display()
            );
        }
        let addr = free_port()?;
        // `-Scli`: all of WASI 0.2 beside wasi:http, as hearth's linker
        // has. Instances are not reused across requests (the default for
        // WASIp2 components), as in hearth.
        let mut child = tokio::process::Command::new(&binary)
            .args(["serve", "--addr", &addr.to_string(), "-Scli"])
            .arg(component)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        wait_listening(addr, &mut child).await.context("`wasmtime serve` did not start")?;
        Ok(WasmtimeServe { addr, version: number.to_owned(), child })
    }

    pub(super) async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

pub(super) fn find_wasmtime() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("wasmtime")).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    on_path.into_iter().chain(cargo_home.map(|dir| dir.join("bin/wasmtime"))).find(|path| path.is_file())
}

// ---------------------------------------------------------------------------
// The report.
