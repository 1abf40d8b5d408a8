//! The workflows service: deploys, runs, signals and cancels, and the
//! executor that brings waiting runs back.
//!
//! This file holds the handle, its options and what deploys and removes
//! workflows; `executor` follows the records and executes runs; `runs`
//! starts, signals, cancels, migrates and shows them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hearth_store::{Compare, LeaseId, Op, Store, Txn};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

use crate::record::{self, Definition, Run, Version, decode, encode};
use crate::runtime::{self, Runtime};
use crate::triggers::Triggers;
use crate::{Error, now_ms};

mod executor;
mod runs;

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Uploaded components are kept in `DATA_DIR/workflows/blobs`, by hash.
    pub data_dir: PathBuf,
    /// Compiled components are cached in `CACHE_DIR/workflows/compiled`.
    pub cache_dir: PathBuf,
    /// Largest accepted upload, in bytes.
    pub max_upload: usize,
    /// Executions at once; more wait their turn.
    pub concurrency: usize,
    /// CPU a workflow may use between two durable calls.
    pub cpu_budget: Duration,
    /// This executor's name among those sharing the store: its claims say
    /// it, so that a restart gives up the claims of its last life.
    pub executor: String,
    /// Whether other hosts share the store (etcd): then a deploy shares
    /// the component's bytes through it (`workflows/blobs/`), so that a
    /// run claimed by a host that never saw the deploy can execute. Off,
    /// the store holds no bytes; a host still looks there for bytes it is
    /// missing.
    pub shared: bool,
    /// This host's record of machines' traffic: a call to a service whose
    /// picked instance sleeps wakes its machine first, and counts as its
    /// activity (the daemon gives the networks service's).
    pub activity: hearth_routing::activity::Activity,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Options {
        Options {
            data_dir: data_dir.into(),
            cache_dir: cache_dir.into(),
            max_upload: 32 << 20,
            concurrency: 32,
            cpu_budget: Duration::from_secs(10),
            executor: "local".into(),
            shared: false,
            activity: Default::default(),
        }
    }
}

/// What a deploy did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployed {
    pub workflow: String,
    pub version: Version,
    /// False when the compiled component came from the cache.
    pub compiled: bool,
    pub duration_ms: f64,
}

/// What starts a run.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub workflow: String,
    pub input: String,
    /// Starting twice with one id starts one run.
    pub id: Option<String>,
    /// `cli`, `webhook`, `cron`, `event`, `child`...
    pub started_by: String,
    pub parent: Option<String>,
}

/// A run, and whether this call created it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    pub run: Run,
    pub created: bool,
}

/// One line of `workflow logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub time: u64,
    /// `log` (the durable log call) or `output` (stdout and stderr).
    pub source: String,
    pub text: String,
}

/// A cheap-to-clone handle to the workflows service.
#[derive(Clone)]
pub struct Workflows {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// What `config-get` reads, in scope `workflow:NAME`.
    config: hearth_config::Config,
    options: Options,
    blobs_dir: PathBuf,
    runtime: Runtime,
    http: ureq::Agent,
    /// The balancers of the services called as `NAME.service.hearth`.
    services: crate::outbound::Balancers,
    /// Runs being executed; `true` asks the execution to go again.
    active: Mutex<HashMap<String, bool>>,
    /// (when, run) of every timer and wait deadline.
    timers: Mutex<BTreeSet<(u64, String)>>,
    timers_changed: Notify,
    permits: Semaphore,
    /// Deploys serialise on this, so versions are numbered without races.
    deploys: tokio::sync::Mutex<()>,
    /// The executor's lease, once it has claimed a run, and the task that
    /// keeps it alive.
    lease: Mutex<Option<(LeaseId, tokio::task::JoinHandle<()>)>>,
    /// Every run's `log` lines as they are recorded, for log rules:
    /// `(workflow, line)`.
    log_tap: tokio::sync::broadcast::Sender<(Arc<str>, String)>,
    /// Runs this executor ended as failed, by workflow, since it started.
    failed: Mutex<BTreeMap<String, u64>>,
}

/// Lines the log tap's reader may fall behind before it misses some.
const TAP_BACKLOG: usize = 4096;

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Workflows {
    /// Sets up the runtime and the directories. No run executes until
    /// [`Workflows::run`] starts. `config` is what runs read with
    /// `config-get` (and what seals the secrets they read in the journal).
    pub fn new(
        store: Arc<dyn Store>,
        config: hearth_config::Config,
        options: Options,
    ) -> Result<Workflows, Error> {
        let blobs_dir = options.data_dir.join("workflows").join("blobs");
        hearth_wasm::create_private_dir(&blobs_dir)?;
        let runtime = Runtime::new(&options.cache_dir)?;
        let permits = Semaphore::new(options.concurrency.max(1));
        Ok(Workflows {
            inner: Arc::new(Inner {
                store,
                config,
                options,
                blobs_dir,
                runtime,
                http: crate::host::http_agent(),
                services: crate::outbound::Balancers::default(),
                active: Mutex::default(),
                timers: Mutex::default(),
                timers_changed: Notify::new(),
                log_tap: tokio::sync::broadcast::channel(TAP_BACKLOG).0,
                permits,
                deploys: tokio::sync::Mutex::new(()),
                lease: Mutex::default(),
                failed: Mutex::default(),
            }),
        })
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Every line a run logs (the durable `log` call) from now on, with
    /// its workflow's name, once: a replay logs nothing again. Standard
    /// output is not tapped: each execution replays the run from its
    /// start and writes it all again.
    pub fn tap_logs(&self) -> tokio::sync::broadcast::Receiver<(Arc<str>, String)> {
        self.inner.log_tap.subscribe()
    }

    pub(crate) fn tap(&self, workflow: &str, text: &str) {
        if self.inner.log_tap.receiver_count() == 0 {
            return;
        }
        let workflow: Arc<str> = Arc::from(workflow);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let _ = self.inner.log_tap.send((workflow.clone(), line.to_owned()));
        }
    }

    pub(crate) fn config(&self) -> &hearth_config::Config {
        &self.inner.config
    }

    pub(crate) fn http_agent(&self) -> ureq::Agent {
        self.inner.http.clone()
    }

    pub(crate) fn services(&self) -> &crate::outbound::Balancers {
        &self.inner.services
    }

    pub(crate) fn activity(&self) -> &hearth_routing::activity::Activity {
        &self.inner.options.activity
    }

    /// Runs this daemon's executor ended as failed, by workflow, since it
    /// started (cumulative; the metrics take the differences).
    pub fn failed_runs(&self) -> Vec<(String, u64)> {
        lock(&self.inner.failed).iter().map(|(name, n)| (name.clone(), *n)).collect()
    }

    pub(crate) fn count_failed(&self, workflow: &str) {
        *lock(&self.inner.failed).entry(workflow.to_owned()).or_default() += 1;
    }

    /// Runs being executed right now (for tests and `status`).
    pub fn executing(&self) -> usize {
        lock(&self.inner.active).len()
    }

    // ----------------------------------------------------------------------
    // Definitions

    /// Uploads, checks and compiles a workflow component, and makes it the
    /// version new runs start on. Runs already started stay on theirs.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        manifest: Option<String>,
    ) -> Result<Deployed, Error> {
        let started = Instant::now();
        record::validate_name(name)?;
        if bytes.len() > self.inner.options.max_upload {
            return Err(Error::TooLarge { size: bytes.len(), limit: self.inner.options.max_upload });
        }
        runtime::check_header(&bytes)?;
        let triggers = Triggers::parse(manifest.as_deref().unwrap_or(""))?;
        crate::outbound::from_manifest(manifest.as_deref().unwrap_or(""))?;
        let sha256 = hearth_wasm::sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let blob = self.inner.blobs_dir.join(format!("{sha256}.wasm"));
        let bytes = Arc::new(bytes);
        let (_, compiled) = {
            let (this, sha, bytes) = (self.clone(), sha256.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || this.inner.runtime.prepare(&sha, || Ok(bytes.to_vec())))
                .await
                .map_err(|e| Error::Runtime(format!("the compile task failed: {e}")))??
        };
        if !blob.is_file() {
            hearth_wasm::write_atomically(&blob, &bytes)?;
        }
        // Before the definition names it, so that any host that finds the
        // definition (and so any run of it) finds the bytes.
        if self.inner.options.shared {
            hearth_wasm::blobs::share(&*self.inner.store, record::BLOBS, &sha256, &bytes).await?;
        }
        let _guard = self.inner.deploys.lock().await;
        let key = record::def_key(name);
        for _ in 0..16 {
            let existing = self.inner.store.get(&key).await?;
            let now = now_ms();
            let (mut def, rev) = match &existing {
                Some(kv) => (decode::<Definition>(&kv.key, &kv.value)?, kv.mod_revision),
                None => (
                    Definition {
                        name: name.to_owned(),
                        versions: Vec::new(),
                        active: 0,
                        triggers: Triggers::default(),
                        created_at: now,
                        updated_at: now,
                    },
                    0,
                ),
            };
            let number = def.versions.iter().map(|v| v.number).max().unwrap_or(0) + 1;
            let version =
                Version { number, sha256: sha256.clone(), size, created_at: now, manifest: manifest.clone() };
            def.versions.push(version.clone());
            def.active = number;
            def.triggers = triggers.clone();
            def.updated_at = now;
            let txn = Txn::new().when(Compare::mod_revision(&key, rev)).and_then(Op::Put {
                key: key.clone(),
                value: encode(&def),
                lease: None,
            });
            if self.inner.store.txn(txn).await?.succeeded {
                return Ok(Deployed {
                    workflow: name.to_owned(),
                    version,
                    compiled,
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                });
            }
        }
        Err(Error::Contended(name.to_owned()))
    }

    pub async fn definitions(&self) -> Result<Vec<Definition>, Error> {
        let range = self.inner.store.range(record::DEFS).await?;
        range.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    pub async fn definition(&self, name: &str) -> Result<Definition, Error> {
        let key = record::def_key(name);
        match self.inner.store.get(&key).await? {
            Some(kv) => decode(&key, &kv.value),
            None => Err(Error::NotFound(name.to_owned())),
        }
    }

    /// Removes a workflow: no new runs start. Runs under way go on, on the
    /// version they started on.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        // Its triggers go with it, in the same transaction (no trigger
        // outlives its workflow, whatever happens between); its runs and
        // their journals stay.
        let key = record::def_key(name);
        let txn = hearth_store::Txn::new()
            .when(hearth_store::Compare::exists(key.as_str()))
            .and_then(hearth_store::Op::Delete { key })
            .and_then(hearth_store::Op::DeletePrefix { prefix: record::triggers_prefix(name) })
            .and_then(hearth_store::Op::DeletePrefix { prefix: format!("{}{name}/", record::CRON) });
        if !self.inner.store.txn(txn).await?.succeeded {
            return Err(Error::NotFound(name.to_owned()));
        }
        Ok(())
    }
}

fn crate_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
