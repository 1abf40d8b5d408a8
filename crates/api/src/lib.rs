//! hearth's HTTP/JSON API.
//!
//! **Invariant:** this is the only crate that knows HTTP and JSON. Subsystems
//! expose Rust handles; the server here turns requests into calls on those
//! handles and their results into responses. The CLI, the dashboard and the
//! tests all go through [`client::Client`] or plain HTTP against this API.
//!
//! - [`types`]: the wire types, one per request and response body.
//! - [`error`]: the single error shape, `{"error": {"code", "message", "hint"}}`.
//! - [`server`]: the router, authentication, limits, metrics and handlers.
//! - [`openapi`]: the OpenAPI document, generated from the handlers.
//! - [`client`]: a typed client over the Unix socket or TCP.

pub mod client;
pub mod error;
mod extract;
pub mod labs;
mod metrics;
pub mod openapi;
pub mod server;
pub mod types;

pub use error::{ApiError, ErrorBody, ErrorDetail};

/// The version of this build, reported by `hearth status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
