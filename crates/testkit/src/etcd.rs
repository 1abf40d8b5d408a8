//! A real `etcd` (Debian's etcd-server) for daemons that keep their state
//! on it: one member on free loopback ports with a temporary data dir,
//! waited for until it is healthy (and is this etcd, not another test's on
//! a port picked twice), started again on fresh ports when it cannot bind,
//! killed on drop, and killed with the test binary if that dies first.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long etcd may take to become healthy.
const START: Duration = Duration::from_secs(30);

/// How many times etcd is started on fresh ports when it exits as it
/// starts: the ports are picked by binding and releasing them, so another
/// process can take one in between ("address already in use").
const TRIES: usize = 5;

/// A running etcd member.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    name: String,
    client_port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    crate::free_port().port()
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// The command that runs etcd, under util-linux's `setpriv --pdeathsig
/// KILL` when it is there: etcd then gets SIGKILL (`PR_SET_PDEATHSIG`) when
/// the thread that started it ends, the test's own thread (a
/// `#[tokio::test]` runs its body there), so an etcd never outlives a test
/// binary that panicked, timed out or was killed. (The workspace forbids
/// the `unsafe` that `prctl` in a `pre_exec` would take.)
fn etcd_command() -> Command {
    if on_path("setpriv") {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--", "etcd"]);
        command
    } else {
        Command::new("etcd")
    }
}

/// Runs `wait`, which blocks, without holding up the other tasks of the
/// tokio worker it is called on (`block_in_place`, on a multi-threaded
/// runtime); on a current-thread runtime, or outside tokio, it just runs,
/// as nothing else could run on that thread meanwhile anyway.
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

impl Etcd {
    /// Starts etcd and waits until it says it is healthy. Fails the test,
    /// naming the fix, when etcd is not installed.
    ///
    /// This is a blocking call (a poll of etcd's `/health` every 50 ms, for
    /// up to 30 s), fine from a test's body: inside a multi-threaded tokio
    /// runtime it tells tokio so (`block_in_place`), so the worker's other
    /// tasks move to another thread meanwhile.
    pub fn start() -> Etcd {
        blocking(|| {
            let mut logs = Vec::new();
            for _ in 0..TRIES {
                match Etcd::try_start() {
                    Ok(etcd) => return etcd,
                    Err(log) => logs.push(log),
                }
            }
            panic!("etcd did not start in {TRIES} tries, each on fresh ports:\n{}", logs.join("\n"))
        })
    }

    /// etcd, healthy, or the log of one that exited as it started.
    fn try_start() -> Result<Etcd, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("create the etcd log");
        let child = etcd_command()
            .args(["--name", &name, "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{name}={peer}"), "--initial-cluster-token", &name])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            // hearth's largest value (1.5 MiB) with its key in one request.
            .args(["--max-request-bytes", "2097152"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): run `make setup` (it installs Debian's etcd-server)")
            });
        let mut etcd = Etcd { child, name, client_port, dir };
        let deadline = Instant::now() + START;
        while !etcd.healthy() {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(format!("etcd exited ({status}) as it started:\n{}", etcd.log()));
            }
            assert!(Instant::now() < deadline, "etcd was not healthy within {START:?}:\n{}", etcd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(etcd)
    }

    /// `etcd://127.0.0.1:PORT`, for `hearth serve --store`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Whether etcd's `/health` says it has a leader and answers, and the
    /// etcd that answers on the port is this one (its member list, through
    /// etcd's JSON gateway, names it).
    fn healthy(&self) -> bool {
        self.ask("GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").contains("\"health\":\"true\"")
            && self
                .ask(
                    "POST /v3/cluster/member/list HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}",
                )
                .contains(&format!("\"name\":\"{}\"", self.name))
    }

    /// etcd's answer to one HTTP/1.0 request ("" when it does not answer).
    fn ask(&self, request: &str) -> String {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
