//! The workflows' wasmtime engine: compilation with an on-disk cache by
//! content hash, the deploy-time checks, and the epoch ticker that bounds
//! how long an execution may compute between host calls.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::Error;
use crate::host::{self, Exec, bindings::WorkflowPre};

/// How often the epoch advances.
pub(crate) const TICK: Duration = Duration::from_millis(10);

pub(crate) struct Runtime {
    pub(crate) engine: Engine,
    linker: Linker<Exec>,
    compiled_dir: PathBuf,
    /// Pre-instantiated components by hash: a wake-up costs an instantiation.
    loaded: Mutex<HashMap<String, WorkflowPre<Exec>>>,
    _ticker: Ticker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("compiled_dir", &self.compiled_dir).finish_non_exhaustive()
    }
}

impl Runtime {
    pub(crate) fn new(cache_dir: &Path) -> Result<Runtime, Error> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| Error::Runtime(format!("{e:#}")))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compiled_dir =
            cache_dir.join("workflows").join("compiled").join(format!("engine-{:016x}", hasher.finish()));
        create_private_dir(&compiled_dir)?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| Error::Runtime(format!("{e:#}")))?;
        let ticker = Ticker::start(engine.clone())?;
        Ok(Runtime { engine, linker, compiled_dir, loaded: Mutex::default(), _ticker: ticker })
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
        let path = self.compiled_dir.join(format!("{sha256}.cwasm"));
        let cached = if path.is_file() {
            match load_artifact(&self.engine, &path) {
                Ok(component) => Some(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "A cached compiled workflow is unusable; recompiling.");
                    let _ = std::fs::remove_file(&path);
                    None
                }
            }
        } else {
            None
        };
        let compiled = cached.is_none();
        let component = match cached {
            Some(component) => component,
            None => {
                let bytes = bytes()?;
                check_header(&bytes)?;
                let component = Component::new(&self.engine, &bytes)
                    .map_err(|e| Error::InvalidComponent(format!("{e:#}")))?;
                check(&self.engine, &component)?;
                match component.serialize() {
                    Ok(artifact) => {
                        if let Err(e) = write_atomically(&path, &artifact) {
                            tracing::warn!(error = %e, path = %path.display(), "Cannot cache a compiled workflow.");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "Cannot serialise a compiled workflow.")
                    }
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
    // Version 0xd, layer 1: the component binary format.
    if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0, 0x01, 0] {
        Ok(())
    } else {
        Err(Error::NotComponent)
    }
}

/// Maps an artifact we wrote into memory.
#[allow(unsafe_code)]
fn load_artifact(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize_file` runs the file's contents as native code, so
    // it must be an artifact wasmtime produced. It is: the directory is
    // hearth's own (mode 0700), named by the hash of the engine's settings,
    // and each file is named by the SHA-256 of its source, written to a
    // temporary name, fsynced and renamed, so no partial file ever has a
    // final name. wasmtime checks the header and refuses a mismatch. Files
    // are never changed in place, so the mapping stays valid.
    unsafe { Component::deserialize_file(engine, path) }
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| Error::io(dir, e))
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// SHA-256 of `bytes`, lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write as _;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Advances the engine's epoch every [`TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: Engine) -> Result<Ticker, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("hearth-flows-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| Error::Runtime(format!("cannot start the epoch thread: {e}")))?;
        Ok(Ticker { stop })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
