//! Machine images: root file systems as ext4 files, cached by digest.
//!
//! An image comes from an OCI/Docker registry ([`ImageStore::pull`]) or is
//! built from Debian packages with debootstrap ([`ImageStore::build_debian`]).
//! Either way its file tree is assembled in a staging directory and turned
//! into one ext4 file with `mkfs.ext4 -d`, which machines then use as the
//! read-only backing file of their own copy-on-write disk.
//!
//! - `reference`: parsing `debian:bookworm`, `ghcr.io/o/r@sha256:…`.
//! - `registry`: the registry v2 HTTP client (auth, manifests, blobs).
//! - [`unpack`]: applying layer tarballs in order, with whiteouts.
//! - `debian`: debootstrap, the host's mirror, and the tree's defaults.
//! - `ext4`: sizing the tree and making the file system.
//! - `store`: the on-disk layout, names, locks and the public operations.
//!
//! Everything here is blocking; the daemon calls it from `spawn_blocking`.

mod debian;
mod ext4;
mod reference;
mod registry;
mod store;
pub mod unpack;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use registry::fuzzing;

pub use debian::{DEFAULT_MIRROR, debian_mirror, prepare_debian_tree};
pub use reference::{Reference, parse_reference};
pub use store::ImageStore;

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Keeps the password out of logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An image in the store: an ext4 root file system and how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The name it was asked for by, e.g. `debian:bookworm` or
    /// `127.0.0.1:5000/test:latest`; an image no name points to any more is
    /// named by its repository and digest (`debian@sha256:…`).
    pub name: String,
    /// `sha256:` and 64 hex digits: the image manifest's digest for a pulled
    /// image, the digest of the file tree for a built one.
    pub digest: String,
    /// The ext4 file. Never written to: machines put an overlay on top.
    pub rootfs: PathBuf,
    /// The apparent size of the ext4 file (it is sparse).
    pub size_bytes: u64,
    pub config: ImageConfig,
    /// When this host pulled or built it.
    pub created_unix: u64,
    pub source: ImageSource,
}

/// How to start the image, from the OCI image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// Where an image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    /// Pulled from a registry; `reference` is the full reference pulled,
    /// e.g. `docker.io/library/debian:bookworm`.
    Registry { reference: String },
    /// Built with debootstrap.
    Debootstrap { suite: String, packages: Vec<String>, mirror: String },
}

/// What a long operation is doing, for progress bars.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Progress {
    /// Asking the registry what the reference names.
    Resolving {
        reference: String,
    },
    /// A blob is downloading; sent when it starts, about every MiB, and when
    /// it ends. Cached blobs send nothing.
    Downloading {
        digest: String,
        done: u64,
        total: u64,
    },
    /// Layer `layer` (from 1) of `layers` is being unpacked.
    Unpacking {
        layer: usize,
        layers: usize,
    },
    /// A step of a debootstrap build, e.g. `Retrieving Packages`.
    Building {
        step: String,
    },
    /// `mkfs.ext4` is making a file system of this size.
    MakingFilesystem {
        bytes: u64,
    },
    Done,
}

/// What can go wrong with images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference does not parse.
    #[error("`{input}` is not a valid image reference: {reason}")]
    BadReference { input: String, reason: String },

    /// The registry has no such repository, tag or digest.
    #[error(
        "{reference} was not found on {registry}; check the repository name and tag (`debian:bookworm`, `ghcr.io/OWNER/NAME:TAG`), and pass credentials if it is private"
    )]
    NotFound { reference: String, registry: String },

    /// No image in the store has this name or digest.
    #[error(
        "no image is named `{0}` or has that digest; `hearth image ls` lists the images, `hearth image pull` fetches one"
    )]
    UnknownImage(String),

    /// A digest prefix matches several images.
    #[error("the digest prefix `{prefix}` matches {count} images; give more digits")]
    AmbiguousDigest { prefix: String, count: usize },

    /// The registry cannot be reached.
    #[error("cannot connect to the registry at {url}; check that it is running and reachable")]
    Unreachable {
        url: String,
        #[source]
        source: ureq::Error,
    },

    /// The registry wants credentials, or refused the ones given.
    #[error("{registry} refused access to {repository}: {reason}")]
    Unauthorized { registry: String, repository: String, reason: String },

    /// The registry answered with an unexpected status.
    #[error("{registry} answered {status} to {url}: {detail}")]
    Registry { registry: String, url: String, status: u16, detail: String },

    /// The HTTP exchange with the registry failed part-way.
    #[error("the HTTP exchange with {url} failed")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },

    /// A downloaded blob or manifest does not match its digest.
    #[error(
        "{what} {expected} arrived with digest {actual}; the registry or something between sent corrupt data, pull again"
    )]
    DigestMismatch { what: &'static str, expected: String, actual: String },

    /// A manifest, index or config is not what an image needs.
    #[error("{reference} is not a usable image: {reason}")]
    BadImage { reference: String, reason: String },

    /// The image has no variant this host can run.
    #[error("{reference} has no linux/amd64 image (it has {available}); pick a tag built for linux/amd64")]
    NoPlatform { reference: String, available: String },

    /// A layer could not be applied.
    #[error("cannot unpack layer {digest}")]
    Layer {
        digest: String,
        #[source]
        source: Box<Error>,
    },

    /// A layer entry would land outside the root file system.
    #[error("the layer entry `{entry}` {reason}; the image is malformed or malicious")]
    UnsafeEntry { entry: String, reason: String },

    /// A layer unpacks to more than the limit allows (a compressed bomb, or
    /// an image larger than this host accepts).
    #[error(
        "{what} unpacks to more than {}, the limit; the image is malformed or malicious, or too large for this host (pick a smaller image)",
        size(*limit)
    )]
    TooLarge { what: &'static str, limit: u64 },

    /// A layer is not a readable (optionally compressed) tar archive.
    #[error("the layer is not a valid tar archive (plain, gzip or zstd)")]
    BadArchive(#[source] std::io::Error),

    /// A program we run failed.
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },

    /// A program we need could not be started.
    #[error("cannot run `{program}`; install it with `apt-get install {package}`")]
    Spawn {
        program: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A debootstrap suite or package name is not valid.
    #[error("`{0}` is not a valid Debian {1} name; use lowercase letters, digits and `.+-`")]
    BadDebianName(String, &'static str),

    /// A file of the store is damaged.
    #[error(
        "{path} is damaged ({reason}); remove the image with `hearth image rm` and pull or build it again"
    )]
    Corrupt { path: PathBuf, reason: String },

    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A stable identifier for the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadReference { .. } | Error::BadDebianName(..) => "invalid_field",
            Error::NotFound { .. } | Error::UnknownImage(_) => "not_found",
            Error::AmbiguousDigest { .. } => "ambiguous",
            Error::Unreachable { .. } | Error::Transport { .. } | Error::Registry { .. } => {
                "registry_unavailable"
            }
            Error::Unauthorized { .. } => "registry_unauthorized",
            Error::DigestMismatch { .. } => "digest_mismatch",
            Error::Layer { source, .. } if matches!(**source, Error::TooLarge { .. }) => "image_too_large",
            Error::BadImage { .. } | Error::NoPlatform { .. } | Error::Layer { .. } => "bad_image",
            Error::UnsafeEntry { .. } | Error::BadArchive(_) => "bad_image",
            Error::TooLarge { .. } => "image_too_large",
            Error::Command { .. } | Error::Spawn { .. } => "command_failed",
            Error::Corrupt { .. } | Error::Io { .. } => "internal",
        }
    }
}

/// `16 GiB`, `4 MiB`, `64 KiB`: a limit as a person reads it.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b.div_ceil(1 << 10)),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// `sha256:` and the lowercase hex of `bytes`' SHA-256.
fn sha256_digest(hash: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in hash {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The 64 hex digits of a `sha256:` digest, if it is one.
fn digest_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}
