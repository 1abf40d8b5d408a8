//! hearth's host networking: the pieces a private network is made of.
//!
//! - [`link`]: bridges and taps (through iproute2), in the host's network
//!   namespace or a named one (tests use their own namespaces).
//! - [`firewall`]: one nftables ruleset, rendered from the desired state and
//!   applied atomically: isolation between networks, NAT, partitions.
//! - [`shaping`]: delay and jitter on taps: tc netem where the kernel has
//!   it, else [`delay`], a userspace delay line on an NFQUEUE.
//! - [`dns`]: a small authoritative DNS server for `MACHINE.NETWORK.hearth`
//!   and services' passing instances (`NAME.service.hearth`, SRV).
//! - [`forward`]: TCP and UDP port forwarding from the host into machines.
//! - [`activity`]: the traffic each machine saw, for machines that sleep
//!   when idle, and the wake-up of one a connection finds asleep (it lives
//!   in `hearth-routing`, which the apps ingress shares).
//! - [`balance`]: a host port balanced over a service's instances (TCP).
//! - [`overlay`]: networks that span hosts, through VXLAN tunnels whose
//!   forwarding entries are written from the store.

pub use hearth_routing::activity;
pub mod balance;
mod cmd;
pub mod delay;
pub mod dns;
pub mod firewall;
pub mod forward;
pub mod link;
mod nfqueue;
pub mod overlay;
pub mod record;
pub mod service;
pub mod shaping;

pub use service::{Networks, Options};
