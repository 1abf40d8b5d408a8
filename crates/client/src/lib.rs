//! hearth's API as a client sees it: the wire types and a typed client.
//!
//! **Invariant:** this crate knows nothing of the daemon. It depends on no
//! subsystem, no store, no wasmtime and no redb, so the CLI's client side
//! and the tests that drive a daemon link only this. The server
//! (`hearth-api`) uses the same types and turns its records into them.
//!
//! - [`types`]: the wire types, one per request and response body, and the
//!   error body every endpoint answers with.
//! - [`Client`]: a typed client over the Unix socket or TCP, with a reader
//!   for server-sent events ([`sse_messages`]).

mod alerts;
mod client;
pub mod types;

pub use client::{Client, Endpoint, Error, Io, LongEvent, SseMessage, WebSocket, sse_messages};
