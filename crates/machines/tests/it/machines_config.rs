//! Config delivery (issue 15, item 4): a machine boots with its config
//! already in `/run/hearth` when its main process starts, and each change
//! the feed announces is written into the running machine and followed by
//! its reload signal; the record says which revision it holds.
//!
//! The feed is a fake, standing in for the config subsystem (another
//! crate, which this one must not depend on): it hands out whatever payload
//! the test sets and bumps its watch when told. Everything else is real: a
//! QEMU (TCG) machine, its agent, and the agent connection the service keeps.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hearth_machines::record::State;
use hearth_machines::vmm::{self, Backend, VmFiles};
use hearth_machines::{ConfigFeed, ConfigPayload, CreateRequest, Machines, Options};
use hearth_store::Store;
use hearth_store::redb::{Options as StoreOptions, RedbStore};
use hearth_testkit::wait_until;
use tokio::sync::watch;

/// Boot under software emulation, with room for a slow shared host.
const BOOT: Duration = Duration::from_secs(180);
const PACKAGES: &str = "iputils-ping,netcat-openbsd,iproute2,busybox";

/// A stand-in for the config subsystem: one payload for every machine.
struct FakeFeed {
    payload: Mutex<ConfigPayload>,
    changes: watch::Sender<u64>,
}

impl FakeFeed {
    fn new(payload: ConfigPayload) -> Arc<Self> {
        let (changes, _) = watch::channel(payload.revision);
        Arc::new(Self { payload: Mutex::new(payload), changes })
    }

    /// Commits a new config and announces it.
    fn commit(&self, revision: u64, json: &str, env: &str) {
        *self.payload.lock().unwrap() =
            ConfigPayload { json: json.as_bytes().to_vec(), env: env.as_bytes().to_vec(), revision };
        self.changes.send_replace(revision);
    }
}

#[async_trait]
impl ConfigFeed for FakeFeed {
    async fn payload(&self, _machine: &str) -> Result<ConfigPayload, String> {
        Ok(self.payload.lock().unwrap().clone())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Kills the test's VM even when the test fails.
struct KillOnDrop {
    dir: PathBuf,
    name: String,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let files = VmFiles::in_dir(&self.dir.join("machines").join(&self.name));
        if let Some(pid) = vmm::running_pid(&files, &self.name) {
            vmm::signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The test image the daemon tests use, from the shared cache, built there
/// once (under the same lock as theirs) if missing.
async fn test_image(cache: &Path, machines: &Machines) -> String {
    let name = format!("hearth-test-debian:{}", hearth_testkit::image_tag(PACKAGES));
    std::fs::create_dir_all(cache).unwrap();
    let lock = std::fs::File::create(cache.join(".debian-image.lock")).unwrap();
    let images = machines.images();
    let wanted = name.clone();
    tokio::task::spawn_blocking(move || {
        lock.lock().expect("lock the test image");
        if images.get(&wanted).expect("read the image store").is_none() {
            let packages: Vec<String> = PACKAGES.split(',').map(str::to_owned).collect();
            images
                .build_debian("bookworm", &packages, Some(&wanted), &mut |_| {})
                .expect("build the test image");
        }
    })
    .await
    .unwrap();
    name
}

async fn guest(machines: &Machines, name: &str, script: &str) -> String {
    let agent = machines.agent(name).await.expect("the agent");
    let script = script.to_owned();
    let out =
        tokio::task::spawn_blocking(move || agent.run(["sh", "-c", &script]).expect("run in the guest"))
            .await
            .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn revision(machines: &Machines, name: &str) -> Option<u64> {
    machines.get(name).await.ok().and_then(|m| m.status.config).map(|c| c.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_gets_its_config_before_its_main_process_and_every_change_after() {
    let dir = tempfile::tempdir().unwrap();
    let cache = hearth_testkit::test_cache_dir()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/hearth-test-cache"));
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.path().join("state.redb"), StoreOptions::default()).unwrap());
    let networks = hearth_net::Networks::new(
        store.clone(),
        hearth_net::service::Options {
            prefix: "tmc".into(),
            enabled: false,
            default_network: false,
            default_nat: false,
            host: "h1".into(),
            overlay: None,
        },
    );
    let data_dir = dir.path().join("data");
    let options =
        Options { data_dir: data_dir.clone(), cache_dir: cache.clone(), agent: None, host: "h1".into() };
    let machines = Machines::new(store, networks, options, hearth_machines::probe::probe_host()).unwrap();
    let feed = FakeFeed::new(ConfigPayload {
        json: br#"{"greeting":"hello"}"#.to_vec(),
        env: b"GREETING=hello\n".to_vec(),
        revision: 1,
    });
    machines.set_config_feed(feed.clone());
    let (stop, shutdown) = watch::channel(false);
    let service = tokio::spawn(machines.clone().run(shutdown));
    let image = test_image(&cache, &machines).await;

    let name = format!("cfg-{}", std::process::id());
    let _kill = KillOnDrop { dir: data_dir, name: name.clone() };
    // The main process copies the config it finds at its start, then
    // counts the SIGHUPs it gets.
    let main = "cp /run/hearth/config.json /root/seen 2>/dev/null || echo missing > /root/seen; \
                trap 'echo hup >> /root/hups' HUP; touch /root/ready; while :; do sleep 0.1; done";
    machines
        .create(CreateRequest {
            name: name.clone(),
            image,
            backend: Some(Backend::QemuTcg),
            memory_mib: 256,
            command: Some(vec!["sh".into(), "-c".into(), main.into()]),
            on_config_change: Some("SIGHUP".into()),
            ..CreateRequest::default()
        })
        .await
        .expect("create the machine");

    let up =
        wait_until(BOOT, async || machines.get(&name).await.is_ok_and(|m| m.status.state == State::Running))
            .await;
    let rec = machines.get(&name).await.unwrap();
    assert!(up, "the machine did not come up: {:?}", rec.status);
    // Pushed before the machine counted as running.
    assert_eq!(rec.status.config.as_ref().map(|c| c.revision), Some(1), "{:?}", rec.status);
    assert!(
        wait_until(BOOT, async || guest(&machines, &name, "test -e /root/ready && echo ok").await == "ok\n")
            .await,
        "the main process did not start"
    );
    assert_eq!(guest(&machines, &name, "cat /root/seen").await, r#"{"greeting":"hello"}"#);
    assert_eq!(
        guest(&machines, &name, "stat -c '%a %U' /run/hearth/config.json /run/hearth/config.env").await,
        "600 root\n600 root\n"
    );
    assert_eq!(guest(&machines, &name, "cat /run/hearth/config.env").await, "GREETING=hello\n");

    // A change: the file is replaced in the running machine, the main
    // process gets SIGHUP, and the record moves on.
    feed.commit(2, r#"{"greeting":"bonjour"}"#, "GREETING=bonjour\n");
    assert!(
        wait_until(BOOT, async || revision(&machines, &name).await == Some(2)).await,
        "revision 2 was not recorded: {:?}",
        machines.get(&name).await.map(|m| m.status.config)
    );
    assert_eq!(guest(&machines, &name, "cat /run/hearth/config.json").await, r#"{"greeting":"bonjour"}"#);
    assert!(
        wait_until(BOOT, async || guest(&machines, &name, "cat /root/hups").await == "hup\n").await,
        "the main process got no SIGHUP"
    );
    let status = machines.get(&name).await.unwrap().status.config.unwrap();
    assert_eq!(status.reload_error, None);

    // Changes in a burst: the newest wins and none goes back in time.
    let started = Instant::now();
    for revision in 3..=12 {
        feed.commit(revision, &format!(r#"{{"n":{revision}}}"#), "");
    }
    assert!(
        wait_until(BOOT, async || revision(&machines, &name).await == Some(12)).await,
        "the last of a burst was not delivered: {:?}",
        revision(&machines, &name).await
    );
    eprintln!("a burst of 10 changes reached the machine in {:?}", started.elapsed());
    assert_eq!(guest(&machines, &name, "cat /run/hearth/config.json").await, r#"{"n":12}"#);
    let hups = guest(&machines, &name, "cat /root/hups").await;
    assert!(hups.lines().count() >= 2, "a reload after the burst too: {hups}");

    machines.remove(&name, true).await.expect("remove the machine");
    stop.send(true).unwrap();
    service.await.unwrap();
}
