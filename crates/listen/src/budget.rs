//! The daemon's file descriptors, shared out between its listeners so that
//! a flood on one never takes what the store, the VMMs, the taps or another
//! listener need.

use std::time::Duration;

use crate::Limits;

/// Time a client gets to send a request's headers, from when the server
/// starts waiting for them: enough for any real client on a slow link,
/// short enough that a slow-loris client holds a descriptor for seconds
/// (hyper's default is 30 s, nginx's `client_header_timeout` 60 s; the API
/// and the ingress serve local clients, so 10 s is generous).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a connection may stay open with no request in flight and no byte
/// moving: a kept-alive connection waiting for its next request, or one
/// that never sends anything. Node's default keep-alive timeout is 5 s,
/// nginx's 75 s; hearth's own clients open a connection per request, and
/// a browser on the ingress reconnects at no cost. Shorter than
/// [`HEADER_READ_TIMEOUT`] so that it, not the header clock, closes a
/// connection that sends nothing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a request in flight may wait on its client with no byte moving:
/// a body that stops arriving, or a response the client stops reading.
/// Progress, not total time, as nginx's `client_body_timeout` and
/// `send_timeout` (60 s each): any byte that moves starts it again. 30 s
/// outlasts any pause of an honest client on a local link, and a stalled
/// upload or download holds a connection (and a deploy's share of the body
/// budget) for no longer than that.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections from one peer address, on the TCP API and on the ingress,
/// as Consul's `http_max_conns_per_client` (200): far above what one
/// honest client opens, and a flood from one address leaves room for
/// everyone else.
pub const MAX_PER_PEER: usize = 200;

/// The TCP API's share of the descriptors (1/8), and its ceiling.
const TCP_API_SHARE: u64 = 8;
const TCP_API_MAX: usize = 1024;
/// The Unix-socket API's share (1/16) and ceiling: its own, so that a TCP
/// flood never starves the local user's CLI.
const UNIX_API_SHARE: u64 = 16;
const UNIX_API_MAX: usize = 256;
/// The ingress's share (1/4) and ceiling: apps may serve many clients.
const INGRESS_SHARE: u64 = 4;
const INGRESS_MAX: usize = 16_384;
/// The dashboard's share (1/32) and ceiling: a few browsers on the host,
/// each with a handful of connections.
const UI_SHARE: u64 = 32;
const UI_MAX: usize = 128;
/// Connections every listener allows, however low the limit.
const MIN_CONNECTIONS: usize = 8;

/// The process's descriptor limit, and each listener's share of it. The
/// listeners take at most 15/32 of it; the rest is the daemon's own work.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    nofile: u64,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    stall_timeout: Duration,
}

impl Budget {
    /// Raises the soft RLIMIT_NOFILE to the hard limit, as most servers do
    /// at start (the soft default, often 1024, is for interactive
    /// programs), and shares out the result.
    pub fn raise_nofile() -> std::io::Result<Budget> {
        let mut limit = get_nofile()?;
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            match set_nofile(&raised) {
                Ok(()) => limit = raised,
                Err(error) => tracing::warn!(
                    %error,
                    soft = limit.rlim_cur,
                    "Cannot raise the file-descriptor limit; keeping the soft one."
                ),
            }
        }
        Ok(Budget::new(limit.rlim_cur))
    }

    /// The shares of a process that may open `nofile` descriptors.
    pub fn new(nofile: u64) -> Budget {
        Budget {
            nofile,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
        }
    }

    /// The same shares with other timeouts (tests shorten them).
    pub fn with_timeouts(self, header_read_timeout: Duration, idle_timeout: Duration) -> Budget {
        Budget { header_read_timeout, idle_timeout, ..self }
    }

    /// The same shares with another stall timeout (tests shorten it).
    pub fn with_stall_timeout(self, stall_timeout: Duration) -> Budget {
        Budget { stall_timeout, ..self }
    }

    /// The descriptor limit shared out.
    pub fn nofile(&self) -> u64 {
        self.nofile
    }

    /// The API on TCP: a share, and [`MAX_PER_PEER`] per address.
    pub fn api_tcp(&self) -> Limits {
        let max = self.share(TCP_API_SHARE, TCP_API_MAX);
        self.limits("API on TCP", max, per_peer(max), true)
    }

    /// The API on the Unix socket: a share of its own, no per-peer cap
    /// (every peer is the local user).
    pub fn api_unix(&self) -> Limits {
        let max = self.share(UNIX_API_SHARE, UNIX_API_MAX);
        self.limits("API socket", max, max, true)
    }

    /// The dashboard's listener: a share of its own, so that a flood of
    /// the TCP API or the ingress never locks the browser out. Its peers
    /// are all on loopback, so no per-peer cap below the whole.
    pub fn ui(&self) -> Limits {
        let max = self.share(UI_SHARE, UI_MAX);
        self.limits("dashboard", max, max, true)
    }

    /// The apps ingress.
    pub fn ingress(&self) -> Limits {
        let max = self.share(INGRESS_SHARE, INGRESS_MAX);
        self.limits("apps ingress", max, per_peer(max), false)
    }

    fn share(&self, divisor: u64, ceiling: usize) -> usize {
        usize::try_from(self.nofile / divisor).unwrap_or(usize::MAX).clamp(MIN_CONNECTIONS, ceiling)
    }

    fn limits(
        &self,
        name: &'static str,
        max_connections: usize,
        max_per_peer: usize,
        json_errors: bool,
    ) -> Limits {
        Limits {
            name,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            stall_timeout: self.stall_timeout,
            max_connections,
            max_per_peer,
            json_errors,
        }
    }
}

/// One peer gets at most half a listener's connections.
fn per_peer(max: usize) -> usize {
    MAX_PER_PEER.min(max / 2).max(1)
}

#[allow(unsafe_code)]
fn get_nofile() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

#[allow(unsafe_code)]
fn set_nofile(limit: &libc::rlimit) -> std::io::Result<()> {
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
