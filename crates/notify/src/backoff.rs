//! The wait before the next attempt at a delivery that failed.

use std::time::Duration;

/// The base wait after the first failed attempt.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);

/// No wait is longer.
pub const MAX_WAIT: Duration = Duration::from_secs(5 * 60);

/// How long to wait after `attempt` failed attempts before the next one
/// (see the crate's policy). `attempt` 0 is taken as 1.
pub fn backoff(attempt: u32) -> Duration {
    jittered(attempt, rand::random::<f64>())
}

/// The wait for `attempt` with `unit` (in `[0, 1)`) as the random draw:
/// from half the base (`unit` 0) to all of it.
fn jittered(attempt: u32, unit: f64) -> Duration {
    base(attempt).mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

/// [`FIRST_WAIT`] doubled for each attempt after the first, at most
/// [`MAX_WAIT`].
fn base(attempt: u32) -> Duration {
    let doublings = attempt.max(1) - 1;
    2u32.checked_pow(doublings)
        .and_then(|factor| FIRST_WAIT.checked_mul(factor))
        .map_or(MAX_WAIT, |wait| wait.min(MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_JITTER: f64 = 1.0;

    #[test]
    fn the_first_retry_waits_a_second() {
        assert_eq!(jittered(1, NO_JITTER), Duration::from_secs(1));
        assert_eq!(jittered(0, NO_JITTER), jittered(1, NO_JITTER));
    }

    #[test]
    fn each_wait_doubles_the_one_before() {
        let waits: Vec<u64> = (1..=9).map(|a| jittered(a, NO_JITTER).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256]);
    }

    #[test]
    fn no_wait_is_longer_than_five_minutes() {
        for attempt in [10, 11, 31, 32, 33, 1000, u32::MAX] {
            assert_eq!(jittered(attempt, NO_JITTER), MAX_WAIT, "{attempt}");
        }
        for _ in 0..1000 {
            assert!(backoff(u32::MAX) <= MAX_WAIT);
        }
    }

    #[test]
    fn jitter_draws_each_wait_between_half_and_all_of_it() {
        assert_eq!(jittered(3, 0.0), Duration::from_secs(2));
        assert_eq!(jittered(3, 0.5), Duration::from_secs(3));
        assert_eq!(jittered(20, 0.0), MAX_WAIT / 2);
        let waits: Vec<Duration> = (0..200).map(|_| backoff(3)).collect();
        assert!(waits.iter().all(|w| (Duration::from_secs(2)..=Duration::from_secs(4)).contains(w)));
        // Random: two hundred draws that all agree would be a broken draw.
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    }
}
