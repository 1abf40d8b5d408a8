//! The apps' WebAssembly runtime: two wasmtime engines and compilation
//! through `hearth-wasm`'s caches, with the deploy-time checks of what a
//! component imports and exports. The engine settings both subsystems share,
//! the caches themselves and the epoch ticker are in `hearth-wasm`.
//!
//! **Two tiers.** New bytes are compiled first by Winch, the baseline
//! compiler (a single pass, several times faster than Cranelift), so that a
//! deploy serves as soon as it can run; the service then has Cranelift
//! compile them in the background ([`Runtime::in_background`]: on threads
//! of their own, apart from the pool Winch compiles on) and swaps the
//! optimised code in. Compiled components belong to the engine that compiled
//! them, so each tier has its own engine, linker and epoch ticker. Only
//! Cranelift's code goes to the on-disk cache: bytes found there serve
//! optimised code at once. Where Winch refuses a component (a proposal it
//! does not implement, such as tail calls), it is compiled by Cranelift
//! straight away and [`Compiled::fallback`] says why.
//!
//! Cranelift compiles through the incremental cache of compiled functions
//! ([`hearth_wasm::FunctionCache`], `CACHE_DIR/apps/compiled/functions`), one
//! compile at a time so that each compile's hits and misses are its own.
//!
//! **Shared engines.** A component with one large engine module and a
//! snapshot of its state (a JavaScript handler: 12 MB of StarlingMonkey)
//! is split ([`crate::split`]): Cranelift compiles the engine once, keeps
//! it in memory and in `CACHE_DIR/apps/compiled/engines`, and each new
//! component on that engine has only its rest compiled, by Cranelift, in
//! tens of milliseconds, and serves optimized code at once. The first
//! component on a new engine is compiled whole by Winch, as any other, and
//! its background compile compiles the engine. A component's compiled rest
//! names its engine in its import, so that the cache finds the engine again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hearth_wasm::{Cache, Counts, FunctionCache, Ticker};
use wasmtime::component::{Component, Linker};
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::Error;
use crate::host::{self, HostState};
use crate::manifest::{Limits, Manifest};
use crate::split::{self, Split};

/// Bytes of a finished instance's linear memory reset in place for the
/// next instance rather than given back to the kernel, where the kernel can
/// say which pages were written. Only written pages stay resident, and
/// wasmtime keeps at most 100 unused slots warm, so this bounds idle memory
/// to about 100 MiB however many apps there are.
const KEEP_RESIDENT: usize = 1 << 20;
/// The same for tables (function references: a few KiB for most apps).
const TABLE_KEEP_RESIDENT: usize = 64 << 10;
/// The most Cranelift's cache of compiled functions keeps on disk. A
/// 400 KB component's functions take about 2 MiB there, so this holds many
/// versions of many apps.
const FUNCTIONS_LIMIT: u64 = 256 << 20;

/// The smallest engine module worth compiling once and sharing
/// ([`crate::split`]): below it, Winch compiles the whole component in a
/// few hundred milliseconds anyway, and the engine would change with most
/// deploys.
const SPLIT_AT: usize = 2 << 20;
/// Engines kept loaded, and kept on disk beyond those loaded: the most
/// recently used. An engine is one componentize-js (or other toolchain)
/// release, so a few cover every handler a host runs.
const KEEP_ENGINES: usize = 4;

/// The threads Cranelift's background compiles run on: a pool of their
/// own, apart from rayon's global one that Winch (and a Cranelift compile
/// in the foreground) uses, so that a deploy's compile never queues behind
/// a background one; and half the cores (at least one), so that a deploy
/// made while the version before it is optimized has the other half. At
/// the daemon's own priority: a lower one measured well on an idle machine
/// but starved the compile for minutes on a busy one, leaving Winch's
/// slower code serving.
fn background_pool() -> Result<rayon::ThreadPool, Error> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    rayon::ThreadPoolBuilder::new()
        .num_threads((cores / 2).max(1))
        .thread_name(|i| format!("hearth-optimize-{i}"))
        // Rayon aborts the process on a panic in a spawned job unless a
        // handler takes it: one compile's panic is that compile's failure.
        .panic_handler(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            tracing::error!(panic = what, "A background compile panicked; Winch's code keeps serving.");
        })
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the threads for background compiles: {e}")))
}

/// Runs `work` on `pool`; the receiver has its result, or is closed
/// without one if `work` panics.
fn run_on<T: Send + 'static>(
    pool: &rayon::ThreadPool,
    work: impl FnOnce() -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (send, receive) = tokio::sync::oneshot::channel();
    pool.spawn(move || {
        let _ = send.send(work());
    });
    receive
}

/// Which compiler made the code a version runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// Winch: compiled fast, runs slower; Cranelift's code replaces it.
    Baseline,
    /// Cranelift: the code hearth keeps serving and caches.
    Optimized,
}

impl Tier {
    /// `baseline` or `optimized`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }
}

/// A compiled component and how it came to be.
pub(crate) struct Compiled {
    pub(crate) component: Component,
    pub(crate) tier: Tier,
    /// False when it came from the cache (memory or disk).
    pub(crate) compiled: bool,
    /// Why new bytes were compiled by Cranelift rather than Winch.
    pub(crate) fallback: Option<String>,
    /// The function cache's hits and misses, for a Cranelift compile done
    /// just now.
    pub(crate) functions: Option<Counts>,
    /// The shared engine the component was compiled around, which the
    /// linker must provide.
    pub(crate) engine: Option<Arc<SharedEngine>>,
}

/// An engine module compiled once by Cranelift for every component built
/// on it ([`crate::split`]).
pub(crate) struct SharedEngine {
    /// The engine module's SHA-256.
    pub(crate) sha256: String,
    pub(crate) module: wasmtime::Module,
    /// The size of its compiled code, in bytes.
    pub(crate) size: usize,
}

impl SharedEngine {
    fn new(sha256: &str, module: wasmtime::Module) -> SharedEngine {
        let image = module.image_range();
        let size = (image.end as usize).saturating_sub(image.start as usize);
        SharedEngine { sha256: sha256.to_owned(), module, size }
    }
}

/// The engines loaded, most recently used last, and those that Cranelift
/// refused to compile alone (their components are compiled whole).
#[derive(Default)]
struct Engines {
    loaded: Vec<Arc<SharedEngine>>,
    refused: std::collections::HashSet<String>,
    /// The engine each component compiled around one uses, by the whole
    /// component's hash, as far as this process has seen: pruning keeps
    /// the engines of kept versions.
    used_by: HashMap<String, String>,
}

/// When Cranelift's code is written to the on-disk cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// Before the compile returns: in the background compile, so that code
    /// reported as optimized is also on disk for the next start.
    Now,
    /// On a thread of its own, off a deploy's critical path (the fsync took
    /// 3 to 13 ms here, a tenth of a cold deploy); `flush_writes` waits for
    /// it.
    Behind,
}

/// One tier's engine and the linker every app is instantiated against.
struct Tiered {
    engine: Engine,
    linker: Linker<HostState>,
    _ticker: Ticker,
}

impl Tiered {
    fn new(engine: Engine, ticker: &str) -> Result<Tiered, Error> {
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| Error::Runtime(format!("{e:#}")))?;
        let ticker = Ticker::start(engine.clone(), ticker)?;
        Ok(Tiered { engine, linker, _ticker: ticker })
    }
}

/// The engines, their linkers and the caches.
pub(crate) struct Runtime {
    /// Cranelift, with the pooling allocator.
    optimized: Tiered,
    /// Winch, allocating on demand; `None` where Winch cannot build an
    /// engine (a CPU it does not support).
    baseline: Option<Tiered>,
    cache: Cache,
    /// Shared engines' compiled modules on disk.
    engine_cache: Cache,
    engines: Mutex<Engines>,
    /// The smallest engine split out ([`SPLIT_AT`]; tests lower it).
    split_at: usize,
    functions: Arc<FunctionCache>,
    /// Held through each Cranelift compile.
    optimizing: Mutex<()>,
    /// Where background compiles run ([`Runtime::in_background`]).
    background: rayon::ThreadPool,
    pub(crate) compiles: AtomicU64,
    pub(crate) cache_loads: AtomicU64,
    pub(crate) pooling: bool,
    /// Cache writes in flight, and the components they are writing.
    pending_writes: Mutex<Vec<std::thread::JoinHandle<()>>>,
    writing: Arc<Mutex<HashMap<String, Component>>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.flush_writes();
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the Cranelift engine with the pooling allocator sized for
    /// `max_instances` concurrent instances of at most `ceiling` memory each
    /// (where the pooling allocator cannot reserve its address space, a low
    /// `ulimit -v`, it allocates on demand, with a warning), and the Winch
    /// engine beside it.
    ///
    /// The Winch engine allocates on demand: a second pool would reserve
    /// as much address space again (about 4 GiB per instance slot) for code
    /// that serves only until Cranelift's is ready, and a smaller pool could
    /// run out under load and fail requests. On demand costs an mmap per
    /// request while the baseline serves, and reserves nothing.
    pub(crate) fn new(cache_dir: &Path, max_instances: u32, ceiling: Limits) -> Result<Runtime, Error> {
        let compiled = cache_dir.join("apps").join("compiled");
        let functions = Arc::new(FunctionCache::open(&compiled.join("functions"), FUNCTIONS_LIMIT)?);
        let pagemap = PoolingAllocationConfig::is_pagemap_scan_available();
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(max_instances)
            .total_core_instances(max_instances.saturating_mul(4))
            .total_memories(max_instances)
            .total_tables(max_instances.saturating_mul(2))
            .total_stacks(max_instances)
            .max_memory_size(ceiling.memory_bytes as usize)
            // A finished instance's memory is reset for the next one. With
            // the kernel's PAGEMAP_SCAN (Linux 6.7+), wasmtime finds the
            // pages the instance wrote and copies the original contents
            // back into them, up to `KEEP_RESIDENT` bytes, instead of
            // madvising the memory away (which costs a TLB shootdown across
            // cores) and faulting every page in again on the next request.
            // That took page faults from about five per hello request to
            // none and raised its requests per second by about a quarter.
            // Without the ioctl it is not enabled: resetting the first
            // `KEEP_RESIDENT` bytes blindly with memset measured slower.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(if pagemap { KEEP_RESIDENT } else { 0 })
            .table_keep_resident(if pagemap { TABLE_KEEP_RESIDENT } else { 0 })
            // Where resetting is an madvise, batching them helps (about a
            // fifth in `apps_throughput`).
            .decommit_batch_size(32);
        let cranelift = || {
            let mut config = hearth_wasm::config();
            config
                .enable_incremental_compilation(functions.clone())
                .map_err(|e| Error::Runtime(format!("{e:#}")))?;
            Ok::<_, Error>(config)
        };
        let mut pooled = cranelift()?;
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let (engine, pooling) = match Engine::new(&pooled) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(error = %e, "The pooling allocator is unavailable; instances are allocated on demand.");
                (Engine::new(&cranelift()?).map_err(|e| Error::Runtime(format!("{e:#}")))?, false)
            }
        };
        let baseline = match Engine::new(&hearth_wasm::baseline_config()) {
            Ok(engine) => Some(Tiered::new(engine, "hearth-baseline")?),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "The Winch baseline compiler is unavailable; every deploy waits for Cranelift.");
                None
            }
        };

        let cache = Cache::open(&engine, &compiled)?;
        let engine_cache = Cache::open(&engine, &compiled.join("engines"))?;
        Ok(Runtime {
            optimized: Tiered::new(engine, "hearth-apps-epoch")?,
            baseline,
            cache,
            engine_cache,
            engines: Mutex::default(),
            split_at: SPLIT_AT,
            functions,
            optimizing: Mutex::default(),
            background: background_pool()?,
            compiles: AtomicU64::new(0),
            cache_loads: AtomicU64::new(0),
            pooling,
            pending_writes: Mutex::default(),
            writing: Arc::default(),
        })
    }

    /// Runs `work` on the pool for background compiles ([`background_pool`])
    /// and hands its result to the returned receiver (closed without one
    /// if `work` panics). A compile inside it compiles in parallel on that
    /// pool's threads only.
    pub(crate) fn in_background<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        run_on(&self.background, work)
    }

    /// The engine that runs `tier`'s code: stores for its instances must
    /// be made with it.
    pub(crate) fn engine(&self, tier: Tier) -> &Engine {
        &self.tiered(tier).engine
    }

    fn tiered(&self, tier: Tier) -> &Tiered {
        match (tier, &self.baseline) {
            (Tier::Baseline, Some(baseline)) => baseline,
            _ => &self.optimized,
        }
    }

    /// The compiled component for `sha256`: Cranelift's from the cache if
    /// it is there; else, for a component on a shared engine already
    /// compiled, its rest compiled by Cranelift; else compiled from
    /// `bytes()` by Winch (or by Cranelift where Winch refuses it).
    /// Blocking (compilation uses every core).
    pub(crate) fn component(
        &self,
        sha256: &str,
        bytes: impl FnOnce() -> Result<Arc<Vec<u8>>, Error>,
    ) -> Result<Compiled, Error> {
        if let Some((component, engine)) = self.cached(sha256) {
            return Ok(Compiled {
                component,
                tier: Tier::Optimized,
                compiled: false,
                fallback: None,
                functions: None,
                engine,
            });
        }
        let bytes = bytes()?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        if let Some(compiled) = self.on_known_engine(sha256, &bytes) {
            return Ok(compiled);
        }
        let fallback = match &self.baseline {
            Some(baseline) => match Component::new(&baseline.engine, &bytes[..]) {
                Ok(component) => {
                    return Ok(Compiled {
                        component,
                        tier: Tier::Baseline,
                        compiled: true,
                        fallback: None,
                        functions: None,
                        engine: None,
                    });
                }
                Err(e) => format!("Winch cannot compile it ({})", compile_error(&e)),
            },
            None => "Winch is unavailable on this host".to_owned(),
        };
        let compiled = self.optimize(sha256, &bytes)?;
        tracing::info!(sha256, reason = fallback, "Compiled a component with Cranelift, not Winch.");
        Ok(Compiled { fallback: Some(fallback), ..compiled })
    }

    /// Cranelift's component for `sha256`, if it is being cached or cached,
    /// and the shared engine it names, if any. A component whose engine is
    /// gone counts as not cached.
    fn cached(&self, sha256: &str) -> Option<(Component, Option<Arc<SharedEngine>>)> {
        let in_flight = lock(&self.writing).get(sha256).cloned();
        let component = in_flight.or_else(|| self.cache.load(sha256))?;
        let imports = component.component_type();
        let named = imports
            .imports(&self.optimized.engine)
            .find_map(|(name, _)| name.strip_prefix(split::ENGINE_IMPORT));
        let engine = match named {
            Some(engine) => match self.shared_engine(engine) {
                Some(engine) => {
                    lock(&self.engines).used_by.insert(sha256.to_owned(), engine.sha256.clone());
                    Some(engine)
                }
                None => {
                    tracing::info!(
                        sha256,
                        engine,
                        "A cached component's engine is no longer cached; it is compiled again."
                    );
                    return None;
                }
            },
            None => None,
        };
        self.cache_loads.fetch_add(1, Ordering::Relaxed);
        Some((component, engine))
    }

    /// `bytes` split ([`crate::split`]), if they can be and their engine
    /// has not been refused before.
    fn split(&self, bytes: &[u8]) -> Result<Split, split::NotSplit> {
        let split = split::split(bytes, self.split_at)?;
        if lock(&self.engines).refused.contains(&split.engine_sha256) {
            return Err(split::NotSplit::refused());
        }
        Ok(split)
    }

    /// The shared engine `sha256`, from memory or the disk.
    fn shared_engine(&self, sha256: &str) -> Option<Arc<SharedEngine>> {
        let mut engines = lock(&self.engines);
        if let Some(at) = engines.loaded.iter().position(|e| e.sha256 == sha256) {
            let engine = engines.loaded.remove(at);
            engines.loaded.push(engine.clone());
            return Some(engine);
        }
        drop(engines);
        let module = self.engine_cache.load_module(sha256)?;
        Some(self.remember(SharedEngine::new(sha256, module)))
    }

    fn remember(&self, engine: SharedEngine) -> Arc<SharedEngine> {
        let engine = Arc::new(engine);
        let mut engines = lock(&self.engines);
        engines.loaded.retain(|e| e.sha256 != engine.sha256);
        engines.loaded.push(engine.clone());
        let over = engines.loaded.len().saturating_sub(KEEP_ENGINES);
        engines.loaded.drain(..over);
        engine
    }

    /// For a component on a shared engine already compiled: its rest,
    /// compiled by Cranelift now, if no other Cranelift compile holds the
    /// turn (then Winch compiles the whole, and the background compile
    /// takes the rest when its turn comes).
    fn on_known_engine(&self, sha256: &str, bytes: &[u8]) -> Option<Compiled> {
        let split = match self.split(bytes) {
            Ok(split) => split,
            Err(why) => {
                if bytes.len() >= self.split_at {
                    tracing::info!(sha256, why = %why, "A large component is compiled whole: its engine is not shared.");
                }
                return None;
            }
        };
        let engine = self.shared_engine(&split.engine_sha256)?;
        let _turn = match self.optimizing.try_lock() {
            Ok(turn) => turn,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        match self.cranelift(sha256, &split.rest, Some(engine), Write::Behind) {
            Ok(compiled) => Some(compiled),
            Err(e) => {
                tracing::info!(sha256, error = %crate::chain(&e), "Cannot compile a component around its shared engine; it is compiled whole.");
                None
            }
        }
    }

    /// Compiles `bytes` with Cranelift, through the cache of compiled
    /// functions, and caches the result. Blocking; one compile at a time.
    fn optimize(&self, sha256: &str, bytes: &[u8]) -> Result<Compiled, Error> {
        let _turn = lock(&self.optimizing);
        self.optimize_held(sha256, bytes, Write::Behind)
    }

    /// The turn to compile with Cranelift, once it comes, if `wanted()`
    /// still holds then.
    pub(crate) fn turn_if(&self, wanted: impl FnOnce() -> bool) -> Option<MutexGuard<'_, ()>> {
        let turn = lock(&self.optimizing);
        wanted().then_some(turn)
    }

    /// [`Runtime::optimize`], with the turn (see [`Runtime::turn_if`]) held:
    /// a component on a shared engine is compiled as its rest around the
    /// engine, compiling the engine first if it is new; any other, or one
    /// whose engine Cranelift cannot compile alone, whole. The function
    /// cache's hits and misses count both compiles.
    pub(crate) fn optimize_held(&self, sha256: &str, bytes: &[u8], write: Write) -> Result<Compiled, Error> {
        let before = self.functions.counts();
        let around_engine = |split: &Split| {
            let engine = match self.shared_engine(&split.engine_sha256) {
                Some(engine) => engine,
                None => self.compile_engine(split)?,
            };
            self.cranelift(sha256, &split.rest, Some(engine), write)
        };
        let compiled = match self.split(bytes).map(|split| around_engine(&split)) {
            Ok(Ok(compiled)) => compiled,
            Ok(Err(e)) => {
                tracing::info!(sha256, error = %crate::chain(&e), "Cannot compile a component around its shared engine; it is compiled whole.");
                self.cranelift(sha256, bytes, None, write)?
            }
            Err(_) => self.cranelift(sha256, bytes, None, write)?,
        };
        Ok(Compiled { functions: Some(self.functions.counts().since(before)), ..compiled })
    }

    /// Compiles `split`'s engine with Cranelift and caches it; an engine
    /// it refuses is remembered, so that its components are compiled whole
    /// from then on. With the turn held.
    fn compile_engine(&self, split: &Split) -> Result<Arc<SharedEngine>, Error> {
        let started = Instant::now();
        let module = match wasmtime::Module::new(&self.optimized.engine, &split.engine) {
            Ok(module) => module,
            Err(e) => {
                lock(&self.engines).refused.insert(split.engine_sha256.clone());
                return Err(Error::InvalidComponent(format!(
                    "its engine module does not compile alone ({})",
                    compile_error(&e)
                )));
            }
        };
        let written = hearth_wasm::Cache::serialize_module(&module)
            .and_then(|artifact| self.engine_cache.write(&split.engine_sha256, &artifact));
        if let Err(e) = written {
            tracing::warn!(error = %crate::chain(&e), "Cannot cache a compiled engine; it is compiled again after a restart.");
        }
        tracing::info!(
            engine = split.engine_sha256,
            bytes = split.engine.len(),
            ms = started.elapsed().as_millis() as u64,
            "Compiled a shared engine with Cranelift."
        );
        Ok(self.remember(SharedEngine::new(&split.engine_sha256, module)))
    }

    /// Compiles `bytes` with Cranelift, through the cache of compiled
    /// functions, and caches the result under `sha256` (the whole
    /// component's hash, also when `bytes` are a split's rest). Around
    /// `engine`, if given: the engine must then link into it. With the turn
    /// held.
    fn cranelift(
        &self,
        sha256: &str,
        bytes: &[u8],
        engine: Option<Arc<SharedEngine>>,
        write: Write,
    ) -> Result<Compiled, Error> {
        let (started, before) = (Instant::now(), self.functions.counts());
        let component = Component::new(&self.optimized.engine, bytes)
            .map_err(|e| Error::InvalidComponent(compile_error(&e)))?;
        // A rest that does not link (a component that imports what hearth
        // does not offer, or whose other modules expect more of the
        // engine's memory than the shared engine promises) is compiled
        // whole by the caller, where its own error, if any, is found; the
        // engine is not refused, since other components on it may well link.
        if let Some(engine) = &engine {
            linked(&self.optimized.linker, engine)?.instantiate_pre(&component).map_err(|e| {
                Error::InvalidComponent(format!("its rest does not link with its engine: {e:#}"))
            })?;
            lock(&self.engines).used_by.insert(sha256.to_owned(), engine.sha256.clone());
        }
        let functions = self.functions.counts().since(before);
        tracing::debug!(
            sha256,
            engine = engine.as_ref().map(|e| e.sha256.as_str()),
            ms = started.elapsed().as_millis() as u64,
            hits = functions.hits,
            misses = functions.misses,
            "Compiled a component with Cranelift."
        );
        self.keep(sha256, &component, write);
        Ok(Compiled {
            component,
            tier: Tier::Optimized,
            compiled: true,
            fallback: None,
            functions: Some(functions),
            engine,
        })
    }

    /// Caches Cranelift's `component` of `sha256`, when `write` says.
    fn keep(&self, sha256: &str, component: &Component, write: Write) {
        match (Cache::serialize(component), write) {
            (Ok(artifact), Write::Behind) => self.write_in_background(sha256, component, artifact),
            (Ok(artifact), Write::Now) => {
                if let Err(e) = self.cache.write(sha256, &artifact) {
                    tracing::warn!(error = %crate::chain(&e), "Cannot cache a compiled component.");
                }
            }
            (Err(e), _) => {
                tracing::warn!(error = %crate::chain(&e), "Cannot serialise a compiled component; it will not be cached.")
            }
        }
        self.functions.prune();
    }

    /// Caches `artifact` at `path` on a thread of its own. Until it is
    /// there, `component()` finds the component in `writing`.
    fn write_in_background(&self, sha256: &str, component: &Component, artifact: hearth_wasm::Artifact) {
        lock(&self.writing).insert(sha256.to_owned(), component.clone());
        let (writing, sha, cache) = (self.writing.clone(), sha256.to_owned(), self.cache.clone());
        let spawned = std::thread::Builder::new().name("hearth-apps-cache".into()).spawn(move || {
            if let Err(e) = cache.write(&sha, &artifact) {
                tracing::warn!(error = %crate::chain(&e), "Cannot cache a compiled component.");
            }
            lock(&writing).remove(&sha);
        });
        let mut pending = lock(&self.pending_writes);
        pending.retain(|handle| !handle.is_finished());
        match spawned {
            Ok(handle) => pending.push(handle),
            Err(e) => {
                lock(&self.writing).remove(sha256);
                tracing::warn!(error = %e, "Cannot start a thread to cache a compiled component.");
            }
        }
    }

    /// Waits until every compiled component is in the cache on disk.
    pub(crate) fn flush_writes(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending_writes));
        for handle in pending {
            let _ = handle.join();
        }
    }

    /// Pre-instantiates Cranelift's code of a version whose Winch code
    /// passed [`Runtime::prepare`]'s checks.
    pub(crate) fn prepare_optimized(&self, compiled: &Compiled) -> Result<ProxyPre<HostState>, Error> {
        instantiate_pre(&self.optimized, compiled)
    }

    /// Checks that `compiled` serves HTTP and that its manifest declares
    /// what it imports, then pre-instantiates it.
    pub(crate) fn prepare(
        &self,
        compiled: &Compiled,
        manifest: &Manifest,
    ) -> Result<ProxyPre<HostState>, Error> {
        let tiered = self.tiered(compiled.tier);
        check_exports(&tiered.engine, &compiled.component)?;
        check_imports(&tiered.engine, &compiled.component, manifest)?;
        instantiate_pre(tiered, compiled)
    }

    /// Deletes compiled artifacts that no kept version uses, and engines
    /// that neither a kept version (as far as this process has seen) nor a
    /// loaded one uses, beyond the most recently written. A version whose
    /// engine went is compiled again when it is next loaded.
    pub(crate) fn prune(&self, keep: &std::collections::HashSet<String>) {
        self.cache.prune(keep);
        let mut engines: std::collections::HashSet<String> = {
            let mut engines = lock(&self.engines);
            engines.used_by.retain(|sha, _| keep.contains(sha));
            let used = engines.used_by.values().cloned();
            engines.loaded.iter().map(|e| e.sha256.clone()).chain(used).collect()
        };
        engines.extend(self.engine_cache.newest(KEEP_ENGINES));
        self.engine_cache.prune(&engines);
    }
}

/// `linker` with `engine` defined in it under the name its components
/// import it by.
fn linked(linker: &Linker<HostState>, engine: &SharedEngine) -> Result<Linker<HostState>, Error> {
    let mut linker = linker.clone();
    linker
        .root()
        .module(&split::import_name(&engine.sha256), &engine.module)
        .map_err(|e| Error::Runtime(format!("cannot define a shared engine: {e:#}")))?;
    Ok(linker)
}

fn instantiate_pre(tiered: &Tiered, compiled: &Compiled) -> Result<ProxyPre<HostState>, Error> {
    let linked;
    let linker = match &compiled.engine {
        Some(engine) => {
            linked = self::linked(&tiered.linker, engine)?;
            &linked
        }
        None => &tiered.linker,
    };
    let pre = linker.instantiate_pre(&compiled.component).map_err(|e| {
        let text = format!("{e:#}");
        match backticked(&text) {
            Some(import) if text.contains("import") => Error::UnsupportedImport { import },
            _ => Error::InvalidComponent(text),
        }
    })?;
    ProxyPre::new(pre).map_err(|e| Error::InvalidComponent(format!("{e:#}")))
}

fn check_exports(engine: &Engine, component: &Component) -> Result<(), Error> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    if exports.iter().any(|name| name.starts_with("wasi:http/incoming-handler@0.2.")) {
        return Ok(());
    }
    let exports = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
    Err(Error::NoHandler { exports })
}

fn check_imports(engine: &Engine, component: &Component, manifest: &Manifest) -> Result<(), Error> {
    let ty = component.component_type();
    // The shared engine is hearth's own import (`crate::split`).
    for (name, _) in ty.imports(engine).filter(|(name, _)| !name.starts_with(split::ENGINE_IMPORT)) {
        let interface = name.split('@').next().unwrap_or(name);
        let undeclared = |missing, fix| Err(Error::Undeclared { import: name.to_owned(), missing, fix });
        match interface {
            "wasi:keyvalue/store" | "wasi:keyvalue/atomics" | "wasi:keyvalue/batch"
                if manifest.key_value.is_empty() =>
            {
                return undeclared(
                    "any key-value store",
                    "add `key_value = [\"default\"]` to hearth.toml, with the names the app passes to `open`",
                );
            }
            "wasi:http/outgoing-handler" if manifest.outbound.is_empty() && !manifest.from_source => {
                return undeclared(
                    "any outbound host",
                    "add `outbound = [\"https://api.example.com\"]` to hearth.toml, with the hosts the app calls",
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// The first `name` in a message, as wasmtime quotes import names.
fn backticked(text: &str) -> Option<String> {
    let start = text.find('`')? + 1;
    let len = text[start..].find('`')?;
    Some(text[start..start + len].to_owned())
}

/// wasmtime's compile errors, without the backtrace-like detail that does
/// not help someone whose upload is broken.
fn compile_error(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.lines().next().unwrap_or(&text).to_owned()
}

/// Refuses what is not a component, saying what it is instead.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), Error> {
    match hearth_wasm::binary_kind(bytes) {
        hearth_wasm::Binary::Component => Ok(()),
        hearth_wasm::Binary::CoreModule => Err(Error::CoreModule),
        hearth_wasm::Binary::Unknown(version) => Err(Error::UnknownBinary(version)),
        hearth_wasm::Binary::NotWasm => Err(Error::NotWasm),
    }
}

/// Returns `component` with a custom section appended: the same program
/// with different bytes, hence a different hash. Benchmarks use it to deploy
/// "new" code that must be compiled (a cold deploy) without rebuilding.
pub fn append_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(body.len(), &mut out);
    out.extend(body);
    out
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_compile_runs_on_its_own_threads_and_its_panic_is_its_own() {
        let pool = background_pool().unwrap();
        let name = run_on(&pool, || std::thread::current().name().map(str::to_owned)).blocking_recv();
        assert!(name.unwrap().unwrap().starts_with("hearth-optimize-"));
        // A parallel iterator inside runs on the same pool, as wasmtime's
        // parallel compile does.
        let names = run_on(&pool, || {
            use rayon::prelude::*;
            (0..64)
                .into_par_iter()
                .map(|_| std::thread::current().name().map(str::to_owned))
                .collect::<Vec<_>>()
        });
        assert!(
            names
                .blocking_recv()
                .unwrap()
                .iter()
                .all(|n| n.as_deref().unwrap().starts_with("hearth-optimize-"))
        );
        // A panic closes the receiver, and the process and the pool go on.
        assert!(run_on(&pool, || -> u32 { panic!("a compiler's bug") }).blocking_recv().is_err());
        assert_eq!(run_on(&pool, || 7).blocking_recv(), Ok(7));
    }

    #[test]
    fn headers_are_told_apart() {
        assert!(matches!(check_header(b"hello world"), Err(Error::NotWasm)));
        assert!(matches!(check_header(b"\0asm"), Err(Error::NotWasm)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(Error::CoreModule)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
        assert!(matches!(check_header(b"\0asm\x0e\0\x01\0"), Err(Error::UnknownBinary(_))));
    }

    #[test]
    fn custom_sections_change_the_hash_only() {
        let base = b"\0asm\x0d\0\x01\0".to_vec();
        let tagged = append_custom_section(&base, "hearth", &[7; 200]);
        assert_eq!(&tagged[..8], &base[..]);
        // id 0, size 207 as LEB128 (two bytes), name length 6, "hearth", payload.
        assert_eq!(&tagged[8..12], &[0, 0xcf, 0x01, 6]);
        assert_ne!(hearth_wasm::sha256_hex(&base), hearth_wasm::sha256_hex(&tagged));
    }

    /// A component holding one core module whose only function tail-calls
    /// itself (`return_call 0`): valid WebAssembly that Winch refuses.
    const TAIL_CALL: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, // component header
        0x01, 0x1a, // core module section, 26 bytes
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // module header
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type 0: [] -> []
        0x03, 0x02, 0x01, 0x00, // one function of type 0
        0x0a, 0x06, 0x01, 0x04, 0x00, 0x12, 0x00, 0x0b, // body: return_call 0
    ];
    /// The same with a plain `call 0`, which Winch compiles.
    const CALL: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, 0x01, 0x1a, 0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00,
        0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x03, 0x02, 0x01, 0x00, 0x0a, 0x06, 0x01, 0x04, 0x00, 0x10,
        0x00, 0x0b,
    ];

    fn runtime(dir: &Path) -> Runtime {
        Runtime::new(dir, 4, Limits::CEILING).expect("the runtime starts")
    }

    fn compile(runtime: &Runtime, bytes: &[u8]) -> Compiled {
        let sha = hearth_wasm::sha256_hex(bytes);
        runtime.component(&sha, || Ok(Arc::new(bytes.to_vec()))).expect("it compiles")
    }

    #[test]
    fn new_bytes_are_compiled_by_winch_and_cached_ones_are_cranelifts() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(dir.path());
        let first = compile(&runtime, CALL);
        assert_eq!((first.tier, first.compiled, first.fallback.as_deref()), (Tier::Baseline, true, None));
        let sha = hearth_wasm::sha256_hex(CALL);
        runtime.optimize(&sha, CALL).expect("Cranelift compiles it");
        runtime.flush_writes();
        let again = compile(&runtime, CALL);
        assert_eq!((again.tier, again.compiled), (Tier::Optimized, false));
        // And after a restart, from the disk.
        drop(runtime);
        let again = compile(&self::runtime(dir.path()), CALL);
        assert_eq!((again.tier, again.compiled), (Tier::Optimized, false));
    }

    #[test]
    fn what_winch_refuses_is_compiled_by_cranelift_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let compiled = compile(&runtime(dir.path()), TAIL_CALL);
        assert_eq!((compiled.tier, compiled.compiled), (Tier::Optimized, true));
        let why = compiled.fallback.expect("it says why Winch was not used");
        assert!(why.contains("Winch cannot compile it") && why.contains("tail call"), "{why}");
        assert!(compiled.functions.is_some());
    }

    #[test]
    fn a_recompile_takes_its_functions_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(dir.path());
        let first = runtime.optimize(&"1".repeat(64), TAIL_CALL).unwrap().functions.unwrap();
        assert_eq!(first.hits, 0);
        assert!(first.misses > 0, "{first:?}");
        // The same function in new bytes (a custom section appended).
        let changed = append_custom_section(TAIL_CALL, "x", b"y");
        let second = runtime.optimize(&"2".repeat(64), &changed).unwrap().functions.unwrap();
        assert_eq!(second, Counts { hits: first.misses, misses: 0 });
    }

    /// A component holding a core module of two functions returning
    /// `first` and 7.
    fn two_functions(first: u8) -> Vec<u8> {
        let mut bytes = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, 0x01, 0x21];
        bytes.extend_from_slice(&[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
        bytes.extend_from_slice(&[0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f]); // type 0: [] -> [i32]
        bytes.extend_from_slice(&[0x03, 0x03, 0x02, 0x00, 0x00]); // two functions of type 0
        bytes
            .extend_from_slice(&[0x0a, 0x0b, 0x02, 0x04, 0x00, 0x41, first, 0x0b, 0x04, 0x00, 0x41, 7, 0x0b]);
        bytes
    }

    #[test]
    fn a_recompile_compiles_only_the_changed_function() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(dir.path());
        let first = runtime.optimize(&"1".repeat(64), &two_functions(1)).unwrap().functions.unwrap();
        assert_eq!(first.hits, 0);
        assert!(first.misses >= 2, "{first:?}");
        let second = runtime.optimize(&"2".repeat(64), &two_functions(2)).unwrap().functions.unwrap();
        assert_eq!(second, Counts { hits: first.misses - 1, misses: 1 });
    }

    /// A runtime that splits engines of any size.
    fn splitting(dir: &Path) -> Runtime {
        let mut runtime = runtime(dir);
        runtime.split_at = 0;
        runtime
    }

    /// Two components on one engine, with their hashes.
    fn on_one_engine() -> [(String, Vec<u8>); 2] {
        [(40, 2, 1), (50, 3, 2)].map(|(count, byte, pages)| {
            let bytes = crate::split::tests::component(count, byte, pages, "");
            (hearth_wasm::sha256_hex(&bytes), bytes)
        })
    }

    #[test]
    fn the_first_component_on_an_engine_is_compiled_whole_and_its_engine_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = splitting(dir.path());
        let [(sha, bytes), _] = on_one_engine();
        let first = compile(&runtime, &bytes);
        assert_eq!((first.tier, first.engine.is_some()), (Tier::Baseline, false));
        let optimized = runtime.optimize(&sha, &bytes).unwrap();
        let engine = optimized.engine.expect("compiled around its engine");
        assert_eq!(engine.sha256, crate::split::split(&bytes, 0).unwrap().engine_sha256);
        assert!(engine.size > 0);
        assert!(dir.path().join("apps/compiled/engines").read_dir().unwrap().flatten().any(|d| {
            d.path()
                .read_dir()
                .unwrap()
                .flatten()
                .any(|f| f.file_name() == *format!("{}.cwasm", engine.sha256))
        }));
    }

    #[test]
    fn a_component_on_a_compiled_engine_has_only_its_rest_compiled_by_cranelift_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = splitting(dir.path());
        let [(sha, bytes), (_, other)] = on_one_engine();
        let engine = runtime.optimize(&sha, &bytes).unwrap().engine.unwrap();
        let next = compile(&runtime, &other);
        assert_eq!((next.tier, next.compiled, next.fallback.as_deref()), (Tier::Optimized, true, None));
        assert_eq!(next.engine.as_ref().map(|e| &e.sha256), Some(&engine.sha256));
        assert!(next.functions.is_some());
        // It links; only `wasi:http` is missing.
        let refused = runtime.prepare_optimized(&next).map(|_| ()).unwrap_err().to_string();
        assert!(!refused.contains(split::ENGINE_IMPORT), "{refused}");
        linked(&runtime.optimized.linker, &engine)
            .unwrap()
            .instantiate_pre(&next.component)
            .expect("it links");
    }

    #[test]
    fn while_another_compile_holds_the_turn_winch_compiles_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = splitting(dir.path());
        let [(sha, bytes), (_, other)] = on_one_engine();
        runtime.optimize(&sha, &bytes).unwrap();
        let turn = runtime.turn_if(|| true).unwrap();
        let next = compile(&runtime, &other);
        assert_eq!((next.tier, next.engine.is_some()), (Tier::Baseline, false));
        drop(turn);
    }

    #[test]
    fn a_cached_component_finds_its_engine_again_after_a_restart_or_is_compiled_again_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let [(sha, bytes), (other_sha, other)] = on_one_engine();
        {
            let runtime = splitting(dir.path());
            runtime.optimize(&sha, &bytes).unwrap();
            compile(&runtime, &other);
        }
        let runtime = splitting(dir.path());
        let again = compile(&runtime, &other);
        assert_eq!((again.tier, again.compiled, again.engine.is_some()), (Tier::Optimized, false, true));
        drop(runtime);

        std::fs::remove_dir_all(dir.path().join("apps/compiled/engines")).unwrap();
        let runtime = splitting(dir.path());
        let without = compile(&runtime, &other);
        assert_eq!((without.tier, without.compiled), (Tier::Baseline, true));
        let optimized = runtime.optimize(&other_sha, &other).unwrap();
        assert!(optimized.engine.is_some(), "the engine is compiled again");
    }

    #[test]
    fn an_engine_that_does_not_compile_alone_is_refused_once_and_its_components_compiled_whole() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = splitting(dir.path());
        // `data.drop` needs the data segments that the split moves out.
        let [one, other] = [40, 50]
            .map(|count| crate::split::tests::component(count, 2, 1, "(func (export \"drop\") data.drop 0)"));
        let optimized = runtime.optimize(&hearth_wasm::sha256_hex(&one), &one).unwrap();
        assert!(optimized.engine.is_none(), "compiled whole");
        let engine = crate::split::split(&one, 0).unwrap().engine_sha256;
        assert!(lock(&runtime.engines).refused.contains(&engine));
        assert!(runtime.split(&other).is_err(), "not split again");
    }

    #[test]
    fn a_component_that_does_not_compile_around_its_engine_is_compiled_whole_and_its_engine_kept() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = splitting(dir.path());
        // A module that needs the engine's memory to have a page: the
        // engine, shared, promises none.
        let outside = r#"(core module $user (import "" "memory" (memory 1)))
            (core instance (instantiate $user (with "" (instance (export "memory" (memory $e "memory"))))))"#;
        let bytes = crate::split::tests::with_outside(40, 2, 1, "", outside);
        let optimized = runtime.optimize(&hearth_wasm::sha256_hex(&bytes), &bytes).unwrap();
        assert!(optimized.engine.is_none(), "compiled whole");
        // Other components on the engine still share it.
        let [_, (_, other)] = on_one_engine();
        let next = compile(&runtime, &other);
        assert_eq!((next.tier, next.engine.is_some()), (Tier::Optimized, true));
    }

    #[test]
    fn pruning_keeps_the_engines_in_use_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = splitting(dir.path());
        let [(sha, bytes), _] = on_one_engine();
        let engine = runtime.optimize(&sha, &bytes).unwrap().engine.unwrap();
        let engines = runtime.engine_cache.dir().to_owned();
        let file = |sha: &str| engines.join(format!("{sha}.cwasm"));
        let age = |sha: &str, secs: u64| {
            let then = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
            std::fs::File::options().write(true).open(file(sha)).unwrap().set_modified(then).unwrap();
        };
        let stale: Vec<String> = (0..KEEP_ENGINES + 2).map(|n| format!("{n:x}").repeat(64)).collect();
        for (n, sha) in stale.iter().enumerate() {
            std::fs::write(file(sha), b"old").unwrap();
            age(sha, 3600 + n as u64);
        }
        let left = || -> Vec<String> {
            let mut left: Vec<String> = std::fs::read_dir(&engines)
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok()?.strip_suffix(".cwasm").map(str::to_owned))
                .collect();
            left.sort();
            left
        };

        // Loaded: kept, and the newest of the rest.
        runtime.prune(&std::collections::HashSet::new());
        let mut expected = vec![engine.sha256.clone(), stale[0].clone(), stale[1].clone(), stale[2].clone()];
        expected.sort();
        assert_eq!(left(), expected);

        // Neither loaded nor the newest, but used by a kept version: kept.
        lock(&runtime.engines).loaded.clear();
        age(&engine.sha256, 7200);
        runtime.prune(&std::collections::HashSet::from([sha.clone()]));
        assert!(left().contains(&engine.sha256));
        // Once no kept version uses it: gone, with newer ones written.
        for n in 0..KEEP_ENGINES {
            std::fs::write(file(&format!("{:x}", n + 10).repeat(64)), b"new").unwrap();
        }
        runtime.prune(&std::collections::HashSet::new());
        assert!(!left().contains(&engine.sha256), "{:?}", left());
    }

    #[test]
    fn backticked_names_are_found() {
        assert_eq!(backticked("component imports instance `a:b/c@1`, but").as_deref(), Some("a:b/c@1"));
        assert_eq!(backticked("nothing quoted"), None);
    }
}
