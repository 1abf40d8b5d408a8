//! A real etcd for the tests: started on free loopback ports with a data
//! dir of its own, waited for until it answers, killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_store::etcd::{EtcdStore, Options};
use tempfile::TempDir;

const ETCD: &str = "etcd";

/// How long a member may take to start answering.
const START: Duration = Duration::from_secs(30);

/// Fails the test, naming the fix, when etcd is not installed.
fn require_etcd() {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(ETCD).is_file()))
        .unwrap_or(false);
    assert!(found, "`etcd` is not installed: run `make setup` (it installs Debian's etcd-server)");
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback port").local_addr().unwrap().port()
}

/// One etcd process, a member of a cluster of one or more.
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) client_port: u16,
    peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub(crate) fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self, cluster: &str, state: &str, fast: bool) {
        let log = std::fs::File::create(&self.log).expect("create the etcd log");
        // Short Raft timings keep elections and lease expiry quick: the
        // shortest lease is then 1 s, as in the embedded store. A cluster on
        // two busy cores needs more slack than one member.
        let (heartbeat, election) = if fast { ("10", "100") } else { ("50", "750") };
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(ETCD)
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", cluster, "--initial-cluster-state", state])
            .args(["--heartbeat-interval", heartbeat, "--election-timeout", election])
            // hearth's largest value (1.5 MiB) with its key in one request.
            .args(["--max-request-bytes", "2097152"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd ({e}): run `make setup`"));
        self.child = Some(child);
    }

    /// Kills the process (SIGKILL), as a crash would.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn check_alive(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("etcd {} exited ({status}) while starting:\n{log}", self.name);
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of `etcd` processes on loopback.
pub(crate) struct Etcd {
    pub(crate) members: Vec<Member>,
    cluster: String,
    fast: bool,
    _dir: TempDir,
}

impl Etcd {
    /// One member.
    pub(crate) async fn start() -> Etcd {
        Etcd::cluster(1).await
    }

    /// `size` members, each started and answering.
    pub(crate) async fn cluster(size: usize) -> Etcd {
        require_etcd();
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let fast = size == 1;
        for member in &mut members {
            member.spawn(&cluster, "new", fast);
        }
        let mut etcd = Etcd { members, cluster, fast, _dir: dir };
        for i in 0..size {
            etcd.wait_ready(i).await;
        }
        etcd
    }

    /// The client endpoints of the members, as `HOST:PORT`.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Options for a store on every member, under `namespace`.
    pub(crate) fn options(&self, namespace: &str) -> Options {
        let mut options = Options::new(self.endpoints());
        options.namespace = namespace.to_owned();
        options
    }

    /// A store on every member.
    pub(crate) async fn store(&self, namespace: &str) -> EtcdStore {
        EtcdStore::connect(self.options(namespace)).await.expect("connect to the test etcd")
    }

    /// Kills member `i` (SIGKILL).
    pub(crate) fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its data dir and waits until it answers.
    pub(crate) async fn restart(&mut self, i: usize) {
        let (cluster, fast) = (self.cluster.clone(), self.fast);
        self.members[i].spawn(&cluster, "existing", fast);
        self.wait_ready(i).await;
    }

    /// Waits until member `i` answers a read that needs a leader.
    async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + START;
        let mut options = Options::new([self.members[i].endpoint()]);
        options.connect_timeout = Duration::from_millis(500);
        options.request_timeout = Duration::from_millis(500);
        loop {
            self.members[i].check_alive();
            if EtcdStore::connect(options.clone()).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} did not answer within {START:?}",
                self.members[i].name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the member that leads now.
    pub(crate) async fn leader(&self) -> usize {
        let deadline = Instant::now() + START;
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if member.child.is_none() {
                    continue;
                }
                let url = format!("http://{}", member.endpoint());
                let Ok(mut client) = etcd_client::Client::connect([url], None).await else { continue };
                if let Ok(status) = client.status().await
                    && status.leader() != 0
                    && status.header().map(|h| h.member_id()) == Some(status.leader())
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no etcd member leads");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
