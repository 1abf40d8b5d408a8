//! A cluster made by `hearth cluster up` for a test, taken down when the
//! test ends, passing or panicking.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hearth_client::types::{HostList, HostState};
use hearth_client::{Client, Endpoint};
use hearth_testkit::{failure, success, test_cache_dir, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// A cluster this test made, taken down when it drops, so that a failed
/// assertion leaves nothing behind.
pub(crate) struct Cluster {
    pub(crate) name: String,
    pub(crate) dir: tempfile::TempDir,
    cache: PathBuf,
}

impl Cluster {
    /// `hearth cluster up` of `hosts` hosts, under a name and a subnet of
    /// its own (from the pid, the next subnet when `up` finds one overlaps
    /// a route of this machine's, such as another test's cluster); the
    /// output of the `up` that made it. `tag` tells tests apart.
    pub(crate) fn start(tag: &str, hosts: u32) -> (Cluster, Output) {
        let id = std::process::id();
        let cluster = Cluster {
            name: format!("{tag}{}", id % 100_000),
            dir: tempfile::Builder::new().prefix("hearth-cluster-").tempdir().expect("a temp dir"),
            cache: test_cache_dir().expect("a test cache dir"),
        };
        // Tests' subnets differ by their tag, too; and one test at a time
        // picks a subnet and brings its bridge up, so that two never take
        // the same free one (checked, then made).
        let salt = tag.bytes().map(u32::from).sum::<u32>();
        let lock = std::fs::File::create(std::env::temp_dir().join("hearth-cluster-tests.lock"))
            .expect("a lock file");
        lock.lock().expect("the cluster tests' lock");
        for n in 0..8 {
            let subnet = format!("10.{}.{}.0/24", 70 + (id + n + salt) % 10, (id / 10 + n + salt) % 256);
            let out = cluster.up(&subnet, hosts);
            if out.status.success() {
                return (cluster, out);
            }
            let error = failure(&out);
            assert!(error.contains("overlaps this machine's route"), "{error}");
        }
        panic!("no free subnet in 8 tries");
    }

    /// `hearth cluster ARGS --name NAME --dir DIR` (`--name` is positional
    /// for `status` and `down`).
    pub(crate) fn run(&self, args: &[&str]) -> Output {
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

    pub(crate) fn up(&self, subnet: &str, hosts: u32) -> Output {
        let cache = self.cache.to_string_lossy().into_owned();
        let hosts = hosts.to_string();
        self.run(&["up", "--hosts", &hosts, "--subnet", subnet, "--cache-dir", &cache])
    }

    /// `hearth ARGS` against `host`'s daemon.
    pub(crate) fn cli(&self, host: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("HEARTH_DATA_DIR", self.data_dir(host))
            .env_remove("HEARTH_HOST")
            .env_remove("HEARTH_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run hearth")
    }

    /// The network namespace `host` runs in.
    pub(crate) fn netns(&self, host: &str) -> String {
        let state = self.state();
        let hosts = state["hosts"].as_array().expect("hosts");
        let found = hosts.iter().find(|h| h["name"] == host).unwrap_or_else(|| panic!("{host} in {state}"));
        found["netns"].as_str().expect("netns").to_owned()
    }

    pub(crate) fn state(&self) -> Value {
        let text =
            std::fs::read_to_string(self.dir.path().join("cluster/cluster.json")).expect("the state file");
        serde_json::from_str(&text).expect("JSON")
    }

    pub(crate) fn status(&self) -> Value {
        serde_json::from_str(&success(&self.run(&["status", &self.name, "--json"]))).expect("JSON")
    }

    /// Each host's (daemon up, etcd up, link) as `cluster status --json` says.
    pub(crate) fn processes(&self) -> Vec<(String, bool, bool, String)> {
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

    pub(crate) fn data_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join("cluster").join(host).join("data")
    }

    /// What `host` sees: every host's name and state.
    pub(crate) async fn hosts(&self, host: &str) -> Vec<(String, HostState)> {
        let client = Client::new(Endpoint::Unix(self.data_dir(host).join("hearth.sock")));
        let list: HostList = match client.hosts().await {
            Ok(list) => list,
            Err(_) => return Vec::new(),
        };
        list.hosts.into_iter().map(|h| (h.name, h.state)).collect()
    }

    /// Waits until `host` sees `other` in `state`.
    pub(crate) async fn sees(&self, host: &str, other: &str, state: HostState, within: Duration) -> bool {
        wait_until(within, async || self.hosts(host).await.iter().any(|(n, s)| n == other && *s == state))
            .await
    }

    pub(crate) fn log(&self, host: &str) -> String {
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
