//! The apps service: deploys, versions and rollbacks, and the set of loaded
//! apps the ingress routes to.
//!
//! Desired state is in the store (`apps/records/NAME`); [`Apps::run`] loads
//! every app's active version on start (compiled artifacts come from the
//! cache, so a restart compiles nothing) and then follows the store, so a
//! change written by another daemon is served here too. Deploys, rollbacks
//! and removals done through this handle write the store and swap the
//! in-memory routing table at once, without waiting for the loop.
//!
//! **Swaps are atomic.** The ingress reads an immutable routing table from an
//! `ArcSwap`; a request holds the version it was routed to (an `Arc`) until it
//! ends. A deploy publishes a new table: requests already in flight finish on
//! the old version, new ones go to the new one, and none fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hearth_store::{Change, Compare, Follower, Op, Store, Txn};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::host::{AppCtx, HostState};
use crate::ingress::{Entry, Table};
use crate::logs::{AppLog, LogLine, LogStream};
use crate::manifest::{Limits, Manifest};
use crate::outbound::{Resolve, SystemResolver};
use crate::record::{self, App, Route, Version, validate_name};
use crate::runtime::{self, Runtime, Tier};
use crate::triggers::Guards;
use crate::{Error, chain, now_ms};

mod deploy;
mod reconcile;
mod tiers;

/// How long a stopping service waits for background compiles already
/// running ([`Apps::run`]).
const STOP_WAITS_FOR_COMPILES: std::time::Duration = std::time::Duration::from_secs(5);

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Uploaded components are kept in `DATA_DIR/apps/blobs`, by hash.
    pub data_dir: PathBuf,
    /// Compiled components are cached in `CACHE_DIR/apps/compiled`.
    pub cache_dir: PathBuf,
    /// Every app answers at `NAME.DOMAIN`.
    pub domain: String,
    /// Limits an app gets unless its manifest asks otherwise.
    pub default_limits: Limits,
    /// The most a manifest may ask for.
    pub ceiling: Limits,
    /// Largest accepted upload, in bytes.
    pub max_upload: usize,
    /// Versions kept per app (the active one is always kept).
    pub max_versions: usize,
    /// Instances that can run at once, across apps (the pooling allocator's
    /// size). Each reserves address space, not memory.
    pub max_instances: u32,
    /// Resolves the host names apps send requests to: the system's
    /// resolver; tests put a map here.
    pub resolver: Arc<dyn Resolve>,
    /// Whether other hosts share the store (etcd): then a deploy shares
    /// the component's bytes through it (`apps/blobs/`), so that every
    /// host can serve the app, and garbage collection removes what no
    /// version uses. Off, the store holds no bytes; a host still looks
    /// there for bytes it is missing.
    pub shared: bool,
    /// When set, event triggers fire only while it holds true: hosts that
    /// share a store follow its changes on the leader only, so that a
    /// change calls each trigger once, not once per host. Unset, always.
    pub events_leading: Option<tokio::sync::watch::Receiver<bool>>,
    /// Where the tools that build handlers from source are
    /// ([`crate::source::Toolchains`]).
    pub fn_tools: crate::source::Toolchains,
    /// This host's record of machines' traffic: a request the ingress
    /// passes to a service's machine, or an app's call to a service,
    /// counts as its activity, and wakes it if it sleeps (the daemon gives
    /// the networks service's; alone, one that can wake nothing).
    pub activity: hearth_routing::activity::Activity,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Options {
        Options {
            data_dir: data_dir.into(),
            cache_dir: cache_dir.into(),
            domain: "localhost".into(),
            default_limits: Limits::DEFAULT,
            ceiling: Limits::CEILING,
            max_upload: 64 << 20,
            max_versions: 10,
            max_instances: 1000,
            resolver: Arc::new(SystemResolver),
            shared: false,
            events_leading: None,
            fn_tools: crate::source::Toolchains::new(crate::source::Toolchains::default_dir()),
            activity: hearth_routing::activity::Activity::default(),
        }
    }
}

/// What a deploy did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployed {
    pub app: String,
    pub version: Version,
    /// False when the compiled component came from the cache.
    pub compiled: bool,
    /// From the call to the new version serving, in milliseconds.
    pub duration_ms: f64,
    /// Of which building from source took, for a handler deployed as
    /// source.
    pub build_ms: Option<f64>,
    /// Which compiler's code it serves with.
    pub tier: TierState,
    /// Where it answers.
    pub urls: Vec<String>,
}

/// An app as this daemon sees it: its record, and what is serving.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppInfo {
    #[serde(flatten)]
    pub app: App,
    /// Where it answers.
    pub urls: Vec<String>,
    /// The version this daemon serves, if it has loaded one.
    pub serving: Option<u32>,
    /// Why it is not serving, if it is not.
    pub error: Option<String>,
    /// Which compiler's code serves, if it is serving.
    #[serde(default)]
    pub tier: Option<Tiering>,
}

/// Which compiler's code a version serves: Winch's (baseline) until
/// Cranelift's (optimized) is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiering {
    pub state: TierState,
    /// `winch` or `cranelift`.
    pub compiler: String,
    /// Why Winch was not used, or why the optimized code is not serving.
    pub note: Option<String>,
    /// Cranelift's cache of compiled functions, for this version's compile
    /// (absent while it has not compiled, or when the whole component came
    /// from the cache of compiled components).
    pub functions: Option<FunctionCounts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierState {
    /// Winch's code serves, and Cranelift is not compiling (it failed).
    Baseline,
    /// Winch's code serves while Cranelift compiles in the background.
    Optimizing,
    /// Cranelift's code serves.
    Optimized,
}

/// How a Cranelift compile used the cache of compiled functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCounts {
    /// Functions taken from the cache.
    pub hits: u64,
    /// Functions compiled (and then cached).
    pub misses: u64,
}

/// Counters, for tests, metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Components compiled (cache misses).
    pub compiles: u64,
    /// Components loaded from the compiled cache.
    pub cache_loads: u64,
    /// Requests routed to an app.
    pub requests: u64,
    /// Requests that failed in the app (trap, limit, timeout, no response).
    pub failures: u64,
    /// Whether the pooling instance allocator is in use.
    pub pooling: bool,
}

/// A cheap-to-clone handle to the apps service.
#[derive(Clone)]
pub struct Apps {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Arc<dyn Store>,
    /// Layered config: what `wasi:config` serves each app.
    pub(crate) config: hearth_config::Config,
    pub(crate) options: Options,
    blobs_dir: PathBuf,
    pub(crate) runtime: Runtime,
    /// What is loaded; the table below is published from it.
    pub(crate) loaded: Mutex<BTreeMap<String, Entry>>,
    /// The routing table the ingress reads, swapped whole on every change.
    pub(crate) table: ArcSwap<Table>,
    logs: Mutex<HashMap<String, Arc<AppLog>>>,
    /// Every app's lines, for log rules.
    log_tap: crate::logs::Tap,
    /// Serialises the operations on one app.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Deploys hold it shared from writing a blob to writing the record;
    /// garbage collection holds it exclusively, so it never deletes a blob
    /// that a record is about to name.
    gc: tokio::sync::RwLock<()>,
    /// One build from source at a time: each takes a core or two and
    /// hundreds of MB.
    builds: tokio::sync::Mutex<()>,
    ready: watch::Sender<bool>,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) ingress_port: Mutex<Option<u16>>,
    /// Host names served by another subsystem (webhooks), not by an app.
    pub(crate) hooks: arc_swap::ArcSwap<HashMap<String, crate::hooks::HookHandler>>,
    /// Webhook deliveries, claimed once per `Idempotency-Key`.
    pub(crate) deliveries: hearth_triggers::delivery::Deliveries,
    /// The services the ingress routes to, following the registry; apps'
    /// outgoing requests to `NAME.service.hearth` share them.
    pub(crate) upstreams: Arc<crate::ingress::Upstreams>,
    /// Requests per app and route, for the time series.
    pub(crate) traffic: crate::traffic::Traffic,
    /// Background compiles with Cranelift, and whether the service is
    /// stopping (then those not yet begun are not).
    optimizes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stopping: std::sync::atomic::AtomicBool,
}

/// A version ready to serve: pre-instantiated, with its context.
pub(crate) struct Loaded {
    pub(crate) ctx: Arc<AppCtx>,
    /// Replaced by Cranelift's when the version was compiled by Winch.
    pub(crate) code: Arc<Code>,
    pub(crate) sha256: String,
    /// The config revision told to consumers when its config was read.
    pub(crate) config_seen: hearth_store::Revision,
}

/// A version's code, pre-instantiated for the engine that compiled it.
pub(crate) struct Code {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) pre: ProxyPre<HostState>,
    pub(crate) tier: Tier,
    /// Why Winch was not used for new bytes.
    pub(crate) fallback: Option<String>,
    pub(crate) functions: Option<hearth_wasm::Counts>,
    /// The shared engine, for code compiled around one.
    pub(crate) shared_engine: Option<Arc<runtime::SharedEngine>>,
    /// For Winch's code: how the background compile with Cranelift goes.
    pub(crate) optimizing: Mutex<Optimizing>,
}

/// The background compile of a version served by Winch's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Optimizing {
    /// Not started yet (started when the code is installed).
    Pending,
    Running,
    /// It failed; the baseline code keeps serving.
    Failed(String),
}

impl Code {
    fn new(runtime: &Runtime, compiled: &runtime::Compiled, pre: ProxyPre<HostState>) -> Code {
        Code {
            engine: runtime.engine(compiled.tier).clone(),
            pre,
            tier: compiled.tier,
            fallback: compiled.fallback.clone(),
            functions: compiled.functions,
            shared_engine: compiled.engine.clone(),
            optimizing: Mutex::new(Optimizing::Pending),
        }
    }

    fn tiering(&self) -> Tiering {
        let functions = self.functions.map(|c| FunctionCounts { hits: c.hits, misses: c.misses });
        match self.tier {
            Tier::Optimized => Tiering {
                state: TierState::Optimized,
                compiler: "cranelift".into(),
                note: self.fallback.clone().or_else(|| {
                    self.shared_engine.as_ref().map(|engine| {
                        format!(
                            "Its engine ({:.1} MiB of code, sha256 {}…) is compiled once for every version built on it; only the rest was compiled for this one.",
                            engine.size as f64 / (1 << 20) as f64,
                            &engine.sha256[..12]
                        )
                    })
                }),
                functions,
            },
            Tier::Baseline => {
                let (state, note) = match &*lock(&self.optimizing) {
                    Optimizing::Failed(why) => (
                        TierState::Baseline,
                        Some(format!(
                            "Cranelift could not compile it ({why}); Winch's code keeps serving. Deploy again to retry."
                        )),
                    ),
                    Optimizing::Pending | Optimizing::Running => (TierState::Optimizing, None),
                };
                Tiering { state, compiler: "winch".into(), note, functions }
            }
        }
    }
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apps").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

impl Apps {
    /// Serves `host` on the ingress with `handler`, for requests that no
    /// app route matches (an app routed to that host wins).
    pub fn set_hook(&self, host: &str, handler: crate::hooks::HookHandler) {
        let mut hooks = HashMap::clone(&self.inner.hooks.load());
        hooks.insert(host.to_ascii_lowercase(), handler);
        self.inner.hooks.store(Arc::new(hooks));
    }

    /// Sets up the runtime and the directories. Nothing is loaded until
    /// [`Apps::run`] starts.
    pub fn new(
        store: Arc<dyn Store>,
        config: hearth_config::Config,
        options: Options,
    ) -> Result<Apps, Error> {
        let blobs_dir = options.data_dir.join("apps").join("blobs");
        hearth_wasm::create_private_dir(&blobs_dir)?;
        let runtime = Runtime::new(&options.cache_dir, options.max_instances, options.ceiling)?;
        let deliveries = hearth_triggers::delivery::Deliveries::new(store.clone());
        let activity = options.activity.clone();
        Ok(Apps {
            inner: Arc::new(Inner {
                store,
                config,
                options,
                blobs_dir,
                runtime,
                loaded: Mutex::default(),
                table: ArcSwap::from_pointee(Table::default()),
                logs: Mutex::default(),
                log_tap: broadcast::channel(crate::logs::TAP_BACKLOG).0,
                locks: Mutex::default(),
                gc: tokio::sync::RwLock::new(()),
                builds: tokio::sync::Mutex::new(()),
                ready: watch::channel(false).0,
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                ingress_port: Mutex::new(None),
                hooks: arc_swap::ArcSwap::from_pointee(HashMap::new()),
                deliveries,
                upstreams: Arc::new(crate::ingress::Upstreams::new(activity)),
                traffic: crate::traffic::Traffic::default(),
                optimizes: Mutex::default(),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        Stats {
            compiles: inner.runtime.compiles.load(Ordering::Relaxed),
            cache_loads: inner.runtime.cache_loads.load(Ordering::Relaxed),
            requests: inner.requests.load(Ordering::Relaxed),
            failures: inner.failures.load(Ordering::Relaxed),
            pooling: inner.runtime.pooling,
        }
    }

    /// Every line any app writes from now on, with the app's name: what
    /// the alert rules over logs read.
    pub fn tap_logs(&self) -> broadcast::Receiver<(Arc<str>, LogLine)> {
        self.inner.log_tap.subscribe()
    }

    /// Requests routed to each app's routes so far (cumulative since the
    /// daemon started), with their errors and latencies.
    pub fn traffic(&self) -> Vec<crate::traffic::RouteTraffic> {
        self.inner.traffic.snapshot()
    }

    /// Requests the ingress proxied to services, by service and outcome
    /// (`answered`, `server_error`, `failed`, `no_instance`, `upgraded`).
    pub fn service_requests(&self) -> Vec<(String, &'static str, u64)> {
        self.inner.upstreams.counts()
    }

    /// Resolves once [`Apps::run`] has loaded every app from the store.
    pub async fn ready(&self) {
        let mut rx = self.inner.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub(crate) fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Serves the ingress on `listener` under `limits` (timeouts and
    /// connection caps) until `shutdown`, then lets requests in flight
    /// finish (for up to 10 s). Requests get 503 until [`Apps::run`] has
    /// loaded the apps from the store, so run both.
    pub async fn serve_ingress(
        &self,
        listener: TcpListener,
        limits: hearth_listen::Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        crate::ingress::serve(self.clone(), listener, limits, shutdown).await
    }

    /// Loads every app from the store, then follows the store until
    /// `shutdown`, so that changes made by another daemon on the same store
    /// are served here too.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.migrate_secrets().await {
            tracing::warn!(error = %chain(&e), "Cannot move apps' secrets into config; they stay where they were.");
        }
        let triggers = tokio::spawn(crate::triggers::run(self.clone(), shutdown.clone()));
        let services = tokio::spawn(crate::ingress::follow_services(self.clone(), shutdown.clone()));
        let config = tokio::spawn(self.clone().follow_config(shutdown.clone()));
        self.follow(&mut shutdown).await;
        let _ = triggers.await;
        let _ = services.await;
        let _ = config.await;
        // No background compile begins from now on. The one running is
        // given a few seconds to end and write its cache; past them it is
        // left to end with the process (it runs at a low priority, so on a
        // busy machine it may take a minute), and the next start compiles
        // that version again.
        self.inner.stopping.store(true, Ordering::Relaxed);
        let optimizes = std::mem::take(&mut *lock(&self.inner.optimizes));
        let until = tokio::time::Instant::now() + STOP_WAITS_FOR_COMPILES;
        for optimize in optimizes {
            if tokio::time::timeout_at(until, optimize).await.is_err() {
                tracing::info!(
                    "Stopping without waiting for a background compile; it is done again at the next start."
                );
                break;
            }
        }
        // Compiled components are cached in the background; finish writing
        // them so that the next start finds them.
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || inner.runtime.flush_writes()).await;
    }

    /// Makes an earlier version (or `to`) the one serving. No new version is
    /// created; a later deploy continues the numbering.
    pub async fn rollback(&self, name: &str, to: Option<u32>) -> Result<Version, Error> {
        validate_name(name)?;
        let guard = self.app_lock(name);
        let _held = guard.lock().await;
        let (mut app, revision) = self.find(name).await?.ok_or_else(|| Error::NotFound(name.to_owned()))?;
        let target = match to {
            Some(number) => app.version(number).cloned().ok_or_else(|| Error::VersionNotFound {
                name: name.to_owned(),
                version: number,
                available: app.numbers(),
            })?,
            None => app
                .versions
                .iter()
                .filter(|v| v.number < app.active)
                .max_by_key(|v| v.number)
                .cloned()
                .ok_or_else(|| Error::NoEarlierVersion(name.to_owned()))?,
        };
        let added = self.added_triggers(name).await?;
        crate::triggers::check_clash(name, &target.manifest.triggers(), &added)?;
        let (loaded, _) = self.load(&app, &target).await?;
        let from = app.active;
        app.active = target.number;
        app.updated_at = now_ms();
        self.write(&app, revision).await?;
        self.install(name, self.routes_of(&app), Ok(loaded), crate::triggers::guards(&app, &added));
        self.log(name).push(
            target.number,
            LogStream::Hearth,
            format!("Rolled back from version {from} to version {}.", target.number),
        );
        tracing::info!(app = name, from, to = target.number, "Rolled back app.");
        Ok(target)
    }

    /// The domain every app and service answers under, as `NAME.DOMAIN`.
    pub fn domain(&self) -> &str {
        &self.inner.options.domain
    }

    /// Replaces an app's custom routes.
    pub async fn set_routes(&self, name: &str, routes: Vec<Route>) -> Result<AppInfo, Error> {
        validate_name(name)?;
        let guard = self.app_lock(name);
        let _held = guard.lock().await;
        let (mut app, revision) = self.find(name).await?.ok_or_else(|| Error::NotFound(name.to_owned()))?;
        let default = Route::default_for(name, &self.inner.options.domain);
        let mut routes = normalise_routes(routes);
        routes.retain(|r| *r != default);
        self.check_routes(name, &routes).await?;
        app.routes = routes;
        app.updated_at = now_ms();
        self.write(&app, revision).await?;
        let current = lock(&self.inner.loaded).get(name).map(|e| (e.serving.clone(), e.guards.clone()));
        if let Some((serving, guards)) = current {
            self.install(name, self.routes_of(&app), serving, guards);
        }
        Ok(self.info(app))
    }

    /// Removes an app: its record, its versions' code and its log. Its
    /// key-value data and secrets are kept, so deploying the same name again
    /// finds them; [`Apps::delete_data`] deletes the data.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        validate_name(name)?;
        let guard = self.app_lock(name);
        let _held = guard.lock().await;
        if self.find(name).await?.is_none() {
            return Err(Error::NotFound(name.to_owned()));
        }
        // The record and what its triggers keep go together: a crash
        // leaves either the whole app or none of it.
        let txn = crate::triggers::delete_ops(name)
            .into_iter()
            .fold(Txn::new().and_then(Op::Delete { key: record::key(name) }), Txn::and_then);
        self.inner.store.txn(txn).await?;
        self.uninstall(name);
        lock(&self.inner.logs).remove(name);
        tracing::info!(app = name, "Removed app.");
        self.collect_garbage().await;
        Ok(())
    }

    /// Deletes an app's key-value data, every store of it.
    pub async fn delete_data(&self, name: &str) -> Result<(), Error> {
        validate_name(name)?;
        let txn = Txn::new().and_then(Op::DeletePrefix { prefix: format!("{}{name}/", record::DATA) });
        self.inner.store.txn(txn).await?;
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<AppInfo>, Error> {
        let range = self.inner.store.range(record::RECORDS).await?;
        range
            .kvs
            .iter()
            .map(|kv| {
                let name = &kv.key[record::RECORDS.len()..];
                serde_json::from_slice(&kv.value)
                    .map(|app| self.info(app))
                    .map_err(|e| Error::Corrupt(name.to_owned(), e))
            })
            .collect()
    }

    pub async fn get(&self, name: &str) -> Result<AppInfo, Error> {
        validate_name(name)?;
        let (app, _) = self.find(name).await?.ok_or_else(|| Error::NotFound(name.to_owned()))?;
        Ok(self.info(app))
    }

    /// The kept versions, oldest first, and the active one's number.
    pub async fn versions(&self, name: &str) -> Result<(Vec<Version>, u32), Error> {
        let info = self.get(name).await?;
        Ok((info.app.versions, info.app.active))
    }

    /// The app's kept log lines, and a receiver for the lines that follow
    /// (closed when the app is removed).
    pub async fn logs(&self, name: &str) -> Result<(Vec<LogLine>, broadcast::Receiver<LogLine>), Error> {
        validate_name(name)?;
        if !lock(&self.inner.loaded).contains_key(name) && self.find(name).await?.is_none() {
            return Err(Error::NotFound(name.to_owned()));
        }
        Ok(self.log(name).snapshot())
    }

    fn info(&self, app: App) -> AppInfo {
        let (serving, error, tier) = match lock(&self.inner.loaded).get(&app.name).map(|e| &e.serving) {
            Some(Ok(loaded)) => (Some(loaded.ctx.version), None, Some(loaded.code.tiering())),
            Some(Err(e)) => (None, Some(e.clone()), None),
            None => (None, Some("not loaded yet".to_owned()), None),
        };
        AppInfo { urls: self.urls(&app), app, serving, error, tier }
    }

    fn urls(&self, app: &App) -> Vec<String> {
        let port = lock(&self.inner.ingress_port).unwrap_or(8080);
        let port = if port == 80 { String::new() } else { format!(":{port}") };
        self.routes_of(app)
            .iter()
            .map(|r| format!("http://{}{port}{}", r.host, if r.path == "/" { "/" } else { r.path.as_str() }))
            .collect()
    }

    /// The default route and the custom ones.
    pub(crate) fn routes_of(&self, app: &App) -> Vec<Route> {
        let mut routes = vec![Route::default_for(&app.name, &self.inner.options.domain)];
        routes.extend(app.routes.iter().cloned());
        routes
    }

    async fn check_routes(&self, name: &str, routes: &[Route]) -> Result<(), Error> {
        let mine: Vec<Route> = std::iter::once(Route::default_for(name, &self.inner.options.domain))
            .chain(routes.iter().cloned())
            .collect();
        for other in self.list().await? {
            if other.app.name == name {
                continue;
            }
            for route in self.routes_of(&other.app) {
                if mine.contains(&route) {
                    return Err(Error::RouteTaken { route: route.to_string(), owner: other.app.name });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The version `name` serves here, if it serves one.
    pub(crate) fn serving(&self, name: &str) -> Option<Arc<Loaded>> {
        lock(&self.inner.loaded).get(name).and_then(|e| e.serving.clone().ok())
    }

    pub(crate) async fn find(&self, name: &str) -> Result<Option<(App, u64)>, Error> {
        let Some(kv) = self.inner.store.get(&record::key(name)).await? else { return Ok(None) };
        let app = serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt(name.to_owned(), e))?;
        Ok(Some((app, kv.mod_revision)))
    }

    /// Writes the record if it is still at `revision` (0: absent).
    async fn write(&self, app: &App, revision: u64) -> Result<(), Error> {
        self.write_holding(app, revision, None).await
    }

    /// [`Apps::write`], and if `shared` is given, only while that shared
    /// copy of the new version's bytes is in the store (it holds it against
    /// another host's garbage collection; see `blobs::Shared::hold`). Should
    /// the copy have gone in between, the deploy fails as contended and a
    /// retry shares it again.
    async fn write_holding(
        &self,
        app: &App,
        revision: u64,
        shared: Option<hearth_wasm::blobs::Shared>,
    ) -> Result<(), Error> {
        let key = record::key(&app.name);
        let value = serde_json::to_vec(app).map_err(|e| Error::Corrupt(app.name.clone(), e))?;
        let compare =
            if revision == 0 { Compare::missing(&key) } else { Compare::mod_revision(&key, revision) };
        let mut txn = Txn::new().when(compare).and_then(Op::Put { key, value, lease: None });
        if let Some(shared) = shared {
            txn = shared.hold(txn);
        }
        if self.inner.store.txn(txn).await?.succeeded {
            Ok(())
        } else {
            Err(Error::Contended(app.name.clone()))
        }
    }

    pub(crate) fn install(
        &self,
        name: &str,
        routes: Vec<Route>,
        serving: Result<Arc<Loaded>, String>,
        guards: Guards,
    ) {
        let installed = serving.as_ref().ok().cloned();
        {
            let mut loaded = lock(&self.inner.loaded);
            loaded.insert(name.to_owned(), Entry { routes, serving, guards });
            self.publish(&loaded);
        }
        if let Some(installed) = installed {
            self.catch_up_config(name, &installed);
            self.optimize_later(name, &installed);
        }
    }

    fn uninstall(&self, name: &str) {
        let mut loaded = lock(&self.inner.loaded);
        if loaded.remove(name).is_some() {
            self.publish(&loaded);
        }
    }

    /// Builds and swaps in a new routing table. Called with `loaded` locked,
    /// so tables are published in the order of the changes.
    fn publish(&self, loaded: &BTreeMap<String, Entry>) {
        self.inner.table.store(Arc::new(Table::build(loaded, &self.inner.traffic)));
    }

    pub(crate) fn app_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.locks).entry(name.to_owned()).or_default().clone()
    }

    pub(crate) fn log(&self, name: &str) -> Arc<AppLog> {
        lock(&self.inner.logs)
            .entry(name.to_owned())
            .or_insert_with(|| AppLog::tapped(name, self.inner.log_tap.clone()))
            .clone()
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.inner.blobs_dir.join(format!("{sha256}.wasm"))
    }

    /// Deletes blobs and compiled artifacts no kept version uses, and,
    /// when the store is shared, the shared copies of those blobs (unless
    /// a record written since the read below names one again).
    async fn collect_garbage(&self) {
        let _exclusive = self.inner.gc.write().await;
        let Ok(range) = self.inner.store.range(record::RECORDS).await else { return };
        let Ok(apps) = range
            .kvs
            .iter()
            .map(|kv| serde_json::from_slice::<App>(&kv.value))
            .collect::<Result<Vec<_>, _>>()
        else {
            return;
        };
        let keep: HashSet<String> =
            apps.iter().flat_map(|a| a.versions.iter().map(|v| v.sha256.clone())).collect();
        let blobs = self.inner.blobs_dir.clone();
        let unused = {
            let keep = keep.clone();
            tokio::task::spawn_blocking(move || {
                let Ok(entries) = std::fs::read_dir(&blobs) else { return Vec::new() };
                entries
                    .flatten()
                    .filter_map(|entry| {
                        let name = entry.file_name();
                        let sha = name.to_str()?.strip_suffix(".wasm")?;
                        (!keep.contains(sha)).then(|| sha.to_owned())
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default()
        };
        let mut gone = Vec::new();
        for sha in unused {
            if self.inner.options.shared {
                let unshared = hearth_wasm::blobs::unshare_unused(
                    &*self.inner.store,
                    record::BLOBS,
                    &sha,
                    range.revision,
                );
                if let Err(e) = unshared.await {
                    // The local copy stays too, so the next collection
                    // finds the blob again and tries again.
                    tracing::warn!(sha256 = sha, error = %chain(&e), "Cannot remove an unused component from the store.");
                    continue;
                }
            }
            gone.push(self.blob_path(&sha));
        }
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for path in gone {
                let _ = std::fs::remove_file(path);
            }
            inner.runtime.prune(&keep);
        })
        .await;
    }
}

/// Drops the oldest versions beyond `max`, never the active one. Returns
/// whether any went.
fn prune_versions(app: &mut App, max: usize) -> bool {
    let before = app.versions.len();
    while app.versions.len() > max.max(1) {
        let Some(i) = app.versions.iter().position(|v| v.number != app.active) else { break };
        app.versions.remove(i);
    }
    app.versions.len() != before
}

fn normalise_routes(mut routes: Vec<Route>) -> Vec<Route> {
    routes.sort();
    routes.dedup();
    routes
}

/// Resolves when `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(number: u32) -> Version {
        Version {
            number,
            sha256: format!("{number:064}"),
            size: 1,
            created_at: 0,
            manifest: Manifest::default(),
            manifest_text: None,
            source: None,
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_active() {
        let mut app = App {
            name: "a".into(),
            active: 2,
            routes: vec![],
            versions: (1..=6).map(version).collect(),
            created_at: 0,
            updated_at: 0,
        };
        assert!(prune_versions(&mut app, 3));
        let numbers: Vec<u32> = app.versions.iter().map(|v| v.number).collect();
        assert_eq!(numbers, [2, 5, 6]);
        assert!(!prune_versions(&mut app, 3));
    }
}
