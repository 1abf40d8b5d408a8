//! Issue 13, item 3: secrets never leave the store in clear through the
//! events API, as a list or as a stream, although the store holds them.

use std::time::Duration;

use hearth_client::types::{TriggerBody, TriggerKind};
use hearth_testkit::{Daemon, success};
use http_body_util::BodyExt;
use hyper::Method;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

const APP_SECRET: &str = "app-secret-in-clear-1";
const MANIFEST_SECRET: &str = "manifest-webhook-secret-in-clear-2";
const TRIGGER_SECRET: &str = "api-webhook-secret-in-clear-3";

fn leaked(bytes: &[u8]) -> Vec<&'static str> {
    let text = String::from_utf8_lossy(bytes);
    [APP_SECRET, MANIFEST_SECRET, TRIGGER_SECRET].into_iter().filter(|s| text.contains(s)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_never_show_app_or_webhook_secrets_in_clear() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let dir = tempfile::tempdir().expect("tempdir");

    // An app secret, a webhook secret in the manifest (so in the app's
    // record) and one added by API (a trigger record).
    client.set_app_secret("web", "API_TOKEN", APP_SECRET.into()).await.expect("set the secret");
    let wasm = dir.path().join("kitchen.wasm");
    std::fs::copy(super::apps_triggers::kitchen(), &wasm).expect("copy the guest");
    let manifest = format!(
        "key_value = [\"default\"]\nsecrets = [\"API_TOKEN\"]\noutbound = [\"http://127.0.0.1:*\"]\n\n[[webhook]]\npath = \"/hook\"\nsecret = \"{MANIFEST_SECRET}\"\n"
    );
    std::fs::write(dir.path().join("hearth.toml"), manifest).expect("write hearth.toml");
    success(&daemon.cli(&["app", "deploy", "web", wasm.to_str().expect("a UTF-8 path")]));
    let mut trigger = TriggerBody::new(TriggerKind::Webhook);
    trigger.path = Some("/signed".into());
    trigger.secret = Some(TRIGGER_SECRET.into());
    client.add_trigger("apps", "web", &trigger).await.expect("add a webhook");

    // The list: every event there is, as the wire carries it.
    let response =
        client.send(Method::GET, "/v1/events?since=0&limit=10000", None).await.expect("list events");
    let body = response.into_body().collect().await.expect("the body").to_bytes();
    let text = String::from_utf8_lossy(&body);
    for key in ["config/values/app:web/API_TOKEN", "apps/records/web", "apps/triggers/web/"] {
        assert!(text.contains(key), "the list has the change to {key}: {text}");
    }
    assert_eq!(leaked(&body), Vec::<&str>::new(), "secrets in clear in the list: {text}");

    // The stream, from the oldest revision, up to the trigger's record.
    let response = client.send(Method::GET, "/v1/events?follow=true&since=0", None).await.expect("follow");
    let mut body = response.into_body();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while !String::from_utf8_lossy(&seen).contains("apps/triggers/web/") {
            let frame = body.frame().await.expect("the stream stays open").expect("a frame");
            if let Ok(data) = frame.into_data() {
                seen.extend_from_slice(&data);
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen);
    assert!(read.is_ok(), "the stream reached the trigger's record within 20 s: {text}");
    assert!(text.contains("config/values/app:web/API_TOKEN"), "{text}");
    assert_eq!(leaked(&seen), Vec::<&str>::new(), "secrets in clear in the stream: {text}");

    // Listings say there is a secret, never what it is.
    let listed = serde_json::to_string(&client.triggers("apps", "web").await.expect("triggers")).unwrap();
    let app = serde_json::to_string(&client.app("web").await.expect("the app")).unwrap();
    assert_eq!(leaked(format!("{listed}{app}").as_bytes()), Vec::<&str>::new(), "{listed} {app}");
}
