//! The integration tests of `hearth`, gathered as modules of one test
//! binary, so that the suite links once per crate rather than once per
//! file (as rust-analyzer's `slow-tests` are). Run one file's tests with
//! `cargo test -p hearth --test it -- MODULE::`.

// The workflows' and the machines' test support, shared with their crates' tests.
#[path = "../../../machines/tests/it/support/mod.rs"]
mod machines_support;
#[path = "../../../workflows/tests/it/support/mod.rs"]
mod workflows_support;

mod alerts_cli;
mod api_connections;
mod api_errors;
mod api_limits;
mod apps_cli;
mod apps_outbound;
mod apps_tiers;
mod apps_triggers;
mod cli;
mod cluster_cmd;
mod cluster_failover;
mod cluster_support;
mod config_cli;
mod daemon_lifecycle;
mod events_secrets;
mod events_stream;
mod fn_source;
mod hosts;
mod hosts_drain;
mod labs;
mod machines_disk;
mod machines_firecracker;
mod machines_hosts;
mod machines_image_pull;
mod machines_lifecycle;
mod machines_main;
mod machines_sleep;
mod machines_snapshot;
mod machines_ssh;
mod metrics_cli;
mod networks_daemon;
mod networks_faults;
mod networks_hosts;
mod services_dns;
mod services_machines;
mod services_outbound;
mod services_registry;
mod services_routing;
mod services_sleep;
mod store_durability;
mod store_etcd;
mod store_follow;
mod triggers_cli;
mod ui;
mod ui_terminal;
mod workflows_cli;
