//! `hearth bench`: hearth measured against peers, as the CLI's
//! `hearth bench ...` commands run it.
//!
//! - [`machines`]: boot to agent-ready through hearth against a bare QEMU or
//!   Firecracker boot of the same kernel and initramfs, exec round trips,
//!   idle memory.
//! - [`apps`]: deploy latency and hello-world requests per second through
//!   hearth's ingress against a native hyper server and `wasmtime serve`,
//!   with one load generator (wrk).
//! - [`fns`]: handlers from source: deploy of a changed JavaScript or
//!   Python handler to its first 200, and their requests per second
//!   against the Rust hello app.
//! - [`workflows`]: three-step workflows per second and signal-to-resume
//!   latency through the daemon, and on Restate (`restate`) when installed.
//! - [`services`]: the time from a VM's death to its instance leaving the
//!   endpoints and DNS and to a passing replacement, DNS lookups per second
//!   against a plain hickory-proto responder, and failed requests through
//!   the ingress during a rolling deploy.
//! - [`config`]: from `config set` to an app or a machine holding the value,
//!   against a plain store event.
//! - [`alerts`]: from a store event to its webhook delivered, against the
//!   same event through the events stream, and the alert engine's
//!   throughput with 100 rules against matching alone.
//! - [`output`]: tables for people, JSON for programs (the CLI's too).
//!
//! The store's own benchmark is `hearth_store::bench`.

pub mod alerts;
pub mod apps;
pub mod config;
pub mod fns;
pub mod machines;
pub mod output;
mod restate;
pub mod services;
pub mod sleep;
pub mod workflows;

/// What a benchmark makes on the daemon, to remove at the end.
#[derive(Debug, Clone, Copy)]
enum Kind {
    App,
    Machine,
    Service,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Machine => "machine",
            Kind::Service => "service",
        }
    }

    async fn remove(self, client: &hearth_client::Client, name: &str) -> Result<(), hearth_client::Error> {
        match self {
            Kind::App => client.remove_app(name).await,
            Kind::Machine => client.remove_machine(name, true).await,
            Kind::Service => client.remove_service(name).await,
        }
    }

    /// The command a user runs to remove `name` by hand.
    fn rm(self, name: &str) -> String {
        match self {
            Kind::App => format!("hearth app rm {name}"),
            Kind::Machine => format!("hearth machine rm -f {name}"),
            Kind::Service => format!("hearth service rm {name}"),
        }
    }
}

/// Runs `measure` until it ends or Ctrl-C stops it, removes what `created`
/// holds either way, then prints the report: JSON, or `render`'s tables.
async fn measured<R: serde::Serialize>(
    client: &hearth_client::Client,
    created: &Created,
    json: bool,
    measure: impl std::future::Future<Output = anyhow::Result<R>>,
    render: fn(&R) -> String,
) -> anyhow::Result<()> {
    let outcome = tokio::select! {
        report = measure => report,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    created.remove_all(client).await;
    let report = outcome?;
    if json {
        output::print_json(&report)
    } else {
        print!("{}", render(&report));
        Ok(())
    }
}

/// The apps, machines or services a run created and has not removed yet.
#[derive(Debug)]
struct Created {
    kind: Kind,
    names: std::sync::Mutex<Vec<String>>,
}

impl Created {
    fn new(kind: Kind) -> Created {
        Created { kind, names: std::sync::Mutex::default() }
    }

    fn add(&self, name: &str) {
        self.names().push(name.to_owned());
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn remove(&self, client: &hearth_client::Client, name: &str) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let kind = self.kind.word();
        self.kind.remove(client, name).await.with_context(|| format!("cannot remove the {kind} {name}"))?;
        self.names().retain(|n| n != name);
        Ok(())
    }

    /// Best effort, newest first: says what it could not remove, so the
    /// user can.
    async fn remove_all(&self, client: &hearth_client::Client) {
        let kind = self.kind.word();
        let left = std::mem::take(&mut *self.names());
        for name in left.iter().rev() {
            match self.kind.remove(client, name).await {
                Ok(()) => eprintln!("Removed the {kind} {name}."),
                Err(hearth_client::Error::Api { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {}
                Err(e) => {
                    eprintln!("warning: cannot remove the {kind} {name} ({e}); run `{}`", self.kind.rm(name))
                }
            }
        }
    }
}

/// Nearest-rank percentile of sorted samples (for an even count the median
/// is the lower middle one, a sample that really happened).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A figure over runs, in milliseconds: the samples in run order, and
/// their least, median (nearest rank) and greatest.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Stats {
    min_ms: f64,
    median_ms: f64,
    max_ms: f64,
    samples_ms: Vec<f64>,
}

impl Stats {
    fn of(samples: Vec<f64>) -> Stats {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        Stats {
            min_ms: sorted.first().copied().unwrap_or(f64::NAN),
            median_ms: percentile(&sorted, 50.0),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
            samples_ms: samples,
        }
    }
}

/// Milliseconds to the microsecond: finer is noise.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_keep_samples_in_run_order() {
        let stats = Stats::of(vec![300.0, 100.0, 200.0]);
        assert_eq!((stats.min_ms, stats.median_ms, stats.max_ms), (100.0, 200.0, 300.0));
        assert_eq!(stats.samples_ms, vec![300.0, 100.0, 200.0]);
    }

    #[test]
    fn stats_are_the_median_and_max_in_run_order() {
        let stats = Stats::of(vec![300.0, 100.0, 200.0]);
        assert_eq!((stats.median_ms, stats.max_ms), (200.0, 300.0));
        assert_eq!(stats.samples_ms, vec![300.0, 100.0, 200.0]);
        // An even count takes the lower middle sample, one that happened.
        assert_eq!(Stats::of(vec![4.0, 1.0]).median_ms, 1.0);
        assert!(Stats::of(vec![]).max_ms.is_nan());
    }

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
