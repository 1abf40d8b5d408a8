//! The wasmtime set-up that apps and workflows share, so that both run
//! WebAssembly the same way and neither carries `unsafe` code.
//!
//! - [`config`]: the engine settings both need (the component model, epoch
//!   interruption), compiling with Cranelift; each subsystem adds its own
//!   knobs (apps: the pooling allocator) before building its engine.
//!   [`baseline_config`] is the same with the Winch baseline compiler, which
//!   compiles several times faster into slower code: apps serve a new
//!   version with it while Cranelift compiles in the background.
//! - [`FunctionCache`]: Cranelift's incremental cache of compiled functions,
//!   on disk, bounded and counted (Cranelift only: Winch has none).
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
mod functions;
mod ticker;

pub use cache::{Artifact, Cache, create_private_dir, write_atomically};
pub use functions::{Counts, FunctionCache};
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

/// [`config`] with the Winch baseline compiler instead of Cranelift: one
/// pass over each function, no optimisation. Winch checks epochs as
/// Cranelift does, so CPU budgets hold. It has no incremental cache and
/// refuses some proposals Cranelift compiles (tail calls, exceptions,
/// relaxed SIMD, GC); a component that uses them fails to compile here and
/// must be compiled with [`config`].
pub fn baseline_config() -> Config {
    let mut config = config();
    config.strategy(wasmtime::Strategy::Winch);
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

    /// A core module exporting `spin`, which loops forever.
    const SPIN: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // module header
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type 0: [] -> []
        0x03, 0x02, 0x01, 0x00, // one function of type 0
        0x07, 0x08, 0x01, 0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // export "spin"
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop { br 0 }
    ];

    #[test]
    fn winch_refuses_what_cranelift_compiles() {
        use wasmtime::component::Component;
        let winch = wasmtime::Engine::new(&baseline_config()).unwrap();
        let cranelift = wasmtime::Engine::new(&config()).unwrap();
        let Err(refused) = Component::new(&winch, TAIL_CALL) else { panic!("Winch compiled a tail call") };
        assert!(format!("{refused:#}").contains("tail call"), "{refused:#}");
        Component::new(&cranelift, TAIL_CALL).expect("Cranelift compiles tail calls");
    }

    #[test]
    fn winch_code_is_interrupted_by_the_epoch() {
        let engine = wasmtime::Engine::new(&baseline_config()).unwrap();
        let module = wasmtime::Module::new(&engine, SPIN).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(1);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let spin = instance.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
        let _ticker = Ticker::start(engine.clone(), "test-epoch").unwrap();
        let error = spin.call(&mut store, ()).expect_err("the loop never ends by itself");
        assert_eq!(error.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::Interrupt), "{error:#}");
    }

    #[test]
    fn hashes_are_lowercase_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
