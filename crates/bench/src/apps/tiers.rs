//! Cold deploys by tier: how long new bytes take from the API call to the
//! first 200 (served by Winch's code) and to Cranelift's code serving, and
//! the requests per second each tier's code answers.
//!
//! One row per component: the examples in [`COMPONENTS`], and a JavaScript
//! hello that the daemon builds from source first ([`javascript`]), whose
//! cold deploys are new bytes on an engine the daemon has compiled before
//! (hearth shares it: Cranelift's code serves from the start, and no Winch
//! phase is there to load). Each cold deploy waits, untimed, for the
//! optimized code before the next, so that no background compile overlaps
//! the next deploy. The requests per second are taken by one load
//! generator of our own (keep-alive connections, `GET /`), which tells the
//! tiers apart by the `x-hearth-tier` header: from the first answer by
//! Winch's code of a new version to the first by Cranelift's (while
//! Cranelift compiles on the same cores), then for a fixed window after.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use hearth_client::Client;
use hearth_client::types::{CodeTier, DeployApp};
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::{Figure, Latency, append_random_section, first_ok};
use crate::millis;

/// A component to measure, and the goal for its cold deploy.
pub(super) struct Component {
    pub(super) label: &'static str,
    pub(super) path: &'static str,
    /// From the API call to the first 200, at the median.
    pub(super) goal_ms: Option<f64>,
    /// The `hearth.toml` it is deployed with.
    pub(super) manifest: Option<&'static str>,
}

/// The components `make examples` builds, smallest first.
pub(super) const COMPONENTS: &[Component] = &[
    Component {
        label: "hello (wasip2 bindings)",
        path: "examples/apps/hello/target/wasm32-wasip2/release/hello.wasm",
        goal_ms: Some(50.0),
        manifest: None,
    },
    Component {
        label: "wstd-echo (crates.io wstd)",
        path: "examples/apps/wstd-echo/target/wasm32-wasip2/release/wstd-echo.wasm",
        goal_ms: Some(150.0),
        manifest: None,
    },
];

/// The JavaScript hello, built by the daemon; the goal for it (1 s)
/// counts the build too, which `hearth bench fn` measures, so none here.
/// Deployed as a component, it declares what its engine imports, as a
/// person deploying a componentize-js build would: the key-value store and
/// an outbound host (the discard port; the hello calls nothing).
pub(super) const JAVASCRIPT: Component = Component {
    label: "javascript hello (componentize-js)",
    path: "",
    goal_ms: None,
    manifest: Some("key_value = [\"default\"]\noutbound = [\"http://127.0.0.1:9\"]\n"),
};

/// The JavaScript hello's source.
const JAVASCRIPT_HELLO: &str =
    "export default {\n  fetch() {\n    return new Response(\"Hello from hearth!\\n\");\n  }\n};\n";

/// Has the daemon build the JavaScript hello into `name`, waits until
/// Cranelift's code serves it (so that its engine is compiled), and reads
/// the component from the daemon's data dir, `data_dir`, on this machine:
/// its path and bytes.
pub(super) async fn javascript(
    client: &Client,
    ingress: SocketAddr,
    data_dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let body = hearth_client::types::DeploySource {
        lang: "js".into(),
        source: JAVASCRIPT_HELLO.into(),
        manifest: None,
        routes: vec![],
    };
    let deployed = client.deploy_source(name, &body).await?;
    first_ok(ingress, &format!("{name}.localhost"), deployed.version.number).await?;
    wait_optimized(client, name).await?;
    let path = data_dir.join("apps").join("blobs").join(format!("{}.wasm", deployed.version.sha256));
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read the built component {}: run the bench on the daemon's machine, with its --data-dir",
            path.display()
        )
    })?;
    Ok((path, bytes))
}

/// Longest wait for Cranelift's code to serve.
const OPTIMIZED_LIMIT: Duration = Duration::from_secs(300);
/// How long the optimized code is loaded for its requests per second.
const OPTIMIZED_WINDOW: Duration = Duration::from_secs(3);

/// One component's cold deploys and its tiers under load.
#[derive(Debug, Serialize)]
pub(super) struct TierRun {
    pub(super) component: String,
    pub(super) path: PathBuf,
    pub(super) bytes: usize,
    /// API call → first 200 (Winch's code, or Cranelift's where Winch
    /// refused the component or its engine is shared).
    pub(super) first_200: Latency,
    /// API call → Cranelift's code serving.
    pub(super) optimized_serving: Latency,
    /// Deploys whose first 200 was not Winch's code (a refusal, a shared
    /// engine, or the compiled cache): `hearth app inspect` says which.
    pub(super) not_baseline: usize,
    pub(super) goal_ms: Option<f64>,
    pub(super) baseline: Figure<Rate>,
    pub(super) optimized: Figure<Rate>,
}

/// Requests per second over a window.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Rate {
    pub(super) requests_per_sec: f64,
    pub(super) requests: u64,
    pub(super) window_ms: f64,
}

/// An example's path and bytes, as `make examples` built it.
pub(super) fn example(component: &Component) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let path = PathBuf::from(component.path);
    let bytes = std::fs::read(&path).with_context(|| {
        format!("cannot read {}: build the examples with `make examples`", path.display())
    })?;
    Ok((path, bytes))
}

/// `component`'s cold deploys and its tiers under load, of the `bytes`
/// read from `path`.
pub(super) async fn measure(
    client: &Client,
    ingress: SocketAddr,
    name: &str,
    component: &Component,
    (path, bytes): (PathBuf, Vec<u8>),
    runs: usize,
    connections: u32,
) -> anyhow::Result<TierRun> {
    let host = format!("{name}.localhost");
    let (mut first, mut optimized, mut not_baseline) = (Vec::new(), Vec::new(), 0);
    // One untimed deploy first: the first compile in a process pays for
    // lazy initialisation.
    for run in 0..=runs {
        let started = Instant::now();
        let deployed = deploy(client, name, &append_random_section(&bytes), component.manifest).await?;
        first_ok(ingress, &host, deployed.0).await?;
        let to_first = millis(started.elapsed());
        wait_optimized(client, name).await?;
        let to_optimized = millis(started.elapsed());
        if run == 0 {
            continue;
        }
        eprintln!(
            "      {}: cold {run}: first 200 in {to_first:.1} ms, Cranelift's code serving after {to_optimized:.0} ms",
            component.label
        );
        first.push(to_first);
        optimized.push(to_optimized);
        if deployed.1 != Some(CodeTier::Optimizing) {
            not_baseline += 1;
        }
    }
    let (baseline_rate, optimized_rate) =
        load_across_a_swap(client, ingress, name, &bytes, component.manifest, connections).await;
    Ok(TierRun {
        component: component.label.to_owned(),
        path,
        bytes: bytes.len(),
        first_200: Latency::of(first),
        optimized_serving: Latency::of(optimized),
        not_baseline,
        goal_ms: component.goal_ms,
        baseline: baseline_rate,
        optimized: optimized_rate,
    })
}

/// Deploys `bytes`: the version's number and the tier it serves with.
async fn deploy(
    client: &Client,
    name: &str,
    bytes: &[u8],
    manifest: Option<&str>,
) -> anyhow::Result<(u32, Option<CodeTier>)> {
    let body = DeployApp {
        component_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        manifest: manifest.map(str::to_owned),
        routes: vec![],
    };
    let deployed = client.deploy_app(name, &body).await?;
    Ok((deployed.version.number, deployed.tier))
}

pub(crate) async fn wait_optimized(client: &Client, name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let app = client.app(name).await?;
        match app.summary.tier.as_ref().map(|t| (t.tier, t.note.as_deref())) {
            Some((CodeTier::Optimized, _)) => return Ok(()),
            Some((CodeTier::Baseline, note)) => {
                bail!("Cranelift did not compile {name}: {}", note.unwrap_or("no reason given"))
            }
            _ => {}
        }
        if started.elapsed() > OPTIMIZED_LIMIT {
            bail!("{name} did not serve Cranelift's code within {} s", OPTIMIZED_LIMIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Loads the app while a new version goes from Winch's code to
/// Cranelift's: the requests per second of each.
async fn load_across_a_swap(
    client: &Client,
    ingress: SocketAddr,
    name: &str,
    bytes: &[u8],
    manifest: Option<&str>,
    connections: u32,
) -> (Figure<Rate>, Figure<Rate>) {
    let host = format!("{name}.localhost");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, u32, bool)>();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (stop, tx, host) = (stop.clone(), tx.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A connection kept alive until it fails, as wrk's are.
                let Ok(mut conn) = Connection::open(ingress).await else { continue };
                while !stop.load(Ordering::Relaxed) {
                    match conn.get(&host).await {
                        Ok((version, optimized)) => {
                            let _ = tx.send((Instant::now(), version, optimized));
                        }
                        Err(_) => break,
                    }
                }
            }
        }));
    }
    drop(tx);
    let swap = async {
        let (version, _) = deploy(client, name, &append_random_section(bytes), manifest).await?;
        wait_optimized(client, name).await?;
        tokio::time::sleep(OPTIMIZED_WINDOW).await;
        Ok::<_, anyhow::Error>(version)
    };
    let version = swap.await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let version = match version {
        Ok(version) => version,
        Err(e) => {
            let why = format!("{e:#}");
            return (
                Figure::Unavailable { unavailable: why.clone() },
                Figure::Unavailable { unavailable: why },
            );
        }
    };
    let mut answers = Vec::new();
    while let Ok(answer) = rx.try_recv() {
        answers.push(answer);
    }
    let rate = |optimized: bool| {
        let times: Vec<Instant> =
            answers.iter().filter(|(_, v, o)| *v == version && *o == optimized).map(|(t, _, _)| *t).collect();
        match (times.iter().min(), times.iter().max()) {
            (Some(first), Some(last)) if last > first => {
                let window = last.duration_since(*first);
                Figure::Measured(Rate {
                    requests_per_sec: times.len() as f64 / window.as_secs_f64(),
                    requests: times.len() as u64,
                    window_ms: millis(window),
                })
            }
            _ if times.is_empty() && !optimized => Figure::Unavailable {
                unavailable: "none: Cranelift's code served from the first answer".to_owned(),
            },
            _ => Figure::Unavailable {
                unavailable: format!("{} answers from that tier: too few to time", times.len()),
            },
        }
    };
    (rate(false), rate(true))
}

/// An HTTP/1.1 connection kept alive.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    _conn: tokio::task::JoinHandle<()>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection { sender, _conn: conn })
    }

    /// `GET /`: the version that answered 200, and whether it was
    /// Cranelift's code.
    async fn get(&mut self, host: &str) -> anyhow::Result<(u32, bool)> {
        self.sender.ready().await?;
        let request = hyper::Request::get("/").header(HOST, host).body(Empty::<Bytes>::new())?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let header =
            |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (version, tier) = (header("x-hearth-version"), header("x-hearth-tier"));
        response.into_body().collect().await?;
        if status != hyper::StatusCode::OK {
            bail!("{status}");
        }
        let version = version.and_then(|v| v.parse().ok()).context("no x-hearth-version")?;
        Ok((version, tier.as_deref() == Some("optimized")))
    }
}
