//! An etcd of the benchmark's own: one member on free loopback ports (fresh
//! ones again if it cannot bind them), with etcd's default settings (an
//! fsync per commit, as the embedded store does), its data in the
//! benchmark's temporary directory, killed when the benchmark ends.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long etcd may take to answer after it starts.
const START: Duration = Duration::from_secs(30);

pub(crate) struct LocalEtcd {
    child: Child,
    client_port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free loopback port for etcd")?
        .local_addr()?
        .port())
}

/// How many times etcd is started on fresh ports when it exits as it
/// starts: the ports are picked by binding and releasing them, so another
/// process can take one in between ("address already in use").
const TRIES: usize = 5;

impl LocalEtcd {
    /// Starts etcd with its data and log under `dir`, and waits until it
    /// answers; on fresh ports again when it exits as it starts.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<LocalEtcd> {
        let mut exited = String::new();
        for attempt in 0..TRIES {
            match LocalEtcd::try_start(&dir.join(format!("etcd-{attempt}"))).await? {
                Ok(etcd) => return Ok(etcd),
                Err(log) => exited = log,
            }
        }
        bail!("etcd exited as it started, {TRIES} times on fresh ports; the last time:\n{exited}")
    }

    /// etcd, answering; or the log of one that exited as it started.
    async fn try_start(dir: &Path) -> anyhow::Result<Result<LocalEtcd, String>> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.join("etcd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start etcd: is it installed? `make setup` installs Debian's etcd-server, or pass --etcd etcd://HOST:PORT")?;
        let mut etcd = LocalEtcd { child, client_port };
        let deadline = Instant::now() + START;
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Ok(Err(format!("etcd exited ({status}):\n{log}")));
            }
            let mut options = hearth_store::etcd::Options::new([etcd.endpoint()]);
            options.connect_timeout = Duration::from_millis(500);
            // Answered, and still running: not another etcd that had the
            // port first while this one failed to bind it.
            if hearth_store::etcd::EtcdStore::connect(options).await.is_ok()
                && matches!(etcd.child.try_wait(), Ok(None))
            {
                return Ok(Ok(etcd));
            }
            if Instant::now() >= deadline {
                bail!("etcd did not answer within {START:?}; its log is {}", log_path.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
