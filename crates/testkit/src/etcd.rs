//! A real `etcd` (Debian's etcd-server) for daemons that keep their state
//! on it: one member on free loopback ports with a temporary data dir,
//! waited for until it is healthy, killed on drop.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to become healthy.
const START: Duration = Duration::from_secs(30);

/// A running etcd member.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    client_port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    crate::free_port().port()
}

impl Etcd {
    /// Starts etcd and waits until it says it is healthy. Fails the test,
    /// naming the fix, when etcd is not installed.
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("create the etcd log");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): run `make setup` (it installs Debian's etcd-server)")
            });
        let mut etcd = Etcd { child, client_port, dir };
        let deadline = Instant::now() + START;
        while !etcd.healthy() {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!("etcd exited ({status}) as it started:\n{}", etcd.log());
            }
            assert!(Instant::now() < deadline, "etcd was not healthy within {START:?}:\n{}", etcd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }

    /// `etcd://127.0.0.1:PORT`, for `hearth serve --store`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Whether etcd's `/health` says it has a leader and answers.
    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
