//! The workflows' wasmtime engine: compilation through `hearth-wasm`'s
//! on-disk cache by content hash, the deploy-time checks, and the
//! pre-instantiated components kept in memory. The epoch ticker that bounds
//! how long an execution may compute between host calls is `hearth-wasm`'s.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use hearth_wasm::{Cache, Ticker};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::Error;
use crate::host::{self, Exec, bindings::WorkflowPre};

pub(crate) struct Runtime {
    pub(crate) engine: Engine,
    linker: Linker<Exec>,
    cache: Cache,
    /// Pre-instantiated components by hash: a wake-up costs an instantiation.
    loaded: Mutex<HashMap<String, WorkflowPre<Exec>>>,
    _ticker: Ticker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl Runtime {
    pub(crate) fn new(cache_dir: &Path) -> Result<Runtime, Error> {
        let engine = Engine::new(&hearth_wasm::config()).map_err(|e| Error::Runtime(format!("{e:#}")))?;
        let cache = Cache::open(&engine, &cache_dir.join("workflows").join("compiled"))?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| Error::Runtime(format!("{e:#}")))?;
        let ticker = Ticker::start(engine.clone(), "hearth-workflows-epoch")?;
        Ok(Runtime { engine, linker, cache, loaded: Mutex::default(), _ticker: ticker })
    }

    /// The pre-instantiated component for `sha256`, if it is in memory.
    pub(crate) fn loaded(&self, sha256: &str) -> Option<WorkflowPre<Exec>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(sha256).cloned()
    }

    /// The checked, pre-instantiated component for `sha256`: from memory,
    /// from the compiled cache, or compiled from `bytes()` (and cached).
    /// Blocking: call it off the async threads. Returns whether it compiled.
    pub(crate) fn prepare(
        &self,
        sha256: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>, Error>,
    ) -> Result<(WorkflowPre<Exec>, bool), Error> {
        if let Some(pre) = self.loaded(sha256) {
            return Ok((pre, false));
        }
        let cached = self.cache.load(sha256);
        let compiled = cached.is_none();
        let component = match cached {
            Some(component) => component,
            None => {
                let bytes = bytes()?;
                check_header(&bytes)?;
                let component = Component::new(&self.engine, &bytes)
                    .map_err(|e| Error::InvalidComponent(format!("{e:#}")))?;
                check(&self.engine, &component)?;
                if let Err(e) = self.cache.store(sha256, &component) {
                    tracing::warn!(error = %crate::chain(&e), "Cannot cache a compiled workflow.");
                }
                component
            }
        };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let text = format!("{e:#}");
            match text.split('`').nth(1) {
                Some(import) if text.contains("import") => Error::UnsupportedImport(import.to_owned()),
                _ => Error::InvalidComponent(text),
            }
        })?;
        let pre = WorkflowPre::new(pre).map_err(|_| Error::NoRun)?;
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(sha256.to_owned(), pre.clone());
        Ok((pre, compiled))
    }
}

/// The component exports `run` and imports nothing but WASI and `durable`.
fn check(engine: &Engine, component: &Component) -> Result<(), Error> {
    let ty = component.component_type();
    if !ty.exports(engine).any(|(name, _)| name == "run") {
        return Err(Error::NoRun);
    }
    for (name, _) in ty.imports(engine) {
        let ok = name.starts_with("wasi:") || name.starts_with("hearth:workflow/durable@0.1.");
        if !ok {
            return Err(Error::UnsupportedImport(name.to_owned()));
        }
    }
    Ok(())
}

pub(crate) fn check_header(bytes: &[u8]) -> Result<(), Error> {
    match hearth_wasm::binary_kind(bytes) {
        hearth_wasm::Binary::Component => Ok(()),
        _ => Err(Error::NotComponent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_components_pass_the_header_check() {
        assert!(matches!(check_header(b"hello"), Err(Error::NotComponent)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(Error::NotComponent)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
