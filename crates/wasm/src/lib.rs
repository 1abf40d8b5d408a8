//! The wasmtime set-up that apps and workflows share, so that both run
//! WebAssembly the same way and neither carries `unsafe` code.
//!
//! - [`config`]: the engine settings both need (the component model, epoch
//!   interruption); each subsystem adds its own knobs (apps: the pooling
//!   allocator) before building its engine.
//! - [`Cache`]: compiled components on disk, keyed by the SHA-256 of their
//!   source and by the engine's settings, written atomically; the one place
//!   a `.cwasm` file is mapped and run, with its safety argument.
//! - [`Ticker`]: advances an engine's epoch every [`TICK`], which is how CPU
//!   budgets are enforced.
//! - [`blobs`]: uploaded components shared through the store, in chunks
//!   under a manifest, so that every host on one store can run them.
//! - [`write_atomically`], [`create_private_dir`], [`sha256_hex`],
//!   [`binary_kind`]: small helpers both need for uploads and blobs.

pub mod blobs;
mod cache;
mod ticker;

pub use cache::{Artifact, Cache, create_private_dir, write_atomically};
pub use ticker::{TICK, Ticker};

use wasmtime::Config;

/// What can go wrong in the shared runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory of the cache could not be read or written.
    #[error("cannot read or write {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The cache is keyed by a SHA-256 in lowercase hex; anything else could
    /// name a file outside the cache directory.
    #[error("{0:?} is not a SHA-256 in lowercase hex, so it cannot name a compiled component")]
    BadKey(String),

    /// wasmtime could not turn a compiled component into bytes.
    #[error("cannot serialise a compiled component: {0}")]
    Serialize(String),

    /// The epoch thread could not be started (out of threads or memory).
    #[error("cannot start the epoch thread")]
    Ticker(#[source] std::io::Error),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_owned(), source }
    }
}

/// The engine settings every hearth engine has: components, and epoch
/// interruption so that a [`Ticker`] can stop a guest that computes too
/// long. A subsystem adds its own (e.g. an allocation strategy) on top.
pub fn config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config
}

/// What a WebAssembly binary is, from its 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// A component (version 0xd, layer 1): what hearth runs.
    Component,
    /// A core module (version 1): needs wrapping into a component.
    CoreModule,
    /// WebAssembly magic with a header version hearth does not know.
    Unknown(u32),
    /// Not WebAssembly at all.
    NotWasm,
}

/// Tells components from core modules and from things that are not
/// WebAssembly, so that an upload's error can say what to do about it.
pub fn binary_kind(bytes: &[u8]) -> Binary {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Binary::NotWasm;
    }
    match u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) {
        1 => Binary::CoreModule,
        0x0001_000d => Binary::Component,
        other => Binary::Unknown(other),
    }
}

/// SHA-256 of `bytes`, lowercase hex: how uploads and compiled components
/// are named.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// `digest` in lowercase hex.
fn hex(digest: &[u8]) -> String {
    use std::fmt::Write as _;
    digest.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert_eq!(binary_kind(b"hello world"), Binary::NotWasm);
        assert_eq!(binary_kind(b"\0asm"), Binary::NotWasm);
        assert_eq!(binary_kind(b"\0asm\x01\0\0\0"), Binary::CoreModule);
        assert_eq!(binary_kind(b"\0asm\x0d\0\x01\0"), Binary::Component);
        assert_eq!(binary_kind(b"\0asm\x0e\0\x01\0"), Binary::Unknown(0x0001_000e));
    }

    #[test]
    fn hashes_are_lowercase_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
