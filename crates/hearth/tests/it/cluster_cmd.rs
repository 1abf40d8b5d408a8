//! `hearth cluster`: three hosts in network namespaces on one machine,
//! each a daemon on a member of one etcd cluster, broken on purpose. A
//! killed host is seen lost by the others and comes back when revived; a
//! partitioned one is lost and comes back when healed; `cluster status`
//! agrees throughout; `cluster down` leaves no netns, link or process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hearth_client::types::{HostList, HostState};
use hearth_client::{Client, Endpoint};
use hearth_testkit::{failure, skip, success, test_cache_dir, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// A cluster this test made, taken down when it drops, so that a failed
/// assertion leaves nothing behind.
struct Cluster {
    name: String,
    dir: tempfile::TempDir,
    cache: PathBuf,
}

impl Cluster {
    /// `hearth cluster ARGS --name NAME --dir DIR` (`--name` is positional
    /// for `status` and `down`).
    fn run(&self, args: &[&str]) -> Output {
        let dir = self.dir.path().join("cluster");
        let mut command = Command::new(BIN);
        command.arg("cluster").args(args);
        if !matches!(args.first(), Some(&("status" | "down"))) {
            command.args(["--name", &self.name]);
        }
        command
            .arg("--dir")
            .arg(&dir)
            // The user's own data dir is not touched: it only chooses
            // defaults, and every one is given here.
            .env("HEARTH_DATA_DIR", self.dir.path().join("user"))
            .env_remove("HEARTH_HOST")
            .env_remove("HEARTH_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run hearth cluster")
    }

    fn up(&self, subnet: &str) -> Output {
        let cache = self.cache.to_string_lossy().into_owned();
        self.run(&["up", "--hosts", "3", "--subnet", subnet, "--cache-dir", &cache])
    }

    fn state(&self) -> Value {
        let text =
            std::fs::read_to_string(self.dir.path().join("cluster/cluster.json")).expect("the state file");
        serde_json::from_str(&text).expect("JSON")
    }

    fn status(&self) -> Value {
        serde_json::from_str(&success(&self.run(&["status", &self.name, "--json"]))).expect("JSON")
    }

    /// Each host's (daemon up, etcd up, link) as `cluster status --json` says.
    fn processes(&self) -> Vec<(String, bool, bool, String)> {
        let status = self.status();
        status["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|h| {
                (
                    h["name"].as_str().unwrap_or_default().to_owned(),
                    h["daemon"]["up"].as_bool().unwrap_or_default(),
                    h["etcd"]["up"].as_bool().unwrap_or_default(),
                    h["link"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn data_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join("cluster").join(host).join("data")
    }

    /// What `host` sees: every host's name and state.
    async fn hosts(&self, host: &str) -> Vec<(String, HostState)> {
        let client = Client::new(Endpoint::Unix(self.data_dir(host).join("hearth.sock")));
        let list: HostList = match client.hosts().await {
            Ok(list) => list,
            Err(_) => return Vec::new(),
        };
        list.hosts.into_iter().map(|h| (h.name, h.state)).collect()
    }

    /// Waits until `host` sees `other` in `state`.
    async fn sees(&self, host: &str, other: &str, state: HostState, within: Duration) -> bool {
        wait_until(within, async || self.hosts(host).await.iter().any(|(n, s)| n == other && *s == state))
            .await
    }

    fn log(&self, host: &str) -> String {
        let home = self.dir.path().join("cluster").join(host);
        format!(
            "daemon.log of {host}:\n{}\netcd.log of {host}:\n{}",
            std::fs::read_to_string(home.join("daemon.log")).unwrap_or_default(),
            std::fs::read_to_string(home.join("etcd.log")).unwrap_or_default()
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(&["down", &self.name]);
    }
}

fn up(host: &str) -> (String, bool, bool, String) {
    (host.to_owned(), true, true, "connected".to_owned())
}

/// Names of the links in the root netns.
fn links() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link").stdout;
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

fn netns() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().expect("ip netns").stdout)
        .into_owned()
}

/// Whether `pid` is a live process started for the cluster in `dir`.
fn ours_alive(pid: u64, dir: &Path) -> bool {
    let dead = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(true);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !dead && String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
}

fn pids(state: &Value) -> Vec<u64> {
    state["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .flat_map(|h| [h["daemon_pid"].as_u64(), h["etcd_pid"].as_u64()])
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_on_one_machine_loses_and_gets_back_a_killed_and_a_partitioned_host() {
    if !nix::unistd::geteuid().is_root() {
        skip("not root, so no network namespaces");
        return;
    }
    let id = std::process::id();
    let cluster = Cluster {
        name: format!("it{}", id % 100_000),
        dir: tempfile::Builder::new().prefix("hearth-cluster-").tempdir().expect("a temp dir"),
        cache: test_cache_dir().expect("a test cache dir"),
    };
    // A subnet of its own: from the pid, the next one when `up` finds it
    // overlaps a route of this machine's (another test's cluster, say).
    let mut made = None;
    for n in 0..8 {
        let subnet = format!("10.{}.{}.0/24", 70 + (id + n) % 10, (id / 10 + n) % 256);
        let out = cluster.up(&subnet);
        if out.status.success() {
            made = Some(out);
            break;
        }
        let error = failure(&out);
        assert!(error.contains("overlaps this machine's route"), "{error}");
    }
    let out = made.expect("a free subnet in 8 tries");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("is up") && said.contains("hearth cluster env h1"), "{said}");
    let state = cluster.state();
    let mut seen_pids = pids(&state);
    assert_eq!(cluster.processes(), [up("h1"), up("h2"), up("h3")]);
    let ready = [
        ("h1".to_owned(), HostState::Ready),
        ("h2".to_owned(), HostState::Ready),
        ("h3".to_owned(), HostState::Ready),
    ];
    assert_eq!(cluster.hosts("h1").await, ready, "{}", cluster.log("h1"));
    // Run again, it starts nothing.
    let again = success(&cluster.up(state["subnet"].as_str().expect("subnet")));
    assert!(again.contains("is already up"), "{again}");

    // Killed as a machine dies: the others see it lost once its lease lapses.
    let said = success(&cluster.run(&["kill", "h2"]));
    assert!(said.contains("killed host h2"), "{said}");
    assert_eq!(
        cluster.processes(),
        [up("h1"), ("h2".to_owned(), false, false, "connected".to_owned()), up("h3")]
    );
    let lost = cluster.sees("h1", "h2", HostState::Lost, Duration::from_secs(40)).await;
    assert!(lost, "{:?}\n{}", cluster.hosts("h1").await, cluster.log("h1"));

    success(&cluster.run(&["revive", "h2"]));
    assert!(
        cluster.sees("h1", "h2", HostState::Ready, Duration::from_secs(30)).await,
        "{:?}\n{}",
        cluster.hosts("h1").await,
        cluster.log("h2")
    );
    assert_eq!(cluster.processes(), [up("h1"), up("h2"), up("h3")]);
    seen_pids.extend(pids(&cluster.state()));

    // Partitioned: its processes run, but it cannot renew its lease.
    success(&cluster.run(&["partition", "h3"]));
    assert_eq!(
        cluster.processes(),
        [up("h1"), up("h2"), ("h3".to_owned(), true, true, "partitioned".to_owned())]
    );
    let lost = cluster.sees("h1", "h3", HostState::Lost, Duration::from_secs(40)).await;
    assert!(lost, "{:?}\n{}", cluster.hosts("h1").await, cluster.log("h1"));

    success(&cluster.run(&["heal", "h3"]));
    assert_eq!(cluster.processes(), [up("h1"), up("h2"), up("h3")]);
    assert!(
        cluster.sees("h1", "h3", HostState::Ready, Duration::from_secs(60)).await,
        "{:?}\n{}",
        cluster.hosts("h1").await,
        cluster.log("h3")
    );

    // Down: no netns, no link, no process is left.
    let state = cluster.state();
    let names: Vec<String> = std::iter::once(state["bridge"].as_str().expect("bridge").to_owned())
        .chain(
            state["hosts"]
                .as_array()
                .expect("hosts")
                .iter()
                .map(|h| h["veth"].as_str().expect("veth").to_owned()),
        )
        .collect();
    let namespaces: Vec<String> = state["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["netns"].as_str().expect("netns").to_owned())
        .collect();
    assert!(links().iter().any(|l| *l == names[0]), "{:?}", links());
    let said = success(&cluster.run(&["down", &cluster.name]));
    assert!(said.contains("is down"), "{said}");
    let listed = netns();
    assert!(
        namespaces.iter().all(|ns| !listed.lines().any(|l| l.split_whitespace().next() == Some(ns))),
        "{listed}"
    );
    let left: Vec<String> = links().into_iter().filter(|l| names.contains(l)).collect();
    assert!(left.is_empty(), "links left: {left:?}");
    let dir = cluster.dir.path().join("cluster");
    let alive: Vec<u64> = seen_pids.into_iter().filter(|pid| ours_alive(*pid, &dir)).collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    assert!(!dir.exists(), "the cluster's dir is removed");
    let status = failure(&cluster.run(&["status", &cluster.name]));
    assert!(status.contains("there is no cluster"), "{status}");
}
