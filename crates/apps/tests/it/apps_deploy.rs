//! Deploying: a component answers within the same test; every bad upload
//! gets a clear error and changes nothing; routing by host and prefix.

use std::time::{Duration, Instant};

use crate::support::{Harness, KITCHEN_MANIFEST, guests};
use hearth_apps::{Error, Route, append_custom_section};
use hearth_store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_then_request_answers_200() {
    let guests = guests();
    let h = Harness::start().await;
    let deployed = h.apps.deploy("hello", guests.hello.clone(), None, vec![]).await.unwrap();
    assert_eq!(deployed.version.number, 1);
    assert!(deployed.compiled);
    assert_eq!(deployed.urls, [format!("http://hello.localhost:{}/", h.addr.port())]);

    let reply = h.get("hello.localhost", "/").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "Hello from hearth!\n");
    assert_eq!(reply.version, Some(1));
    // The port in the Host header does not matter.
    assert_eq!(h.get(&format!("hello.localhost:{}", h.addr.port()), "/x").await.status, 200);

    let info = h.apps.get("hello").await.unwrap();
    assert_eq!(info.serving, Some(1));
    assert_eq!(info.app.versions.len(), 1);
    assert_eq!(h.apps.list().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_latency_cold_and_warm() {
    let guests = guests();
    let h = Harness::start().await;
    // Warm-up: the first compile in a process pays for lazy initialisation.
    h.apps.deploy("warmup", guests.hello.clone(), None, vec![]).await.unwrap();

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..5u32 {
        let bytes = append_custom_section(&guests.hello, "hearth-bench", &i.to_le_bytes());
        for (times, compiled) in [(&mut cold, true), (&mut warm, false)] {
            let started = Instant::now();
            let deployed = h.apps.deploy("bench", bytes.clone(), None, vec![]).await.unwrap();
            let reply = h.get("bench.localhost", "/").await;
            times.push(started.elapsed());
            assert_eq!(deployed.compiled, compiled);
            assert_eq!((reply.status, reply.version), (200, Some(deployed.version.number)));
            // A warm deploy finds Cranelift's code in the cache once the
            // cold one's background compile has put it there.
            h.optimized("bench").await;
        }
    }
    cold.sort();
    warm.sort();
    eprintln!(
        "deploy to first 200 (hello, {} bytes, library level, this build's profile): cold median {:?}, warm median {:?}",
        guests.hello.len(),
        cold[cold.len() / 2],
        warm[warm.len() / 2]
    );
    assert!(warm[2] < cold[2], "a cached deploy is faster than a compile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_clear_errors_and_change_nothing() {
    let guests = guests();
    let h = Harness::start().await;
    h.apps.deploy("app", guests.hello.clone(), None, vec![]).await.unwrap();
    let before = h.store.range("").await.unwrap().kvs;

    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let oversize = {
        let mut bytes = guests.hello.clone();
        bytes.resize(65 << 20, 0);
        bytes
    };
    let mut truncated = guests.hello.clone();
    truncated.truncate(guests.hello.len() / 2);
    // (name, upload, hearth.toml, error code, what the message says)
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("app", b"#!/bin/sh\necho hi\n".to_vec(), None, "not_wasm", "not WebAssembly"),
        ("app", vec![], None, "not_wasm", "not WebAssembly"),
        ("app", core_module, None, "core_module", "core WebAssembly module, not a component"),
        ("app", oversize, None, "too_large", "over the limit"),
        ("app", truncated, None, "invalid_component", "not valid"),
        (
            "app",
            guests.command.clone(),
            None,
            "no_http_handler",
            "does not export wasi:http/incoming-handler",
        ),
        ("Bad_Name", guests.hello.clone(), None, "invalid", "app name \"Bad_Name\" is not valid"),
        (
            "app",
            guests.hello.clone(),
            Some("key_value = \"x\""),
            "invalid_manifest",
            "hearth.toml is not valid",
        ),
        ("app", guests.counter.clone(), None, "undeclared_import", "does not declare any key-value store"),
        ("app", guests.kitchen.clone(), Some("key_value = [\"default\"]"), "undeclared_import", "outbound"),
        (
            "app",
            guests.hello.clone(),
            Some("secrets = [\"token\"]"),
            "missing_secret",
            "hearth app secret set app token",
        ),
        ("app", guests.hello.clone(), Some("[limits]\nmemory_mib = 100000"), "invalid_manifest", "ceiling"),
    ];
    for (name, bytes, manifest, code, message) in cases {
        let err = h.apps.deploy(name, bytes, manifest.map(str::to_owned), vec![]).await.unwrap_err();
        let text = err.to_string();
        eprintln!("{code}: {text}");
        assert_eq!(err.code(), code, "{text}");
        assert!(text.contains(message), "{code}: {text:?} does not say {message:?}");
    }
    // The undeclared-import message names the interface and the fix.
    let err = h.apps.deploy("app", guests.counter.clone(), None, vec![]).await.unwrap_err();
    assert!(
        matches!(err, Error::Undeclared { ref import, .. } if import.starts_with("wasi:keyvalue/")),
        "{err}"
    );
    assert!(err.to_string().contains("key_value = [\"default\"]"), "{err}");

    let after = h.store.range("").await.unwrap().kvs;
    assert_eq!(before, after, "a refused deploy leaves the store as it was");
    assert_eq!(h.get("app.localhost", "/").await.version, Some(1), "version 1 still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_longest_prefix() {
    let guests = guests();
    let h = Harness::start().await;
    let route = |s: &str| Route::parse(s).unwrap();
    h.apps.deploy("hello", guests.hello.clone(), None, vec![route("example.test")]).await.unwrap();
    h.apps
        .deploy(
            "kitchen",
            guests.kitchen.clone(),
            Some(KITCHEN_MANIFEST.into()),
            vec![route("example.test/api")],
        )
        .await
        .unwrap();

    assert_eq!(h.get("example.test", "/").await.body, "Hello from hearth!\n");
    assert_eq!(h.get("example.test", "/apiary").await.body, "Hello from hearth!\n");
    // The app sees the whole path: /api is not stripped.
    assert_eq!(h.get("example.test", "/api").await.body, "no such kitchen path: /api\n");
    assert_eq!(h.get("EXAMPLE.test.", "/api/echo?x=1").await.body, "no such kitchen path: /api/echo\n");
    assert_eq!(h.get("kitchen.localhost", "/").await.body, "kitchen ok\n");

    // Unknown host: a 404 that says how to deploy, and lists what is here.
    let reply = h.get("nothing.localhost", "/").await;
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("No app is deployed at nothing.localhost"), "{}", reply.body);
    assert!(reply.body.contains("hearth app deploy NAME app.wasm"), "{}", reply.body);
    assert!(reply.body.contains(&format!("http://hello.localhost:{}/", h.addr.port())), "{}", reply.body);

    // A route can belong to one app only.
    let err = h
        .apps
        .deploy("other", guests.hello.clone(), None, vec![route("example.test/api/")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "route_taken", "{err}");
    assert!(err.to_string().contains("\"kitchen\""), "{err}");
    let err =
        h.apps.deploy("x", guests.hello.clone(), None, vec![route("hello.localhost")]).await.unwrap_err();
    assert_eq!(err.code(), "route_taken", "{err}");

    // A redeploy without routes keeps them; set_routes replaces them.
    h.apps.deploy("hello", guests.hello.clone(), None, vec![]).await.unwrap();
    assert_eq!(h.get("example.test", "/").await.status, 200);
    h.apps.set_routes("hello", vec![]).await.unwrap();
    assert_eq!(h.get("example.test", "/").await.status, 404);
    assert!(h.get("example.test", "/api").await.body.starts_with("no such kitchen path"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_stops_serving_and_deletes_code() {
    let guests = guests();
    let h = Harness::start().await;
    h.apps.deploy("gone", guests.hello.clone(), None, vec![]).await.unwrap();
    assert_eq!(h.get("gone.localhost", "/").await.status, 200);
    let (_, mut follower) = h.apps.logs("gone").await.unwrap();
    h.apps.remove("gone").await.unwrap();
    assert_eq!(h.get("gone.localhost", "/").await.status, 404);
    assert!(matches!(h.apps.get("gone").await, Err(Error::NotFound(_))));
    assert!(matches!(h.apps.remove("gone").await, Err(Error::NotFound(_))));
    assert!(matches!(h.apps.logs("gone").await, Err(Error::NotFound(_))));
    // Followers of a removed app's log see the end.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = follower.recv().await {
                break;
            }
        }
    });
    end.await.expect("the log closes");
    let blobs = std::fs::read_dir(h.dir.path().join("data/apps/blobs")).unwrap().count();
    assert_eq!(blobs, 0, "the removed app's code is deleted");
}
