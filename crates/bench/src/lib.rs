//! `hearth bench`: hearth measured against peers, as the CLI's
//! `hearth bench ...` commands run it.
//!
//! - [`machines`]: boot to agent-ready through hearth against a bare QEMU or
//!   Firecracker boot of the same kernel and initramfs, exec round trips,
//!   idle memory.
//! - [`apps`]: deploy latency and hello-world requests per second through
//!   hearth's ingress against a native hyper server and `wasmtime serve`,
//!   with one load generator (wrk).
//! - [`workflows`]: three-step workflows per second and signal-to-resume
//!   latency through the daemon, and on Restate (`restate`) when installed.
//! - [`services`]: the time from a VM's death to its instance leaving the
//!   endpoints and DNS and to a passing replacement, DNS lookups per second
//!   against a plain hickory-proto responder, and failed requests through
//!   the ingress during a rolling deploy.
//! - [`output`]: tables for people, JSON for programs (the CLI's too).
//!
//! The store's own benchmark is `hearth_store::bench`.

pub mod apps;
pub mod machines;
pub mod output;
mod restate;
pub mod services;
pub mod workflows;

/// Nearest-rank percentile of sorted samples (for an even count the median
/// is the lower middle one, a sample that really happened).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds to the microsecond: finer is noise.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 100.0), 100.0);
        assert_eq!(percentile(&[3.0, 5.0, 9.0], 50.0), 5.0);
        assert_eq!(percentile(&[3.0, 5.0], 50.0), 3.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
