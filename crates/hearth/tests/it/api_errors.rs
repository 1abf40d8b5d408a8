//! Bad input gets the documented error shape, and the daemon keeps serving.

use hearth_client::{Client, Error};
use hearth_testkit::Daemon;
use hyper::{Method, StatusCode};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// Sends a raw request and returns (status, error code, message).
async fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
) -> (StatusCode, String, String) {
    match client.send(method, path, body.map(<[u8]>::to_vec)).await {
        Ok(response) => (response.status(), String::new(), String::new()),
        Err(Error::Api { status, detail }) => {
            assert!(!detail.hint.is_empty(), "{path}: error without a hint: {detail:?}");
            (status, detail.code, detail.message)
        }
        Err(other) => panic!("{path}: transport error {other}"),
    }
}

type Case<'a> = (Method, &'a str, Option<&'a [u8]>, u16, &'a str, &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_clear_errors_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let big = format!("{{\"value\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    // (method, path, body, expected status, expected code, words the message must contain)
    let cases: Vec<Case> = vec![
        (Method::PUT, "/v1/kv/a", Some(b"{not json"), 400, "invalid_json", "not valid JSON"),
        (Method::PUT, "/v1/kv/a", Some(b"{\"value\": \"v\"} extra"), 400, "invalid_json", "not valid JSON"),
        (Method::PUT, "/v1/kv/a", Some(b""), 400, "invalid_json", "empty"),
        (Method::PUT, "/v1/kv/a", Some(b"{\"value\": \"v\", \"vaule\": 1}"), 400, "unknown_field", "vaule"),
        (Method::PUT, "/v1/kv/a", Some(b"{\"value\": 5}"), 400, "invalid_field", "`value`"),
        (Method::PUT, "/v1/kv/a", Some(b"{}"), 400, "invalid_field", "missing field `value`"),
        (
            Method::PUT,
            "/v1/kv/a",
            Some(b"{\"value\": \"!\", \"encoding\": \"base64\"}"),
            400,
            "invalid_field",
            "base64",
        ),
        (Method::PUT, "/v1/kv/a", Some(big.as_bytes()), 413, "payload_too_large", "larger than"),
        (Method::PUT, "/v1/kv/a", Some(b"{\"value\": \"v\", \"lease\": 99}"), 404, "not_found", "lease 99"),
        (Method::POST, "/v1/leases", Some(b"{\"ttl_secs\": 0}"), 400, "invalid_field", "TTL"),
        (Method::POST, "/v1/leases/abc/keepalive", None, 400, "invalid_field", "abc"),
        (Method::GET, "/v1/kv/missing", None, 404, "not_found", "missing"),
        (Method::GET, "/v1/events?limit=0", None, 400, "invalid_query", "limit"),
        (Method::GET, "/v1/events?bogus=1", None, 400, "invalid_query", "bogus"),
        (Method::GET, "/v1/events?since=notanumber", None, 400, "invalid_query", "since"),
        (Method::PUT, "/v1/apps/a", Some(b"{\"component_base64\": \"!\"}"), 400, "invalid_field", "base64"),
        (
            Method::PUT,
            "/v1/workflows/w",
            Some(b"{\"component_base64\": \"!\"}"),
            400,
            "invalid_field",
            "base64",
        ),
        (Method::PUT, "/v1/workflows/w", Some(b"{\"component\": \"\"}"), 400, "unknown_field", "component"),
        (Method::POST, "/v1/workflows/w/runs", Some(b"{}"), 404, "workflow_not_found", "hearth workflow ls"),
        (Method::GET, "/v1/runs?status=sleepy", None, 400, "invalid", "unknown status"),
        (Method::GET, "/v1/runs/nobody", None, 404, "run_not_found", "nobody"),
        (
            Method::POST,
            "/v1/runs/nobody/signals",
            Some(b"{\"name\": \"go\"}"),
            404,
            "run_not_found",
            "nobody",
        ),
        (Method::GET, "/v1/nope", None, 404, "not_found", "/v1/nope"),
        (Method::POST, "/v1/status", None, 405, "method_not_allowed", "POST"),
    ];
    for (method, path, body, status, code, words) in cases {
        let (got_status, got_code, message) = call(&client, method.clone(), path, body).await;
        assert_eq!(
            (got_status.as_u16(), got_code.as_str()),
            (status, code),
            "{method} {path}: message {message:?}"
        );
        assert!(message.contains(words), "{method} {path}: {message:?} lacks {words:?}");
    }
    // Nothing was written by any of the rejected requests.
    assert!(client.kv_list("").await.expect("list").entries.is_empty());
    assert_eq!(client.status().await.expect("still serving").store.revision, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_requires_a_valid_bearer_token() {
    let daemon = Daemon::start_with_tcp(BIN).await;
    let token = daemon.token();
    assert_eq!(token.len(), 64, "a 256-bit hex token");

    for (client, expect_in_message) in
        [(daemon.tcp_client(None), "none was sent"), (daemon.tcp_client(Some("wrong".into())), "not valid")]
    {
        for path in ["/v1/status", "/metrics", "/v1/nope"] {
            match client.send(Method::GET, path, None).await {
                Err(Error::Api { status, detail }) => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
                    assert_eq!(detail.code, "unauthorized");
                    assert!(detail.message.contains(expect_in_message), "{:?}", detail.message);
                    assert!(detail.hint.contains("hearth token"), "{:?}", detail.hint);
                }
                other => panic!("{path}: expected 401, got {other:?}"),
            }
        }
    }
    let authed = daemon.tcp_client(Some(token));
    let status = authed.status().await.expect("status over TCP with the token");
    assert_eq!(status.tcp, daemon.tcp().map(|a| a.to_string()));
    // The Unix socket needs no token.
    daemon.client().status().await.expect("status over the socket");
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_is_served_and_matches_the_checked_in_document() {
    let daemon = Daemon::start(BIN).await;
    let response = daemon.client().send(Method::GET, "/v1/openapi.json", None).await.expect("openapi");
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.expect("body").to_bytes();
    let checked_in = include_str!("../../../api/openapi.json");
    assert_eq!(std::str::from_utf8(&body).expect("utf8"), checked_in);
}

async fn metrics_text(client: &Client) -> String {
    use http_body_util::BodyExt;
    let response = client.send(Method::GET, "/metrics", None).await.expect("metrics");
    String::from_utf8(response.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf8")
}

fn counter(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route() {
    let daemon = Daemon::start(BIN).await;
    let client = daemon.client();
    let status_ok = "hearth_http_requests_total{method=\"GET\",route=\"/v1/status\",status=\"200\"}";
    let kv_missing = "hearth_http_requests_total{method=\"GET\",route=\"/v1/kv/{*key}\",status=\"404\"}";
    let before = metrics_text(&client).await;
    for _ in 0..3 {
        client.status().await.expect("status");
    }
    let _ = client.kv_get("nothing").await;
    let after = metrics_text(&client).await;
    assert_eq!(counter(&after, status_ok) - counter(&before, status_ok), 3, "{after}");
    assert_eq!(counter(&after, kv_missing) - counter(&before, kv_missing), 1, "{after}");
    assert!(after.contains("hearth_store_revision 0"), "{after}");
    assert!(after.contains("hearth_build_info"), "{after}");
    assert!(after.contains("hearth_http_request_duration_seconds_bucket"), "{after}");
}
