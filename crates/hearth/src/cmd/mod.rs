//! One module per client subcommand.

pub(crate) mod app;
pub(crate) mod bench;
pub(crate) mod events;
pub(crate) mod fault;
pub(crate) mod image;
pub(crate) mod kv;
pub(crate) mod lab;
pub(crate) mod machine;
pub(crate) mod network;
pub(crate) mod snapshot;
pub(crate) mod status;
pub(crate) mod token;
pub(crate) mod trigger;
pub(crate) mod workflow;
