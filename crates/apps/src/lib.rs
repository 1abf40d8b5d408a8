//! hearth's apps subsystem: WebAssembly HTTP components, live in well under
//! a second, swapped with no dropped request.
//!
//! An app is a component that exports `wasi:http/incoming-handler` (the
//! `wasi:http/proxy` world). hearth keeps the heavy machinery: one wasmtime
//! engine with the pooling allocator, one HTTP ingress, the stores. Each
//! request gets a fresh instance from a pre-instantiated component, with a
//! CPU budget (epoch interruption), a memory limit and a wall-clock timeout,
//! so a misbehaving request cannot hurt other requests, apps or the daemon.
//!
//! - [`manifest`]: `hearth.toml`, what an app declares it needs (key-value
//!   stores, config, secrets, outbound hosts, limits).
//! - [`record`]: apps and their versions as records in the store; [`Route`]s.
//! - `runtime`: the engine (with the pooling allocator), compilation through
//!   `hearth-wasm`'s cache of compiled components, deploy-time checks of
//!   imports and exports.
//! - `split`: a component's large, unchanging engine module taken out of
//!   it, so that the runtime compiles it once for every component built on
//!   it (JavaScript handlers) and only the rest on each deploy.
//! - `host`: what a request's instance sees (WASI, `wasi:http` with an
//!   outbound allow-list, `wasi:keyvalue` over the store, `wasi:config`).
//! - [`outbound`]: outgoing requests checked against the address their host
//!   resolves to (loopback, link-local and the host's own addresses only
//!   where the manifest names them), and sent to that checked address.
//! - [`logs`]: each app's stdout/stderr and request log, in a ring.
//! - `ingress`: the HTTP server that routes by host and path prefix, and
//!   the routing table it reads.
//! - [`triggers`]: cron and store events that call an app's route, and
//!   webhooks that check a signature in front of one: specs, storage,
//!   guards and drivers, each a module of its own.
//! - [`source`]: handlers deployed as source (`hearth fn deploy`): a
//!   JavaScript or Python file built into a component with componentize-js
//!   or componentize-py, in a temporary directory, under a time limit and
//!   without a network.
//! - `secrets`: an app's secrets, and the config they resolve into.
//! - [`Apps`]: the service handle: deploy, versions, rollback, remove, logs,
//!   `run` (load from the store, follow it) and `serve_ingress`.
//!
//! State: an app's record lives at `apps/records/NAME`, its key-value data at
//! `apps/data/NAME/STORE/KEY`, its secrets at `apps/secrets/NAME/SECRET`. The
//! uploaded bytes are kept by content hash in `DATA_DIR/apps/blobs`, the
//! compiled artifacts in `CACHE_DIR/apps/compiled/ENGINE` (disposable: a
//! missing artifact is recompiled from the blob). When several hosts share
//! the store ([`Options::shared`]), a deploy also shares the bytes under
//! `apps/blobs/SHA256`, and a host that has no bytes for a version fetches
//! them from there, checked, into its own data dir.

pub mod hooks;
mod host;
mod ingress;
pub mod logs;
pub mod manifest;
pub mod outbound;
pub mod record;
mod runtime;
mod secrets;
mod service;
pub mod source;
mod split;
mod traffic;
pub mod triggers;

pub use logs::{LogLine, LogStream};
pub use manifest::{Limits, Manifest};
pub use record::{App, Route, Version};
pub use runtime::append_custom_section;
pub use service::{AppInfo, Apps, Deployed, FunctionCounts, Options, Stats, TierState, Tiering};
pub use traffic::RouteTraffic;
pub use triggers::{Spec as TriggerSpec, Trigger};

/// What can go wrong with an app. Messages are sentences that say what was
/// wrong and what to do; [`Error::kind`] and [`Error::code`] let the API map
/// each onto a status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("app {0:?} does not exist; list apps with `hearth app ls`")]
    NotFound(String),

    #[error(
        "app {app:?} has no trigger {id:?}; its triggers are [{ids}] (see `hearth app trigger ls {app}`)"
    )]
    TriggerNotFound { app: String, id: String, ids: String },

    #[error("app {name:?} has no version {version}; its versions are {available}")]
    VersionNotFound { name: String, version: u32, available: String },

    #[error("app {0:?} has no version before the active one to roll back to")]
    NoEarlierVersion(String),

    #[error("{0}")]
    Invalid(String),

    #[error(
        "the upload is not WebAssembly (it does not start with the `\\0asm` magic bytes): \
         deploy the .wasm file that `cargo build --target wasm32-wasip2` produces"
    )]
    NotWasm,

    #[error(
        "the upload is a core WebAssembly module, not a component: build for the wasm32-wasip2 \
         target (or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule,

    #[error(
        "the upload is WebAssembly of an unknown kind (header version {0:#x}); deploy a WASI 0.2 component"
    )]
    UnknownBinary(u32),

    #[error(
        "the upload is {size} bytes, over the limit of {limit} bytes: build in release mode \
         (and strip debug info) to make it smaller"
    )]
    TooLarge { size: usize, limit: usize },

    #[error("the component is not valid: {0}")]
    InvalidComponent(String),

    #[error(
        "the component does not export wasi:http/incoming-handler, so it cannot serve HTTP \
         (it exports {exports}): build it for the wasi:http/proxy world, e.g. with \
         `wasip2::http::proxy::export!`"
    )]
    NoHandler { exports: String },

    #[error("the component imports {import}, but hearth.toml does not declare {missing}: {fix}")]
    Undeclared { import: String, missing: &'static str, fix: &'static str },

    #[error(
        "the component imports {import}, which hearth does not provide; hearth provides \
         WASI 0.2 (wasi:cli, io, clocks, random, filesystem, sockets, http), \
         wasi:keyvalue@0.2.0-draft and wasi:config@0.2.0-rc.1"
    )]
    UnsupportedImport { import: String },

    #[error("hearth.toml is not valid: {0}")]
    Manifest(String),

    #[error("invalid route {route:?}: {reason}")]
    InvalidRoute { route: String, reason: String },

    #[error("route {route} already belongs to app {owner:?}: remove it from that app first, or pick another")]
    RouteTaken { route: String, owner: String },

    #[error(
        "hearth.toml declares the secret {secret:?} but it has no value: set it with \
         `hearth app secret set {app} {secret}`, then deploy again"
    )]
    MissingSecret { app: String, secret: String },

    #[error("the record of app {0:?} kept changing underneath; try again")]
    Contended(String),

    #[error("the record of app {0:?} is unreadable")]
    Corrupt(String, #[source] serde_json::Error),

    #[error(
        "the trigger {id} of app {app:?} is unreadable in the store; remove it with `hearth app trigger rm {app} {id}`"
    )]
    CorruptTrigger {
        app: String,
        id: String,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "the uploaded component {sha256} of app {app:?} is missing from {dir} and not shared in the store: deploy the app again"
    )]
    BlobMissing { app: String, sha256: String, dir: std::path::PathBuf },

    /// The copy of a component shared through the store (several hosts on
    /// one store) could not be written or read, or was corrupt.
    #[error(transparent)]
    Shared(#[from] hearth_wasm::blobs::Error),

    #[error(transparent)]
    Store(#[from] hearth_store::Error),

    #[error(transparent)]
    Config(#[from] hearth_config::Error),

    #[error("cannot read or write {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the WebAssembly runtime cannot start: {0}")]
    Runtime(String),

    /// A handler's source did not build: the build tool's own words, with
    /// the file, line and column where it found the problem.
    #[error("{file} did not build:\n{message}\nfix it and deploy again; the serving version is untouched")]
    Build { file: String, message: String },

    /// A build ran past its time limit, or made more than it may.
    #[error("building {file} {why}; the serving version is untouched")]
    BuildStopped { file: String, why: String },

    /// The build tools for a language are not installed where the daemon
    /// looks for them.
    #[error(
        "{lang} handlers need {tool}, which is not installed in {dir}: run `make setup` (scripts/setup.sh) as the daemon's user, or point HEARTH_FN_TOOLS at where it is"
    )]
    NoToolchain { lang: &'static str, tool: &'static str, dir: std::path::PathBuf },

    #[error("internal error: {0}")]
    Internal(String),
}

/// How an [`Error`] maps onto a response, for the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 404: the app or version does not exist.
    NotFound,
    /// 400: the request (upload, manifest, route, name) is wrong.
    Invalid,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 413: the upload is too large.
    TooLarge,
    /// 503: try again.
    Unavailable,
    /// 500: hearth's fault.
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) | Error::VersionNotFound { .. } | Error::TriggerNotFound { .. } => {
                ErrorKind::NotFound
            }
            Error::NoEarlierVersion(_) | Error::RouteTaken { .. } | Error::MissingSecret { .. } => {
                ErrorKind::Conflict
            }
            Error::Invalid(_)
            | Error::NotWasm
            | Error::CoreModule
            | Error::UnknownBinary(_)
            | Error::InvalidComponent(_)
            | Error::NoHandler { .. }
            | Error::Undeclared { .. }
            | Error::UnsupportedImport { .. }
            | Error::Manifest(_)
            | Error::InvalidRoute { .. }
            | Error::Build { .. }
            | Error::BuildStopped { .. } => ErrorKind::Invalid,
            Error::NoToolchain { .. } => ErrorKind::Unavailable,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::Contended(_) => ErrorKind::Unavailable,
            Error::Store(hearth_store::Error::Closed)
            | Error::Shared(
                hearth_wasm::blobs::Error::Store(hearth_store::Error::Closed)
                | hearth_wasm::blobs::Error::Contended(_),
            ) => ErrorKind::Unavailable,
            Error::Store(_) | Error::Shared(_) => ErrorKind::Internal,
            Error::Config(e) => match e.code() {
                "invalid_field" | "schema_violation" | "undecryptable" => ErrorKind::Invalid,
                "not_found" => ErrorKind::NotFound,
                "busy" => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Error::Corrupt(..)
            | Error::CorruptTrigger { .. }
            | Error::BlobMissing { .. }
            | Error::Io { .. }
            | Error::Runtime(_)
            | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "app_not_found",
            Error::VersionNotFound { .. } => "version_not_found",
            Error::TriggerNotFound { .. } => "trigger_not_found",
            Error::NoEarlierVersion(_) => "no_earlier_version",
            Error::Invalid(_) => "invalid",
            Error::NotWasm => "not_wasm",
            Error::CoreModule => "core_module",
            Error::UnknownBinary(_) => "unknown_binary",
            Error::TooLarge { .. } => "too_large",
            Error::InvalidComponent(_) => "invalid_component",
            Error::NoHandler { .. } => "no_http_handler",
            Error::Undeclared { .. } => "undeclared_import",
            Error::UnsupportedImport { .. } => "unsupported_import",
            Error::Manifest(_) => "invalid_manifest",
            Error::InvalidRoute { .. } => "invalid_route",
            Error::RouteTaken { .. } => "route_taken",
            Error::MissingSecret { .. } => "missing_secret",
            Error::Contended(_) => "contended",
            Error::Corrupt(..) | Error::CorruptTrigger { .. } => "corrupt",
            Error::BlobMissing { .. } => "blob_missing",
            Error::Shared(e) => match e {
                hearth_wasm::blobs::Error::Corrupt { .. } => "blob_corrupt",
                hearth_wasm::blobs::Error::Contended(_) => "contended",
                hearth_wasm::blobs::Error::Store(_) => "store",
                hearth_wasm::blobs::Error::BadHash(_) => "internal",
            },
            Error::Store(_) => "store",
            Error::Config(e) => e.code(),
            Error::Io { .. } => "io",
            Error::Runtime(_) => "runtime",
            Error::Build { .. } => "build_failed",
            Error::BuildStopped { .. } => "build_stopped",
            Error::NoToolchain { .. } => "toolchain_missing",
            Error::Internal(_) => "internal",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_owned(), source }
    }
}

impl From<hearth_routing::InvalidRoute> for Error {
    fn from(e: hearth_routing::InvalidRoute) -> Self {
        Error::InvalidRoute { route: e.route, reason: e.reason }
    }
}

impl From<hearth_wasm::Error> for Error {
    fn from(e: hearth_wasm::Error) -> Self {
        match e {
            hearth_wasm::Error::Io { path, source } => Error::Io { path, source },
            other => Error::Runtime(chain(&other)),
        }
    }
}

pub(crate) use hearth_store::chain;

pub(crate) use hearth_triggers::now_ms;
