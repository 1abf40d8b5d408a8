//! Reaps every child of the process and routes exit statuses to whoever
//! spawned them.
//!
//! As PID 1 the agent inherits every orphan in the guest, so it must wait on
//! any child (`waitpid(-1)`), not only on the ones it started. That would
//! race with `std`'s own `waitpid` on a child whose `exec` failed, so spawns
//! and reaps exclude each other: the reaper thread first waits without
//! reaping (`waitid(WNOWAIT)`), then reaps under the same lock that
//! [`Reaper::spawn`] holds. Because of this the reaper owns all children of
//! the process: run the server in a process of its own.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::lock;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
}

#[derive(Debug)]
pub(crate) struct Reaper {
    /// Pids spawned through us that are not reaped yet. Held across spawn and
    /// reap, so a pid in here is still ours (alive or a zombie) and safe to signal.
    children: Mutex<HashMap<i32, Sender<Exit>>>,
    /// Bumped on every spawn, to wake the thread when it had no children.
    spawned: Mutex<u64>,
    spawned_cv: Condvar,
}

/// The process's reaper, started on first use.
pub(crate) fn global() -> &'static Reaper {
    static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            children: Mutex::new(HashMap::new()),
            spawned: Mutex::new(0),
            spawned_cv: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reaper.run())
            .expect("the reaper thread must start");
        reaper
    })
}

impl Reaper {
    /// Spawns `cmd`; the receiver gets its exit status once it is reaped.
    pub(crate) fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, Receiver<Exit>)> {
        let mut children = lock(&self.children);
        let child = cmd.spawn()?;
        let (tx, rx) = mpsc::channel();
        children.insert(child.id() as i32, tx);
        drop(children);
        *lock(&self.spawned) += 1;
        self.spawned_cv.notify_all();
        Ok((child, rx))
    }

    /// Sends `signal` to `pid` (or to its process group), unless it was
    /// already reaped. Returns whether it was still ours.
    pub(crate) fn signal(&self, pid: u32, signal: Signal, group: bool) -> nix::Result<bool> {
        let children = lock(&self.children);
        if !children.contains_key(&(pid as i32)) {
            return Ok(false);
        }
        let target = if group { -(pid as i32) } else { pid as i32 };
        kill(Pid::from_raw(target), signal)?;
        drop(children);
        Ok(true)
    }

    /// Whether the process has no children left at all (spawned by us or adopted).
    pub(crate) fn has_no_children(&self) -> bool {
        waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT)
            == Err(Errno::ECHILD)
    }

    fn run(&self) {
        loop {
            let seen = *lock(&self.spawned);
            // Wait until some child has terminated, without reaping it. nix
            // reports EINVAL for a signal it has no name for (real-time
            // signals); a child still terminated, so reap.
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(_) | Err(Errno::EINVAL) => self.reap_all(),
                Err(Errno::ECHILD) => {
                    let guard = lock(&self.spawned);
                    // The timeout only guards against a missed wake-up.
                    let _ = self.spawned_cv.wait_timeout_while(guard, Duration::from_secs(1), |n| *n == seen);
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    crate::say(&format!("waiting for children failed: {}", e.desc()));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Reaps every terminated child and delivers the statuses of ours.
    fn reap_all(&self) {
        let mut children = lock(&self.children);
        while let Some((pid, exit)) = reap_one() {
            if let Some(tx) = children.remove(&pid) {
                let _ = tx.send(exit);
            }
        }
    }
}

/// Reaps one terminated child without blocking.
///
/// `libc::waitpid` rather than nix's: nix fails to decode a status killed
/// by a real-time signal after the child is already reaped, losing its pid.
#[allow(unsafe_code)]
fn reap_one() -> Option<(i32, Exit)> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable c_int for the call's duration.
        let pid = unsafe { nix::libc::waitpid(-1, &mut status, nix::libc::WNOHANG) };
        if pid > 0 {
            let exit = if nix::libc::WIFEXITED(status) {
                Exit { code: Some(nix::libc::WEXITSTATUS(status)), signal: None }
            } else if nix::libc::WIFSIGNALED(status) {
                Exit { code: None, signal: Some(nix::libc::WTERMSIG(status)) }
            } else {
                continue; // stopped or continued: not reported without WUNTRACED
            };
            return Some((pid, exit));
        }
        if pid < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return None; // 0: none terminated; ECHILD: no children
    }
}
