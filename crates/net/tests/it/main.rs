//! The integration tests of `hearth-net`, gathered as modules of one test
//! binary, so that the suite links once per crate rather than once per
//! file (as rust-analyzer's `slow-tests` are). Run one file's tests with
//! `cargo test -p hearth-net --test it -- MODULE::`.

mod dns_server;
mod dns_services;
mod firewall_isolation;
mod firewall_partitions;
mod firewall_render;
mod forward_machines;
mod forward_ports;
mod link_bridges;
mod link_names;
mod overlay_tunnels;
mod publish_services;
mod shaping_netem;
mod shaping_queue;
mod support;
