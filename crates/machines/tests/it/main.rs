//! The integration tests of `hearth-machines`, gathered as modules of one test
//! binary, so that the suite links once per crate rather than once per
//! file (as rust-analyzer's `slow-tests` are). Run one file's tests with
//! `cargo test -p hearth-machines --test it -- MODULE::`.

mod image_debian;
mod image_reference;
mod image_registry;
mod image_store;
mod image_unpack;
mod machines_config;
mod machines_follow;
mod machines_hosts;
mod microvm_devices;
mod support;
