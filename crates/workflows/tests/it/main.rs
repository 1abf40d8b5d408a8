//! The integration tests of `hearth-workflows`, gathered as modules of one test
//! binary, so that the suite links once per crate rather than once per
//! file (as rust-analyzer's `slow-tests` are). Run one file's tests with
//! `cargo test -p hearth-workflows --test it -- MODULE::`.

mod support;
mod workflows_config;
mod workflows_runs;
