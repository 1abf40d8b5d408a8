//! hearth's machines subsystem.
//!
//! Today it holds the host probe: what this host can run guests with. The
//! microVM lifecycle (VMM backends, images, the guest agent) lands here next.

pub mod initramfs;
pub mod kernel;
pub mod probe;
