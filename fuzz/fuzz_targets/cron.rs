//! Cron schedules (`hearth_triggers::cron`): an expression and a time zone
//! from a manifest or the API, and the firings computed from an instant.
//!
//! Input: 8 bytes of instant, then `EXPRESSION` and optionally `\nTIMEZONE`.
//! Checks: firings are strictly after the instant and strictly increasing,
//! and the next firing after "just before a firing" is that firing.
#![no_main]

use hearth_triggers::cron::Schedule;
use libfuzzer_sys::fuzz_target;

/// Instants up to the year 10,000 and a bit (2^48 ms): the clock's range.
const INSTANT_MASK: u64 = (1 << 48) - 1;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (instant, text) = data.split_at(8);
    let after = u64::from_le_bytes(instant.try_into().expect("eight bytes")) & INSTANT_MASK;
    let Ok(text) = std::str::from_utf8(text) else { return };
    let (expr, tz) = text.split_once('\n').unwrap_or((text, "UTC"));
    let Ok(schedule) = Schedule::parse(expr, tz) else { return };

    let mut last = after;
    for _ in 0..4 {
        let Some(next) = schedule.next_after(last) else { break };
        assert!(next > last, "{expr:?} in {tz}: next_after({last}) = {next}, not after it");
        assert_eq!(
            schedule.next_after(next - 1),
            Some(next),
            "{expr:?} in {tz}: the firing after {} is not {next}",
            next - 1
        );
        last = next;
    }
});
