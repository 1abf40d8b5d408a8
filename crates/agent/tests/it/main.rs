//! The integration tests of `hearth-agent`, gathered as modules of one test
//! binary, so that the suite links once per crate rather than once per
//! file (as rust-analyzer's `slow-tests` are). Run one file's tests with
//! `cargo test -p hearth-agent --test it -- MODULE::`.

mod agent_config;
mod agent_exec;
mod agent_files;
mod agent_protocol;
mod common;
