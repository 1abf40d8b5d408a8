//! hearth's guest agent, and the host's side of its protocol.
//!
//! Inside a microVM the `hearth-agent` binary is `/init`: PID 1. It mounts
//! the kernel's filesystems, loads modules, optionally switches to a root
//! disk, reaps orphans, and serves the host on a virtio-serial port (or a
//! vsock) — running commands, with or without a terminal, and copying files.
//! Outside a VM the same server runs on a Unix socket or stdio, which is how
//! the tests drive it.
//!
//! - [`protocol`]: the frames and messages on the wire.
//! - [`client`]: the host side — [`client::AgentClient`], blocking, over
//!   any byte stream.
//! - [`server`]: the guest side's request loop, sessions and transfers.
//! - [`transport`]: finding the virtio-serial port, listening on a vsock.
//! - [`cmdline`]: the `hearth.*` kernel command line parameters.
//! - [`config`]: the machine's config files (`/run/hearth/config.json`
//!   and `config.env`), replaced when the host pushes a new config, and
//!   the reload action that follows.
//! - [`init`]: the PID 1 duties.
//! - [`main_process`]: the machine's main process, supervised under its
//!   restart policy, its output kept apart from the console.
//! - `grow`: growing the root file system to fill a larger disk, online.
//! - `net`: the guest's side of networking: interfaces, `/etc/resolv.conf`
//!   and `/etc/hosts`, from the command line (at boot, by [`init`]).
//!
//! **The server owns every child of its process**: it reaps any child
//! (`waitpid(-1)`), as PID 1 must. Run it in a process of its own, never
//! inside a process that waits on children of its own.

pub mod client;
pub mod cmdline;
pub mod config;
pub mod init;
pub mod main_process;
pub mod protocol;
pub mod server;
pub mod transport;

mod files;
mod grow;
mod net;
mod reaper;
mod session;
mod tty;

use std::io;
use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: PID 1 must keep serving after a
/// thread panicked, and every critical section here leaves its data valid.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An error's description without Rust's " (os error N)" suffix, so that
/// messages read like the C library's.
pub(crate) fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => nix::errno::Errno::from_raw(errno).desc().to_string(),
        None => e.to_string(),
    }
}

/// Prints a progress line to stderr: the console (the serial log) as PID 1.
/// Never panics, unlike `eprintln!`: PID 1 must not die of a broken console.
pub(crate) fn say(message: &str) {
    use std::io::Write;
    let _ = writeln!(io::stderr().lock(), "hearth-agent: {message}");
}
