//! Outgoing requests are checked against the address their host resolves
//! to, not only against the name (issue 13): an allowed name that resolves
//! to loopback, link-local or the host's own addresses is refused unless
//! hearth.toml names that address.

use std::sync::atomic::Ordering::SeqCst;

use crate::support::{Harness, MapResolver, guests, log_lines, upstream};

/// The kitchen guest's needs, with `outbound` left to each test.
fn manifest(outbound: &[&str]) -> String {
    let outbound: Vec<String> = outbound.iter().map(|rule| format!("{rule:?}")).collect();
    format!("key_value = [\"default\"]\noutbound = [{}]\n[config]\ngreeting = \"hi\"\n", outbound.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_that_resolves_to_loopback_is_refused_unless_the_address_is_named() {
    let resolver = MapResolver::new(&[("api.example.test", &["127.0.0.1"])]);
    let h = Harness::start_with(|o| o.resolver = resolver.clone()).await;
    let (upstream, hits) = upstream("upstream hello").await;
    let port = upstream.port();
    let url = format!("/fetch?url=http://api.example.test:{port}/x");

    let manifest_by_name = manifest(&["http://api.example.test:*"]);
    h.apps.deploy("out", guests().kitchen.clone(), Some(manifest_by_name), vec![]).await.unwrap();
    let reply = h.get("out.localhost", &url).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (502, "outbound request failed: ErrorCode::DestinationIpProhibited")
    );
    assert_eq!(hits.load(SeqCst), 0, "nothing reached the local server");
    let lines = log_lines(&h.apps, "out").await;
    let said = format!(
        "Refused an outgoing request to http://api.example.test:{port}: api.example.test resolved to \
         127.0.0.1, a loopback address, which an app reaches only when hearth.toml names that address; \
         to allow it, add \"http://127.0.0.1:{port}\" to `outbound` and deploy again."
    );
    assert!(lines.iter().any(|l| l.ends_with(&said)), "{lines:#?}");

    // Doing what the log says lets the same request through.
    let port_rule = format!("http://127.0.0.1:{port}");
    let named = manifest(&["http://api.example.test:*", &port_rule]);
    h.apps.deploy("out", guests().kitchen.clone(), Some(named), vec![]).await.unwrap();
    let reply = h.get("out.localhost", &url).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "upstream 200: upstream hello"));
    assert_eq!(hits.load(SeqCst), 1);
    // One lookup per request: the connection went to the checked address,
    // with no second lookup for a rebinding name to answer differently.
    assert_eq!(resolver.lookups.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_rule_does_not_reach_the_hosts_loopback_services() {
    let h = Harness::start().await;
    let (upstream, hits) = upstream("a host service").await;
    h.apps.deploy("out", guests().kitchen.clone(), Some(manifest(&["*:*"])), vec![]).await.unwrap();

    for url in [
        format!("http://127.0.0.1:{}/x", upstream.port()),
        format!("http://[::ffff:127.0.0.1]:{}/x", upstream.port()),
    ] {
        let reply = h.get("out.localhost", &format!("/fetch?url={url}")).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (502, "outbound request failed: ErrorCode::DestinationIpProhibited"),
            "{url}"
        );
    }
    // Nor the apps ingress itself.
    let ingress = format!("/fetch?url=http://127.0.0.1:{}/", h.addr.port());
    assert_eq!(
        h.get("out.localhost", &ingress).await.body,
        "outbound request failed: ErrorCode::DestinationIpProhibited"
    );
    assert_eq!(hits.load(SeqCst), 0, "nothing reached the local server");
    let lines = log_lines(&h.apps, "out").await;
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "127.0.0.1 is a loopback address, which an app reaches only when hearth.toml names that address; \
             to allow it, add \"http://127.0.0.1:{}\"",
            upstream.port()
        ))),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_a_link_local_address_is_refused() {
    // 169.254.169.254 is where clouds serve instance metadata and keys.
    let resolver = MapResolver::new(&[("metadata.example.test", &["169.254.169.254"])]);
    let h = Harness::start_with(|o| o.resolver = resolver.clone()).await;
    h.apps.deploy("out", guests().kitchen.clone(), Some(manifest(&["*"])), vec![]).await.unwrap();
    let reply = h.get("out.localhost", "/fetch?url=http://metadata.example.test/latest").await;
    assert_eq!(reply.body, "outbound request failed: ErrorCode::DestinationIpProhibited");
    let lines = log_lines(&h.apps, "out").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("metadata.example.test resolved to 169.254.169.254, a link-local address")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_a_dns_error_said_in_the_log() {
    let resolver = MapResolver::new(&[]);
    let h = Harness::start_with(|o| o.resolver = resolver.clone()).await;
    h.apps.deploy("out", guests().kitchen.clone(), Some(manifest(&["*"])), vec![]).await.unwrap();
    let reply = h.get("out.localhost", "/fetch?url=http://nowhere.example.test/").await;
    assert!(reply.body.starts_with("outbound request failed: ErrorCode::DnsError"), "{}", reply.body);
    let lines = log_lines(&h.apps, "out").await;
    assert!(lines.iter().any(|l| l.contains("nowhere.example.test did not resolve")), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_request_to_a_checked_address_speaks_tls() {
    // The local server speaks plain HTTP, so the TLS handshake fails: what
    // matters is that https goes through TLS to the checked address.
    let h = Harness::start().await;
    let (upstream, hits) = upstream("plain text").await;
    let rule = format!("https://127.0.0.1:{}", upstream.port());
    h.apps.deploy("out", guests().kitchen.clone(), Some(manifest(&[&rule])), vec![]).await.unwrap();
    let reply = h.get("out.localhost", &format!("/fetch?url={rule}/x")).await;
    assert_eq!(reply.status, 502);
    assert!(reply.body.starts_with("outbound request failed: ErrorCode::Tls"), "{}", reply.body);
    assert_eq!(hits.load(SeqCst), 0, "no request went in clear");
}
