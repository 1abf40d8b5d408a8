//! A test guest that does, on request, each thing an app can do or get
//! wrong. The path picks the behaviour:
//!
//! - `/` answers `kitchen ok`; `/echo` echoes the method, path and body.
//! - `/trap` panics (a trap); `/loop` spins forever; `/alloc` allocates
//!   without bound; `/sleep?ms=N[&print=T]` sleeps without using CPU (then
//!   writes T to stdout).
//! - `/print?text=T` writes T to stdout and `err: T` to stderr.
//! - `/trace[?gate=K]` writes `begin BODY` to stdout, waits (if asked)
//!   until key K is set in the default key-value store, then writes
//!   `end BODY`: how a test sees the order and overlap of trigger calls.
//! - `/fetch?url=U` makes an outgoing GET and answers with what came back.
//! - `/config?key=K` and `/config-all` read `wasi:config`.
//! - `/kv/get|set|incr?key=K[&value=V][&store=S]` use `wasi:keyvalue`.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wit_bindgen::generate!({ world: "hearth:apps/resources", path: "../../../wit", generate_all });

use wasi::config::store as config;
use wasi::keyvalue::{atomics, store as kv};

struct Kitchen;

impl wasip2::exports::http::incoming_handler::Guest for Kitchen {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query.split_once('?').unwrap_or((&path_with_query, ""));
        let param = |name: &str| {
            query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| decode(v))
            })
        };
        let (status, text) = match path {
            "/" => (200, "kitchen ok\n".to_owned()),
            "/echo" => {
                let body = read_all(request.consume().expect("body").stream().expect("stream"));
                let method = format!("{:?}", request.method());
                (200, format!("{method} {path_with_query} {}", String::from_utf8_lossy(&body)))
            }
            "/trap" => panic!("the kitchen guest was asked to trap"),
            "/loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/sleep" => {
                let ms: u64 = param("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                if let Some(text) = param("print") {
                    println!("{text}");
                }
                (200, format!("slept {ms} ms\n"))
            }
            "/trace" => {
                let body = read_all(request.consume().expect("body").stream().expect("stream"));
                let body = String::from_utf8_lossy(&body).into_owned();
                println!("begin {body}");
                if let Some(gate) = param("gate") {
                    let bucket = kv::open("default").expect("the default store is declared");
                    while bucket.get(&gate).expect("read the gate").is_none() {
                        wasip2::clocks::monotonic_clock::subscribe_duration(10_000_000).block();
                    }
                }
                println!("end {body}");
                (200, "traced\n".to_owned())
            }
            "/print" => {
                let text = param("text").unwrap_or_default();
                println!("{text}");
                eprintln!("err: {text}");
                (200, "printed\n".to_owned())
            }
            "/fetch" => fetch(&param("url").unwrap_or_default()),
            "/config" => match config::get(&param("key").unwrap_or_default()) {
                Ok(Some(value)) => (200, value),
                Ok(None) => (404, "no such config key".to_owned()),
                Err(e) => (500, format!("config error: {e:?}")),
            },
            "/config-all" => match config::get_all() {
                Ok(mut all) => {
                    all.sort();
                    (200, all.iter().map(|(k, v)| format!("{k}={v}\n")).collect())
                }
                Err(e) => (500, format!("config error: {e:?}")),
            },
            p if p.starts_with("/kv/") => {
                let store = param("store").unwrap_or_else(|| "default".to_owned());
                let key = param("key").unwrap_or_default();
                key_value(&p[4..], &store, &key, param("value"))
            }
            _ => (404, format!("no such kitchen path: {path}\n")),
        };
        respond(response_out, status, &text);
    }
}

fn key_value(op: &str, store: &str, key: &str, value: Option<String>) -> (u16, String) {
    let bucket = match kv::open(store) {
        Ok(b) => b,
        Err(e) => return (500, format!("open {store}: {e:?}")),
    };
    let result = match op {
        "get" => bucket.get(key).map(|v| match v {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => "(none)".to_owned(),
        }),
        "set" => bucket.set(key, value.unwrap_or_default().as_bytes()).map(|()| "set".to_owned()),
        "delete" => bucket.delete(key).map(|()| "deleted".to_owned()),
        "exists" => bucket.exists(key).map(|b| b.to_string()),
        "keys" => bucket.list_keys(None).map(|r| r.keys.join(",")),
        "incr" => atomics::increment(&bucket, key, 1).map(|n| n.to_string()),
        _ => return (404, "no such kv op".to_owned()),
    };
    match result {
        Ok(text) => (200, text),
        Err(e) => (500, format!("{op} {key}: {e:?}")),
    }
}

fn fetch(url: &str) -> (u16, String) {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).unwrap();
    request.set_scheme(Some(&scheme)).unwrap();
    request.set_authority(Some(authority)).unwrap();
    request.set_path_with_query(Some(path)).unwrap();
    let future = match wasip2::http::outgoing_handler::handle(request, None) {
        Ok(f) => f,
        Err(e) => return (502, format!("outbound request failed: {e:?}")),
    };
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => {
            let status = response.status();
            let body = read_all(response.consume().expect("body").stream().expect("stream"));
            (200, format!("upstream {status}: {}", String::from_utf8_lossy(&body)))
        }
        Some(Ok(Err(e))) => (502, format!("outbound request failed: {e:?}")),
        other => (502, format!("outbound request failed: {other:?}")),
    }
}

fn read_all(stream: wasip2::io::streams::InputStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        out.extend(chunk);
    }
    out
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(response_out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("the status is valid");
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut out = body.write().expect("the stream is taken once");
    out.write_all(text.as_bytes()).expect("the client is connected");
    out.flush().expect("the client is connected");
    drop(out);
    OutgoingBody::finish(body, None).expect("the body is complete");
}

wasip2::http::proxy::export!(Kitchen);
