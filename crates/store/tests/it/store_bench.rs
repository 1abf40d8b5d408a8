//! The benchmark driver, run small: every phase does work and cleans up.

use crate::support::{self, Backend};

use std::sync::Arc;

use hearth_store::Store;
use hearth_store::bench::{self, BenchOptions, Comparison};

support::on_both_backends!(bench_runs_every_phase_and_cleans_up);

async fn bench_runs_every_phase_and_cleans_up(backend: Backend) {
    let test = backend.store().await;
    let store: Arc<dyn Store> = test.arc();
    let options = BenchOptions { ops: 40, concurrency: 4, value_size: 16 };
    let report = bench::run(Arc::clone(&store), options).await.unwrap();

    let names: Vec<_> = report.phases.iter().map(|phase| phase.name.as_str()).collect();
    assert_eq!(names, ["put (sequential)", "put (concurrent)", "get", "txn CAS", "watch (put→event)"]);
    for phase in &report.phases {
        assert_eq!((phase.ops, phase.misses), (40, 0), "{phase:?}");
        assert!(phase.ops_per_sec > 0.0 && phase.p99_ms >= phase.p50_ms, "{phase:?}");
    }
    let table = report.to_string();
    assert!(table.starts_with("phase"), "{table}");
    assert_eq!(table.lines().count(), 1 + 5 + 1, "{table}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["phases"][4]["ops"], 40);

    assert!(store.range(bench::PREFIX).await.unwrap().kvs.is_empty());
}

/// `hearth bench store --backend redb,etcd`: one row per phase, both
/// backends' figures and the ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comparison_shows_both_backends_and_the_ratio() {
    let options = BenchOptions { ops: 20, concurrency: 2, value_size: 16 };
    let mut runs = Vec::new();
    for backend in [Backend::Redb, Backend::Etcd] {
        let test = backend.store().await;
        runs.push((
            format!("{backend:?}").to_lowercase(),
            bench::run(test.arc(), options.clone()).await.unwrap(),
        ));
    }
    let table = Comparison { runs }.to_string();
    let lines: Vec<_> = table.lines().collect();
    assert_eq!(lines.len(), 1 + 5 + 1, "{table}");
    assert!(
        lines[0].contains("redb ops/s")
            && lines[0].contains("etcd ops/s")
            && lines[0].contains("redb ÷ etcd"),
        "{table}"
    );
    assert!(lines[1..6].iter().all(|line| line.ends_with('×')), "{table}");
}

/// The figures in docs/performance.md: the same driver and table as
/// `hearth bench store --backend redb,etcd`, here for a release build of
/// the store alone (`cargo test --release -p hearth-store --test it --
/// --ignored store_bench::compare_backends --nocapture`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark, run by hand"]
async fn compare_backends() {
    let options = BenchOptions { ops: 5000, concurrency: 32, value_size: 256 };
    let mut runs = Vec::new();
    for backend in [Backend::Redb, Backend::Etcd] {
        let test = backend.store().await;
        runs.push((
            format!("{backend:?}").to_lowercase(),
            bench::run(test.arc(), options.clone()).await.unwrap(),
        ));
    }
    print!("{}", Comparison { runs });
}
