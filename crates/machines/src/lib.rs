//! hearth's machines subsystem: Linux microVMs.
//!
//! - [`probe`]: what this host can run guests with.
//! - [`kernel`], [`initramfs`], [`guest`]: the boot payload (Debian's cloud
//!   kernel, and an initramfs with the guest agent as `/init`).
//! - [`image`]: root file systems from OCI registries or debootstrap.
//! - [`vmm`]: VM processes (QEMU with KVM or TCG; Firecracker with KVM).
//! - [`record`] and [`service`]: machine records in the store, and the
//!   reconcile loop that makes VMs match them. Each record names the host
//!   that runs it; a service acts only on its own host's machines.

pub mod guest;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod probe;
pub mod record;
pub mod service;
pub mod vmm;

use std::path::{Path, PathBuf};

pub use service::{ConfigFeed, ConfigPayload, CreateRequest, Load, Machines, Options, mark_host_lost};

/// What can go wrong with a machine. Messages are sentences that say what
/// to do next; the API maps each variant onto a status and a hint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("machine {0:?} does not exist")]
    NotFound(String),

    #[error("a machine named {0:?} already exists")]
    AlreadyExists(String),

    #[error("{0}")]
    Invalid(String),

    #[error("a {disk_mib} MiB disk is smaller than image {image:?}, which needs {image_mib} MiB")]
    DiskTooSmall { disk_mib: u64, image: String, image_mib: u64 },

    #[error("snapshot {0:?} does not exist")]
    SnapshotNotFound(String),

    #[error("a snapshot named {0:?} already exists")]
    SnapshotExists(String),

    #[error("image {0:?} is not here")]
    ImageNotFound(String),

    #[error("machine {name:?} is {state}, not running")]
    NotRunning { name: String, state: &'static str },

    #[error("machine {name:?} is {state}")]
    StillRunning { name: String, state: &'static str },

    /// The machine's VM and disk are on another host: what needs them
    /// (exec, files, logs, snapshots) is done there.
    #[error("machine {machine:?} has no trigger {id:?} (it has: {ids})")]
    TriggerNotFound { machine: String, id: String, ids: String },

    #[error("machine {name:?} runs on host {host:?}")]
    Elsewhere { name: String, host: String },

    /// The snapshot's files are on another host's disk.
    #[error("snapshot {name:?} is on host {host:?}")]
    SnapshotElsewhere { name: String, host: String },

    #[error("backend {backend} cannot run here: {reason}")]
    BackendUnavailable { backend: vmm::Backend, reason: String },

    #[error("the guest agent binary was not found")]
    AgentMissing,

    #[error("the machine did not boot: {0}")]
    BootFailed(String),

    #[error("the machine record of {0:?} is unreadable")]
    Corrupt(String, #[source] serde_json::Error),

    #[error("the record of machine {0:?} kept changing underneath; try again")]
    Contended(String),

    #[error("talking to the guest agent failed")]
    Agent(#[source] hearth_agent::client::Error),

    #[error(transparent)]
    Vmm(#[from] vmm::Error),

    #[error(transparent)]
    Guest(#[from] guest::Error),

    #[error(transparent)]
    Kernel(#[from] kernel::Error),

    #[error(transparent)]
    Image(#[from] image::Error),

    #[error(transparent)]
    Store(#[from] hearth_store::Error),

    #[error(transparent)]
    Network(#[from] hearth_net::service::Error),

    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_owned(), source }
    }
}

pub use hearth_store::chain;
