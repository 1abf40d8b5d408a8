//! hearth's HTTP/JSON API.
//!
//! **Invariant:** this is the only crate that knows HTTP and JSON, with
//! `hearth-client`, its other side. Subsystems expose Rust handles; the
//! server here turns requests into calls on those handles and their records
//! into wire types. The wire types and the typed client live in
//! `hearth-client`, a leaf crate: the CLI, the dashboard and the tests go
//! through `hearth_client::Client` or plain HTTP against this API, and need
//! none of the daemon to do so.
//!
//! - [`error`]: the single error shape, `{"error": {"code", "message", "hint"}}`.
//! - [`server`]: the router, authentication, limits, metrics and handlers;
//!   each resource's module turns records into wire types.
//! - [`openapi`]: the OpenAPI document, generated from the handlers.
//! - [`labs`]: the record of what `hearth lab up` brought up.
//! - [`ui`]: the dashboard's listener: its pages, embedded at build time,
//!   its sign-in and sessions, and the API behind a session or the token.

pub mod error;
mod extract;
pub mod host;
pub mod labs;
mod metrics;
pub mod openapi;
pub mod server;
pub mod ui;

pub use error::ApiError;

/// The version of this build, reported by `hearth status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
