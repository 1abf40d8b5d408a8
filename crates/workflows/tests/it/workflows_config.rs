//! `config-get`: a run reads its merged config (scope `workflow:NAME`), each
//! read is recorded so a replay sees what the first execution saw, and a
//! secret reaches the guest in clear but the journal only sealed.

use crate::support::{self, ended, service, start, waiting_for_signal};

use std::time::Duration;

use hearth_config::{Key, Layer, Scope};
use hearth_store::Store as _;
use hearth_workflows::Status;
use serde_json::json;

fn key(k: &str) -> Key {
    Key::parse(k).unwrap()
}

fn own() -> Layer {
    Layer::of(Scope::Workflow("steps".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_its_merged_config_and_a_replay_sees_what_the_first_read_saw() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path(), Duration::from_secs(10)).await;
    let c = &s.config;
    s.workflows.deploy("steps", support::guests().steps.clone(), None).await.unwrap();
    c.set(&Layer::Global, &key("db"), json!({"host": "global-db", "port": 5432}), false).await.unwrap();
    c.set(&own(), &key("db.host"), json!("steps-db"), false).await.unwrap();
    c.set(&Layer::of(Scope::Workflow("other".into())), &key("db.host"), json!("other-db"), false)
        .await
        .unwrap();
    c.set(&own(), &key("greeting"), json!("hello"), false).await.unwrap();

    let id =
        s.workflows.start(start("steps", "read:db.host,db.port,db,missing,db.host.under,Not A Key")).await;
    let run = ended(&s.workflows, &id.unwrap().run.id).await;
    assert_eq!(run.status, Status::Completed, "{run:#?}");
    let lines: Vec<&str> = run.output.as_deref().unwrap_or_default().lines().collect();
    assert_eq!(
        lines,
        ["steps-db", "5432", r#"{"host":"steps-db","port":5432}"#, "(none)", "(none)", "(none)"],
        "its own layer over global, a number as JSON, a table as JSON, nothing where nothing is"
    );

    let id = s.workflows.start(start("steps", "config:greeting")).await.unwrap().run.id;
    waiting_for_signal(&s.workflows, &id).await;
    c.set(&own(), &key("greeting"), json!("changed"), false).await.unwrap();
    s.workflows.signal(&id, "go", String::new()).await.unwrap();
    let run = ended(&s.workflows, &id).await;
    assert!(run.executions >= 2, "the signal brought a replay: {run:#?}");
    assert_eq!(run.output.as_deref(), Some("hello|changed"), "{run:#?}");
    let journal = s.workflows.show(&id).await.unwrap().journal;
    let steps: Vec<String> = journal.iter().map(|e| format!("{} = {}", e.call, e.outcome)).collect();
    assert_eq!(steps[0], r#"config-get("greeting") = "hello""#, "{steps:?}");
    assert_eq!(steps[2], r#"config-get("greeting") = "changed""#, "{steps:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_guest_in_clear_and_the_journal_only_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path(), Duration::from_secs(10)).await;
    let c = &s.config;
    s.workflows.deploy("steps", support::guests().steps.clone(), None).await.unwrap();
    c.set(&own(), &key("api.token"), json!("tok-FIRST-9f3a"), true).await.unwrap();
    c.set(&own(), &key("api.url"), json!("https://api.example"), false).await.unwrap();

    // A table that holds a secret is sealed whole; a leaf beside it is not.
    let b = s.workflows.start(start("steps", "read:api,api.url")).await.unwrap().run.id;
    let run = ended(&s.workflows, &b).await;
    assert_eq!(
        run.output.as_deref(),
        Some("{\"token\":\"tok-FIRST-9f3a\",\"url\":\"https://api.example\"}\nhttps://api.example"),
        "{run:#?}"
    );

    let a = s.workflows.start(start("steps", "config:api.token")).await.unwrap().run.id;
    waiting_for_signal(&s.workflows, &a).await;
    // The first read was sealed with the key a rekey now retires: the
    // replay opens it with the retired key.
    c.rekey(false).await.unwrap();
    c.set(&own(), &key("api.token"), json!("tok-SECOND-77c1"), true).await.unwrap();
    s.workflows.signal(&a, "go", String::new()).await.unwrap();
    let run = ended(&s.workflows, &a).await;
    assert_eq!(run.output.as_deref(), Some("tok-FIRST-9f3a|tok-SECOND-77c1"), "{run:#?}");

    let journal = s.store.range("workflows/journal/").await.unwrap().kvs;
    assert_eq!(journal.len(), 2 + 3, "{journal:?}");
    let raw: Vec<String> = journal.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect();
    assert!(
        raw.iter().any(|text| text.contains("https://api.example")),
        "a value that is not secret is recorded in clear: {raw:#?}"
    );
    for (kv, text) in journal.iter().zip(&raw) {
        assert!(!text.contains("tok-FIRST") && !text.contains("tok-SECOND"), "{}: {text}", kv.key);
    }
    let shown: Vec<String> =
        s.workflows.show(&a).await.unwrap().journal.iter().map(|e| e.outcome.to_string()).collect();
    assert_eq!(shown[0], "a secret (sealed)", "{shown:?}");
    assert_eq!(shown[2], "a secret (sealed)", "{shown:?}");
    s.shutdown().await;
}
