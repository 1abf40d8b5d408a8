//! A real `hearth serve` on a temporary data dir, for integration tests.
//!
//! The daemon is the binary under test (pass `env!("CARGO_BIN_EXE_hearth")`),
//! started as a child process; it is killed and its data dir removed when the
//! [`Daemon`] drops, so a failing test leaves nothing behind. Its log goes to
//! `daemon.log` in the data dir and is printed if it fails to come up.
//!
//! [`etcd::Etcd`] is a real etcd on loopback, for a daemon started with
//! `HEARTH_STORE` set to its [`etcd::Etcd::url`].
//!
//! [`smtp::SmtpSink`] is a real SMTP server (aiosmtpd) on loopback whose
//! mails a test reads back, for alert receivers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hearth_client::{Client, Endpoint};

pub mod etcd;
mod skip;
pub mod smtp;
pub use skip::{NO_SKIP_ENV, SKIP_LOG_ENV, skip};

/// How long a daemon gets to open its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running daemon and its data dir.
#[derive(Debug)]
pub struct Daemon {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tcp: Option<SocketAddr>,
    /// This daemon's prefix for host interfaces and firewall tables.
    net_prefix: String,
    /// Environment the daemon gets on top of the test's, at every start.
    env: Vec<(String, std::ffi::OsString)>,
    /// Whether the daemon makes the `default` network, with NAT.
    default_network: bool,
    /// RLIMIT_NOFILE (soft and hard) the daemon starts under, if not the test's.
    nofile: Option<u64>,
    /// `--dns` (`None`: the daemon's default, 127.0.0.1:8600 if free).
    dns: Option<String>,
}

impl Daemon {
    /// Starts a daemon on a fresh data dir, serving only the Unix socket.
    pub async fn start(bin: &str) -> Daemon {
        Self::start_with(bin, false).await
    }

    /// Starts a daemon that also listens on a free loopback TCP port.
    pub async fn start_with_tcp(bin: &str) -> Daemon {
        Self::start_with(bin, true).await
    }

    /// Starts a daemon with `env` set on top of the test's environment (and
    /// again on every restart): a `PATH` without some tool, say.
    pub async fn start_with_env(bin: &str, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Self::start_with_options(bin, false, env).await
    }

    /// Starts a daemon as host `host` of the cloud on `etcd`, with `env` on
    /// top (a shared `HEARTH_CONFIG_KEY`, say): what every test of several
    /// hosts starts its daemons with.
    pub async fn start_on_etcd(
        bin: &str,
        etcd: &etcd::Etcd,
        host: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        let url = etcd.url();
        let mut all: Vec<(&str, &std::ffi::OsStr)> = vec![
            ("HEARTH_STORE", std::ffi::OsStr::new(&url)),
            ("HEARTH_HOST_NAME", std::ffi::OsStr::new(host)),
        ];
        all.extend_from_slice(env);
        Self::start_with_env(bin, &all).await
    }

    /// Starts a daemon that makes the `default` network with NAT, as a
    /// daemon does unless told not to. Other test daemons leave it out, so
    /// that they never hold a subnet the host's daemon might want; this
    /// one's bridge and firewall tables carry its own prefix, and go when
    /// it drops.
    pub async fn start_with_default_network(bin: &str) -> Daemon {
        let mut daemon = Self::unstarted(bin, false, Vec::new());
        daemon.default_network = true;
        daemon.spawn().await;
        daemon
    }

    /// Starts a daemon that also listens on TCP, with `env` set, under a
    /// file-descriptor limit (soft and hard) of `nofile` if given, through
    /// util-linux's `prlimit`.
    pub async fn start_with_tcp_limits(
        bin: &str,
        env: &[(&str, &std::ffi::OsStr)],
        nofile: Option<u64>,
    ) -> Daemon {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut daemon = Self::unstarted(bin, true, env);
        daemon.nofile = nofile;
        daemon.spawn().await;
        daemon
    }

    /// Starts a daemon with `--dns DNS`, or without `--dns` at all (the
    /// daemon's default address, which parallel daemons would share) for
    /// `None`. Other test daemons listen on a free loopback port.
    pub async fn start_with_dns(bin: &str, dns: Option<&str>) -> Daemon {
        let mut daemon = Self::unstarted(bin, false, Vec::new());
        daemon.dns = dns.map(str::to_owned);
        daemon.spawn().await;
        daemon
    }

    async fn start_with(bin: &str, tcp: bool) -> Daemon {
        Self::start_with_options(bin, tcp, Vec::new()).await
    }

    async fn start_with_options(bin: &str, tcp: bool, env: Vec<(String, std::ffi::OsString)>) -> Daemon {
        let mut daemon = Self::unstarted(bin, tcp, env);
        daemon.spawn().await;
        daemon
    }

    fn unstarted(bin: &str, tcp: bool, env: Vec<(String, std::ffi::OsString)>) -> Daemon {
        let dir = tempfile::Builder::new().prefix("hearth-test-").tempdir().expect("create a temp data dir");
        let tcp = tcp.then(free_port);
        let net_prefix = format!(
            "t{}",
            &dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .rev()
                .take(3)
                .collect::<String>()
        );
        Daemon {
            bin: PathBuf::from(bin),
            dir,
            child: None,
            tcp,
            net_prefix,
            env,
            default_network: false,
            nofile: None,
            dns: Some("127.0.0.1:0".to_owned()),
        }
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TCP address, if started with one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon is running")
    }

    /// A client over the Unix socket.
    pub fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.data_dir().join("hearth.sock")))
    }

    /// A client over TCP with the given token (None: no token at all).
    pub fn tcp_client(&self, token: Option<String>) -> Client {
        let addr = self.tcp.expect("daemon was started with TCP");
        Client::new(Endpoint::Tcp { authority: addr.to_string(), token })
    }

    /// The daemon's API token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("token")).expect("read token").trim().to_owned()
    }

    /// Runs the CLI against this daemon and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("HEARTH_DATA_DIR", self.data_dir())
            .env_remove("HEARTH_HOST")
            .env_remove("HEARTH_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run the hearth CLI")
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the
    /// exit status, or None if it did not exit in time (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts the daemon again on the same data dir (after kill9 or terminate).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("daemon.log")).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir().join("daemon.log"))
            .expect("open daemon.log");
        let mut command = match self.nofile {
            // prlimit sets the limit, then executes the daemon in its place.
            Some(n) => {
                let mut command = Command::new("prlimit");
                command.arg(format!("--nofile={n}:{n}")).arg("--").arg(&self.bin);
                command
            }
            None => Command::new(&self.bin),
        };
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--cache-dir")
            .arg(self.cache_dir())
            .arg("--net-prefix")
            .arg(&self.net_prefix)
            // Tests make the networks they need, with subnets of their own,
            // unless they test the default network.
            .args(if self.default_network {
                ["--default-network", "true", "--default-network-nat", "true"]
            } else {
                ["--default-network", "false", "--default-network-nat", "false"]
            })
            // Each test daemon's apps answer on a port of their own, and
            // so do its DNS listener (status says which) and its dashboard
            // (`hearth ui` says where).
            .args(["--ingress", "127.0.0.1:0", "--ui", "127.0.0.1:0"]);
        if let Some(dns) = &self.dns {
            command.arg("--dns").arg(dns);
        }
        if let Some(addr) = self.tcp {
            command.arg("--listen").arg(addr.to_string());
        }
        let child = command
            .env("HEARTH_LOG", "info,hearth=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn hearth serve");
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if client.status().await.is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("hearth serve exited with {status} before it was ready; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("hearth serve was not ready within {READY_TIMEOUT:?}; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        self.kill_vms();
        self.remove_host_networking();
    }
}

impl Daemon {
    /// The cache of kernels, initramfs and images this daemon uses
    /// (`--cache-dir`): see [`test_cache_dir`].
    pub fn cache_dir(&self) -> PathBuf {
        shared_cache_dir(&self.bin)
    }

    /// Makes sure the test image (Debian bookworm with ping, netcat,
    /// iproute2, and busybox for its httpd) is in the shared cache, building it once (under a lock, so
    /// parallel tests do not build it twice), and returns its name.
    pub async fn ensure_debian_image(&self) -> String {
        self.ensure_debian_image_with("hearth-test-debian", "iputils-ping,netcat-openbsd,iproute2,busybox")
            .await
    }

    /// Makes sure a Debian bookworm image with `packages` (comma-separated)
    /// on top of the base system is in the shared cache, building it once,
    /// and returns its name: `repository` (one per package list) tagged
    /// with [`image_tag`]. Building a new tag removes the repository's
    /// others, made by older code.
    pub async fn ensure_debian_image_with(&self, repository: &str, packages: &str) -> String {
        let image = format!("{repository}:{}", image_tag(packages));
        let cache = self.cache_dir();
        std::fs::create_dir_all(&cache).expect("create the test cache");
        let lock = std::fs::File::create(cache.join(".debian-image.lock")).expect("create lock file");
        let locked = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock)).await.expect("join");
        let _lock = locked.expect("lock the test image");
        if self.client().image(&image).await.is_err() {
            let out = self.cli(&[
                "image",
                "build",
                "debian",
                "--suite",
                "bookworm",
                "--packages",
                packages,
                "--name",
                &image,
            ]);
            success(&out);
            let listed = self.client().images().await.expect("list images").images;
            let older = listed.iter().map(|i| i.name.as_str()).filter(|name| {
                name.split_once(':').is_some_and(|(repo, _)| repo == repository) && *name != image
            });
            for name in older.map(str::to_owned).collect::<Vec<_>>() {
                // The cache is shared: a checkout of older code testing at
                // this moment loses its image (and builds it again next
                // time). Keeping every tag would grow the cache by two
                // images with each change to the builder.
                let _ = self.client().remove_image(&name).await;
            }
        }
        image
    }

    /// Polls a machine until its state is one of `states`, for up to `limit`.
    pub async fn wait_for_machine(
        &self,
        name: &str,
        states: &[&str],
        limit: Duration,
    ) -> hearth_client::types::Machine {
        let started = Instant::now();
        loop {
            let m = self.client().machine(name).await.expect("machine exists");
            if states.contains(&m.state.as_str()) {
                return m;
            }
            if started.elapsed() > limit {
                panic!(
                    "machine {name} is {} after {limit:?}, not one of {states:?}: {m:?}\nlog:\n{}",
                    m.state,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// VM processes started from this data dir: Firecracker's (whose API
    /// socket, in the data dir, is on its command line) and QEMU's (which
    /// names no path, but holds its logs in the data dir open, even once
    /// they are deleted).
    pub fn vm_pids(&self) -> Vec<u32> {
        let needle = self.data_dir().display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
        let holds_a_file_here = |pid: u32| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok)
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .any(|target| target.to_string_lossy().starts_with(&needle))
            })
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .filter(|&pid| {
                let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
                let text = String::from_utf8_lossy(&cmdline);
                (text.contains("--api-sock") && text.contains(&needle))
                    || (text.contains("qemu-system") && (text.contains(&needle) || holds_a_file_here(pid)))
            })
            .collect()
    }

    /// The prefix of this daemon's host interfaces (`PREFIXb-…` bridges, `PREFIXt-…` taps).
    pub fn net_prefix(&self) -> &str {
        &self.net_prefix
    }

    /// This daemon's host interfaces that exist now.
    pub fn host_links(&self) -> Vec<String> {
        let out =
            Command::new("ip").args(["-o", "link", "show"]).output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .filter(|name| {
                name.starts_with(&format!("{}b-", self.net_prefix))
                    || name.starts_with(&format!("{}t-", self.net_prefix))
            })
            .collect()
    }

    /// Deletes this daemon's interfaces and firewall tables from the host.
    fn remove_host_networking(&self) {
        for link in self.host_links() {
            let _ = Command::new("ip").args(["link", "del", &link]).output();
        }
        for family in ["inet", "bridge"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &format!("hearth-{}", self.net_prefix)])
                .output();
        }
    }

    /// Kills every VM this daemon left behind, so a failed test leaks none.
    fn kill_vms(&self) {
        for pid in self.vm_pids() {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    }
}

fn shared_cache_dir(bin: &Path) -> PathBuf {
    test_cache_dir().unwrap_or_else(|| {
        // BIN is target/<profile>/hearth.
        bin.parent()
            .and_then(Path::parent)
            .map(|t| t.join("hearth-test-cache"))
            .unwrap_or_else(|| "hearth-test-cache".into())
    })
}

/// The cache of kernels, initramfs and images that test daemons share:
/// `HEARTH_TEST_CACHE`, else `hearth/test-cache` in the user's cache
/// directory (`XDG_CACHE_HOME`, else `~/.cache`). It is kept outside every
/// checkout, as cargo keeps its registry, so a clean clone reuses what an
/// earlier one built and `target/` holds only the build. What it holds is
/// keyed by its inputs, so a checkout never uses what its own code would
/// make differently: kernels and initramfs by content (the daemon does
/// that), the test images by [`image_tag`]. `None` without a home.
pub fn test_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HEARTH_TEST_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("hearth").join("test-cache"))
}

/// The tag of a test image with `packages`: the suite and a fingerprint of
/// the package list and of the code that builds images
/// (`crates/machines/src/image`), so that a change there builds the image
/// anew instead of booting one made by older code.
pub fn image_tag(packages: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let builder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../machines/src/image");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&builder)
        .unwrap_or_else(|e| panic!("read {}: {e}", builder.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut hasher = DefaultHasher::new();
    packages.hash(&mut hasher);
    for file in files {
        file.file_name().hash(&mut hasher);
        std::fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display())).hash(&mut hasher);
    }
    format!("bookworm-{:016x}", hasher.finish())
}

/// Polls `condition` every 50 ms until it holds or `within` has passed, and
/// says whether it held. Tests wait for what they need with this rather
/// than sleeping for a time that is usually long enough.
pub async fn wait_until(within: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// Asserts a CLI run succeeded, showing its output if not, and returns stdout.
pub fn success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts a CLI run failed, and returns stderr.
pub fn failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "command unexpectedly succeeded\nstdout:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}
