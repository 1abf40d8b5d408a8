//! The service registry: everything that serves, by name, with its health.
//!
//! A service is either **of machines** (hearth keeps `count` machines of an
//! image running, named `NAME-1`, `NAME-2`, ...; the supervisor replaces one
//! that stops or stays critical) or **registered** (a process anywhere
//! registers an instance under a TTL and renews it with heartbeats; when
//! they stop, its lease expires and the instance is gone, so a crash leaves
//! no stale entry). Apps are services too; the API lists them beside these.
//!
//! Every instance is checked ([`check`]); the ones that pass are published
//! as one record per service, `services/endpoints/NAME`, which is what DNS
//! (`NAME.service.hearth`), blocking queries and routing read. Records and
//! their keys are in [`record`]; the handle the API uses is [`Services`];
//! the loop that keeps it all true is in `supervise.rs`.

pub mod check;
mod checker;
pub mod plan;
pub mod record;
mod service;
mod supervise;
#[cfg(test)]
mod tests;

pub use service::{CreateService, Deploy, MAX_COUNT, MAX_WAIT, Placer, Register, ServiceView, Services};

use hearth_store::Revision;

/// Errors of the registry. The API adds to each what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("service {0:?} does not exist")]
    NotFound(String),

    #[error("service {service:?} has no instance {id:?} (a registration whose heartbeats stopped is gone)")]
    InstanceNotFound { service: String, id: String },

    #[error("a service named {0:?} already exists")]
    AlreadyExists(String),

    #[error("{0}")]
    Invalid(String),

    #[error("service {0:?} is a service of machines: hearth keeps its instances, nobody registers them")]
    NotRegistered(String),

    #[error("service {0:?} has registered instances, not machines: it has no count to scale")]
    NotMachines(String),

    #[error("host port {port} is already forwarded to {by}")]
    PortTaken { port: u16, by: String },

    #[error("the record at {0:?} is unreadable")]
    Corrupt(String, #[source] serde_json::Error),

    #[error("service {0:?} kept changing underneath")]
    Conflict(String),

    #[error(transparent)]
    Store(#[from] hearth_store::Error),

    #[error(transparent)]
    Machines(#[from] hearth_machines::Error),
}

/// A value read with the revision that last changed it, for blocking queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    /// The revision of the last change to it (0 if it was never written).
    pub index: Revision,
}
