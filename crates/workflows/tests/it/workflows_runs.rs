//! Runs of real workflow components over a real store: sleep, signal,
//! activity, children, limits, divergence, and a service restarted while
//! runs wait.

use crate::support::{self, ended, service, start, waiting_for_signal};

use std::sync::Arc;
use std::time::Duration;

use hearth_store::Store as _;
use hearth_store::redb::{Options as StoreOptions, RedbStore};
use hearth_workflows::{Options, Status, Workflows};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_sleeps_waits_for_a_signal_calls_an_activity_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path(), Duration::from_secs(10)).await;
    let (effects, url) = support::Effects::start();
    s.workflows.deploy("steps", support::guests().steps.clone(), None).await.unwrap();
    let started = s.workflows.start(start("steps", &format!("full:{url}"))).await.unwrap();
    let id = started.run.id.clone();
    waiting_for_signal(&s.workflows, &id).await;
    // Waiting costs nothing: once the execution that wrote the wait has
    // let go of its instance (just after the record says so), none is
    // under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.workflows.executing() != 0 {
        assert!(std::time::Instant::now() < deadline, "an execution is still under way while the run waits");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.workflows.signal(&id, "go", "yes".into()).await.unwrap();
    let run = ended(&s.workflows, &id).await;
    assert_eq!(run.status, Status::Completed, "{run:#?}");
    assert_eq!(run.output.as_deref(), Some("done:yes:200"));
    assert_eq!(effects.applied(), 1);
    assert_eq!(effects.keys(), vec![format!("{id}/3")]);
    // Three executions (start, timer, signal), yet every step is recorded
    // once and the log line was written once.
    assert!(run.executions >= 3, "{run:#?}");
    let detail = s.workflows.show(&id).await.unwrap();
    let calls: Vec<String> = detail.journal.iter().map(|e| e.call.to_string()).collect();
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert!(calls[1].starts_with("sleep(300ms)") && calls[2].starts_with("wait-signal(\"go\""), "{calls:?}");
    let logs = s.workflows.logs(&id).await.unwrap();
    assert_eq!(logs.iter().filter(|l| l.text.starts_with("starting")).count(), 1, "{logs:?}");
    // A signal to an ended run is refused.
    let error = s.workflows.signal(&id, "go", "again".into()).await.unwrap_err();
    assert!(error.to_string().contains("already ended"), "{error}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_survives_a_restart_and_signals_sent_early_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (effects, url) = support::Effects::start();
    let s = service(dir.path(), Duration::from_secs(10)).await;
    s.workflows.deploy("steps", support::guests().steps.clone(), None).await.unwrap();
    let a = s.workflows.start(start("steps", &format!("full:{url}"))).await.unwrap().run.id;
    let b = s.workflows.start(start("steps", "sleep:1500")).await.unwrap().run.id;
    waiting_for_signal(&s.workflows, &a).await;
    s.shutdown().await;

    let s = service(dir.path(), Duration::from_secs(10)).await;
    // The timer of `b` fires after the restart.
    let run = ended(&s.workflows, &b).await;
    assert_eq!((run.status, run.output.as_deref()), (Status::Completed, Some("slept")));
    s.workflows.signal(&a, "go", "later".into()).await.unwrap();
    let run = ended(&s.workflows, &a).await;
    assert_eq!(run.output.as_deref(), Some("done:later:200"), "{run:#?}");
    assert_eq!(effects.applied(), 1);
    s.shutdown().await;

    // A signal sent before the run asks for it is delivered when it does.
    let s = service(dir.path(), Duration::from_secs(10)).await;
    let c = s.workflows.start(start("steps", &format!("full:{url}"))).await.unwrap().run.id;
    s.workflows.signal(&c, "go", "early".into()).await.unwrap();
    let run = ended(&s.workflows, &c).await;
    assert_eq!(run.output.as_deref(), Some("done:early:200"), "{run:#?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_children_and_failures_end_as_they_should() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path(), Duration::from_millis(500)).await;
    s.workflows.deploy("steps", support::guests().steps.clone(), None).await.unwrap();
    let cases = [
        ("timeout:300", Status::Completed, "timed out"),
        ("child:sleep:200", Status::Completed, "child said slept"),
        ("child:fail", Status::Failed, "child failed: the test asked for a failure"),
        ("fail", Status::Failed, "the test asked for a failure"),
        ("trap", Status::Failed, "trapped"),
        ("spin", Status::Failed, "computed for more than 500ms"),
        // The budget is per stretch between durable calls, not per execution:
        // hundreds of journal writes take longer than 500 ms in all.
        ("logs:400", Status::Completed, "logged 400"),
        ("print", Status::Completed, "printed"),
    ];
    let mut ids = Vec::new();
    for (input, _, _) in &cases {
        ids.push(s.workflows.start(start("steps", input)).await.unwrap().run.id);
    }
    for ((input, status, text), id) in cases.iter().zip(&ids) {
        let run = ended(&s.workflows, id).await;
        let said = run.output.clone().or(run.error.clone()).unwrap_or_default();
        assert_eq!(run.status, *status, "{input}: {run:#?}");
        assert!(said.contains(text), "{input}: {said}");
    }
    let print = ids.last().unwrap();
    let logs = s.workflows.logs(print).await.unwrap();
    let texts: Vec<&str> = logs.iter().map(|l| l.text.as_str()).collect();
    assert!(
        texts.contains(&"hello from log") && texts.iter().any(|t| t.contains("hello from stdout")),
        "{texts:?}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_moved_to_code_that_calls_something_else_fails_with_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path(), Duration::from_secs(10)).await;
    let guests = support::guests();
    s.workflows.deploy("steps", guests.steps.clone(), None).await.unwrap();
    let id = s.workflows.start(start("steps", "full:http://127.0.0.1:9")).await.unwrap().run.id;
    waiting_for_signal(&s.workflows, &id).await;
    // A redeploy does not touch the run: it stays on version 1.
    let v2 = s.workflows.deploy("steps", guests.drifted.clone(), None).await.unwrap();
    assert_eq!(v2.version.number, 2);
    assert_eq!(s.workflows.get_run(&id).await.unwrap().version, 1);
    s.workflows.migrate(&id, 2).await.unwrap();
    s.workflows.signal(&id, "go", "x".into()).await.unwrap();
    let run = ended(&s.workflows, &id).await;
    let error = run.error.unwrap_or_default();
    assert_eq!(run.status, Status::Failed);
    assert!(
        error.contains("not deterministic") && error.contains("step 0") && error.contains("now()"),
        "{error}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_are_idempotent_by_id_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path(), Duration::from_secs(10)).await;
    let guests = support::guests();
    s.workflows.deploy("steps", guests.steps.clone(), None).await.unwrap();
    let mut request = start("steps", "echo");
    request.id = Some("order-1".into());
    let first = s.workflows.start(request.clone()).await.unwrap();
    let second = s.workflows.start(request.clone()).await.unwrap();
    assert!(first.created && !second.created);
    assert_eq!(ended(&s.workflows, "order-1").await.output.as_deref(), Some("echo"));
    assert_eq!(s.workflows.runs(None, Some("steps")).await.unwrap().len(), 1);

    for (bytes, needle) in [
        (b"not wasm at all".to_vec(), "not a WebAssembly component"),
        (b"\0asm\x01\0\0\0".to_vec(), "not a WebAssembly component"),
        (guests.steps[..guests.steps.len() / 2].to_vec(), "not valid"),
    ] {
        let error = s.workflows.deploy("bad", bytes, None).await.unwrap_err().to_string();
        assert!(error.contains(needle), "{error}");
    }
    let error =
        s.workflows.deploy("bad", guests.steps.clone(), Some("[[cron]]\nschedule = \"nope\"".into())).await;
    assert!(error.unwrap_err().to_string().contains("has 1 fields"));
    let error = s.workflows.start(start("missing", "")).await.unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    let error = s.workflows.signal("nobody", "go", String::new()).await.unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    s.shutdown().await;
}

/// An executor named `name` on `store`, with the kept bytes of `dir` and a
/// compiled cache of its own, as a second daemon on another host would
/// have. Its loop stops when the sender says so; the handle stays usable.
fn executor(
    dir: &std::path::Path,
    store: Arc<dyn hearth_store::Store>,
    name: &str,
) -> (Workflows, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    executor_with(dir, store, name, |_| {})
}

/// [`executor`], with its options changed by `f`.
fn executor_with(
    dir: &std::path::Path,
    store: Arc<dyn hearth_store::Store>,
    name: &str,
    f: impl FnOnce(&mut Options),
) -> (Workflows, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let mut options = Options::new(dir.join("data"), dir.join(format!("cache-{name}")));
    options.executor = name.into();
    f(&mut options);
    let config = support::config(store.clone(), dir);
    let workflows = Workflows::new(store, config, options).unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn({
        let workflows = workflows.clone();
        async move { workflows.run(rx).await.unwrap() }
    });
    (workflows, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_written_through_one_executor_completes_the_run_on_the_other_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state.redb"), StoreOptions::default()).unwrap();
    let (effects, url) = support::Effects::start();
    let (a, stop_a, task_a) = executor(dir.path(), Arc::new(store.clone()), "a");
    // B's watches break every few changes, as over a flaky network.
    let flaky = hearth_store::testing::Breaking::new(Arc::new(store.clone()));
    flaky.break_every(3);
    let (b, stop_b, task_b) = executor(dir.path(), flaky.clone(), "b");
    a.deploy("steps", support::guests().steps.clone(), None).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(a.start(start("steps", &format!("full:{url}"))).await.unwrap().run.id);
    }
    for id in &ids {
        waiting_for_signal(&a, id).await;
    }
    // Only B executes from now on; the signals are written through A.
    stop_a.send_replace(true);
    task_a.await.unwrap();
    for id in &ids {
        a.signal(id, "go", "yes".into()).await.unwrap();
    }
    for id in &ids {
        let run = ended(&b, id).await;
        assert_eq!(
            (run.status, run.output.as_deref()),
            (Status::Completed, Some("done:yes:200")),
            "{run:#?}"
        );
        let calls = b.show(id).await.unwrap().journal.len();
        assert_eq!(calls, 5, "every step recorded once");
    }
    assert_eq!(effects.applied(), 4, "each run's activity took effect once");
    assert_eq!(effects.requests(), 4, "and was called once: no two executors ran one step");
    assert!(flaky.watches_opened() > 3, "B's watches really broke");
    stop_b.send_replace(true);
    task_b.await.unwrap();
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_claimed_by_an_executor_that_died_is_taken_over_when_its_lease_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state.redb"), StoreOptions::default()).unwrap();
    let shared: Arc<dyn hearth_store::Store> = Arc::new(store.clone());
    // A dead executor's claim on a run that is running: what a daemon
    // killed mid-execution leaves.
    let (b, stop_b, task_b) = executor(dir.path(), shared.clone(), "b");
    b.deploy("steps", support::guests().steps.clone(), None).await.unwrap();
    let dead = shared.lease_grant(Duration::from_secs(3)).await.unwrap().id;
    stop_b.send_replace(true);
    task_b.await.unwrap();
    let id = b.start(start("steps", "sleep:10")).await.unwrap().run.id;
    shared.put(&format!("workflows/claims/{id}"), dead.to_string().into_bytes(), Some(dead)).await.unwrap();
    let (b, stop_b, task_b) = executor(dir.path(), shared.clone(), "b");
    // B does not run it while the claim holds...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.get_run(&id).await.unwrap().status, Status::Running, "B waited for the claim");
    // ...and does when the dead executor's lease expires.
    let run = ended(&b, &id).await;
    assert_eq!((run.status, run.output.as_deref()), (Status::Completed, Some("slept")), "{run:#?}");
    stop_b.send_replace(true);
    task_b.await.unwrap();
    store.shutdown().await;
}

/// Issue 17: hosts on one store, each with a data dir of its own. A run of
/// a workflow deployed through A, started through B while only B executes,
/// completes on B with the bytes it fetched from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_executes_on_a_host_that_never_saw_its_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state.redb"), StoreOptions::default()).unwrap();
    let shared: Arc<dyn hearth_store::Store> = Arc::new(store.clone());
    let host = |name: &str| {
        let data = dir.path().join(format!("data-{name}"));
        executor_with(dir.path(), shared.clone(), name, move |o| {
            o.data_dir = data;
            o.shared = true;
        })
    };
    let (a, stop_a, task_a) = host("a");
    let (b, stop_b, task_b) = host("b");
    stop_a.send_replace(true);
    task_a.await.unwrap();
    let steps = &support::guests().steps;
    let deployed = a.deploy("steps", steps.clone(), None).await.unwrap();
    let sha = &deployed.version.sha256;
    let shared_keys = store.range("workflows/blobs/").await.unwrap().kvs.len();
    assert_eq!(shared_keys, 1 + steps.len().div_ceil(hearth_wasm::blobs::CHUNK), "a manifest and its chunks");

    let id = b.start(start("steps", "sleep:10")).await.unwrap().run.id;
    let run = ended(&b, &id).await;
    assert_eq!((run.status, run.output.as_deref()), (Status::Completed, Some("slept")), "{run:#?}");
    assert!(dir.path().join(format!("data-b/workflows/blobs/{sha}.wasm")).is_file(), "B kept the bytes");
    stop_b.send_replace(true);
    task_b.await.unwrap();
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_not_shared_holds_no_workflow_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path(), Duration::from_secs(10)).await;
    s.workflows.deploy("steps", support::guests().steps.clone(), None).await.unwrap();
    assert!(s.store.range("workflows/blobs/").await.unwrap().kvs.is_empty());
    s.shutdown().await;
}
