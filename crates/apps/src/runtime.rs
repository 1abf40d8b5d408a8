//! The apps' WebAssembly runtime: one wasmtime engine for every app (with
//! the pooling allocator), compilation through `hearth-wasm`'s on-disk cache
//! with the cache write off the deploy's critical path, and the deploy-time
//! checks of what a component imports and exports. The engine settings both
//! subsystems share, the cache itself and the epoch ticker are in
//! `hearth-wasm`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hearth_wasm::{Cache, Ticker};
use wasmtime::component::{Component, Linker};
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::Error;
use crate::host::{self, HostState};
use crate::manifest::{Limits, Manifest};

/// Bytes of a finished instance's linear memory reset in place for the
/// next instance rather than given back to the kernel, where the kernel can
/// say which pages were written. Only written pages stay resident, and
/// wasmtime keeps at most 100 unused slots warm, so this bounds idle memory
/// to about 100 MiB however many apps there are.
const KEEP_RESIDENT: usize = 1 << 20;
/// The same for tables (function references: a few KiB for most apps).
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// The engine, the linker every app is instantiated against, and the cache.
pub(crate) struct Runtime {
    pub(crate) engine: Engine,
    linker: Linker<HostState>,
    cache: Cache,
    pub(crate) compiles: AtomicU64,
    pub(crate) cache_loads: AtomicU64,
    pub(crate) pooling: bool,
    /// Cache writes in flight, and the components they are writing.
    pending_writes: Mutex<Vec<std::thread::JoinHandle<()>>>,
    writing: Arc<Mutex<HashMap<String, Component>>>,
    _ticker: Ticker,
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
    /// Builds the engine with the pooling allocator sized for
    /// `max_instances` concurrent instances of at most `ceiling` memory each.
    /// Where the pooling allocator cannot reserve its address space (a low
    /// `ulimit -v`), falls back to allocating on demand, with a warning.
    pub(crate) fn new(cache_dir: &Path, max_instances: u32, ceiling: Limits) -> Result<Runtime, Error> {
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
        let mut pooled = hearth_wasm::config();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let (engine, pooling) = match Engine::new(&pooled) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(error = %e, "The pooling allocator is unavailable; instances are allocated on demand.");
                (Engine::new(&hearth_wasm::config()).map_err(|e| Error::Runtime(format!("{e:#}")))?, false)
            }
        };

        let cache = Cache::open(&engine, &cache_dir.join("apps").join("compiled"))?;

        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| Error::Runtime(format!("{e:#}")))?;

        let ticker = Ticker::start(engine.clone(), "hearth-apps-epoch")?;
        Ok(Runtime {
            engine,
            linker,
            cache,
            compiles: AtomicU64::new(0),
            cache_loads: AtomicU64::new(0),
            pooling,
            pending_writes: Mutex::default(),
            writing: Arc::default(),
            _ticker: ticker,
        })
    }

    /// The compiled component for `sha256`: from the cache if it is there,
    /// else compiled from `bytes()` and cached. Blocking (compilation uses
    /// every core). Returns whether it had to compile.
    pub(crate) fn component(
        &self,
        sha256: &str,
        bytes: impl FnOnce() -> Result<Arc<Vec<u8>>, Error>,
    ) -> Result<(Component, bool), Error> {
        let in_flight = lock(&self.writing).get(sha256).cloned();
        if let Some(component) = in_flight.or_else(|| self.cache.load(sha256)) {
            self.cache_loads.fetch_add(1, Ordering::Relaxed);
            return Ok((component, false));
        }
        let bytes = bytes()?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(&self.engine, &bytes[..])
            .map_err(|e| Error::InvalidComponent(compile_error(&e)))?;
        // The cache is written off the deploy's critical path (its fsync
        // took 3 to 13 ms here, a tenth of a cold deploy); `flush_writes`
        // waits for it.
        match Cache::serialize(&component) {
            Ok(artifact) => self.write_in_background(sha256, &component, artifact),
            Err(e) => {
                tracing::warn!(error = %crate::chain(&e), "Cannot serialise a compiled component; it will not be cached.")
            }
        }
        Ok((component, true))
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

    /// Checks that `component` serves HTTP and that its manifest declares
    /// what it imports, then pre-instantiates it.
    pub(crate) fn prepare(
        &self,
        component: &Component,
        manifest: &Manifest,
    ) -> Result<ProxyPre<HostState>, Error> {
        check_exports(&self.engine, component)?;
        check_imports(&self.engine, component, manifest)?;
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            let text = format!("{e:#}");
            match backticked(&text) {
                Some(import) if text.contains("import") => Error::UnsupportedImport { import },
                _ => Error::InvalidComponent(text),
            }
        })?;
        ProxyPre::new(pre).map_err(|e| Error::InvalidComponent(format!("{e:#}")))
    }

    /// Deletes compiled artifacts that no kept version uses.
    pub(crate) fn prune(&self, keep: &std::collections::HashSet<String>) {
        self.cache.prune(keep);
    }
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
    for (name, _) in ty.imports(engine) {
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

    #[test]
    fn backticked_names_are_found() {
        assert_eq!(backticked("component imports instance `a:b/c@1`, but").as_deref(), Some("a:b/c@1"));
        assert_eq!(backticked("nothing quoted"), None);
    }
}
