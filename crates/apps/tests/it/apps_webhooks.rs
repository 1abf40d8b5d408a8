//! Webhooks in front of an app's routes, at the library level: which check
//! a request meets (the most specific, whatever spelling of the path it
//! uses), that the checks arrive with the version they belong to, that a
//! manifest cannot shadow a webhook added by API, and what becomes of a
//! delivery's `Idempotency-Key` when the app fails or its daemon died.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{Harness, eventually, guests};
use hearth_apps::triggers::{Spec, Webhook, delivery_key};
use hearth_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MANIFEST: &str = r#"
key_value = ["default"]
outbound = ["http://127.0.0.1:*"]
[config]
greeting = "hi"
[limits]
timeout_ms = 1000

[[webhook]]
path = "/hooks"

[[webhook]]
path = "/hooks/github"
secret = "s3cret"
"#;

/// One request written as raw bytes, so that the path goes out exactly as
/// given: (status, whole response).
async fn raw(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut text =
        format!("POST {path} HTTP/1.0\r\nHost: hooks-app.localhost\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_specific_webhook_checks_every_spelling_of_its_path() {
    let h = Harness::start().await;
    h.apps.deploy("hooks-app", guests().kitchen.clone(), Some(MANIFEST.into()), vec![]).await.unwrap();

    // The unsigned /hooks does not open the signed /hooks/github below it.
    let (status, answer) = raw(h.addr, "/hooks/github", &[], "{}").await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = raw(h.addr, "/hooks/gitlab", &[], "{}").await;
    assert_ne!(status, 401, "{answer}");
    let signature = hearth_triggers::signature::sign("s3cret", b"{}");
    let (status, answer) =
        raw(h.addr, "/hooks/github", &[(hearth_triggers::signature::HEADER, &signature)], "{}").await;
    assert_ne!(status, 401, "{answer}");

    // However the path is spelled, it does not get past the signed webhook.
    for path in [
        "/hooks/github/push",
        "/hooks//github",
        "/hooks/./github",
        "/x/../hooks/github",
        "/hooks/%67ithub",
        "/hooks/%2567ithub",
        "/hooks%2fgithub",
        "/HOOKS/GitHub",
        "//hooks/github",
    ] {
        // Refused: as unsigned (401), or, where the spelling also falls
        // under the unsigned /hooks as written, as ambiguous (400).
        let (status, answer) = raw(h.addr, path, &[], "{}").await;
        assert!(status == 401 || status == 400, "{path} was not checked: {answer}");
    }
    // A spelling under two webhooks at once (the signed one as written,
    // the unsigned one as resolved) is refused outright.
    let (status, answer) = raw(h.addr, "/hooks/github/../gitlab", &[], "{}").await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("plain"), "{answer}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_webhooks_guard_at_once_and_a_manifest_cannot_shadow_them() {
    let h = Harness::start().await;
    let kitchen = guests().kitchen.clone();
    h.apps.deploy("hooks-app", kitchen.clone(), Some(MANIFEST.into()), vec![]).await.unwrap();
    let added = h
        .apps
        .add_trigger("hooks-app", Spec::Webhook(Webhook { path: "/echo".into(), secret: Some("k".into()) }))
        .await
        .unwrap();
    assert_eq!(raw(h.addr, "/echo", &[], "x").await.0, 401, "the added webhook guards at once");

    // A redeploy (or rollback) whose manifest declares the same path is
    // refused, and the version serving keeps its checks.
    let clash = format!("{MANIFEST}\n[[webhook]]\npath = \"/echo/\"\n");
    let err = h.apps.deploy("hooks-app", kitchen.clone(), Some(clash), vec![]).await.unwrap_err().to_string();
    assert!(err.contains("already has one there") && err.contains(&added.id), "{err}");
    assert_eq!(raw(h.addr, "/echo", &[], "x").await.0, 401);
    // Paths are matched in any case, so two in different cases clash too.
    let cased = format!("{MANIFEST}\n[[webhook]]\npath = \"/Hooks\"\n");
    let err = h.apps.deploy("hooks-app", kitchen.clone(), Some(cased), vec![]).await.unwrap_err().to_string();
    assert!(err.contains("two webhooks"), "{err}");
    let err = h
        .apps
        .add_trigger("hooks-app", Spec::Webhook(Webhook { path: "/ECHO".into(), secret: None }))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already has a webhook"), "{err}");

    // A redeploy keeps the added webhook; removed, it guards no more.
    h.apps.deploy("hooks-app", kitchen.clone(), Some(MANIFEST.into()), vec![]).await.unwrap();
    assert_eq!(raw(h.addr, "/echo", &[], "x").await.0, 401);
    h.apps.remove_trigger("hooks-app", &added.id).await.unwrap();
    let (status, answer) = raw(h.addr, "/echo", &[], "x").await;
    assert_eq!(status, 200, "{answer}");

    // An added trigger that cannot be read leaves the app unserved, not
    // unchecked, and can be removed.
    h.store.put("apps/triggers/hooks-app/t-bad", b"{not json".to_vec(), None).await.unwrap();
    let refused =
        support::eventually(Duration::from_secs(10), async || raw(h.addr, "/", &[], "").await.0 == 503).await;
    assert!(refused, "the app still serves without its checks");
    let (_, answer) = raw(h.addr, "/echo", &[], "x").await;
    assert!(answer.contains("hearth app trigger rm hooks-app t-bad"), "{answer}");
    h.apps.remove_trigger("hooks-app", "t-bad").await.unwrap();
    assert_eq!(raw(h.addr, "/", &[], "").await.0, 200);

    // After a restart, an added webhook guards from the first request: the
    // checks are loaded with the app, before the ingress serves it.
    h.apps
        .add_trigger("hooks-app", Spec::Webhook(Webhook { path: "/echo".into(), secret: Some("k".into()) }))
        .await
        .unwrap();
    let dir = h.stop().await;
    let h = Harness::start_in(dir).await;
    assert_eq!(raw(h.addr, "/echo", &[], "x").await.0, 401);

    // Removing the app leaves none of its triggers' keys behind.
    h.apps.remove("hooks-app").await.unwrap();
    let left = h.store.range("apps/").await.unwrap();
    let keys: Vec<&str> = left.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert!(keys.iter().all(|k| !k.contains("hooks-app") || k.starts_with("apps/data/")), "{keys:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_handled_again_and_a_dead_daemons_claim_is_taken_over() {
    let h = Harness::start().await;
    let manifest = format!(
        "{MANIFEST}\n[[webhook]]\npath = \"/trap\"\n\n[[webhook]]\npath = \"/echo\"\n\n[[webhook]]\npath = \"/sleep\"\n"
    );
    h.apps.deploy("hooks-app", guests().kitchen.clone(), Some(manifest), vec![]).await.unwrap();

    // The app fails (a trap is a 500): the key is forgotten, and the
    // sender's retry reaches the app again rather than a stored answer.
    let key = [("Idempotency-Key", "d-1")];
    let (status, first) = raw(h.addr, "/trap", &key, "").await;
    assert_eq!(status, 500, "{first}");
    let (status, again) = raw(h.addr, "/trap", &key, "").await;
    assert_eq!(status, 500, "{again}");
    assert!(!again.to_ascii_lowercase().contains("x-hearth-duplicate"), "{again}");
    assert_eq!(h.apps.stats().failures, 2, "both deliveries ran the app");

    // A success is remembered: the redelivery does not reach the app.
    let key = [("Idempotency-Key", "d-2")];
    let (status, _) = raw(h.addr, "/echo", &key, "one").await;
    assert_eq!(status, 200);
    let requests = h.apps.stats().requests;
    let (status, again) = raw(h.addr, "/echo", &key, "one").await;
    assert_eq!(status, 200);
    assert!(again.to_ascii_lowercase().contains("x-hearth-duplicate: true"), "{again}");
    // And stays remembered: a third is a duplicate as well.
    let (_, third) = raw(h.addr, "/echo", &key, "one").await;
    assert!(third.to_ascii_lowercase().contains("x-hearth-duplicate: true"), "{third}");
    assert_eq!(h.apps.stats().requests, requests, "the redeliveries did not run the app");

    // A sender that goes away before the answer: the app's answer is
    // still recorded, so the retry does not run it again.
    let running = h.apps.stats().requests;
    let mut gone = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    gone.write_all(
        b"POST /sleep?ms=600 HTTP/1.1\r\nHost: hooks-app.localhost\r\nIdempotency-Key: d-4\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    // The sender goes away once the app is running the delivery.
    let reached = eventually(Duration::from_secs(5), async || h.apps.stats().requests > running).await;
    assert!(reached, "the delivery never reached the app");
    drop(gone);
    // Then the app answers, and its answer is recorded.
    let d4 = delivery_key("hooks-app", "/sleep", "d-4");
    let recorded = eventually(Duration::from_secs(10), async || {
        let stored = h.store.get(&d4).await.unwrap();
        stored.is_some_and(|kv| {
            serde_json::from_slice::<serde_json::Value>(&kv.value).unwrap()["status"] == 200
        })
    })
    .await;
    assert!(recorded, "the answer to the delivery whose sender went away was not recorded");
    let (status, retry) = raw(h.addr, "/sleep?ms=600", &[("Idempotency-Key", "d-4")], "").await;
    assert_eq!(status, 200, "{retry}");
    assert!(retry.to_ascii_lowercase().contains("x-hearth-duplicate: true"), "the retry ran again: {retry}");

    // A claim still pending (its daemon died handling it) holds off
    // redeliveries while it could be running, then is taken over.
    let stale = delivery_key("hooks-app", "/echo", "d-3");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let pending = |at: u64| serde_json::to_vec(&serde_json::json!({"status": 0, "at": at})).unwrap();
    h.store.put(&stale, pending(now), None).await.unwrap();
    let key = [("Idempotency-Key", "d-3")];
    let (status, answer) = raw(h.addr, "/echo", &key, "three").await;
    assert_eq!(status, 409, "a fresh pending claim is in flight: {answer}");
    let (status, answer) = raw(h.addr, "/echo", &key, "three").await;
    assert_eq!(status, 409, "a refused delivery left the claim alone: {answer}");
    assert!(h.store.get(&stale).await.unwrap().is_some(), "a refused delivery deleted the claim");
    h.store.put(&stale, pending(now - 60_000), None).await.unwrap();
    let (status, answer) = raw(h.addr, "/echo", &key, "three").await;
    assert_eq!(status, 200, "a stale claim is taken over: {answer}");
    assert!(answer.ends_with("three"), "{answer}");
    let (status, again) = raw(h.addr, "/echo", &key, "three").await;
    assert_eq!(status, 200);
    assert!(again.to_ascii_lowercase().contains("x-hearth-duplicate: true"), "{again}");
    h.stop().await;
}
