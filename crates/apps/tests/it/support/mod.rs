//! Test support: builds the guest components once, runs an `Apps` service
//! with its ingress on a loopback port over a store in a temporary
//! directory, and speaks HTTP to it.
//!
//! Guests are real components built for wasm32-wasip2 with cargo, the first
//! time a test binary needs them (about a minute from scratch, a second when
//! nothing changed). The commands are:
//!
//! ```text
//! cargo build --release --locked --target wasm32-wasip2 --manifest-path examples/apps/hello/Cargo.toml --target-dir target/apps-guests
//! cargo build --release --locked --target wasm32-wasip2 --manifest-path examples/apps/counter/Cargo.toml --target-dir target/apps-guests
//! cargo build --release --locked --target wasm32-wasip2 --manifest-path crates/apps/tests/guests/Cargo.toml --target-dir target/apps-guests
//! ```

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hearth_apps::{Apps, Limits, Options};
use hearth_store::Store;
use hearth_store::redb::RedbStore;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

/// The guest components, as bytes.
pub struct Guests {
    pub hello: Vec<u8>,
    pub counter: Vec<u8>,
    pub counter_manifest: String,
    pub kitchen: Vec<u8>,
    pub command: Vec<u8>,
}

/// Every kitchen feature declared.
pub const KITCHEN_MANIFEST: &str = r#"
key_value = ["default", "other"]
outbound = ["http://127.0.0.1:*"]
[config]
greeting = "hello from config"
[limits]
memory_mib = 32
cpu_ms = 300
timeout_ms = 2000
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace exists")
}

/// Builds the guests (once per test binary) and returns them.
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let root = workspace();
        let target_dir = root.join("target/apps-guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for manifest in ["examples/apps/hello", "examples/apps/counter", "crates/apps/tests/guests"] {
            let status = Command::new(&cargo)
                .args([
                    "build",
                    "--release",
                    "--locked",
                    "--quiet",
                    "--target",
                    "wasm32-wasip2",
                    "--manifest-path",
                ])
                .arg(root.join(manifest).join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir)
                // Guests are built by rustc, not by the clippy driver `make test`
                // compiles the workspace with: they are not the workspace's code.
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("CLIPPY_ARGS")
                .status()
                .expect("cargo runs");
            assert!(
                status.success(),
                "building the guest {manifest} failed (is the wasm32-wasip2 target installed?)"
            );
        }
        let out = target_dir.join("wasm32-wasip2/release");
        let read = |name: &str| std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        Guests {
            hello: read("hello.wasm"),
            counter: read("counter.wasm"),
            counter_manifest: std::fs::read_to_string(root.join("examples/apps/counter/hearth.toml"))
                .unwrap(),
            kitchen: read("kitchen.wasm"),
            command: read("command.wasm"),
        }
    })
}

/// An `Apps` service with its ingress on a loopback port, over a store in
/// a temporary directory that goes when this is dropped.
pub struct Harness {
    pub apps: Apps,
    pub config: hearth_config::Config,
    pub addr: SocketAddr,
    pub store: Arc<RedbStore>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub dir: Arc<tempfile::TempDir>,
}

pub fn options(dir: &Path) -> Options {
    let mut options = Options::new(dir.join("data"), dir.join("cache"));
    // Small pools: many harnesses run at once in one test process.
    options.max_instances = 64;
    options.default_limits = Limits { memory_bytes: 64 << 20, cpu_ms: 2_000, timeout_ms: 10_000 };
    options
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_in(Arc::new(tempfile::tempdir().unwrap())).await
    }

    /// Starts with options changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Options)) -> Harness {
        Harness::start_in_with(Arc::new(tempfile::tempdir().unwrap()), f).await
    }

    /// Starts on `dir` (a fresh one, or the one a stopped harness used).
    pub async fn start_in(dir: Arc<tempfile::TempDir>) -> Harness {
        Harness::start_in_with(dir, |_| {}).await
    }

    pub async fn start_in_with(dir: Arc<tempfile::TempDir>, f: impl FnOnce(&mut Options)) -> Harness {
        let store = Arc::new(RedbStore::open(&dir.path().join("store.redb"), Default::default()).unwrap());
        let mut options = options(dir.path());
        f(&mut options);
        let config = hearth_config::Config::open(store.clone() as Arc<dyn Store>, dir.path()).unwrap();
        let apps = Apps::new(store.clone() as Arc<dyn Store>, config.clone(), options).unwrap();
        let (shutdown, rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = vec![
            tokio::spawn(config.clone().run(rx.clone())),
            tokio::spawn(apps.clone().run(rx.clone())),
            tokio::spawn({
                let apps = apps.clone();
                async move {
                    apps.serve_ingress(listener, hearth_listen::Budget::new(1024).ingress(), rx)
                        .await
                        .unwrap()
                }
            }),
        ];
        tokio::time::timeout(Duration::from_secs(60), apps.ready()).await.expect("apps load in time");
        Harness { apps, config, addr, store, shutdown, tasks, dir }
    }

    /// Stops everything and closes the store, keeping the directory.
    pub async fn stop(self) -> Arc<tempfile::TempDir> {
        self.shutdown.send_replace(true);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(15), task).await.expect("tasks stop").unwrap();
        }
        drop(self.apps);
        self.store.shutdown().await;
        self.dir
    }

    /// Waits until `name` serves Cranelift's code (which is then in the
    /// compiled cache too): a deploy of new bytes serves Winch's first.
    pub async fn optimized(&self, name: &str) {
        let optimized = eventually(Duration::from_secs(120), async || {
            let info = self.apps.get(name).await.unwrap();
            info.tier.is_some_and(|t| t.state == hearth_apps::TierState::Optimized)
        })
        .await;
        assert!(
            optimized,
            "{name} was not optimized within 120 s: {:?}",
            self.apps.get(name).await.unwrap().tier
        );
    }

    /// GET http://HOST/PATH through the ingress.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        request(self.addr, "GET", host, path, "").await
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: Option<u32>,
    pub body: String,
}

/// One request on a new connection.
pub async fn request(addr: SocketAddr, method: &str, host: &str, path: &str, body: &str) -> Reply {
    let mut client = Client::connect(addr).await;
    client.send(method, host, path, body).await.expect("the request succeeds")
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(&mut self, method: &str, host: &str, path: &str, body: &str) -> Result<Reply, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let version = response.headers().get("x-hearth-version").and_then(|v| v.to_str().ok()?.parse().ok());
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status, version, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP server on loopback that answers every request with `body`
/// and counts them: the far end of outbound calls.
pub async fn upstream(body: &'static str) -> (SocketAddr, Arc<std::sync::atomic::AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// The app's log as text lines, `stream: text`.
pub async fn log_lines(apps: &Apps, name: &str) -> Vec<String> {
    let (lines, _) = apps.logs(name).await.unwrap();
    lines.into_iter().map(|l| format!("{:?}: {}", l.stream, l.text)).collect()
}

/// A resolver from a fixed map, counting its lookups: it lets a test make
/// a name resolve where it needs (say `api.example.test` to 127.0.0.1)
/// without touching /etc/hosts or DNS.
#[derive(Debug, Default)]
pub struct MapResolver {
    pub names: std::collections::HashMap<String, Vec<std::net::IpAddr>>,
    pub lookups: std::sync::atomic::AtomicU32,
}

impl MapResolver {
    pub fn new(names: &[(&str, &[&str])]) -> Arc<MapResolver> {
        let names = names
            .iter()
            .map(|(name, ips)| (name.to_string(), ips.iter().map(|ip| ip.parse().unwrap()).collect()))
            .collect();
        Arc::new(MapResolver { names, lookups: Default::default() })
    }
}

impl hearth_apps::outbound::Resolve for MapResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let found = self.names.get(host).map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        let host = host.to_owned();
        Box::pin(async move {
            found.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} is not in the test's map"))
            })
        })
    }
}
