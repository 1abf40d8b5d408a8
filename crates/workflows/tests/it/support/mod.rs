//! Test support: builds the guest workflows once, runs a `Workflows` service
//! (with the config its runs read) over a store in a temporary directory,
//! waits for runs to reach a state, and serves activities from a loopback
//! HTTP server that applies each idempotency key once.
//!
//! The guests are built with:
//!
//! ```text
//! cargo build --release --locked --target wasm32-wasip2 --manifest-path crates/workflows/tests/guests/Cargo.toml --target-dir target/workflows-guests
//! ```

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hearth_config::Config;
use hearth_store::redb::{Options as StoreOptions, RedbStore};
use hearth_workflows::{Options, Run, StartRequest, Status, Workflows};
use tokio::sync::watch;

/// The guest components, as bytes.
pub struct Guests {
    pub steps: Vec<u8>,
    pub drifted: Vec<u8>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace exists")
}

/// Builds the guests (once per test binary) and returns them.
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let root = workspace();
        let target_dir = root.join("target/workflows-guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(&cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--quiet",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("crates/workflows/tests/guests/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            // Guests are built by rustc, not by the clippy driver `make test`
            // compiles the workspace with: they are not the workspace's code.
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CLIPPY_ARGS")
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the workflow test guests failed (is the wasm32-wasip2 target installed? `make setup`)"
        );
        let read = |name: &str| {
            std::fs::read(target_dir.join(format!("wasm32-wasip2/release/{name}.wasm")))
                .expect("the guest was built")
        };
        Guests { steps: read("steps"), drifted: read("drifted") }
    })
}

/// A workflows service over `dir/state.redb`, its loop running.
pub struct Service {
    pub workflows: Workflows,
    /// The config its runs read with `config-get`.
    pub config: Config,
    pub store: RedbStore,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The config of the workflows on `store`, its key file in `dir` (the same
/// key every time for one `dir`, as for a daemon's data dir).
pub fn config(store: Arc<dyn hearth_store::Store>, dir: &Path) -> Config {
    Config::open(store, dir).expect("config opens")
}

pub async fn service(dir: &Path, cpu_budget: Duration) -> Service {
    let store = RedbStore::open(&dir.join("state.redb"), StoreOptions::default()).unwrap();
    let mut options = Options::new(dir.join("data"), dir.join("cache"));
    options.cpu_budget = cpu_budget;
    let config = config(Arc::new(store.clone()), dir);
    let workflows = Workflows::new(Arc::new(store.clone()), config.clone(), options).unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn({
        let workflows = workflows.clone();
        async move { workflows.run(rx).await.unwrap() }
    });
    Service { workflows, config, store, stop, task }
}

impl Service {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        drop(self.workflows);
        drop(self.config);
        self.store.shutdown().await;
    }
}

pub fn start(workflow: &str, input: &str) -> StartRequest {
    StartRequest {
        workflow: workflow.into(),
        input: input.into(),
        started_by: "test".into(),
        ..Default::default()
    }
}

/// Polls run `id` until `check` holds (or a minute passes: then fails).
pub async fn until(workflows: &Workflows, id: &str, what: &str, check: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = workflows.get_run(id).await.unwrap();
        if check(&run) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} never became {what}: {run:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn ended(workflows: &Workflows, id: &str) -> Run {
    until(workflows, id, "ended", |r| r.status.is_terminal()).await
}

pub async fn waiting_for_signal(workflows: &Workflows, id: &str) -> Run {
    until(workflows, id, "waiting for a signal", |r| {
        r.status == Status::Waiting
            && matches!(&r.wait, Some(w) if matches!(w.kind, hearth_workflows::WaitKind::Signal { .. }))
    })
    .await
}

/// A loopback HTTP server for activities. It applies each
/// `Idempotency-Key` once (a repeat gets the first answer again) and counts
/// both the effects applied and the requests seen. While [`Effects::hold`]
/// holds, requests are counted as they arrive and wait there, unapplied.
#[derive(Clone, Default)]
pub struct Effects {
    inner: Arc<Mutex<EffectsInner>>,
    held: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

#[derive(Default)]
struct EffectsInner {
    /// key -> (path, body) of the first request with that key.
    applied: HashMap<String, (String, String)>,
    requests: usize,
    without_key: usize,
}

impl Effects {
    /// Starts the server on a free loopback port; returns its base URL.
    pub fn start() -> (Effects, String) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let effects = Effects::default();
        let shared = effects.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || shared.serve(stream));
            }
        });
        (effects, url)
    }

    fn serve(&self, mut stream: std::net::TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (mut length, mut key) = (0usize, None);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap_or((header, ""));
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "idempotency-key" => key = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let body = String::from_utf8_lossy(&body).into_owned();
            self.inner.lock().unwrap().requests += 1;
            {
                let (held, released) = &*self.held;
                let _released = released.wait_while(held.lock().unwrap(), |held| *held).unwrap();
            }
            let answer = {
                let mut inner = self.inner.lock().unwrap();
                match key {
                    Some(key) => {
                        let entry = inner.applied.entry(key).or_insert((path.clone(), body.clone()));
                        format!("{}={}", entry.0.trim_start_matches('/'), entry.1)
                    }
                    None => {
                        inner.without_key += 1;
                        "no key".into()
                    }
                }
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// Requests wait, unapplied, until [`Effects::release`].
    pub fn hold(&self) {
        *self.held.0.lock().unwrap() = true;
    }

    /// Applies and answers the requests held, and those to come.
    pub fn release(&self) {
        *self.held.0.lock().unwrap() = false;
        self.held.1.notify_all();
    }

    /// Effects applied: one per distinct idempotency key.
    pub fn applied(&self) -> usize {
        self.inner.lock().unwrap().applied.len()
    }

    /// Every request, repeats included.
    pub fn requests(&self) -> usize {
        self.inner.lock().unwrap().requests
    }

    pub fn without_key(&self) -> usize {
        self.inner.lock().unwrap().without_key
    }

    /// The idempotency keys applied.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.inner.lock().unwrap().applied.keys().cloned().collect();
        keys.sort();
        keys
    }
}
