//! `hearth bench`: measurements against peers; the drivers are in
//! `hearth-bench`, this is the command line.
//!
//! `bench store` runs on its own, against a fresh store; `bench machines`,
//! `bench apps` and `bench services` are clients of the running daemon,
//! because they measure the daemon.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hearth_bench::{apps, machines, services, workflows};
use hearth_client::Client;
use hearth_store::bench::{BenchOptions, run as run_store_bench};
use hearth_store::redb::{Options as StoreOptions, RedbStore};

mod local_etcd;

/// A backend `bench store` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BenchBackend {
    Redb,
    Etcd,
}

impl BenchBackend {
    fn name(self) -> &'static str {
        match self {
            BenchBackend::Redb => "redb",
            BenchBackend::Etcd => "etcd",
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// State store throughput: put, get, CAS transactions and watch delivery.
    ///
    /// Runs against a fresh embedded store in a temporary directory (never the
    /// daemon's). The workload is written against the store trait, so the same
    /// load runs on etcd: `--backend redb,etcd` runs both, one after the
    /// other, and prints them side by side with the ratio.
    Store {
        /// The backends to run on, in order: `redb` (a fresh file in a temporary directory) and `etcd`.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "redb", value_name = "redb,etcd")]
        backend: Vec<BenchBackend>,
        /// The etcd to run on; without it, the benchmark starts its own `etcd` (Debian's etcd-server) on loopback, with its data in the temporary directory.
        #[arg(long, value_name = "etcd://HOST:PORT")]
        etcd: Option<String>,
        /// Operations per phase.
        #[arg(long, default_value_t = 5000)]
        ops: usize,
        /// Concurrent clients for the concurrent phases.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Where to put the temporary store (default: the system temp dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Machines: boot to agent-ready through hearth against a bare QEMU boot
    /// of the same kernel and initramfs, exec round trips, idle memory.
    ///
    /// Talks to the running daemon (as `hearth machine` does), creates
    /// machines named bench-PID-N and removes them again.
    Machines(machines::Args),
    /// Workflows: three-step workflows per second and signal-to-resume
    /// latency through the running daemon, and on Restate when installed
    /// (`make bench-workflows-peer`).
    Workflows(workflows::Args),
    /// Apps: deploy latency (cold and warm, to the first 200) and hello-world
    /// requests per second through hearth's ingress against a native hyper
    /// server and `wasmtime serve`, with one load generator (wrk).
    ///
    /// Talks to the running daemon (as `hearth app` does), deploys an app
    /// named bench-apps-PID and removes it again.
    Apps(apps::Args),
    /// Handlers from source: from `fn deploy` of a changed JavaScript (and
    /// Python) handler to its first 200, what of it was the build, and
    /// requests per second of a JavaScript and a Python hello against the
    /// Rust hello app under the same wrk load.
    ///
    /// Talks to the running daemon, deploys apps named bench-fn-js-PID,
    /// bench-fn-py-PID and bench-fn-rs-PID and removes them again.
    Fn(hearth_bench::fns::Args),
    /// Services: from a VM's SIGKILL to its instance leaving the endpoints
    /// and the host DNS answer, and to a replacement passing; DNS lookups
    /// per second against a plain hickory-proto responder; failed requests
    /// through the ingress during a rolling deploy under load.
    ///
    /// Talks to the running daemon on this host (as `hearth service` does),
    /// creates services named bench-dns-PID and bench-svc-PID and removes
    /// them again. The image needs sh and nc: `hearth image build debian
    /// --packages netcat-openbsd --name bench-services` makes one.
    Services(services::Args),
    /// Config: from `config set` to an app's next response showing the value
    /// and (with --image) to a machine's agent replacing its config.json,
    /// against a plain store event through the events stream.
    ///
    /// Talks to the running daemon, deploys an app (and runs a machine)
    /// named bench-config-PID and removes them again.
    Config(hearth_bench::config::Args),
    /// Alerts: from a store event to its webhook delivered, against the same
    /// event through the events stream; and rule evaluation throughput with
    /// 100 event, log and metric rules in this process, against matching
    /// alone.
    ///
    /// Talks to the running daemon, adds a webhook receiver and an event rule
    /// named bench-alerts-PID to the rules in force, puts keys under
    /// kv/bench-alerts-PID/, and puts the rules back and the keys away.
    Alerts(hearth_bench::alerts::Args),
    /// Machines that sleep: RSS and CPU of a machine awake and asleep, the
    /// time to put it to sleep, from a connection to the sleeping machine
    /// to the answer's first byte, and requests lost across sleep/wake
    /// cycles under intermittent load.
    ///
    /// Talks to the running daemon on this host, runs a machine named
    /// bench-sleep-PID with a forwarded port and removes it again. The
    /// image needs busybox: `hearth image build debian --packages busybox
    /// --name bench-sleep` makes one.
    Sleep(hearth_bench::sleep::Args),
}

/// Runs a benchmark; `client` connects to the daemon for those that need one.
pub(crate) async fn run(
    command: Command,
    data_dir: &Path,
    client: impl FnOnce() -> anyhow::Result<Client>,
) -> anyhow::Result<()> {
    match command {
        Command::Machines(args) => machines::run(&client()?, data_dir, args).await?,
        Command::Workflows(args) => workflows::run(&client()?, args).await?,
        Command::Apps(args) => apps::run(&client()?, data_dir, args).await?,
        Command::Fn(args) => hearth_bench::fns::run(&client()?, args).await?,
        Command::Services(args) => services::run(&client()?, args).await?,
        Command::Config(args) => hearth_bench::config::run(&client()?, args).await?,
        Command::Alerts(args) => hearth_bench::alerts::run(&client()?, args).await?,
        Command::Sleep(args) => hearth_bench::sleep::run(&client()?, data_dir, args).await?,
        Command::Store { backend, etcd, ops, concurrency, value_size, dir, json } => {
            let tmp = match dir {
                Some(dir) => tempfile::tempdir_in(&dir),
                None => tempfile::tempdir(),
            }
            .context("cannot create a temporary directory for the benchmark store")?;
            let options = BenchOptions { ops, concurrency, value_size };
            let mut runs = Vec::new();
            for backend in backend {
                let report = match backend {
                    BenchBackend::Redb => {
                        let store = RedbStore::open(&tmp.path().join("bench.redb"), StoreOptions::default())?;
                        eprintln!(
                            "Benchmarking the embedded store (redb, fsync per commit) in {} ...",
                            tmp.path().display()
                        );
                        let report = run_store_bench(Arc::new(store.clone()), options.clone()).await?;
                        store.shutdown().await;
                        report
                    }
                    BenchBackend::Etcd => {
                        let (endpoints, _server) = match &etcd {
                            Some(url) => (hearth_store::etcd::Options::from_url(url)?.endpoints, None),
                            None => {
                                let server = local_etcd::LocalEtcd::start(tmp.path()).await?;
                                (vec![server.endpoint()], Some(server))
                            }
                        };
                        let mut etcd_options = hearth_store::etcd::Options::new(endpoints);
                        etcd_options.namespace = "/hearth-bench/".to_owned();
                        let store = hearth_store::etcd::EtcdStore::connect(etcd_options)
                            .await
                            .context("cannot connect to etcd for the benchmark")?;
                        eprintln!("Benchmarking etcd at {} ...", store.endpoints());
                        run_store_bench(Arc::new(store), options.clone()).await?
                    }
                };
                runs.push((backend.name().to_owned(), report));
            }
            let comparison = hearth_store::bench::Comparison { runs };
            match (json, comparison.runs.as_slice()) {
                (true, [(_, report)]) => crate::output::print_json(report)?,
                (true, _) => crate::output::print_json(&comparison)?,
                (false, [(_, report)]) => print!("{report}"),
                (false, _) => print!("{comparison}"),
            }
        }
    }
    Ok(())
}
