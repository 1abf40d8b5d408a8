//! The benchmark driver, run small: every phase does work and cleans up.

use crate::support;

use std::sync::Arc;

use hearth_store::Store;
use hearth_store::bench::{self, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_phase_and_cleans_up() {
    let (_dir, store) = support::store();
    let store: Arc<dyn Store> = Arc::new(store);
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
