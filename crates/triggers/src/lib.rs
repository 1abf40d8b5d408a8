//! What apps and workflows share about their triggers.
//!
//! - [`cron`]: five- or six-field schedules on a time zone's wall clock.
//! - [`driver`]: the once-a-second cron loop with its catch-up, for any
//!   subsystem that says what a firing does ([`driver::CronTarget`]).
//! - [`due`]: which firing of a schedule is owed now, with the policy for
//!   firings missed while hearth was down (catch up once).
//! - The webhook guard: [`signature`] (the `X-Hearth-Signature` of
//!   webhooks, an HMAC-SHA256 of the body keyed with a shared secret),
//!   [`guard`] (which webhook's checks a request path meets, under any
//!   spelling) and [`delivery`] (the `Idempotency-Key` claim that lets a
//!   delivery through once, and the record of its answer).
//! - [`events`]: following the store's changes for event triggers, across
//!   broken watches.
//! - [`spec`]: trigger kinds, manifest ids, and the checks every trigger
//!   passes when declared.
//! - [`stored`]: the shapes of triggers as listed and stored, and of a
//!   cron trigger's last firing.
//! - [`percent`]: percent-decoding by the rule of the URL part (a path
//!   keeps `+`, a query makes it a space).
//! - [`private`]: the store keys no event trigger sees, and manifests shown
//!   with their webhook secrets masked.
//!
//! The subsystems own what a trigger *does*: `hearth-workflows` starts or
//! signals runs, `hearth-apps` calls an app's route.

pub mod cron;
pub mod delivery;
pub mod driver;
pub mod events;
pub mod guard;
pub mod percent;
pub mod private;
pub mod signature;
pub mod spec;
pub mod stored;

pub use cron::Schedule;
pub use spec::{Kind, Spec};
pub use stored::{CronState, Stored, Trigger};

/// A firing that is owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The firing's time, in milliseconds since the Unix epoch.
    pub slot: u64,
    /// Earlier firings that were missed while hearth was down and are
    /// skipped in favour of this one.
    pub skipped: u64,
}

/// The firing of `schedule` owed at `now`, given that the last one fired
/// (or the trigger was set up) at `last`, and that this daemon began firing
/// at `started`. All times are milliseconds since the Unix epoch.
///
/// Policy, as systemd's `Persistent=true`: of the firings that fell while
/// hearth was down (before `started`), only the latest fires, once. A firing
/// that fell while it was up but was noticed late (a slow tick) still fires,
/// late, on its own. `None` when nothing is owed yet.
pub fn due(schedule: &Schedule, last: u64, now: u64, started: u64) -> Option<Due> {
    let mut slot = schedule.next_after(last)?;
    if slot > now {
        return None;
    }
    let mut skipped = 0u64;
    while slot < started {
        match schedule.next_after(slot) {
            Some(next) if next < started && next <= now && skipped < 100_000 => {
                slot = next;
                skipped += 1;
            }
            _ => break,
        }
    }
    Some(Due { slot, skipped })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) use hearth_store::chain;

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;
    /// 2026-01-01T00:00:00Z.
    const T0: u64 = 1_767_225_600_000;

    fn every_minute() -> Schedule {
        Schedule::parse("* * * * *", "UTC").unwrap()
    }

    #[test]
    fn nothing_is_owed_before_the_next_slot() {
        assert_eq!(due(&every_minute(), T0, T0 + MINUTE - 1, T0), None);
        assert_eq!(due(&every_minute(), T0, T0 + MINUTE, T0), Some(Due { slot: T0 + MINUTE, skipped: 0 }));
    }

    #[test]
    fn slots_missed_while_down_collapse_into_the_latest() {
        // Last fired at T0, down until T0 + 10.5 minutes.
        let started = T0 + 10 * MINUTE + MINUTE / 2;
        let d = due(&every_minute(), T0, started, started).unwrap();
        assert_eq!(d, Due { slot: T0 + 10 * MINUTE, skipped: 9 });
    }

    #[test]
    fn a_slot_noticed_late_while_up_fires_on_its_own() {
        // Up since T0; the tick for T0 + 1 min came at T0 + 3 min.
        let d = due(&every_minute(), T0, T0 + 3 * MINUTE, T0).unwrap();
        assert_eq!(d, Due { slot: T0 + MINUTE, skipped: 0 });
        // The next tick owes the next slot, not the latest.
        let d = due(&every_minute(), d.slot, T0 + 3 * MINUTE, T0).unwrap();
        assert_eq!(d.slot, T0 + 2 * MINUTE);
    }
}
