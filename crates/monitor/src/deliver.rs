//! Handing a notification to its receiver: the [`Deliver`] trait the
//! daemon implements (webhooks, mail and workflow runs need the daemon's
//! clients and config), and the retry policy.

use std::time::Duration;

use hearth_alerts::Notification;
use hearth_alerts::rules::Receiver;

/// Why a delivery failed, and whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub retryable: bool,
    pub message: String,
}

impl Failure {
    pub fn retry(message: impl Into<String>) -> Failure {
        Failure { retryable: true, message: message.into() }
    }

    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure { retryable: false, message: message.into() }
    }
}

/// Delivers one notification to one receiver, once. `record` receivers
/// never reach it: the history is the service's own.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync + 'static {
    async fn deliver(&self, receiver: &Receiver, notification: &Notification) -> Result<(), Failure>;
}

/// How long to wait before attempt `attempt + 1` after `attempt` failed
/// (1 for the first failure): 1 s, doubled each time, at most 5 minutes,
/// less up to a fifth at random so that receivers that came back are not
/// hit by every sender at once.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = base.min(Duration::from_secs(300));
    let jitter = rand::random::<f64>() * 0.2;
    capped.mul_f64(1.0 - jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_a_second_up_to_five_minutes_less_some_jitter() {
        for (attempt, full) in [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (40, 300.0)] {
            let wait = backoff(attempt).as_secs_f64();
            assert!(wait <= full && wait >= full * 0.8, "attempt {attempt}: {wait}");
        }
    }
}
