//! Runs the store benchmark against a fresh embedded store in a temporary
//! directory.
//!
//! ```text
//! cargo run --release -p hearth-store --example bench -- [--ops N] [--concurrency N] [--value-size N] [--json]
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use hearth_store::bench::{self, BenchOptions};
use hearth_store::redb::{Options, RedbStore};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut options = BenchOptions::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || -> Result<usize, Box<dyn std::error::Error>> {
            Ok(args.next().ok_or(format!("{arg} needs a value"))?.parse()?)
        };
        match arg.as_str() {
            "--ops" => options.ops = number()?,
            "--concurrency" => options.concurrency = number()?,
            "--value-size" => options.value_size = number()?,
            "--json" => json = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let dir = tempfile::tempdir()?;
    let store = RedbStore::open(&dir.path().join("bench.redb"), Options::default())?;
    let report = bench::run(Arc::new(store.clone()), options).await?;
    let stats = store.stats();
    store.shutdown().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
        println!(
            "{} writes in {} commits ({:.1} writes per fsync)",
            stats.writes,
            stats.commits,
            stats.writes as f64 / stats.commits.max(1) as f64
        );
    }
    Ok(())
}
