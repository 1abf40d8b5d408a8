//! A third-party-style app: an HTTP echo server on crates.io's `wstd`
//! (async Rust for WASI 0.2), about 400 KB built. `hearth bench apps`
//! deploys it to measure a cold deploy of a component of the size real
//! apps have; `examples/apps/hello` is the smallest there is.
//!
//! `GET /` answers a greeting; any other request is answered with its own
//! method, path and body.

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    if request.method() == wstd::http::Method::GET && request.uri().path() == "/" {
        return Ok(Response::new("Hello from wstd!\n".to_owned().into()));
    }
    let line = format!("{} {}\n", request.method(), request.uri().path());
    let body = request.into_body().contents().await?.to_vec();
    let mut echoed = line.into_bytes();
    echoed.extend_from_slice(&body);
    Ok(Response::new(echoed.into()))
}
