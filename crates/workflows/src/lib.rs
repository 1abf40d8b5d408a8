//! hearth's durable workflows, and the triggers that start them.
//!
//! A workflow is a WebAssembly component of the `hearth:workflow` world
//! (`wit/hearth-workflow/workflow.wit`): it exports `run(input) -> result`
//! and imports `durable`, the host calls whose results are recorded: sleep,
//! wait for a signal, an HTTP activity, now, random, log, child workflows,
//! its config (scope `workflow:NAME`; a secret it reads is recorded sealed
//! with the daemon's config key, never in clear).
//!
//! **Durability by journal and replay.** Every completed host call is
//! appended to the run's journal in the store (a compare-and-swap on the
//! journal slot and on the run record) before the guest sees its result.
//! When a run must wait, its instance is dropped and the run record says
//! what it waits for; a timer, a signal or a child's end wakes it, and a
//! fresh instance replays `run` from the start against the journal, then
//! carries on live. A guest that calls something other than what its
//! journal records at a step is failed with that step in the message. Runs
//! stay on the version they started on.
//!
//! - `journal`: calls, results, the replay cursor and divergence.
//! - [`record`]: definitions, runs, waits, signals as store records.
//! - `runtime`: the engine, compilation through `hearth-wasm`'s on-disk
//!   cache, deploy checks.
//! - `host`: what one execution's instance sees.
//! - `service`: [`Workflows`], the handle: deploy, start, signal, cancel, and
//!   the executor that wakes runs (timers, signals, children, restarts).
//! - [`triggers`]: webhooks, cron and store events that start runs
//!   (schedules and signatures come from `hearth-triggers`).

mod host;
pub mod journal;
mod outbound;
pub mod record;
mod runtime;
mod service;
pub mod triggers;

pub use journal::{Call, Entry, Recorded};
pub use record::{Definition, Run, RunDetail, Signal, Status, Version, Wait, WaitKind};
pub use service::{Deployed, Options, StartRequest, Started, Workflows};
pub use triggers::{Spec as TriggerSpec, Trigger};
pub use triggers::{Triggers, WebhookReply};

/// What can go wrong with a workflow. Messages say what was wrong and what
/// to do; [`Error::kind`] and [`Error::code`] let the API map each onto a
/// status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("workflow {0:?} does not exist; list workflows with `hearth workflow ls --defs`")]
    NotFound(String),

    #[error(
        "workflow {workflow:?} has no trigger {id:?}; its triggers are [{ids}] (see `hearth workflow trigger ls {workflow}`)"
    )]
    TriggerNotFound { workflow: String, id: String, ids: String },

    #[error("run {0:?} does not exist; list runs with `hearth workflow ls`")]
    RunNotFound(String),

    #[error("{0}")]
    Invalid(String),

    #[error("run {id:?} already exists as a run of {existing:?}, not {asked:?}: pick another --id")]
    IdTaken { id: String, existing: String, asked: String },

    #[error("run {id:?} has already ended ({status}); it takes no more signals")]
    Ended { id: String, status: &'static str },

    #[error(
        "the upload is not a WebAssembly component: build the workflow for wasm32-wasip2 (`cargo build --release --target wasm32-wasip2`) and deploy the .wasm file"
    )]
    NotComponent,

    #[error(
        "the upload is {size} bytes, over the limit of {limit} bytes: build in release mode and strip debug info"
    )]
    TooLarge { size: usize, limit: usize },

    #[error("the component is not valid: {0}")]
    InvalidComponent(String),

    #[error(
        "the component does not export `run: func(input: string) -> result<string, string>`: implement the `hearth:workflow/workflow` world (wit/hearth-workflow/workflow.wit)"
    )]
    NoRun,

    #[error(
        "the component imports {0}, which a workflow cannot use: workflows get WASI 0.2 and hearth:workflow/durable@0.1.0"
    )]
    UnsupportedImport(String),

    #[error("hearth.toml is not valid: {0}")]
    Manifest(String),

    #[error("the record of {0:?} kept changing underneath; try again")]
    Contended(String),

    #[error("the record {0:?} is unreadable")]
    Corrupt(String, #[source] serde_json::Error),

    #[error(
        "the component {sha256} of workflow {workflow:?} is missing from {dir} and not shared in the store: deploy the workflow again"
    )]
    BlobMissing { workflow: String, sha256: String, dir: std::path::PathBuf },

    /// The copy of a component shared through the store (several hosts on
    /// one store) could not be written or read, or was corrupt.
    #[error(transparent)]
    Shared(#[from] hearth_wasm::blobs::Error),

    #[error(transparent)]
    Store(#[from] hearth_store::Error),

    #[error("cannot read or write {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the WebAssembly runtime cannot start: {0}")]
    Runtime(String),

    #[error("the workflow's config cannot be read now: {0}")]
    Config(String),
}

/// How an [`Error`] maps onto a response, for the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Invalid,
    Conflict,
    TooLarge,
    Unavailable,
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) | Error::RunNotFound(_) | Error::TriggerNotFound { .. } => ErrorKind::NotFound,
            Error::IdTaken { .. } | Error::Ended { .. } => ErrorKind::Conflict,
            Error::Invalid(_)
            | Error::NotComponent
            | Error::InvalidComponent(_)
            | Error::NoRun
            | Error::UnsupportedImport(_)
            | Error::Manifest(_) => ErrorKind::Invalid,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::Contended(_) | Error::Config(_) => ErrorKind::Unavailable,
            Error::Store(hearth_store::Error::Closed)
            | Error::Shared(
                hearth_wasm::blobs::Error::Store(hearth_store::Error::Closed)
                | hearth_wasm::blobs::Error::Contended(_),
            ) => ErrorKind::Unavailable,
            Error::Store(_)
            | Error::Shared(_)
            | Error::Corrupt(..)
            | Error::BlobMissing { .. }
            | Error::Io { .. }
            | Error::Runtime(_) => ErrorKind::Internal,
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "workflow_not_found",
            Error::TriggerNotFound { .. } => "trigger_not_found",
            Error::RunNotFound(_) => "run_not_found",
            Error::Invalid(_) => "invalid",
            Error::IdTaken { .. } => "run_id_taken",
            Error::Ended { .. } => "run_ended",
            Error::NotComponent => "not_component",
            Error::TooLarge { .. } => "too_large",
            Error::InvalidComponent(_) => "invalid_component",
            Error::NoRun => "no_run_export",
            Error::UnsupportedImport(_) => "unsupported_import",
            Error::Manifest(_) => "invalid_manifest",
            Error::Contended(_) => "contended",
            Error::Corrupt(..) => "corrupt",
            Error::BlobMissing { .. } => "blob_missing",
            Error::Shared(e) => match e {
                hearth_wasm::blobs::Error::Corrupt { .. } => "blob_corrupt",
                hearth_wasm::blobs::Error::Contended(_) => "contended",
                hearth_wasm::blobs::Error::Store(_) => "store",
                hearth_wasm::blobs::Error::BadHash(_) => "internal",
            },
            Error::Store(_) => "store",
            Error::Io { .. } => "io",
            Error::Runtime(_) => "runtime",
            Error::Config(_) => "config_unavailable",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_owned(), source }
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

/// `1.5s`, `3m`, `2h5m`, `4d`: short and readable.
pub fn human_duration(millis: u64) -> String {
    const S: u64 = 1000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    const D: u64 = 24 * H;
    match millis {
        m if m < S => format!("{m}ms"),
        m if m < M => {
            if m % S == 0 {
                format!("{}s", m / S)
            } else {
                format!("{:.1}s", m as f64 / S as f64)
            }
        }
        m if m < H => format!("{}m{}", m / M, nonzero(m % M / S, "s")),
        m if m < D => format!("{}h{}", m / H, nonzero(m % H / M, "m")),
        m => format!("{}d{}", m / D, nonzero(m % D / H, "h")),
    }
}

fn nonzero(n: u64, unit: &str) -> String {
    if n == 0 { String::new() } else { format!("{n}{unit}") }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_well() {
        for (ms, text) in [
            (5, "5ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (60_000, "1m"),
            (90_000, "1m30s"),
            (3_600_000, "1h"),
            (7_500_000, "2h5m"),
            (604_800_000, "7d"),
        ] {
            assert_eq!(human_duration(ms), text);
        }
    }
}
