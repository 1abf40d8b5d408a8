//! What the manifest provides: key-value stores, config and secrets, and
//! outgoing HTTP to the hosts it allows, and nothing else.

use crate::support;

use crate::support::{Harness, guests, log_lines, upstream};
use hearth_apps::Error;

const KV_MANIFEST: &str = r#"
key_value = ["default", "other"]
outbound = ["http://example.invalid"]
[config]
x = "1"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_operations_in_declared_stores_only() {
    let guests = guests();
    let h = Harness::start().await;
    h.apps.deploy("kv", guests.kitchen.clone(), Some(KV_MANIFEST.into()), vec![]).await.unwrap();
    let kv = async |path: &str| {
        let reply = h.get("kv.localhost", path).await;
        (reply.status, reply.body)
    };
    let ok = |body: &str| (200u16, body.to_owned());
    assert_eq!(kv("/kv/get?key=a").await, ok("(none)"));
    assert_eq!(kv("/kv/set?key=a&value=apple").await, ok("set"));
    assert_eq!(kv("/kv/set?key=b%2Fc&value=x").await, ok("set"));
    assert_eq!(kv("/kv/get?key=a").await, ok("apple"));
    assert_eq!(kv("/kv/exists?key=a").await, ok("true"));
    assert_eq!(kv("/kv/keys").await, ok("a,b/c"));
    assert_eq!(kv("/kv/get?key=a&store=other").await, ok("(none)"), "stores are separate");
    assert_eq!(kv("/kv/delete?key=a").await, ok("deleted"));
    assert_eq!(kv("/kv/exists?key=a").await, ok("false"));
    assert_eq!(kv("/kv/incr?key=n").await, ok("1"));
    assert_eq!(kv("/kv/incr?key=n").await, ok("2"));
    assert_eq!(kv("/kv/incr?key=b%2Fc").await.0, 500, "a non-number cannot be incremented");

    let (status, body) = kv("/kv/get?key=a&store=undeclared").await;
    assert_eq!((status, body.as_str()), (500, "open undeclared: Error::NoSuchStore"));
    let lines = log_lines(&h.apps, "kv").await;
    assert!(
        lines
            .iter()
            .any(|l| l
                .contains("opened the key-value store \"undeclared\", which hearth.toml does not declare")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_secrets_come_through_wasi_config() {
    let guests = guests();
    let h = Harness::start().await;
    let manifest = r#"
        key_value = ["default"]
        outbound = ["http://example.invalid"]
        secrets = ["token"]
        [config]
        greeting = "hello"
        answer = 42
    "#;
    let err = h.apps.deploy("cfg", guests.kitchen.clone(), Some(manifest.into()), vec![]).await.unwrap_err();
    assert!(matches!(err, Error::MissingSecret { .. }), "{err}");
    h.apps.set_secret("cfg", "token", "s3cret".into()).await.unwrap();
    h.apps.deploy("cfg", guests.kitchen.clone(), Some(manifest.into()), vec![]).await.unwrap();

    assert_eq!(h.get("cfg.localhost", "/config?key=greeting").await.body, "hello");
    assert_eq!(h.get("cfg.localhost", "/config?key=answer").await.body, "42");
    assert_eq!(h.get("cfg.localhost", "/config?key=token").await.body, "s3cret");
    assert_eq!(h.get("cfg.localhost", "/config?key=nope").await.status, 404);
    assert_eq!(h.get("cfg.localhost", "/config-all").await.body, "answer=42\ngreeting=hello\ntoken=s3cret\n");

    h.apps.set_secret("cfg", "token", "rotated".into()).await.unwrap();
    assert_eq!(h.get("cfg.localhost", "/config?key=token").await.body, "rotated");
    assert_eq!(h.apps.secrets("cfg").await.unwrap(), ["token"]);
    let record = serde_json::to_string(&h.apps.get("cfg").await.unwrap()).unwrap();
    assert!(!record.contains("rotated") && !record.contains("s3cret"), "secret values stay out of records");
    assert!(h.apps.set_secret("cfg", "bad/name", "x".into()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_reaches_a_running_app_on_its_next_request_with_no_redeploy() {
    use hearth_config::{Key, Layer, Scope};
    let guests = guests();
    let h = Harness::start().await;
    // No [config] in hearth.toml: wasi:config needs no declaring.
    let manifest = "key_value = [\"default\"]\noutbound = [\"http://example.invalid\"]\n[config]\ngreeting = \"manifest\"\n";
    h.apps.deploy("live", guests.kitchen.clone(), Some(manifest.into()), vec![]).await.unwrap();
    assert_eq!(h.get("live.localhost", "/config?key=greeting").await.body, "manifest");
    let config = h.config.clone();
    // The global layer is above the manifest; the app's scope above that.
    config.set(&Layer::Global, &Key::parse("greeting").unwrap(), "global".into(), false).await.unwrap();
    wait_for_body(&h, "live.localhost", "/config?key=greeting", "global").await;
    let scope = Layer::of(Scope::App("live".into()));
    config.set(&scope, &Key::parse("db.host").unwrap(), "db.internal".into(), false).await.unwrap();
    wait_for_body(&h, "live.localhost", "/config?key=db.host", "db.internal").await;
    config.remove(&Layer::Global, &Key::parse("greeting").unwrap()).await.unwrap();
    wait_for_body(&h, "live.localhost", "/config?key=greeting", "manifest").await;
    let versions = h.apps.get("live").await.unwrap().app.versions.len();
    assert_eq!(versions, 1, "no redeploy happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_made_while_an_app_first_loads_reaches_it() {
    use hearth_config::{Key, Layer};
    let guests = guests();
    let h = Harness::start().await;
    let manifest = "key_value = [\"default\"]\noutbound = [\"http://example.invalid\"]\n";
    // The change lands while the deploy compiles, after it read the config
    // (most runs) or before (the rest): either way the app serves it.
    let deploy = {
        let (apps, code) = (h.apps.clone(), guests.kitchen.clone());
        tokio::spawn(async move { apps.deploy("late", code, Some(manifest.into()), vec![]).await })
    };
    h.config.set(&Layer::Global, &Key::parse("greeting").unwrap(), "late".into(), false).await.unwrap();
    deploy.await.unwrap().unwrap();
    wait_for_body(&h, "late.localhost", "/config?key=greeting", "late").await;
}

/// Waits, with a deadline, for `path` on `host` to answer `body`.
async fn wait_for_body(h: &Harness, host: &str, path: &str, body: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = h.get(host, path).await.body;
        if got == body {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{host}{path} still answers {got:?}, not {body:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_are_denied_unless_allowed() {
    let guests = guests();
    let h = Harness::start().await;
    let (upstream, hits) = upstream("upstream hello").await;
    let url = format!("/fetch?url=http://127.0.0.1:{}/x", upstream.port());

    h.apps.deploy("out", guests.kitchen.clone(), Some(KV_MANIFEST.into()), vec![]).await.unwrap();
    let reply = h.get("out.localhost", &url).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (502, "outbound request failed: ErrorCode::HttpRequestDenied")
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the upstream");
    let lines = log_lines(&h.apps, "out").await;
    let denied = format!("Denied an outgoing request to http://127.0.0.1:{}", upstream.port());
    assert!(lines.iter().any(|l| l.contains(&denied) && l.contains("add it to `outbound`")), "{lines:#?}");

    let allowed =
        KV_MANIFEST.replace("http://example.invalid", &format!("http://127.0.0.1:{}", upstream.port()));
    h.apps.deploy("out", guests.kitchen.clone(), Some(allowed), vec![]).await.unwrap();
    let reply = h.get("out.localhost", &url).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "upstream 200: upstream hello"));
    // The same host on another port is still denied.
    let other = format!("/fetch?url=http://127.0.0.1:{}/x", upstream.port() + 1);
    assert_eq!(
        h.get("out.localhost", &other).await.body,
        "outbound request failed: ErrorCode::HttpRequestDenied"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_methods_reach_the_app() {
    let guests = guests();
    let h = Harness::start().await;
    h.apps.deploy("echo", guests.kitchen.clone(), Some(KV_MANIFEST.into()), vec![]).await.unwrap();
    let reply = support::request(h.addr, "POST", "echo.localhost", "/echo?q=1", "the body").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "Method::Post /echo?q=1 the body"));
}
