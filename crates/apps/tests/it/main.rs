//! The integration tests of `hearth-apps`, gathered as modules of one test
//! binary, so that the suite links once per crate rather than once per
//! file (as rust-analyzer's `slow-tests` are). Run one file's tests with
//! `cargo test -p hearth-apps --test it -- MODULE::`.

mod apps_deploy;
mod apps_hot_swap;
mod apps_limits;
mod apps_outbound;
mod apps_resources;
mod apps_restart;
mod apps_shared_store;
mod apps_throughput;
mod apps_webhooks;
mod support;
