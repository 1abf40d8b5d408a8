//! The API server: one router, served on the Unix socket as is and on TCP
//! behind bearer-token authentication.
//!
//! A request flows: connection → (TCP only) [`auth`] → panic guard → metrics →
//! router → a handler in [`kv`], [`events`], [`leases`] or [`system`] → the
//! store handle → a wire type from `hearth_client::types`, or an [`ApiError`].

pub(crate) mod alerts;

/// How many history entries a listing gives unless asked, and at most.
const DEFAULT_HISTORY: usize = 50;
const MAX_HISTORY: usize = 1000;

/// A history listing's `limit`, checked: 1 to [`MAX_HISTORY`].
pub(crate) fn history_limit(asked: Option<usize>) -> Result<usize, ApiError> {
    let limit = asked.unwrap_or(DEFAULT_HISTORY);
    if limit == 0 || limit > MAX_HISTORY {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit {limit} is out of range"),
            format!("use a limit from 1 to {MAX_HISTORY}"),
        ));
    }
    Ok(limit)
}
pub(crate) mod apps;
pub(crate) mod auth;
pub(crate) mod config;
pub(crate) mod events;
mod exec;
pub(crate) mod files;
pub(crate) mod hosts;
pub(crate) mod images;
pub(crate) mod kv;
pub(crate) mod leases;
pub(crate) mod machines;
pub(crate) mod networks;
pub(crate) mod series;
pub(crate) mod services;
pub(crate) mod system;
pub(crate) mod triggers;
pub(crate) mod ui;
pub(crate) mod workflows;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hearth_store::Store;
use tokio::sync::watch;

pub use auth::Token;

pub use self::events::EVENT_STREAM_LIFETIME;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Facts about the running daemon that `GET /v1/status` reports.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub tcp: Option<std::net::SocketAddr>,
    pub store_backend: hearth_client::types::StoreBackend,
    /// The store file, or the etcd endpoints.
    pub store_location: String,
    /// Where apps answer HTTP.
    pub ingress: Option<std::net::SocketAddr>,
    /// Where the host's DNS listener answers, or why it does not.
    pub dns: Result<std::net::SocketAddr, String>,
    /// Where the dashboard answers, or why it does not.
    pub ui: Result<std::net::SocketAddr, String>,
}

/// A word from a subsystem's record as the wire enum it stands for. The
/// records hold only words the wire knows; another one is a bug, and is
/// answered as one rather than passed on.
pub(crate) fn wire_word<T>(word: &str, what: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr<Err = hearth_client::types::UnknownValue>,
{
    word.parse().map_err(|e| {
        tracing::error!(field = what, error = %e, "A record holds a word the API does not know.");
        ApiError::internal(format!("{what}: {e}"))
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The subsystems' handles the API drives.
#[derive(Debug, Clone)]
pub struct Subsystems {
    pub machines: hearth_machines::Machines,
    pub networks: hearth_net::Networks,
    pub apps: hearth_apps::Apps,
    pub workflows: hearth_workflows::Workflows,
    pub services: hearth_services::Services,
    pub config: hearth_config::Config,
    pub monitor: hearth_monitor::Monitor,
    /// The daemon's time series (`/v1/metrics`).
    pub metrics: hearth_metrics::TimeSeries,
    /// The hosts sharing the store, this one among them.
    pub hosts: hearth_hosts::Hosts,
}

/// Everything a handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    machines: hearth_machines::Machines,
    networks: hearth_net::Networks,
    apps: hearth_apps::Apps,
    workflows: hearth_workflows::Workflows,
    services: hearth_services::Services,
    config: hearth_config::Config,
    monitor: hearth_monitor::Monitor,
    /// The time series (the `metrics` subsystem; `metrics` below is Prometheus).
    series: hearth_metrics::TimeSeries,
    hosts: hearth_hosts::Hosts,
    info: DaemonInfo,
    /// The dashboard's sign-in codes and sessions.
    sessions: crate::ui::session::Sessions,
    started: Instant,
    metrics: Metrics,
    deploys: crate::extract::DeployBudget,
    shutdown: watch::Receiver<bool>,
    /// How long an event stream lasts, in milliseconds
    /// ([`EVENT_STREAM_LIFETIME`] unless a test shortens it).
    event_stream_lifetime: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("info", &self.inner.info).finish_non_exhaustive()
    }
}

impl AppState {
    /// `shutdown` turns true when the daemon begins to stop; long-lived
    /// responses (event streams) end then, so graceful shutdown can finish.
    pub fn new(
        store: Arc<dyn Store>,
        subsystems: Subsystems,
        info: DaemonInfo,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let Subsystems {
            machines,
            networks,
            apps,
            workflows,
            services,
            config,
            monitor,
            metrics: series,
            hosts,
        } = subsystems;
        Self {
            inner: Arc::new(Inner {
                sessions: crate::ui::session::Sessions::new(store.clone()),
                store,
                machines,
                networks,
                apps: apps.clone(),
                workflows,
                services,
                config,
                monitor,
                series,
                hosts,
                info,
                started: Instant::now(),
                metrics: Metrics::new(apps.clone()),
                deploys: crate::extract::DeployBudget::new(crate::extract::DEPLOY_BYTES_IN_FLIGHT),
                shutdown,
                event_stream_lifetime: std::sync::atomic::AtomicU64::new(millis(
                    events::EVENT_STREAM_LIFETIME,
                )),
            }),
        }
    }

    /// Sets how long each event stream lasts before the server ends it
    /// (tests shorten it; see [`EVENT_STREAM_LIFETIME`]).
    pub fn set_event_stream_lifetime(&self, lifetime: Duration) {
        self.inner.event_stream_lifetime.store(millis(lifetime), std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn event_stream_lifetime(&self) -> Duration {
        Duration::from_millis(self.inner.event_stream_lifetime.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The store, for what outlives a request: a follower of an SSE stream.
    pub(crate) fn shared_store(&self) -> Arc<dyn Store> {
        self.inner.store.clone()
    }

    pub(crate) fn sessions(&self) -> &crate::ui::session::Sessions {
        &self.inner.sessions
    }

    pub(crate) fn machines(&self) -> &hearth_machines::Machines {
        &self.inner.machines
    }

    pub(crate) fn hosts(&self) -> &hearth_hosts::Hosts {
        &self.inner.hosts
    }

    pub(crate) fn networks(&self) -> &hearth_net::Networks {
        &self.inner.networks
    }

    pub(crate) fn apps(&self) -> &hearth_apps::Apps {
        &self.inner.apps
    }

    pub(crate) fn workflows(&self) -> &hearth_workflows::Workflows {
        &self.inner.workflows
    }

    pub(crate) fn config(&self) -> &hearth_config::Config {
        &self.inner.config
    }

    pub(crate) fn monitor(&self) -> &hearth_monitor::Monitor {
        &self.inner.monitor
    }

    pub(crate) fn services(&self) -> &hearth_services::Services {
        &self.inner.services
    }

    pub(crate) fn series(&self) -> &hearth_metrics::TimeSeries {
        &self.inner.series
    }

    /// The bytes of deploy bodies the daemon may hold at once.
    pub(crate) fn deploys(&self) -> &crate::extract::DeployBudget {
        &self.inner.deploys
    }

    /// Where the ingress (apps and webhooks) listens.
    pub(crate) fn ingress(&self) -> Option<std::net::SocketAddr> {
        self.inner.info.ingress
    }

    /// Resolves when the daemon begins to shut down.
    pub(crate) fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.shutdown.clone();
        async move {
            // An error means the sender is gone: the daemon is stopping too.
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }
}

/// The API router, with no authentication: for the Unix socket, which the
/// file system protects (mode 0600 in a 0700 directory). Its caller is the
/// daemon's owner.
pub fn router(state: AppState) -> Router {
    api(state).layer(axum::Extension(auth::Caller::Owner))
}

/// Every route of the API, for a listener to put its authentication in
/// front of: that layer says who the [`auth::Caller`] is.
pub(crate) fn api(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(system::status))
        .route("/v1/openapi.json", get(system::openapi))
        .route("/metrics", get(system::metrics))
        .route("/v1/kv", get(kv::list))
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/{name}", get(hosts::get).delete(hosts::forget))
        .route("/v1/hosts/{name}/drain", post(hosts::drain).delete(hosts::undrain))
        .route("/v1/leases", get(leases::list).post(leases::grant))
        .route("/v1/leases/{id}", axum::routing::delete(leases::revoke))
        .route("/v1/leases/{id}/keepalive", post(leases::keep_alive))
        .route("/v1/events", get(events::events))
        .route("/v1/machines", get(machines::list).post(machines::create))
        .route("/v1/machines/{name}", get(machines::get).delete(machines::remove))
        .route("/v1/machines/{name}/start", post(machines::start))
        .route("/v1/machines/{name}/stop", post(machines::stop))
        .route("/v1/machines/{name}/sleep", post(machines::sleep))
        .route("/v1/machines/{name}/wake", post(machines::wake))
        .route("/v1/machines/{name}/triggers", get(triggers::machine_list).post(triggers::machine_add))
        .route("/v1/machines/{name}/triggers/{id}", axum::routing::delete(triggers::machine_remove))
        .route("/v1/machines/{name}/logs", get(machines::logs))
        .route("/v1/machines/{name}/exec", get(machines::exec))
        .route("/v1/machines/{name}/files", get(files::get).put(files::put))
        .route("/v1/machines/{name}/snapshot", post(machines::snapshot))
        .route("/v1/snapshots", get(machines::snapshots))
        .route("/v1/snapshots/{name}", axum::routing::delete(machines::remove_snapshot))
        .route("/v1/snapshots/{name}/restore", post(machines::restore))
        .route("/v1/networks", get(networks::list).post(networks::create))
        .route("/v1/networks/{name}", get(networks::get).delete(networks::remove))
        .route("/v1/labs", get(crate::labs::list))
        .route("/v1/labs/{name}", get(crate::labs::get).put(crate::labs::put).delete(crate::labs::remove))
        .route("/v1/faults", get(networks::faults).post(networks::create_fault).delete(networks::heal_all))
        .route("/v1/faults/{id}", axum::routing::delete(networks::heal))
        .route("/v1/services", get(services::list).post(services::create))
        .route("/v1/services/{name}", get(services::get).delete(services::remove))
        .route("/v1/services/{name}/count", axum::routing::put(services::scale))
        .route("/v1/services/{name}/deploy", post(services::deploy))
        .route("/v1/services/{name}/endpoints", get(services::endpoints))
        .route("/v1/services/{name}/history", get(services::history))
        .route("/v1/services/{name}/instances", post(services::register))
        .route("/v1/services/{name}/instances/{id}", axum::routing::delete(services::deregister))
        .route("/v1/services/{name}/instances/{id}/heartbeat", axum::routing::put(services::heartbeat))
        .route("/v1/apps", get(apps::list))
        .route("/v1/apps/{name}", get(apps::get).put(apps::deploy).delete(apps::remove))
        .route("/v1/apps/{name}/rollback", post(apps::rollback))
        .route("/v1/apps/{name}/source", get(apps::source).put(apps::deploy_source))
        .route("/v1/apps/{name}/secrets/{secret}", axum::routing::put(apps::set_secret))
        .route("/v1/apps/{name}/logs", get(apps::logs))
        .route("/v1/apps/{name}/triggers", get(triggers::app_list).post(triggers::app_add))
        .route("/v1/apps/{name}/triggers/{id}", axum::routing::delete(triggers::app_remove))
        .route("/v1/workflows", get(workflows::list))
        .route("/v1/workflows/{name}", get(workflows::get).put(workflows::deploy).delete(workflows::remove))
        .route("/v1/workflows/{name}/runs", post(workflows::start))
        .route("/v1/workflows/{name}/triggers", get(triggers::workflow_list).post(triggers::workflow_add))
        .route("/v1/workflows/{name}/triggers/{id}", axum::routing::delete(triggers::workflow_remove))
        .route("/v1/runs", get(workflows::runs))
        .route("/v1/runs/{id}", get(workflows::show))
        .route("/v1/runs/{id}/signals", post(workflows::signal))
        .route("/v1/runs/{id}/cancel", post(workflows::cancel))
        .route("/v1/runs/{id}/migrate", post(workflows::migrate))
        .route("/v1/runs/{id}/logs", get(workflows::logs))
        .route("/v1/runs/{id}/result", get(workflows::result))
        .route("/v1/alerts", get(alerts::list))
        .route("/v1/alerts/rules", get(alerts::rules).put(alerts::apply))
        .route("/v1/alerts/rules/{name}", axum::routing::put(alerts::set_rule).delete(alerts::remove_rule))
        .route("/v1/alerts/silences", get(alerts::silences).post(alerts::add_silence))
        .route("/v1/alerts/silences/{id}", axum::routing::delete(alerts::expire_silence))
        .route("/v1/alerts/history", get(alerts::history))
        .route("/v1/config", get(config::get))
        .route("/v1/config/entries", get(config::entries))
        .route("/v1/config/entries/{key}", axum::routing::put(config::set).delete(config::remove))
        .route("/v1/config/files", axum::routing::put(config::import))
        .route("/v1/config/history", get(config::history))
        .route("/v1/config/diff", get(config::diff))
        .route("/v1/config/rollback", post(config::rollback))
        .route(
            "/v1/config/schemas",
            get(config::schemas).put(config::set_schema).delete(config::remove_schema),
        )
        .route("/v1/config/key", get(config::key))
        .route("/v1/config/rekey", post(config::rekey))
        .route("/v1/config/watch", get(config::watch))
        .route("/v1/metrics", get(series::list))
        .route("/v1/metrics/query", get(series::query))
        .route("/v1/images", get(images::list))
        .route("/v1/images/pull", post(images::pull))
        .route("/v1/images/build", post(images::build))
        .route("/v1/images/{*name}", get(images::get).delete(images::remove))
        .route("/v1/ui/login-codes", post(ui::login_code))
        .route("/v1/ui/session", get(ui::session).delete(ui::sign_out))
        .route("/v1/ui/sessions", get(ui::sessions).delete(ui::revoke_all))
        .route("/v1/ui/sessions/{id}", axum::routing::delete(ui::revoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(utf8_path))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// The API router behind bearer-token authentication: for TCP.
pub fn router_with_token(state: AppState, token: Token) -> Router {
    api(state).layer(middleware::from_fn_with_state(token, auth::require_token))
}

/// Refuses a path that is not UTF-8 once percent-decoded, in the error
/// shape, before any handler (or axum's plain-text rejection) sees it.
async fn utf8_path(request: Request, next: Next) -> Response {
    if !crate::extract::decodes_to_utf8(request.uri().path()) {
        return ApiError::bad_request(
            "invalid_path",
            "the path is not valid UTF-8 once percent-decoded",
            "percent-encode each name as UTF-8; /v1/openapi.json gives each parameter's pattern",
        )
        .into_response();
    }
    next.run(request).await
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(
        format!("there is no endpoint {} {}", request.method(), request.uri().path()),
        "the API lives under /v1; /v1/openapi.json lists every endpoint",
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
        "/v1/openapi.json lists the methods each endpoint takes",
    )
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(error = what, "Request handler panicked.");
    ApiError::internal("the request failed inside the daemon").into_response()
}

/// Counts and times every request, labelled by route template (not by raw
/// path, so that keys in paths do not explode the label set).
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.inner.metrics.observe(method.as_str(), &route, status, started.elapsed());
    tracing::debug!(%method, route, status, elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "Request served.");
    response
}
