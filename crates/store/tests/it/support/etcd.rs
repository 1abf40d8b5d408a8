//! A real etcd for the tests: started on free loopback ports with a data
//! dir of its own, waited for until it answers (as itself, not as another
//! test's etcd on a port picked twice), started again on fresh ports when a
//! member cannot bind, killed on drop, and killed with the test binary if
//! that dies first.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hearth_store::etcd::{EtcdStore, Options};
use tempfile::TempDir;

const ETCD: &str = "etcd";

/// How long a member may take to start answering.
const START: Duration = Duration::from_secs(30);

/// How many times a cluster is started on fresh ports when a member exits
/// as it starts: the ports are picked by binding and releasing them, so
/// another process can take one in between ("address already in use").
const TRIES: usize = 5;

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// Fails the test, naming the fix, when etcd is not installed.
fn require_etcd() {
    assert!(on_path(ETCD), "`etcd` is not installed: run `make setup` (it installs Debian's etcd-server)");
}

/// The command that runs etcd, under util-linux's `setpriv --pdeathsig
/// KILL` when it is there: etcd then gets SIGKILL (`PR_SET_PDEATHSIG`) when
/// the thread that started it ends, which is the test's own thread (a
/// `#[tokio::test]` runs its body there), so an etcd never outlives a test
/// binary that panicked, timed out or was killed. (The workspace forbids
/// the `unsafe` that `prctl` in a `pre_exec` would take.)
fn etcd_command() -> Command {
    if on_path("setpriv") {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--", ETCD]);
        command
    } else {
        Command::new(ETCD)
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback port").local_addr().unwrap().port()
}

/// A name no other etcd of any test process has: members are recognized
/// by it.
fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
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

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self, cluster: &Cluster, state: &str) {
        let log = std::fs::File::create(&self.log).expect("create the etcd log");
        // Short Raft timings keep elections and lease expiry quick: the
        // shortest lease is then 1 s, as in the embedded store. A cluster on
        // two busy cores needs more slack than one member.
        let (heartbeat, election) = if cluster.fast { ("10", "100") } else { ("50", "750") };
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = self.peer_url();
        let child = etcd_command()
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.members, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &cluster.token])
            .args(["--heartbeat-interval", heartbeat, "--election-timeout", election])
            // hearth's largest value (1.5 MiB) with its key in one request.
            .args(["--max-request-bytes", "2097152"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&cluster.args)
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

    /// The log of a member that exited, `None` while it runs.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        Some(format!("etcd {} exited ({status}) while starting:\n{log}", self.name))
    }

    /// Whether the etcd on this member's client port is this member, and
    /// not another test's that took the port first.
    async fn answers_as_itself(&self) -> bool {
        let url = format!("http://{}", self.endpoint());
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_millis(500));
        let Ok(Ok(mut client)) =
            tokio::time::timeout(Duration::from_secs(1), etcd_client::Client::connect([url], Some(options)))
                .await
        else {
            return false;
        };
        let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(1), client.member_list()).await else {
            return false;
        };
        // A member that has not published itself yet has no name.
        let peer = self.peer_url();
        list.members()
            .iter()
            .any(|m| m.name() == self.name || (m.name().is_empty() && m.peer_urls().contains(&peer)))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every member of a cluster is started with.
struct Cluster {
    /// `--initial-cluster`.
    members: String,
    token: String,
    fast: bool,
    /// More flags, for every member.
    args: Vec<String>,
}

/// The leader of a cluster, as etcd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leader {
    /// The index of the member that leads.
    pub(crate) index: usize,
    /// Its member id.
    pub(crate) id: u64,
    /// The Raft term it leads in: an election makes it grow.
    pub(crate) term: u64,
}

/// A cluster of `etcd` processes on loopback.
pub(crate) struct Etcd {
    pub(crate) members: Vec<Member>,
    cluster: Cluster,
    _dir: TempDir,
}

impl Etcd {
    /// One member.
    pub(crate) async fn start() -> Etcd {
        Etcd::cluster(1).await
    }

    /// One member, started with more flags.
    pub(crate) async fn start_with(args: &[&str]) -> Etcd {
        Etcd::cluster_with(1, args).await
    }

    /// `size` members, each started and answering.
    pub(crate) async fn cluster(size: usize) -> Etcd {
        Etcd::cluster_with(size, &[]).await
    }

    /// `size` members started with more flags, each started and
    /// answering; started again on fresh ports when a member exits as it
    /// starts.
    pub(crate) async fn cluster_with(size: usize, args: &[&str]) -> Etcd {
        require_etcd();
        let mut logs = Vec::new();
        for _ in 0..TRIES {
            match Etcd::try_cluster(size, args).await {
                Ok(etcd) => return etcd,
                Err(log) => logs.push(log),
            }
        }
        panic!("etcd did not start in {TRIES} tries, each on fresh ports:\n{}", logs.join("\n"));
    }

    /// `size` members, or the log of one that exited as it started.
    async fn try_cluster(size: usize, args: &[&str]) -> Result<Etcd, String> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let id = unique();
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}-{id}"),
                client_port: free_port(),
                peer_port: free_port(),
                data: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let cluster = Cluster {
            members: members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url()))
                .collect::<Vec<_>>()
                .join(","),
            token: format!("hearth-test-{id}"),
            fast: size == 1,
            args: args.iter().map(|&arg| arg.to_owned()).collect(),
        };
        let mut etcd = Etcd { members, cluster, _dir: dir };
        for member in &mut etcd.members {
            member.spawn(&etcd.cluster, "new");
        }
        for i in 0..size {
            etcd.wait_ready(i).await?;
        }
        Ok(etcd)
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
        let Etcd { members, cluster, .. } = self;
        members[i].spawn(cluster, "existing");
        if let Err(log) = self.wait_ready(i).await {
            panic!("{log}");
        }
    }

    /// Waits until member `i` answers, as itself, a read that needs a
    /// leader; the log of a member that exits first.
    async fn wait_ready(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + START;
        let mut options = Options::new([self.members[i].endpoint()]);
        options.connect_timeout = Duration::from_millis(500);
        options.request_timeout = Duration::from_millis(500);
        loop {
            // Any member: the others cannot elect a leader without it.
            if let Some(log) = self.members.iter_mut().find_map(Member::exited) {
                return Err(log);
            }
            if self.members[i].answers_as_itself().await && EtcdStore::connect(options.clone()).await.is_ok()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} did not answer within {START:?}:\n{}",
                self.members[i].name,
                std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The member that leads now, as a live member that says it leads
    /// reports it.
    pub(crate) async fn leader(&self) -> Leader {
        let deadline = Instant::now() + START;
        loop {
            for (index, member) in self.members.iter().enumerate() {
                if member.child.is_none() {
                    continue;
                }
                let url = format!("http://{}", member.endpoint());
                let Ok(mut client) = etcd_client::Client::connect([url], None).await else { continue };
                if let Ok(status) = client.status().await
                    && status.leader() != 0
                    && status.header().map(|h| h.member_id()) == Some(status.leader())
                {
                    return Leader { index, id: status.leader(), term: status.raft_term() };
                }
            }
            assert!(Instant::now() < deadline, "no etcd member leads");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
