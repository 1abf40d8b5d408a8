//! Compiled components on disk, so that a restart or a second deploy of the
//! same bytes maps native code instead of compiling it again (compiling takes
//! seconds; loading takes milliseconds).
//!
//! Layout: `ROOT/engine-SETTINGS/SHA256.cwasm`, where `SETTINGS` is a hash of
//! the engine's compilation settings (another wasmtime version or
//! configuration never reads an artifact it did not write) and `SHA256` is the
//! hash of the component the artifact was compiled from. The cache is
//! disposable: a missing or unusable artifact is compiled again.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::Error;

/// The on-disk cache of one engine's compiled components.
#[derive(Clone)]
pub struct Cache {
    engine: Engine,
    dir: PathBuf,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// A compiled component as bytes, ready to be written to the cache. Only
/// [`Cache::serialize`] makes one, so only what wasmtime produced reaches a
/// final name in the cache (the safety argument of [`Cache::load`] rests on
/// it). It is `Send`: the write can happen on another thread.
pub struct Artifact(Vec<u8>);

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Artifact({} bytes)", self.0.len())
    }
}

impl Cache {
    /// The cache of `engine`'s artifacts under `root` (e.g.
    /// `CACHE_DIR/apps/compiled`), created with mode 0700 if missing.
    pub fn open(engine: &Engine, root: &Path) -> Result<Cache, Error> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = root.join(format!("engine-{:016x}", hasher.finish()));
        create_private_dir(&dir)?;
        Ok(Cache { engine: engine.clone(), dir })
    }

    /// The directory the artifacts are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact of the component with hash `sha256` lives. The key
    /// must be lowercase hex, so that it cannot name a file elsewhere.
    fn path(&self, sha256: &str) -> Result<PathBuf, Error> {
        let hex = sha256.len() == 64 && sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex {
            return Err(Error::BadKey(sha256.to_owned()));
        }
        Ok(self.dir.join(format!("{sha256}.cwasm")))
    }

    /// The compiled component for `sha256`, if the cache has a usable one.
    /// An artifact wasmtime refuses (truncated, not an artifact, from
    /// another version) is deleted with a warning and `None` returned, so
    /// the caller compiles again and [`Cache::store`]s a good one.
    #[allow(unsafe_code)]
    pub fn load(&self, sha256: &str) -> Option<Component> {
        // SAFETY: see `load_with`.
        self.load_with(sha256, |engine, path| unsafe { Component::deserialize_file(engine, path) })
    }

    /// The same for a core module cached by [`Cache::serialize_module`].
    #[allow(unsafe_code)]
    pub fn load_module(&self, sha256: &str) -> Option<Module> {
        // SAFETY: see `load_with`.
        self.load_with(sha256, |engine, path| unsafe { Module::deserialize_file(engine, path) })
    }

    /// Loads the artifact for `sha256` with `deserialize`, which must be
    /// wasmtime's `deserialize_file` of a component or a module.
    ///
    /// Safety of `deserialize_file`: it maps the file and runs its contents
    /// as native code, so the file must be an artifact wasmtime produced,
    /// must be whole, and must not change while mapped.
    /// - Produced by wasmtime: the directory is hearth's own (mode 0700,
    ///   `create_private_dir`), and only `write`, given an `Artifact` that
    ///   only `serialize` (`Component::serialize`) or `serialize_module`
    ///   (`Module::serialize`) makes, puts a file under a `.cwasm` name in
    ///   it. A component's artifact read as a module's (or the reverse) is
    ///   refused by wasmtime's checks of the artifact's metadata.
    /// - Whole: `write_atomically` writes a temporary file of its own
    ///   (unique per process and call, so concurrent writers of one hash
    ///   never share it), fsyncs it, renames it into place and fsyncs the
    ///   directory, so no crash or race leaves a partial file under a final
    ///   name. Should one appear anyway (a full disk, a copied cache),
    ///   wasmtime bounds-checks the ELF image and its header, refusing a
    ///   truncated file with an error, and we delete it below.
    /// - For this engine: the directory is named by the hash of the
    ///   engine's compilation settings, and wasmtime checks the artifact's
    ///   recorded version and settings against the engine.
    /// - Unchanging: files are only ever replaced by rename (a new inode)
    ///   or deleted, never written in place, so a mapping stays valid.
    fn load_with<T>(
        &self,
        sha256: &str,
        deserialize: impl FnOnce(&Engine, &Path) -> wasmtime::Result<T>,
    ) -> Option<T> {
        let path = self.path(sha256).ok()?;
        if !path.is_file() {
            return None;
        }
        match deserialize(&self.engine, &path) {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "A cached compiled artifact is unusable; it will be compiled again.");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// `component` as bytes for [`Cache::write`].
    pub fn serialize(component: &Component) -> Result<Artifact, Error> {
        component.serialize().map(Artifact).map_err(|e| Error::Serialize(format!("{e:#}")))
    }

    /// `module` as bytes for [`Cache::write`].
    pub fn serialize_module(module: &Module) -> Result<Artifact, Error> {
        module.serialize().map(Artifact).map_err(|e| Error::Serialize(format!("{e:#}")))
    }

    /// Caches `artifact` as the compiled form of the component with hash
    /// `sha256`. Blocking (it fsyncs); concurrent writers of the same hash,
    /// in this process or another, each write a whole file and the last
    /// rename wins.
    pub fn write(&self, sha256: &str, artifact: &Artifact) -> Result<(), Error> {
        write_atomically(&self.path(sha256)?, &artifact.0)
    }

    /// [`Cache::serialize`] and [`Cache::write`] in one.
    pub fn store(&self, sha256: &str, component: &Component) -> Result<(), Error> {
        self.write(sha256, &Cache::serialize(component)?)
    }

    /// The hashes of the `n` artifacts written most recently.
    pub fn newest(&self, n: usize) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return vec![] };
        let mut written: Vec<(std::time::SystemTime, String)> = entries
            .flatten()
            .filter_map(|entry| {
                let sha = entry.file_name().to_str()?.strip_suffix(".cwasm")?.to_owned();
                Some((entry.metadata().ok()?.modified().ok()?, sha))
            })
            .collect();
        written.sort();
        written.into_iter().rev().take(n).map(|(_, sha)| sha).collect()
    }

    /// Deletes the artifacts of components not in `keep`.
    pub fn prune(&self, keep: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(sha) = name.to_str().and_then(|n| n.strip_suffix(".cwasm")) else { continue };
            if !keep.contains(sha) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Creates `dir` and its parents, readable by this user only: what is in it
/// is run as native code or holds uploaded programs.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| Error::io(dir, e))
}

/// Writes `path` so that it either has all of `bytes` or does not exist,
/// even across a crash, and even with other writers of the same path.
///
/// The bytes go to a temporary file in the same directory whose name is
/// unique per process and call (two deploys of the same bytes, two daemons
/// sharing a cache never share one), which is fsynced, renamed over `path`,
/// and then the directory is fsynced so that the rename itself survives a
/// crash. The last rename wins, with a whole file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// The smallest component: its header and nothing else. It compiles in
    /// milliseconds, which is all the cache needs.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn engine() -> Engine {
        Engine::new(&crate::config()).unwrap()
    }

    fn compiled(engine: &Engine) -> (String, Component) {
        let component = Component::new(engine, EMPTY_COMPONENT).unwrap();
        (crate::sha256_hex(EMPTY_COMPONENT), component)
    }

    #[test]
    fn a_stored_component_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = Cache::open(&engine, dir.path()).unwrap();
        let (sha, component) = compiled(&engine);
        assert!(cache.load(&sha).is_none());
        cache.store(&sha, &component).unwrap();
        assert!(cache.load(&sha).is_some());
        // Nothing but the artifact is left behind: no temporary files.
        let names: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from(format!("{sha}.cwasm"))]);
    }

    #[test]
    fn the_cache_is_private_and_per_engine_settings() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&engine(), dir.path()).unwrap();
        let mode = std::fs::metadata(cache.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let mut other = crate::config();
        other.epoch_interruption(false);
        let other = Cache::open(&Engine::new(&other).unwrap(), dir.path()).unwrap();
        assert_ne!(cache.dir(), other.dir());
    }

    #[test]
    fn keys_must_be_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = Cache::open(&engine, dir.path()).unwrap();
        let (_, component) = compiled(&engine);
        for key in ["../../escape", "ABC", &"A".repeat(64), ""] {
            assert!(matches!(cache.store(key, &component), Err(Error::BadKey(_))), "{key}");
            assert!(cache.load(key).is_none());
        }
    }

    #[test]
    fn a_truncated_or_foreign_artifact_is_compiled_again_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = Cache::open(&engine, dir.path()).unwrap();
        let (sha, component) = compiled(&engine);
        let whole = Cache::serialize(&component).unwrap().0;
        let path = cache.path(&sha).unwrap();
        let cases: [(&str, Vec<u8>); 4] = [
            ("empty", Vec::new()),
            ("half", whole[..whole.len() / 2].to_vec()),
            ("all but the last byte", whole[..whole.len() - 1].to_vec()),
            ("a wasm source, not an artifact", EMPTY_COMPONENT.to_vec()),
        ];
        for (case, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            assert!(cache.load(&sha).is_none(), "{case}: an unusable artifact was loaded");
            assert!(!path.exists(), "{case}: the unusable artifact was kept");
            // What the callers do next: compile and store again.
            cache.store(&sha, &component).unwrap();
            assert!(cache.load(&sha).is_some(), "{case}: the artifact stored again does not load");
        }
    }

    #[test]
    fn concurrent_writers_of_one_hash_never_leave_a_partial_file() {
        // Writers of the same path with different contents, each a run of one
        // byte value; a reader checks that whatever it sees is one writer's
        // whole file. With one temporary name per process (the old
        // workflows cache), two writers truncated and interleaved each other.
        const LEN: usize = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("same.cwasm"));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seen = 0;
                while !done.load(Ordering::Relaxed) {
                    let Ok(bytes) = std::fs::read(&*path) else { continue };
                    assert_eq!(bytes.len(), LEN, "a partial file under the final name");
                    assert!(bytes.iter().all(|&b| b == bytes[0]), "two writers' bytes in one file");
                    seen += 1;
                }
                seen
            })
        };
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        write_atomically(&path, &vec![i; LEN]).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0, "the reader never saw the file");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["same.cwasm"], "temporary files were left behind");
    }

    #[test]
    fn prune_keeps_only_what_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = Cache::open(&engine, dir.path()).unwrap();
        let (sha, component) = compiled(&engine);
        let other = crate::sha256_hex(b"other");
        cache.store(&sha, &component).unwrap();
        cache.store(&other, &component).unwrap();
        cache.prune(&HashSet::from([sha.clone()]));
        assert!(cache.load(&sha).is_some());
        assert!(cache.load(&other).is_none());
    }

    #[test]
    fn the_newest_are_the_last_written() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = Cache::open(&engine, dir.path()).unwrap();
        let (_, component) = compiled(&engine);
        let shas: Vec<String> = (0..3).map(|n| crate::sha256_hex(&[n])).collect();
        for (age, sha) in shas.iter().enumerate() {
            cache.store(sha, &component).unwrap();
            let then = std::time::SystemTime::now() - std::time::Duration::from_secs(60 * age as u64);
            std::fs::File::options()
                .write(true)
                .open(cache.dir().join(format!("{sha}.cwasm")))
                .unwrap()
                .set_modified(then)
                .unwrap();
        }
        assert_eq!(cache.newest(2), shas[..2]);
        assert_eq!(cache.newest(9).len(), 3);
    }
}
