//! The integration tests of `hearth-store`, gathered as modules of one test
//! binary, so that the suite links once per crate rather than once per
//! file (as rust-analyzer's `slow-tests` are). Run one file's tests with
//! `cargo test -p hearth-store --test it -- MODULE::`.

mod store_bench;
mod store_etcd;
mod store_fenced;
mod store_follow;
mod store_kv;
mod store_lease;
mod store_reopen;
mod store_shutdown;
mod store_txn;
mod store_watch;
mod support;
