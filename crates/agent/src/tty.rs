//! Pseudo-terminals for tty sessions.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};

/// A new pseudo-terminal pair; both ends are close-on-exec.
#[derive(Debug)]
pub(crate) struct Pty {
    pub(crate) master: File,
    pub(crate) slave: File,
}

/// Opens a pty of `rows` × `cols`.
pub(crate) fn open(rows: u16, cols: u16) -> io::Result<Pty> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    // std opens with O_CLOEXEC.
    let slave = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(name)?;
    let master = File::from(OwnedFd::from(master));
    set_window_size(&master, rows, cols)?;
    Ok(Pty { master, slave })
}

/// Sets the window size (TIOCSWINSZ); the kernel sends SIGWINCH to the
/// terminal's foreground process group.
#[allow(unsafe_code)]
pub(crate) fn set_window_size(master: &impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which is
    // valid for the call; the fd is borrowed, so it is open.
    let res = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) };
    Errno::result(res)?;
    Ok(())
}

/// Makes the child a session leader whose controlling terminal is its
/// stdin (which must be the pty's slave).
#[allow(unsafe_code)]
pub(crate) fn make_controlling_terminal(cmd: &mut Command) {
    let take_terminal = || -> io::Result<()> {
        nix::unistd::setsid()?;
        // SAFETY: TIOCSCTTY takes an integer argument, no pointer; fd 0 is
        // the slave, set up by std before this closure runs.
        Errno::result(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec, where only
    // async-signal-safe calls are allowed: it makes two system calls
    // (setsid, ioctl) and allocates nothing.
    unsafe { cmd.pre_exec(take_terminal) };
}
