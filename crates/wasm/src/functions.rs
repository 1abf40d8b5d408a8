//! Cranelift's incremental compilation cache, on disk: one file per compiled
//! function, so that a redeploy which changes a few functions compiles only
//! those (functions already compiled for any earlier version come from
//! here).
//!
//! Cranelift hands [`FunctionCache`] a key (a hash of a function's IR and the
//! compiler's settings) and, after compiling, the function's machine code as
//! bytes. Each entry is `ROOT/HASH.fn`, where `HASH` is the SHA-256 of the
//! key, and holds the SHA-256 of the value followed by the value: an entry
//! whose checksum does not match (torn by a crash, damaged on disk) is
//! deleted and counted as a miss, never handed to Cranelift. Entries are
//! written to a temporary file and renamed into place, so a reader sees a
//! whole entry or none; they are not fsynced (thousands of functions per
//! compile), which the checksum makes safe.
//!
//! The cache is bounded: [`FunctionCache::prune`] deletes the least recently
//! used entries (a hit refreshes an entry's modification time) until the
//! total is under the limit.
//!
//! Only Cranelift uses it: Winch refuses an incremental cache
//! (`Config::enable_incremental_compilation` makes a Winch engine fail to
//! build), and Winch compiles in a single fast pass anyway.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::Digest;

use crate::Error;

/// Bytes of SHA-256 in front of every entry.
const CHECKSUM: usize = 32;

/// Cranelift's per-function cache, in a directory of its own.
#[derive(Debug)]
pub struct FunctionCache {
    dir: PathBuf,
    limit: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// How often the cache answered, since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Functions whose machine code came from the cache.
    pub hits: u64,
    /// Functions Cranelift had to compile (and then stored).
    pub misses: u64,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
        }
    }
}

impl FunctionCache {
    /// The cache under `dir` (created with mode 0700 if missing), kept to
    /// about `limit` bytes by [`FunctionCache::prune`].
    pub fn open(dir: &Path, limit: u64) -> Result<FunctionCache, Error> {
        crate::create_private_dir(dir)?;
        Ok(FunctionCache { dir: dir.to_owned(), limit, hits: AtomicU64::new(0), misses: AtomicU64::new(0) })
    }

    /// The directory the entries are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hits and misses so far.
    pub fn counts(&self) -> Counts {
        Counts { hits: self.hits.load(Ordering::Relaxed), misses: self.misses.load(Ordering::Relaxed) }
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.fn", crate::hex(&sha2::Sha256::digest(key))))
    }

    /// The value stored for `key`, if there is a whole one.
    fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        let path = self.path(key);
        let mut bytes = std::fs::read(&path).ok()?;
        if bytes.len() < CHECKSUM || sha2::Sha256::digest(&bytes[CHECKSUM..])[..] != bytes[..CHECKSUM] {
            tracing::warn!(path = %path.display(), "A cached compiled function is damaged; it will be compiled again.");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // Least recently used goes first when pruning: a hit is a use.
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        bytes.drain(..CHECKSUM);
        Some(bytes)
    }

    /// Stores `value` for `key`: whole or not at all (see the module's
    /// documentation for why it is not fsynced).
    fn write(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self.path(key);
        let tmp =
            self.dir.join(format!(".{}-{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let mut bytes = Vec::with_capacity(CHECKSUM + value.len());
        bytes.extend_from_slice(&sha2::Sha256::digest(value));
        bytes.extend_from_slice(value);
        let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&path, e)
        })
    }

    /// Deletes the least recently used entries until the rest fit in the
    /// limit, and temporary files a crash left behind. Returns the bytes
    /// kept.
    pub fn prune(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let mut kept = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            match path.extension().and_then(|e| e.to_str()) {
                Some("fn") => {
                    kept.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), path))
                }
                // Another process's write in flight is at most seconds old.
                Some("tmp")
                    if meta.modified().is_ok_and(|m| m.elapsed().is_ok_and(|age| age.as_secs() > 3600)) =>
                {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        let mut total: u64 = kept.iter().map(|(_, len, _)| len).sum();
        kept.sort();
        for (_, len, path) in kept {
            if total <= self.limit {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
        total
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.read(key);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        match self.write(key, &value) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %hearth_store::chain(&e), "Cannot cache a compiled function.");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::CacheStore;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_stored_function_is_found_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FunctionCache::open(dir.path(), 1 << 20).unwrap();
        assert!(cache.get(b"key").is_none());
        assert!(cache.insert(b"key", b"machine code".to_vec()));
        assert_eq!(cache.get(b"key").as_deref(), Some(&b"machine code"[..]));
        assert_eq!(cache.counts(), Counts { hits: 1, misses: 1 });
        // One entry, no temporary file left behind: written whole, renamed.
        let names = names(dir.path());
        assert_eq!(names.len(), 1);
        assert!(names[0].ends_with(".fn"), "{names:?}");
    }

    #[test]
    fn a_damaged_entry_is_a_miss_and_goes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FunctionCache::open(dir.path(), 1 << 20).unwrap();
        for damage in [&b""[..], b"short", &[0u8; 40]] {
            assert!(cache.insert(b"key", b"machine code".to_vec()));
            let path = cache.path(b"key");
            std::fs::write(&path, damage).unwrap();
            assert!(cache.get(b"key").is_none(), "{damage:?}");
            assert!(!path.exists(), "a damaged entry is deleted");
        }
        // A flipped byte in the value is caught by the checksum.
        assert!(cache.insert(b"key", b"machine code".to_vec()));
        let path = cache.path(b"key");
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(cache.get(b"key").is_none());
        assert_eq!(cache.counts().hits, 0);
    }

    #[test]
    fn pruning_keeps_the_recently_used_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two entries of 32 + 100 bytes, not three.
        let cache = FunctionCache::open(dir.path(), 300).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        for (i, key) in [b"a", b"b", b"c"].iter().enumerate() {
            assert!(cache.insert(*key, vec![0; 100]));
            let file = std::fs::File::options().write(true).open(cache.path(*key)).unwrap();
            file.set_modified(old + std::time::Duration::from_secs(i as u64)).unwrap();
        }
        // "a" is the oldest written, but used just now: "b" goes instead.
        assert!(cache.get(b"a").is_some());
        assert_eq!(cache.prune(), 264);
        assert!(cache.path(b"a").exists());
        assert!(!cache.path(b"b").exists());
        assert!(cache.path(b"c").exists());
    }
}
