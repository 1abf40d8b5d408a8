//! Counts the requests it has served, in a key-value store that survives
//! restarts and redeploys.

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wit_bindgen::generate!({ world: "counter", path: "wit", generate_all });

use wasi::keyvalue::{atomics, store};

struct Counter;

impl wasip2::exports::http::incoming_handler::Guest for Counter {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let (status, text) = match count() {
            Ok(n) => (200, format!("This page has been visited {n} times.\n")),
            Err(e) => (500, format!("The counter is unavailable: {e:?}\n")),
        };
        respond(response_out, status, &text);
    }
}

fn count() -> Result<u64, store::Error> {
    let bucket = store::open("default")?;
    atomics::increment(&bucket, "visits", 1)
}

fn respond(response_out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::from_list(&[("content-type".into(), b"text/plain; charset=utf-8".to_vec())])
        .expect("the content-type header is valid");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("the status is valid");
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut out = body.write().expect("the stream is taken once");
    out.write_all(text.as_bytes()).expect("the client is connected");
    out.flush().expect("the client is connected");
    drop(out);
    OutgoingBody::finish(body, None).expect("the body is complete");
}

wasip2::http::proxy::export!(Counter);
